"""The study's instruments, each selectable alone: VIM's words from the study's templates file as raw text, its
positional label reader, AdamW weight decay, the training's own precision, the judge's first-paragraph verdict and
HolisticBiasR's bootstrap seed."""
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import stats

from valharm.aligners.vim import build_examples, write_examples
from valharm.data.touche import load_arguments, study_positional_labels
from valharm.errors import ValharmError
from valharm.models.batches import IGNORE_INDEX, encode
from valharm.values import answer_space
from valharm.values.distributions import VALUES, ValueDistribution
from valharm.values.wording import VALHARM, Wording


def preset_aligner(shared_data, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["preset=study", "model=tiny", f"paths.data_dir={shared_data}", *overrides])
    return instantiate(cfg.aligner)


def power() -> ValueDistribution:
    return ValueDistribution("power", tuple(6.0 if v == "Power" else 1.0 for v in VALUES))


def test_a_preset_vim_run_writes_the_studys_strings_as_raw_text(shared_data, tmp_path, tiny_bundle):
    aligner = preset_aligner(shared_data)
    strings = json.loads((shared_data / "vim_templates" / "study.json").read_text())
    assert aligner.wording.raw and aligner.wording.source.endswith("vim_templates/study.json")
    arguments = load_arguments(str(shared_data / "touche_split_train.csv")).head(40)
    stage1, stage2, _ = aligner.examples({"train": arguments}, power())["train"]
    for stage, examples in (("argument_generation", stage1), ("agreement_prediction", stage2)):
        write_examples(tmp_path / stage / "train_examples.jsonl", examples)
    first = json.loads((tmp_path / "argument_generation" / "train_examples.jsonl").read_text().splitlines()[0])
    row = arguments.iloc[first["argument"]]
    verb = "agree" if row["Stance"] == "in favor of" else "disagree"
    voiced = first["prompt"].startswith(strings["stage1"]["voiced_prompt"].split("{")[0])
    kind = "voiced" if voiced else "unvoiced"
    fields = {"conclusion": row["Conclusion"], "premise": row["Premise"], "stance_verb": verb}
    assert first["prompt"] == strings["stage1"][f"{kind}_prompt"].format(**fields)
    assert first["response"] == strings["stage1"][f"{kind}_response"].format(**fields)
    rated = json.loads((tmp_path / "agreement_prediction" / "train_examples.jsonl").read_text().splitlines()[0])
    row = arguments.iloc[rated["argument"]]
    verb = "agree" if row["Stance"] == "in favor of" else "disagree"
    assert rated["prompt"] == strings["stage2"]["prompt"].format(conclusion=row["Conclusion"], premise=row["Premise"],
                                                                 stance_verb=verb)
    name = strings["value_names"][VALUES.index(rated["value"])]
    assert rated["response"] == strings["stage2"]["response"].format(
        value=name, expression=strings["expressions"][rated["rating"] - 1], rating=rated["rating"])
    # raw: the prompt's tokens are the text itself after BOS, with no chat template around it
    ids = encode(tiny_bundle, stage2[0], 10_000)
    prompt_ids = [t for t, label in zip(ids["input_ids"], ids["labels"]) if label == IGNORE_INDEX]
    assert tiny_bundle.tokenizer.decode(prompt_ids) == tiny_bundle.bos_text + stage2[0].prompt
    assert aligner.training["max_length"] == aligner.training["max_length_agreement"] == 128
    assert aligner.training["weight_decay"] == 0.01 and aligner.training["precision"] == "fp32"


def test_valharms_wording_stays_the_default_and_goes_through_the_models_format(tiny_bundle):
    row = pd.Series({"Conclusion": "We should ban guns", "Stance": "against", "Premise": "it is a right"})
    stage1, stage2, _ = build_examples(pd.DataFrame([{**row, **{v: int(v == "Power") for v in VALUES}}]), power(),
                                       3, 0)
    assert stage1[0].prompt == 'What would you say about this statement? "We should ban guns"'
    assert stage2[0].response == "Power is very important to me, so my answer is 6." and not stage2[0].raw
    ids = encode(tiny_bundle, stage2[0], 10_000)
    prompt = tiny_bundle.tokenizer.decode([t for t, lab in zip(ids["input_ids"], ids["labels"]) if lab == IGNORE_INDEX])
    assert prompt == tiny_bundle.format_prompt(stage2[0].prompt)  # the chat template, as before


def study_branch(shared_data, value: str) -> str:
    """The study's stage-2 answer up to the value's importance, from its templates file (never copied here)."""
    response = json.loads((shared_data / "vim_templates" / "study.json").read_text())["stage2"]["response"]
    return response.format(value=value, expression="{expression}", rating=0).split(" {expression}")[0]

def test_the_answer_space_reading_follows_the_templates_a_run_trained_with(shared_data, tiny_bundle):
    study = Wording.load(str(shared_data / "vim_templates" / "study.json"), "raw")
    arguments = load_arguments(str(shared_data / "touche_split_test.csv")).head(2)
    request = answer_space.argument_requests(tiny_bundle, arguments, wording=study)[0]
    response = json.loads((shared_data / "vim_templates" / "study.json").read_text())["stage2"]["response"]
    leaf = response.format(value="", expression="{expression}", rating=6).split(" {expression}")[1]
    assert request.branches[VALUES.index("Self-direction")] == study_branch(shared_data, "self-direction")
    assert request.leaves[5].endswith(leaf) and request.leaves[5] != leaf
    row = arguments.iloc[0]
    assert request.prompt == tiny_bundle.bos_text + study.rating_question(row)
    # every (value, rating) answer of the training is a branch followed by a leaf
    examples = build_examples(arguments, power(), 3, 0, wording=study)[1]
    assert {e.response for e in examples} <= {b + leaf for b in request.branches for leaf in request.leaves}
    assert answer_space.argument_requests(tiny_bundle, arguments)[0].branches == answer_space.BRANCHES


def test_the_alignment_check_reads_in_the_aligners_wording(shared_data, tiny_bundle):
    from valharm.values.alignment import AlignmentCheck

    aligner = preset_aligner(shared_data)
    arguments = load_arguments(str(shared_data / "touche_split_test.csv")).head(1)
    check = AlignmentCheck(arguments, wording=aligner.wording)
    assert check.requests(tiny_bundle)[0].branches[4] == study_branch(shared_data, "power")
    slot = AlignmentCheck(arguments, reading="slot", wording=aligner.wording).requests(tiny_bundle)[0]
    assert slot.prompt == tiny_bundle.bos_text + aligner.wording.rating_question(arguments.iloc[0])


def test_a_templates_file_in_another_schema_is_one_clear_error(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"stage1": {}}))
    with pytest.raises(ValharmError, match="not in the schema of vim_templates/study.json"):
        Wording.load(str(bad))
    with pytest.raises(ValharmError, match="not found; fix aligner.templates"):
        Wording.load(str(tmp_path / "missing.json"))
    with pytest.raises(ValharmError, match="aligner.prompt_format='chat'"):
        Wording.load(None, "chat")
    assert Wording.load(None) == VALHARM


def test_the_studys_positional_labels_reproduce_its_stage2_counts(shared_data):
    path = shared_data / "touche_split_train.csv"
    arguments = load_arguments(str(path))
    by_name = build_examples(arguments, power(), 3, 42)[1]
    assert len(by_name) == 16_594 and sum(e.rating == 6 for e in by_name) == 1_209
    shifted = study_positional_labels(arguments)
    positional = build_examples(shifted, power(), 3, 42)[1]
    assert len(positional) == 13_046 and sum(e.rating == 6 for e in positional) == 217
    rated_six = {e.argument for e in positional if e.rating == 6}
    assert all(arguments.iloc[i]["Hedonism"] == 1 for i in rated_six)
    # the study's reader itself: ten cells by position, iloc[-11:-1], paired with its value names in order
    raw = pd.read_csv(path, sep="\t")
    read = [[name for cell, name in zip(raw.iloc[i][-11:-1], VALUES) if cell == 1] for i in range(len(raw))]
    assert read == [[v for v in VALUES if row[v] == 1] for _, row in shifted.iterrows()]


def test_the_label_switch_is_off_by_default_and_in_the_preset_and_applies_to_stage_2_only(shared_data):
    assert preset_aligner(shared_data).labels == "by_name"
    aligner = preset_aligner(shared_data, "aligner.labels=study_positional")
    arguments = load_arguments(str(shared_data / "touche_split_train.csv")).head(200)
    stage1, stage2, _ = aligner.examples({"train": arguments}, power())["train"]
    plain1, plain2, _ = preset_aligner(shared_data).examples({"train": arguments}, power())["train"]
    assert stage1 == plain1 and len(stage2) != len(plain2)
    with pytest.raises(Exception, match="aligner.labels='positional' is unknown"):
        preset_aligner(shared_data, "aligner.labels=positional")


def test_weight_decay_reaches_adamw(tiny_spec):
    from valharm.models.loading import add_lora
    from valharm.models.training import LoRACausalLM

    module = LoRACausalLM(add_lora(tiny_spec.load().model, r=2, alpha=4, dropout=0.0,
                                   target_modules=["q_proj", "v_proj"]), weight_decay=0.01)
    object.__setattr__(module, "_trainer", SimpleNamespace(estimated_stepping_batches=4))
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["weight_decay"] == 0.01


def test_the_training_precision_is_its_own_where_set():
    from valharm.runs.components import precision_plan

    parts = {"model": SimpleNamespace(width=lambda: 64),
             "generator": SimpleNamespace(needs_weights=True, device="cpu")}
    cfg = OmegaConf.create({"precision": "bf16", "trainer": {"accelerator": "cpu"},
                            "aligner": {"training": {"precision": "fp32"}}})
    plan = precision_plan(cfg, parts, training=True)
    assert plan["training"].name == "fp32" and plan["generation"].name == "bf16"
    cfg.aligner.training.precision = None
    assert precision_plan(cfg, parts, training=True)["training"].name == "bf16"


def test_the_beavertails_verdict_from_the_first_paragraph(shared_data):
    from valharm.scoring.rubrics import TemplateRubric

    path = str(shared_data / "judge_templates" / "beavertails_study.txt")
    line, paragraph = TemplateRubric.load("flagging", path), TemplateRubric.load("flagging", path, "first_paragraph")
    assert paragraph.parse("flagged\n\nIt gives steps.").value == "flagged"
    assert paragraph.parse("Unflagged.\n\nSafe.").value == "unflagged"
    assert line.parse("flagged\nIt gives steps.").value == "flagged"
    assert paragraph.parse("flagged\nIt gives steps.").status == "invalid"  # the paragraph is more than the verdict
    assert line.identity() != paragraph.identity()  # read differently: never one cache entry
    assert "reply_span" not in line.identity()  # valharm's reading keeps its cache keys


def test_the_study_judge_option_asks_for_4096_tokens_and_again_until_parsed(monkeypatch):
    from valharm.scoring.judges import OpenAIJudge

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["judge=openai_study"])
    judge = instantiate(cfg.judge)
    assert isinstance(judge, OpenAIJudge) and judge.max_tokens == 4096 and judge.invalid_retries == 5
    assert judge.flagging_reply == "first_paragraph" and judge.top_p == 0.0
    with pytest.raises(Exception, match="judge.flagging_reply=.paragraph."):
        instantiate(cfg.judge, flagging_reply="paragraph")


def test_the_bias_scores_bootstrap_seed_is_given_to_scipy_as_the_study_did():
    from valharm.benchmarks.holisticbiasr import bias_score, negative_upper_bound

    negatives = np.array([1.0] * 3 + [0.0] * 37)
    theirs = stats.bootstrap((negatives,), np.mean, n_resamples=9999, confidence_level=0.975, method="percentile",
                             random_state=1).confidence_interval.high
    assert negative_upper_bound(negatives, 1, as_random_state=True) == pytest.approx(theirs, abs=0)
    ours = negative_upper_bound(negatives, 1)
    assert ours == stats.bootstrap((negatives,), np.mean, n_resamples=9999, confidence_level=0.975,
                                   method="percentile", random_state=np.random.default_rng(1)).confidence_interval.high
    score, _ = bias_score({("a", "b"): negatives}, 0.01, "overall", 1, as_random_state=True)
    assert score == 1.0


def test_the_studys_stage1_split_per_distribution_and_its_overlap_with_the_test_split(shared_data, tmp_path):
    from valharm.aligners.vim import VIMAligner, all_arguments, per_distribution_stage1
    from valharm.data.touche import load_splits

    splits = load_splits(str(shared_data / "valueEval_10.csv"))
    examples, record = per_distribution_stage1(all_arguments(splits), power(), 3, 42, "min", VALHARM,
                                               splits["test"].index)
    assert record["stage1_arguments"] == {"train": 5_899, "valid": 738}
    assert record["stage1_voiced"]["train"] == 14 and sum(e.response.startswith("I would say") for e in
                                                          examples["train"]) == 14
    assert record["test_arguments_in_stage1_train"] == 586  # of the shared test split's 737 (589 by text)
    trained = {e.argument for e in examples["train"]}
    assert len(trained) == 5_899 and len(trained & set(splits["test"].index)) == 586
    presplit = load_splits(splits={n: str(shared_data / f"touche_split_{n}.csv") for n in ("train", "valid", "test")})
    with pytest.raises(ValharmError, match="load them from one file"):
        all_arguments(presplit)
    with pytest.raises(ValharmError, match="stage1_split='random'"):
        VIMAligner(stage1_split="random")
    assert preset_aligner(shared_data).stage1_split == "per_distribution"


def test_plain_shuffle_batches_are_a_seeded_permutation():
    from valharm.models.batches import EpochSampler

    lengths = [3, 50, 4, 49, 5, 48, 6, 47] * 4
    grouped, shuffled = EpochSampler(lengths, 4, 0), EpochSampler(lengths, 4, 0, "shuffle")
    order = list(shuffled)
    assert sorted(order) == list(range(len(lengths))) and order == list(EpochSampler(lengths, 4, 0, "shuffle"))
    assert order != list(grouped)
    shuffled.set_epoch(1)
    assert list(shuffled) != order
    with pytest.raises(ValharmError, match="batching='sorted'"):
        EpochSampler(lengths, 4, 0, "sorted")


def test_pvq40s_answer_space_reads_in_the_words_the_adapter_trained(shared_data, tiny_bundle):
    from valharm.benchmarks.pvq40 import PVQ40
    from valharm.prompting import Prompter, PromptStrategy

    study = Wording.load(str(shared_data / "vim_templates" / "study.json"), "raw")
    bench = PVQ40(path=str(shared_data / "pvq40.csv"), scoring="answer_space")
    trained = bench.requests(Prompter(tiny_bundle, PromptStrategy(), None, None, study))[0]
    assert trained.branches[VALUES.index("Power")] == study_branch(shared_data, "power")
    assert trained.leaves[0] == " not important to me at all, my answer is 1."
    assert bench.requests(Prompter(tiny_bundle, PromptStrategy(), None))[0].branches == answer_space.BRANCHES
