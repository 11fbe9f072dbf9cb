"""preset=study is the reference of `study_settings.differences`: a preset run differs from the study only where the
user overrides it, every setting the preset names is checked, and the README's table is generated from the preset."""
import copy

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from valharm import study


def resolved(*overrides) -> tuple[dict, dict]:
    """(the resolved config a run records, its config group choices)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra")
    return OmegaConf.to_container(cfg, resolve=True), choices


@pytest.fixture(scope="module")
def preset_run(shared_data):
    return resolved("preset=study", "model=tiny", f"paths.data_dir={shared_data}")


def test_a_preset_run_differs_from_the_study_in_its_model_only(preset_run):
    config, choices = preset_run
    assert study.differences(config, choices) == [f"model=tiny (study: one of {', '.join(study.STUDY_MODELS)})"]
    assert config["aligner"]["training"]["max_length_agreement"] == 128  # the preset sets it now
    assert config["dataset"]["path"].endswith("valueEval_10.csv")


def changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return [*value, "other"]
    if isinstance(value, dict):
        return {**value, "other": 1}
    return "other" if value is None else f"{value}x"


def set_key(config: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        config = config.setdefault(key, {})
    config[last] = value


def test_every_setting_the_preset_names_is_reported_when_changed(preset_run):
    config, choices = preset_run
    settings, groups = study.preset_parts(choices)
    keys = [k for k in settings if not k.endswith("._target_")]
    assert len(keys) > 60 and {"aligner.training.weight_decay", "benchmarks.pvq40.max_new_tokens",
                               "judge.max_tokens", "aligner.templates", "dataset.path"} <= set(keys)
    for key in keys:
        run = copy.deepcopy(config)
        set_key(run, key, changed(study.get(run, key)))
        found = study.differences(run, choices)
        assert any(d.startswith(f"{key}=") for d in found), (key, found)
        assert len(found) == 2, (key, found)  # the model, and this setting alone
    for group, name in groups.items():
        run = copy.deepcopy(config)
        run[group]["_target_"] = "valharm.elsewhere.Other"
        assert f"{group}=Other (study: {study.class_name(study.option(group, name))}, {group}={name})" in \
            study.differences(run, choices)


@pytest.mark.parametrize("override, expected", [
    ("benchmarks.pvq40.max_new_tokens=30", "benchmarks.pvq40.max_new_tokens=30 (study: 20)"),
    ("aligner.training.max_length_agreement=256", "aligner.training.max_length_agreement=256 (study: 128)"),
    ("aligner.labels=study_positional", "aligner.labels=study_positional (study: by_name)"),
    ("judge.max_tokens=256", "judge.max_tokens=256 (study: 4096)"),
    ("judge.flagging_reply=first_line", "judge.flagging_reply=first_line (study: first_paragraph)"),
    ("benchmarks.holisticbiasr.bootstrap_seed=null", "benchmarks.holisticbiasr.bootstrap_seed=None (study: 1)"),
    ("judge=local", "judge=LocalJudge (study: OpenAIJudge, judge=openai_study)"),
    ("~benchmark@benchmarks.hexphi", "benchmarks.hexphi: not run"),
])
def test_a_command_line_override_after_the_preset_is_reported(shared_data, override, expected):
    config, choices = resolved("preset=study", "model=tiny", f"paths.data_dir={shared_data}", override)
    found = study.differences(config, choices)
    assert expected in found and len(found) == 2, found


def test_other_aligners_get_no_vim_settings_and_nothing_vim_is_checked(shared_data):
    config, choices = resolved("preset=study", "model_type=icl", "model=tiny", f"paths.data_dir={shared_data}")
    assert "training" not in config["aligner"]
    assert not any(d.startswith("aligner.") for d in study.differences(config, choices))


def test_the_readme_table_is_the_presets():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings table: python -m valharm.study -->")
    end = readme.index("<!-- end of settings table -->")
    assert readme[start:end].split("\n", 1)[1].strip() == study.settings_table().strip(), \
        "README's settings table is stale: paste the output of `python -m valharm.study`"


ISSUE_ROWS = ("judge reply length", "judge reply that does not parse", "BeaverTails verdict", "VIM prompts and answers",
              "VIM stage-1 data", "VIM stage-2 labels", "truncation", "optimiser", "evaluation framing",
              "HolisticBiasR bootstrap seed", "RTP expected max toxicity")


def test_the_readme_names_each_setting_the_study_differs_in():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The study's settings"):readme.index("## Safety evaluation")]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    for what in ISSUE_ROWS:
        row = next((r for r in rows if r.startswith(f"| {what}")), None)
        assert row is not None, what
        assert len([c for c in row.split(" | ") if c.strip(" |")]) >= 4, row  # default, the study's, the override


def test_a_benchmark_on_the_shipped_sample_or_a_hub_id_is_named_so(shared_data):
    config, choices = resolved("preset=study", "model=tiny", f"paths.data_dir={shared_data}", "benchmarks.rtp.path=null")
    assert (f"benchmarks.rtp.path=None (valharm's shipped sample) (study: {shared_data}/real_toxic_prompts.csv)"
            in study.differences(config, choices))
    config["benchmarks"]["rtp"]["hub_id"] = "allenai/real-toxicity-prompts"
    assert any(d.startswith("benchmarks.rtp.path=None (hub allenai/real-toxicity-prompts)")
               for d in study.differences(config, choices))
