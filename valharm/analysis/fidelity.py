"""Do a sweep's measured values follow its targets? NMSE against its target-blind null, and fidelity per value.

A sweep: the correlated runs of one model type (per instrument group of their PVQ-40 reading under
pool=per_group), each with its target scores and its measured PVQ-40 scores (the pvq40 metrics' `scores`, or
another field of them; an ipsatized field, `scores_ipsatized`, is compared with the targets ipsatized the same way,
each run's ten scores minus their mean: the NMSE's offsets cancel, so it reads on the same scale). An NMSE alone cannot show alignment: answering the sweep's mean target profile for
every run, whatever its target, already scores the target-blind null; the skill is 1 - NMSE / null. Alignment
fidelity of a value: the correlation across runs between its target and its measured score.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from valharm.analysis.stats import MIN_RUNS, interval, pearson, spearman
from valharm.values.distributions import VALUES

MEASURED_BY = "pvq40"
TARGETS = [f"value/{v}" for v in VALUES]
MEASURED = [f"measured/{v}" for v in VALUES]
IPSATIZED = "_ipsatized"  # a pvq40 field of scores centred on each run's mean over the ten values
RULE = "mean fidelity over the values above 0 and at least one value's interval wholly above 0"


def nmse(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Mean over the ten values (last axis) of the squared difference of scores rescaled from 1-6 to 0-1, as
    valharm.values.nmse; NaN where a value has no score."""
    return np.mean(((predicted - 1) / 5 - (target - 1) / 5) ** 2, axis=-1)


def measured_scores(table: pd.DataFrame, field: str = "scores") -> pd.DataFrame:
    """A row per run with its measured value scores (`measured/<Value>`: the pvq40 metrics' `field`) and, when
    the table is split by instrument, the group of its PVQ-40 reading; a value without a score is NaN."""
    keys = ["run", *(["group"] if "group" in table else [])]
    rows = table[(table.benchmark == MEASURED_BY) & (table.category == field) & table.metric.isin(VALUES)]
    if rows.empty:
        return pd.DataFrame(columns=[*keys, *MEASURED])
    wide = rows.pivot_table(index=keys, columns="metric", values="value", aggfunc="first")
    wide = wide.reindex(columns=list(VALUES)).add_prefix("measured/").reset_index()
    wide.columns.name = None
    return wide


def fidelity(sweep: pd.DataFrame, method: str, resamples: int, confidence: float, seed: int,
             clustered: bool) -> pd.DataFrame:
    """Per value: the correlation across the sweep's runs between target and measured score, with its interval
    (over runs, or over anchors when `clustered`). 0 where the targets vary and the measured scores do not (they
    ignore the target); NaN where the targets do not vary or fewer than 3 runs."""
    statistic = pearson if method == "pearson" else spearman
    clusters = sweep.anchor.to_numpy() if clustered else None
    rows = []
    for value in VALUES:
        x, y = sweep[f"value/{value}"].to_numpy(float), sweep[f"measured/{value}"].to_numpy(float)
        row = {"value": value, "runs": len(sweep), "fidelity": np.nan, "ci_low": np.nan, "ci_high": np.nan}
        if len(sweep) >= MIN_RUNS and np.unique(x).size > 1 and np.unique(y).size < 2:
            row["fidelity"] = 0.0
        elif len(sweep) >= MIN_RUNS and np.unique(x).size > 1:
            row["fidelity"] = float(statistic(x, y))
            row["ci_low"], row["ci_high"] = interval(x, y, method, resamples, confidence, seed, clusters)
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_summary(sweep: pd.DataFrame, values: pd.DataFrame) -> dict:
    """The sweep's mean measured NMSE, its target-blind null, the skill and whether it follows its targets (RULE)."""
    targets, measured = sweep[TARGETS].to_numpy(float), sweep[MEASURED].to_numpy(float)
    null = float(nmse(targets.mean(axis=0), targets).mean())
    found = float(nmse(measured, targets).mean())
    mean = values.fidelity.mean()  # values whose targets do not vary carry no evidence either way
    above = int((values.ci_low > 0).sum())
    return {"runs": len(sweep), "measured_nmse": found, "null_nmse": null,
            "skill": 1 - found / null if null > 0 else np.nan, "mean_fidelity": mean, "values_above_zero": above,
            "follows_targets": bool(mean > 0 and above > 0)}


def alignment(chosen: pd.DataFrame, field: str, method: str, resamples: int, seed: int, by: tuple[str, ...] = (),
              clustered: bool = False, confidence: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(a row per sweep: NMSE, null, skill, fidelity verdict; a row per sweep x value: fidelity and interval).
    Runs without a complete measured profile are left out."""
    targets = chosen.drop_duplicates("run")[["run", "model_type", "anchor", "rank", *TARGETS]].copy()
    if field.endswith(IPSATIZED):  # ipsatized measured scores are compared with ipsatized targets
        targets[TARGETS] = targets[TARGETS].sub(targets[TARGETS].mean(axis=1), axis=0)
    runs = targets.merge(measured_scores(chosen, field), on="run").dropna(subset=MEASURED)
    keys = [*by, "model_type"]
    summary, values = [], []
    for key, sweep in runs.groupby(keys, sort=True):
        where = dict(zip(keys, key))
        found = fidelity(sweep, method, resamples, confidence, seed, clustered)
        values.append(found.assign(**where)[[*keys, *found.columns]])
        summary.append({**where, **sweep_summary(sweep, found)})
    if not summary:
        note = f"no run has a complete {MEASURED_BY} `{field}` profile: alignment not checked"
        return pd.DataFrame([{"note": note}]), pd.DataFrame([{"note": note}])
    return pd.DataFrame(summary), pd.concat(values, ignore_index=True)


def warning(summary: pd.DataFrame) -> str:
    """One plain sentence for the top of report.md naming the sweeps whose measured values do not follow their
    targets ('' when every sweep does, or none was checked)."""
    if "follows_targets" not in summary or summary.follows_targets.all():
        return ""
    failed = summary[~summary.follows_targets.astype(bool)]
    keys = [c for c in ("group", "model_type") if c in summary]
    names = ", ".join(" · ".join(map(str, row)) for row in failed[keys].itertuples(index=False))
    return (f"**The measured PVQ-40 values do not follow their targets** in {names} (rule: {RULE}; see "
            f"`alignment.csv`), so value x risk correlations of these runs cannot be read as effects of values "
            f"the models hold.")


def identical_vectors(chosen: pd.DataFrame) -> pd.DataFrame:
    """Sets of runs whose target (or measured) value vectors are identical: one profile counted more than once."""
    runs = chosen.drop_duplicates("run")
    rows = []
    for scores, columns in (("target", TARGETS), ("measured", MEASURED)):
        if not set(columns) <= set(runs.columns):
            continue
        complete = runs.dropna(subset=columns)
        for vector, same in complete.groupby([complete[c].round(9) for c in columns], sort=True):
            if len(same) > 1:
                rows.append({"scores": scores, "count": len(same), "runs": ", ".join(sorted(same.run)),
                             "vector": " ".join(f"{v:g}" for v in vector)})
    return pd.DataFrame(rows, columns=["scores", "count", "runs", "vector"])
