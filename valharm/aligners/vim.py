"""VIM (value injection): one LoRA adapter trained on argument generation, then agreement prediction.

Stage 1 (argument generation) teaches which Touché arguments the persona would voice: an argument's target
score is the lowest score among its labelled values (the study's rule; `score_rule=mean` takes their mean),
and it is voiced when that score reaches `threshold`.
Stage 2 (agreement prediction) teaches the persona to rate statements on the 1-6 "like me" scale:
- `per_value` (default, the study's): one example per (argument, labelled value) pair, rated from *that
  value's* target score, the answer naming the value and its importance first and the rating last.
- `per_argument` (valharm's earlier variant): one example per argument, rated from the stage-1 score, the
  answer naming the labelled value nearest that score.
Two controls change the data, not the construction: `shuffle_labels` permutes the label rows across arguments
(which argument expresses which value is lost), `cue=labels` names each argument's labelled values at the end of
its premise (which value an argument expresses becomes readable from its text: the positive control).
Labels are read by column name; `labels=study_positional` reproduces the study's stage-2 reader (by position, one
column off) to rebuild the models the paper was trained on. The words of both stages are valharm's or, with
`templates`, a file's (the study's: the shared data's vim_templates/study.json), as the model's own prompt format or
`prompt_format=raw` (the study's: the text itself).
Every run writes the examples it trains on to `stages/<stage>/{train,valid}_examples.jsonl` before training.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import lightning as L
import pandas as pd

from valharm.aligners import Alignment
from valharm.data.touche import (
    CUES,
    LABEL_READERS,
    cue_labels,
    labelled_values,
    study_positional_labels,
)
from valharm.errors import ValharmError
from valharm.models.batches import BATCHINGS, Example, SupervisedDataModule
from valharm.models.loading import LoadedModel, add_lora
from valharm.models.training import fit_adapter, main_process
from valharm.values.alignment import READINGS, AlignmentCheck
from valharm.values.distributions import VALUES, ValueDistribution
from valharm.values.wording import VALHARM, Wording

SCORE_RULES = {"min": min, "mean": lambda xs: sum(xs) / len(xs)}
STAGE2_RULES = ("per_value", "per_argument")
STAGES = ("argument_generation", "agreement_prediction")
EXAMPLES_FILE = "{split}_examples.jsonl"


@dataclasses.dataclass(frozen=True)
class VIMExample(Example):
    """A training pair and what it was built from: the argument's row in its split and, in stage 2, the value
    rated and the rating."""

    argument: int = -1
    value: str | None = None
    rating: int | None = None

    def record(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "raw"}


def argument_score(row: pd.Series, scores: dict[str, float], rule: str = "min") -> float | None:
    """Target score of an argument: the lowest (or mean) score among the values it is labelled with."""
    values = labelled_values(row)
    return SCORE_RULES[rule]([scores[v] for v in values]) if values else None


def argument_example(row: pd.Series, score: float, threshold: float, argument: int = -1,
                     wording: Wording = VALHARM) -> VIMExample:
    """Stage 1: would the persona voice this argument (score >= threshold) or not."""
    prompt, response = wording.argument(row, score >= threshold)
    return VIMExample(prompt, response, raw=wording.raw, argument=argument)


def sample_rating(score: float, rng: random.Random) -> int:
    """A whole rating between floor and ceiling of `score`, the ceiling with probability of its fraction."""
    low = math.floor(score)
    fraction = score - low
    return low if fraction == 0 else rng.choices([low, low + 1], weights=[1 - fraction, fraction])[0]


def rated_example(row: pd.Series, value: str, rating: int, argument: int = -1,
                  wording: Wording = VALHARM) -> VIMExample:
    return VIMExample(wording.rating_question(row), wording.answer(value, rating), raw=wording.raw,
                      argument=argument, value=value, rating=rating)


def per_value_examples(row: pd.Series, scores: dict[str, float], rng: random.Random,
                       argument: int = -1, wording: Wording = VALHARM) -> list[VIMExample]:
    """Stage 2, the study's construction: one example per labelled value, rated from that value's own score."""
    return [rated_example(row, v, sample_rating(scores[v], rng), argument, wording) for v in labelled_values(row)]


def per_argument_example(row: pd.Series, score: float, scores: dict[str, float], rng: random.Random,
                         argument: int = -1, wording: Wording = VALHARM) -> VIMExample:
    """Stage 2, valharm's variant: one example per argument, rated from the stage-1 score; the answer names the
    labelled value whose score is nearest it (ties: the higher), so an argument gets one rating."""
    value = min(labelled_values(row), key=lambda v: (abs(scores[v] - score), -scores[v]))
    return rated_example(row, value, sample_rating(score, rng), argument, wording)


def build_examples(frame: pd.DataFrame, value: ValueDistribution, threshold: float, seed: int,
                   score_rule: str = "min", stage2: str = "per_value",
                   wording: Wording = VALHARM) -> tuple[list[VIMExample], list[VIMExample], int]:
    """(stage-1 examples, stage-2 examples, number of unlabelled arguments skipped)."""
    scores, rng = value.as_dict(), random.Random(seed)
    stage1, stage2_examples, skipped = [], [], 0
    for index, (_, row) in enumerate(frame.iterrows()):
        score = argument_score(row, scores, score_rule)
        if score is None:
            skipped += 1
            continue
        stage1.append(argument_example(row, score, threshold, index, wording))
        if stage2 == "per_value":
            stage2_examples.extend(per_value_examples(row, scores, rng, index, wording))
        else:
            stage2_examples.append(per_argument_example(row, score, scores, rng, index, wording))
    return stage1, stage2_examples, skipped


STAGE1_SPLITS = ("shared", "per_distribution")


def all_arguments(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The dataset's arguments in their file's order, from its train/valid/test split of one file."""
    full = pd.concat([splits[name] for name in ("train", "valid", "test")]).sort_index()
    if not full.index.equals(pd.RangeIndex(len(full))):
        raise ValharmError("aligner.stage1_split=per_distribution splits all the dataset's arguments as the study did: "
                           "load them from one file (dataset.path, e.g. valueEval_10.csv), not dataset.splits")
    return full


def per_distribution_stage1(arguments: pd.DataFrame, value: ValueDistribution, threshold: float, seed: int,
                            score_rule: str, wording: Wording, test_index) -> tuple[dict, dict]:
    """The study's stage-1 data (its preprocessing.py): every argument scored for this distribution, the voiced and
    the unvoiced ones each split 80/10/10 (`sample(frac=0.8, random_state=seed)`, then half of the rest), so the
    split follows the distribution. ({split: examples, `argument` = the row in the file}, what it did: sizes,
    voiced counts and how many of `test_index` (the shared test split) it trains on)."""
    scores = value.as_dict()
    scored = {i: argument_score(row, scores, score_rule) for i, row in arguments.iterrows()}
    groups = {"voiced": [i for i, s in scored.items() if s is not None and s >= threshold],
              "unvoiced": [i for i, s in scored.items() if s is not None and s < threshold]}
    cut = {}
    for kind, rows in groups.items():
        frame = arguments.loc[rows]
        train = frame.sample(frac=0.8, random_state=seed)
        rest = frame.drop(train.index)
        valid = rest.sample(frac=0.5, random_state=seed)
        cut[kind] = {"train": train, "valid": valid, "test": rest.drop(valid.index)}
    examples = {split: [argument_example(row, scored[i], threshold, i, wording)
                        for kind in groups for i, row in cut[kind][split].iterrows()] for split in ("train", "valid")}
    trained = set(cut["voiced"]["train"].index) | set(cut["unvoiced"]["train"].index)
    return examples, {"stage1_split": "per_distribution",
                      "stage1_arguments": {split: len(examples[split]) for split in examples},
                      "stage1_voiced": {split: len(cut["voiced"][split]) for split in ("train", "valid", "test")},
                      "test_arguments_in_stage1_train": len(trained & set(test_index))}


def shuffle_labels(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """A control: the arguments' value-label rows permuted across arguments (seeded). The ratings the data
    teaches keep their distribution; which argument carries which value is broken."""
    shuffled = frame.copy()
    shuffled[list(VALUES)] = frame[list(VALUES)].sample(frac=1.0, random_state=seed).to_numpy()
    return shuffled


def write_examples(path: Path, examples: list[VIMExample]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as handle:
        handle.writelines(json.dumps(e.record()) + "\n" for e in examples)
    tmp.replace(path)


class VIMAligner:
    """Train one adapter through both VIM stages; the best-validation adapter of stage 2 is kept, then checked
    on the test split's arguments against the base model (`alignment_check`)."""

    trains = True

    def __init__(self, name: str = "vim", threshold: float = 3.0, seed: int = 42, max_arguments: int | None = None,
                 lora: dict | None = None, training: dict | None = None, score_rule: str = "min",
                 stage2: str = "per_value", shuffle_labels: bool = False, cue: str = "none",
                 alignment_check: dict | None = None, templates: str | None = None, prompt_format: str = "model",
                 labels: str = "by_name", stage1_split: str = "shared"):
        if score_rule not in SCORE_RULES:
            raise ValharmError(f"aligner.score_rule='{score_rule}' is unknown; use one of {', '.join(SCORE_RULES)}")
        if stage2 not in STAGE2_RULES:
            raise ValharmError(f"aligner.stage2='{stage2}' is unknown; use one of {', '.join(STAGE2_RULES)}")
        if labels not in LABEL_READERS:
            raise ValharmError(f"aligner.labels='{labels}' is unknown; use one of {', '.join(LABEL_READERS)}")
        if stage1_split not in STAGE1_SPLITS:
            raise ValharmError(f"aligner.stage1_split='{stage1_split}' is unknown; use one of {', '.join(STAGE1_SPLITS)}")
        if stage1_split == "per_distribution" and (shuffle_labels or cue != "none"):
            raise ValharmError("aligner.stage1_split=per_distribution reproduces the study's data: use it with "
                               "shuffle_labels=false and cue=none")
        if cue not in CUES:
            raise ValharmError(f"aligner.cue='{cue}' is unknown; use one of {', '.join(CUES)}")
        reading = (alignment_check or {}).get("reading", "answer_space")
        if reading not in READINGS:
            raise ValharmError(f"aligner.alignment_check.reading='{reading}' is unknown; use one of "
                               f"{', '.join(READINGS)}")
        self.name, self.threshold, self.seed, self.score_rule = name, threshold, seed, score_rule
        self.stage2, self.shuffle_labels, self.cue = stage2, shuffle_labels, cue
        self.max_arguments, self.labels, self.stage1_split = max_arguments, labels, stage1_split
        self.wording = Wording.load(templates, prompt_format)
        self.lora = dict(lora or {})
        self.training = {"lr": 2e-5, "epochs": 5, "batch_size": 8, "max_length": 128, "max_length_agreement": 256,
                         "weight_decay": 0.0, "batching": "length_grouped", "packing": "auto", "compile": False,
                         **(training or {})}
        if self.training["batching"] not in BATCHINGS:
            raise ValharmError(f"aligner.training.batching='{self.training['batching']}' is unknown; use one of "
                               f"{', '.join(BATCHINGS)}")
        self.alignment_check = dict(alignment_check or {})

    def examples(self, splits: dict[str, pd.DataFrame], value: ValueDistribution) -> dict:
        """split -> (stage-1 examples, stage-2 examples, unlabelled arguments skipped)."""
        if self.shuffle_labels:
            splits = {name: shuffle_labels(part, self.seed) for name, part in splits.items()}
        if self.cue == "labels":
            splits = {name: cue_labels(part) for name, part in splits.items()}
        built = {name: build_examples(part, value, self.threshold, self.seed, self.score_rule, self.stage2,
                                      self.wording) for name, part in splits.items()}
        if self.labels == "study_positional":  # stage 2 only: the study's stage-1 data read labels by name
            built = {name: (built[name][0], build_examples(study_positional_labels(part), value, self.threshold,
                                                           self.seed, self.score_rule, self.stage2, self.wording)[1],
                            built[name][2]) for name, part in splits.items()}
        return built

    def align(self, bundle: LoadedModel, value: ValueDistribution, splits: dict[str, pd.DataFrame], run_dir: Path,
              make_trainer) -> Alignment:
        """`splits`: train/valid/test arguments (the dataset's split; valid picks the kept epoch)."""
        if not isinstance(splits, dict) or set(splits) != {"train", "valid", "test"}:
            raise ValharmError("aligner=vim trains on Touché arguments: use dataset=touche23")
        full = all_arguments(splits) if self.stage1_split == "per_distribution" else None
        if self.max_arguments:
            splits = {name: part.head(self.max_arguments) for name, part in splits.items()}
        built = self.examples(splits, value)
        metrics = {"arguments": {name: len(part) for name, part in splits.items()},
                   "unlabelled_arguments": sum(b[2] for b in built.values()),
                   "stage2": self.stage2, "score_rule": self.score_rule, "shuffled_labels": self.shuffle_labels,
                   "cue": self.cue, "labels": self.labels, "stage1_split": self.stage1_split, **self.wording.record()}
        if full is not None:  # stage 1 from all arguments, split per distribution; stage 2 keeps the shared split
            stage1, record = per_distribution_stage1(full, value, self.threshold, self.seed, self.score_rule,
                                                     self.wording, splits["test"].index)
            built = {name: (stage1[name][:self.max_arguments or None], *built[name][1:]) for name in stage1}
            metrics |= record | {"stage1_arguments": {name: len(built[name][0]) for name in stage1}}  # after the cap
        stages = {}
        for index, stage in enumerate(STAGES):  # tokenise both stages up front so bad data fails before training
            train, valid = built["train"][index], built["valid"][index]
            if main_process():
                for split, examples in (("train", train), ("valid", valid)):
                    write_examples(run_dir / "stages" / stage / EXAMPLES_FILE.format(split=split), examples)
            length = self.training["max_length" if index == 0 else "max_length_agreement"]
            stages[stage] = SupervisedDataModule(bundle, train, valid, self.training["batch_size"], length, self.seed,
                                                 self.training.get("packing", "auto"), self.training["batching"])
        L.seed_everything(self.seed, verbose=False)  # the adapter's initial weights follow the seed
        model = add_lora(bundle.model, **self.lora)
        for stage, data in stages.items():
            metrics[stage] = fit_adapter(model, data, run_dir / "stages" / stage, make_trainer, lr=self.training["lr"],
                                         seed=self.seed, stage=stage, epochs=self.training["epochs"],
                                         compile=self.training["compile"],
                                         weight_decay=self.training["weight_decay"])
        adapter_dir = run_dir / "adapter"
        if main_process():
            model.save_pretrained(adapter_dir)
        settings = {k: v for k, v in self.alignment_check.items() if k != "enabled"}
        enabled = self.alignment_check.get("enabled", True)
        check = AlignmentCheck(splits["test"], wording=self.wording, **settings) if enabled else None
        return Alignment(model=model, adapter_dir=adapter_dir, metrics=metrics, check=check, wording=self.wording)
