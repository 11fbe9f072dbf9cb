"""The validation's numbers from every run's outputs, and its verdict table: three arms (positive control, real
data, shuffled labels) and two references (the untuned model, ICL), each with value recognition against the
label-frequency baseline and the untuned model, and every NMSE beside its null."""
from __future__ import annotations

import numpy as np

from valharm.values import answer_space as A
from valharm.values import validation as V
from valharm.values.alignment import value_contrasts
from valharm.values.distributions import VALUES, extreme, nmse, snake

ARM_NAMES = {"_cued": "positive control (labels cued)", "": "real data", "_shuffled": "shuffled labels (control)"}
ARM_SUFFIXES = {"cued": "_cued", "real": "", "shuffled": "_shuffled"}  # `arms` names -> run suffix, in run order
READ_ON = {"fit": "fit", "test": "test", "fit_cued": "fit", "test_cued": "test"}  # reading set -> arguments


def recognitions(outputs: dict, parts: dict) -> dict:
    """Per run and reading set of arguments: value recognition, with the label-frequency baseline of the training
    arguments (cued sets carry the same labels)."""
    found = {}
    for run, sets in outputs.items():
        found[run] = {name: A.recognition(A.read(sets[name]), parts[READ_ON[name]])
                      for name in READ_ON if name in sets}
    found["frequency_baseline"] = {name: A.frequency_baseline(parts["train"], parts[name]) for name in ("fit", "test")}
    return found


def arm_levels(cfg, ratings: dict, tables: dict, pvq: dict, parts: dict, items, targets, suffix: str) -> dict:
    """M0, M0b, M1, M2 of one trained arm (positive control or real data)."""
    t, fit, test = cfg.thresholds, f"fit{suffix}", f"test{suffix}"
    scores = {snake(x) + suffix: extreme(x).as_dict() for x in targets}
    fit_ratings = {run: r[fit] for run, r in ratings.items() if fit in r}
    test_ratings = {run: r[test] for run, r in ratings.items() if test in r}
    control = {run: r["test"] for run, r in ratings.items() if run.endswith("_shuffled")}
    return {
        "M0": V.level_m0(fit_ratings, parts["fit"], targets, t.m0, suffix),
        "M0b": V.level_m0b(tables, scores, t.m0b, judged=list(scores)),
        "M1": V.level_m1(test_ratings, parts["test"], targets, t.m1, t.control, cfg.resamples, cfg.seed, suffix,
                         control_test=control),
        "M2": V.level_m2(pvq, items["value"].tolist(), targets, t.m2, cfg.resamples, cfg.seed, suffix),
    }


def reference_crossovers(cfg, ratings: dict, pvq: dict, parts: dict, items, targets) -> dict:
    """The crossover of the ICL runs, on test arguments and PVQ-40 items (the shuffled-label runs' is M1's control;
    they are not read on the PVQ-40). Empty without both ICL runs."""
    a, b = targets
    values = np.array(items["value"].tolist())
    run_a, run_b = f"icl_{snake(a)}", f"icl_{snake(b)}"
    if run_a not in ratings or run_b not in ratings:
        return {}
    la, lb = (parts["test"][a] == 1).to_numpy(), (parts["test"][b] == 1).to_numpy()
    return {"icl": {
        "test": V.crossover_summary(ratings[run_a]["test"], ratings[run_b]["test"], la, lb, cfg.resamples, cfg.seed),
        "pvq": V.crossover_summary(pvq[run_a], pvq[run_b], values == a, values == b, cfg.resamples, cfg.seed)}}


def table_nmse(tables: dict, targets_of: dict) -> dict:
    """(NMSE, target-blind null) of each trained run's value table against its target."""
    null = V.blind_profile(targets_of)
    return {run: (nmse(tables[run], target), nmse(null, target)) for run, target in targets_of.items()
            if run in tables}


def expected_runs(targets, arms) -> list[str]:
    """Every run a complete validation of these arms rates."""
    names = [snake(t) for t in targets]
    trained = [n + ARM_SUFFIXES[arm] for arm in ARM_SUFFIXES if arm in arms for n in names]
    return ["vanilla", *(f"icl_{n}" for n in names), *trained]


def measure(cfg, outputs: dict, parts: dict, items, targets: tuple[str, str]) -> dict:
    """Every arm's levels and verdict, the references, recognition and the NMSEs with their nulls."""
    ratings = {run: {name: A.expected_ratings(A.read(o)) for name, o in sets.items() if name not in ("table",)}
               for run, sets in outputs.items()}
    tables = {run: V.value_table(o["table"], len(parts["contexts"])) for run, o in outputs.items() if "table" in o}
    pvq = {run: r["pvq"] for run, r in ratings.items() if "pvq" in r}
    profiles = {run: V.pvq_profile(r, items["value"].tolist()) for run, r in pvq.items()}
    arms = {suffix: arm_levels(cfg, ratings, tables, pvq, parts, items, targets, suffix) for suffix in ("_cued", "")
            if all(snake(t) + suffix in outputs for t in targets)}
    missing = [run for run in expected_runs(targets, cfg.arms) if run not in outputs]
    targets_of = {run: extreme(run.removeprefix("icl_").removesuffix(suffix)).as_dict()
                  for run in outputs if run != "vanilla" for suffix in ("_cued", "_shuffled", "")
                  if run.endswith(suffix) and run.removeprefix("icl_").removesuffix(suffix) in map(snake, targets)}
    real = arms.get("")
    return {"targets": list(targets), "reading": "answer_space", "missing_runs": missing,
            "arms": {ARM_NAMES[s]: {"levels": levels, "verdict": V.verdict(levels)} for s, levels in arms.items()},
            "levels": real,
            "verdict": V.verdict(real) if real else {"fails_at": None, "meaning": "real-data runs missing"},
            "references": reference_crossovers(cfg, ratings, pvq, parts, items, targets),
            "recognition": recognitions(outputs, parts),
            "pvq_nmse": V.pvq_nmse(profiles, targets_of), "pvq_profiles": profiles, "tables": tables,
            "table_nmse": table_nmse(tables, targets_of),
            "fit_contrasts": {run: value_contrasts(r["fit_cued" if run.endswith("_cued") else "fit"], parts["fit"])
                              for run, r in ratings.items() if "fit" in r or "fit_cued" in r},
            "mean_test_rating": {run: float(r["test_cued" if run.endswith("_cued") else "test"].mean())
                                 for run, r in ratings.items() if "test" in r or "test_cued" in r},
            "value_named": {run: A.summary(A.read(o["test_cued" if run.endswith("_cued") else "test"]), parts["test"],
                                           parts["train"])["value_named"]
                            for run, o in outputs.items() if "test" in o or "test_cued" in o},
            "arguments": {k: len(v) for k, v in parts.items()}}


def fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:+.{digits}f}"


def cc(summary: dict) -> str:
    return f"{fmt(summary['cc'])} [{fmt(summary['ci95'][0])}, {fmt(summary['ci95'][1])}]"


def arm_row(name: str, levels: dict, verdict: dict, recognition: dict, suffix: str, targets) -> str:
    ok = {True: "pass", False: "**fail**", None: "undetermined"}  # None: its control run is missing
    gains = " / ".join(fmt(r["gain"]) for r in levels["M0"]["targets"].values())
    m0b = " / ".join(f"{levels['M0b']['runs'][snake(t) + suffix]['nmse']:.3f}" for t in targets)
    rec = " / ".join(f"{recognition[snake(t) + suffix][f'fit{suffix}']:.3f}" for t in targets)
    test = " / ".join(f"{recognition[snake(t) + suffix][f'test{suffix}']:.3f}" for t in targets)
    return (f"| {name} | {gains} {ok[levels['M0']['pass']]} | {m0b} {ok[levels['M0b']['pass']]} | "
            f"{cc(levels['M1']['crossover'])} {ok[levels['M1']['pass']]} | {cc(levels['M2']['crossover'])} "
            f"{ok[levels['M2']['pass']]} | {rec} | {test} | {verdict['fails_at'] or 'passes every level'} |")


def recognition_of(rec: dict, runs: list[str], name: str) -> str:
    return " / ".join(f"{rec[run][name]:.3f}" if run in rec else "not run" for run in runs)


def verdict_table(result: dict) -> list[str]:
    a, b = result["targets"]
    rec, refs = result["recognition"], result["references"]
    lines = [f"| arm | M0 gain {a} / {b} | M0b NMSE {a} / {b} | M1 CC [95% CI] | M2 CC [95% CI] | recognition fit "
             f"{a} / {b} | recognition test {a} / {b} | verdict |", "|---|---|---|---|---|---|---|---|"]
    for suffix, name in (("_cued", ARM_NAMES["_cued"]), ("", ARM_NAMES[""])):
        if name in result["arms"]:
            arm = result["arms"][name]
            lines.append(arm_row(name, arm["levels"], arm["verdict"], rec, suffix, (a, b)))
        else:
            lines.append(f"| {name} | not run | | | | | | |")
    control = (result["levels"] or {}).get("M1", {}).get("control")
    runs = [f"{snake(t)}_shuffled" for t in (a, b)]
    judged = (f"{cc(control)} (abs(CC) ≤ {result['levels']['M1']['control_margin']}: "
              f"{'pass' if control['within_margin'] else '**fail**'})") if control else "not measured: a run missing"
    lines.append(f"| {ARM_NAMES['_shuffled']} | n/a | n/a | {judged} | not read | n/a | "
                 f"{recognition_of(rec, runs, 'test')} | control |")
    icl = refs.get("icl")
    lines.append(f"| ICL (reference, no training) | n/a | n/a | {cc(icl['test']) if icl else 'not run'} | "
                 f"{cc(icl['pvq']) if icl else 'not run'} | n/a | "
                 f"{recognition_of(rec, [f'icl_{snake(t)}' for t in (a, b)], 'test')} | reference |")
    vanilla, base = rec["vanilla"], rec["frequency_baseline"]
    lines.append(f"| untuned (reference) | 0 | n/a | 0 | 0 | {vanilla['fit']:.3f} (cued {vanilla['fit_cued']:.3f}) | "
                 f"{vanilla['test']:.3f} (cued {vanilla['test_cued']:.3f}) | reference |")
    lines.append(f"| label-frequency baseline | | | | | {base['fit']:.3f} | {base['test']:.3f} | |")
    return lines


def verdict_line(label: str, verdict: dict | None) -> str:
    if verdict is None:
        return f"**{label}:** not run."
    failed = f"fails at {verdict['fails_at']} — " if verdict["fails_at"] else ""
    return f"**{label}:** {failed}{verdict['meaning']}."


def report(result: dict) -> str:
    """The verdict table, the NMSEs with their nulls, contrasts and value tables, as markdown."""
    a, b = result["targets"]
    arms = {name: arm.get("verdict") for name, arm in result["arms"].items()}
    missing = f"Runs not in this run dir: {', '.join(result['missing_runs'])}." if result["missing_runs"] else ""
    lines = ["Reading: the whole answer space stage 2 teaches (10 values x 6 ratings, normalised); a rating is its "
             "expectation over every answer.", missing, "", *verdict_table(result), "",
             verdict_line("Verdict (real data)", arms.get(ARM_NAMES[""])),
             verdict_line("Positive control", arms.get(ARM_NAMES["_cued"])), "",
             "PVQ-40 NMSE against each run's target, beside the untuned model's, the target-blind null's (the mean of "
             "the design's targets) and the skill 1 − NMSE/NMSE(untuned):", "",
             "| run | NMSE | untuned | null | skill |", "|---|---|---|---|---|"]
    lines += [f"| {run} | {r['nmse']:.3f} | {r['untuned_nmse']:.3f} | {r['null_nmse']:.3f} | {fmt(r['skill'])} |"
              for run, r in result["pvq_nmse"].items()]
    lines += ["", "Value recognition per run (probability the answer names a labelled value), by set of arguments:", "",
              "| run | fit | test | fit, cued | test, cued |", "|---|---|---|---|---|"]
    lines += [f"| {run} | " + " | ".join(f"{sets[name]:.3f}" if name in sets else "" for name in READ_ON) + " |"
              for run, sets in result["recognition"].items() if run != "frequency_baseline"]
    lines += ["", "Contrasts D (mean rating of the value's arguments minus the rest) on the M0 training arguments "
              "(cued for the positive control's runs):", "",
              f"| run | D_{a} | D_{b} | mean test rating | P({a} named), test | P({b} named), test |",
              "|---|---|---|---|---|---|"]
    for run, d in result["fit_contrasts"].items():
        named = result["value_named"].get(run, {})
        lines.append(f"| {run} | {fmt(d[a])} | {fmt(d[b])} | {result['mean_test_rating'].get(run, float('nan')):.2f} | "
                     f"{named.get(a, float('nan')):.3f} | {named.get(b, float('nan')):.3f} |")
    lines += ["", "Value tables (M0b: expected rating after \"<value> is\", mean over contexts):", "",
              "| run | " + " | ".join(v[:4] for v in VALUES) + " | NMSE | null |", "|---|" + "---|" * (len(VALUES) + 2)]
    tables = {run: (table, *result["table_nmse"].get(run, (None, None))) for run, table in result["tables"].items()}
    for run, (table, error, null) in tables.items():
        lines.append(f"| {run} | " + " | ".join(f"{table[v]:.2f}" for v in VALUES) +
                     f" | {'' if error is None else f'{error:.3f}'} | {'' if null is None else f'{null:.3f}'} |")
    return "\n".join(lines) + "\n"
