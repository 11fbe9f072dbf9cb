"""A finished tiny run browsed in inspect_ai's own log reader, and judged again without generating anything."""
import json
import shutil
from pathlib import Path

import inspect_ai.log as inspect_log  # the `inspect` extra, also in `test`
import pytest
from conftest import ROOT, run_cli
from fake_servers import (
    FakeServer,
    FaultyJudge,
    completion,
    perspective_answer,
    verdict_requests,
)
from test_intervals import rates_and_means

from valharm.errors import ValharmError

RUN = ["model=tiny", "generation.progress=false", "benchmarks.rtp.num_prompts=3", "benchmarks.rtp.num_samples=2",
       "benchmarks.hexphi.per_category=1", "~benchmark@benchmarks.beavertails", "~benchmark@benchmarks.holisticbiasr",
       "~benchmark@benchmarks.pvq40", "logger=none"]


def openai_judge(server, model: str) -> list[str]:
    return ["judge=openai", f"judge.base_url={server.url}/v1", f"judge.model={model}", "judge.max_concurrency=2",
            "judge.timeout=5"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run: RTP (3 prompts x 2 samples, offline scorer) and HEx-PHI (10 prompts, a fake judge)."""
    base = tmp_path_factory.mktemp("run")
    with FakeServer(FaultyJudge()) as server:
        out = run_cli("valharm.evaluate", *RUN, *openai_judge(server, "fake-judge"), f"paths.cache_dir={base}/cache",
                      f"hydra.run.dir={base}/run", cwd=base,
                      env={"OPENAI_API_KEY": "sk-test", "PYTHONPATH": str(ROOT)})  # this checkout's valharm
    assert out.returncode == 0, out.stderr[-3000:]
    return base / "run"


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]


def test_read_eval_log_gives_one_sample_per_record_with_the_runs_scores(finished):
    results = json.loads((finished / "results.json").read_text())
    listed = inspect_log.list_eval_logs(str(finished))
    assert sorted(Path(info.name).name for info in listed) == ["hexphi.eval", "rtp.eval"]
    for benchmark in ("hexphi", "rtp"):
        log = inspect_log.read_eval_log(str(finished / "inspect" / f"{benchmark}.eval"))
        mine = [r for r in records(finished) if r["benchmark"] == benchmark]
        assert len(log.samples) == len(mine) and log.eval.task == benchmark and log.eval.model == "valharm/tiny"
        assert log.eval.metadata["config_hash"] == results["config_hash"]
        assert log.eval.metadata["code_version"] == results["code_version"]
        by_key = {(s.id, s.epoch): s for s in log.samples}
        for record in mine:
            sample = by_key[(record["id"], record["sample"] + 1)]
            assert sample.input == record["input"] and sample.output.completion == record["text"]
            assert sample.scores[record["scorer"]].value == record["score"]
        metrics = log.results.scores[0].metrics
        for name, value in results["metrics"][benchmark].items():
            if isinstance(value, float):
                assert metrics[name].value == pytest.approx(value)
                assert metrics[name].params == results["intervals"][benchmark]["all"][name]
    for benchmark, metrics in results["metrics"].items():  # every rate and mean in results.json has its interval
        for category, name in rates_and_means(metrics):
            assert {"ci_low", "ci_high", "method"} <= set(results["intervals"][benchmark][category][name])
    rtp = inspect_log.read_eval_log(str(finished / "inspect" / "rtp.eval"))
    assert rtp.eval.config.epochs == 2 and len({s.id for s in rtp.samples}) == 3  # k samples: epochs of one id


def always(content: str):
    return lambda body: (200, {}, completion(content))


def rescore_config(run: Path, server, overrides=()):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("rescore", overrides=[f"run_dir={run}", *openai_judge(server, "strict-judge"), *overrides])


class Tracked:
    """A tracker that records what it is asked."""

    def __init__(self):
        self.calls = []

    def start(self, run_dir, name, group, job_type, config, run_id=None):
        self.calls.append(("start", run_id, job_type))

    def log_results(self, results, records):
        self.calls.append(("log", results, records))

    def finish(self, exit_code=0):
        self.calls.append(("finish",))


@pytest.fixture
def no_generation(monkeypatch) -> list[str]:
    """Every way valharm could generate or load a model, counted."""
    from valharm.generation import requests
    from valharm.generation.local import HFGenerator
    from valharm.models import loading

    calls = []
    for owner, name in [(HFGenerator, "run"), (HFGenerator, "generate"), (HFGenerator, "loglikelihood"),
                        (requests, "run_requests"), (requests, "cached_run"), (loading.LoadedModel, "__init__")]:
        monkeypatch.setattr(owner, name, lambda *a, _n=name, **k: calls.append(_n))
    return calls


def test_rescore_changes_verdicts_without_a_generation_call_and_reports_agreement(finished, tmp_path, no_generation,
                                                                                  monkeypatch):
    import valharm.runs.rescoring as rescoring
    from valharm.runs.rescoring import rescore

    run = shutil.copytree(finished, tmp_path / "run")
    before = json.loads((run / "results.json").read_text())
    tracked = Tracked()  # as if the run had been logged to W&B: its run is continued with the new results
    (run / "results.json").write_text(json.dumps({**before, "wandb": {"id": "run-1", "name": "n", "group": "g"}}))
    monkeypatch.setattr(rescoring, "build_tracker", lambda cfg: tracked)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeServer(always("Reason: strict.\nScore: 5")) as server:
        results = rescore(rescore_config(run, server))
        asked = verdict_requests(server)
    assert no_generation == [] and len(asked) == before["metrics"]["hexphi"]["prompts"] == 10
    assert results["metrics"]["hexphi"]["harmfulness_rate"] == 1.0
    assert results["metrics"]["rtp"] == before["metrics"]["rtp"]  # not judged: untouched
    report = results["rescored"][0]["benchmarks"]["hexphi"]
    old_rate = before["metrics"]["hexphi"]["harmfulness_rate"]
    assert report["agreement"] == pytest.approx(old_rate) and report["compared"] == 10 and "cohen_kappa" in report
    hexphi = [r for r in records(run) if r["benchmark"] == "hexphi"]
    assert all(r["score"] == 5 and len(r["verdicts"]) == 2 for r in hexphi)
    assert {r["verdicts"][report["from"]]["score"] for r in hexphi} != {5}  # the earlier judge's verdicts kept
    assert results["config"]["judge"]["model"] == "strict-judge"
    assert len(list((run / "results.history").glob("*.json"))) == 1
    assert sorted(Path(i.name).name for i in inspect_log.list_eval_logs(str(run))) == ["hexphi.eval", "rtp.eval"]
    assert tracked.calls[0][:2] == ("start", "run-1") and tracked.calls[-1] == ("finish",)
    assert tracked.calls[1][1]["metrics"]["hexphi"]["harmfulness_rate"] == 1.0 and len(tracked.calls[1][2]) == 16
    log = inspect_log.read_eval_log(str(run / "inspect" / "hexphi.eval"))
    assert log.results.scores[0].metrics["harmfulness_rate"].value == 1.0
    assert {s.scores[report["to"]].value for s in log.samples} == {5}


def test_rescore_refuses_outputs_that_do_not_match_the_run(finished, tmp_path, no_generation, monkeypatch):
    from valharm.runs.rescoring import rescore

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    run = shutil.copytree(finished, tmp_path / "run")
    lines = (run / "generations.jsonl").read_text().splitlines()
    edited = [json.loads(line) for line in lines]
    next(r for r in edited if r["benchmark"] == "hexphi")["text"] = "an answer the model never gave"
    (run / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in edited))
    with FakeServer(always("Score: 5")) as server:
        with pytest.raises(ValharmError, match="do not match the run's fingerprint"):
            rescore(rescore_config(run, server))
        assert verdict_requests(server) == []
    with pytest.raises(ValharmError, match="name what to rescore with"):
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            rescore(compose("rescore", overrides=[f"run_dir={finished}"]))


def test_rescore_rtp_with_another_toxicity_scorer(finished, tmp_path, no_generation, monkeypatch):
    """scorer=: RTP's k samples per prompt judged again by Perspective (a fake server), every sample once."""
    from hydra import compose, initialize_config_dir

    from valharm.runs.rescoring import rescore

    run = shutil.copytree(finished, tmp_path / "run")
    before = json.loads((run / "results.json").read_text())
    monkeypatch.setenv("PERSPECTIVE_API_KEY", "test-key")
    with FakeServer(perspective_answer) as server:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("rescore", overrides=[f"run_dir={run}", "scorer=perspective", f"scorer.url={server.url}/v1",
                                                "scorer.requests_per_second=100", "scorer.max_retries=0"])
        results = rescore(cfg)
        asked = len(server.requests)
    rtp = [r for r in records(run) if r["benchmark"] == "rtp"]
    assert no_generation == [] and asked == len([r for r in rtp if r["text"].strip()]) and len(rtp) == 6
    assert all(r["scorer"].startswith("perspective/") and len(r["verdicts"]) == 2 for r in rtp)
    report = results["rescored"][0]["benchmarks"]["rtp"]
    assert report["from"].startswith("profanity_check/") and report["compared"] == 6
    assert results["metrics"]["hexphi"] == before["metrics"]["hexphi"]  # judged by the judge: untouched
    assert results["metrics"]["rtp"]["expected_max_toxicity"] == 0.0  # no "damn" in the tiny model's outputs
