"""Nothing stale, nothing lost: corrupt caches, failing services, interrupted jobs, concurrent writers."""
import json
import logging
import os
import signal
import subprocess
import sys
import time

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
    from valharm.tracking import WandbTracker

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


@pytest.mark.slow
def test_ctrl_c_leaves_nothing_half_written_and_says_how_to_resume(tmp_path, shared_data):
    args = [sys.executable, "-m", "valharm.evaluate", "model=tiny", "generation.progress=false", "logger=none",
            "~benchmark@benchmarks.holisticbiasr", "~benchmark@benchmarks.hexphi", "~benchmark@benchmarks.beavertails",
            f"benchmarks.rtp.path={shared_data / 'real_toxic_prompts.csv'}", "benchmarks.rtp.num_prompts=60",
            "benchmarks.rtp.num_samples=4", "generation.batch_size=4", f"paths.cache_dir={tmp_path}/cache",
            f"hydra.run.dir={tmp_path}/run"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = tmp_path / "cache" / "generations.sqlite"
    deadline = time.time() + 300
    while time.time() < deadline and (not store.exists() or Cache(store).count_all() < 10 + 3):  # PVQ, then RTP
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err
    assert "interrupted: nothing half-written" in out and f"hydra.run.dir={tmp_path}/run" in out
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / "run" / "results.json").exists()
    again = run_cli(*args[2:], cwd=ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["generation_cache"]["rtp"]["hits"] >= 3
