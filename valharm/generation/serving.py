"""Generation through an OpenAI-compatible server (vLLM, llama.cpp, TGI) instead of local weights.

`OpenAIGenerator` has HFGenerator's interface: chat prompts go to /chat/completions as messages, raw
text to /completions, answers are scored with /completions' `echo` + `logprobs` on token ids (as lm-
evaluation-harness's local-completions does). A LoRA adapter is served under its own model name (vLLM
`--enable-lora`): `use_adapter` finds it in /models, or loads it through vLLM's /load_lora_adapter.
Calls run in a bounded thread pool; the client retries 408/409/429/5xx, timeouts and connection errors.
"""
from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from valharm.errors import ValharmError
from valharm.generation.requests import LoglikelihoodRequest, OnBatch
from valharm.models.loading import adapter_digest, added_bos, encode_prompts
from valharm.generation.openai_api import failure, openai_client


class OpenAIGenerator:
    """Generations and answer log-probabilities from a model served behind an OpenAI-compatible API."""

    name = "openai"
    needs_weights = False  # the server holds the model; its precision is the server's

    def __init__(self, model: str | None, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 max_concurrency: int = 16, max_retries: int = 6, timeout: float = 120.0, seed: int = 0,
                 progress: bool = True, load_adapters: bool = True, adapter_name: str | None = None):
        if not model:
            raise ValharmError("generation=openai: set generation.model to the served base model's name")
        self.model, self.served, self.seed, self.progress = model, model, seed, progress
        self.max_concurrency, self.load_adapters, self.adapter_name = max_concurrency, load_adapters, adapter_name
        self.new_tokens = self.retries = 0
        self._attempts = threading.local()  # each worker thread makes one call at a time
        self.client = openai_client("generation", api_key_env, base_url, max_retries, timeout, self._count_attempt)
        self.base_url = str(self.client.base_url).rstrip("/")

    def _count_attempt(self, request) -> None:
        self._attempts.count = getattr(self._attempts, "count", 0) + 1

    def identity(self) -> str:
        return f"openai:{self.model}@{self.base_url}"

    def use_adapter(self, adapter_dir: Path | None) -> str:
        """Send generations to the base model (None) or to the served LoRA adapter of `adapter_dir`; its name."""
        import httpx
        import openai

        if adapter_dir is None:
            self.served = self.model
            return self.served
        adapter_dir = Path(adapter_dir).resolve()
        wanted = self.adapter_name or "valharm-" + adapter_digest(adapter_dir)[:12]  # same weights, same name
        found = self._served_as(wanted, adapter_dir)
        if found:
            self.served = found
            return found
        fix = (f"start vLLM with --enable-lora --lora-modules {wanted}={adapter_dir}, or let valharm load it "
               f"(generation.load_adapters=true and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True on the server; the "
               f"folder must be visible to the server at that path)")
        if not self.load_adapters:
            raise ValharmError(f"adapter {adapter_dir} is not served at {self.base_url}; {fix}")
        try:
            self.client.post("load_lora_adapter", cast_to=httpx.Response,
                             body={"lora_name": wanted, "lora_path": str(adapter_dir)})
        except openai.APIError as err:  # a 400 saying it is loaded already: another job was first (checked below)
            if not (isinstance(err, openai.BadRequestError) and "already" in err.response.text.lower()):
                raise ValharmError(f"could not load adapter {adapter_dir} into the server at {self.base_url}: "
                                   f"{failure(err)}; {fix}") from None
        self.served = self._served_as(wanted, adapter_dir) or wanted
        return self.served

    def _served_as(self, wanted: str, adapter_dir: Path) -> str | None:
        """The name this adapter is served under: `wanted` (a name made from its weights, or `adapter_name`, which
        must then be served from this folder), else whatever the server lists with this folder as its root."""
        import openai

        try:
            listed = list(self.client.models.list())
        except openai.APIError as err:
            raise ValharmError(f"cannot list the models served at {self.base_url}: {failure(err)}") from None
        roots = {entry.id: getattr(entry, "root", None) for entry in listed}
        if wanted in roots:
            root = roots[wanted]
            if self.adapter_name and root and Path(root).resolve() != adapter_dir:
                raise ValharmError(f"the server at {self.base_url} serves '{wanted}' from {root}, not {adapter_dir}: "
                                   f"generation.adapter_name names one adapter; leave it null when evaluating several "
                                   f"(each is then named after its weights)")
            return wanted
        return next((name for name, root in roots.items() if root and Path(root).resolve() == adapter_dir), None)

    def run(self, model, tokenizer, requests: list, desc: str = "generate", on_batch: OnBatch | None = None) -> list:
        """Texts for GenerationRequests, log-probabilities for LoglikelihoodRequests (one kind per call),
        in request order. `model` is not used; `tokenizer` (may be None) says whether to drop a leading BOS."""
        import openai

        score = bool(requests) and isinstance(requests[0], LoglikelihoodRequest)
        ask = functools.partial(self._loglikelihood, tokenizer=tokenizer) if score else self._generate
        strip = added_bos(tokenizer) if tokenizer is not None else ""  # the server adds this BOS itself
        self.new_tokens = self.retries = 0
        outputs: dict[int, object] = {}
        bar = tqdm(total=len(requests), desc=desc, disable=not self.progress, unit="prompt")
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = {pool.submit(self._counted, ask, request, strip): i for i, request in enumerate(requests)}
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    try:
                        outputs[i], tokens, attempts = future.result()
                    except (openai.APIError, ValueError) as err:  # retries exhausted, not retried, or not JSON
                        raise ValharmError(f"generation through {self.base_url} failed for request "
                                           f"{requests[i].id}: {failure(err)}") from None
                    self.new_tokens += tokens
                    self.retries += attempts - 1
                    if on_batch:
                        on_batch([i], [outputs[i]])
                    bar.update(1)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            finally:
                bar.close()
        return [outputs[i] for i in range(len(requests))]

    def _counted(self, ask, request, strip: str) -> tuple:
        """(output, completion tokens, attempts) of one request."""
        self._attempts.count = 0
        output, tokens = ask(request, strip)
        return output, tokens, self._attempts.count

    def _generate(self, request, strip: str) -> tuple[list[str], int]:
        sampling = dict(model=self.served, max_tokens=request.max_new_tokens, temperature=float(request.temperature),
                        top_p=request.top_p, n=request.num_samples, seed=self.seed)
        messages = getattr(request.prompt, "messages", None)
        if messages is not None:
            response = self.client.chat.completions.create(messages=list(messages), **sampling)
            texts = [c.message.content or "" for c in sorted(response.choices, key=lambda c: c.index)]
        else:
            response = self.client.completions.create(prompt=request.prompt.removeprefix(strip), **sampling)
            texts = [c.text for c in sorted(response.choices, key=lambda c: c.index)]
        if len(texts) != request.num_samples:
            raise ValharmError(f"the server at {self.base_url} returned {len(texts)} completion(s) for request "
                               f"{request.id}, asked for n={request.num_samples}: it ignores `n`; use a server that "
                               f"honours it (vLLM does) or ask for one sample per prompt")
        return texts, response.usage.completion_tokens if response.usage else 0

    def _loglikelihood(self, request, strip: str, tokenizer=None) -> tuple[list[float], int]:
        """Each continuation's summed token log-probabilities, from the server's echo of prompt + answer sent as
        token ids tokenised here exactly as local scoring does (so both score the same tokens, whatever the
        tokenizer does at the boundary; a server adds no BOS to token ids)."""
        if tokenizer is None:
            raise ValharmError("scoring answers through a server needs the model's tokenizer")
        prompt = encode_prompts(tokenizer, [str(request.prompt)])[0]
        scores = []
        for continuation in request.continuations:
            answer = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            response = self.client.completions.create(model=self.served, prompt=prompt + answer, max_tokens=1,
                                                      temperature=0.0, echo=True, logprobs=1)
            logprobs = response.choices[0].logprobs if response.choices else None
            values = logprobs.token_logprobs if logprobs else None
            if not values or len(values) < len(prompt) + len(answer):
                raise ValharmError(f"the server at {self.base_url} returned no token log-probabilities of the "
                                   f"prompt; scoring answers needs `echo` with `logprobs` on /completions (vLLM has "
                                   f"it, llama.cpp does not): use such a server, or benchmarks.pvq40.scoring=generate")
            picked = values[len(prompt):len(prompt) + len(answer)]
            if not picked or None in picked:
                raise ValharmError(f"the server at {self.base_url} gave no log-probability for the answer "
                                   f"{continuation!r} of request {request.id}")
            scores.append(float(sum(picked)))
        return scores, 0
