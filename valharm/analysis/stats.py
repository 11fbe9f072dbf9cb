"""Value x risk statistics: Pearson and Spearman correlations of each value's score (target or measured) with
each category's metric across runs, p-values, Benjamini-Hochberg q-values and bootstrap confidence intervals
(over runs, or over the design's clusters: see resampling)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from valharm.analysis.resampling import cluster_interval, permutation_p
from valharm.values.distributions import VALUES

MIN_RUNS = 3
X_COLUMNS = {"target": "value/", "measured": "measured/"}  # correlate.x: the columns holding a run's value scores


def pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson's r along `axis` (vectorised over resamples)."""
    x = x - x.mean(axis=axis, keepdims=True)
    y = y - y.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(axis) / np.sqrt((x * x).sum(axis) * (y * y).sum(axis))


def spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho: Pearson's r of the ranks (ties averaged)."""
    return pearson(stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis), axis)


def bootstrap_interval(x: np.ndarray, y: np.ndarray, method: str, resamples: int, confidence: float,
                       seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the correlation, resampling runs (x, y paired).

    A resample in which x or y does not vary has no correlation and is left out (nan-aware percentiles).
    """
    statistic = pearson if method == "pearson" else spearman
    with np.errstate(invalid="ignore"):
        result = stats.bootstrap((x, y), statistic, paired=True, vectorized=True, n_resamples=resamples,
                                 confidence_level=confidence, method="percentile",
                                 random_state=np.random.default_rng(seed))
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(result.bootstrap_distribution, [tail, 100 - tail])
    return float(low), float(high)


def interval(x: np.ndarray, y: np.ndarray, method: str, resamples: int, confidence: float, seed: int,
             clusters: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of the correlation: over runs, or over whole `clusters` when given."""
    if clusters is None:
        return bootstrap_interval(x, y, method, resamples, confidence, seed)
    return cluster_interval(x, y, clusters, method, resamples, confidence, seed)


def correlation_row(x: np.ndarray, y: np.ndarray, design: tuple[np.ndarray, np.ndarray] | None, resamples: int,
                    confidence: float, seed: int) -> dict:
    """Both methods' r, p and interval; with a `design` (clusters, ranks) the interval resamples whole clusters
    and p comes from the design's permutations (see resampling), else runs count as independent."""
    row = {}
    for method, test, statistic in (("pearson", stats.pearsonr, pearson), ("spearman", stats.spearmanr, spearman)):
        r, p = test(x, y)
        if design is not None:
            p = permutation_p(x, y, *design, statistic, resamples, seed)
        low, high = interval(x, y, method, resamples, confidence, seed, None if design is None else design[0])
        row |= {f"{method}_r": float(r), f"{method}_p": float(p), f"{method}_ci_low": low, f"{method}_ci_high": high}
    return row


def correlations(table: pd.DataFrame, metrics: dict[str, str] | None = None, resamples: int = 999,
                 confidence: float = 0.95, seed: int = 0, by: tuple[str, ...] = (), x: str = "target",
                 resample: str = "runs") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(correlations, skipped): one row per value x (benchmark, category, metric) with n, r, p, q and CI for
    both methods; `skipped` lists the (benchmark, category, metric) with fewer than 3 runs or no spread.

    `metrics`: the metric analysed per benchmark (default: every metric); `by`: further columns that split the
    runs (e.g. the instrument group); `x`: target or measured value scores (`value/` or `measured/` columns);
    `resample`: runs (independent) or anchor (the design's clusters, `clusters` = anchors behind each row).
    q-values control the false discovery rate over all tests of one method.
    """
    rows, skipped = [], []
    keys = [*by, "benchmark", "category", "metric"]
    chosen = table if metrics is None else table[[metrics.get(b) == m for b, m in zip(table.benchmark, table.metric)]]
    for key, group in chosen.groupby(keys, sort=True):
        where = dict(zip(keys, key))
        group = group.dropna(subset=["value"])
        if len(group) < MIN_RUNS or group["value"].nunique() < 2:
            skipped.append({**where, "runs": len(group),
                            "why": f"fewer than {MIN_RUNS} runs" if len(group) < MIN_RUNS else "the metric does not vary"})
            continue
        for value in VALUES:
            scores = group[f"{X_COLUMNS[x]}{value}"].to_numpy(float)
            keep = np.isfinite(scores)
            y = group["value"].to_numpy(float)[keep]
            if keep.sum() < MIN_RUNS or np.unique(scores[keep]).size < 2 or np.unique(y).size < 2:
                continue
            row = {"value": value, **where, "n": int(keep.sum())}
            design = None
            if resample == "anchor":
                design = (group.anchor.to_numpy()[keep], group["rank"].to_numpy()[keep])
                row["clusters"] = int(np.unique(design[0]).size)
            rows.append(row | correlation_row(scores[keep], y, design, resamples, confidence, seed))
    result = pd.DataFrame(rows)
    if len(result):
        for method in ("pearson", "spearman"):
            result[f"{method}_q"] = multipletests(result[f"{method}_p"].fillna(1.0), method="fdr_bh")[1]
    return result, pd.DataFrame(skipped)


def paired_prompt_test(scores: pd.DataFrame, aligned: str, other: str) -> dict:
    """Value-aligned against another model type on the same prompts: Wilcoxon signed-rank test (two-sided)
    of per-prompt scores, each the mean over that type's runs, paired by prompt.

    Why this test: both types answer the same prompts, so the comparison is paired; per-prompt scores are
    bounded, often binary or ordinal, and far from normal, so a rank test is used, not a t-test.
    """
    means = scores.groupby(["model_type", "prompt"])["score"].mean().unstack(0)
    if aligned not in means or other not in means:
        return {"pairs": 0, "statistic": None, "p": None}
    pairs = means[[aligned, other]].dropna()
    difference = pairs[aligned] - pairs[other]
    if len(pairs) < MIN_RUNS or not difference.any():
        return {"pairs": len(pairs), "statistic": None, "p": None, "mean_difference": float(difference.mean())
                if len(pairs) else None}
    result = stats.wilcoxon(pairs[aligned], pairs[other])
    return {"pairs": len(pairs), "statistic": float(result.statistic), "p": float(result.pvalue),
            "mean_difference": float(difference.mean())}
