"""The study's sweeps as experiment configs: their jobs listed without running them."""
import pytest
from conftest import run_cli

from valharm.jobs import job_values, sweep_jobs


@pytest.mark.slow
def test_smoke_sweep_enumerates_the_154_study_distributions():
    jobs = sweep_jobs(["experiment=vim_all_distributions_smoke"])
    values = job_values(jobs)
    assert len(jobs) == 154 and len({v.name for v in values}) == 154
    assert [v.source for v in values].count("extreme") == 14 and [v.source for v in values].count("ess") == 140
    assert {v.anchor for v in values if v.source == "ess"} == {v.name for v in values if v.source == "extreme"}
    assert sorted({v.rank for v in values if v.source == "ess"}) == list(range(1, 11))


@pytest.mark.slow
def test_full_sweep_lists_154_jobs_on_real_ess_data_without_running(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("VALHARM_DATA_DIR", str(shared_data))
    out = run_cli("valharm.jobs", "experiment=vim_all_distributions", cwd=tmp_path, env={"VALHARM_DATA_DIR": str(shared_data)})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 154 and "154 jobs" in out.stderr
    assert lines[0].split("\t")[:2] == ["0", "achievement"] and lines[14].split("\t")[1] == "achievement_ess1"
    assert lines[153].split("\t")[1] == "self_transcendence_ess10"
    assert list(tmp_path.iterdir()) == []  # nothing was run or written


def test_reference_sweep_lists_the_six_model_types():
    jobs = sweep_jobs(["experiment=reference_models_smoke"])
    assert [j[0] for j in jobs] == ["model_type=vanilla", "model_type=icl", "model_type=sft_alpaca",
                                    "model_type=sft_dolly", "model_type=sft_grammar", "model_type=sft_samsum"]


def test_command_line_sweeps_combine_with_the_experiments():
    jobs = sweep_jobs(["aligner=vim", "value=power,hedonism", "seed=1,2"])
    assert {frozenset(j) for j in jobs} == {frozenset(["aligner=vim", f"value={v}", f"seed={s}"])
                                            for v in ("power", "hedonism") for s in (1, 2)}


@pytest.mark.parametrize("index, message", [(154, "outside 0..153"), (-1, "outside 0..153")])
def test_study_index_is_checked(index, message):
    from valharm.errors import ValharmError
    from valharm.values.distributions import study

    with pytest.raises(ValharmError, match=message):
        study(index)


@pytest.mark.parametrize("experiment", ["vim_all_distributions", "reference_models"])
def test_the_studys_sweeps_run_the_studys_instruments(shared_data, experiment, monkeypatch):
    """Composed as a job of the sweep: preset=study's judge, prompts, scorers and real data for all five
    benchmarks; what still differs from the study is the model only (plus what a CPU run cannot have)."""
    from conftest import ROOT
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from valharm.study import differences

    monkeypatch.setenv("VALHARM_DATA_DIR", str(shared_data))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        job = ["model_type=icl"] if experiment == "reference_models" else []
        cfg = compose("train", overrides=[f"experiment={experiment}", "model=llama2_7b", *job])
    config = OmegaConf.to_container(cfg, resolve=True)
    benchmarks = config["benchmarks"]
    assert all(benchmarks[b]["path"].startswith(str(shared_data)) for b in benchmarks)
    assert config["judge"]["top_p"] == 0.0 and config["judge"]["templates"]["harmfulness"].endswith("hexphi_study.txt")
    assert benchmarks["holisticbiasr"]["preferences"] == ["dispreferred"]
    found = differences(config)
    if experiment == "vim_all_distributions":
        assert config["value"]["coding"] == "paper"
        assert config["aligner"]["training"]["max_length_agreement"] == 128  # the preset's VIM part: the study's
    assert found == []
