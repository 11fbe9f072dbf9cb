"""Scorers turn texts into numbers; every score is cached by (scorer id, text hash)."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Sequence


class ScoreCache:
    """A small SQLite table of scores keyed by scorer id and the SHA-256 of the text."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS scores (scorer TEXT, text_hash TEXT, score REAL, "
                       "PRIMARY KEY (scorer, text_hash))")

    def _connect(self):
        return sqlite3.connect(self.path, timeout=60)

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def get(self, scorer: str, texts: Sequence[str]) -> dict[str, float]:
        keys = list({self.key(t) for t in texts})
        found = {}
        with self._connect() as db:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                rows = db.execute(f"SELECT text_hash, score FROM scores WHERE scorer = ? AND text_hash IN "
                                  f"({','.join('?' * len(chunk))})", [scorer, *chunk])
                found.update(rows.fetchall())
        return found

    def put(self, scorer: str, scores: dict[str, float]) -> None:
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?)",
                           [(scorer, key, score) for key, score in scores.items()])


class Scorer:
    """Base class: subclasses set `id`, `offline`, `description` and implement `_score`."""

    id: str = "scorer"
    offline: bool = True
    description: str = ""

    def __init__(self, cache_path: str | Path | None = None):
        self.cache = ScoreCache(cache_path) if cache_path else None

    def _score(self, texts: list[str]) -> list[float]:
        raise NotImplementedError

    def score(self, texts: Sequence[str]) -> list[float]:
        """Scores for `texts`, computing only those not cached yet."""
        texts = list(texts)
        known = self.cache.get(self.id, texts) if self.cache else {}
        todo = list(dict.fromkeys(t for t in texts if ScoreCache.key(t) not in known))
        if todo:
            fresh = {ScoreCache.key(t): float(s) for t, s in zip(todo, self._score(todo))}
            known.update(fresh)
            if self.cache:
                self.cache.put(self.id, fresh)
        return [known[ScoreCache.key(t)] for t in texts]

    def record(self) -> dict:
        return {"id": self.id, "offline": self.offline, "description": self.description}
