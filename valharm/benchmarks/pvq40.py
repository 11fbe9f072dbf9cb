"""PVQ-40: ask each questionnaire item on the 1-6 scale, score the 10 values, compare with the target (NMSE)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from valharm.benchmarks import BenchmarkResult
from valharm.data import SAMPLES_DIR, read_table
from valharm.errors import ValharmError
from valharm.generation import GenerationRequest
from valharm.questionnaire import parse_rating, rating_prompt
from valharm.values import VALUES, nmse, nmse_scored, pvq_value_scores

SAMPLE_PATH = SAMPLES_DIR / "pvq_sample.csv"


def load_items(path: str | Path | None) -> pd.DataFrame:
    """Questionnaire items (columns item, value, text); each of the 10 values needs at least one item."""
    path = Path(path) if path else SAMPLE_PATH
    items = read_table(path, "PVQ items file", "fix benchmarks.pvq40.path (CSV with columns item,value,text)")
    missing = [c for c in ("item", "value", "text") if c not in items.columns]
    if missing:
        raise ValharmError(f"{path} is missing column(s) {', '.join(missing)}; expected item,value,text")
    unknown = sorted(set(items["value"]) - set(VALUES))
    uncovered = sorted(set(VALUES) - set(items["value"]))
    if unknown or uncovered:
        raise ValharmError(f"{path}: unknown values {unknown} / values without items {uncovered}; "
                           f"every item's value must be one of {', '.join(VALUES)}, each with an item")
    return items


class PVQ40:
    """The Portrait Values Questionnaire, greedy answers parsed to ratings."""

    name = "pvq40"

    def __init__(self, path: str | None = None, max_new_tokens: int = 20):
        self.path = Path(path) if path else SAMPLE_PATH
        self.items = load_items(self.path)
        self.max_new_tokens = max_new_tokens

    def requests(self, bundle, strategy, system=None):
        return [GenerationRequest(id=f"pvq40/{row.item}", prompt=strategy.chat(bundle, rating_prompt(row.text), system),
                                  max_new_tokens=self.max_new_tokens)
                for row in self.items.itertuples()]

    def evaluate(self, requests, outputs, value, scorer=None) -> BenchmarkResult:
        ratings = {int(row.item): parse_rating(texts[0]) for row, texts in zip(self.items.itertuples(), outputs)}
        item_values = dict(zip(self.items["item"].astype(int), self.items["value"]))
        scores = pvq_value_scores(ratings, item_values)
        metrics = {"nmse": nmse(scores, value.as_dict()), "nmse_scored_values": nmse_scored(scores, value.as_dict()),
                   "scores": scores,
                   "items": len(ratings), "invalid": sum(r is None for r in ratings.values()),
                   "values_without_valid_answer": [v for v in VALUES if math.isnan(scores[v])]}
        records = [{"benchmark": self.name, "id": r.id, "item": item, "value": item_values[item],
                    "text": texts[0], "rating": ratings[item]}
                   for r, texts, item in zip(requests, outputs, ratings)]
        return BenchmarkResult(metrics, records, {"questionnaire": str(self.path),
                                                  "shipped_sample": self.path == SAMPLE_PATH})
