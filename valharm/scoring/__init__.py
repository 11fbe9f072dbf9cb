"""Scorers and judges: items in, one `Verdict` per item out, cached by (scorer id, item hash).

A scorer has a `task` (toxicity: a number in [0, 1]; regard: negative/neutral/positive/other;
harmfulness: 1-5; flagging: flagged/unflagged) and a `kind` (its backend). Its id is built from both
and from every setting that changes its numbers, so two scorers never share cache entries unless
they would give the same answers. Valid and invalid verdicts are cached; failed calls are not, so a
rerun tries them again.

May import generation (the OpenAI-compatible client, local judges), models, `errors` and `caching`; never
benchmarks or above.
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from valharm.caching import Cache, digest

OK, INVALID, FAILED = "ok", "invalid", "failed"
TASKS = ("toxicity", "regard", "harmfulness", "flagging")
REGARD_LABELS = ("negative", "neutral", "positive", "other")


@dataclass
class Verdict:
    """One scored item: `value` is a number or a label when `status` is ok, else None."""

    value: float | int | str | None
    status: str = OK  # ok | invalid (answered, but not in the expected form) | failed (no answer)
    reason: str | None = None  # a judge's reason, or why the item is invalid or failed
    reply: str | None = None  # a judge's raw reply
    model: str | None = None  # the model snapshot that answered (an API judge's reply says)
    tries: int = 1  # how often the item was asked (an invalid reply asked again counts up)

    @classmethod
    def invalid(cls, why: str, reply: str | None = None) -> "Verdict":
        return cls(None, INVALID, why, reply)

    @classmethod
    def failed(cls, why: str) -> "Verdict":
        return cls(None, FAILED, why)


Done = Callable[[int, Verdict], None]


class Scorer:
    """Base class: subclasses set `kind`, `task`, `offline`, `description` and implement `settings` and `_score`."""

    kind: str = ""
    task: str = ""
    offline: bool = True
    description: str = ""
    flush_every: int = 1  # verdicts written per cache transaction: 1 for slow backends, so a kill loses nothing

    def __init__(self, cache_path: str | Path | None = None, progress: bool = True):
        if not self.kind or self.task not in TASKS:
            raise TypeError(f"{type(self).__name__} must set kind and a task from {TASKS}")
        self.cache = Cache(cache_path) if cache_path else None
        self.progress = progress
        self.counts: Counter = Counter()

    def settings(self) -> dict:
        """Everything that changes this scorer's answers (model, version, rubric, decoding); no secrets."""
        raise NotImplementedError

    @functools.cached_property
    def id(self) -> str:
        return f"{self.kind}/{self.task}/{digest(self.settings())[:16]}"

    def sent(self, item):
        """What the backend is given for `item` (a judge: its messages), as per-sample records show it."""
        return item

    def _score(self, items: list, done: Done) -> None:
        """Score `items`, calling `done(index, verdict)` for each as soon as it is known."""
        raise NotImplementedError

    def score(self, items: Sequence, desc: str | None = None) -> list[Verdict]:
        """Verdicts for `items` (texts, or JSON-able tuples for judges), computing only what is not cached; `counts`
        gains the items' final statuses (ok / invalid / failed), as a benchmark's metrics count them."""
        verdicts = self.verdicts(items, desc)
        self.counts.update(verdict.status for verdict in verdicts)
        return verdicts

    def verdicts(self, items: Sequence, desc: str | None = None) -> list[Verdict]:
        """`score` without the status counts."""
        keys = [digest(item) for item in items]
        known = {k: Verdict(**v) for k, v in (self.cache.get(self.id, keys) if self.cache else {}).items()}
        todo = list(dict.fromkeys(k for k in keys if k not in known))
        self.counts["cache_hits"] += len(set(keys)) - len(todo)
        self.counts["cache_misses"] += len(todo)
        if todo:
            first = dict(zip(keys, items))
            pending: dict[str, dict] = {}
            bar = tqdm(total=len(todo), desc=desc or self.task, disable=not self.progress, unit="item")

            def done(index: int, verdict: Verdict) -> None:
                key = todo[index]
                known[key] = verdict
                if verdict.status != FAILED:
                    pending[key] = asdict(verdict)
                if len(pending) >= self.flush_every:
                    self._flush(pending)
                bar.update(1)

            try:
                self._score([first[k] for k in todo], done)
            finally:
                self._flush(pending)
                bar.close()
        missing = [k for k in todo if k not in known]
        if missing:
            raise RuntimeError(f"{type(self).__name__} returned no verdict for {len(missing)} item(s)")
        return [known[k] for k in keys]

    def _flush(self, pending: dict) -> None:
        if self.cache and pending:
            self.cache.put(self.id, dict(pending))
        pending.clear()

    def record(self) -> dict:
        """What results.json says about this scorer (its counts are reported separately)."""
        return {"id": self.id, "kind": self.kind, "task": self.task, "offline": self.offline,
                "description": self.description, "settings": self.settings()}
