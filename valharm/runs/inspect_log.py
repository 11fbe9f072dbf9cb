"""An inspect_ai eval log per benchmark of a run (`<run dir>/inspect/<benchmark>.eval`), built with inspect_ai's own log
classes and written by its own writer, so that `inspect view --log-dir <run dir>` browses every sample.

Each log is one task (the benchmark): its spec holds the run's model, adapter, aligner, prompt strategy, resolved
config, config hash and code version; its results hold valharm's metrics (overall and `<category>/<metric>`) with
their intervals in each metric's params; its samples are the run's per-sample records — one sample per record, the
k samples of an RTP prompt as the epochs of one sample id — with the input as the model saw it, the output, and a
score holding the parsed verdict, the scorer's input and its raw reply (records that could not be scored carry the
error instead of a score).

inspect_ai is optional (`pip install valharm[inspect]`); `inspect_log=auto` writes the logs when it is installed and
says once that it is not, `true` requires it, `false` writes none.
"""
from __future__ import annotations

import datetime
import logging
from pathlib import Path

from valharm.errors import ValharmError
from valharm.runs.tracking import is_number

log = logging.getLogger("valharm")
FOLDER = "inspect"
SETTINGS = ("auto", "true", "false")
HEAVY = ("input", "text", "scorer_input", "raw_reply")  # shown as the sample's input, output and score


def iso(seconds: float | None) -> str:
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc) if seconds else \
        datetime.datetime.now(datetime.timezone.utc)
    return stamp.isoformat()


def eval_metrics(metrics: dict, intervals: dict) -> dict:
    """Every number of one benchmark's metrics as an inspect EvalMetric (`<category>/<metric>` below the top
    level), its interval (if any) in its params."""
    from inspect_ai.log import EvalMetric

    found = {}
    for key, value in metrics.items():
        pairs = [(f"{key}/{k}", k, key, v) for k, v in value.items()] if isinstance(value, dict) else \
            [(key, key, "all", value)]
        for name, metric, category, number in pairs:
            if is_number(number):
                interval = (intervals.get(category) or {}).get(metric)
                found[name] = EvalMetric(name=name, value=float(number), params=dict(interval or {}))
    return found


def sample_of(record: dict, model: str):
    """One record as an inspect EvalSample."""
    from inspect_ai.log import EvalError, EvalSample
    from inspect_ai.model import ChatMessageAssistant, ChatMessageUser, ModelOutput
    from inspect_ai.scorer import Score

    text = record.get("text") or ""
    status = record.get("status", "ok")
    score = record["rating"] if record["benchmark"] == "pvq40" else record.get("score")
    scores = {record.get("scorer") or record["benchmark"]: Score(
        value=score, answer=text, explanation=record.get("raw_reply") or record.get("reason"),
        metadata={"scorer_input": record.get("scorer_input"), "status": status})} if score is not None else None
    error = None if score is not None else EvalError(
        message=f"{status}: {record.get('error') or 'no score'}", traceback="", traceback_ansi="")
    return EvalSample(id=record["id"], epoch=int(record.get("sample", 0)) + 1, input=record["input"], target="",
                      messages=[ChatMessageUser(content=record["input"]), ChatMessageAssistant(content=text)],
                      output=ModelOutput.from_content(model, text), scores=scores, error=error,
                      metadata={k: v for k, v in record.items() if k not in HEAVY})


def benchmark_log(results: dict, benchmark: str, records: list[dict]):
    """The EvalLog of one benchmark of a run."""
    from inspect_ai.log import (
        EvalConfig,
        EvalDataset,
        EvalLog,
        EvalResults,
        EvalScore,
        EvalSpec,
        EvalStats,
    )

    model = f"valharm/{results['model']}"
    ids = list(dict.fromkeys(r["id"] for r in records))
    epochs = max(int(r.get("sample", 0)) + 1 for r in records)
    info = (results.get("benchmarks") or {}).get(benchmark) or {}
    scored = sum(r.get("status", "ok") == "ok" for r in records)
    spec = EvalSpec(
        created=iso((results.get("job") or {}).get("started")), task=benchmark, task_id=f"{benchmark}-{results.get('config_hash', '')[:12]}",
        run_id=str(results.get("config_hash", ""))[:22], model=model,
        model_args={k: results.get(k) for k in ("adapter_dir", "aligner", "model_type", "prompt_strategy",
                                                 "served_model")},
        task_args=((results.get("config") or {}).get("benchmarks") or {}).get(benchmark) or {},
        dataset=EvalDataset(name=benchmark, location=str(info.get("prompts") or info.get("source")
                                                         or info.get("questionnaire") or ""),
                            samples=len(ids), sample_ids=ids),
        config=EvalConfig(epochs=epochs), packages=results.get("versions") or {},
        metadata={"code_version": results.get("code_version"), "config_hash": results.get("config_hash"),
                  "value": results.get("value"), "scorer": info.get("scorer"), "run_dir": results.get("run_dir"),
                  "config": results.get("config")})
    score = EvalScore(name=info.get("scorer") or benchmark, scorer=info.get("scorer") or benchmark,
                      scored_samples=scored, unscored_samples=len(records) - scored,
                      metrics=eval_metrics(results["metrics"][benchmark],
                                           (results.get("intervals") or {}).get(benchmark) or {}))
    job = results.get("job") or {}
    return EvalLog(status="success", eval=spec, samples=[sample_of(r, model) for r in records],
                   results=EvalResults(total_samples=len(records), completed_samples=scored, scores=[score]),
                   stats=EvalStats(started_at=iso(job.get("started")), completed_at=iso(job.get("finished"))))


def write_inspect_logs(results: dict, records: list[dict], run_dir: Path, setting: str = "auto") -> dict:
    """Write one log per benchmark with records; {benchmark: path}, or why none was written."""
    setting = str(setting).lower()
    if setting not in SETTINGS:
        raise ValharmError(f"inspect_log={setting}; use one of {', '.join(SETTINGS)}")
    if setting == "false":
        return {"written": False, "why": "inspect_log=false"}
    try:
        from inspect_ai.log import write_eval_log
    except ImportError:
        if setting == "true":
            raise ValharmError("inspect_log=true but inspect_ai is not installed: pip install 'valharm[inspect]' (or "
                               "inspect_log=auto to go on without the log)") from None
        log.warning("inspect_ai is not installed, so no inspect log is written: pip install 'valharm[inspect]' to "
                    "browse runs with `inspect view`")
        return {"written": False, "why": "inspect_ai not installed"}
    folder = run_dir / FOLDER
    folder.mkdir(exist_ok=True)
    files = {}
    for benchmark in results.get("metrics") or {}:
        chosen = [r for r in records if r.get("benchmark") == benchmark]
        if chosen:
            path = folder / f"{benchmark}.eval"
            write_eval_log(benchmark_log(results, benchmark, chosen), str(path))
            files[benchmark] = str(path)
    return {"written": True, "files": files}
