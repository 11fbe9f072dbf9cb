"""generation=openai against a local OpenAI-compatible server running the tiny model: the same texts and
answer log-probabilities as local generation, LoRA adapters served by name, caching, keys and retries."""
import copy
import json
import shutil

import pytest
import torch
from conftest import run_cli
from fake_servers import FakeServer, ModelServer

from valharm.benchmarks.pvq40 import PVQ40
from valharm.caching import Cache
from valharm.errors import ValharmError
from valharm.generation.local import HFGenerator
from valharm.generation.requests import GenerationRequest, LoglikelihoodRequest, cached_run
from valharm.generation.serving import OpenAIGenerator
from valharm.models.loading import ChatPrompt, add_lora, load_adapter
from valharm.prompting import Prompter, PromptStrategy
from valharm.values.distributions import extreme

KEY = "test-key-not-secret"
QUESTIONS = ["Do you like music?", "Name a colour.", "Say something kind."]


@pytest.fixture(scope="module")
def served_bundle(tiny_spec):
    """The server's own copy of the tiny model (the same weights as tiny_bundle)."""
    return tiny_spec.load()


@pytest.fixture
def server(served_bundle):
    with ModelServer(served_bundle, name="tiny") as server:
        yield server


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_bundle):
    """A saved LoRA adapter whose perturbed weights change the tiny model's outputs."""
    peft = add_lora(copy.deepcopy(tiny_bundle.model), r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, weight in peft.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator))
    folder = tmp_path_factory.mktemp("run") / "adapter"
    peft.save_pretrained(folder)
    return folder


def openai_generator(server, monkeypatch, **kwargs) -> OpenAIGenerator:
    monkeypatch.setenv("SERVER_KEY", KEY)
    options = dict(model="tiny", base_url=f"{server.url}/v1", api_key_env="SERVER_KEY", max_concurrency=4,
                   timeout=30.0, progress=False)
    return OpenAIGenerator(**{**options, **kwargs})


def generation_requests(bundle, max_new_tokens=12):
    prompter = Prompter(bundle, PromptStrategy(), extreme("power"))
    chat = [prompter.chat(q) for q in QUESTIONS]
    raw = [prompter.raw(q) for q in QUESTIONS[:2]]
    return [GenerationRequest(f"r{i}", p, max_new_tokens=max_new_tokens) for i, p in enumerate(chat + raw)]


def test_greedy_texts_through_the_server_equal_local_generation(server, monkeypatch, tiny_bundle):
    requests = generation_requests(tiny_bundle)
    assert [isinstance(r.prompt, ChatPrompt) for r in requests] == [True] * 3 + [False] * 2
    local = HFGenerator(progress=False)
    expected = local.run(tiny_bundle.model, tiny_bundle.tokenizer, requests)
    generator = openai_generator(server, monkeypatch)
    stored = {}
    outputs = generator.run(None, tiny_bundle.tokenizer, requests, on_batch=lambda i, o: stored.update(zip(i, o)))
    assert outputs == expected and stored == dict(enumerate(expected))
    assert generator.new_tokens == local.new_tokens > 0
    assert server.paths["/v1/chat/completions"] == 3 and server.paths["/v1/completions"] == 2
    assert server.models_used == {"tiny": 5}


def test_answer_loglikelihoods_through_the_server_equal_local_scores(server, monkeypatch, tiny_bundle):
    prompter = Prompter(tiny_bundle, PromptStrategy(), extreme("power"))
    requests = PVQ40(scoring="loglik").requests(prompter)[:3] + [
        LoglikelihoodRequest("raw", prompter.raw("The weather today is"),
                             (" sunny", " rainy and cold", "!", " 1", " 6", " fine"))]
    expected = HFGenerator(progress=False).loglikelihood(tiny_bundle.model, tiny_bundle.tokenizer, requests)
    outputs = openai_generator(server, monkeypatch).run(None, tiny_bundle.tokenizer, requests)
    assert torch.allclose(torch.tensor(outputs), torch.tensor(expected), atol=1e-4, rtol=0)
    assert server.paths["/v1/completions"] == sum(len(r.continuations) for r in requests)


def test_slot_readings_through_the_server_equal_local_ones(server, monkeypatch, tiny_bundle):
    from valharm.generation.requests import run_requests

    prompter = Prompter(tiny_bundle, PromptStrategy(), extreme("power"))
    requests = PVQ40().requests(prompter)[:3]
    expected = run_requests(HFGenerator(progress=False), tiny_bundle.model, tiny_bundle.tokenizer, requests)
    outputs = run_requests(openai_generator(server, monkeypatch), None, tiny_bundle.tokenizer, requests)
    assert [o["reply"] for o in outputs] == [o["reply"] for o in expected]
    assert torch.allclose(torch.tensor([o["logprobs"] for o in outputs]),
                          torch.tensor([o["logprobs"] for o in expected]), atol=1e-4, rtol=0)
    assert server.paths["/v1/chat/completions"] == 3  # replies as chat, then the slot scored on completions


def test_a_bos_in_raw_prompts_is_left_to_the_server(monkeypatch):
    """A Llama-2-style tokenizer adds BOS itself: the prompt's '<s>' is not sent, the texts and scores agree."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from valharm.models.loading import LoadedModel, prepare_tokenizer

    words = ["Hello", "world", "Say", "hi."]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"▁{w}": i + 3 for i, w in enumerate(words)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = prepare_tokenizer(PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                                    unk_token="<unk>"), "plain", "metaspace")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    bundle = LoadedModel("metaspace", LlamaForCausalLM(config).eval(), tok, "plain")
    prompts = ["<s>Hello world", "<s>Say"]
    generate = [GenerationRequest(p, p, max_new_tokens=5) for p in prompts]
    score = [LoglikelihoodRequest(p, p, (" hi.", " Hello world", " Say")) for p in prompts]
    local = HFGenerator(progress=False)
    with ModelServer(bundle, name="tiny") as server:
        generator = openai_generator(server, monkeypatch)
        assert generator.run(None, tok, generate) == local.run(bundle.model, tok, generate)
        scores = generator.run(None, tok, score)
    assert torch.allclose(torch.tensor(scores), torch.tensor(local.run(bundle.model, tok, score)), atol=1e-5, rtol=0)
    assert server.paths["/v1/completions"] == 2 + 6


def test_a_server_without_prompt_logprobs_is_refused_with_the_fix(monkeypatch, tiny_bundle):
    reply = {"id": "c", "object": "text_completion", "created": 0, "model": "tiny",
             "choices": [{"index": 0, "text": "x", "logprobs": None, "finish_reason": "length"}]}
    with FakeServer(lambda body: (200, {}, reply)) as server:
        generator = openai_generator(server, monkeypatch)
        with pytest.raises(ValharmError, match="echo.*benchmarks.pvq40.scoring=generate"):
            generator.run(None, tiny_bundle.tokenizer, [LoglikelihoodRequest("q", "Rate it:", ("1", "2"))])


def test_an_adapter_is_loaded_once_and_generates_under_its_own_name(server, monkeypatch, tiny_bundle, adapter_dir,
                                                                    tmp_path):
    requests = generation_requests(tiny_bundle)
    generator = openai_generator(server, monkeypatch)
    name = generator.use_adapter(adapter_dir)
    assert name.startswith("valharm-") and generator.served == name
    assert server.paths["/v1/load_lora_adapter"] == 1 and server.roots[name] == str(adapter_dir)
    copied = shutil.copytree(adapter_dir, tmp_path / "elsewhere")  # same weights, same name: listed already
    assert openai_generator(server, monkeypatch).use_adapter(copied) == name
    assert openai_generator(server, monkeypatch).use_adapter(adapter_dir) == name
    assert server.paths["/v1/load_lora_adapter"] == 1 and server.paths["/v1/models"] == 4  # 1 load, checked
    del server.roots[name]  # unlisted but loaded, as when another job loads it meanwhile: 400 "already loaded"
    assert openai_generator(server, monkeypatch).use_adapter(adapter_dir) == name
    assert server.paths["/v1/load_lora_adapter"] == 2

    outputs = generator.run(None, tiny_bundle.tokenizer, requests)
    assert server.models_used == {name: len(requests)}
    peft = load_adapter(copy.deepcopy(tiny_bundle.model), adapter_dir)
    assert outputs == HFGenerator(progress=False).run(peft, tiny_bundle.tokenizer, requests)
    assert generator.use_adapter(None) == "tiny"
    assert generator.run(None, tiny_bundle.tokenizer, requests) != outputs  # the adapter changed the texts


def test_adapters_the_server_lists_are_found_by_path_and_others_are_not_loaded_when_told_not_to(
        served_bundle, monkeypatch, adapter_dir):
    with ModelServer(served_bundle, name="tiny", adapters={"my-lora": str(adapter_dir)}) as server:
        assert openai_generator(server, monkeypatch, load_adapters=False).use_adapter(adapter_dir) == "my-lora"
    with ModelServer(served_bundle, name="tiny") as server:
        generator = openai_generator(server, monkeypatch, load_adapters=False)
        with pytest.raises(ValharmError, match="not served at .*--lora-modules valharm-"):
            generator.use_adapter(adapter_dir)
        assert server.paths["/v1/load_lora_adapter"] == 0
        bad = openai_generator(server, monkeypatch, adapter_name="other")
        with pytest.raises(ValharmError, match=r"could not load adapter .*BadRequestError \(HTTP 400\)"):
            bad.use_adapter(adapter_dir.parent)  # no adapter there: the server's load fails


def test_cached_generations_are_not_asked_again(server, monkeypatch, tiny_bundle, tmp_path):
    requests = generation_requests(tiny_bundle, max_new_tokens=6)
    cache = Cache(tmp_path / "generations.sqlite")
    generator = openai_generator(server, monkeypatch)
    namespace = generator.identity()
    assert namespace == f"openai:tiny@{server.url}/v1" and KEY not in namespace
    first, counts = cached_run(generator, None, tiny_bundle.tokenizer, requests, cache, namespace)
    assert counts == {"hits": 0, "misses": len(requests)}
    asked = sum(server.paths.values())
    again, counts = cached_run(openai_generator(server, monkeypatch), None, tiny_bundle.tokenizer, requests, cache,
                               namespace)
    assert again == first and counts == {"hits": len(requests), "misses": 0}
    assert sum(server.paths.values()) == asked


def test_the_key_comes_from_the_environment_and_the_model_must_be_named(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ValharmError, match="NO_SUCH_KEY"):
        OpenAIGenerator(model="tiny", base_url="http://127.0.0.1:9/v1", api_key_env="NO_SUCH_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with pytest.raises(ValharmError, match="set generation.model"):
        OpenAIGenerator(model=None, base_url="http://127.0.0.1:9/v1")


def test_server_errors_are_retried_and_exhausted_retries_name_the_request(server, monkeypatch, tiny_bundle):
    requests = generation_requests(tiny_bundle, max_new_tokens=6)[-1:]
    expected = HFGenerator(progress=False).run(tiny_bundle.model, tiny_bundle.tokenizer, requests)
    generator = openai_generator(server, monkeypatch, max_concurrency=1)
    server.fail_next = 2
    assert generator.run(None, tiny_bundle.tokenizer, requests) == expected
    assert generator.retries == 2 and server.paths["/v1/completions"] == 3
    server.fail_next = 100
    with pytest.raises(ValharmError, match=r"failed for request r4: InternalServerError \(HTTP 500\)") as err:
        openai_generator(server, monkeypatch, max_retries=1).run(None, tiny_bundle.tokenizer, requests)
    assert KEY not in str(err.value)


def test_the_config_builds_the_generator(monkeypatch):
    from conftest import ROOT
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model=tiny", "generation=openai", "generation.model=tiny",
                                          "generation.base_url=http://127.0.0.1:8000/v1"])
    generator = instantiate(cfg.generation)
    assert isinstance(generator, OpenAIGenerator) and not generator.needs_weights
    assert generator.identity() == "openai:tiny@http://127.0.0.1:8000/v1" and generator.seed == cfg.seed


@pytest.mark.slow
def test_evaluate_through_the_server_writes_the_results_of_local_generation(server, adapter_dir, tmp_path, monkeypatch):
    """`python -m valharm.evaluate generation=openai` on an adapter: the adapter is loaded into the server and
    addressed by name, and results.json and generations.jsonl have generation=hf's schema (and, greedy and
    loglik, its numbers)."""
    common = [f"adapter_dir={adapter_dir}", "model=tiny", "value=power", "~benchmark@benchmarks.holisticbiasr",
              "~benchmark@benchmarks.hexphi", "~benchmark@benchmarks.beavertails", "benchmarks.rtp.num_prompts=3",
              "benchmarks.rtp.temperature=0", "benchmarks.rtp.num_samples=1", "generation.progress=false",
              "logger=none"]
    served = run_cli("valharm.evaluate", *common, "generation=openai", f"generation.base_url={server.url}/v1",
                     "generation.model=tiny", f"paths.cache_dir={tmp_path}/served_cache", f"hydra.run.dir={tmp_path}/served",
                     cwd=tmp_path, env={"OPENAI_API_KEY": KEY})
    assert served.returncode == 0, served.stderr[-3000:]
    local = run_cli("valharm.evaluate", *common, f"paths.cache_dir={tmp_path}/local_cache", f"hydra.run.dir={tmp_path}/local",
                    cwd=tmp_path)
    assert local.returncode == 0, local.stderr[-3000:]
    remote, here = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("served", "local"))
    assert set(remote) == set(here) and remote["generator"] == "openai" and here["generator"] == "hf"
    assert remote["served_model"].startswith("valharm-") and here["served_model"] is None
    assert server.paths["/v1/load_lora_adapter"] == 1 and server.models_used[remote["served_model"]] > 0
    # the probe's one-token requests (n, a token-id prompt, the echoed and the generated log-probability); everything
    # else went to the adapter
    assert server.models_used["tiny"] == 4
    assert remote["served_capabilities"]["prompt_logprobs"] == "aligned" and here["served_capabilities"] is None
    assert remote["generation_counts"]["requests"] > 0 and here["generation_counts"] is None
    assert set(remote["precision"]) == set() and set(here["precision"]) == {"generation"}
    for benchmark in here["metrics"]:
        assert set(remote["metrics"][benchmark]) == set(here["metrics"][benchmark])
    assert remote["metrics"]["rtp"] == here["metrics"]["rtp"]
    assert remote["metrics"]["pvq40"]["scores"] == pytest.approx(here["metrics"]["pvq40"]["scores"], abs=1e-4)
    rows = [[json.loads(line) for line in (tmp_path / run / "generations.jsonl").read_text().splitlines()]
            for run in ("served", "local")]
    assert [set(r) for r in rows[0]] == [set(r) for r in rows[1]]
    texts = [[r["text"] for r in run if r["benchmark"] == "rtp"] for run in rows]
    assert len(texts[0]) == 3 and texts[0] == texts[1]  # greedy: the same continuations


def test_a_fixed_adapter_name_is_not_reused_for_another_adapter(server, monkeypatch, adapter_dir, tmp_path):
    other = shutil.copytree(adapter_dir, tmp_path / "other_run" / "adapter")
    assert openai_generator(server, monkeypatch, adapter_name="mine").use_adapter(adapter_dir) == "mine"
    with pytest.raises(ValharmError, match="serves 'mine' from .*leave it null"):
        openai_generator(server, monkeypatch, adapter_name="mine").use_adapter(other)


def test_a_server_that_ignores_n_is_an_error_naming_it(monkeypatch):
    """Asked for k samples, a server returning fewer would shift RTP scores onto other prompts: refused."""
    reply = {"id": "c", "object": "text_completion", "created": 0, "model": "m",
             "choices": [{"index": 0, "text": " one sample only", "logprobs": None, "finish_reason": "length"}]}
    with FakeServer(lambda body: (200, {}, reply)) as server:
        generator = openai_generator(server, monkeypatch, model="m")
        with pytest.raises(ValharmError, match=r"returned 1 completion\(s\) for request rtp/0, asked for n=3"):
            generator.run(None, None, [GenerationRequest("rtp/0", "The prompt", 8, 0.1, 0.75, 3)])
