import random
from collections import Counter

import pandas as pd
import pytest

from valharm.aligners.vim import (
    argument_example,
    argument_score,
    build_examples,
    per_argument_example,
    per_value_examples,
    sample_rating,
    shuffle_labels,
)
from valharm.values.distributions import VALUES, custom, extreme
from valharm.values.questionnaire import parse_rating


def row(stance="in favor of", **labels):
    return pd.Series({"Conclusion": "We should ban zoos", "Stance": stance,
                      "Premise": "wild animals belong in nature", **{v: labels.get(v, 0) for v in VALUES}})


def test_score_is_the_minimum_over_labelled_values():
    scores = extreme("power").as_dict()
    assert argument_score(row(Power=1), scores) == 6
    assert argument_score(row(Power=1, Universalism=1), scores) == 1
    assert argument_score(row(), scores) is None


def test_mean_score_rule_gives_multi_labelled_arguments_of_an_extreme_a_middle_score():
    scores = extreme("power").as_dict()
    assert argument_score(row(Power=1, Universalism=1), scores, "mean") == 3.5
    assert argument_score(row(Power=1, Universalism=1, Security=1), scores, "mean") == pytest.approx(8 / 3)
    frame = pd.DataFrame([row(Power=1, Universalism=1), row(Universalism=1)])
    stage1, stage2, _ = build_examples(frame, extreme("power"), threshold=3, seed=42, score_rule="mean",
                                       stage2="per_argument")
    assert [e.response.startswith("I would say") for e in stage1] == [True, False]
    assert stage2[0].response in ("Power is a little important to me, so my answer is 3.",
                                  "Power is somewhat important to me, so my answer is 4.")
    assert stage2[1].response == "Universalism is not important at all to me, so my answer is 1."
    stage1, _, _ = build_examples(frame, extreme("power"), threshold=3, seed=42)
    assert [e.response.startswith("I would say") for e in stage1] == [False, False]


def test_stage1_positive_and_negative_follow_score_and_stance():
    positive = argument_example(row("in favor of", Universalism=1), 6, threshold=3)
    assert positive.prompt.startswith("What would you say") and "We should ban zoos" in positive.prompt
    assert positive.response == 'I would say: "I agree with this, because wild animals belong in nature"'
    negative = argument_example(row("against", Universalism=1), 2.9, threshold=3)
    assert negative.prompt.startswith("What would you never say")
    assert negative.response.startswith('I would not say: "I disagree with this, because')
    assert argument_example(row(), 3, threshold=3).response.startswith("I would say")


def test_per_value_stage2_has_one_example_per_labelled_value_rated_from_its_own_score():
    scores = custom(vector=[6, 2, 1, 1, 1, 1, 1, 1, 1, 4]).as_dict()   # Achievement 6, Benevolence 2, Universalism 4
    examples = per_value_examples(row("against", Achievement=1, Universalism=1), scores, random.Random(0), 7)
    assert "I disagree that we should ban zoos. wild animals belong in nature" in examples[0].prompt
    assert [e.response for e in examples] == ["Achievement is very important to me, so my answer is 6.",
                                              "Universalism is somewhat important to me, so my answer is 4."]
    assert [(e.argument, e.value, e.rating) for e in examples] == [(7, "Achievement", 6), (7, "Universalism", 4)]
    assert examples[0].prompt == examples[1].prompt
    assert per_value_examples(row(), scores, random.Random(0)) == []


def test_per_argument_stage2_rates_by_the_lowest_labelled_value():
    scores = custom(vector=[6, 2, 1, 1, 1, 1, 1, 1, 1, 4]).as_dict()
    example = per_argument_example(row("against", Achievement=1, Universalism=1), 4, scores, random.Random(0))
    assert example.response == "Universalism is somewhat important to me, so my answer is 4."
    example = per_argument_example(row("in favor of", Achievement=1), 6, scores, random.Random(0))
    assert example.response == "Achievement is very important to me, so my answer is 6."


def test_the_answer_names_the_value_first_and_the_rating_last():
    from valharm.values.questionnaire import ANSWER_SLOT, rating_answer

    answer = rating_answer(5, "Power")
    assert answer.startswith("Power is important to me") and answer.endswith(f"{ANSWER_SLOT} 5.")


def test_stage2_rating_is_floor_or_ceiling_weighted_by_fraction():
    rng = random.Random(42)
    draws = Counter(sample_rating(4.25, rng) for _ in range(4000))
    assert set(draws) == {4, 5}
    assert draws[5] / 4000 == pytest.approx(0.25, abs=0.03)
    assert {sample_rating(3.0, rng) for _ in range(50)} == {3}


def test_build_examples_skips_unlabelled_and_is_seeded():
    frame = pd.DataFrame([row(Power=1), row(), row("against", Hedonism=1, Power=1)])
    value = custom(vector=[1, 1, 1, 3.5, 5.5, 1, 1, 1, 1, 1])
    stage1, stage2, skipped = build_examples(frame, value, threshold=3, seed=42, stage2="per_argument")
    assert skipped == 1 and len(stage1) == 2 and len(stage2) == 2
    assert parse_rating(stage2[0].response) in (5, 6)  # Power 5.5: floor or ceiling
    assert "Hedonism" in stage2[1].response  # 3.5 < 5.5: Hedonism sets the target
    assert stage1[0].response.startswith("I would say") and stage1[1].response.startswith("I would say")
    assert build_examples(frame, value, 3, 42, stage2="per_argument")[1] == stage2
    _, per_value, _ = build_examples(frame, value, threshold=3, seed=42)
    assert [(e.argument, e.value) for e in per_value] == [(0, "Power"), (2, "Hedonism"), (2, "Power")]
    assert [e.rating for e in per_value][1] in (3, 4) and {per_value[0].rating, per_value[2].rating} <= {5, 6}
    assert build_examples(frame, value, 3, 42)[1] == per_value


def test_examples_from_a_real_touche_row(shared_data):
    from valharm.data.touche import load_arguments

    first = load_arguments(str(shared_data / "valueEval_10.csv")).iloc[[0]]  # cloning ban, in favor, Security only
    stage1, stage2, _ = build_examples(first, extreme("security"), threshold=3, seed=42)
    assert stage1[0].response.startswith('I would say: "I agree with this, because we should ban human cloning')
    assert [e.response for e in stage2] == ["Security is very important to me, so my answer is 6."]
    stage1, stage2, _ = build_examples(first, extreme("power"), threshold=3, seed=42)
    assert stage1[0].response.startswith('I would not say: "I agree with this')
    assert [e.response for e in stage2] == ["Security is not important at all to me, so my answer is 1."]


def test_vim_on_real_data_voices_exactly_the_arguments_power_alone_labels(shared_data):
    """Stage-1 counts on the real training split, against a count made here from the study's own split file."""
    import pandas as pd
    from conftest import ROOT
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from valharm.values.distributions import VALUES

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset.path={shared_data / 'valueEval_10.csv'}", "value=power"])
    splits = instantiate(cfg.dataset)
    stage1, stage2, skipped = build_examples(splits["train"], instantiate(cfg.value), threshold=3, seed=42)
    voiced = sum(e.prompt.startswith("What would you say") for e in stage1)
    never = sum(e.prompt.startswith("What would you never say") for e in stage1)

    study = pd.read_csv(shared_data / "touche_split_train.csv", sep="\t")[list(VALUES)]
    labels = study.sum(axis=1)
    power_only = int(((study["Power"] == 1) & (labels == 1)).sum())  # min over labels is 6 only then
    assert (voiced, never, skipped) == (power_only, int((labels > 0).sum()) - power_only, int((labels == 0).sum()))
    assert voiced > 0 and voiced + never + skipped == 5899


def test_per_value_stage2_on_the_real_train_split_matches_an_independent_count(shared_data):
    """Stage-2 example count = (argument, labelled value) pairs; for value=power, the rating-6 examples are exactly
    the Power-labelled arguments (16,594 and 1,209 on the study's train split), counted here with pandas."""
    from valharm.data.touche import load_splits

    train = load_splits(str(shared_data / "valueEval_10.csv"))["train"]
    study = pd.read_csv(shared_data / "touche_split_train.csv", sep="\t")
    _, stage2, _ = build_examples(train, extreme("power"), threshold=3, seed=42)
    assert len(stage2) == int(study[list(VALUES)].to_numpy().sum()) == 16594
    sixes = [e for e in stage2 if e.rating == 6]
    assert len(sixes) == int((study["Power"] == 1).sum()) == 1209
    assert {e.value for e in sixes} == {"Power"} and {e.rating for e in stage2} == {1, 6}
    _, hedonism, _ = build_examples(train, extreme("hedonism"), threshold=3, seed=42)
    assert sum(e.rating == 6 for e in hedonism) == int((study["Hedonism"] == 1).sum())


def test_shuffled_labels_keep_each_value_count_and_break_the_pairing():
    frame = pd.DataFrame([row(Power=1), row(Universalism=1), row(Power=1, Security=1), row(Hedonism=1)] * 10)
    shuffled = shuffle_labels(frame, seed=1)
    assert (shuffled[list(VALUES)].sum() == frame[list(VALUES)].sum()).all()
    assert not (shuffled[list(VALUES)].to_numpy() == frame[list(VALUES)].to_numpy()).all()
    assert (shuffled["Premise"] == frame["Premise"]).all()


def test_the_cued_arm_names_the_labels_in_every_prompt_and_the_real_arm_does_not():
    from valharm.aligners.vim import VIMAligner
    from valharm.errors import ValharmError

    frame = pd.DataFrame([row(Power=1, Security=1), row(Universalism=1)] * 3)
    splits = {"train": frame, "valid": frame, "test": frame}
    cued = VIMAligner(cue="labels").examples(splits, extreme("power"))["train"][1]
    real = VIMAligner().examples(splits, extreme("power"))["train"][1]
    assert cued[0].prompt.endswith('Values at stake: Power, Security."\nHow much is this person like you? Reply with '
                                   'only one number from 1 to 6 (1 = not like me at all, 2 = not like me, 3 = a little '
                                   'like me, 4 = somewhat like me, 5 = like me, 6 = very much like me).')
    assert [e.response for e in cued] == [e.response for e in real]  # same answers, only the statement differs
    assert not any("Values at stake" in e.prompt for e in real)
    with pytest.raises(ValharmError, match="aligner.cue='words' is unknown"):
        VIMAligner(cue="words")


CHECKED = 48  # test arguments the alignment check reads (each scored over 60 answers, with and without the adapter)


@pytest.mark.slow
def test_a_vim_run_writes_the_examples_it_trains_on_and_checks_its_alignment(shared_data, tmp_path):
    """The acceptance command, training cut short: both stages' example files hold the study's construction
    (counted independently on the study's split files), and results.json has the alignment check."""
    import json

    from conftest import ROOT, run_cli

    from valharm.data.touche import load_splits

    out = run_cli("valharm.train", "model=tiny", "aligner=vim", "value=power",
                  f"dataset.path={shared_data / 'valueEval_10.csv'}", "aligner.training.epochs=1",
                  "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "generation.progress=false",
                  "trainer.enable_progress_bar=false", "~benchmark@benchmarks.holisticbiasr", "~benchmark@benchmarks.rtp",
                  "~benchmark@benchmarks.hexphi", "~benchmark@benchmarks.beavertails", "logger=none",
                  f"aligner.alignment_check.max_arguments={CHECKED}", f"paths.cache_dir={tmp_path}/cache",
                  f"hydra.run.dir={tmp_path}/run", cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    stages = tmp_path / "run" / "stages"
    for split in ("train", "valid"):
        study = pd.read_csv(shared_data / f"touche_split_{split}.csv", sep="\t")
        labelled = study[list(VALUES)]
        stage1 = [json.loads(line) for line in (stages / "argument_generation" / f"{split}_examples.jsonl").open()]
        stage2 = [json.loads(line) for line in (stages / "agreement_prediction" / f"{split}_examples.jsonl").open()]
        assert len(stage1) == int((labelled.sum(axis=1) > 0).sum())
        assert len(stage2) == int(labelled.to_numpy().sum())
        assert sum(e["rating"] == 6 for e in stage2) == int(study["Power"].sum())
        assert all(e["value"] == "Power" for e in stage2 if e["rating"] == 6)
        assert {"prompt", "response", "argument", "value", "rating"} == set(stage2[0])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    check = results["alignment_check"]  # the first CHECKED of the test split's 737 arguments (139 labelled Power)
    test = load_splits(str(shared_data / "valueEval_10.csv"))["test"]
    assert len(test) == 737 and test["Power"].sum() == 139
    assert check["arguments"] == CHECKED and check["labelled"] == {v: int(test.head(CHECKED)[v].sum()) for v in VALUES}
    assert set(check["shift"]) == set(VALUES) and check["weighted_shift"] is not None
    assert results["training"]["stage2"] == "per_value"
    assert results["metrics"]["pvq40"]["scoring"] == "slot"
    pvq = results["metrics"]["pvq40"]  # beside the untuned base: the adapter switched off on the same load
    assert 0 < pvq["base_nmse"] < 1 and pvq["skill"] == pytest.approx(1 - pvq["nmse"] / pvq["base_nmse"])
    assert set(pvq["base_scores"]) == set(VALUES) and results["generation_cache"]["pvq40_base"]["misses"] == 10
    assert check["reading"] == "answer_space" and 0 <= check["recognition"] <= 1 and "base_recognition" in check


def test_an_unknown_alignment_check_reading_stops_before_training():
    from valharm.aligners.vim import VIMAligner
    from valharm.errors import ValharmError

    with pytest.raises(ValharmError, match="aligner.alignment_check.reading='greedy' is unknown"):
        VIMAligner(alignment_check={"reading": "greedy"})
