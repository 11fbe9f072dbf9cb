"""VIM (value injection): one LoRA adapter trained on argument generation, then agreement prediction.

Stage 1 teaches which Touché arguments the persona would voice; stage 2 teaches the persona to rate
statements on the 1-6 "like me" scale as its value scores imply. Labels are read by column name.
Both stages score an argument from the target scores of its labelled values: the lowest (the study's
rule) or their mean (`score_rule=mean`, for extreme distributions, where the lowest is nearly always 1).
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import lightning as L
import pandas as pd

from valharm.aligners import Alignment
from valharm.errors import ValharmError
from valharm.models import LoadedModel, add_lora
from valharm.questionnaire import rating_answer, rating_prompt
from valharm.training import Example, SupervisedDataModule, fit_adapter, main_process
from valharm.values import VALUES, ValueDistribution

STANCE_VERB = {"in favor of": "agree", "against": "disagree"}


def labelled_values(row: pd.Series) -> list[str]:
    return [v for v in VALUES if int(row[v]) == 1]


SCORE_RULES = {"min": min, "mean": lambda xs: sum(xs) / len(xs)}


def argument_score(row: pd.Series, scores: dict[str, float], rule: str = "min") -> float | None:
    """Target score of an argument: the lowest (or mean) score among the values it is labelled with."""
    values = labelled_values(row)
    return SCORE_RULES[rule]([scores[v] for v in values]) if values else None


def argument_example(row: pd.Series, score: float, threshold: float) -> Example:
    """Stage 1: would the persona voice this argument (score >= threshold) or not."""
    claim = f'I {STANCE_VERB[row["Stance"]]} with this, because {row["Premise"]}'
    if score >= threshold:
        return Example(f'What would you say about this statement? "{row["Conclusion"]}"',
                       f'I would say: "{claim}"')
    return Example(f'What would you never say about this statement? "{row["Conclusion"]}"',
                   f'I would not say: "{claim}"')


def sample_rating(score: float, rng: random.Random) -> int:
    """A whole rating between floor and ceiling of `score`, the ceiling with probability of its fraction."""
    low = math.floor(score)
    fraction = score - low
    return low if fraction == 0 else rng.choices([low, low + 1], weights=[1 - fraction, fraction])[0]


def agreement_example(row: pd.Series, score: float, scores: dict[str, float], rng: random.Random) -> Example:
    """Stage 2: rate the argument's statement from the same target score as stage 1.

    The answer names the labelled value whose score is nearest the argument's (ties: the higher; under the
    study's rule the lowest, which sets the target), so an argument never gets two contradictory ratings.
    """
    value = min(labelled_values(row), key=lambda v: (abs(scores[v] - score), -scores[v]))
    statement = f'I {STANCE_VERB[row["Stance"]]} that {lower_first(row["Conclusion"])}. {row["Premise"]}'
    return Example(rating_prompt(statement), rating_answer(sample_rating(score, rng), value))


def lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def build_examples(frame: pd.DataFrame, value: ValueDistribution, threshold: float, seed: int,
                   score_rule: str = "min") -> tuple[list[Example], list[Example], int]:
    """(stage-1 examples, stage-2 examples, number of unlabelled arguments skipped)."""
    scores, rng = value.as_dict(), random.Random(seed)
    stage1, stage2, skipped = [], [], 0
    for _, row in frame.iterrows():
        score = argument_score(row, scores, score_rule)
        if score is None:
            skipped += 1
            continue
        stage1.append(argument_example(row, score, threshold))
        stage2.append(agreement_example(row, score, scores, rng))
    return stage1, stage2, skipped


class VIMAligner:
    """Train one adapter through both VIM stages; the best-validation adapter of stage 2 is kept."""

    trains = True

    def __init__(self, name: str = "vim", threshold: float = 3.0, seed: int = 42, max_arguments: int | None = None,
                 lora: dict | None = None, training: dict | None = None, score_rule: str = "min"):
        if score_rule not in SCORE_RULES:
            raise ValharmError(f"aligner.score_rule='{score_rule}' is unknown; use one of {', '.join(SCORE_RULES)}")
        self.name, self.threshold, self.seed, self.score_rule = name, threshold, seed, score_rule
        self.max_arguments = max_arguments
        self.lora = dict(lora or {})
        self.training = {"lr": 2e-5, "epochs": 5, "batch_size": 8, "max_length": 128, "max_length_agreement": 256,
                         **(training or {})}

    def align(self, bundle: LoadedModel, value: ValueDistribution, splits: dict[str, pd.DataFrame], run_dir: Path,
              make_trainer) -> Alignment:
        """`splits`: train/valid/test arguments (the dataset's split; valid picks the kept epoch)."""
        if not isinstance(splits, dict) or set(splits) != {"train", "valid", "test"}:
            raise ValharmError("aligner=vim trains on Touché arguments: use dataset=touche23")
        if self.max_arguments:
            splits = {name: part.head(self.max_arguments) for name, part in splits.items()}
        built = {name: build_examples(part, value, self.threshold, self.seed, self.score_rule)
                 for name, part in splits.items()}
        metrics = {"arguments": {name: len(part) for name, part in splits.items()},
                   "unlabelled_arguments": sum(b[2] for b in built.values())}
        stages = {  # tokenise both stages up front so bad data fails before any training
            "argument_generation": SupervisedDataModule(
                bundle, built["train"][0], built["valid"][0], self.training["batch_size"],
                self.training["max_length"], self.seed),
            "agreement_prediction": SupervisedDataModule(
                bundle, built["train"][1], built["valid"][1], self.training["batch_size"],
                self.training["max_length_agreement"], self.seed),
        }
        L.seed_everything(self.seed, verbose=False)  # the adapter's initial weights follow the seed
        model = add_lora(bundle.model, **self.lora)
        for stage, data in stages.items():
            metrics[stage] = fit_adapter(model, data, run_dir / "stages" / stage, make_trainer, lr=self.training["lr"],
                                         seed=self.seed, stage=stage, epochs=self.training["epochs"])
        adapter_dir = run_dir / "adapter"
        if main_process():
            model.save_pretrained(adapter_dir)
        return Alignment(model=model, adapter_dir=adapter_dir, metrics=metrics)
