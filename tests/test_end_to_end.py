"""The main usage, as a user runs it: a Hydra multirun of two values, then evaluation of an adapter."""
import json
from pathlib import Path

import pytest

from conftest import run_cli
from wandb_log import run_record, summary

ONLY_PVQ = ["~benchmark@benchmarks.holisticbiasr", "~benchmark@benchmarks.hexphi", "~benchmark@benchmarks.beavertails"]
FAST = ["model=tiny", "aligner.training.epochs=1", "aligner.training.lr=0.01", "benchmarks.rtp.num_samples=2", "benchmarks.rtp.num_prompts=4",
        "generation.progress=false", "trainer.enable_progress_bar=false", "benchmarks.holisticbiasr.limit=8",
        "benchmarks.holisticbiasr.resamples=999", "benchmarks.hexphi.per_category=1",
        "benchmarks.beavertails.per_category=1"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep")
    out = run_cli("valharm.train", "-m", "aligner=vim", "value=power,hedonism", *FAST, f"paths.cache_dir={workdir}/cache",
                  f"hydra.sweep.dir={workdir}/multirun", cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir / "multirun"


def run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir())


@pytest.mark.slow
def test_multirun_writes_one_run_dir_per_value(sweep):
    dirs = run_dirs(sweep)
    assert len(dirs) == 2
    results = [json.loads((d / "results.json").read_text()) for d in dirs]
    assert [r["value"]["name"] for r in results] == ["power", "hedonism"]
    assert results[0]["value"]["scores"]["Power"] == 6 and results[0]["value"]["scores"]["Hedonism"] == 1
    assert results[1]["value"]["scores"]["Hedonism"] == 6 and results[1]["value"]["scores"]["Power"] == 1
    for d, r in zip(dirs, results):
        assert r["aligner"] == "vim" and r["model"] == "tiny" and r["value"]["coding"] == "importance"
        assert all(s["offline"] for s in r["scoring"].values())
        assert "OFFLINE" in next(s for s in r["scoring"].values() if s["role"] == "toxicity")["description"]
        assert {path: p["precision"] for path, p in r["precision"].items()} == {"training": "fp32", "generation": "fp32"}
        assert r["training"]["argument_generation"]["precision"] == "32-true"
        assert r["hardware"]["cpu_capability"] and r["hardware"]["torch_threads"] >= 1
        assert r["timing"]["rtp"]["new_tokens"] > 0 and r["timing"]["rtp"]["tokens_per_s"] > 0
        assert r["timing"]["pvq40"]["requests"] == 10 and r["timing"]["pvq40"]["requests_per_s"] > 0
        assert "new_tokens" not in r["timing"]["pvq40"]  # loglik scoring generates nothing
        assert r["benchmarks"]["pvq40"]["shipped_sample"]
        assert set(r["metrics"]["pvq40"]["scores"]) == set(r["value"]["scores"])
        pvq = [json.loads(line) for line in (d / "generations.jsonl").read_text().splitlines()
               if json.loads(line)["benchmark"] == "pvq40"]
        assert r["metrics"]["pvq40"]["items"] == len(pvq) == 10
        assert r["metrics"]["pvq40"]["invalid"] == sum(g["rating"] is None for g in pvq)
        assert 0 <= r["metrics"]["rtp"]["expected_max_toxicity"] <= 1
        assert r["metrics"]["rtp"]["toxicity_probability"] in (0, 0.25, 0.5, 0.75, 1)
        assert (d / "adapter" / "adapter_model.safetensors").is_file()
        assert not (d / "adapter" / "model.safetensors").exists()
        lines = (d / "generations.jsonl").read_text().splitlines()
        checked = r["alignment_check"]["arguments"]  # the test split's arguments, rated with and without the adapter
        assert len(lines) == checked + 10 + 4 * 2 + 8 + 10 + 14  # + pvq40, rtp, holisticbiasr, hexphi, beavertails


@pytest.mark.slow
def test_multirun_logs_two_offline_wandb_runs_in_one_group(sweep):
    files = [next((d / "wandb").glob("offline-run-*/run-*.wandb")) for d in run_dirs(sweep)]
    records = [run_record(f) for f in files]
    assert records[0].run_id != records[1].run_id
    assert records[0].run_group == records[1].run_group == "train-multirun"
    assert {r.job_type for r in records} == {"train"}
    for record, value in zip(records, ("Power", "Hedonism")):
        config = {u.key: json.loads(u.value_json) for u in record.config.update}
        assert config[f"value/{value}"] == 6.0
        assert all(isinstance(config[f"value/{v}"], float) for v in ("Achievement", "Universalism"))
    for f in files:
        keys = summary(f)
        assert {"rtp/expected_max_toxicity", "rtp/toxicity_probability", "pvq40/invalid", "pvq40/base_nmse",
                "pvq40/skill", "pvq40/base_scores/Power", "alignment_check/recognition",
                "timing/rtp/tokens_per_s"} <= set(keys)
        assert {"samples", "intervals"} <= {k.split("/")[0] for k in keys}


@pytest.mark.slow
def test_rerun_skips_finished_jobs(sweep):
    first = run_dirs(sweep)[0]
    before = (first / "results.json").read_text()
    out = run_cli("valharm.train", f"hydra.run.dir={first}", *FAST, "value=power", "logger=none", cwd=sweep)
    assert out.returncode == 0 and "is finished with this config, code and data; skipping it" in out.stdout
    assert (first / "results.json").read_text() == before


def pvq_answers(run_dir: Path) -> list[list[float]]:
    """The six answers' probabilities for every PVQ-40 item (loglik scoring, the default)."""
    lines = (run_dir / "generations.jsonl").read_text().splitlines()
    return [[round(p, 5) for p in json.loads(line)["probabilities"]] for line in lines
            if json.loads(line)["benchmark"] == "pvq40"]


@pytest.mark.slow
def test_evaluate_an_adapter_dir_alone(sweep, tmp_path):
    trained_dir = run_dirs(sweep)[1]
    common = ["~benchmark@benchmarks.rtp", "logger=none", "generation.progress=false", *ONLY_PVQ]
    out = run_cli("valharm.evaluate", f"adapter_dir={trained_dir / 'adapter'}", *common,
                  f"hydra.run.dir={tmp_path}/eval", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["value"]["name"] == "hedonism" and results["model"] == "tiny" and results["aligner"] == "vim"
    # The same adapter gives the same answer probabilities, the base model without it does not.
    assert pvq_answers(tmp_path / "eval") == pvq_answers(trained_dir)
    out = run_cli("valharm.evaluate", "model=tiny", *common, f"hydra.run.dir={tmp_path}/vanilla", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "vanilla" / "results.json").read_text())["aligner"] == "vanilla"
    assert pvq_answers(tmp_path / "vanilla") != pvq_answers(trained_dir)


@pytest.mark.slow
def test_evaluate_respects_a_value_given_on_the_command_line(sweep, tmp_path):
    out = run_cli("valharm.evaluate", f"adapter_dir={run_dirs(sweep)[1] / 'adapter'}", "value=power",
                  "~benchmark@benchmarks.rtp", "logger=none", "generation.progress=false",
                  f"hydra.run.dir={tmp_path}/eval", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["value"]["name"] == "power" and results["model"] == "tiny"


def test_an_unknown_option_of_a_group_is_hydras_error_and_keeps_earlier_results(tmp_path):
    """Choices of a config group fail in Hydra's composition, before valharm runs; its message lists the options.
    (Every other kind of bad input: tests/test_bad_input.py.)"""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text('{"earlier": true}')
    out = run_cli("valharm.train", "model=tiny", "value=powr", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=120)
    assert out.returncode != 0 and "Could not find 'value/powr'" in out.stderr and "Traceback" not in out.stderr
    assert (run_dir / "results.json").read_text() == '{"earlier": true}'


REFERENCE = ["model=tiny", "benchmarks.rtp.num_samples=2", "benchmarks.rtp.num_prompts=2", "generation.progress=false",
             "trainer.enable_progress_bar=false", "logger=none", "benchmarks.holisticbiasr.limit=4",
             "benchmarks.hexphi.limit=2", "benchmarks.beavertails.limit=2", "benchmarks.holisticbiasr.resamples=99"]


@pytest.mark.slow
def test_vanilla_and_icl_run_without_training_and_save_no_adapter(tmp_path):
    out = run_cli("valharm.train", "-m", "aligner=vanilla,icl", *REFERENCE, f"hydra.sweep.dir={tmp_path}/m", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    dirs = run_dirs(tmp_path / "m")
    results = [json.loads((d / "results.json").read_text()) for d in dirs]
    assert [(r["aligner"], r["model_type"]) for r in results] == [("vanilla", "vanilla"), ("icl", "icl")]
    for d, r in zip(dirs, results):
        assert not (d / "adapter").exists() and not (d / "stages").exists() and r["training"] == {}
        assert set(r["precision"]) == {"generation"}  # nothing trains, so no training precision is chosen
        assert {"pvq40", "rtp"} <= set(r["metrics"]) and r["metrics"]["pvq40"]["scoring"] == "slot"
    assert results[0]["system_prompt"] is None and "Power (" in results[1]["system_prompt"]
    vanilla, icl = (r["metrics"]["pvq40"] for r in results)
    assert vanilla["skill"] == 0 and vanilla["base_nmse"] == vanilla["nmse"] and "pvq40_base" not in \
        results[0]["generation_cache"]
    assert icl["base_nmse"] == pytest.approx(vanilla["nmse"])  # icl's base: the same prompts without the persona
    assert icl["skill"] == pytest.approx(1 - icl["nmse"] / icl["base_nmse"])


@pytest.mark.slow
def test_sft_on_each_reference_dataset_saves_an_adapter(tmp_path):
    out = run_cli("valharm.train", "-m", "aligner=sft", "dataset=alpaca,dolly,grammar,samsum", *REFERENCE,
                  f"hydra.sweep.dir={tmp_path}/m", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads((d / "results.json").read_text()) for d in run_dirs(tmp_path / "m")]
    assert [r["model_type"] for r in results] == ["sft_alpaca", "sft_dolly", "sft_grammar", "sft_samsum"]
    for d, r in zip(run_dirs(tmp_path / "m"), results):
        assert (d / "adapter" / "adapter_model.safetensors").is_file()
        assert r["training"]["dataset"]["shipped_sample"] and r["training"]["sft"]["accumulate_grad_batches"] == 4
        assert {"pvq40", "rtp"} <= set(r["metrics"])


@pytest.mark.slow
def test_vim_trains_on_real_arguments(shared_data, tmp_path):
    out = run_cli("valharm.train", *FAST, f"dataset.path={shared_data / 'valueEval_10.csv'}", "aligner.max_arguments=16",
                  "value=power", "logger=none", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["training"]["dataset"] == {"source": str(shared_data / "valueEval_10.csv"), "arguments": 7374,
                                              "shipped_sample": False}
    assert results["training"]["arguments"] == {"train": 16, "valid": 16, "test": 16}


@pytest.mark.slow
def test_an_adapter_trained_for_an_ess_distribution_records_its_resolved_origin(tmp_path):
    out = run_cli("valharm.train", *FAST, "value=study", "value.index=20", "value.ess_path=${paths.samples_dir}/ess_synthetic.csv",
                  "logger=none", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    origin = (tmp_path / "run" / "adapter" / "valharm.yaml").read_text()
    assert "ess_synthetic.csv" in origin and "${" not in origin
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["value"]["name"] == "achievement_ess7" and results["value"]["source"] == "ess"


@pytest.mark.slow
def test_a_train_only_run_without_benchmarks_saves_its_adapter(tmp_path):
    """Every benchmark removed: a VIM run trains, checks and saves its adapter and writes results.json without
    benchmark metrics; a run that trains nothing stops with one clear line."""
    none = [f"~benchmark@benchmarks.{name}" for name in ("pvq40", "rtp", "holisticbiasr", "hexphi", "beavertails")]
    out = run_cli("valharm.train", "model=tiny", "aligner=vim", "value=power", *none, "aligner.training.epochs=1",
                  "aligner.max_arguments=16", "trainer.limit_train_batches=2",
                  "trainer.limit_val_batches=2", "generation.progress=false", "trainer.enable_progress_bar=false",
                  "logger=none", f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["metrics"] == {} and results["training"]["stage2"] == "per_value"
    check = results["alignment_check"]  # the default reading, with value recognition against the label frequency
    assert check["reading"] == "answer_space" and check["arguments"] == results["training"]["arguments"]["test"] > 0
    assert 0 <= check["recognition"] <= 1 and 0 <= check["base_recognition"] <= 1 and 0 < check["frequency_baseline"] <= 1
    out = run_cli("valharm.train", "model=tiny", "aligner=vanilla", *none, "logger=none",
                  f"hydra.run.dir={tmp_path}/vanilla", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "no benchmarks configured" in out.stderr and not (tmp_path / "vanilla" / "results.json").exists()
