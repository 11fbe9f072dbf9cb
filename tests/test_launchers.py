"""Scale-out as users run it: submitit and joblib launchers, a killed job resumed, DDP on two CPU processes,
many adapters evaluated on one base load."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from valharm.runs.processes import usable_cores

ONLY_PVQ_RTP = ["~benchmark@benchmarks.holisticbiasr", "~benchmark@benchmarks.hexphi",
                "~benchmark@benchmarks.beavertails", "benchmarks.rtp.num_prompts=4", "benchmarks.rtp.num_samples=2"]
QUIET = ["generation.progress=false", "trainer.enable_progress_bar=false"]


def results_of(sweep: Path) -> dict[str, dict]:
    """results.json of every job of a sweep, by job number."""
    return {p.parent.name.split("_")[0]: json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))}


def job_dir(sweep: Path, number: int) -> Path:
    found = list(sweep.glob(f"{number}_*"))
    return found[0] if found else sweep / f"{number}_not_started"


def process_writing(path: Path) -> int | None:
    """The pid of the process that holds `path` open (a Hydra job keeps its run dir's log file open)."""
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                return int(fd_dir.parent.name)
        except OSError:  # the process ended or is not ours
            continue
    return None


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the job's process through /proc (Linux)")
@pytest.mark.slow
def test_submitit_jobs_run_as_processes_and_a_killed_one_resumes(shared_data, tmp_path):
    sweep = tmp_path / "multirun"
    command = [sys.executable, "-m", "valharm.train", "-m", "hydra/launcher=submitit_local", "value=power,hedonism",
               "model=tiny", f"dataset.path={shared_data / 'valueEval_10.csv'}", "aligner.max_arguments=200",
               "aligner.training.epochs=2", "aligner.training.lr=0.01", "aligner.alignment_check.max_arguments=16",
               *ONLY_PVQ_RTP, *QUIET, f"paths.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={sweep}"]
    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stages = ["argument_generation", "agreement_prediction"]
    deadline, interrupted = time.time() + 300, None
    while interrupted is None and time.time() < deadline:  # a stage after its first of two epochs
        found = [s for s in stages if (job_dir(sweep, 1) / "stages" / s / "last.ckpt").is_file()
                 and not (job_dir(sweep, 1) / "stages" / s / "stage.json").exists()]
        interrupted = found[0] if found else None
        time.sleep(0.05)
    victim = process_writing(job_dir(sweep, 1) / "train.log")
    assert interrupted and victim and victim != first.pid, "the hedonism job should train in a process of its own"
    os.kill(victim, signal.SIGKILL)
    first.communicate(timeout=300)
    assert first.returncode != 0  # the launcher reports the lost job
    done = results_of(sweep)
    assert list(done) == ["0"]
    power = done["0"]
    assert power["value"]["name"] == "power"
    assert power["job"]["launcher"] == "submitit_local" and power["job"]["pid"] != first.pid
    assert not (job_dir(sweep, 1) / "stages" / interrupted / "stage.json").exists()

    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    logs = [(job_dir(sweep, n) / "train.log").read_text() for n in (0, 1)]
    assert "is finished with this config, code and data; skipping it" in logs[0]
    assert f"{interrupted}: resuming from" in logs[1]
    after = results_of(sweep)
    assert after["0"] == power  # the finished job was not redone
    training = after["1"]["training"]
    position = stages.index(interrupted)
    assert training[interrupted]["resumed"] == "from_checkpoint" and training[interrupted]["epochs"] == 2
    assert training[interrupted]["epochs_before_resume"] == 1  # only the second epoch ran again
    assert all(training[s]["resumed"] == "finished" for s in stages[:position])  # reloaded, not retrained
    assert all(training[s]["resumed"] is None for s in stages[position + 1:])
    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and results_of(sweep) == after  # nothing left to do: both skipped


@pytest.mark.slow
def test_joblib_runs_jobs_in_parallel_with_the_results_of_a_sequential_run(tmp_path):
    jobs = ["aligner=vanilla,icl", "value=power,hedonism", "model=tiny", "logger=none", *ONLY_PVQ_RTP, *QUIET]
    parallel = run_cli("valharm.train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *jobs,
                       f"paths.cache_dir={tmp_path}/cache_parallel", f"hydra.sweep.dir={tmp_path}/parallel",
                       cwd=tmp_path, env={"OMP_NUM_THREADS": "2"})
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    threads = max(1, usable_cores() // 2)  # what threads=auto gives each of 2 parallel jobs
    sequential = run_cli("valharm.train", "-m", *jobs, f"threads={threads}", f"paths.cache_dir={tmp_path}/cache_sequential",
                         f"hydra.sweep.dir={tmp_path}/sequential", cwd=tmp_path)
    assert sequential.returncode == 0, sequential.stderr[-3000:]
    fast, slow = results_of(tmp_path / "parallel"), results_of(tmp_path / "sequential")
    assert len(fast) == 4 and list(fast) == list(slow)
    for name in fast:
        assert fast[name]["metrics"] == slow[name]["metrics"], name
        assert fast[name]["job"]["launcher"] == "joblib"
        assert fast[name]["hardware"]["torch_threads"] == slow[name]["hardware"]["torch_threads"] == threads
    assert len({r["job"]["pid"] for r in fast.values()}) == 2  # two worker processes
    spans = sorted((r["job"]["started"], r["job"]["finished"]) for r in fast.values())
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))  # jobs overlapped in time


@pytest.mark.slow
def test_ddp_trains_on_two_cpu_processes_and_rank_zero_alone_writes(tmp_path):
    run_dir = tmp_path / "run"
    out = run_cli("valharm.train", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "model=tiny",
                  "aligner.max_arguments=40", "aligner.training.epochs=2", "aligner.training.lr=0.01", *ONLY_PVQ_RTP,
                  *QUIET, f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    for stage, examples in (("argument_generation", 39), ("agreement_prediction", 60)):  # 39 arguments, 60 labels
        written = (run_dir / "stages" / stage / "train_examples.jsonl").read_text().splitlines()
        assert results["training"][stage]["processes"] == 2
        assert results["training"][stage]["train_examples"] == len(written) == examples  # split across the processes
        per_process = -(-examples // 2)
        assert results["training"][stage]["steps"] == 2 * -(-per_process // 8)  # 2 epochs x batches per process
    assert [p.name for p in tmp_path.rglob("adapter_config.json") if p.parent.name == "adapter"] == ["adapter_config.json"]
    assert len(list(tmp_path.rglob("results.json"))) == 1
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert results["wandb"]["id"] in str(next((run_dir / "wandb").glob("offline-run-*")))


def test_multirun_with_ddp_started_by_lightning_is_refused_with_a_way_out(tmp_path):
    out = run_cli("valharm.train", "-m", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "model=tiny",
                  "value=power,hedonism", f"hydra.sweep.dir={tmp_path}/multirun", cwd=tmp_path)
    assert out.returncode != 0
    assert "hydra/launcher=slurm" in out.stderr and "Traceback" not in out.stderr


def make_adapters(tiny_bundle, root: Path, count: int) -> list[Path]:
    """LoRA adapters of the tiny model with distinct random weights (as a training sweep leaves them)."""
    import torch
    from peft import LoraConfig, get_peft_model

    dirs = []
    for n in range(count):
        model = get_peft_model(tiny_bundle.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn_like(p, generator=torch.Generator().manual_seed(n)))
        model.save_pretrained(root / f"{n}_run" / "adapter")
        model.unload()
        dirs.append(root / f"{n}_run" / "adapter")
    return dirs


@pytest.mark.slow
def test_four_adapters_are_evaluated_on_one_base_load(tiny_bundle, tmp_path):
    adapters = make_adapters(tiny_bundle, tmp_path / "sweep", 4)
    common = ["model=tiny", "value=power", *ONLY_PVQ_RTP, "generation.progress=false", f"paths.cache_dir={tmp_path}/cache"]
    out = run_cli("valharm.evaluate", "-m", "adapter_dir=" + ",".join(f"'{a}'" for a in adapters), *common,  # as README
                  f"hydra.sweep.dir={tmp_path}/evaluate", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("base model tiny loaded") == 1 and out.stdout.count("reused from an earlier job") == 3
    results = list(results_of(tmp_path / "evaluate").values())
    assert [r["base_model_load"]["loaded"] for r in results] == [True, False, False, False]
    assert [r["base_model_load"]["jobs_on_this_load"] for r in results] == [1, 2, 3, 4]
    assert len({json.dumps(r["metrics"]["pvq40"]) for r in results}) == 4  # each job used its own adapter
    alone = run_cli("valharm.evaluate", f"adapter_dir={adapters[-1]}", *common, f"paths.cache_dir={tmp_path}/cache2",
                    f"hydra.run.dir={tmp_path}/alone", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert json.loads((tmp_path / "alone" / "results.json").read_text())["metrics"] == results[-1]["metrics"]
    assert (tmp_path / "alone" / "generations.jsonl").read_text() == (
        job_dir(tmp_path / "evaluate", 3) / "generations.jsonl").read_text()


def test_training_state_of_another_config_or_a_finished_run_is_not_resumed(tmp_path):
    from valharm.runs.rundir import keep_training_state

    stage = tmp_path / "stages" / "vim"
    stage.mkdir(parents=True)
    (stage / "last.ckpt").write_text("epoch 1")
    keep_training_state(tmp_path, "hash-a", resume=True)  # no marker: left by older code
    assert not stage.exists() and (tmp_path / "stages" / "config_hash").read_text() == "hash-a"
    stage.mkdir()
    keep_training_state(tmp_path, "hash-a", resume=True)  # an interrupted attempt of this config
    assert stage.exists()
    keep_training_state(tmp_path, "hash-b", resume=True)  # another config
    assert not stage.exists()
    stage.mkdir()
    keep_training_state(tmp_path, "hash-b", resume=False)  # a finished run done again
    assert not stage.exists()


def test_the_slurm_preset_composes_on_submitit_and_everything_is_overridable():
    from conftest import ROOT
    from hydra import compose, initialize_config_dir

    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
                 "hydra.launcher.tasks_per_node=4", "hydra.launcher.timeout_min=30", "hydra.launcher.mem_gb=200",
                 "hydra.launcher.cpus_per_task=6", "hydra.launcher.array_parallelism=8", "trainer=ddp"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node, launcher.timeout_min, launcher.mem_gb,
            launcher.cpus_per_task, launcher.array_parallelism) == ("gpu", 4, 4, 30, 200, 6, 8)
    assert launcher.max_num_timeout > 0  # timed-out jobs are requeued
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.enable_checkpointing


def test_ranks_started_together_wait_for_rank_zero_of_the_same_attempt(tmp_path, monkeypatch):
    import threading

    from valharm.runs.processes import announce, attempt_id, wait_for_rank_zero

    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    attempt = attempt_id()
    assert attempt == "slurm-77.1"
    announce(tmp_path, "slurm-77.0", "skip")  # the previous attempt's word does not count
    threading.Timer(1.0, announce, (tmp_path, attempt, "run")).start()
    started = time.time()
    assert wait_for_rank_zero(tmp_path, attempt) == "run" and time.time() - started >= 0.9
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: nothing to wait for
    assert attempt_id() is None
