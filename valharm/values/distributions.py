"""Schwartz basic values: distributions (extreme, ESS-realistic, custom), PVQ scoring and NMSE.

Scores use the 1-6 PVQ scale where 6 = very important. The ten values are always kept in the
canonical order of ``VALUES`` (the order of the data files).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon

from valharm.data import read_table
from valharm.errors import ValharmError, report_errors

VALUES = (
    "Achievement", "Benevolence", "Conformity", "Hedonism", "Power",
    "Security", "Self-direction", "Stimulation", "Tradition", "Universalism",
)
GROUPS = {
    "Openness to Change": ("Self-direction", "Stimulation"),
    "Self-Enhancement": ("Achievement", "Hedonism", "Power"),
    "Conservation": ("Conformity", "Security", "Tradition"),
    "Self-Transcendence": ("Benevolence", "Universalism"),
}
# One line per value, for prompts that describe a persona (valharm's wording of Schwartz's definitions).
DEFINITIONS = {
    "Achievement": "succeeding personally by showing competence that others recognise",
    "Benevolence": "caring for the wellbeing of the people one is close to",
    "Conformity": "holding back from actions that could upset others or break social expectations",
    "Hedonism": "enjoying pleasure and the good things of life",
    "Power": "having status, wealth and control over people and resources",
    "Security": "safety and stability for oneself, one's relationships and society",
    "Self-direction": "thinking and acting independently: choosing, creating, exploring",
    "Stimulation": "excitement, novelty and challenge",
    "Tradition": "respecting and keeping the customs and beliefs of one's culture or religion",
    "Universalism": "understanding, tolerance and protection for all people and for nature",
}
CODINGS = ("importance", "paper")
SCALE_MIN, SCALE_MAX = 1, 6
# ESS 21-item scale: value -> item columns of ess.csv (codes 1 = very much like me ... 6 = not at all).
ESS_ITEMS = {
    "Achievement": ("ipshabta", "ipsucesa"),
    "Benevolence": ("iphlppla", "iplylfra"),
    "Conformity": ("ipfrulea", "ipbhprpa"),
    "Hedonism": ("ipgdtima", "impfuna"),
    "Power": ("impricha", "iprspota"),
    "Security": ("impsafea", "ipstrgva"),
    "Self-direction": ("ipcrtiva", "impfreea"),
    "Stimulation": ("impdiffa", "ipadvnta"),
    "Tradition": ("ipmodsta", "imptrada"),
    "Universalism": ("ipeqopta", "ipudrsta", "impenva"),
}
ESS_SOURCE_HINT = (
    "get ess_distribution.csv (10 value means per respondent) or the raw ESS human-values items "
    "(ess.csv) from the European Social Survey, then pass its path (value.ess_path=... or --ess-path) "
    "or put it in $VALHARM_DATA_DIR (default: ./data)"
)


def snake(name: str) -> str:
    """'Self-direction' -> 'self_direction', 'Openness to Change' -> 'openness_to_change'."""
    return name.lower().replace("-", "_").replace(" ", "_")


VALUE_BY_SNAKE = {snake(v): v for v in VALUES}
EXTREMES = {snake(v): (v,) for v in VALUES} | {snake(g): members for g, members in GROUPS.items()}


def data_dir() -> Path:
    """Where real data files are looked up by default ($VALHARM_DATA_DIR, else ./data)."""
    return Path(os.environ.get("VALHARM_DATA_DIR", "data"))


def default_ess_path() -> Path:
    return data_dir() / "ess_distribution.csv"


@dataclass(frozen=True)
class ValueDistribution:
    """A target value profile: 10 importance scores (1-6) plus where it came from."""

    name: str
    scores: tuple[float, ...]
    coding: str = "importance"
    source: str = "extreme"
    anchor: str | None = None
    rank: int = 0
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        check_scores(self.scores, where=f"value distribution '{self.name}'")
        if self.coding not in CODINGS:
            raise ValharmError(f"value.coding='{self.coding}' is unknown; use one of {', '.join(CODINGS)}")

    def as_dict(self) -> dict[str, float]:
        return dict(zip(VALUES, self.scores))

    def to_record(self) -> dict:
        return {"name": self.name, "coding": self.coding, "source": self.source, "anchor": self.anchor,
                "rank": self.rank, "scores": self.as_dict(), **self.extra}


def check_scores(scores: Sequence[float], where: str) -> None:
    if len(scores) != len(VALUES):
        raise ValharmError(f"{where}: got {len(scores)} scores, need exactly {len(VALUES)} "
                           f"(in this order: {', '.join(VALUES)})")
    for value, score in zip(VALUES, scores):
        if not isinstance(score, (int, float)) or math.isnan(score) or not SCALE_MIN <= score <= SCALE_MAX:
            raise ValharmError(f"{where}: score for {value} is {score!r}; scores must be numbers "
                               f"from {SCALE_MIN} to {SCALE_MAX} (6 = very important)")


def extreme(name: str) -> ValueDistribution:
    """One value (or every value of one higher-order group) at 6, all others at 1."""
    key = snake(name)
    if key not in EXTREMES:
        raise ValharmError(f"unknown value '{name}'; choose one of: {', '.join(EXTREMES)}")
    members = EXTREMES[key]
    scores = tuple(float(SCALE_MAX if v in members else SCALE_MIN) for v in VALUES)
    return ValueDistribution(name=key, scores=scores, source="extreme", anchor=key)


def custom(name: str = "custom", scores: Mapping[str, float] | None = None,
           vector: Sequence[float] | None = None) -> ValueDistribution:
    """A distribution given on the command line, by value name (`scores`) or as 10 numbers (`vector`)."""
    if vector is not None:
        try:
            scores = tuple(float(s) for s in vector)
        except (TypeError, ValueError):
            raise ValharmError(f"value.vector={list(vector)} must be 10 numbers from 1 to 6") from None
        return ValueDistribution(name=name, scores=scores, source="custom")
    scores = dict(scores or {})
    unknown = [k for k in scores if snake(k) not in VALUE_BY_SNAKE]
    if unknown:
        raise ValharmError(f"value.scores has unknown value name(s) {unknown}; "
                           f"use: {', '.join(VALUE_BY_SNAKE)}")
    by_value = {VALUE_BY_SNAKE[snake(k)]: v for k, v in scores.items()}
    missing = [v for v in VALUES if v not in by_value]
    if missing:
        raise ValharmError(f"value.scores is missing {', '.join(missing)}; give all 10 values")
    return ValueDistribution(name=name, scores=tuple(by_value[v] for v in VALUES), source="custom")


# --- European Social Survey -------------------------------------------------------------------

def load_ess(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """ESS respondents' 10 value means in raw ESS coding (1 = very much like me).

    Reads either a file of per-respondent means (header = the 10 values) or the raw 21 items
    (``ess.csv``); from raw items, codes 7-9 are missing and only complete respondents are kept.
    """
    path = Path(path) if path else default_ess_path()
    frame = read_table(path, "ESS file", ESS_SOURCE_HINT)
    if set(VALUES) <= set(frame.columns):
        means = frame[list(VALUES)].astype(float).dropna()
    elif all(item in frame.columns for items in ESS_ITEMS.values() for item in items):
        items = [item for items in ESS_ITEMS.values() for item in items]
        raw = frame[items].where(frame[items].isin(range(1, 7)))
        raw = raw.dropna()
        means = pd.DataFrame({value: raw[list(cols)].mean(axis=1) for value, cols in ESS_ITEMS.items()})
    else:
        raise ValharmError(f"{path} has neither the 10 value columns ({', '.join(VALUES)}) nor the "
                           f"21 raw ESS items; {ESS_SOURCE_HINT}")
    if means.empty:
        raise ValharmError(f"{path} holds no complete respondents")
    return means.reset_index(drop=True)


def to_coding(raw: pd.DataFrame, coding: str) -> pd.DataFrame:
    """Raw ESS codes -> importance (7 - raw, the correct reading) or 'paper' (raw, as the study used)."""
    if coding == "importance":
        return (SCALE_MAX + 1) - raw
    if coding == "paper":
        return raw
    raise ValharmError(f"coding '{coding}' is unknown; use one of {', '.join(CODINGS)}")


def nearest(profiles: pd.DataFrame, target: Sequence[float], k: int) -> list[int]:
    """Row positions of the k profiles closest to target by Jensen-Shannon divergence.

    Both vectors are normalised to sum 1; equal divergences keep file order (stable sort).
    """
    matrix = profiles[list(VALUES)].to_numpy(float)
    p = matrix / matrix.sum(axis=1, keepdims=True)
    q = np.asarray(target, float) / np.sum(target)
    divergence = jensenshannon(p, q[None, :], axis=1, base=2) ** 2
    divergence = np.round(divergence, 12)  # equal in exact arithmetic -> equal here, so file order decides
    return [int(i) for i in np.argsort(divergence, kind="stable")[:k]]


def realistic_all(ess_path=None, coding: str = "importance", k: int = 10) -> list[ValueDistribution]:
    """For each of the 14 extremes, its k nearest ESS respondents (ranks 1..k)."""
    profiles = to_coding(load_ess(ess_path), coding)
    out = []
    for anchor in EXTREMES:
        for rank, row in enumerate(nearest(profiles, extreme(anchor).scores, k), start=1):
            out.append(ValueDistribution(
                name=f"{anchor}_ess{rank}", scores=tuple(float(s) for s in profiles.iloc[row]),
                coding=coding, source="ess", anchor=anchor, rank=rank,
                extra={"ess_row": row, "ess_path": str(ess_path or default_ess_path()), "k": k}))
    return out


def realistic(anchor: str, rank: int = 1, ess_path=None, coding: str = "importance",
              k: int = 10) -> ValueDistribution:
    """The rank-th nearest ESS respondent to the extreme `anchor` (Hydra: value=ess)."""
    anchor = extreme(anchor).name
    if not 1 <= rank <= k:
        raise ValharmError(f"value.rank={rank} is outside 1..{k} (value.k)")
    profiles = to_coding(load_ess(ess_path), coding)
    row = nearest(profiles, extreme(anchor).scores, k)[rank - 1]
    return ValueDistribution(name=f"{anchor}_ess{rank}", scores=tuple(float(s) for s in profiles.iloc[row]),
                             coding=coding, source="ess", anchor=anchor, rank=rank,
                             extra={"ess_row": row, "ess_path": str(ess_path or default_ess_path()), "k": k})


def study(index: int, ess_path=None, coding: str = "importance", k: int = 10) -> ValueDistribution:
    """The index-th of the study's distributions: 0-13 the extremes, then each extreme's k nearest ESS
    respondents (14 + 14 k = 154 for k = 10). Hydra: value=study value.index=range(0,154)."""
    anchors = list(EXTREMES)
    total = len(anchors) * (k + 1)
    if not 0 <= index < total:
        raise ValharmError(f"value.index={index} is outside 0..{total - 1} ({len(anchors)} extremes + "
                           f"{len(anchors)} x {k} ESS neighbours)")
    if index < len(anchors):
        return extreme(anchors[index])
    anchor, rank = divmod(index - len(anchors), k)
    return realistic(anchors[anchor], rank + 1, ess_path, coding, k)


# --- PVQ scoring ------------------------------------------------------------------------------

def pvq_value_scores(ratings: Mapping[int, int | None], item_values: Mapping[int, str]) -> dict[str, float]:
    """Mean rating of each value's items; unparseable (None) ratings are left out, NaN if none remain."""
    scores = {}
    for value in VALUES:
        valid = [ratings[i] for i, v in item_values.items() if v == value and ratings.get(i) is not None]
        scores[value] = float(np.mean(valid)) if valid else float("nan")
    return scores


def ipsatize(scores: Mapping[str, float]) -> dict[str, float]:
    """Each value's score minus the mean of the ten (centred on the respondent's own mean, as PVQ analyses do to
    remove scale use): what a value's importance is relative to the others. NaN everywhere when a value has no
    score (its mean would be over fewer values)."""
    if any(math.isnan(scores.get(v, float("nan"))) for v in VALUES):
        return {v: float("nan") for v in VALUES}
    mean = float(np.mean([scores[v] for v in VALUES]))
    return {v: float(scores[v]) - mean for v in VALUES}


def nmse(predicted: Mapping[str, float], target: Mapping[str, float]) -> float:
    """Mean over the 10 values of the squared difference of scores rescaled from 1-6 to 0-1.

    NaN when any value has no predicted score: a partial mean would hide exactly the values the
    model failed on (see `nmse_scored` for the mean over the values that have a score).
    """
    if any(math.isnan(predicted.get(v, float("nan"))) for v in VALUES):
        return float("nan")
    return nmse_scored(predicted, target)


def nmse_scored(predicted: Mapping[str, float], target: Mapping[str, float]) -> float:
    """NMSE over the values that have a predicted score; NaN if none has."""
    diffs = [((predicted[v] - 1) / 5 - (target[v] - 1) / 5) ** 2 for v in VALUES
             if not math.isnan(predicted.get(v, float("nan")))]
    return float(np.mean(diffs)) if diffs else float("nan")


# --- CLI --------------------------------------------------------------------------------------

def _distributions(args) -> list[ValueDistribution]:
    rows = []
    if args.source in ("extreme", "all"):
        rows += [extreme(name) for name in EXTREMES]
    if args.source in ("ess", "all"):
        rows += realistic_all(args.ess_path, args.coding, args.k)
    return rows


def _list(args) -> None:
    rows = _distributions(args)
    table = pd.DataFrame([{"name": d.name, "anchor": d.anchor, "rank": d.rank, **d.as_dict()} for d in rows])
    table.to_csv(sys.stdout, index=False)


def _null(args) -> None:
    """The target-blind null: answering the mean profile of the chosen distributions for every one of them."""
    rows = _distributions(args)
    mean = dict(zip(VALUES, np.mean([[d.as_dict()[v] for v in VALUES] for d in rows], axis=0)))
    flat2 = dict.fromkeys(VALUES, 2.0)
    print(f"{len(rows)} distributions ({args.source}, {args.coding} coding): NMSE of their mean profile "
          f"{np.mean([nmse(mean, d.as_dict()) for d in rows]):.4f}; of answering 2 to every item "
          f"{np.mean([nmse(flat2, d.as_dict()) for d in rows]):.4f}")


@report_errors
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m valharm.values", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("list", "print value distributions as CSV"),
                       ("null", "print the target-blind NMSE null of the distributions (their mean profile)")):
        command = sub.add_parser(name, help=text)
        command.add_argument("--source", choices=("extreme", "ess", "all"), default="extreme")
        command.add_argument("--ess-path", default=None, help=f"ESS file (default: {default_ess_path()})")
        command.add_argument("--coding", choices=CODINGS, default="importance")
        command.add_argument("--k", type=int, default=10, help="respondents per extreme")
    args = parser.parse_args(argv)
    if args.k < 1:
        raise ValharmError("--k must be at least 1")
    (_list if args.command == "list" else _null)(args)


if __name__ == "__main__":
    main()
