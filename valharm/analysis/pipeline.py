"""`python -m valharm.analyze`: runs -> tidy table -> correlations, heatmap, mitigation table, report."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from valharm.analysis.report import (associations, coverage, heatmap, mitigation_table, model_type_table,
                                     model_type_tests, write_report)
from valharm.analysis.runs import deduplicate, prompt_scores, tidy, tidy_results
from valharm.analysis.wandb_source import wandb_runs
from valharm.analysis.stats import correlations
from valharm.errors import ValharmError

SOURCES = ("local", "wandb")
POOLS = ("refuse", "per_group", "all")


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


def analyze(cfg: DictConfig, out: Path) -> dict[str, Path]:
    if cfg.source not in SOURCES:
        raise ValharmError(f"source='{cfg.source}' is not available; use one of {', '.join(SOURCES)}")
    metrics = OmegaConf.to_container(cfg.metrics)
    if cfg.source == "wandb":
        table = tidy_results(wandb_runs(cfg.wandb.project, cfg.wandb.entity, cfg.wandb.group))
        per_prompt = None  # W&B holds no per-prompt scores
    else:
        if not cfg.runs:
            raise ValharmError("no runs given; pass runs=[<run or multirun dir>, ...]")
        table = tidy(list(cfg.runs))
        per_prompt = prompt_scores(table)
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
    found, skipped = correlations(chosen, metrics, cfg.resamples, seed=cfg.seed, by=by)
    tables = {"correlations.csv": found, "skipped.csv": skipped,
              "associations.csv": associations(found, cfg.method, cfg.alpha) if len(found) else found,
              "model_types.csv": model_type_table(table, by=by),
              "model_type_tests.csv": model_type_tests(per_prompt, cfg.aligned_type, by=by) if per_prompt is not None
              else pd.DataFrame([{"note": "source=wandb has no per-prompt scores; run the analysis on local runs"}]),
              "mitigation.csv": mitigation_table(table, metrics, by=by), "coverage.csv": coverage(table),
              "groups.csv": groups, "dropped.csv": dropped}
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
    sections = {"Instrument groups (base model · scorer or reading · data)": groups,
                "Duplicates dropped (same generating model, strategy, benchmark settings and scorer)": dropped,
                "Model types (runs without mitigation; mean, sd and n over runs)": tables["model_types.csv"],
                f"{cfg.aligned_type} against each model type, per-prompt scores (Wilcoxon signed-rank, paired by "
                f"prompt: same prompts, bounded non-normal scores)": tables["model_type_tests.csv"],
                "Mitigation: score per strategy and change against input_only": tables["mitigation.csv"],
                "Benchmarks some runs lack": tables["coverage.csv"],
                "Skipped (fewer than 3 runs, or no spread)": skipped}
    written["report.md"] = write_report(out, chosen.run.nunique(), found, figure, cfg.method, cfg.alpha, sections,
                                        intake)
    for name, path in written.items():
        print(f"valharm: {name} -> {path}")
    return written
