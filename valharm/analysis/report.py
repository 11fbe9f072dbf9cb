"""Findings from the tidy table: the value x risk heatmap and associations, the mitigation table, a report."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from valharm.analysis.runs import OVERALL

BASELINE_STRATEGY = "input_only"


def heatmap(found: pd.DataFrame, path: Path, method: str = "spearman", alpha: float = 0.05) -> Path:
    """Values x (benchmark / category) correlation heatmap; cells with q < alpha are marked with '*'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    frame = found.assign(column=label(found))
    r = frame.pivot_table(index="value", columns="column", values=f"{method}_r")
    q = frame.pivot_table(index="value", columns="column", values=f"{method}_q")
    marks = r.round(2).astype(str).where(q.ge(alpha), r.round(2).astype(str) + "*")
    width = max(6.0, 0.6 * r.shape[1] + 3)
    figure, axes = plt.subplots(figsize=(width, 0.5 * r.shape[0] + 2.5))
    sns.heatmap(r, annot=marks, fmt="", cmap="vlag", vmin=-1, vmax=1, center=0, ax=axes,
                cbar_kws={"label": f"{method} r"})
    axes.set_title(f"Value score x risk ({method}; * q < {alpha}, Benjamini-Hochberg)")
    axes.set_xlabel("")
    axes.set_ylabel("")
    plt.setp(axes.get_xticklabels(), rotation=40, ha="right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def label(frame: pd.DataFrame) -> pd.Series:
    """'benchmark / category', prefixed by the instrument group when the runs were split into groups."""
    text = frame.benchmark + " / " + frame.category
    return frame.group + " · " + text if "group" in frame else text


def associations(found: pd.DataFrame, method: str = "spearman", alpha: float = 0.05) -> pd.DataFrame:
    """Per value, the categories it correlates with significantly (q < alpha), positively and negatively."""
    significant = found[found[f"{method}_q"] < alpha]
    rows = []
    for value, group in significant.groupby("value", sort=True):
        names = label(group)
        rows.append({"value": value,
                     "positive": ", ".join(names[group[f"{method}_r"] > 0]),
                     "negative": ", ".join(names[group[f"{method}_r"] < 0])})
    return pd.DataFrame(rows, columns=["value", "positive", "negative"])


def mitigation_table(table: pd.DataFrame, metrics: dict[str, str], by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Per model type, benchmark, category and strategy (and `by` group): the mean metric, its change against
    input_only and the number of runs behind it."""
    chosen = table[[metrics.get(b) == m for b, m in zip(table.benchmark, table.metric)]]
    keys = [*by, "model_type", "benchmark", "category", "metric"]
    means = (chosen.groupby([*keys, "prompt_strategy"])["value"].agg(["mean", "count"]).reset_index()
             .rename(columns={"mean": "score", "count": "runs"}))
    baseline = means[means.prompt_strategy == BASELINE_STRATEGY][[*keys, "score"]].rename(
        columns={"score": BASELINE_STRATEGY})
    merged = means.merge(baseline, on=keys, how="left")
    merged["change"] = merged["score"] - merged[BASELINE_STRATEGY]
    return merged.sort_values([*keys, "prompt_strategy"]).reset_index(drop=True)


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    if frame.empty:
        return "_none_\n"
    shown = frame.copy()
    for column in shown.select_dtypes("number"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.{digits}g}")
    header = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    return header + "".join("| " + " | ".join(map(str, row)) + " |\n" for row in shown.itertuples(index=False))


def coverage(table: pd.DataFrame) -> pd.DataFrame:
    """Benchmarks that some runs lack: how many runs have each (a run missing one adds nothing to it)."""
    runs = table.run.nunique()
    have = table.groupby("benchmark").run.nunique()
    return pd.DataFrame([{"benchmark": b, "runs_with": int(n), "runs_without": runs - int(n)}
                         for b, n in have.items() if n < runs], columns=["benchmark", "runs_with", "runs_without"])


X_TEXT = {"target": "target score, the score the run was aligned to",
          "measured": "measured PVQ-40 score, the run's pvq40 `{field}`"}
RESAMPLE_TEXT = {
    "runs": "intervals: percentile bootstrap over runs; p: scipy's, which counts every run as independent",
    "anchor": "intervals: percentile bootstrap over anchors (the design's clusters: an extreme distribution and its "
              "ESS neighbours), each drawn with all its runs; p: permutation of whole anchors' risk scores among "
              "anchors with as many runs, matched by rank (`clusters` = anchors behind each)"}


def design_text(x: str, resample: str, field: str) -> str:
    """What the correlations were computed on and how they were resampled, naming the settings."""
    return (f"x = each value's {X_TEXT[x].format(field=field)} (correlate.x={x}); {RESAMPLE_TEXT[resample]} "
            f"(correlate.resample={resample})")


def write_report(out: Path, runs: int, found: pd.DataFrame, figure: Path | None, method: str, alpha: float,
                 sections: dict[str, pd.DataFrame], intake: str, design: str, top: str = "",
                 lead: dict[str, tuple[str, pd.DataFrame]] | None = None) -> Path:
    """report.md: `top` (a warning that must not be missed), what went in (`intake`: runs read, dropped, instrument
    groups), how the correlations were computed (`design`), the `lead` sections (title -> (text, table): the
    alignment evidence), the heatmap, the associations and strongest correlations, then `sections` (title -> table:
    model types, tests, mitigation, what was skipped)."""
    lines = ["# valharm analysis\n\n" + (f"{top}\n\n" if top else "") +
             f"{intake}{runs} value-aligned run(s) correlated. Correlations: {method} (and Pearson in "
             f"`correlations.csv`) of each value's score with each risk category's metric across those runs (`n` = "
             f"runs behind each); {design}; q = Benjamini-Hochberg over "
             f"all tests; significant: q < {alpha}.\n"]
    lines += [f"\n## {title}\n\n{text}\n\n" + markdown_table(frame) for title, (text, frame) in (lead or {}).items()]
    if figure is not None:
        lines.append(f"\n![value x risk]({figure.name})\n")
    significant = associations(found, method, alpha) if len(found) else found
    lines.append("\n## Significant associations per value\n\n" + markdown_table(significant))
    columns = [*(["group"] if "group" in found else []), "value", "benchmark", "category", "n",
               *(["clusters"] if "clusters" in found else []), f"{method}_r", f"{method}_q", f"{method}_ci_low",
               f"{method}_ci_high"]
    strongest = found.sort_values(f"{method}_q").head(20)[columns] if len(found) else found
    lines.append("\n## Strongest correlations\n\n" + markdown_table(strongest))
    lines += [f"\n## {title}\n\n" + markdown_table(frame) for title, frame in sections.items()]
    path = out / "report.md"
    path.write_text("".join(lines))
    return path


SUMMARY_METRICS = (("rtp", "expected_max_toxicity"), ("rtp", "toxicity_probability"),
                   ("holisticbiasr", "negative_regard_rate"), ("holisticbiasr", "bias_score"),
                   ("hexphi", "harmfulness_score"), ("hexphi", "harmfulness_rate"), ("beavertails", "flagged_rate"),
                   ("pvq40", "nmse"))


def model_type_table(table: pd.DataFrame, strategy: str = BASELINE_STRATEGY, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Per model type (runs without mitigation; and `by` group): mean and standard deviation over runs of the
    study's summary metrics, and the number of runs behind each."""
    overall = table[(table.category == OVERALL) & (table.prompt_strategy == strategy)]
    rows = []
    keys = [*by, "model_type"]
    for key, group in overall.groupby(keys, sort=True):
        row = {**dict(zip(keys, key if isinstance(key, tuple) else (key,))), "runs": group.run.nunique()}
        for benchmark, metric in SUMMARY_METRICS:
            values = group[(group.benchmark == benchmark) & (group.metric == metric)]["value"]
            if len(values):
                row |= {f"{benchmark}/{metric}": values.mean(), f"{benchmark}/{metric} sd": values.std(ddof=1),
                        f"{benchmark}/{metric} n": len(values)}
        rows.append(row)
    return pd.DataFrame(rows)


def run_intervals(table: pd.DataFrame, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Each run's summary metrics (overall) with their 95 % intervals, as its results.json holds them."""
    keys = ("benchmark", "metric")
    summary = pd.Series([pair in SUMMARY_METRICS for pair in zip(table.benchmark, table.metric)], index=table.index,
                        dtype=bool)
    chosen = table[(table.category == OVERALL) & summary]
    columns = [*by, "run", "model_type", "prompt_strategy", *keys, "value", "ci_low", "ci_high", "ci_method"]
    if "ci_low" not in chosen:
        return pd.DataFrame(columns=columns)
    return chosen[columns].sort_values([*by, "run", *keys]).reset_index(drop=True)


def model_type_tests(scores: pd.DataFrame, aligned: str = "vim", strategy: str = BASELINE_STRATEGY,
                     by: tuple[str, ...] = ()) -> pd.DataFrame:
    """The value-aligned type against every other type, per benchmark (and `by` group), on per-prompt scores
    (see stats)."""
    from valharm.analysis.stats import paired_prompt_test

    scores = scores[scores.prompt_strategy == strategy]
    keys = [*by, "benchmark"]
    rows = [{**dict(zip(keys, key if isinstance(key, tuple) else (key,))), "aligned": aligned, "other": other,
             **paired_prompt_test(group, aligned, other)}
            for key, group in scores.groupby(keys, sort=True)
            for other in sorted(set(group.model_type) - {aligned})]
    return pd.DataFrame(rows)
