"""Judge a finished run's stored outputs again (`python -m valharm.rescore run_dir=... judge=...`): nothing is
generated and no model is loaded; the new scorer's cache is used.

Each benchmark scored in the role given (`judge=` for HEx-PHI and BeaverTails, `scorer=` for RTP, `regard=` for
HolisticBiasR) is rebuilt from the run's stored config and evaluated on the outputs its records hold. Before that the
stored outputs must match the run: the records' digest (id, sample, input, output) equals the one results.json took
when the run finished, the prompts equal those the stored config loads now, and the data files the config names
have the content they had. Otherwise nothing is scored and one error says why.

Then: the run's metrics, intervals, records (each keeping every earlier verdict under its scorer's id in `verdicts`),
inspect logs and W&B run are updated; results.json keeps the earlier results in results.history/ and lists every
rescoring in `rescored` with the agreement of the two scorers and Cohen's kappa (toxicity: toxic or not at the
benchmark's threshold).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import cohen_kappa_score

from valharm.benchmarks import SCORER_ROLES
from valharm.errors import ValharmError
from valharm.generation.requests import GenerationRequest
from valharm.runs.components import build_tracker
from valharm.runs.inspect_log import write_inspect_logs
from valharm.runs.records import (
    GENERATIONS,
    failure_summary,
    identities,
    outputs_digests,
    scorer_report,
)
from valharm.runs.rundir import (
    RESULTS,
    archive_results,
    data_digests,
    failed_items,
    read_previous,
    write_json_atomic,
)
from valharm.runs.tracking import flatten

log = logging.getLogger("valharm")
GROUPS = {group: role for role, group in SCORER_ROLES.items()}  # judge -> judge, scorer -> toxicity, regard -> regard


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """(results, records) of a finished run, or one error saying what is missing."""
    if not (run_dir / RESULTS).is_file():
        raise ValharmError(f"no {RESULTS} in {run_dir}: rescore a finished run dir (python -m valharm.evaluate writes "
                           f"one)")
    results = read_previous(run_dir / RESULTS)
    path = run_dir / GENERATIONS
    if not path.is_file() or "records" not in results:
        raise ValharmError(f"{run_dir} holds no per-sample records with their outputs' digest (a run of an earlier "
                           f"valharm?); run the evaluation again (its generations are cached) and rescore that")
    return results, [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_fingerprint(run_dir: Path, results: dict, records: list[dict], benchmarks: list[str]) -> None:
    """The stored outputs and the data they were generated from are those the run finished with."""
    found, stored = outputs_digests(records), results["records"]["outputs"]
    changed = [b for b in benchmarks if found.get(b) != stored.get(b)]
    if changed:
        raise ValharmError(f"the stored outputs of {', '.join(changed)} in {run_dir / GENERATIONS} do not "
                           f"match the run's fingerprint (results.json records.outputs): the file was edited or comes "
                           f"from another run; nothing was rescored")
    data = data_digests(results["config"])
    moved = sorted(k for k, v in (results.get("data_digests") or {}).items() if data.get(k) != v)
    if moved:
        raise ValharmError(f"the data the run was generated from changed since ({', '.join(moved)}); its stored outputs "
                           f"answer other prompts: run the evaluation again instead")


def stored_outputs(benchmark, name: str, records: list[dict]) -> tuple[list, list]:
    """(requests, outputs) of one benchmark rebuilt from its records, in its prompts' order; refuses records that
    are not the prompts the stored config loads."""
    by_id: dict[str, list[dict]] = {}
    for r in records:
        by_id.setdefault(r["id"], []).append(r)
    ids = [p.id for p in benchmark.prompts] if hasattr(benchmark.prompts[0], "id") else \
        [f"{name}/{i}" for i in range(len(benchmark.prompts))]
    texts = [getattr(p, "text", p) for p in benchmark.prompts]
    stored = [by_id.get(i, [{}])[0].get("prompt") for i in ids]
    if list(by_id) != ids or stored != texts:
        raise ValharmError(f"{name}: the stored records are not the prompts the run's config loads now (ids or texts "
                           f"differ); its outputs cannot be judged as this benchmark: run the evaluation again")
    rows = [sorted(by_id[i], key=lambda r: r.get("sample", 0)) for i in ids]
    return [GenerationRequest(i, row[0]["input"]) for i, row in zip(ids, rows)], [[r["text"] for r in row]
                                                                               for row in rows]


def label(record: dict, threshold: float | None) -> str | None:
    """A verdict as a label to compare scorers by (toxicity: toxic or not at the threshold); None if not ok."""
    if record.get("status") != "ok" or record.get("score") is None:
        return None
    if isinstance(record["score"], float) and threshold is not None:
        return "toxic" if record["score"] >= threshold else "non-toxic"
    return str(record["score"])


def agreement(old: list[dict], new: list[dict], threshold: float | None) -> dict:
    """Agreement and Cohen's kappa of two scorers over the records both scored."""
    pairs = [(a, b) for a, b in ((label(o, threshold), label(n, threshold)) for o, n in zip(old, new))
             if a is not None and b is not None]
    if not pairs:
        return {"compared": 0, "agreement": None, "cohen_kappa": None}
    first, second = zip(*pairs)
    same = sum(a == b for a, b in pairs) / len(pairs)
    kappa = None if len(set(first) | set(second)) == 1 else float(cohen_kappa_score(first, second))  # 1 label: 0/0
    return {"compared": len(pairs), "agreement": same, "cohen_kappa": kappa,
            "changed": sum(a != b for a, b in pairs)}


def verdict_of(record: dict) -> dict:
    return {k: record.get(k) for k in ("score", "status", "error", "raw_reply", "reason") if k in record}


def keep_verdicts(old: list[dict], new: list[dict]) -> list[dict]:
    """The new records, each with every verdict its item has had, under each scorer's id (`verdicts`)."""
    kept = []
    for before, after in zip(old, new):
        verdicts = dict(before.get("verdicts") or {})
        verdicts[before["scorer"]] = verdicts.get(before["scorer"]) or verdict_of(before)
        verdicts[after["scorer"]] = verdict_of(after)
        kept.append({**after, "verdicts": verdicts})
    return kept


def new_scorers(cfg: DictConfig, stored: DictConfig) -> dict:
    """role -> the scorer built from each group given (`judge=`, `scorer=`, `regard=`), its settings resolved
    against the run's stored config (its cache_dir, precision); the stored config's group replaced."""
    chosen = {}
    for group, role in GROUPS.items():
        if cfg.get(group) is not None:
            stored[group] = OmegaConf.to_container(cfg[group], resolve=False)
            chosen[role] = instantiate(stored[group])
    if not chosen:
        raise ValharmError("name what to rescore with: judge=... (hexphi, beavertails), scorer=... (rtp) or "
                           "regard=... (holisticbiasr)")
    return chosen


def rescore(cfg: DictConfig) -> dict:
    """Judge a run's stored outputs with the scorers given; returns the updated results."""
    run_dir = Path(cfg.run_dir).resolve()
    results, records = read_run(run_dir)
    stored = OmegaConf.create(results["config"])
    scorers = new_scorers(cfg, stored)
    built = {name: instantiate(stored.benchmarks[name]) for name in results["metrics"]
             if (stored.benchmarks.get(name) or {}).get("_target_")}
    chosen = {name: b for name, b in built.items() if b.scorer_role in scorers}
    if not chosen:
        raise ValharmError(f"no benchmark of {run_dir} is scored by {', '.join(scorers)}; nothing to rescore")
    check_fingerprint(run_dir, results, records, list(chosen))
    report, updated = {}, list(records)
    for name, benchmark in chosen.items():
        old = [r for r in records if r.get("benchmark") == name]
        requests, outputs = stored_outputs(benchmark, name, old)
        result = benchmark.evaluate(requests, outputs, None, scorers)
        new = keep_verdicts(old, result.records)
        report[name] = {"from": old[0]["scorer"], "to": new[0]["scorer"],
                        **agreement(old, new, getattr(benchmark, "threshold", None))}
        results["metrics"][name], results["intervals"][name] = result.metrics, result.intervals
        results["benchmarks"][name] = result.info
        replaced = iter(new)
        updated = [next(replaced) if r.get("benchmark") == name else r for r in updated]
        log.info(f"{name}: {report[name]['from']} -> {report[name]['to']}: agreement "
                 f"{report[name]['agreement']}, Cohen's kappa {report[name]['cohen_kappa']} over "
                 f"{report[name]['compared']} records")
    record_rescoring(results, stored, scorers, report)
    write_rescored(run_dir, results, updated, cfg.get("inspect_log", "auto"), stored)
    unscored = failed_items(results)
    if unscored:  # written like any run's; a failing service leaves items to score again
        raise ValharmError(f"{unscored} item(s) could not be scored ({failure_summary(results)}); every verdict given "
                           f"is kept and cached: run the same rescore again to score the rest")
    return results


def record_rescoring(results: dict, stored: DictConfig, scorers: dict, report: dict) -> None:
    """The results record of the rescored run: the new scorers and config, and the rescoring's report."""
    roles = set(scorers)
    previous = {sid: s for sid, s in (results.get("scoring") or {}).items() if s.get("role") in roles}
    results["scoring"] = {**{sid: s for sid, s in (results.get("scoring") or {}).items() if sid not in previous},
                          **scorer_report(scorers)}
    changed = {group: OmegaConf.to_container(stored[group], resolve=True) for group, role in GROUPS.items()
               if role in roles}
    results["rescored"] = [*(results.get("rescored") or []), {
        "time": time.time(), "benchmarks": report, "previous_scoring": previous,
        "previous_config": {group: results["config"].get(group) for group in changed}}]
    results["config"] |= changed
    results["identity"] = identities(results)


def write_rescored(run_dir: Path, results: dict, records: list[dict], inspect_setting: str, stored: DictConfig) -> None:
    """Records, results.json (the earlier one archived), inspect logs and the run's W&B run, updated."""
    staging = run_dir / f"{GENERATIONS}.rescoring"
    with staging.open("w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(staging, run_dir / GENERATIONS)
    results["inspect_log"] = write_inspect_logs(results, records, run_dir, inspect_setting)
    wandb = results.get("wandb") or {}
    if wandb.get("id"):
        tracker = build_tracker(stored.get("logger"))
        tracker.start(run_dir, wandb.get("name") or run_dir.name, wandb.get("group") or run_dir.name, "rescore",
                      flatten(results["config"]), run_id=wandb["id"])
        tracker.log_results(results, records)
        tracker.finish(0)
    archive_results(run_dir)
    write_json_atomic(run_dir / RESULTS, results)
