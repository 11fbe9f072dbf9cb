"""Experiment tracking: one W&B run per job (offline by default), or none."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("valharm")


def is_number(value) -> bool:
    """A plain number (bools are not), as W&B summaries and analysis tables take them."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flatten(data: dict, prefix: str = "", sep: str = "/") -> dict:
    """{'a': {'b': 1}} -> {'a/b': 1}; lists are kept as values."""
    flat = {}
    for key, item in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(item, dict):
            flat.update(flatten(item, name, sep))
        else:
            flat[name] = item
    return flat


RUN_FIELDS = ("model", "aligner", "model_type", "prompt_strategy")  # strings in the summary, read back by analysis


def per_benchmark(records: list[dict], cap: int | None) -> dict[str, list[dict]]:
    """Each benchmark's records, the first `cap` of each (None: all)."""
    found: dict[str, list[dict]] = {}
    for r in records:
        rows = found.setdefault(r.get("benchmark"), [])
        if cap is None or len(rows) < cap:
            rows.append(r)
    return found


def table_cell(value):
    """A record's field as a W&B table cell: numbers and text as they are, anything else as JSON text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def interval_rows(results: dict) -> list[list]:
    """(benchmark, category, metric, value, ci_low, ci_high, method, n) of every metric with an interval."""
    rows = []
    for benchmark, categories in (results.get("intervals") or {}).items():
        metrics = (results.get("metrics") or {}).get(benchmark) or {}
        for category, found in categories.items():
            for metric, interval in (found or {}).items():
                if interval:
                    value = metrics.get(metric) if category == "all" else (metrics.get(category) or {}).get(metric)
                    rows.append([benchmark, category, metric, value, interval["ci_low"], interval["ci_high"],
                                 interval["method"], interval["n"]])
    return rows


class NoTracker:
    """logger=none: nothing is tracked (results.json is still written)."""

    run = None

    def start(self, run_dir: Path, name: str, group: str, job_type: str, config: dict, run_id: str | None = None) -> None:
        pass

    def lightning_logger(self, stage: str):
        return False

    def log_results(self, results: dict, records: list[dict]) -> None:
        pass

    def record(self) -> dict | None:
        return None

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbTracker(NoTracker):
    """A W&B run in `mode` (offline needs no login; `online` syncs to the cloud).

    W&B failing — at the start, while training logs, or at the end — never stops the job or loses its
    results.json: the job goes on untracked, with one warning that says how to log it later.
    """

    def __init__(self, project: str = "valharm", mode: str = "offline", entity: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, table_rows: int | None = 5000):
        self.project, self.mode, self.entity, self.group = project, mode, entity, group
        self.tags, self.table_rows = list(tags or []), table_rows
        self.run_dir, self.error = None, None

    def failed(self, when: str, err: Exception) -> None:
        """Go on without W&B, saying once how to get the run into W&B later."""
        if self.error is None:
            where = f"{self.run_dir}/wandb" if self.run_dir else "the run dir's wandb/ folder"
            log.warning(f"W&B failed {when} ({type(err).__name__}: {err}); the job goes on without it and writes "
                        f"results.json as always; log it later with `wandb sync {where}/offline-run-*` (or run the "
                        f"job again with logger=wandb: finished jobs are skipped, so rerun it into a new run dir)")
        self.error = f"{when}: {type(err).__name__}"
        self.run = None

    def start(self, run_dir, name, group, job_type, config, run_id=None):
        """`run_id`: the same for every attempt of one job, so a requeued job continues its W&B run."""
        import wandb

        self.run_dir = run_dir
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            self.run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, dir=str(run_dir),
                                  name=name, group=self.group or group, job_type=job_type, tags=self.tags,
                                  config=config, reinit="finish_previous", id=run_id,
                                  resume="allow" if run_id else None)
        except Exception as err:  # noqa: BLE001 - any W&B failure: the job goes on untracked
            self.failed("at the start", err)

    def lightning_logger(self, stage):
        if self.run is None:
            return False
        from lightning.pytorch.loggers import WandbLogger

        tracker = self

        class GuardedLogger(WandbLogger):
            """Training metrics to W&B, unless W&B fails: then training goes on without it."""

            def log_metrics(self, metrics, step=None):
                if tracker.run is not None:
                    try:
                        super().log_metrics(metrics, step)
                    except Exception as err:  # noqa: BLE001
                        tracker.failed("while training logged", err)

        return GuardedLogger(experiment=self.run, prefix=stage)

    def log_results(self, results, records):
        if self.run is None:
            return
        try:
            self._log_results(results, records)
        except Exception as err:  # noqa: BLE001
            self.failed("while logging the results", err)

    def _log_results(self, results, records):
        import wandb

        counts = {f"scoring/{s['task']}/{key}": n for s in (results.get("scoring") or {}).values()
                  for key, n in s["counts"].items()}
        logged = {**flatten(results.get("metrics", {})), **flatten({"timing": results.get("timing", {})}),
                  **flatten({"alignment_check": results.get("alignment_check") or {}}),
                  **flatten({"generation_cache": results.get("generation_cache", {})}), **counts}
        numbers = {k: v for k, v in logged.items() if is_number(v)}
        self.run.summary.update(numbers)
        self.run.summary.update({f"run/{key}": results.get(key) for key in RUN_FIELDS})  # for valharm.analyze
        self.run.summary.update({"run/run_dir": results.get("run_dir"), "run/finished": (results.get("job") or {}).get(
            "finished"), **flatten({"run/identity": results.get("identity") or {}})})
        intervals = interval_rows(results)
        for benchmark, category, metric, _, low, high, *_ in intervals:  # not read back as metrics by analysis
            self.run.summary.update({f"intervals/{benchmark}/{category}/{metric}/ci_low": low,
                                     f"intervals/{benchmark}/{category}/{metric}/ci_high": high})
        tables = {"intervals": wandb.Table(columns=["benchmark", "category", "metric", "value", "ci_low", "ci_high",
                                                    "method", "n"], data=intervals)} if intervals else {}
        for benchmark, rows in per_benchmark(records, self.table_rows).items():
            columns = list(dict.fromkeys(k for r in rows for k in r))
            tables[f"samples/{benchmark}"] = wandb.Table(columns=columns,
                                                         data=[[table_cell(r.get(c)) for c in columns] for r in rows])
        if tables:
            self.run.log(tables)

    def record(self):
        if self.run is None:
            return {"project": self.project, "mode": self.mode, "error": self.error}
        return {"project": self.project, "mode": self.mode, "group": self.run.group, "id": self.run.id,
                "name": self.run.name, "dir": self.run.dir}

    def finish(self, exit_code=0):
        if self.run is not None:
            try:
                self.run.finish(exit_code=exit_code)
            except Exception as err:  # noqa: BLE001
                self.failed("at the end", err)
            self.run = None
