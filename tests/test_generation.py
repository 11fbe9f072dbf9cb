"""valharm's decoding loop against transformers' generate, and its exact top-p sampler."""
import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from valharm.generation.local import HFGenerator
from valharm.generation.requests import GenerationRequest
from valharm.generation.sampler import nucleus
from valharm.prompting import Prompter, PromptStrategy
from valharm.values.distributions import extreme

QUESTIONS = ["Do you like music?", "Name a colour.", "What is the capital of a country you know well and why?",
             "Say something kind.", "Count to three.", "Which season do you prefer, and what do you do then?"]


def greedy_requests(bundle, max_new_tokens=12):
    prompter = Prompter(bundle, PromptStrategy(), extreme("power"))
    chat = [prompter.chat(q) for q in QUESTIONS]
    raw = [prompter.raw(q) for q in QUESTIONS[:3]]  # no shared chat template
    return [GenerationRequest(f"r{i}", p, max_new_tokens=max_new_tokens) for i, p in enumerate(chat + raw)]


def transformers_greedy(bundle, requests, eos_token_id=None):
    tok = bundle.tokenizer
    tok.padding_side = "left"
    encoded = tok([r.prompt for r in requests], return_tensors="pt", padding=True, add_special_tokens=False)
    out = bundle.model.generate(**encoded, max_new_tokens=requests[0].max_new_tokens, do_sample=False,
                                pad_token_id=tok.pad_token_id, eos_token_id=eos_token_id)
    return tok.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("options", [{}, {"share_prefix": False}, {"preallocate": False}, {"batch_size": 2},
                                     {"compact_fraction": 0.0}, {"decode": "static"},
                                     {"decode": "static", "batch_size": 2}])
def test_greedy_gives_the_tokens_of_transformers_generate(tiny_bundle, options):
    requests = greedy_requests(tiny_bundle)
    ours = HFGenerator(progress=False, **options).generate(tiny_bundle.model, tiny_bundle.tokenizer, requests)
    assert [texts[0] for texts in ours] == transformers_greedy(tiny_bundle, requests)


def test_finished_rows_leave_the_batch_without_changing_outputs(tiny_bundle):
    model, tok = tiny_bundle.model, tiny_bundle.tokenizer
    requests = greedy_requests(tiny_bundle, max_new_tokens=16)
    first = HFGenerator(progress=False).generate(model, tok, requests[:1])[0][0]
    stop = tok(first, add_special_tokens=False)["input_ids"][3]  # a token the model does produce
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = stop
    try:
        expected = transformers_greedy(tiny_bundle, requests, eos_token_id=stop)
        results = {fraction: HFGenerator(progress=False, compact_fraction=fraction).generate(model, tok, requests)
                   for fraction in (0.0, 0.25, 2.0)}  # drop at once, at a quarter, never
        results["static"] = HFGenerator(progress=False, decode="static").generate(model, tok, requests)
    finally:
        model.generation_config.eos_token_id = saved
    lengths = [len(tok(t[0], add_special_tokens=False)["input_ids"]) for t in results[0.25]]
    assert min(lengths) < 16 and max(lengths) > min(lengths)  # some rows did stop early
    for outputs in results.values():
        assert [t[0] for t in outputs] == expected


def reference_nucleus(logits, temperature, top_p):
    """The top-p rule on a full float64 sort: (probabilities renormalised over the nucleus, margin)."""
    probs = (logits.double() / temperature).softmax(-1)
    sorted_probs, order = probs.sort(-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, before < top_p)
    kept = probs * keep
    return kept / kept.sum(-1, keepdim=True), (before - top_p).abs().min(-1).values


def dense(ids, weights, vocab):
    full = torch.zeros(len(ids), vocab, dtype=torch.float64).scatter_add(-1, ids, weights.double())
    return full / full.sum(-1, keepdim=True)


@pytest.mark.parametrize("candidates", [0, 1, 2, 8, 64])
@pytest.mark.parametrize("temperature", [0.1, 0.7, 1.5])
@pytest.mark.parametrize("top_p", [0.3, 0.75, 0.95])
def test_nucleus_is_exact_whatever_the_candidate_count(candidates, temperature, top_p):
    generator = torch.Generator().manual_seed(candidates * 7 + int(temperature * 10) + int(top_p * 100))
    logits = torch.randn(16, 500, generator=generator) * torch.linspace(0.2, 6, 16)[:, None]  # flat to sharp
    expected, margin = reference_nucleus(logits, temperature, top_p)
    ids, weights = nucleus(logits, temperature, top_p, candidates)
    ours = dense(ids, weights, logits.shape[-1])
    clear = margin > 1e-6  # rows whose boundary is not a rounding coin-toss
    assert clear.sum() >= 14
    assert torch.equal(ours[clear] > 0, expected[clear] > 0)
    assert torch.allclose(ours[clear], expected[clear], atol=1e-5)


def test_nucleus_agrees_with_transformers_top_p_warper():
    logits = torch.randn(32, 2000, generator=torch.Generator().manual_seed(3)) * 4
    warped = TopPLogitsWarper(0.75)(None, TemperatureLogitsWarper(0.1)(None, logits.clone()))
    ids, weights = nucleus(logits, 0.1, 0.75, 64)
    assert torch.allclose(dense(ids, weights, 2000), warped.softmax(-1).double(), atol=1e-6)


def sampled(bundle, requests, seed=0, **options):
    return HFGenerator(progress=False, seed=seed, **options).generate(bundle.model, bundle.tokenizer, requests)


def test_a_samples_draws_do_not_depend_on_what_shares_its_batch(tiny_bundle):
    """Each sample has its own random stream (seed, request, sample index): alone, in a batch with others, or
    after an interrupted run resumed with part of the batch cached, a request gets the same samples."""
    prompter = Prompter(tiny_bundle, PromptStrategy(), extreme("power"))
    settings = {"max_new_tokens": 10, "temperature": 0.9, "top_p": 0.9}
    target = GenerationRequest("a", prompter.raw("The weather today is"), num_samples=4, **settings)
    others = [GenerationRequest(f"o{i}", prompter.raw(f"Story number {i} begins"), num_samples=4, **settings)
              for i in range(5)]
    alone = sampled(tiny_bundle, [target])
    assert len(alone[0]) == 4 and len(set(alone[0])) > 1  # samples, not one text four times
    assert sampled(tiny_bundle, [*others[:3], target, *others[3:]])[3] == alone[0]
    assert sampled(tiny_bundle, [target, *others], batch_size=8)[0] == alone[0]  # other batch sizes too


def test_sampling_draws_from_the_nucleus_distribution():
    """Inverse-transform draws from per-row streams follow the nucleus probabilities (many rows, one step)."""
    from valharm.generation.sampler import next_tokens, nucleus, sample_keys

    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]]).repeat(20000, 1)
    keys = sample_keys(0, [f"r{i}" for i in range(20000)], 1, "cpu")
    drawn = next_tokens(logits, temperature=1.0, top_p=0.9, keys=keys, candidates=3)
    ids, weights = nucleus(logits[:1], 1.0, 0.9, 3)
    expected = torch.zeros(5).index_add_(0, ids[0], weights[0] / weights[0].sum())
    observed = torch.bincount(drawn, minlength=5).float() / len(drawn)
    assert torch.allclose(observed, expected, atol=0.015) and observed[4] == 0
    full = next_tokens(logits, temperature=1.0, top_p=1.0, keys=keys)
    assert torch.allclose(torch.bincount(full, minlength=5).float() / len(full), logits[0].softmax(-1), atol=0.015)


def test_sampling_is_seeded(tiny_bundle):
    request = [GenerationRequest("a", Prompter(tiny_bundle, PromptStrategy(), extreme("power")).raw("Once upon a time"), max_new_tokens=10,
                                 temperature=1.0, top_p=0.9, num_samples=3)]
    assert sampled(tiny_bundle, request, seed=1) == sampled(tiny_bundle, request, seed=1)
    assert sampled(tiny_bundle, request, seed=1) != sampled(tiny_bundle, request, seed=2)


def test_outputs_follow_request_order_across_mixed_settings(tiny_bundle):
    greedy = greedy_requests(tiny_bundle)
    sampled_request = GenerationRequest("s", greedy[0].prompt, max_new_tokens=5, temperature=1.0, num_samples=2)
    mixed = [greedy[4], sampled_request, greedy[0], greedy[7]]
    outputs = sampled(tiny_bundle, mixed)
    alone = sampled(tiny_bundle, [greedy[4], greedy[0], greedy[7]])
    assert [outputs[0], outputs[2], outputs[3]] == alone
    assert len(outputs[1]) == 2


def test_static_decoding_samples_what_the_dynamic_loop_samples(tiny_bundle):
    """The static-cache step (a CUDA graph on GPUs) draws each sample from the same stream by the same rule (the
    nucleus ranked over the whole vocabulary, as the dynamic loop does with top_p_candidates=0). Its logits differ
    from the dynamic loop's in the last bits (attention over a cache of another length), so on the random model's
    near-flat distributions at high temperature a draw can land on the other side of a token's edge; at T 0.3
    every draw of this test agrees."""
    prompter = Prompter(tiny_bundle, PromptStrategy(), extreme("power"))
    requests = [GenerationRequest(f"s{i}", prompter.chat(q), max_new_tokens=10, temperature=0.3, top_p=0.8,
                                  num_samples=3) for i, q in enumerate(QUESTIONS[:4])]
    dynamic = sampled(tiny_bundle, requests, top_p_candidates=0)
    assert sampled(tiny_bundle, requests, decode="static") == dynamic
    assert len({text for texts in dynamic for text in texts}) > 4


def test_a_step_index_on_the_device_draws_what_an_int_draws():
    from valharm.generation.sampler import sample_keys, uniforms

    keys = sample_keys(3, ["a", "b"], 4, "cpu")
    for step in (0, 1, 63, 10_000):
        assert torch.equal(uniforms(keys, torch.tensor(step)), uniforms(keys, step))


def test_static_decoding_is_chosen_only_where_the_model_allows_it():
    from types import SimpleNamespace

    from transformers import Gemma2Config, LlamaConfig, MistralConfig

    from valharm.errors import ValharmError

    def model(config, attention="sdpa"):
        config._attn_implementation = attention
        return SimpleNamespace(config=config)

    llama = model(LlamaConfig())
    assert HFGenerator(device="cuda").static_decoding(llama)  # auto: static on CUDA
    assert not HFGenerator(device="cpu").static_decoding(llama)  # auto: the dynamic loop on CPUs
    for unsuitable in (model(MistralConfig()), model(Gemma2Config()), model(LlamaConfig(), "flash_attention_2")):
        assert not HFGenerator(device="cuda").static_decoding(unsuitable)
        with pytest.raises(ValharmError, match="decode=dynamic"):
            HFGenerator(device="cuda", decode="static").static_decoding(unsuitable)
