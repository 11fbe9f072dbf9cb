"""Nothing stale, nothing lost: corrupt caches, failing services, interrupted jobs, concurrent writers."""
import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import ROOT, run_cli

from valharm.caching import Cache


def test_a_corrupt_or_truncated_cache_is_moved_aside_and_rebuilt_with_one_warning(tmp_path, caplog):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="valharm"):
        cache = Cache(garbage)
        cache.put("ns", {"a": 1})
    assert cache.get("ns", ["a"]) == {"a": 1}
    assert [r.message for r in caplog.records].count(next(r.message for r in caplog.records)) == 1
    assert len(caplog.records) == 1 and "was corrupt" in caplog.records[0].message
    assert len(list(tmp_path.glob("garbage.sqlite.corrupt-*"))) == 1

    truncated = tmp_path / "truncated.sqlite"
    full = Cache(truncated)
    full.put("ns", {f"k{i}": "x" * 500 for i in range(2000)})
    with open(truncated, "r+b") as handle:  # WAL checkpointed on close: cut the main file
        handle.truncate(truncated.stat().st_size // 3)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"truncated.sqlite{suffix}").unlink(missing_ok=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="valharm"):
        reopened = Cache(truncated)
        found = reopened.get("ns", [f"k{i}" for i in range(2000)])
    assert found == {} and len(caplog.records) == 1  # nothing half-read: every entry is computed again
    reopened.put("ns", {"k1": "y"})
    assert reopened.get("ns", ["k1"]) == {"k1": "y"}


QUICK = ["model=tiny", "generation.progress=false", "~benchmark@benchmarks.holisticbiasr", "~benchmark@benchmarks.hexphi",
         "~benchmark@benchmarks.beavertails", "benchmarks.rtp.num_prompts=2", "benchmarks.rtp.num_samples=1"]


def test_wandb_failing_at_the_start_never_costs_the_results(tmp_path):
    out = run_cli("valharm.evaluate", *QUICK, "logger.wandb.mode=bogus", f"paths.cache_dir={tmp_path}/cache",
                  f"hydra.run.dir={tmp_path}/run", cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "W&B failed at the start" in out.stdout and "wandb sync" in out.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["wandb"]["error"].startswith("at the start") and results["metrics"]["rtp"]["prompts"] == 2


def test_wandb_failing_mid_run_warns_once_and_goes_on(caplog, tmp_path):
    from valharm.runs.tracking import WandbTracker

    class Broken:
        group, id, name, dir = "g", "i", "n", "d"

        class summary:  # noqa: N801 - stands in for wandb's summary object
            @staticmethod
            def update(values):
                raise ConnectionError("wandb service died")

        def finish(self, exit_code=0):
            raise ConnectionError("still dead")

    tracker = WandbTracker()
    tracker.run, tracker.run_dir = Broken(), tmp_path
    with caplog.at_level(logging.WARNING, logger="valharm"):
        tracker.log_results({"metrics": {"pvq40": {"nmse": 0.1}}}, [])
        tracker.finish()
    assert len(caplog.records) == 1 and "while logging the results" in caplog.records[0].message
    assert tracker.record()["error"] == "while logging the results: ConnectionError"


def stored(store) -> int:
    """Entries in a cache file, read without taking a lock the job writing it could wait on."""
    if not store.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            return 0


@pytest.mark.slow
def test_ctrl_c_leaves_nothing_half_written_and_says_how_to_resume(tmp_path, shared_data):
    args = [sys.executable, "-m", "valharm.evaluate", "model=tiny", "generation.progress=false", "logger=none",
            "~benchmark@benchmarks.holisticbiasr", "~benchmark@benchmarks.hexphi", "~benchmark@benchmarks.beavertails",
            f"benchmarks.rtp.path={shared_data / 'real_toxic_prompts.csv'}", "benchmarks.rtp.num_prompts=200",
            "benchmarks.rtp.num_samples=4", "generation.batch_size=4", f"paths.cache_dir={tmp_path}/cache",
            f"hydra.run.dir={tmp_path}/run"]
    # Ctrl-C's default action restored in the job: a shell that starts a command in the background has it ignored
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    store = tmp_path / "cache" / "generations.sqlite"
    deadline = time.time() + 300
    while time.time() < deadline and stored(store) < 3 * 10 + 3:  # PVQ-40 (3 entries an item), then RTP
        time.sleep(0.1)
    assert process.poll() is None, "the job ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err
    assert "interrupted: nothing half-written" in out and f"hydra.run.dir={tmp_path}/run" in out
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / "run" / "results.json").exists()
    again = run_cli(*args[2:], cwd=ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["generation_cache"]["rtp"]["hits"] >= 3


def sweep_args(tmp_path, server, name: str, splits: dict) -> list[str]:
    """A tiny sweep: VIM and ICL on power, PVQ-40 and HEx-PHI judged by a local judge server, W&B offline."""
    return [sys.executable, "-m", "valharm.train", "-m", "aligner=vim,icl", "value=power", "model=tiny",
            f"dataset.splits={{train: {splits['train']}, valid: {splits['valid']}, test: {splits['test']}}}",
            "trainer.enable_progress_bar=false", "generation.progress=false", "~benchmark@benchmarks.rtp",
            "~benchmark@benchmarks.holisticbiasr", "~benchmark@benchmarks.beavertails", "benchmarks.hexphi.per_category=4",
            "judge=openai", f"judge.base_url={server.url}/v1", "judge.model=fake-judge", "judge.max_concurrency=2",
            "judge.timeout=5", "generation.batch_size=4", "logger=wandb", f"paths.cache_dir={tmp_path}/{name}/cache",
            f"hydra.sweep.dir={tmp_path}/{name}/sweep"]


def counted_cache(path):
    """A cache file whose every insert is also logged (an SQLite trigger): items stored twice can be counted."""
    import sqlite3

    Cache(path)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE inserts (namespace TEXT, key TEXT)")
        db.execute("CREATE TRIGGER logged AFTER INSERT ON entries BEGIN "
                   "INSERT INTO inserts VALUES (new.namespace, new.key); END")


def stored_twice(path) -> int:
    import sqlite3

    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) - COUNT(DISTINCT namespace || key) FROM inserts").fetchone()[0]


def outcome(sweep) -> dict:
    found = {}
    for path in sorted(sweep.glob("*/results.json")):
        results = json.loads(path.read_text())
        check = results.get("alignment_check") or {}
        found[results["aligner"]] = {"metrics": results["metrics"], "shift": check.get("shift"),
                                     "training": {s: results["training"][s]["best_val_loss"]
                                                  for s in ("argument_generation", "agreement_prediction")
                                                  if s in results["training"]}}
    return found


@pytest.mark.slow
def test_a_sweep_killed_at_random_moments_twenty_times_ends_as_an_uninterrupted_one(tmp_path, shared_data):
    """SIGKILL during training, generation, judging and result writing / W&B logging, rerunning the same command
    each time: the final results equal an uninterrupted run's, and nothing finished is done twice beyond what was in
    flight (verdicts: at most max_concurrency per kill; stored generations and verdicts: never; epochs: one per
    kill)."""
    import random

    import pandas as pd
    from fake_servers import FakeServer, FaultyJudge, verdict_requests

    splits = {}
    for split, rows in (("train", 150), ("valid", 40), ("test", 60)):
        splits[split] = tmp_path / f"{split}.tsv"
        pd.read_csv(shared_data / f"touche_split_{split}.csv", sep="\t").head(rows).to_csv(splits[split], sep="\t",
                                                                                            index=False)
    env = {**os.environ, "OPENAI_API_KEY": "test-key"}
    with FakeServer(FaultyJudge(), latency=0.05) as server:
        reference = subprocess.run(sweep_args(tmp_path, server, "reference", splits), cwd=ROOT, env=env,
                                   capture_output=True, text=True, timeout=900)
        assert reference.returncode == 0, reference.stderr[-3000:]
    expected = outcome(tmp_path / "reference" / "sweep")

    crash = tmp_path / "crash"
    (crash / "cache").mkdir(parents=True)
    for name in ("generations", "scores"):
        counted_cache(crash / "cache" / f"{name}.sqlite")
    rng, kills, phases = random.Random(7), 0, []  # phase: the work in progress when killed
    with FakeServer(FaultyJudge(), latency=0.05) as server:
        def progress():
            logs = "".join(p.read_text() for p in (crash / "sweep").glob("*/train.log"))
            with contextlib.closing(sqlite3.connect(crash / "cache" / "generations.sqlite")) as db:
                stored = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
            return {"epoch": logs.count(" starts"), "generation": stored, "judging": len(verdict_requests(server)),
                    "results": len(list((crash / "sweep").glob("*/results.json")))}

        attempt, needed = 0, {"epoch", "generation", "judging", "results"}
        while kills < 20 or not needed <= set(phases):
            attempt += 1
            assert attempt < 150 and len(list((crash / "sweep").glob("*/results.json"))) < 2, \
                f"the sweep finished after {kills} kills, in phases {phases}"
            # after some work of any kind, or at a random moment; from the 8th kill on, in a phase not hit yet (on a
            # fast machine generation keeps moving first), then once just after the first job wrote its results
            missing = [phase for phase in ("epoch", "generation", "judging") if phase not in phases]
            first_job_done = any((crash / "sweep").glob("*/results.json"))  # then a kill after results ends the sweep
            if kills >= 8 and missing:
                target = missing[0]
            elif kills >= 8 and "results" not in phases and not first_job_done:
                target = "results"
            else:
                target = ("work", "work", "at random")[attempt % 3]
            steps = {"epoch": rng.randint(1, 2), "generation": rng.randint(1, 3), "judging": rng.randint(3, 15),
                     "results": 1}
            before, started, wait = progress(), time.time(), rng.uniform(1.0, 6.0)
            process = subprocess.Popen(sweep_args(tmp_path, server, "crash", splits), cwd=ROOT, env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            while process.poll() is None and time.time() - started < 300:
                now = progress()
                moved = [phase for phase in now if now[phase] - before[phase] >= steps[phase]]
                label = {"work": moved[0] if moved else None,
                         "at random": "at random" if time.time() - started > wait else None,
                         **{phase: phase if phase in moved else None for phase in steps}}[target]
                if label:
                    time.sleep(rng.uniform(0.0, 0.3))
                    if process.poll() is None:
                        os.killpg(process.pid, signal.SIGKILL)
                        kills += 1
                        phases.append(label)
                    break
                time.sleep(0.05)
            process.wait()
        final = subprocess.run(sweep_args(tmp_path, server, "crash", splits), cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=900)
        assert final.returncode == 0, final.stderr[-3000:]
        asked = [json.dumps(r["body"]["messages"]) for r in verdict_requests(server)]
    assert kills >= 20, phases
    print(f"\ncrash harness: {kills} kills in {attempt} attempts, by phase {dict(Counter(phases))}")
    assert outcome(crash / "sweep") == expected
    assert len(asked) - len(set(asked)) <= 2 * kills  # in flight: at most max_concurrency verdicts per kill
    assert stored_twice(crash / "cache" / "generations.sqlite") == 0
    assert stored_twice(crash / "cache" / "scores.sqlite") == 0
    logs = "".join(p.read_text() for p in (crash / "sweep").glob("*/train.log"))
    starts = [line.split("] - ", 1)[1] for line in logs.splitlines() if line.endswith(" starts")]
    assert len(starts) - len(set(starts)) <= kills  # an epoch is begun again only if a kill cut it short


@pytest.mark.slow
def test_two_sweeps_sharing_the_caches_at_once_lose_and_mix_nothing(tmp_path, shared_data):
    """A joblib sweep and a submitit_local sweep write the same cache files at the same time, with one job in
    common: every job's results equal a sequential run's on fresh caches, and the cache files are sound."""
    common = ["valharm.evaluate", "-m", "model=tiny", "generation.progress=false", "logger=none",
              "~benchmark@benchmarks.holisticbiasr", "~benchmark@benchmarks.hexphi", "~benchmark@benchmarks.beavertails",
              f"benchmarks.rtp.path={shared_data / 'real_toxic_prompts.csv'}", "benchmarks.rtp.num_prompts=24",
              "benchmarks.rtp.num_samples=2", "generation.batch_size=8"]
    sweeps = {"joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "prompt_strategy=input_only,safety"],
              "submitit": ["hydra/launcher=submitit_local", "prompt_strategy=input_only,value"]}
    running = {name: subprocess.Popen([sys.executable, "-m", *common, *extra, f"paths.cache_dir={tmp_path}/shared",
                                       f"hydra.sweep.dir={tmp_path}/{name}"], cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
               for name, extra in sweeps.items()}
    for name, process in running.items():
        out, _ = process.communicate(timeout=900)
        assert process.returncode == 0, out[-3000:]
    alone = run_cli(*common, "prompt_strategy=input_only,safety,value", f"paths.cache_dir={tmp_path}/fresh",
                    f"hydra.sweep.dir={tmp_path}/alone", cwd=ROOT, timeout=900)
    assert alone.returncode == 0, alone.stderr[-3000:]

    def metrics(folder):
        return {r["prompt_strategy"]: r["metrics"] for r in
                (json.loads(p.read_text()) for p in sorted(folder.glob("*/results.json")))}

    expected = metrics(tmp_path / "alone")
    for name in sweeps:
        for strategy, found in metrics(tmp_path / name).items():
            assert found == expected[strategy], (name, strategy)
    for name in ("generations", "scores"):
        with contextlib.closing(sqlite3.connect(tmp_path / "shared" / f"{name}.sqlite")) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        shared, fresh = (Cache(tmp_path / folder / f"{name}.sqlite").count_all() for folder in ("shared", "fresh"))
        assert shared == fresh  # the same entries: nothing lost, nothing extra
