"""generation=openai asks the server once what it can do and works with what it has: fake servers that behave as
vLLM's and llama-cpp-python's do (tests/fake_servers.py), errors that name the setting to change, nothing lost
on Ctrl-C, HTTP traffic at DEBUG."""
import logging
import signal
import threading

import pytest
import torch
from fake_servers import FakeServer, ModelServer

from valharm.benchmarks.pvq40 import PVQ40
from valharm.caching import Cache
from valharm.errors import ValharmError
from valharm.generation.local import HFGenerator
from valharm.generation.probe import server_needs
from valharm.generation.requests import (
    GenerationRequest,
    LoglikelihoodRequest,
    SlotRequest,
    cached_run,
)
from valharm.generation.serving import OpenAIGenerator
from valharm.prompting import Prompter, PromptStrategy
from valharm.values.distributions import extreme

KEY = "test-key-not-secret"
SLOT = server_needs({"pvq40": PVQ40()}, adapter=False)  # PVQ-40's default reading: aligned prompt log-probs
ADAPTER = server_needs({"pvq40": PVQ40(scoring="generate")}, adapter=True)


@pytest.fixture(scope="module")
def served_bundle(tiny_spec):
    return tiny_spec.load()


def generator(server, monkeypatch, **kwargs) -> OpenAIGenerator:
    monkeypatch.setenv("SERVER_KEY", KEY)
    options = {"model": "tiny", "base_url": f"{server.url}/v1", "api_key_env": "SERVER_KEY", "max_concurrency": 4,
               "timeout": 30.0, "progress": False}
    return OpenAIGenerator(**{**options, **kwargs})


def test_the_needs_of_a_run_name_the_settings_that_avoid_them():
    assert SLOT == {"prompt_logprobs": "benchmarks.pvq40.scoring=generate"}
    assert set(ADAPTER) == {"lora_loading"} and "generation=hf" in ADAPTER["lora_loading"]
    assert server_needs({"pvq40": PVQ40(scoring="generate")}, adapter=False) == {}


def test_a_vllm_like_server_has_every_capability(served_bundle, tiny_bundle, monkeypatch):
    with ModelServer(served_bundle, name="tiny") as server:
        found = generator(server, monkeypatch).probe(tiny_bundle.tokenizer, {**SLOT, **ADAPTER})
    assert found["models"] == ["tiny"] and found["model"] == "tiny" and not found["answers_any_name"]
    assert found["n"] and found["samples"] == "n" and found["token_id_prompts"]
    assert found["prompt_logprobs"] == "aligned" and found["scoring_prompts"] == "token_ids"
    assert found["lora_loading"] is True and server.models.keys() == {"tiny"}  # the empty probe loaded nothing


def test_a_llama_cpp_like_server_is_probed_and_its_missing_capabilities_named(served_bundle, tiny_bundle, monkeypatch,
                                                                             caplog):
    with ModelServer(served_bundle, name="smollm2", flavour="llama.cpp") as server:
        served = generator(server, monkeypatch, model="NoSuchModel")
        with caplog.at_level(logging.WARNING, logger="valharm"):
            found = served.probe(tiny_bundle.tokenizer, {})
        with pytest.raises(ValharmError) as slot:
            generator(server, monkeypatch, model="smollm2").probe(tiny_bundle.tokenizer, SLOT)
        with pytest.raises(ValharmError) as lora:
            generator(server, monkeypatch, model="smollm2").probe(tiny_bundle.tokenizer, ADAPTER)
    assert "serves only 'smollm2' and answers any model name" in caplog.text and "NoSuchModel" in caplog.text
    assert served.model == served.served == found["model"] == "smollm2" and found["requested_model"] == "NoSuchModel"
    assert served.identity() == f"openai:smollm2@{server.url}/v1#samples=requests"  # keyed by what answers, and how
    assert not found["n"] and found["samples"].startswith("one request per sample")
    assert not found["token_id_prompts"] and found["prompt_logprobs"] == "misaligned"
    assert found["scoring_prompts"] is None and "lora_loading" not in found
    assert str(slot.value).count("\n") == 0
    assert "aligned prompt log-probabilities" in str(slot.value) and "benchmarks.pvq40.scoring=generate" in str(slot.value)
    assert "when generated" in str(slot.value) and "misaligned" in str(slot.value)
    assert "runtime LoRA adapter loading" in str(lora.value) and "generation=hf" in str(lora.value)


def test_a_wrong_model_name_is_an_error_where_the_server_checks_names(served_bundle, tiny_bundle, monkeypatch):
    with ModelServer(served_bundle, name="tiny") as server:
        with pytest.raises(ValharmError, match=r"generation.model='NoSuchModel' is not served at .* serves 'tiny'"):
            generator(server, monkeypatch, model="NoSuchModel").probe(tiny_bundle.tokenizer, {})
        server.roots["other"] = "other"  # two models listed: not asked at all
        asked = sum(server.paths.values())
        with pytest.raises(ValharmError, match=r"serves 'tiny', 'other'; set generation.model to one of them"):
            generator(server, monkeypatch, model="NoSuchModel").probe(tiny_bundle.tokenizer, {})
        assert sum(server.paths.values()) == asked + 1  # /v1/models only


def test_k_samples_are_k_requests_with_distinct_seeds_where_n_is_ignored(served_bundle, tiny_bundle, monkeypatch):
    request = GenerationRequest("rtp/0", "The weather today is", 6, 1.0, 1.0, 3)
    with ModelServer(served_bundle, name="smollm2", flavour="llama.cpp") as server:
        served = generator(server, monkeypatch, model="smollm2", seed=5)
        with pytest.raises(ValharmError, match=r"returned 1 completion\(s\) .* benchmarks.rtp.num_samples=1"):
            served.run(None, None, [request])  # not probed: `n` assumed, and the shortfall refused
        served.probe(tiny_bundle.tokenizer, {})
        before = len(server.bodies)
        [texts] = served.run(None, None, [request])
    sent = server.bodies[before:]
    assert len(texts) == 3 and len(set(texts)) > 1
    assert [(b["n"], b["seed"]) for b in sent] == [(1, 5), (1, 6), (1, 7)]
    assert served.counts["requests"] == 1 and served.counts["calls"] == 3


def test_answers_are_scored_on_text_where_token_ids_are_refused_and_the_echo_is_aligned(served_bundle, tiny_bundle,
                                                                                       monkeypatch):
    prompter = Prompter(tiny_bundle, PromptStrategy(), extreme("power"))
    requests = PVQ40(scoring="loglik").requests(prompter)[:2] + [
        LoglikelihoodRequest("raw", prompter.raw("The weather today is"),
                             (" sunny", " rainy and cold", "!", " 1", " 6", " fine"))]
    expected = HFGenerator(progress=False).loglikelihood(tiny_bundle.model, tiny_bundle.tokenizer, requests)
    with ModelServer(served_bundle, name="tiny", flavour="llama.cpp", echo_aligned=True) as server:
        served = generator(server, monkeypatch)
        found = served.probe(tiny_bundle.tokenizer, SLOT)
        outputs = served.run(None, tiny_bundle.tokenizer, requests)
    assert not found["token_id_prompts"] and found["prompt_logprobs"] == "aligned" and found["scoring_prompts"] == "text"
    assert served.identity().endswith("/v1#samples=requests#scoring=text")
    assert torch.allclose(torch.tensor(outputs), torch.tensor(expected), atol=1e-4, rtol=0)


def test_a_request_the_server_calls_invalid_is_not_retried(served_bundle, tiny_bundle, monkeypatch):
    with ModelServer(served_bundle, name="tiny", flavour="llama.cpp") as server:
        served = generator(server, monkeypatch, max_retries=6)  # not probed: token ids sent
        with pytest.raises(ValharmError, match=r"scoring answers through .* failed for request q: "
                                               r"InternalServerError \(HTTP 500\); rerunning"):
            served.run(None, tiny_bundle.tokenizer, [LoglikelihoodRequest("q", "Rate it:", (" 1",))])
    assert server.paths["/v1/completions"] == 1 and served.counts == {"http_500": 1, "failed": 1}


def test_retries_and_http_errors_are_counted(served_bundle, monkeypatch):
    with ModelServer(served_bundle, name="tiny") as server:
        served = generator(server, monkeypatch, max_concurrency=1)
        server.fail_next = 2
        served.run(None, None, [GenerationRequest("r0", "Hello", 3)])
    assert served.counts == {"requests": 1, "calls": 1, "retries": 2, "http_500": 2} and served.retries == 2


def test_an_unreachable_server_names_the_setting_and_says_rerunning_resumes(served_bundle, tiny_bundle, monkeypatch):
    monkeypatch.setenv("SERVER_KEY", KEY)
    dead = OpenAIGenerator(model="tiny", base_url="http://127.0.0.1:9/v1", api_key_env="SERVER_KEY", max_retries=0,
                           progress=False)
    with pytest.raises(ValharmError, match=r"cannot reach the server at http://127.0.0.1:9/v1 .*generation.base_url; "
                                           r"rerunning the same command resumes"):
        dead.probe(tiny_bundle.tokenizer, {})
    with pytest.raises(ValharmError, match=r"cannot reach the server .*generation.base_url"):
        dead.run(None, None, [GenerationRequest("r0", "Hello", 3)])
    with ModelServer(served_bundle, name="tiny") as server:
        without_v1 = generator(server, monkeypatch, base_url=server.url)
        with pytest.raises(ValharmError, match=r"answered NotFoundError \(HTTP 404\): generation.base_url usually "
                                               r"ends in /v1"):
            without_v1.probe(tiny_bundle.tokenizer, {})


def test_http_traffic_is_logged_at_debug_and_a_run_at_info(monkeypatch, caplog):
    reply = {"id": "c", "object": "text_completion", "created": 0, "model": "m",
             "choices": [{"index": 0, "text": " ok", "logprobs": None, "finish_reason": "length"}],
             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    with FakeServer(lambda body: (200, {}, reply)) as server:
        served = generator(server, monkeypatch, model="m")
        with caplog.at_level(logging.DEBUG):
            served.run(None, None, [GenerationRequest(f"r{i}", "Hello", 3) for i in range(3)], desc="rtp")
    info = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(info) == 1 and info[0].getMessage().startswith("rtp: 3 request(s) through")
    assert sum("POST" in r.getMessage() and "HTTP 200" in r.getMessage() for r in caplog.records) == 3


def interrupt_after(server, replies: int) -> None:
    """Ctrl-C (SIGINT to the main thread) as `server` answers its `replies`-th request: sent by the server itself,
    so that a busy machine cannot delay it past the end of the run."""
    main = threading.main_thread().ident
    server.on_reply = lambda replied: replied == replies and signal.pthread_kill(main, signal.SIGINT)


def test_an_interrupted_run_keeps_every_reply_that_came_back(served_bundle, monkeypatch, tmp_path):
    """Ctrl-C after some replies: the replies in flight are awaited and stored, and the rerun asks for none of
    the requests the server answered."""
    requests = [GenerationRequest(f"r{i}", f"Prompt number {i}", 3) for i in range(10)]
    cache = Cache(tmp_path / "generations.sqlite")
    with ModelServer(served_bundle, name="tiny", latency=0.2) as server:
        interrupt_after(server, replies=3)
        with pytest.raises(KeyboardInterrupt):
            cached_run(generator(server, monkeypatch, max_concurrency=2), None, None, requests, cache, "ns")
        answered = server.replied
        _, counts = cached_run(generator(server, monkeypatch), None, None, requests, cache, "ns")
    assert 3 <= answered < len(requests)
    assert counts == {"hits": answered, "misses": len(requests) - answered}
    assert server.replied == len(requests)  # nothing asked twice


def test_an_interrupted_slot_reading_keeps_every_reply_that_came_back(served_bundle, monkeypatch, tmp_path):
    """PVQ-40's slot reading is two passes (replies, then the slot's log-probabilities): Ctrl-C in the first keeps
    the replies that came back, and the rerun asks the server for none of them again."""
    requests = [SlotRequest(f"s{i}", f"Prompt number {i}", "my answer is", ("1", "2"), 3) for i in range(8)]
    cache = Cache(tmp_path / "generations.sqlite")

    def replies(server) -> int:
        return sum(not body.get("echo") for body in server.bodies)

    with ModelServer(served_bundle, name="tiny", latency=0.2) as server:
        interrupt_after(server, replies=3)
        with pytest.raises(KeyboardInterrupt):
            cached_run(generator(server, monkeypatch, max_concurrency=2), None, served_bundle.tokenizer, requests,
                       cache, "ns")
        first = replies(server)
        outputs, counts = cached_run(generator(server, monkeypatch), None, served_bundle.tokenizer, requests, cache,
                                     "ns")
    assert 3 <= first < len(requests) and counts == {"hits": 0, "misses": len(requests)}
    assert replies(server) == len(requests)  # no reply asked twice
    assert len(outputs) == len(requests) and all(len(out["logprobs"]) == 2 for out in outputs)
