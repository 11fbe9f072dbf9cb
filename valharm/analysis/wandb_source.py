"""Runs from a W&B project (`source=wandb`): the fields valharm's tracker logs, as results dicts.

A run's config holds the value scores (`value/<Name>`); its summary holds every metric as
`<benchmark>/<metric>` or `<benchmark>/<category>/<metric>`, the run's model, aligner, model type and
prompt strategy (`run/<field>`), its run dir, end time and per-benchmark identity (instrument, duplicate key).
Only the newest run of each run dir counts. Per-prompt scores are not in W&B, so the model-type tests need
local runs.
"""
from __future__ import annotations

from valharm.errors import ValharmError
from valharm.runs.tracking import is_number
from valharm.values.distributions import VALUES

BENCHMARKS = ("pvq40", "rtp", "holisticbiasr", "hexphi", "beavertails")


def metrics_from_summary(summary: dict) -> dict:
    """The nested metrics of results.json from a flat W&B summary."""
    metrics: dict = {}
    for key, value in summary.items():
        parts = key.split("/")
        if parts[0] not in BENCHMARKS or not is_number(value):
            continue
        target = metrics.setdefault(parts[0], {})
        if len(parts) == 2:
            target[parts[1]] = value
        elif len(parts) == 3:
            target.setdefault(parts[1], {})[parts[2]] = value
    return metrics


def intervals_from_summary(summary: dict) -> dict:
    """intervals/<benchmark>/<category>/<metric>/ci_low|ci_high back to results.json's `intervals`."""
    found: dict = {}
    for key, value in summary.items():
        parts = key.split("/")
        if len(parts) == 5 and parts[0] == "intervals" and parts[4] in ("ci_low", "ci_high") and is_number(value):
            found.setdefault(parts[1], {}).setdefault(parts[2], {}).setdefault(parts[3], {})[parts[4]] = value
    return found


def identity_from_summary(summary: dict) -> dict:
    """run/identity/<benchmark>/<field> back to {benchmark: {field: ...}}."""
    found: dict = {}
    for key, value in summary.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[:2] == ["run", "identity"]:
            found.setdefault(parts[2], {})[parts[3]] = value
    return found


def results_from_run(run) -> dict:
    config, summary = dict(run.config), dict(run.summary)
    missing = [v for v in VALUES if f"value/{v}" not in config]
    if missing:
        raise ValharmError(f"W&B run {run.id} has no value scores ({', '.join(missing)}) in its config: not a valharm run")
    return {"value": {"name": config.get("value/name"), "scores": {v: config[f"value/{v}"] for v in VALUES}},
            **{field: summary.get(f"run/{field}") for field in ("model", "aligner", "model_type", "prompt_strategy")},
            "metrics": metrics_from_summary(summary), "intervals": intervals_from_summary(summary),
            "alignment_check": {"weighted_shift": summary.get("alignment_check/weighted_shift")},
            "identity": identity_from_summary(summary), "run_dir": summary.get("run/run_dir"),
            "job": {"finished": summary.get("run/finished")}}


def latest_per_job(found: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The newest finished W&B run of each job (run dir): a job run again after a config change leaves its
    earlier run in the project, which must not be counted."""
    newest: dict = {}
    for name, results in found:
        job = results.get("run_dir") or name
        if job not in newest or (results["job"].get("finished") or 0) > (newest[job][1]["job"].get("finished") or 0):
            newest[job] = (name, results)
    return list(newest.values())


def wandb_runs(project: str, entity: str | None = None, group: str | None = None, api=None) -> list[tuple[str, dict]]:
    """(name, results) of every finished run of the project (and group)."""
    if api is None:
        import wandb

        api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    try:
        runs = list(api.runs(path, filters={"group": group} if group else None))
    except Exception as err:  # noqa: BLE001 - network, auth, unknown project: one clear message
        raise ValharmError(f"cannot list W&B runs of {path} ({type(err).__name__}: {err}); log in (wandb login) "
                           f"or check wandb.entity / wandb.project") from None
    found = [(f"wandb:{path}/{run.id}", results_from_run(run)) for run in runs if getattr(run, "state", "finished")
             == "finished"]
    if not found:
        raise ValharmError(f"no finished runs in W&B project {path}" + (f", group {group}" if group else ""))
    return latest_per_job(found)
