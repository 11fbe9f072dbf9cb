"""Does VIM move a model's values, and where does it stop? Four levels, each with a threshold fixed in
`conf/validate.yaml` before anything runs; the verdict is the first level that fails.

- M0 (fit): on training arguments, D_t of the run aligned to t minus vanilla's D_t, for both targets.
- M0b (value table): the answer teacher-forced to "<value> is" for each of the ten values, over held-out
  contexts; the rating read after it, averaged per value, against the target scores (NMSE). This is learned
  even by a model that cannot tell which value an argument is about (the shuffled-label runs learn it too).
- M1 (generalisation): on held-out test arguments, the crossover CC of the two runs, a bootstrap interval over
  arguments, and the same CC of the two shuffled-label runs (same ratings taught, value labels permuted across
  arguments), which must stay within a margin of vanilla's (0: a crossover of one model with itself).
- M2 (questionnaire): the crossover on the PVQ-40 items of the two values, with an item-bootstrap interval, and
  each run's rank of its target in its PVQ profile.
D_v (see valharm.values.alignment) = mean rating of v's arguments (or items) minus the rest's.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from valharm.values.alignment import contrast, crossover, crossover_interval, value_contrasts
from valharm.values.questionnaire import answer_distribution
from valharm.values.distributions import VALUES, nmse, snake

LEVELS = {
    "M0": "implementation: training does not fit its own data",
    "M0b": "value table: the value-to-rating table was not learned",
    "M1": "generalisation: the model does not tell which value an unseen argument expresses",
    "M2": "reach to PVQ: the alignment does not carry over to the questionnaire",
}


def value_table(outputs: list[list[float]], contexts: int) -> dict[str, float]:
    """Expected rating after "<value> is", averaged over contexts; `outputs` are the six answers' log-probabilities
    of (context, value) pairs in context-major order, values in canonical order."""
    means = np.array([answer_distribution(o)[1] for o in outputs]).reshape(contexts, len(VALUES))
    return dict(zip(VALUES, means.mean(0).round(4).tolist()))


def profile_rank(scores: dict[str, float], target: str) -> float:
    """Rank of the target in a value profile (1 = highest; ties averaged)."""
    ranks = pd.Series(scores).rank(ascending=False, method="average")
    return float(ranks[target])


def pvq_profile(ratings: np.ndarray, item_values: list[str]) -> dict[str, float]:
    frame = pd.DataFrame({"value": item_values, "rating": ratings})
    return frame.groupby("value")["rating"].mean().reindex(list(VALUES)).round(4).to_dict()


def run_names(value: str) -> tuple[str, str]:
    """The runs aligned to `value`: with true labels, and the shuffled-label control."""
    return snake(value), f"{snake(value)}_shuffled"


def level_m0(fit: dict[str, np.ndarray], labels: pd.DataFrame, targets: tuple[str, str], threshold: float) -> dict:
    """Per target t: D_t(run t) - D_t(vanilla) on training arguments (runs keyed as in `run_names`)."""
    rows = {}
    for t in targets:
        aligned, vanilla = contrast(fit[snake(t)], labels[t] == 1), contrast(fit["vanilla"], labels[t] == 1)
        rows[t] = {"D_aligned": aligned, "D_vanilla": vanilla, "gain": aligned - vanilla}
    return {"targets": rows, "threshold": threshold, "pass": all(r["gain"] >= threshold for r in rows.values())}


def level_m0b(tables: dict[str, dict[str, float]], target_scores: dict[str, dict[str, float]],
              threshold: float) -> dict:
    """NMSE of each run's value table against its target (vanilla's against each target, for reference)."""
    rows = {run: {"table": tables[run], "nmse": nmse(tables[run], target_scores[run]),
                  "vanilla_nmse": nmse(tables["vanilla"], target_scores[run])}
            for run in target_scores}
    aligned = [run for run in target_scores if not run.endswith("_shuffled")]
    return {"runs": rows, "vanilla_table": tables["vanilla"], "threshold": threshold,
            "pass": all(rows[run]["nmse"] <= threshold for run in aligned)}


def crossover_summary(a: np.ndarray, b: np.ndarray, labelled_a: np.ndarray, labelled_b: np.ndarray,
                      resamples: int, seed: int) -> dict:
    low, high = crossover_interval(a, b, labelled_a, labelled_b, resamples=resamples, seed=seed)
    return {"cc": crossover(a, b, labelled_a, labelled_b), "ci95": [low, high]}


def level_m1(test: dict[str, np.ndarray], labels: pd.DataFrame, targets: tuple[str, str], threshold: float,
             control_margin: float, resamples: int, seed: int) -> dict:
    a, b = targets
    (run_a, control_a), (run_b, control_b) = run_names(a), run_names(b)
    la, lb = (labels[a] == 1).to_numpy(), (labels[b] == 1).to_numpy()
    main = crossover_summary(test[run_a], test[run_b], la, lb, resamples, seed)
    control = crossover_summary(test[control_a], test[control_b], la, lb, resamples, seed)
    contrasts = {run: {t: contrast(r, labels[t] == 1) for t in targets} for run, r in test.items()}
    control_ok = abs(control["cc"]) <= control_margin  # vanilla's CC with itself is 0
    passed = main["cc"] >= threshold and main["ci95"][0] > 0 and control_ok
    return {"arguments": len(labels), "labelled": {t: int((labels[t] == 1).sum()) for t in targets},
            "crossover": main, "control": {**control, "within_margin": control_ok}, "contrasts": contrasts,
            "all_contrasts": {run: value_contrasts(r, labels) for run, r in test.items()},
            "threshold": threshold, "control_margin": control_margin, "pass": passed}


def level_m2(pvq: dict[str, np.ndarray], item_values: list[str], targets: tuple[str, str], threshold: float,
             resamples: int, seed: int) -> dict:
    a, b = targets
    values = np.array(item_values)
    main = crossover_summary(pvq[snake(a)], pvq[snake(b)], values == a, values == b, resamples, seed)
    profiles = {run: pvq_profile(r, item_values) for run, r in pvq.items()}
    ranks = {run: {t: profile_rank(profiles[run], t) for t in targets} for run in pvq}
    passed = main["cc"] >= threshold and main["ci95"][0] > 0
    return {"items": len(item_values), "crossover": main, "profiles": profiles, "target_ranks": ranks,
            "threshold": threshold, "pass": passed}


def verdict(levels: dict[str, dict]) -> dict:
    """The first level that fails, and what that says; or that every level passed."""
    for name in LEVELS:
        if not levels[name]["pass"]:
            return {"fails_at": name, "meaning": LEVELS[name]}
    return {"fails_at": None, "meaning": "every level passed: alignment moves the values, up to the questionnaire"}


def fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:+.{digits}f}"


def report(result: dict) -> str:
    """The verdict table and each level's numbers, as markdown."""
    levels, (a, b) = result["levels"], result["targets"]
    m0, m0b, m1, m2 = (levels[k] for k in LEVELS)
    ok = {True: "pass", False: "**fail**"}
    lines = [
        "| level | measure | value | threshold | result |", "|---|---|---|---|---|",
        *(f"| M0 fit | D_{t}(run {t}) − D_{t}(vanilla), training arguments | {fmt(r['gain'])} | ≥ {m0['threshold']} | "
          f"{ok[r['gain'] >= m0['threshold']]} |" for t, r in m0["targets"].items()),
        *(f"| M0b value table | NMSE of run {run}'s table vs its target (vanilla: {m0b['runs'][run]['vanilla_nmse']:.3f}) | "
          f"{r['nmse']:.3f} | ≤ {m0b['threshold']} | "
          f"{ok[r['nmse'] <= m0b['threshold']] if not run.endswith('_shuffled') else 'control'} |"
          for run, r in m0b["runs"].items()),
        f"| M1 generalisation | CC({a}, {b}), {m1['arguments']} test arguments [95% CI] | {fmt(m1['crossover']['cc'])} "
        f"[{fmt(m1['crossover']['ci95'][0])}, {fmt(m1['crossover']['ci95'][1])}] | ≥ {m1['threshold']}, CI > 0 | "
        f"{ok[m1['crossover']['cc'] >= m1['threshold'] and m1['crossover']['ci95'][0] > 0]} |",
        f"| M1 control | CC of the shuffled-label runs [95% CI] | {fmt(m1['control']['cc'])} "
        f"[{fmt(m1['control']['ci95'][0])}, {fmt(m1['control']['ci95'][1])}] | within ±{m1['control_margin']} of 0 | "
        f"{ok[m1['control']['within_margin']]} |",
        f"| M2 questionnaire | CC({a}, {b}), PVQ-40 items [95% CI] | {fmt(m2['crossover']['cc'])} "
        f"[{fmt(m2['crossover']['ci95'][0])}, {fmt(m2['crossover']['ci95'][1])}] | ≥ {m2['threshold']}, CI > 0 | "
        f"{ok[m2['pass']]} |",
        "", f"**Verdict:** {'fails at ' + result['verdict']['fails_at'] + ' — ' if result['verdict']['fails_at'] else ''}"
            f"{result['verdict']['meaning']}.", "",
        "Contrasts D (mean rating of the value's arguments/items minus the rest) per run:", "",
        f"| run | M0 D_{a} | M0 D_{b} | M1 D_{a} | M1 D_{b} | M2 rank of {a} | M2 rank of {b} | mean test rating |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run, d in m1["contrasts"].items():
        fit = result["fit_contrasts"].get(run, {})
        ranks = m2["target_ranks"][run]
        lines.append(f"| {run} | {fmt(fit.get(a))} | {fmt(fit.get(b))} | {fmt(d[a])} | {fmt(d[b])} | {ranks[a]:g} | "
                     f"{ranks[b]:g} | {result['mean_test_rating'][run]:.2f} |")
    lines += ["", "Value tables (M0b: expected rating after \"<value> is\", mean over contexts):", "",
              "| run | " + " | ".join(v[:4] for v in VALUES) + " | NMSE |", "|---|" + "---|" * (len(VALUES) + 1)]
    tables = {"vanilla": (m0b["vanilla_table"], None), **{run: (r["table"], r["nmse"]) for run, r in m0b["runs"].items()}}
    for run, (table, error) in tables.items():
        lines.append(f"| {run} | " + " | ".join(f"{table[v]:.2f}" for v in VALUES) +
                     f" | {'' if error is None else f'{error:.3f}'} |")
    return "\n".join(lines) + "\n"
