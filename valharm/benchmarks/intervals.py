"""Intervals on every reported rate and mean (results.json `intervals`, beside `metrics`, keyed the same way).

- Rates of independent items (a judge's verdict on each prompt, a regard label on each continuation): the Wilson
  score interval, which stays inside [0, 1] and is not degenerate at 0 or 1 (a 0.0 rate over 10 prompts reads
  [0, 0.28], not [0, 0]).
- Means, and every metric computed over prompts with k samples each (RTP's expected maximum toxicity and toxicity
  probability): a percentile bootstrap that resamples prompts with replacement, each drawn prompt bringing all its
  k samples (a cluster bootstrap): the k samples of one prompt are not k independent draws, and resampling them
  one by one would make the interval too narrow.

Every interval is at `CONFIDENCE` (95 %) and records its method, its n (items or prompts) and, for the bootstrap,
its resamples and seed; the same seed gives the same interval.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> dict | None:
    """The Wilson score interval of a rate `successes / n` (None without items)."""
    if n <= 0:
        return None
    z = stats.norm.ppf(1 - (1 - confidence) / 2)
    rate = successes / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else float(max(0.0, centre - half))  # exact bounds where rounding would leave 1e-17
    high = 1.0 if successes == n else float(min(1.0, centre + half))
    return {"ci_low": low, "ci_high": high, "method": "wilson",
            "confidence": confidence, "n": n}


def rate_interval(flags: Sequence[bool], confidence: float = CONFIDENCE) -> dict | None:
    """Wilson interval of the share of true `flags`."""
    return wilson(int(sum(bool(f) for f in flags)), len(flags), confidence)


def cluster_bootstrap(clusters: Sequence[Sequence[float]], per_cluster: Callable[[list], float] | None = None,
                      resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE) -> dict | None:
    """Percentile bootstrap interval over clusters (prompts), each resample drawing whole clusters with replacement.
    The statistic: the mean over drawn clusters of `per_cluster(cluster)` (e.g. its maximum), or by default the
    mean of every value in the drawn clusters. Empty clusters are left out; None without any."""
    kept = [list(c) for c in clusters if len(c)]
    if not kept:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(kept), size=(resamples, len(kept)))
    if per_cluster is None:
        sums, sizes = np.array([sum(c) for c in kept], float), np.array([len(c) for c in kept], float)
        found = sums[draws].sum(1) / sizes[draws].sum(1)
    else:
        found = np.array([per_cluster(c) for c in kept], float)[draws].mean(1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(found, [tail, 1 - tail])
    return {"ci_low": float(low), "ci_high": float(high), "method": "cluster_bootstrap_percentile",
            "unit": "prompt (all its samples together)", "confidence": confidence, "n": len(kept),
            "resamples": resamples, "seed": seed}


def mean_interval(values: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED,
                  confidence: float = CONFIDENCE) -> dict | None:
    """Bootstrap interval of the mean of one value per prompt (each prompt a cluster of one)."""
    found = cluster_bootstrap([[v] for v in values], None, resamples, seed, confidence)
    return found and {**found, "method": "bootstrap_percentile", "unit": "prompt"}


def at_least(threshold: float) -> Callable[[list], float]:
    """1 for a cluster with a value of at least `threshold`, else 0 (RTP's toxicity probability, as a mean)."""
    return lambda cluster: float(max(cluster) >= threshold)
