"""Persistent caches of generations and scores: SQLite files several jobs can read and write at once.

Each entry is a JSON value under (namespace, key). The namespace says who produced it (a model and
adapter with its sampling settings, or a scorer with its settings); the key is a SHA-256 of the input.
Entries are written as soon as they exist, so an interrupted job keeps everything it finished.
SQLite's locking needs a local filesystem: on a cluster, keep `paths.cache_dir` off NFS (node-local or
a filesystem with working POSIX locks).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable

log = logging.getLogger("valharm")
CORRUPT = ("malformed", "not a database", "file is encrypted", "database disk image")


def digest(data) -> str:
    """SHA-256 of a JSON-serialisable value (keys sorted), or of a string as is."""
    text = data if isinstance(data, str) else json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def has_nan(value) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(has_nan(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_nan(v) for v in value)
    return False


class Cache:
    """A JSON key-value table in SQLite (WAL mode: readers never wait for the single writer).

    A cache file found corrupt (truncated, overwritten, not SQLite) is moved aside as `<name>.corrupt-<time>`
    and rebuilt empty, with one warning: what it held is computed again, nothing is read from it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._guarded(self._create)

    def _create(self) -> None:
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS entries (namespace TEXT NOT NULL, key TEXT NOT NULL, "
                       "value TEXT NOT NULL, PRIMARY KEY (namespace, key))")

    def _guarded(self, operation, *args):
        """Run `operation`; if the file turns out corrupt, move it aside, rebuild it and run it again."""
        try:
            return operation(*args)
        except sqlite3.DatabaseError as err:
            if not any(sign in str(err).lower() for sign in CORRUPT):
                raise
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):  # another process may have moved it first
                    os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
            log.warning(f"cache {self.path} was corrupt ({err}); moved to {aside} and rebuilt: its entries are "
                        f"computed again")
            self._create()
            return operation(*args)

    @contextlib.contextmanager
    def _connect(self):
        """A connection that commits on success and is always closed."""
        with contextlib.closing(sqlite3.connect(self.path, timeout=120)) as db, db:
            yield db

    def get(self, namespace: str, keys: Iterable[str]) -> dict[str, object]:
        """The stored values of those `keys` that are present."""
        return self._guarded(self._get, namespace, list(dict.fromkeys(keys)))

    def _get(self, namespace: str, keys: list[str]) -> dict[str, object]:
        found = {}
        with self._connect() as db:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                rows = db.execute(f"SELECT key, value FROM entries WHERE namespace = ? AND key IN "
                                  f"({','.join('?' * len(chunk))})", [namespace, *chunk])
                found.update((key, json.loads(value)) for key, value in rows)
        return found

    def put(self, namespace: str, values: dict[str, object]) -> None:
        """Store values; NaN and None are refused (an unknown result is not a result: store nothing)."""
        if not namespace:
            raise ValueError("a cache namespace is required")
        bad = [key for key, value in values.items() if value is None or has_nan(value)]
        if bad:
            raise ValueError(f"refusing to cache {len(bad)} missing/NaN value(s) under {namespace}")
        rows = [(namespace, key, json.dumps(value, allow_nan=False)) for key, value in values.items()]
        self._guarded(self._put, rows)

    def _put(self, rows: list[tuple]) -> None:
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?)", rows)

    def count_all(self) -> int:
        """Entries of every namespace."""
        def count():
            with self._connect() as db:
                return db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

        return self._guarded(count)

    def count(self, namespace: str) -> int:
        def count():
            with self._connect() as db:
                return db.execute("SELECT COUNT(*) FROM entries WHERE namespace = ?", [namespace]).fetchone()[0]

        return self._guarded(count)


def cache_dir() -> Path:
    """Where valharm keeps what outlives a run (converted models, content digests): $VALHARM_CACHE_DIR or
    ~/.cache/valharm."""
    return Path(os.environ.get("VALHARM_CACHE_DIR", Path.home() / ".cache" / "valharm"))


def file_tree_digest(files: list[Path], root: Path) -> str:
    return digest({str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)})


def digest_cache() -> Cache:
    return Cache(cache_dir() / "content_digests.sqlite")


def content_digest(path: Path, cache: Cache | None = None) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (names and contents); remembered by path, size and
    modification time, so unchanged files are not read again."""
    path = path.resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stamp = digest({"path": str(path), "files": [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]})
    known = cache.get("content", [stamp]) if cache else {}
    if stamp in known:
        return known[stamp]
    found = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else file_tree_digest(files, path)
    if cache:
        cache.put("content", {stamp: found})
    return found
