"""Did value alignment take? Ratings of Touché arguments, read as VIM's stage 2 teaches them, and the contrasts built
on them.

A value's contrast D_v is the mean rating of the arguments labelled v minus the mean rating of the others. An
adapter that taught a persona to hold v important raises D_v over its base model's (the shift); a crossover of
two runs aligned to opposed values a and b,
    CC = [D_a(run a) - D_a(run b)] + [D_b(run b) - D_b(run a)],
is positive only if each run rates its own value's arguments up relative to the other run. The check reads each
argument's rating over the whole answer space (`reading=answer_space`, valharm.values.answer_space: every
"<Value> is <importance> to me, so my answer is <r>." answer scored, so it also reports value recognition), or
(`reading=slot`) as the probability-weighted mean of 1-6 after "my answer is" in one greedy reply.
"""
from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from valharm.errors import ValharmError
from valharm.generation.requests import SlotRequest, cached_run
from valharm.models.loading import LoadedModel
from valharm.values import answer_space
from valharm.values.distributions import VALUES
from valharm.values.questionnaire import ANSWER_SLOT, SLOT_ANSWERS, answer_distribution
from valharm.values.wording import VALHARM, Wording


def rating_requests(bundle: LoadedModel, arguments: pd.DataFrame, reply_tokens: int = 32,
                    prefix: str = "touche", wording: Wording = VALHARM) -> list[SlotRequest]:
    """Ask the model to rate each argument as VIM's stage 2 does (same prompt and prompt format as its training)."""
    return [SlotRequest(f"{prefix}/{i}", wording.render(bundle, wording.rating_question(row)), ANSWER_SLOT,
                        SLOT_ANSWERS, reply_tokens) for i, (_, row) in enumerate(arguments.iterrows())]


def expected_ratings(outputs: Sequence[dict]) -> np.ndarray:
    """Probability-weighted mean rating (1-6) of each SlotRequest output."""
    return np.array([answer_distribution(out["logprobs"])[1] for out in outputs])


def contrast(ratings: np.ndarray, labelled: np.ndarray) -> float | None:
    """Mean rating of the labelled items minus the mean of the rest; None when either group is empty."""
    labelled = np.asarray(labelled, dtype=bool)
    if labelled.all() or not labelled.any():
        return None
    return float(ratings[labelled].mean() - ratings[~labelled].mean())


def value_contrasts(ratings: np.ndarray, arguments: pd.DataFrame) -> dict[str, float | None]:
    """D_v for each of the ten values, from the arguments' value labels."""
    return {v: contrast(ratings, arguments[v].to_numpy() == 1) for v in VALUES}


def weighted_shift(shifts: Mapping[str, float | None], scores: Mapping[str, float]) -> float | None:
    """The shifts weighted by how far each value's target score lies from the mean score, scaled so that for an
    extreme distribution it is the target value's shift minus the others' mean shift. None for a flat target."""
    known = [v for v in VALUES if shifts.get(v) is not None]
    centre = np.mean([scores[v] for v in known]) if known else 0.0
    weights = {v: scores[v] - centre for v in known}
    scale = sum(w for w in weights.values() if w > 0)
    if scale <= 0:
        return None
    return float(sum(weights[v] * shifts[v] for v in known) / scale)


def crossover(ratings_a: np.ndarray, ratings_b: np.ndarray, labelled_a: np.ndarray,
              labelled_b: np.ndarray) -> float:
    """CC of run a (aligned to value a) and run b (to value b) on the same items."""
    return ((contrast(ratings_a, labelled_a) - contrast(ratings_b, labelled_a))
            + (contrast(ratings_b, labelled_b) - contrast(ratings_a, labelled_b)))


def resampled_contrast(ratings: np.ndarray, labelled: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """D over each row of `picks` (item indices drawn with replacement); NaN where a group is empty."""
    r, lab = ratings[picks], labelled[picks].astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (r * lab).sum(1) / lab.sum(1) - (r * (1 - lab)).sum(1) / (1 - lab).sum(1)


def crossover_interval(ratings_a: np.ndarray, ratings_b: np.ndarray, labelled_a: np.ndarray, labelled_b: np.ndarray,
                       resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of CC, resampling items (both runs rate the same items: paired)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ratings_a), size=(resamples, len(ratings_a)))
    labelled_a, labelled_b = np.asarray(labelled_a, bool), np.asarray(labelled_b, bool)
    cc = ((resampled_contrast(ratings_a, labelled_a, picks) - resampled_contrast(ratings_b, labelled_a, picks))
          + (resampled_contrast(ratings_b, labelled_b, picks) - resampled_contrast(ratings_a, labelled_b, picks)))
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(cc, [tail, 100 - tail])
    return float(low), float(high)


READINGS = ("answer_space", "slot")


def slot_reading(outputs: Sequence[dict]) -> tuple[np.ndarray, dict, list[dict]]:
    """(ratings, summary fields, per-argument record fields) of SlotRequest outputs: one greedy reply each."""
    return (expected_ratings(outputs), {"slot_appended": sum(not o["slot_written"] for o in outputs)},
            [{"text": o["reply"]} for o in outputs])


def answer_space_reading(outputs: Sequence, arguments: pd.DataFrame) -> tuple[np.ndarray, dict, list[dict]]:
    """(ratings, summary fields, per-argument record fields) of answer-space outputs: the rating over the whole
    answer, value recognition and P(value named)."""
    spaces = answer_space.read(outputs)
    named = answer_space.value_probabilities(spaces)
    return (answer_space.expected_ratings(spaces),
            {"recognition": answer_space.recognition(spaces, arguments),
             "value_named": named.mean().round(4).to_dict()},
            [{"value_named": row} for row in named.round(4).to_dict("records")])


class AlignmentCheck:
    """After training: the adapter and its base (the adapter switched off, same weights loaded) rate the held-out
    arguments, read as `reading` says; per value, D_v of both and the shift, and the target-weighted shift."""

    def __init__(self, arguments: pd.DataFrame, max_arguments: int | None = None, reply_tokens: int = 32,
                 reading: str = "answer_space", wording: Wording = VALHARM):
        """`wording`: the words (and prompt format) the adapter was trained with; the check reads in them."""
        if reading not in READINGS:
            raise ValharmError(f"aligner.alignment_check.reading='{reading}' is unknown; use one of "
                               f"{', '.join(READINGS)}")
        if reading == "slot" and ANSWER_SLOT not in wording.rating_response:
            raise ValharmError(f"aligner.alignment_check.reading=slot reads the rating after '{ANSWER_SLOT}', which "
                               f"the stage-2 answer of {wording.source} lacks; use reading=answer_space")
        self.wording = wording
        self.arguments = arguments.head(max_arguments) if max_arguments else arguments
        self.reply_tokens, self.reading = reply_tokens, reading

    def requests(self, bundle: LoadedModel) -> list:
        if self.reading == "answer_space":
            return answer_space.argument_requests(bundle, self.arguments, wording=self.wording)
        return rating_requests(bundle, self.arguments, self.reply_tokens, wording=self.wording)

    def read(self, outputs: Sequence) -> tuple[np.ndarray, dict, list[dict]]:
        if self.reading == "answer_space":
            return answer_space_reading(outputs, self.arguments)
        return slot_reading(outputs)

    def run(self, model, bundle: LoadedModel, generator, cache, namespace: str, base_namespace: str,
            scores: Mapping[str, float]) -> tuple[dict, list[dict]]:
        """(summary for results.json, one record per argument for generations.jsonl)."""
        start = time.perf_counter()
        requests = self.requests(bundle)
        aligned, aligned_cache = cached_run(generator, model, bundle.tokenizer, requests, cache, namespace,
                                            desc="alignment check")
        with model.disable_adapter():
            base, base_cache = cached_run(generator, model, bundle.tokenizer, requests, cache, base_namespace,
                                          desc="alignment check (base)")
        (rated, found, fields), (base_rated, base_found, base_fields) = self.read(aligned), self.read(base)
        contrasts, base_contrasts = value_contrasts(rated, self.arguments), value_contrasts(base_rated, self.arguments)
        shifts = {v: None if contrasts[v] is None else contrasts[v] - base_contrasts[v] for v in VALUES}
        summary = {
            "split": "test", "arguments": len(requests), "reading": self.reading,
            **({"reply_tokens": self.reply_tokens} if self.reading == "slot" else {}),
            "labelled": {v: int(self.arguments[v].sum()) for v in VALUES},
            "contrast": contrasts, "base_contrast": base_contrasts, "shift": shifts,
            "weighted_shift": weighted_shift(shifts, scores),
            "mean_rating": float(rated.mean()), "base_mean_rating": float(base_rated.mean()),
            # the training split is not at hand here: the baseline names values as often as these (test) arguments'
            # own labels do
            "frequency_baseline": answer_space.frequency_baseline(self.arguments, self.arguments),
            **found, **{f"base_{key}": item for key, item in base_found.items()},
            "cache": {"aligned": aligned_cache, "base": base_cache},
            "seconds": round(time.perf_counter() - start, 2),
        }
        labels = self.arguments[list(VALUES)].to_numpy()
        records = [{"benchmark": "alignment_check", "id": r.id, "values": [v for v, x in zip(VALUES, row) if x],
                    "expected_rating": float(a), "base_expected_rating": float(b), **one,
                    **{f"base_{key}": item for key, item in base_one.items()}}
                   for r, row, a, b, one, base_one in zip(requests, labels, rated, base_rated, fields, base_fields)]
        return summary, records
