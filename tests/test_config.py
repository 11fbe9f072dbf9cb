"""Every option of every config group composes and instantiates (models as specs, nothing loaded)."""
from pathlib import Path

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from valharm.values.distributions import VALUES

CONF = ROOT / "conf"
GROUPS = ["model", "aligner", "dataset", "value", "prompt_strategy", "generation", "scorer", "regard", "judge",
          "trainer", "logger"]
LOCAL_STAND_INS = {  # remote backends pointed at what this machine has: keys from the environment, a local classifier
    ("scorer", "hf_classifier"): ["scorer.model={classifier}", "scorer.positive_label=other"],
    ("regard", "hf_classifier"): ["regard.model={classifier}", "+regard.label_map.LABEL_NEG=negative"],
    ("generation", "openai"): ["generation.model=served-base", "generation.base_url=http://127.0.0.1:9/v1"],
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_instantiates(group, option, shared_data, monkeypatch, tiny_classifier):
    monkeypatch.setenv("VALHARM_DATA_DIR", str(shared_data))
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("PERSPECTIVE_API_KEY", "test-key")
    extra = [o.format(classifier=tiny_classifier) for o in LOCAL_STAND_INS.get((group, option), [])]
    cfg = compose_train(f"{group}={option}", *extra)
    if group == "logger":
        from valharm.runs.components import build_tracker

        obj = build_tracker(cfg.logger)
    else:
        obj = instantiate(cfg[group], _partial_=group == "trainer")
    assert obj is not None
    if group == "value":
        assert set(obj.as_dict()) == set(VALUES)
    if group == "model":
        assert obj.name == option and obj.lora_targets == ["q_proj", "v_proj"]


def test_benchmark_options_compose():
    cfg = compose_train()
    assert set(cfg.benchmarks) == {"pvq40", "rtp", "holisticbiasr", "hexphi", "beavertails"}
    for name in options("benchmark"):
        assert instantiate(cfg.benchmarks[name]).name == name
    assert "rtp" not in compose_train("~benchmark@benchmarks.rtp").benchmarks


def test_study_model_configs_are_real():
    hubs = {o: compose_train(f"model={o}").model for o in ("llama2_7b", "llama3_1_8b", "gemma2_9b", "qwen2_5_7b")}
    assert hubs["llama2_7b"].hub_id == "meta-llama/Llama-2-7b-hf"
    assert hubs["llama3_1_8b"].hub_id == "meta-llama/Llama-3.1-8B"
    assert hubs["gemma2_9b"].hub_id == "google/gemma-2-9b" and hubs["gemma2_9b"].attn_implementation == "eager"
    assert hubs["qwen2_5_7b"].hub_id == "Qwen/Qwen2.5-7B"
    assert all(m.prompt_format == "plain" for m in hubs.values())


def test_study_training_defaults():
    cfg = compose_train()
    assert dict(cfg.aligner.lora) == {"r": 8, "alpha": 32, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
    assert dict(cfg.aligner.training) == {"lr": 2e-5, "epochs": 5, "batch_size": 8, "max_length": 128,
                                             "max_length_agreement": 256, "weight_decay": 0.0, "precision": None,
                                             "batching": "length_grouped", "packing": "auto", "compile": False}
    assert cfg.aligner.training.epochs == 5 and cfg.seed == 42 and cfg.aligner.threshold == 3
    assert cfg.aligner.stage2 == "per_value" and cfg.aligner.score_rule == "min"


def test_wandb_mode_is_set_as_logger_wandb_mode():
    from valharm.runs.components import build_tracker
    from valharm.runs.tracking import NoTracker, WandbTracker

    tracker = build_tracker(compose_train("logger=wandb", "logger.wandb.mode=online").logger)
    assert isinstance(tracker, WandbTracker) and tracker.mode == "online"
    assert isinstance(build_tracker(compose_train("logger=none").logger), NoTracker)


def test_custom_scores_from_the_command_line():
    value = instantiate(compose_train("value=custom", "value.scores.power=6", "value.scores.hedonism=4.5").value)
    assert value.as_dict()["Power"] == 6 and value.as_dict()["Hedonism"] == 4.5
    value = instantiate(compose_train("value=custom", "value.vector=[1,2,3,4,5,6,1,2,3,4]").value)
    assert value.as_dict()["Security"] == 6


def test_ess_option_sweeps_anchor_and_rank(shared_data, monkeypatch):
    monkeypatch.setenv("VALHARM_DATA_DIR", str(shared_data))
    value = instantiate(compose_train("value=ess", "value.anchor=hedonism", "value.rank=3").value)
    assert value.name == "hedonism_ess3" and value.coding == "importance"
    assert max(value.as_dict(), key=value.as_dict().get) == "Hedonism"


def test_evaluate_config_composes():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=["model=tiny", "adapter_dir=/x/adapter"])
    assert cfg.adapter_dir == "/x/adapter"
    assert Path(CONF / "evaluate.yaml").is_file()
