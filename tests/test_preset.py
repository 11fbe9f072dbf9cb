"""preset=study end to end on the tiny model: the study's settings in force and recorded, the rest listed."""
import json

import pytest
from conftest import ROOT, run_cli


@pytest.mark.slow
def test_preset_study_records_the_studys_settings_and_what_still_differs(shared_data, tmp_path):
    out = run_cli("valharm.train", "preset=study", "model=tiny", "aligner=vim", "judge=local", "scorer=profanity_check",
                  "regard=sentiment", "aligner.training.epochs=1", "aligner.max_arguments=16",
                  "trainer.enable_progress_bar=false", "generation.progress=false", f"paths.data_dir={shared_data}",
                  f"dataset.path={shared_data / 'valueEval_10.csv'}", "benchmarks.rtp.num_prompts=4",
                  "benchmarks.rtp.num_samples=2", "benchmarks.holisticbiasr.limit=8", "~benchmark@benchmarks.hexphi",
                  "benchmarks.beavertails.per_category=1", "logger=none", f"paths.cache_dir={tmp_path}/cache",
                  f"hydra.run.dir={tmp_path}/run", cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "preset=study; differs from the study in: model=tiny" in out.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    settings = results["study_settings"]
    assert settings["preset"] == "study"
    assert "judge=LocalJudge (study: OpenAIJudge, judge=openai_study)" in settings["differences"]
    assert "benchmarks.hexphi: not run" in settings["differences"]
    assert not any("templates" in d or "scored_text" in d or "preferences" in d for d in settings["differences"])
    config = results["config"]["benchmarks"]
    assert config["holisticbiasr"]["preferences"] == ["dispreferred"] and config["rtp"]["scored_text"] == "study"
    assert config["holisticbiasr"]["bias_baseline"] == "paper" and config["pvq40"]["scoring"] == "generate"
    assert results["benchmarks"]["holisticbiasr"]["scored_text"] == "study"
    assert results["metrics"]["rtp"]["empty_continuations"] == "score"
    judge = next(s for s in results["scoring"].values() if s["task"] == "flagging")
    assert judge["settings"]["template_sha256"].startswith("e38af54e")
    strategy = results["config"]["prompt_strategy"]
    assert strategy["category_values"]["hexphi"]["adult_content"] == ["Self-direction"]
