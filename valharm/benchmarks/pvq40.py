"""PVQ-40: ask each questionnaire item on the 1-6 scale, score the 10 values, compare with the target (NMSE).

Four ways to read the model's answer (`scoring`):
- `slot` (default): the model replies in its own words (greedy), and the rating is read where a VIM-trained
  answer puts it, after "my answer is" (the reason first, the rating last, as in VIM's stage 2): the
  log-probability of each rating 1-6 at that slot. A reply without the slot is read after the slot
  appended, and counted (`slot_appended`). No item is ever unanswered.
- `loglik`: the log-probability of each of the six answers ("1" ... "6") as the first thing the model says,
  as evaluation harnesses score multiple choice. It cannot see a rating the model would give after a reason.
- `answer_space`: every answer VIM's stage 2 teaches ("<Value> is <importance> to me, so my answer is <r>.", or the
  words of the templates the adapter trained with; ten values x six ratings) scored on the same prompt and normalised (valharm.values.answer_space): the rating is read
  over the whole answer, whichever value it names, where one greedy reply names only the most likely value. Its
  records carry P(value named) per item (`value_named`) and the rating's marginal (`probabilities`).
- `generate`: a greedy reply parsed strictly (the study's way); unparseable replies are counted as invalid.
The probability reads give the most likely rating (`scores`) and the probability-weighted mean (`scores_expected`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from valharm.benchmarks import BenchmarkResult
from valharm.benchmarks.intervals import CONFIDENCE, RESAMPLES, SEED
from valharm.data import SAMPLES_DIR, read_table
from valharm.errors import ValharmError
from valharm.generation.requests import GenerationRequest, LoglikelihoodRequest, SlotRequest
from valharm.values import answer_space
from valharm.values.distributions import VALUES, ipsatize, nmse, nmse_scored, pvq_value_scores
from valharm.values.questionnaire import ANSWER_SLOT, SLOT_ANSWERS, answer_distribution, parse_rating, rating_prompt

SAMPLE_PATH = SAMPLES_DIR / "pvq_sample.csv"
SCORINGS = ("slot", "loglik", "answer_space", "generate")
ANSWERS = tuple(str(rating) for rating in range(1, 7))


def load_items(path: str | Path | None) -> pd.DataFrame:
    """Questionnaire items (columns item, value, text); each of the 10 values needs at least one item."""
    path = Path(path) if path else SAMPLE_PATH
    items = read_table(path, "PVQ items file", "fix benchmarks.pvq40.path (CSV with columns item,value,text)")
    missing = [c for c in ("item", "value", "text") if c not in items.columns]
    if missing:
        raise ValharmError(f"{path} is missing column(s) {', '.join(missing)}; expected item,value,text")
    empty = items[["item", "value", "text"]].isna().any(axis=1)
    if empty.any():
        raise ValharmError(f"{path}: row {int(empty.idxmax()) + 2} has an empty cell; every item needs item, value "
                           f"and text")
    repeated = sorted(set(items["item"][items["item"].duplicated()].astype(str)))
    if repeated:
        raise ValharmError(f"{path}: item number(s) {', '.join(repeated)} appear more than once; number each item once")
    unknown = sorted(set(items["value"]) - set(VALUES))
    uncovered = sorted(set(VALUES) - set(items["value"]))
    if unknown or uncovered:
        raise ValharmError(f"{path}: unknown values {unknown} / values without items {uncovered}; "
                           f"every item's value must be one of {', '.join(VALUES)}, each with an item")
    return items


def whole_answer(space: answer_space.AnswerSpace) -> dict:
    """One item read over the whole answer space: the rating's marginal, its most likely rating and its mean, and
    P(value named) (rounded: a compact record)."""
    marginal = space.probs.sum(0)
    return {"rating": int(marginal.argmax()) + 1, "expected_rating": space.expected_rating,
            "probabilities": marginal.tolist(),
            "value_named": dict(zip(VALUES, np.round(space.value_probs, 4).tolist()))}


def rating_probabilities(out, slot: bool) -> dict:
    """One item read from the six ratings' log-probabilities (after the reply's slot, or as the first answer)."""
    rating, mean, probs = answer_distribution(out["logprobs"] if slot else out)
    return {"rating": rating, "expected_rating": mean, "probabilities": probs,
            **({"text": out["reply"], "slot_written": out["slot_written"]} if slot else {})}


def percentile(draws: np.ndarray, items: int, confidence: float = CONFIDENCE) -> dict:
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return {"ci_low": float(low), "ci_high": float(high), "method": "item_bootstrap_percentile",
            "unit": "item (resampled within its value)", "confidence": confidence, "n": items,
            "resamples": len(draws), "seed": SEED}


def item_intervals(ratings: dict, item_values: dict, target: dict, suffix: str = "") -> dict:
    """Intervals of the value scores (raw and ipsatized) and the NMSE from a bootstrap of the items, each value's
    items resampled among themselves; a value without a valid rating gets none, and then the NMSE neither."""
    rng = np.random.default_rng(SEED)
    draws, items = {}, {}
    for value in VALUES:
        valid = np.array([ratings[i] for i, v in item_values.items() if v == value and ratings.get(i) is not None],
                         float)
        if valid.size:
            draws[value] = valid[rng.integers(0, valid.size, (RESAMPLES, valid.size))].mean(1)
            items[value] = int(valid.size)
    found = {f"scores{suffix}": {v: percentile(d, items[v]) for v, d in draws.items()}}
    if len(draws) == len(VALUES):
        matrix = np.stack([draws[v] for v in VALUES], 1)
        centred = matrix - matrix.mean(1, keepdims=True)
        found[f"scores{suffix}_ipsatized"] = {v: percentile(centred[:, i], items[v]) for i, v in enumerate(VALUES)}
        targets = np.array([target[v] for v in VALUES])
        found["all"] = {f"nmse{suffix}": percentile((((matrix - targets) / 5) ** 2).mean(1), sum(items.values()))}
    return found


class PVQ40:
    """The Portrait Values Questionnaire: each item asked on the 1-6 scale, the answer read as `scoring` says."""

    name = "pvq40"
    scorer_role = None

    def __init__(self, path: str | None = None, max_new_tokens: int = 20, scoring: str = "slot",
                 apply_strategy: bool = False, reply_tokens: int = 32):
        if scoring not in SCORINGS:
            raise ValharmError(f"benchmarks.pvq40.scoring='{scoring}' is unknown; use one of {', '.join(SCORINGS)}")
        self.path = Path(path) if path else SAMPLE_PATH
        self.items = load_items(self.path)
        self.max_new_tokens, self.scoring, self.apply_strategy = max_new_tokens, scoring, apply_strategy
        self.reply_tokens = reply_tokens

    def requests(self, prompter):
        prompts = [(f"pvq40/{row.item}", prompter.chat(rating_prompt(row.text), mitigate=self.apply_strategy,
                                                             benchmark=self.name))
                   for row in self.items.itertuples()]
        if self.scoring == "slot":
            return [SlotRequest(id=i, prompt=p, slot=ANSWER_SLOT, continuations=SLOT_ANSWERS,
                                max_new_tokens=self.reply_tokens) for i, p in prompts]
        if self.scoring == "loglik":
            return [LoglikelihoodRequest(id=i, prompt=p, continuations=ANSWERS) for i, p in prompts]
        if self.scoring == "answer_space":
            return [answer_space.answer_space_request(i, p, prompter.wording) for i, p in prompts]
        return [GenerationRequest(id=i, prompt=p, max_new_tokens=self.max_new_tokens) for i, p in prompts]

    def read(self, outputs) -> list[dict]:
        """Per item: its rating (None: unparseable) and what it was read from."""
        if self.scoring in ("slot", "loglik"):
            return [rating_probabilities(out, self.scoring == "slot") for out in outputs]
        if self.scoring == "answer_space":
            return [whole_answer(space) for space in answer_space.read(outputs)]
        return [{"text": texts[0], "rating": parse_rating(texts[0])} for texts in outputs]

    def evaluate(self, requests, outputs, value, scorers=None) -> BenchmarkResult:
        items = self.items["item"].astype(int).tolist()
        item_values = dict(zip(items, self.items["value"]))
        target = value.as_dict()
        readings = self.read(outputs)
        ratings = {item: reading["rating"] for item, reading in zip(items, readings)}
        records = [{"benchmark": self.name, "id": r.id, "item": item, "value": item_values[item], "input": r.prompt,
                    **reading}
                   for r, item, reading in zip(requests, items, readings)]
        scores = pvq_value_scores(ratings, item_values)
        metrics = {"scoring": self.scoring, "nmse": nmse(scores, target), "nmse_scored_values": nmse_scored(scores, target),
                   "scores": scores, "scores_ipsatized": ipsatize(scores)}
        if self.scoring != "generate":
            expected = pvq_value_scores({item: r["expected_rating"] for item, r in zip(items, readings)}, item_values)
            metrics |= {"scores_expected": expected, "nmse_expected": nmse(expected, target),
                        "scores_expected_ipsatized": ipsatize(expected)}
        if self.scoring == "slot":
            metrics["slot_appended"] = sum(not out["slot_written"] for out in outputs)
        metrics |= {"items": len(ratings), "invalid": sum(r is None for r in ratings.values()),
                    "values_without_valid_answer": [v for v in VALUES if math.isnan(scores[v])]}
        intervals = item_intervals(ratings, item_values, target)
        if self.scoring != "generate":
            extra = item_intervals({item: r["expected_rating"] for item, r in zip(items, readings)}, item_values,
                                   target, "_expected")
            intervals = {**intervals, **extra, "all": {**intervals.get("all", {}), **extra.get("all", {})}}
        return BenchmarkResult(metrics, records, {"questionnaire": str(self.path), "scoring": self.scoring,
                                                  "shipped_sample": self.path == SAMPLE_PATH}, intervals)
