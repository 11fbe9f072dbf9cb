"""Touché23-ValueEval arguments labelled with the 10 Schwartz values, read by column name."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from valharm.data import SAMPLES_DIR, read_table
from valharm.errors import ValharmError
from valharm.values import VALUES

TEXT_COLUMNS = ("Conclusion", "Stance", "Premise")
STANCES = ("in favor of", "against")
SAMPLE_PATH = SAMPLES_DIR / "touche23_sample.tsv"


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


def split_arguments(frame: pd.DataFrame, fractions=(0.8, 0.1, 0.1), seed: int = 42) -> dict[str, pd.DataFrame]:
    """Shuffle with `seed` and cut into train/valid/test by `fractions` (each split non-empty)."""
    if len(frame) < 3:
        raise ValharmError(f"need at least 3 arguments to split into train/valid/test, got {len(frame)}")
    shuffled = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    n_valid = max(1, round(len(frame) * fractions[1]))
    n_test = max(1, round(len(frame) * fractions[2]))
    n_train = len(frame) - n_valid - n_test
    return {"train": shuffled[:n_train], "valid": shuffled[n_train:n_train + n_valid],
            "test": shuffled[n_train + n_valid:]}
