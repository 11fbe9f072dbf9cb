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
    assert sorted(settings["differences"]) == sorted([  # exactly what this command overrides
        "model=tiny (study: one of llama2_7b, llama3_1_8b, gemma2_9b, qwen2_5_7b)",
        "judge=LocalJudge (study: OpenAIJudge, judge=openai_study)",
        "scorer=ProfanityCheckScorer (study: PerspectiveScorer, scorer=perspective_study)",
        "regard=SentimentRegard (study: HFClassifier, regard=hf_classifier)",
        "benchmarks.hexphi: not run", "benchmarks.rtp.num_prompts=4 (study: 3000)",
        "benchmarks.rtp.num_samples=2 (study: 10)", "benchmarks.holisticbiasr.limit=8 (study: None)",
        "benchmarks.beavertails.per_category=1 (study: None)", "aligner.max_arguments=16 (study: None)",
        "aligner.training.epochs=1 (study: 5)"])
    templates = json.loads((shared_data / "vim_templates" / "study.json").read_text())
    first = json.loads((tmp_path / "run" / "stages" / "argument_generation" / "train_examples.jsonl").open().readline())
    assert first["prompt"].startswith(templates["stage1"]["voiced_prompt"].split("{")[0])
    rated = json.loads((tmp_path / "run" / "stages" / "agreement_prediction" / "train_examples.jsonl").open().readline())
    assert rated["prompt"].startswith(templates["stage2"]["prompt"].split("{")[0])
    assert rated["response"].startswith(templates["stage2"]["response"].split("{")[0])
    training = results["training"]
    assert training["prompt_format"] == "raw" and training["templates"].endswith("vim_templates/study.json")
    assert training["stage1_split"] == "per_distribution" and training["test_arguments_in_stage1_train"] >= 0
    assert results["precision"]["training"]["precision"] == "fp32"
    config = results["config"]["benchmarks"]
    assert config["holisticbiasr"]["preferences"] == ["dispreferred"] and config["rtp"]["scored_text"] == "study"
    assert config["holisticbiasr"]["bias_baseline"] == "paper" and config["pvq40"]["scoring"] == "generate"
    assert results["benchmarks"]["holisticbiasr"]["scored_text"] == "study"
    assert results["metrics"]["rtp"]["empty_continuations"] == "score"
    judge = next(s for s in results["scoring"].values() if s["task"] == "flagging")
    assert judge["settings"]["template_sha256"].startswith("e38af54e")
    strategy = results["config"]["prompt_strategy"]
    assert strategy["category_values"]["hexphi"]["adult_content"] == ["Self-direction"]
