"""Runs on disk to one tidy table: a row per run x benchmark x category x metric.

Overall numbers have category "all"; per-category numbers (HEx-PHI, BeaverTails categories,
HolisticBiasR axes) have the category's name. Missing categories and non-numeric fields give no row.
A metric with an interval in results.json (`intervals`) carries it as `ci_low`, `ci_high`, `ci_method`.
Each row carries what identifies its run: model, aligner, model type, prompt strategy, the scorers
that produced its numbers, the run's ten target value scores (`value/<Name>`), its distribution's `anchor`
and `rank` in the study's design (see `anchor_of`) and, for VIM runs, the alignment check's weighted shift
(`alignment_shift`); and per benchmark its `instrument` (base model, the scorer or judge that produced the
numbers, shipped sample or real data: numbers of different instruments are not comparable) and its
`duplicate_key` (same generating model, prompt strategy, benchmark settings and scorer: two runs with one key
are one measurement counted twice).
"""
from __future__ import annotations

import glob
import json
import re
from pathlib import Path

import pandas as pd

from valharm.errors import ValharmError
from valharm.runs.records import identities
from valharm.runs.tracking import is_number
from valharm.values.distributions import VALUES

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


def anchor_of(value: dict) -> tuple[str, int]:
    """(anchor, rank) of a run's value distribution: its cluster in the study's design, where each of 14 anchors is
    an extreme distribution (rank 0) with its k nearest ESS profiles (ranks 1..k).

    Read from the `anchor` and `rank` that results.json records for extreme and ESS distributions; a record
    without an anchor field (W&B logs only the name) from its name, `<anchor>_ess<rank>` or an extreme's own;
    a distribution recorded with no anchor (custom) is clustered by its highest-scored value(s), e.g. `power` or
    `conformity+security+tradition`.
    """
    name = value.get("name") or ""
    if value.get("anchor"):
        return str(value["anchor"]), int(value.get("rank") or 0)
    if "anchor" not in value and name:
        match = re.fullmatch(r"(.+)_ess(\d+)", name)
        return (match[1], int(match[2])) if match else (name, 0)
    top = max(value["scores"].values())
    return "+".join(v.lower() for v in VALUES if value["scores"][v] == top), 0


def run_row(results: dict, run: str) -> dict:
    scores = results["value"]["scores"]
    check = results.get("alignment_check") or {}
    anchor, rank = anchor_of(results["value"])
    return {"run": run, "model": results.get("model"), "aligner": results.get("aligner"),
            "model_type": results.get("model_type", results.get("aligner")),
            "prompt_strategy": results.get("prompt_strategy"), "value_name": results["value"].get("name"),
            "anchor": anchor, "rank": rank,
            "scorers": ", ".join(sorted(results.get("scoring") or {})),
            "alignment_shift": check.get("weighted_shift"),  # VIM runs: did the alignment take (see README)
            **{f"value/{name}": float(scores[name]) for name in VALUES}}


def interval_columns(interval: dict | None) -> dict:
    """A metric's interval from results.json `intervals` as tidy columns (None where the run has none)."""
    interval = interval or {}
    return {"ci_low": interval.get("ci_low"), "ci_high": interval.get("ci_high"), "ci_method": interval.get("method")}


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
        identity = results.get("identity") or identities(results)
        finished = (results.get("job") or {}).get("finished") or 0.0
        for benchmark, metrics in results.get("metrics", {}).items():
            same = identity.get(benchmark) or {}
            where = {"instrument": same.get("instrument") or results.get("model"),
                     "duplicate_key": same.get("duplicate_key") or f"{name}/{benchmark}", "finished": finished}
            bounds = (results.get("intervals") or {}).get(benchmark) or {}
            rows += [{**run, "benchmark": benchmark, "category": category, "metric": metric, **where,
                      "value": float(metrics[metric] if category == OVERALL else metrics[category][metric]),
                      **interval_columns(((bounds.get(category) or {}).get(metric)))}
                     for category, metric in numbers(metrics)]
    return pd.DataFrame(rows)


def deduplicate(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table with one run per duplicate key and benchmark, the dropped (run, benchmark) pairs and the run kept):
    the newest finished run is kept."""
    if table.empty:
        return table, pd.DataFrame(columns=["run", "benchmark", "kept"])
    runs = table[["run", "benchmark", "duplicate_key", "finished"]].drop_duplicates(["run", "benchmark"])
    runs = runs.sort_values(["finished", "run"], ascending=[False, False])
    kept = runs.drop_duplicates("duplicate_key")
    newest = dict(zip(kept.duplicate_key, kept.run))
    dropped = runs.drop(kept.index).assign(kept=lambda f: f.duplicate_key.map(newest))[["run", "benchmark", "kept"]]
    keep = set(zip(kept.run, kept.benchmark))
    return (table[[pair in keep for pair in zip(table.run, table.benchmark)]].reset_index(drop=True),
            dropped.sort_values(["run", "benchmark"]).reset_index(drop=True))


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
    """Per-prompt risk scores of the (run, benchmark) pairs of a tidy table (from generations.jsonl in each run
    dir): a row per run x benchmark x prompt, with its instrument; RTP prompts score the highest toxicity of their
    samples."""
    instrument = dict(zip(zip(table.run, table.benchmark), table.instrument))
    rows = []
    for run in table[["run", "model_type", "prompt_strategy"]].drop_duplicates().to_dict("records"):
        generations = Path(run["run"]) / "generations.jsonl"
        if not generations.is_file():
            continue
        for line in generations.read_text().splitlines():
            record = json.loads(line)
            score = prompt_score(record)
            pair = (run["run"], record.get("benchmark"))
            if score is not None and pair in instrument:
                rows.append({**run, "benchmark": pair[1], "instrument": instrument[pair], "prompt": record["id"],
                             "score": float(score)})
    keys = ["run", "model_type", "prompt_strategy", "benchmark", "instrument", "prompt"]
    frame = pd.DataFrame(rows, columns=[*keys, "score"])
    return frame.groupby(keys, as_index=False)["score"].max()  # RTP: the max over a prompt's samples
