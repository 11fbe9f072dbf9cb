"""Runs on disk to one tidy table: a row per run x benchmark x category x metric.

Overall numbers have category "all"; per-category numbers (HEx-PHI, BeaverTails categories,
HolisticBiasR axes) have the category's name. Missing categories and non-numeric fields give no row.
Each row carries what identifies its run: model, aligner, model type, prompt strategy, the scorers
that produced its numbers, the run's ten target value scores (`value/<Name>`) and, for VIM runs, the
alignment check's weighted shift (`alignment_shift`).
"""
from __future__ import annotations

import glob
import json
from pathlib import Path

import pandas as pd

from valharm.errors import ValharmError
from valharm.tracking import is_number
from valharm.values import VALUES

OVERALL = "all"


def find_results(paths: list[str]) -> list[Path]:
    """Every results.json in the given run or multirun dirs (globs allowed), in sorted order."""
    found: list[Path] = []
    for pattern in paths:
        matches = sorted(glob.glob(str(pattern))) or [pattern]
        for match in map(Path, matches):
            if match.is_file() and match.name == "results.json":
                found.append(match)
            elif match.is_dir():
                found += sorted(match.rglob("results.json"))
            else:
                raise ValharmError(f"no run dir or results.json at {match}; pass run or multirun dirs in runs=[...]")
    if not found:
        raise ValharmError(f"no results.json under {', '.join(map(str, paths))}; run a sweep first or fix runs=[...]")
    return list(dict.fromkeys(found))


def numbers(metrics: dict) -> list[tuple[str, str]]:
    """(category, metric) of every number in one benchmark's metrics."""
    rows = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            rows += [(key, k) for k, v in value.items() if is_number(v)]
        elif is_number(value):
            rows.append((OVERALL, key))
    return rows


def run_row(results: dict, run: str) -> dict:
    scores = results["value"]["scores"]
    check = results.get("alignment_check") or {}
    return {"run": run, "model": results.get("model"), "aligner": results.get("aligner"),
            "model_type": results.get("model_type", results.get("aligner")),
            "prompt_strategy": results.get("prompt_strategy"), "value_name": results["value"].get("name"),
            "scorers": ", ".join(sorted(results.get("scoring") or {})),
            "alignment_shift": check.get("weighted_shift"),  # VIM runs: did the alignment take (see README)
            **{f"value/{name}": float(scores[name]) for name in VALUES}}


def tidy(paths: list[str]) -> pd.DataFrame:
    """The tidy table of every run under `paths`."""
    def read(path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except ValueError as err:
            raise ValharmError(f"{path} is not a valharm results file ({err})") from None

    return tidy_results((str(path.parent), read(path)) for path in find_results(paths))


def tidy_results(runs) -> pd.DataFrame:
    """The tidy table of (run name, results dict) pairs, whatever they were read from."""
    rows = []
    for name, results in runs:
        try:
            run = run_row(results, name)
        except (KeyError, TypeError) as err:
            raise ValharmError(f"{name} is not a valharm results file (no {err})") from None
        for benchmark, metrics in results.get("metrics", {}).items():
            rows += [{**run, "benchmark": benchmark, "category": category, "metric": metric,
                      "value": float(metrics[metric] if category == OVERALL else metrics[category][metric])}
                     for category, metric in numbers(metrics)]
    return pd.DataFrame(rows)


def prompt_score(record: dict) -> float | None:
    """One generation record's risk score, on the scale its benchmark's per-prompt test uses (None: unscored)."""
    if record.get("status", "ok") != "ok":
        return None
    benchmark = record.get("benchmark")
    if benchmark == "rtp":
        return record.get("toxicity")
    if benchmark == "holisticbiasr":
        return float(record.get("regard") == "negative")
    if benchmark == "hexphi":
        return record.get("harmfulness")
    if benchmark == "beavertails":
        return float(record.get("flagging") == "flagged")
    return None


def prompt_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Per-prompt risk scores of the runs of a tidy table (from generations.jsonl in each run dir): a row per
    run x benchmark x prompt; RTP prompts score the highest toxicity of their samples."""
    rows = []
    for run in table[["run", "model_type", "prompt_strategy"]].drop_duplicates().to_dict("records"):
        generations = Path(run["run"]) / "generations.jsonl"
        if not generations.is_file():
            continue
        for line in generations.read_text().splitlines():
            record = json.loads(line)
            score = prompt_score(record)
            if score is not None:
                rows.append({**run, "benchmark": record["benchmark"], "prompt": record["id"], "score": float(score)})
    frame = pd.DataFrame(rows, columns=["run", "model_type", "prompt_strategy", "benchmark", "prompt", "score"])
    keys = ["run", "model_type", "prompt_strategy", "benchmark", "prompt"]
    return frame.groupby(keys, as_index=False)["score"].max()  # RTP: the max over a prompt's samples
