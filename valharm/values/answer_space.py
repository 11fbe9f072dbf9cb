"""The answer space VIM's stage 2 teaches, read whole.

Stage 2 gives each argument one example per labelled value, same prompt, different answers ("<Value> is
<importance> to me, so my answer is <r>.", or the words of the templates it trained with): a model that learned it perfectly names each of an argument's k labels
about 1/k of the time. One greedy reply collapses that mixture onto the most likely name; this reading scores every
(value, rating) answer in the training's own wording instead (an answer tree on one cached prompt: ten value
branches, six rating leaves under each), normalises over the 60 answers and gives
- P(value named), the probability of each value's branch;
- the rating expected given each value named, and the rating expected over the whole answer;
- value recognition: the probability the answer names one of the values the argument is labelled with, read
  against the label-frequency baseline (naming values as often as the training labels do, whatever the argument).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from valharm.generation.requests import AnswerTreeRequest
from valharm.values.distributions import VALUES
from valharm.values.questionnaire import SCALE
from valharm.values.wording import VALHARM, Wording

RATINGS = np.array(list(SCALE), dtype=float)


def branches(wording: Wording = VALHARM) -> tuple[str, ...]:
    return tuple(wording.branch(v) for v in VALUES)


def leaves(wording: Wording = VALHARM) -> tuple[str, ...]:
    return tuple(wording.leaf(r) for r in SCALE)


BRANCHES, LEAVES = branches(), leaves()  # valharm's wording


def answer_space_request(request_id: str, prompt: str, wording: Wording = VALHARM) -> AnswerTreeRequest:
    return AnswerTreeRequest(request_id, prompt, branches(wording), leaves(wording))


def argument_requests(bundle, arguments: pd.DataFrame, prefix: str = "touche", system: str | None = None,
                      wording: Wording = VALHARM) -> list[AnswerTreeRequest]:
    """The whole answer space to each argument in VIM's stage-2 prompt, in the wording and prompt format the
    adapter was trained with (`wording`; valharm's and the model's own format by default; `system`: a system
    prompt, e.g. an ICL persona)."""
    return [answer_space_request(f"{prefix}/{i}", wording.render(bundle, wording.rating_question(row), system), wording)
            for i, (_, row) in enumerate(arguments.iterrows())]


@dataclass(frozen=True)
class AnswerSpace:
    """The normalised probability of every (value, rating) answer to one prompt: `probs[value][rating - 1]`."""

    probs: np.ndarray

    @classmethod
    def from_logprobs(cls, logprobs) -> "AnswerSpace":
        scores = np.asarray(logprobs, dtype=float)
        weights = np.exp(scores - scores.max())
        return cls(weights / weights.sum())

    @property
    def value_probs(self) -> np.ndarray:
        """P(value named), in canonical value order."""
        return self.probs.sum(1)

    @property
    def rating_given_value(self) -> np.ndarray:
        """The expected rating given each value is named."""
        with np.errstate(invalid="ignore", divide="ignore"):  # a value never named: NaN
            return (self.probs * RATINGS).sum(1) / self.probs.sum(1)

    @property
    def expected_rating(self) -> float:
        """The rating expected over the whole answer (every value named, weighted by its probability)."""
        return float((self.probs * RATINGS).sum())


def read(outputs) -> list[AnswerSpace]:
    return [AnswerSpace.from_logprobs(out) for out in outputs]


def expected_ratings(spaces: list[AnswerSpace]) -> np.ndarray:
    return np.array([s.expected_rating for s in spaces])


def value_probabilities(spaces: list[AnswerSpace]) -> pd.DataFrame:
    """P(value named) per prompt (rows) and value (columns)."""
    return pd.DataFrame([s.value_probs for s in spaces], columns=list(VALUES))


def label_matrix(arguments: pd.DataFrame) -> np.ndarray:
    return (arguments[list(VALUES)].to_numpy() == 1).astype(float)


def recognition(spaces: list[AnswerSpace], arguments: pd.DataFrame) -> float:
    """Mean probability that the answer names one of the argument's labelled values."""
    return float((value_probabilities(spaces).to_numpy() * label_matrix(arguments)).sum(1).mean())


def label_frequency(arguments: pd.DataFrame) -> np.ndarray:
    """How often the training names each value: its share of all value labels."""
    counts = label_matrix(arguments).sum(0)
    return counts / counts.sum()


def frequency_baseline(training: pd.DataFrame, arguments: pd.DataFrame) -> float:
    """The recognition of a model that names values as often as `training` labels them, blind to the argument."""
    return float((label_matrix(arguments) * label_frequency(training)).sum(1).mean())


def summary(spaces: list[AnswerSpace], arguments: pd.DataFrame, training: pd.DataFrame) -> dict:
    """Recognition against its baseline, P(value named) and the rating given each value, averaged over prompts."""
    named = value_probabilities(spaces).mean()
    given = pd.DataFrame([s.rating_given_value for s in spaces], columns=list(VALUES)).mean()
    return {"recognition": recognition(spaces, arguments), "frequency_baseline": frequency_baseline(training, arguments),
            "value_named": named.round(4).to_dict(), "rating_given_value": given.round(4).to_dict(),
            "mean_rating": float(expected_ratings(spaces).mean())}
