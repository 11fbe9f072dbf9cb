"""PVQ-40 beside its untuned base: base NMSE and skill on planted answers (a run that answers as its base does scores
skill 0, one that answers its target scores 1), a vanilla run is its own base, a served adapter's base is not read."""
import math
from contextlib import contextmanager
from pathlib import Path

import pytest

from valharm.aligners import Alignment
from valharm.benchmarks.pvq40 import PVQ40
from valharm.prompting import Prompter, PromptStrategy
from valharm.runs.baseline import beside_base, skill
from valharm.values.distributions import extreme

PERSONA = "Take the part of a person who holds Power above all."
SURE = {rating: [math.log(0.95 if r == rating else 0.01) for r in range(1, 7)] for rating in range(1, 7)}


class PlantedModel:
    """Stands for a model with a LoRA adapter: `disable_adapter` switches it off."""

    adapter_on = True

    @contextmanager
    def disable_adapter(self):
        self.adapter_on = False
        try:
            yield
        finally:
            self.adapter_on = True


class Planted:
    """A generator answering each PVQ-40 item (loglik scoring) with `answer(prompt, model)`; counts its requests."""

    needs_weights, new_tokens = True, 0

    def __init__(self, answer, needs_weights: bool = True):
        self.answer, self.needs_weights, self.requests = answer, needs_weights, 0

    def run(self, model, tokenizer, requests, desc="", on_batch=None):
        self.requests += len(requests)
        outputs = [self.answer(r.prompt, model) for r in requests]
        if on_batch:
            on_batch(list(range(len(requests))), outputs)
        return outputs


def setting(tiny_bundle, generator, alignment):
    bench = PVQ40(scoring="loglik")
    prompter = Prompter(tiny_bundle, PromptStrategy(), extreme("power"), alignment.system_prompt)
    requests = bench.requests(prompter)
    outputs = [generator.answer(r.prompt, alignment.model) for r in requests]
    metrics = bench.evaluate(requests, outputs, extreme("power")).metrics
    parts = {"generator": generator, "cache": None, "value": extreme("power")}
    return bench, prompter, metrics, parts


def power_item(prompt: str, items) -> bool:
    return any(row.text in prompt and row.value == "Power" for row in items.itertuples())


def test_skill_by_hand():
    assert skill(0.05, 0.1) == pytest.approx(0.5) and skill(0.1, 0.1) == 0 and skill(0.2, 0.1) == pytest.approx(-1)
    assert math.isnan(skill(0.0, 0.0)) and math.isnan(skill(float("nan"), 0.1))


@pytest.mark.parametrize("aligned", ["icl", "adapter"])
def test_a_target_blind_reading_scores_skill_0_and_one_that_answers_its_target_skill_1(tiny_bundle, aligned):
    model = PlantedModel()
    alignment = Alignment(model=model, system_prompt=PERSONA) if aligned == "icl" else \
        Alignment(model=model, adapter_dir=Path("adapter"))
    items = PVQ40().items

    def blind(prompt, model):  # the same answer, aligned or not
        return SURE[2]

    def answers_target(prompt, model):  # with the alignment: 6 to Power's item, 1 to the rest (the target)
        if (PERSONA in prompt) if aligned == "icl" else model.adapter_on:
            return SURE[6] if power_item(prompt, items) else SURE[1]
        return SURE[3]

    for answer, expected in ((blind, 0.0), (answers_target, 1.0)):
        generator = Planted(answer)
        bench, prompter, metrics, parts = setting(tiny_bundle, generator, alignment)
        found, counts, bounds = beside_base(bench, prompter, metrics, tiny_bundle, alignment, parts, "base")
        assert counts == {"hits": 0, "misses": 10} and generator.requests == 10
        assert bounds["all"]["base_nmse"]["ci_low"] <= found["base_nmse"] <= bounds["all"]["base_nmse"]["ci_high"]
        assert set(bounds["base_scores"]) == set(metrics["scores"])
        assert found["skill"] == pytest.approx(expected) and found["base_nmse"] > 0 and found["base_skipped"] is None
        base_rating = 2.0 if answer is blind else 3.0
        assert found["base_scores"] == {v: base_rating for v in metrics["scores"]}
        assert model.adapter_on  # switched back on after the base was read


def test_a_vanilla_run_is_its_own_base_and_a_served_adapters_base_is_not_read(tiny_bundle):
    generator = Planted(lambda prompt, model: SURE[4])
    alignment = Alignment(model=None, value_aligned=False)
    bench, prompter, metrics, parts = setting(tiny_bundle, generator, alignment)
    own = {"all": {"nmse": {"ci_low": 0.1, "ci_high": 0.2}}, "scores": {"Power": {"ci_low": 1, "ci_high": 2}}}
    found, counts, bounds = beside_base(bench, prompter, metrics, tiny_bundle, alignment, parts, "base", own)
    assert found == {"base_nmse": metrics["nmse"], "skill": 0.0, "base_scores": metrics["scores"], "base_skipped": None}
    assert bounds == {"all": {"base_nmse": own["all"]["nmse"]}, "base_scores": own["scores"]}  # its own
    assert counts is None and generator.requests == 0  # nothing recomputed
    served = Alignment(model=None, adapter_dir=Path("adapter"))
    parts["generator"] = Planted(lambda prompt, model: SURE[4], needs_weights=False)
    found, counts, bounds = beside_base(bench, prompter, metrics, tiny_bundle, served, parts, "base")
    assert bounds == {} and found["base_nmse"] is None and found["skill"] is None and "server" in found["base_skipped"]
    assert counts is None and parts["generator"].requests == 0
