"""Touché23-ValueEval arguments labelled with the 10 Schwartz values, read by column name."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from valharm.data import SAMPLES_DIR, read_table
from valharm.errors import ValharmError
from valharm.values.distributions import VALUES

TEXT_COLUMNS = ("Conclusion", "Stance", "Premise")
STANCES = ("in favor of", "against")
SAMPLE_PATH = SAMPLES_DIR / "touche23_sample.tsv"


def labelled_values(row: pd.Series) -> list[str]:
    """The values an argument is labelled with, read by column name."""
    return [v for v in VALUES if int(row[v]) == 1]


LABEL_READERS = ("by_name", "study_positional")


def study_positional_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """The study's stage-2 label reader, reproduced: it took a row's ten labels by position (`iloc[-11:-1]` of its
    split files, whose last ten columns are the values), one column off, so each value gets the label of the value
    before it in column order, Achievement none, and the Universalism column is never read."""
    shifted = frame.copy()
    shifted[list(VALUES)] = [[0, *labels[:-1]] for labels in frame[list(VALUES)].to_numpy().tolist()]
    return shifted


CUES = ("none", "labels")
CUE_LEAD = "Values at stake:"


def cue_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """A positive control: each argument's labelled values named in plain words at the end of its premise
    ("... Values at stake: Power, Security."), so that a learner that reads them can recover every label."""
    cued = frame.copy()
    cued["Premise"] = [f"{premise.rstrip()} {CUE_LEAD} {', '.join(labelled_values(row))}."
                       for premise, (_, row) in zip(frame["Premise"], frame.iterrows())]
    return cued


def labels_from_cue(text: str) -> list[str]:
    """The values a cued statement names after its last `CUE_LEAD` (the keyword rule the cue is built for)."""
    named = text.rsplit(CUE_LEAD, 1)[-1] if CUE_LEAD in text else ""
    return [v for v in VALUES if v in {name.strip(" .") for name in named.split(",")}]


def load_arguments(path: str | None = None, hub_id: str | None = None, split: str = "train",
                   level2_map: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Arguments with Conclusion, Stance, Premise and 10 value columns (0/1), validated.

    `path` is a local CSV/TSV; `hub_id` loads a Hugging Face dataset instead. Files with the
    20 level-2 values of the original release are mapped to the 10 values with `level2_map`.
    """
    if hub_id:
        import datasets

        frame = datasets.load_dataset(hub_id, split=split).to_pandas()
        where = f"hub dataset {hub_id}"
    else:
        source = Path(path) if path else SAMPLE_PATH
        frame = read_table(source, "dataset file", "fix dataset.path (a Touché TSV) or use dataset.hub_id")
        where = str(source)
    level2_columns = {c for parts in (level2_map or {}).values() for c in parts} - set(VALUES)
    if level2_columns & set(frame.columns) and not set(VALUES) <= set(frame.columns):
        frame = map_level2(frame, level2_map, where)
    missing = [c for c in (*TEXT_COLUMNS, *VALUES) if c not in frame.columns]
    if missing:
        raise ValharmError(f"{where} is missing column(s) {', '.join(missing)}; a Touché 10-value file needs "
                           f"{', '.join(TEXT_COLUMNS)} and the 10 value columns {', '.join(VALUES)}")
    frame = frame[list(TEXT_COLUMNS + VALUES)].dropna(subset=list(TEXT_COLUMNS))
    if frame.empty:
        raise ValharmError(f"{where} holds no arguments; point dataset.path at a non-empty Touché file")
    bad = sorted(set(frame["Stance"]) - set(STANCES))
    if bad:
        raise ValharmError(f"{where}: unknown Stance value(s) {bad}; expected {STANCES}")
    labels = frame[list(VALUES)]
    if not labels.isin([0, 1]).all().all():
        raise ValharmError(f"{where}: value columns must hold 0/1 labels")
    return frame.astype({v: int for v in VALUES}).reset_index(drop=True)


def map_level2(frame: pd.DataFrame, level2_map: dict[str, list[str]], where: str) -> pd.DataFrame:
    """Collapse level-2 value labels into the 10 basic values (a value is 1 if any of its parts is)."""
    out = frame.copy()
    for value in VALUES:
        parts = list(level2_map.get(value, []))
        missing = [p for p in parts if p not in frame.columns]
        if missing or not parts:
            raise ValharmError(f"{where}: cannot build '{value}' from level-2 columns {missing or parts}; "
                               f"check dataset.level2_map")
        out[value] = frame[parts].max(axis=1)
    return out


SPLITS = ("train", "valid", "test")


class ArgumentSplits(dict):
    """{'train', 'valid', 'test'} -> arguments, and where they came from."""

    def __init__(self, parts: dict[str, pd.DataFrame], source: str, shipped_sample: bool):
        super().__init__(parts)
        self.source, self.shipped_sample = source, shipped_sample

    def record(self) -> dict:
        return {"source": self.source, "arguments": sum(map(len, self.values())), "shipped_sample": self.shipped_sample}


def split_arguments(frame: pd.DataFrame, seed: int = 42, train_fraction: float = 0.8,
                    valid_fraction: float = 0.5) -> dict[str, pd.DataFrame]:
    """The study's split: train = a seeded sample of `train_fraction`, valid = a seeded sample of
    `valid_fraction` of the rest, test = the remainder (valueEval_10.csv: 5,899 / 738 / 737)."""
    train = frame.sample(frac=train_fraction, random_state=seed)
    rest = frame.drop(train.index)
    valid = rest.sample(frac=valid_fraction, random_state=seed)
    parts = {"train": train, "valid": valid, "test": rest.drop(valid.index)}
    empty = [name for name, part in parts.items() if part.empty]
    if empty:
        raise ValharmError(f"{len(frame)} arguments leave the {', '.join(empty)} split empty; "
                           f"use more arguments or pre-split files (dataset.splits)")
    return parts


def load_splits(path: str | None = None, hub_id: str | None = None, split: str = "train",
                level2_map: dict[str, list[str]] | None = None, splits: dict[str, str] | None = None,
                seed: int = 42, train_fraction: float = 0.8, valid_fraction: float = 0.5) -> ArgumentSplits:
    """Train/valid/test arguments: pre-split files or hub splits (`splits`: train/valid/test -> path or
    hub split name), else one file (or hub split) cut as the study did."""
    source = hub_id or path or (str(dict(splits)) if splits else str(SAMPLE_PATH))
    shipped = not (hub_id or path or splits)
    if splits:
        missing = [name for name in SPLITS if name not in splits]
        if missing:
            raise ValharmError(f"dataset.splits lacks {', '.join(missing)}; give a file (or hub split) for each "
                               f"of {', '.join(SPLITS)}")
        parts = {name: load_arguments(None if hub_id else splits[name], hub_id, splits[name], level2_map)
                 for name in SPLITS}
    else:
        parts = split_arguments(load_arguments(path, hub_id, split, level2_map), seed, train_fraction, valid_fraction)
    return ArgumentSplits(parts, str(source), shipped)
