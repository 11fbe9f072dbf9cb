"""Does VIM move a model's values, and where does it stop? Four levels, each with a threshold fixed in
`conf/validate.yaml` before anything runs; an arm's verdict is the first level that fails. Three arms train the
same way on different data: the positive control (each argument's labelled values named in its text: which value
an argument expresses is learnable by construction), the real data, and the shuffled-label control (which value an
argument expresses is lost). Ratings are read over the whole answer space stage 2 teaches (valharm.values.answer_space).

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
from valharm.values.distributions import VALUES, nmse, snake
from valharm.values.questionnaire import answer_distribution

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


def blind_profile(target_scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """The target-blind answer: the mean of the design's distinct targets, the same whatever the target."""
    distinct = {tuple(scores[v] for v in VALUES) for scores in target_scores.values()}
    return dict(zip(VALUES, np.mean(list(distinct), axis=0).tolist()))


def run_names(value: str) -> tuple[str, str]:
    """The runs aligned to `value`: with true labels, and the shuffled-label control."""
    return snake(value), f"{snake(value)}_shuffled"


def level_m0(fit: dict[str, np.ndarray], labels: pd.DataFrame, targets: tuple[str, str], threshold: float,
             suffix: str = "") -> dict:
    """Per target t: D_t(run t) - D_t(vanilla) on training arguments (runs keyed as in `run_names`, + `suffix`)."""
    rows = {}
    for t in targets:
        aligned, vanilla = contrast(fit[snake(t) + suffix], labels[t] == 1), contrast(fit["vanilla"], labels[t] == 1)
        rows[t] = {"D_aligned": aligned, "D_vanilla": vanilla, "gain": aligned - vanilla}
    return {"targets": rows, "threshold": threshold, "pass": all(r["gain"] >= threshold for r in rows.values())}


def level_m0b(tables: dict[str, dict[str, float]], target_scores: dict[str, dict[str, float]],
              threshold: float, judged: list[str]) -> dict:
    """NMSE of each run's value table against its target, beside vanilla's and the target-blind null's (the mean
    of the design's targets, answered whatever the target)."""
    null = blind_profile(target_scores)
    rows = {run: {"table": tables[run], "nmse": nmse(tables[run], target_scores[run]),
                  "vanilla_nmse": nmse(tables["vanilla"], target_scores[run]), "null_nmse": nmse(null, target_scores[run])}
            for run in target_scores if run in tables}
    return {"runs": rows, "vanilla_table": tables["vanilla"], "threshold": threshold,
            "judged": judged, "pass": all(rows[run]["nmse"] <= threshold for run in judged)}


def crossover_summary(a: np.ndarray, b: np.ndarray, labelled_a: np.ndarray, labelled_b: np.ndarray,
                      resamples: int, seed: int) -> dict:
    low, high = crossover_interval(a, b, labelled_a, labelled_b, resamples=resamples, seed=seed)
    return {"cc": crossover(a, b, labelled_a, labelled_b), "ci95": [low, high]}


def level_m1(test: dict[str, np.ndarray], labels: pd.DataFrame, targets: tuple[str, str], threshold: float,
             control_margin: float, resamples: int, seed: int, suffix: str = "",
             control_test: dict[str, np.ndarray] | None = None) -> dict:
    """CC of the runs aligned to a and b (+ `suffix`) on test arguments, and the shuffled-label runs' CC (read on
    `control_test`, the real arguments, when the arm reads others) within a margin of 0. Without both shuffled-label
    runs the level cannot pass: `pass` is None (undetermined) unless the crossover itself fails."""
    a, b = targets
    (run_a, control_a), (run_b, control_b) = run_names(a), run_names(b)
    la, lb = (labels[a] == 1).to_numpy(), (labels[b] == 1).to_numpy()
    main = crossover_summary(test[run_a + suffix], test[run_b + suffix], la, lb, resamples, seed)
    control_test = test if control_test is None else control_test
    contrasts = {run: {t: contrast(r, labels[t] == 1) for t in targets} for run, r in test.items()}
    crossed = main["cc"] >= threshold and main["ci95"][0] > 0
    if control_a in control_test and control_b in control_test:
        control = crossover_summary(control_test[control_a], control_test[control_b], la, lb, resamples, seed)
        control["within_margin"] = abs(control["cc"]) <= control_margin  # vanilla's CC with itself is 0
        passed = crossed and control["within_margin"]
    else:
        control, passed = None, None if crossed else False
    return {"arguments": len(labels), "labelled": {t: int((labels[t] == 1).sum()) for t in targets},
            "crossover": main, "control": control, "contrasts": contrasts,
            "all_contrasts": {run: value_contrasts(r, labels) for run, r in test.items()},
            "threshold": threshold, "control_margin": control_margin, "pass": passed}


def level_m2(pvq: dict[str, np.ndarray], item_values: list[str], targets: tuple[str, str], threshold: float,
             resamples: int, seed: int, suffix: str = "") -> dict:
    a, b = targets
    values = np.array(item_values)
    main = crossover_summary(pvq[snake(a) + suffix], pvq[snake(b) + suffix], values == a, values == b, resamples, seed)
    profiles = {run: pvq_profile(r, item_values) for run, r in pvq.items()}
    ranks = {run: {t: profile_rank(profiles[run], t) for t in targets} for run in pvq}
    passed = main["cc"] >= threshold and main["ci95"][0] > 0
    return {"items": len(item_values), "crossover": main, "profiles": profiles, "target_ranks": ranks,
            "threshold": threshold, "pass": passed}


def verdict(levels: dict[str, dict]) -> dict:
    """The first level that fails, and what that says; or where the verdict stops for want of a run; or that every
    level passed."""
    for name in LEVELS:
        if levels[name]["pass"] is None:
            return {"fails_at": None, "undetermined_at": name,
                    "meaning": f"undetermined at {name}: a run it needs (the shuffled-label control) was not run"}
        if not levels[name]["pass"]:
            return {"fails_at": name, "meaning": LEVELS[name]}
    return {"fails_at": None, "meaning": "every level passed: alignment moves the values, up to the questionnaire"}


def pvq_nmse(profiles: dict[str, dict[str, float]], target_scores: dict[str, dict[str, float]]) -> dict:
    """Each run's PVQ-40 NMSE against its target beside the untuned model's, the target-blind null's and the skill
    1 - NMSE / NMSE(untuned); references (vanilla, ICL) against each target they are compared with."""
    null = blind_profile(target_scores)
    rows = {}
    for run, target in target_scores.items():
        if run not in profiles:
            continue
        found, base = nmse(profiles[run], target), nmse(profiles["vanilla"], target)
        rows[run] = {"nmse": found, "untuned_nmse": base, "null_nmse": nmse(null, target),
                     "skill": 1 - found / base if base else None}
    return rows
