"""`python -m valharm.analyze`: runs -> tidy table -> correlations, heatmap, mitigation table, report."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from valharm.analysis.fidelity import RULE, alignment, identical_vectors, measured_scores, warning
from valharm.analysis.report import (
    associations,
    coverage,
    design_text,
    heatmap,
    mitigation_table,
    model_type_table,
    model_type_tests,
    run_intervals,
    write_report,
)
from valharm.analysis.runs import deduplicate, prompt_scores, tidy, tidy_results
from valharm.analysis.stats import X_COLUMNS, correlations
from valharm.analysis.wandb_source import wandb_runs
from valharm.errors import ValharmError

SOURCES = ("local", "wandb")
POOLS = ("refuse", "per_group", "all")
RESAMPLES = ("runs", "anchor")
RUN_INTERVAL_ROWS = 40  # report.md shows this many of run_intervals.csv's rows


def instrument_groups(table: pd.DataFrame) -> pd.DataFrame:
    """Each instrument (model · scorer or reading · data) with a short label (G1, G2, ...), its benchmark and runs."""
    groups = table.groupby(["instrument", "benchmark"]).run.nunique().reset_index(name="runs")
    labels = {name: f"G{i}" for i, name in enumerate(sorted(groups.instrument.unique()), start=1)}
    return groups.assign(group=groups.instrument.map(labels))[["group", "benchmark", "instrument", "runs"]]


def check_pooling(groups: pd.DataFrame, pool: str) -> None:
    """Stop when a benchmark's runs were measured with different instruments, unless `pool` says what to do."""
    if pool not in POOLS:
        raise ValharmError(f"pool='{pool}' is unknown; use one of {', '.join(POOLS)}")
    mixed = groups[groups.benchmark.duplicated(keep=False)]
    if pool == "refuse" and len(mixed):
        first = mixed[mixed.benchmark == mixed.benchmark.iloc[0]]
        mix = "; ".join(f"{row.instrument} ({row.runs} runs)" for row in first.itertuples())
        raise ValharmError(f"{first.benchmark.iloc[0]} mixes runs of different base models, scorers or data ({mix}); "
                           f"pass runs of one kind, or pool=per_group (each group on its own) or pool=all (pooled)")


def check_options(cfg: DictConfig) -> None:
    """Refuse unknown choices before any run is read."""
    choices = {"source": (cfg.source, SOURCES), "pool": (cfg.pool, POOLS), "correlate.x": (cfg.correlate.x, X_COLUMNS),
               "correlate.resample": (cfg.correlate.resample, RESAMPLES)}
    for key, (chosen, allowed) in choices.items():
        if chosen not in allowed:
            raise ValharmError(f"{key}='{chosen}' is unknown; use one of {', '.join(allowed)}")


def read_runs(cfg: DictConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(the tidy table, per-prompt scores or None: W&B holds none) of the runs `cfg` names."""
    if cfg.source == "wandb":
        return tidy_results(wandb_runs(cfg.wandb.project, cfg.wandb.entity, cfg.wandb.group)), None
    if not cfg.runs:
        raise ValharmError("no runs given; pass runs=[<run or multirun dir>, ...]")
    table = tidy(list(cfg.runs))
    return table, prompt_scores(table)


def choose(table: pd.DataFrame, cfg: DictConfig) -> pd.DataFrame:
    """The runs to correlate (correlate.*), each row with its run's measured value scores (`measured/<Value>`)."""
    chosen = table[table.model_type.isin(cfg.correlate.model_types)
                   & (table.prompt_strategy == cfg.correlate.prompt_strategy)]
    least = cfg.correlate.get("min_alignment_shift")
    if least is not None:  # only runs whose alignment check shows the alignment took
        kept = chosen[chosen.alignment_shift.astype(float) >= least]
        print(f"valharm: correlate.min_alignment_shift={least} keeps {kept.run.nunique()} of {chosen.run.nunique()} runs")
        chosen = kept
    if chosen.empty:
        raise ValharmError(f"none of the {table.run.nunique()} runs has model_type in {list(cfg.correlate.model_types)} "
                           f"and prompt_strategy={cfg.correlate.prompt_strategy}; set correlate.* to the runs to correlate")
    measured = measured_scores(chosen, cfg.measured)
    readings = sorted(measured.group.unique()) if "group" in measured else []
    if cfg.correlate.x == "measured" and measured.empty:
        raise ValharmError(f"correlate.x=measured needs the runs' measured PVQ-40 scores, and none of the "
                           f"{chosen.run.nunique()} runs has pvq40 `{cfg.measured}`; evaluate pvq40, set measured= "
                           f"to the pvq40 field holding them, or use correlate.x=target")
    if cfg.correlate.x == "measured" and len(readings) > 1:
        raise ValharmError(f"correlate.x=measured: the runs' PVQ-40 scores come from {len(readings)} readings "
                           f"({', '.join(readings)} in `groups.csv`), which are not comparable; pass runs of one "
                           f"reading, or pool=all to pool them")
    return chosen.merge(measured.drop(columns="group", errors="ignore"), on="run", how="left")


def lead_sections(tables: dict[str, pd.DataFrame], cfg: DictConfig) -> dict[str, tuple[str, pd.DataFrame]]:
    """The alignment evidence that comes before the correlations in report.md: title -> (text, table)."""
    unit = "anchors" if cfg.correlate.resample == "anchor" else "runs"
    split = ", per instrument group of its PVQ-40 reading" if cfg.pool == "per_group" else ""
    identical = tables["identical_values.csv"]
    return {
        "Alignment: measured NMSE against the target-blind null": (
            f"Per sweep (the correlated runs of one model type{split}): "
            f"the runs' mean NMSE of their measured PVQ-40 scores (pvq40 `{cfg.measured}`) against their targets, "
            f"beside `null_nmse`, the NMSE of answering the sweep's mean target profile for every run (target-blind), "
            f"and `skill` = 1 - NMSE / null (<= 0: no better than ignoring the target). The measured values follow "
            f"their targets when: {RULE} (`follows_targets`; `alignment.csv`).", tables["alignment.csv"]),
        "Alignment fidelity per value": (
            f"{cfg.method} correlation across runs between each value's target and measured score, with a percentile "
            f"bootstrap interval over {unit} (`fidelity.csv`); 0 where the targets vary but the measured scores do "
            f"not.", tables["fidelity.csv"]),
        "Runs with identical value vectors": (
            f"{len(identical)} set(s) of runs share one value vector: each set is one profile counted more than once "
            f"(`identical_values.csv`)." if len(identical) else "No two correlated runs share a value vector.",
            identical)}


def report_sections(tables: dict[str, pd.DataFrame], cfg: DictConfig) -> dict[str, pd.DataFrame]:
    """The tables that follow the correlations in report.md: title -> table."""
    dropped = "Duplicates dropped (same generating model, strategy, benchmark settings and scorer)"
    return {"Instrument groups (base model · scorer or reading · data)": tables["groups.csv"],
            dropped: tables["dropped.csv"],
            "Model types (runs without mitigation; mean, sd and n over runs)": tables["model_types.csv"],
            f"{cfg.aligned_type} against each model type, per-prompt scores (Wilcoxon signed-rank, paired by "
            f"prompt: same prompts, bounded non-normal scores)": tables["model_type_tests.csv"],
            "Mitigation: score per strategy and change against input_only": tables["mitigation.csv"],
            "Benchmarks some runs lack": tables["coverage.csv"],
            f"Each run's summary metrics with their 95 % intervals (first {RUN_INTERVAL_ROWS} rows; all in "
            f"`run_intervals.csv`; methods in README \"Intervals\")": tables["run_intervals.csv"].head(RUN_INTERVAL_ROWS),
            "Skipped (fewer than 3 runs, or no spread)": tables["skipped.csv"]}


def analyze(cfg: DictConfig, out: Path) -> dict[str, Path]:
    check_options(cfg)
    metrics = OmegaConf.to_container(cfg.metrics)
    table, per_prompt = read_runs(cfg)
    runs_read = table.run.nunique()
    table, dropped = deduplicate(table)
    groups = instrument_groups(table)
    check_pooling(groups, cfg.pool)
    by = ("group",) if cfg.pool == "per_group" else ()
    if by:
        label = dict(zip(groups.instrument, groups.group))
        table = table.assign(group=table.instrument.map(label))
        if per_prompt is not None:
            per_prompt = per_prompt.assign(group=per_prompt.instrument.map(label))
    written = {"runs.csv": out / "runs.csv", "runs.parquet": out / "runs.parquet"}
    table.to_csv(written["runs.csv"], index=False)
    table.to_parquet(written["runs.parquet"], index=False)
    chosen = choose(table, cfg)
    found, skipped = correlations(chosen, metrics, cfg.resamples, seed=cfg.seed, by=by, x=cfg.correlate.x,
                                  resample=cfg.correlate.resample)
    summary, fidelity = alignment(chosen, cfg.measured, cfg.method, cfg.resamples, cfg.seed, by,
                                  clustered=cfg.correlate.resample == "anchor")
    tables = {"correlations.csv": found, "skipped.csv": skipped,
              "associations.csv": associations(found, cfg.method, cfg.alpha) if len(found) else found,
              "alignment.csv": summary, "fidelity.csv": fidelity, "identical_values.csv": identical_vectors(chosen),
              "model_types.csv": model_type_table(table, by=by),
              "model_type_tests.csv": model_type_tests(per_prompt, cfg.aligned_type, by=by) if per_prompt is not None
              else pd.DataFrame([{"note": "source=wandb has no per-prompt scores; run the analysis on local runs"}]),
              "mitigation.csv": mitigation_table(table, metrics, by=by), "coverage.csv": coverage(table),
              "groups.csv": groups, "dropped.csv": dropped, "run_intervals.csv": run_intervals(table, by)}
    for name, frame in tables.items():
        written[name] = out / name
        frame.to_csv(written[name], index=False)
    figure = heatmap(found, out / "heatmap.png", cfg.method, cfg.alpha) if len(found) else None
    if figure:
        written["heatmap.png"] = figure
    pooled = groups.benchmark.duplicated().any()
    intake = (f"{runs_read} run(s) read; {len(dropped)} duplicate (run, benchmark) measurement(s) dropped, the newest "
              f"kept (`dropped.csv`); {groups.group.nunique()} instrument group(s) (`groups.csv`)"
              + (", each analysed on its own (pool=per_group)" if by else
                 ", pooled across instruments (pool=all)" if pooled else "") + ". ")
    written["report.md"] = write_report(out, chosen.run.nunique(), found, figure, cfg.method, cfg.alpha,
                                        report_sections(tables, cfg), intake,
                                        design_text(cfg.correlate.x, cfg.correlate.resample, cfg.measured),
                                        warning(summary), lead_sections(tables, cfg))
    for name, path in written.items():
        print(f"valharm: {name} -> {path}")
    return written
