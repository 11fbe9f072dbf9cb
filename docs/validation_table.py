"""The table of docs/validation.md from the experiment's run dirs.

    python docs/validation_table.py outputs/validation

For every run of an extreme distribution: its PVQ-40 profile (probability-weighted mean rating per
value, from answer log-probabilities), NMSE to the target (most likely answers; probability-weighted
means; strict generation with its invalid count), the vanilla model's NMSE to the same target, the
rank of the target value in the measured profile (1 = rated highest of the ten) and its contrast: how
far the target value's mean rating stands above the other nine's, minus the same for vanilla (> 0: the
run moved towards the target, whatever it did to the overall level).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from scipy.stats import rankdata

from valharm.values import EXTREMES, VALUES, extreme, nmse

SHORT = {v: v[:4] for v in VALUES}


def load(root: Path) -> list[dict]:
    runs = []
    for path in sorted(root.glob("**/results.json")):
        result = json.loads(path.read_text())
        result["setting"] = path.parent.parent.name if path.parent.parent != root else path.parent.name
        runs.append(result)
    return runs


def target_rank(profile: dict, members: tuple[str, ...]) -> float:
    """Mean rank (1 = highest, ties averaged) of the target's value(s) in a profile."""
    ranks = dict(zip(profile, rankdata([-profile[v] for v in profile])))
    return sum(ranks[v] for v in members) / len(members)


def contrast(profile: dict, members: tuple[str, ...]) -> float:
    """Mean rating of the target's value(s) minus the mean of the other values."""
    inside = [profile[v] for v in members]
    outside = [profile[v] for v in profile if v not in members]
    return sum(inside) / len(inside) - sum(outside) / len(outside)


def table(runs: list[dict]) -> str:
    vanilla = next(r for r in runs if r["model_type"] == "vanilla")
    base = vanilla["metrics"]["pvq40"]["scores_expected"]
    lines = ["| run | target | " + " | ".join(SHORT[v] for v in VALUES)
             + " | NMSE | NMSE exp. | NMSE gen. (invalid) | vanilla NMSE exp. | target rank | contrast vs vanilla |",
             "|---" * (len(VALUES) + 8) + "|"]
    for run in sorted(runs, key=lambda r: (r["model_type"] != "vanilla", r["setting"], r["value"]["name"])):
        name = run["value"]["name"]
        pvq, generated = run["metrics"]["pvq40"], run["metrics"].get("pvq40_generate", {})
        profile = pvq["scores_expected"]
        target = extreme(name).as_dict()
        gen = "n/a" if generated.get("nmse") is None else f"{generated['nmse']:.3f}"
        label = "vanilla" if run["model_type"] == "vanilla" else f"{run['setting']}"
        lines.append(f"| {label} | {name} | " + " | ".join(f"{profile[v]:.2f}" for v in VALUES)
                     + f" | {pvq['nmse']:.3f} | {pvq['nmse_expected']:.3f} | {gen} ({generated.get('invalid', '-')})"
                     f" | {nmse(base, target):.3f} | {target_rank(profile, EXTREMES[name]):g}"
                     f" | {contrast(profile, EXTREMES[name]) - contrast(base, EXTREMES[name]):+.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(load(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/validation"))))
