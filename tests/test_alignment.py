"""Alignment metrics (contrasts, crossover, intervals, the validation levels) on numbers with a known answer, and the
after-training check on an adapter planted to rate one value's arguments 6."""
import numpy as np
import pandas as pd
import pytest

from valharm.errors import ValharmError
from valharm.values import validation
from valharm.values.alignment import AlignmentCheck, contrast, crossover, crossover_interval, weighted_shift
from valharm.values.distributions import VALUES, extreme


def test_contrast_and_crossover_by_hand():
    ratings = np.array([6.0, 5.0, 2.0, 1.0])
    assert contrast(ratings, np.array([1, 1, 0, 0])) == pytest.approx(4.0)
    assert contrast(ratings, np.array([1, 1, 1, 1])) is None and contrast(ratings, np.zeros(4)) is None
    run_a, run_b = np.array([6.0, 6.0, 1.0, 1.0]), np.array([1.0, 1.0, 6.0, 6.0])
    a, b = np.array([1, 1, 0, 0]), np.array([0, 0, 1, 1])
    # D_a(run a) = 5, D_a(run b) = -5, D_b(run b) = 5, D_b(run a) = -5
    assert crossover(run_a, run_b, a, b) == pytest.approx(20.0)
    assert crossover(run_a, run_a, a, b) == 0


def test_weighted_shift_is_the_target_shift_minus_the_others_for_an_extreme():
    shifts = {v: 0.1 for v in VALUES} | {"Power": 1.1}
    assert weighted_shift(shifts, extreme("power").as_dict()) == pytest.approx(1.0)
    assert weighted_shift(shifts, {v: 3.0 for v in VALUES}) is None  # a flat target has no direction
    assert weighted_shift({v: None for v in VALUES}, extreme("power").as_dict()) is None


def synthetic(effect: float, n: int = 400, seed: int = 0):
    """Ratings of n arguments by vanilla and by runs aligned to Power and Universalism: each aligned run rates its
    own value's arguments `effect` higher; noise everywhere."""
    rng = np.random.default_rng(seed)
    labels = pd.DataFrame({v: rng.random(n) < p for v, p in zip(VALUES, np.linspace(0.1, 0.5, len(VALUES)))}).astype(int)
    base = 3 + rng.normal(0, 0.5, n)

    def run(value, size):
        return base + size * labels[value].to_numpy() + rng.normal(0, 0.5, n)

    ratings = {"vanilla": base + rng.normal(0, 0.5, n), "power": run("Power", effect),
               "universalism": run("Universalism", effect), "power_shuffled": base + rng.normal(0, 0.1, n),
               "universalism_shuffled": base + rng.normal(0, 0.1, n)}
    return ratings, labels


def test_crossover_recovers_a_planted_effect_and_stays_near_zero_without_one():
    ratings, labels = synthetic(effect=1.0)
    a, b = labels["Power"].to_numpy(), labels["Universalism"].to_numpy()
    cc = crossover(ratings["power"], ratings["universalism"], a, b)
    low, high = crossover_interval(ratings["power"], ratings["universalism"], a, b, resamples=1000)
    assert cc == pytest.approx(2.0, abs=0.3) and low < cc < high and low > 1.0  # 2 x the planted effect
    null, _ = synthetic(effect=0.0, seed=1)
    cc = crossover(null["power"], null["universalism"], a, b)
    low, high = crossover_interval(null["power"], null["universalism"], a, b, resamples=1000)
    assert abs(cc) < 0.3 and low < 0 < high


def test_m1_passes_a_planted_effect_and_fails_a_null_one():
    ratings, labels = synthetic(effect=1.0)
    m1 = validation.level_m1(ratings, labels, ("Power", "Universalism"), 0.5, 0.15, resamples=500, seed=0)
    assert m1["pass"] and m1["control"]["within_margin"] and m1["crossover"]["cc"] > 1.5
    null, _ = synthetic(effect=0.0)
    assert not validation.level_m1(null, labels, ("Power", "Universalism"), 0.5, 0.15, 500, 0)["pass"]
    leaky = dict(ratings, power_shuffled=ratings["power"], universalism_shuffled=ratings["universalism"])
    control = validation.level_m1(leaky, labels, ("Power", "Universalism"), 0.5, 0.15, 500, 0)
    assert not control["pass"] and not control["control"]["within_margin"]  # the control catches it


def test_value_table_nmse_and_the_verdict_names_the_first_failing_level():
    six = [np.log(p) for p in (0.01, 0.01, 0.01, 0.01, 0.01, 0.95)]
    one = [np.log(p) for p in (0.95, 0.01, 0.01, 0.01, 0.01, 0.01)]
    outputs = [six if v == "Power" else one for _ in range(3) for v in VALUES]
    table = validation.value_table(outputs, contexts=3)
    assert table["Power"] > 5.8 and table["Security"] < 1.2
    targets = {"power": extreme("power").as_dict(), "universalism": extreme("universalism").as_dict()}
    m0b = validation.level_m0b({"vanilla": {v: 3.0 for v in VALUES}, "power": table}, targets, 0.05, judged=["power"])
    assert m0b["pass"] and m0b["runs"]["power"]["nmse"] < 0.01 and m0b["runs"]["power"]["vanilla_nmse"] == pytest.approx(0.18)
    # the target-blind null answers the mean of the two targets (3.5 for Power and Universalism, 1 elsewhere)
    assert m0b["runs"]["power"]["null_nmse"] == pytest.approx(0.05) and "universalism" not in m0b["runs"]
    levels = {"M0": {"pass": True}, "M0b": {"pass": True}, "M1": {"pass": False}, "M2": {"pass": False}}
    assert validation.verdict(levels)["fails_at"] == "M1"
    assert validation.verdict({k: {"pass": True} for k in levels})["fails_at"] is None


def test_alignment_check_shows_the_shift_of_an_adapter_planted_to_rate_power_arguments_6(tiny_bundle):
    """An adapter trained to answer "Power ... 6" to Power-labelled arguments and "Power ... 1" to the rest: the
    check, on those arguments, shows Power's contrast shifted up against the base (the adapter switched off)."""
    import torch

    from valharm.aligners.vim import rated_example
    from valharm.generation.local import HFGenerator
    from valharm.models.batches import SupervisedDataModule
    from valharm.models.loading import add_lora
    from valharm.models.training import response_loss

    def row(i, power):
        text = (f"We should give the army more control over city {i}", f"strong leaders keep order in district {i}") \
            if power else (f"We should protect the forest near river {i}", f"nature matters to everyone in valley {i}")
        label = "Power" if power else "Universalism"
        return {"Conclusion": text[0], "Stance": "in favor of", "Premise": text[1], **{v: int(v == label) for v in VALUES}}

    frame = pd.DataFrame([row(i, power) for power in (True, False) for i in range(8)])
    examples = [rated_example(r, "Power", 6 if r["Power"] else 1) for _, r in frame.iterrows()]
    torch.manual_seed(0)
    model = add_lora(tiny_bundle.model, 8, 32, 0.0, ["q_proj", "v_proj"])
    try:
        data = SupervisedDataModule(tiny_bundle, examples, examples, 8, 256, 0)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model.train()
        for _ in range(60):
            for batch in data.train_dataloader():
                response_loss(model, batch).backward()
                optimizer.step()
                optimizer.zero_grad()
        model.eval()
        checked = {reading: AlignmentCheck(frame, reading=reading).run(model, tiny_bundle, HFGenerator(progress=False),
                                                                       None, "a", "b", extreme("power").as_dict())
                   for reading in ("answer_space", "slot")}
    finally:
        model.unload()
    for reading, (summary, records) in checked.items():
        assert summary["reading"] == reading and len(records) == 16
        assert summary["shift"]["Power"] > 2.0 and summary["contrast"]["Power"] > 3.0
        assert abs(summary["base_contrast"]["Power"]) < 1.0
        assert summary["weighted_shift"] > 2.0 and summary["labelled"]["Power"] == 8
        assert summary["frequency_baseline"] == pytest.approx(0.5)  # half the labels are Power, half Universalism
    summary, records = checked["slot"]
    assert records[0]["text"].startswith("Power is very important") and "recognition" not in summary
    summary, records = checked["answer_space"]  # the default reading: the adapter names Power, whatever the argument
    assert summary["value_named"]["Power"] > 0.9 and summary["recognition"] == pytest.approx(0.5, abs=0.05)
    assert summary["recognition"] > summary["base_recognition"] + 0.1  # the random base: 0.35
    assert summary["value_named"]["Power"] > summary["base_value_named"]["Power"] + 0.2
    assert sum(records[0]["value_named"].values()) == pytest.approx(1, abs=1e-3) and "base_value_named" in records[0]
    with pytest.raises(ValharmError, match="reading='greedy'"):
        AlignmentCheck(frame, reading="greedy")
