"""Resampling that respects a sweep's design: the study's runs come in clusters (an anchor's extreme distribution
and its ESS neighbours, with close value profiles), so they are not independent draws.

Intervals draw whole clusters with replacement (cluster bootstrap); p-values permute whole clusters' risk
scores among clusters of the same size, the i-th run (by rank) of one cluster taking the i-th run's place in
another (the permutations the design allows when a cluster, not a run, is the unit).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

MIN_CLUSTERS = 3


def cluster_weights(clusters: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, runs): how many times each run's cluster was drawn when the clusters are drawn with
    replacement (each draw brings all the cluster's runs)."""
    names, index = np.unique(clusters, return_inverse=True)
    draws = rng.integers(0, len(names), size=(resamples, len(names)))
    counts = np.zeros((resamples, len(names)))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1)
    return counts[:, index]


def weighted_pearson(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pearson's r of each row of `weights`' resample: every run counted as often as its weight."""
    total = weights.sum(-1, keepdims=True)
    dx = x - (weights * x).sum(-1, keepdims=True) / total
    dy = y - (weights * y).sum(-1, keepdims=True) / total
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights * dx * dy).sum(-1) / np.sqrt((weights * dx * dx).sum(-1) * (weights * dy * dy).sum(-1))


def weighted_ranks(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each run's rank (ties averaged) within each resample of `weights`, counting a run as often as its weight."""
    below = x[None, :] < x[:, None]
    tied = x[None, :] == x[:, None]
    return weights @ below.T + (weights @ tied.T + 1) / 2


def cluster_interval(x: np.ndarray, y: np.ndarray, clusters: np.ndarray, method: str, resamples: int,
                     confidence: float, seed: int) -> tuple[float, float]:
    """Percentile cluster-bootstrap interval of the correlation (NaN with fewer than 3 clusters); resamples
    without spread are left out, as in `stats.bootstrap_interval`."""
    if np.unique(clusters).size < MIN_CLUSTERS:
        return float("nan"), float("nan")
    weights = cluster_weights(clusters, resamples, np.random.default_rng(seed))
    if method == "pearson":
        found = weighted_pearson(x, y, weights)
    else:
        found = weighted_pearson(weighted_ranks(x, weights), weighted_ranks(y, weights), weights)
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(found, [tail, 100 - tail])
    return float(low), float(high)


def design_permutations(clusters: np.ndarray, ranks: np.ndarray, resamples: int,
                        rng: np.random.Generator) -> np.ndarray:
    """(resamples, runs) indices: whole clusters swapped among clusters of the same size, matched by rank."""
    _, codes = np.unique(clusters, return_inverse=True)
    order = np.lexsort((ranks, codes))  # by cluster, then rank
    by_size: dict[int, list[np.ndarray]] = {}
    for code in np.unique(codes):
        block = order[codes[order] == code]
        by_size.setdefault(len(block), []).append(block)
    index = np.tile(np.arange(len(clusters)), (resamples, 1))
    for same in by_size.values():
        blocks = np.stack(same)  # (clusters of this size, size)
        shuffled = rng.permuted(np.tile(np.arange(len(blocks)), (resamples, 1)), axis=1)
        index[:, blocks.ravel()] = blocks[shuffled].reshape(resamples, -1)
    return index


def permutation_p(x: np.ndarray, y: np.ndarray, clusters: np.ndarray, ranks: np.ndarray,
                  statistic: Callable[..., np.ndarray], resamples: int, seed: int) -> float:
    """Two-sided p of `statistic` (a correlation, vectorised over the last axis) under the design's permutations:
    (1 + permutations as extreme) / (1 + permutations); 1.0 where no two clusters have one size."""
    index = design_permutations(clusters, ranks, resamples, np.random.default_rng(seed))
    observed = abs(statistic(x, y))
    with np.errstate(invalid="ignore"):
        found = np.abs(statistic(x, y[index]))
    return float((1 + np.sum(found >= observed - 1e-12)) / (1 + resamples))
