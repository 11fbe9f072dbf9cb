import random
from collections import Counter

import pandas as pd
import pytest

from valharm.aligners.vim import agreement_example, argument_example, argument_score, build_examples, sample_rating
from valharm.questionnaire import parse_rating
from valharm.values import VALUES, custom, extreme


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
    stage1, stage2, _ = build_examples(frame, extreme("power"), threshold=3, seed=42, score_rule="mean")
    assert [e.response.startswith("I would say") for e in stage1] == [True, False]
    assert stage2[0].response in ("3. Power is a little important to me.", "4. Power is somewhat important to me.")
    assert stage2[1].response == "1. Universalism is not important at all to me."
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


def test_stage2_rates_by_the_lowest_labelled_value_read_by_column():
    scores = custom(vector=[6, 2, 1, 1, 1, 1, 1, 1, 1, 4]).as_dict()   # Achievement 6, Benevolence 2, Universalism 4
    example = agreement_example(row("against", Achievement=1, Universalism=1), 4, scores, random.Random(0))
    assert "I disagree that we should ban zoos. wild animals belong in nature" in example.prompt
    assert example.response == "4. Universalism is somewhat important to me."
    example = agreement_example(row("in favor of", Achievement=1), 6, scores, random.Random(0))
    assert example.response == "6. Achievement is very important to me."


def test_stage2_rating_is_floor_or_ceiling_weighted_by_fraction():
    rng = random.Random(42)
    draws = Counter(sample_rating(4.25, rng) for _ in range(4000))
    assert set(draws) == {4, 5}
    assert draws[5] / 4000 == pytest.approx(0.25, abs=0.03)
    assert {sample_rating(3.0, rng) for _ in range(50)} == {3}


def test_build_examples_skips_unlabelled_and_is_seeded():
    frame = pd.DataFrame([row(Power=1), row(), row("against", Hedonism=1, Power=1)])
    value = custom(vector=[1, 1, 1, 3.5, 5.5, 1, 1, 1, 1, 1])
    stage1, stage2, skipped = build_examples(frame, value, threshold=3, seed=42)
    assert skipped == 1 and len(stage1) == 2 and len(stage2) == 2
    assert parse_rating(stage2[0].response) in (5, 6)  # Power 5.5: floor or ceiling
    assert "Hedonism" in stage2[1].response  # 3.5 < 5.5: Hedonism sets the target
    assert stage1[0].response.startswith("I would say") and stage1[1].response.startswith("I would say")
    assert build_examples(frame, value, 3, 42)[1] == stage2


def test_examples_from_a_real_touche_row(shared_data):
    from valharm.data.touche import load_arguments

    first = load_arguments(str(shared_data / "valueEval_10.csv")).iloc[[0]]  # cloning ban, in favor, Security only
    stage1, stage2, _ = build_examples(first, extreme("security"), threshold=3, seed=42)
    assert stage1[0].response.startswith('I would say: "I agree with this, because we should ban human cloning')
    assert stage2[0].response == "6. Security is very important to me."
    stage1, stage2, _ = build_examples(first, extreme("power"), threshold=3, seed=42)
    assert stage1[0].response.startswith('I would not say: "I agree with this')
    assert stage2[0].response == "1. Security is not important at all to me."


def test_vim_on_real_data_voices_exactly_the_arguments_power_alone_labels(shared_data):
    """Stage-1 counts on the real training split, against a count made here from the study's own split file."""
    import pandas as pd
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from conftest import ROOT
    from valharm.values import VALUES

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
    assert voiced > 0 and len(stage2) == len(stage1) and voiced + never + skipped == 5899
