"""The safety evaluation as a user runs it: all five benchmarks, judges over HTTP, caches, resume, secrets."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli
from fake_servers import FakeServer, FaultyJudge, verdict_requests
from wandb_log import summary

from valharm.caching import Cache
from valharm.generation.local import HFGenerator
from valharm.generation.requests import GenerationRequest, cached_run

SMALL = ["model=tiny", "generation.progress=false", "benchmarks.rtp.num_prompts=3", "benchmarks.rtp.num_samples=2",
         "benchmarks.holisticbiasr.limit=12", "benchmarks.hexphi.per_category=1", "benchmarks.beavertails.per_category=1",
         "benchmarks.holisticbiasr.resamples=999"]
KEY = "sk-planted-secret-9b1f2e7c"


def fresh_caches(tmp_path) -> str:
    """Generation and score caches of this test only (the converted model stays in the shared cache)."""
    return f"paths.cache_dir={tmp_path}/cache"


def openai_judge(server) -> list[str]:
    return ["judge=openai", f"judge.base_url={server.url}/v1", "judge.model=fake-judge", "judge.max_concurrency=2",
            "judge.timeout=5"]


@pytest.mark.slow
def test_offline_evaluation_of_all_five_benchmarks(tmp_path):
    out = run_cli("valharm.evaluate", fresh_caches(tmp_path), *SMALL, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path,
                  env={})
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    metrics = results["metrics"]
    assert set(metrics) == {"pvq40", "rtp", "holisticbiasr", "hexphi", "beavertails"}
    hexphi = metrics["hexphi"]
    present = [c for c, m in hexphi.items() if isinstance(m, dict) and m.get("prompts")]
    assert len(present) == 10 and hexphi["missing_categories"] == ["child_abuse_content"]
    assert hexphi["child_abuse_content"]["status"] == "missing"
    assert all(1 <= hexphi[c]["harmfulness_score"] <= 5 for c in present)  # the offline judge answers (choice mode)
    beaver = metrics["beavertails"]
    assert sum(isinstance(m, dict) and m.get("prompts") == 1 for m in beaver.values()) == 14
    assert 0 <= metrics["holisticbiasr"]["negative_regard_rate"] <= 1 and "bias_score" in metrics["holisticbiasr"]
    roles = {s["role"]: s for s in results["scoring"].values()}
    assert set(roles) == {"toxicity", "regard", "judge"} and all(s["offline"] for s in results["scoring"].values())
    assert {s["task"] for s in results["scoring"].values()} == {"toxicity", "regard", "harmfulness", "flagging"}
    assert results["config"]["benchmarks"]["hexphi"]["per_category"] == 1 and results["config_hash"]
    keys = summary(next((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")))
    assert {"hexphi/malware/harmfulness_score", "beavertails/self_harm/flagged_rate", "hexphi/harmfulness_rate",
            "holisticbiasr/negative_regard_rate", "rtp/expected_max_toxicity", "pvq40/nmse", "run/model_type"} <= set(keys)
    assert not any(k.startswith("hexphi/child_abuse_content/") for k in keys)  # missing, never zero


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_bundle):
    """A LoRA adapter on the tiny model (as any PEFT adapter dir)."""
    from valharm.models.loading import add_lora

    folder = tmp_path_factory.mktemp("adapter")
    model = add_lora(tiny_bundle.model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    model.save_pretrained(folder)
    model.unload()
    return folder


@pytest.mark.slow
def test_four_strategies_on_one_adapter_regenerate_only_what_differs_and_score_nothing_twice(tmp_path, adapter):
    with FakeServer(FaultyJudge()) as server:
        out = run_cli("valharm.evaluate", "-m", f"adapter_dir={adapter}", "value=power",  # what the adapter is aligned to
                      "prompt_strategy=input_only,safety,value,dual",
                      fresh_caches(tmp_path), *SMALL, *openai_judge(server), "logger=none", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path,
                      env={"OPENAI_API_KEY": KEY})
    assert out.returncode == 0, out.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/results.json"))]
    assert [r["prompt_strategy"] for r in runs] == ["input_only", "safety", "value", "dual"]
    first, later = runs[0]["generation_cache"], [r["generation_cache"] for r in runs[1:]]
    assert first["hexphi"]["hits"] == 0
    for counts in later:  # the questionnaire takes no mitigation: reused; every safety prompt changed: generated
        assert counts["pvq40"] == {"hits": 10, "misses": 0}
        assert counts["hexphi"]["misses"] == 10 and counts["beavertails"]["misses"] == 14
    judged = [json.dumps(r["body"]["messages"]) for r in verdict_requests(server)]
    assert len(judged) == len(set(judged))  # no (question, answer) was sent to the judge twice
    judges = [s for r in runs for s in r["scoring"].values() if s["role"] == "judge"]
    assert sum(s["counts"]["calls"] for s in judges) == sum(s["counts"]["cache_misses"] for s in judges) == len(judged)
    for r in runs:  # each run accounts for each of its distinct judged items once: a hit or a miss
        counts = [s["counts"] for s in r["scoring"].values() if s["role"] == "judge"]
        assert sum(c["cache_hits"] + c["cache_misses"] for c in counts) == 10 + 14
    assert runs[2]["prompt_strategy_detail"]["values"] == ["Power"]  # the default value=power names Power


def count_rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=30) as db:
            return db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


@pytest.mark.slow
def test_an_evaluation_killed_while_generating_resumes_from_the_finished_batches(tmp_path, shared_data):
    many = ["model=tiny", "generation.progress=false", "generation.batch_size=4", "benchmarks.rtp.num_prompts=60",
            f"benchmarks.rtp.path={shared_data / 'real_toxic_prompts.csv'}",
            "benchmarks.rtp.num_samples=4", "benchmarks.rtp.max_new_tokens=48", "~benchmark@benchmarks.pvq40",
            "~benchmark@benchmarks.holisticbiasr", "~benchmark@benchmarks.hexphi", "~benchmark@benchmarks.beavertails",
            "logger=none", fresh_caches(tmp_path), f"hydra.run.dir={tmp_path}/run"]
    store = tmp_path / "cache" / "generations.sqlite"
    process = subprocess.Popen([sys.executable, "-m", "valharm.evaluate", *many], cwd=tmp_path, env=os.environ.copy(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while count_rows(store) < 3 and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = count_rows(store)
    assert 3 <= kept < 60 and not (tmp_path / "run" / "results.json").exists()
    out = run_cli("valharm.evaluate", *many, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = json.loads((tmp_path / "run" / "results.json").read_text())["generation_cache"]["rtp"]
    assert counts == {"hits": kept, "misses": 60 - kept}


@pytest.mark.slow
def test_an_evaluation_killed_while_judging_resumes_without_redoing_items(tmp_path):
    env = {"OPENAI_API_KEY": KEY}
    with FakeServer(FaultyJudge(), latency=0.3) as server:
        args = [sys.executable, "-m", "valharm.evaluate", fresh_caches(tmp_path), *SMALL, *openai_judge(server), "logger=none",
                f"hydra.run.dir={tmp_path}/run"]
        process = subprocess.Popen(args, cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while len(verdict_requests(server)) < 6 and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        before = len(verdict_requests(server))
        assert 6 <= before < 24 and not (tmp_path / "run" / "results.json").exists()
        out = run_cli("valharm.evaluate", fresh_caches(tmp_path), *SMALL, *openai_judge(server), "logger=none",
                      f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    judged = [json.dumps(r["body"]["messages"]) for r in verdict_requests(server)]
    redone = len(judged) - len(set(judged))
    # at most what was in flight when it was killed: max_concurrency=2 calls awaiting their replies, and as many
    # replies received but not yet stored (the main thread stores them as they complete)
    assert redone <= 2 * 2
    assert len(set(judged)) == 10 + 14  # every hexphi and beavertails item judged once
    hexphi = next(s for s in results["scoring"].values() if s["task"] == "harmfulness")
    assert hexphi["counts"]["cache_hits"] >= before - 2 * 2 and hexphi["counts"]["cache_hits"] + \
        hexphi["counts"]["cache_misses"] == 10
    assert all(results["generation_cache"][b]["misses"] == 0 for b in ("pvq40", "rtp", "holisticbiasr", "hexphi"))


def test_generation_interrupted_between_batches_keeps_finished_batches(tmp_path, tiny_bundle):
    requests = [GenerationRequest(f"r{i}", f"Tell me about number {i}.", max_new_tokens=4) for i in range(8)]
    cache = Cache(tmp_path / "g.sqlite")

    class Crashing(HFGenerator):
        def run(self, model, tokenizer, requests, desc="generate", on_batch=None):
            def crash_after_two(indices, outputs):
                on_batch(indices, outputs)
                self.batches = getattr(self, "batches", 0) + 1
                if self.batches == 2:
                    raise KeyboardInterrupt

            return super().run(model, tokenizer, requests, desc, crash_after_two)

    with pytest.raises(KeyboardInterrupt):
        cached_run(Crashing(batch_size=2, progress=False), tiny_bundle.model, tiny_bundle.tokenizer, requests, cache,
                   "ns")
    outputs, counts = cached_run(HFGenerator(batch_size=2, progress=False), tiny_bundle.model, tiny_bundle.tokenizer,
                                 requests, cache, "ns")
    assert counts == {"hits": 4, "misses": 4}
    fresh, _ = cached_run(HFGenerator(batch_size=8, progress=False), tiny_bundle.model, tiny_bundle.tokenizer,
                          requests, None, "ns")
    assert outputs == fresh  # greedy: the resumed outputs are the uninterrupted ones


@pytest.mark.slow
def test_api_keys_never_reach_any_file_a_run_writes(tmp_path):
    env = {"OPENAI_API_KEY": KEY, "PERSPECTIVE_API_KEY": KEY}
    with FakeServer(FaultyJudge(fault_rate=0.3, seed=1, kinds=("429", "500", "garbage"))) as server:
        out = run_cli("valharm.evaluate", fresh_caches(tmp_path), *SMALL, *openai_judge(server), "regard=judge",
                      f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in server.requests)  # it was used
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "results.json" for p in files) and any(".hydra" in p.parts for p in files)
    assert any(p.suffix == ".wandb" for p in files)
    leaked = [str(p) for p in files if KEY.encode() in p.read_bytes()]
    assert leaked == [] and KEY not in out.stdout + out.stderr
    from inspect_ai.log import read_eval_log  # .eval logs are zip files: read what they hold

    logs = [p for p in files if p.suffix == ".eval"]
    assert len(logs) == 5 and not [str(p) for p in logs if KEY in read_eval_log(str(p)).model_dump_json()]


@pytest.mark.slow
def test_finished_runs_are_skipped_only_with_the_same_resolved_config(tmp_path):
    env = {}
    base = [fresh_caches(tmp_path), "model=tiny", "generation.progress=false", "benchmarks.rtp.num_prompts=2", "benchmarks.rtp.num_samples=1",
            "~benchmark@benchmarks.holisticbiasr", "~benchmark@benchmarks.hexphi", "~benchmark@benchmarks.beavertails",
            "logger=none", f"hydra.run.dir={tmp_path}/run"]
    first = run_cli("valharm.evaluate", *base, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    results = tmp_path / "run" / "results.json"
    made = results.read_text()
    again = run_cli("valharm.evaluate", *base, cwd=tmp_path, env=env)
    assert "skipping" in again.stdout and results.read_text() == made
    changed = run_cli("valharm.evaluate", *base, "benchmarks.rtp.threshold=0.25", cwd=tmp_path, env=env)
    assert changed.returncode == 0 and "benchmarks/rtp/threshold" in changed.stdout
    redone = json.loads(results.read_text())
    assert redone["config"]["benchmarks"]["rtp"]["threshold"] == 0.25
    assert redone["generation_cache"]["rtp"] == {"hits": 2, "misses": 0}  # nothing regenerated
    kept = list((tmp_path / "run" / "results.history").glob("*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["config"]["benchmarks"]["rtp"]["threshold"] == 0.5
    assert kept[0].read_text() == made  # the superseded results, as they were


@pytest.mark.slow
def test_a_run_with_failed_items_is_not_finished_until_they_are_scored(tmp_path):
    only_hexphi = [fresh_caches(tmp_path), "model=tiny", "generation.progress=false", "benchmarks.hexphi.per_category=1",
                   "~benchmark@benchmarks.pvq40", "~benchmark@benchmarks.rtp", "~benchmark@benchmarks.holisticbiasr",
                   "~benchmark@benchmarks.beavertails", "logger=none", "judge.max_retries=1",
                   "judge.resolve_snapshot=false",
                   f"hydra.run.dir={tmp_path}/run"]
    env = {"OPENAI_API_KEY": KEY}
    results = tmp_path / "run" / "results.json"
    judge = FaultyJudge()
    state = {"up": False}

    def answer(body):
        return judge(body) if state["up"] else (503, {"retry-after-ms": "1"}, {"error": {"message": "down"}})

    with FakeServer(answer) as server:
        out = run_cli("valharm.evaluate", *only_hexphi, *openai_judge(server), cwd=tmp_path, env=env)
        assert out.returncode == 2 and "valharm: error: 10 item(s) could not be scored" in out.stderr
        assert "run the same command again" in out.stderr and "Traceback" not in out.stderr
        first = json.loads(results.read_text())  # written, and marked unfinished by its failed items
        assert first["metrics"]["hexphi"]["failed"] == 10 and first["metrics"]["hexphi"]["harmfulness_score"] is None
        state["up"], calls_down = True, len(server.requests)
        again = run_cli("valharm.evaluate", *only_hexphi, *openai_judge(server), cwd=tmp_path, env=env)
        assert again.returncode == 0 and "10 item(s) failed to score" in again.stdout
        assert len(verdict_requests(server)) == calls_down + 10
        assert json.loads(results.read_text())["metrics"]["hexphi"]["scored"] == 10
        done = run_cli("valharm.evaluate", *only_hexphi, *openai_judge(server), cwd=tmp_path, env=env)
        state["up"], finished = False, results.read_text()
        down = run_cli("valharm.evaluate", *only_hexphi, *openai_judge(server), "skip_finished=false",
                       "judge.resolve_snapshot=true", cwd=tmp_path, env=env)
    assert "skipping it" in done.stdout and len(verdict_requests(server)) == calls_down + 10
    assert down.returncode == 2 and "did not say which model snapshot" in down.stderr  # dead at the start: one line
    assert results.read_text() == finished  # the finished results stay


def test_the_fingerprint_covers_the_evaluated_adapters_weights():
    from valharm.runs.rundir import fingerprint

    config = {"model": {"name": "tiny"}, "adapter_dir": "/runs/a/adapter", "paths": {"cache_dir": "/x"}}
    assert fingerprint(config, "weights-1") != fingerprint(config, "weights-2")
    assert fingerprint(config, "weights-1") == fingerprint({**config, "paths": {"cache_dir": "/y"}}, "weights-1")
