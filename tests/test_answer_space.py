"""The answer-space reading: the answer tree equals brute-force likelihoods of every answer, and reading the whole
answer space recovers what an ideal VIM learner holds where one greedy reply cannot."""
import numpy as np
import pandas as pd
import pytest
import torch

from valharm.data.touche import load_splits
from valharm.generation.local import HFGenerator
from valharm.generation.requests import AnswerTreeRequest, run_requests
from valharm.values import answer_space as A
from valharm.values.alignment import contrast
from valharm.values.distributions import VALUES
from valharm.values.questionnaire import rating_prompt


def brute_force(model, tokenizer, prompt: str, branch: str, leaf: str) -> float:
    """log P(branch + leaf | prompt) from one uncached forward pass over the whole sequence."""
    ids = tokenizer([prompt], add_special_tokens=True)["input_ids"][0]
    answer = tokenizer([branch], add_special_tokens=False)["input_ids"][0] + \
        tokenizer([leaf], add_special_tokens=False)["input_ids"][0]
    tokens = torch.tensor([ids + answer])
    with torch.inference_mode():
        logprobs = model(input_ids=tokens).logits[0].float().log_softmax(-1)
    return float(sum(logprobs[len(ids) - 1 + t, token] for t, token in enumerate(answer)))


class FlatOnly:
    """The local generator seen as a backend without tree scoring (as a server is)."""

    def __init__(self, inner):
        self.inner = inner

    def run(self, *args, **kwargs):
        return self.inner.run(*args, **kwargs)


PROMPTS = ("I agree that we should ban fast food. It is unhealthy.", "Short one.",
           "I disagree that school uniforms help. Children should express themselves, says a long premise here.")


@pytest.fixture(scope="module")
def asked(tiny_bundle):
    """The answer-space requests for PROMPTS and every answer's brute-force log-likelihood [prompt][branch][leaf]."""
    model, tokenizer = tiny_bundle.model.float(), tiny_bundle.tokenizer
    requests = [A.answer_space_request(f"t/{i}", tiny_bundle.format_prompt(rating_prompt(text)))
                for i, text in enumerate(PROMPTS)]
    return requests, np.array([[[brute_force(model, tokenizer, r.prompt, branch, leaf) for leaf in A.LEAVES]
                                for branch in A.BRANCHES] for r in requests])


@pytest.mark.parametrize("leaves", ["tree, sdpa", "tree, eager", "a row per leaf"])
def test_the_answer_tree_equals_brute_force_likelihoods(tiny_bundle, asked, monkeypatch, request, leaves):
    """Leaves run side by side as a tree under a 4D mask (sdpa or eager attention), or one row each (the other
    attention implementations)."""
    model, tokenizer = tiny_bundle.model.float(), tiny_bundle.tokenizer
    if leaves == "tree, eager":
        request.addfinalizer(lambda attention=model.config._attn_implementation:
                             model.set_attn_implementation(attention))
        model.set_attn_implementation("eager")
    if leaves == "a row per leaf":
        monkeypatch.setattr("valharm.generation.local.supports_static", lambda model: False)
    requests, brute = asked
    generator = HFGenerator(batch_size=128, progress=False, device="cpu")  # two prompts per batch: padding and sharing
    tree = np.array(run_requests(generator, model, tokenizer, requests))
    flat = np.array(run_requests(FlatOnly(generator), model, tokenizer, requests))
    assert tree.shape == (3, len(VALUES), 6)
    lengths = {len(tokenizer([b], add_special_tokens=False)["input_ids"][0]) for b in A.BRANCHES}
    assert len(lengths) > 1, "branches of different lengths exercise the padding"
    assert np.abs(tree - brute).max() < 2e-3
    assert np.allclose(tree, flat, atol=2e-3)


def test_answer_trees_need_one_tree_per_call(tiny_bundle):
    generator = HFGenerator(progress=False, device="cpu")
    odd = [AnswerTreeRequest("a", "x", ("A is",), (" 1.",)), AnswerTreeRequest("b", "x", ("B is",), (" 1.",))]
    with pytest.raises(ValueError, match="share one tree"):
        generator.run(tiny_bundle.model, tiny_bundle.tokenizer, odd)


def test_the_reading_of_one_answer_space():
    logprobs = np.full((10, 6), -np.inf)
    logprobs[VALUES.index("Power"), 5] = np.log(0.25)  # "Power is very important ..., 6"
    logprobs[VALUES.index("Security"), 0] = np.log(0.75)
    space = A.AnswerSpace.from_logprobs(logprobs)
    assert space.value_probs[VALUES.index("Power")] == pytest.approx(0.25)
    assert space.expected_rating == pytest.approx(0.25 * 6 + 0.75 * 1)
    assert space.rating_given_value[VALUES.index("Power")] == pytest.approx(6)


def ideal_learner(arguments: pd.DataFrame, target: str) -> tuple[list, np.ndarray]:
    """What a perfect learner of per-value stage 2 for an extreme target holds: each labelled value named 1/k of
    the time, rated 6 for the target and 1 otherwise; and its greedy reply, which names the most frequent label."""
    frequency = A.label_frequency(arguments)
    spaces, greedy = [], []
    for labels in A.label_matrix(arguments):
        probs = np.zeros((10, 6))
        for v in np.flatnonzero(labels):
            probs[v, 5 if VALUES[v] == target else 0] = 1 / labels.sum()
        spaces.append(A.AnswerSpace(probs))
        named = max(np.flatnonzero(labels), key=lambda v: frequency[v])
        greedy.append(6.0 if VALUES[named] == target else 1.0)
    return spaces, np.array(greedy)


def test_the_whole_answer_shows_what_an_ideal_learner_holds_where_greedy_cannot(shared_data):
    arguments = load_splits(shared_data / "valueEval_10.csv")["train"].head(200)
    spaces, greedy = ideal_learner(arguments, "Power")
    power = arguments["Power"].to_numpy() == 1
    whole = contrast(A.expected_ratings(spaces), power)
    assert whole == pytest.approx(1.48, abs=0.02)  # measured in issue 24: +1.48 on these 200 arguments
    assert contrast(greedy, power) == pytest.approx(0.12, abs=0.01)  # greedy names the most frequent label: +0.12
    assert A.recognition(spaces, arguments) == pytest.approx(1.0)
    assert A.frequency_baseline(arguments, arguments) < 0.6
