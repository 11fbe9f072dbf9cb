"""Generation through an OpenAI-compatible server (vLLM, llama.cpp, TGI) instead of local weights.

`OpenAIGenerator` has HFGenerator's interface: chat prompts go to /chat/completions as messages, raw
text to /completions, answers are scored with /completions' `echo` + `logprobs` on token ids (as lm-
evaluation-harness's local-completions does), or on text where the server refuses token ids and its echo was
probed aligned. `probe` asks the server once what it can do (generation/probe.py) and the run adapts: k samples
as k requests with distinct seeds where `n` is ignored. A LoRA adapter is served under its own model name (vLLM
`--enable-lora`): `use_adapter` finds it in /models, or loads it through vLLM's /load_lora_adapter.
Calls run in a bounded thread pool, each output handed on as it arrives; the client retries 408/409/429/5xx,
timeouts and connection errors (not a 5xx that says the request is invalid). `counts` keeps requests, API calls
(a request's k samples may be k calls), retries and HTTP errors for results.json.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from valharm.errors import ValharmError
from valharm.generation.openai_api import failure, openai_client, unreachable
from valharm.generation.probe import covering, probe
from valharm.generation.requests import LoglikelihoodRequest, OnBatch
from valharm.models.loading import adapter_digest, added_bos, encode_prompts

log = logging.getLogger("valharm")


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
        self.capabilities: dict | None = None  # what `probe` found; None: not asked (token ids, `n` assumed)
        self.counts: Counter = Counter()  # over the job: requests, retries, HTTP errors by status
        self._attempts = threading.local()  # each worker thread makes one call at a time
        self._lock = threading.Lock()
        self.client = openai_client("generation", api_key_env, base_url, max_retries, timeout, self._count_attempt,
                                    self._count_response)
        self.base_url = str(self.client.base_url).rstrip("/")

    def _count_attempt(self, request) -> None:
        self._attempts.count = getattr(self._attempts, "count", 0) + 1

    def _count_response(self, response) -> None:
        if response.status_code >= 400:
            with self._lock:
                self.counts[f"http_{response.status_code}"] += 1

    def probe(self, tokenizer, needs: dict[str, str]) -> dict:
        """Ask the server once what it can do (and which model it serves); raise on a capability `needs` names that
        it lacks, naming the setting that avoids it. The answers steer how requests are sent."""
        self.capabilities = probe(self, tokenizer, needs)
        self.counts.clear()  # the probe's refused requests are in the capabilities, not the run's counts
        log.info(f"server at {self.base_url} serves '{self.model}': " + ", ".join(
            f"{key}={self.capabilities[key]}" for key in ("n", "token_id_prompts", "prompt_logprobs")))
        return self.capabilities

    def _capable(self, key: str, default):
        return self.capabilities.get(key, default) if self.capabilities else default

    def identity(self) -> str:
        """The server and model, and how the probe made valharm ask (samples as separate requests, answers scored
        on text): each gives other outputs than the plain way."""
        ways = [way for way, used in (("samples=requests", self._capable("n", True) is False),
                                      ("scoring=text", self._capable("scoring_prompts", None) == "text")) if used]
        return f"openai:{self.model}@{self.base_url}" + "".join(f"#{way}" for way in ways)

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
        in request order. `model` is not used; `tokenizer` (may be None) says whether to drop a leading BOS.
        Each output goes to `on_batch` from its worker as it arrives: an interrupt (Ctrl-C) or a failed request
        waits for the requests in flight and keeps them all."""
        import concurrent.futures

        score = bool(requests) and isinstance(requests[0], LoglikelihoodRequest)
        ask = functools.partial(self._loglikelihood, tokenizer=tokenizer) if score else self._generate
        strip = added_bos(tokenizer) if tokenizer is not None else ""  # the server adds this BOS itself
        self.new_tokens = self.retries = 0
        outputs: dict[int, object] = {}
        bar = tqdm(total=len(requests), desc=desc, disable=not self.progress, unit="prompt")
        start = time.perf_counter()

        def one(i: int) -> None:
            self._attempts.count = self._attempts.calls = 0
            output, tokens = ask(requests[i], strip)
            with self._lock:
                outputs[i] = output
                self.new_tokens += tokens
                self.retries += self._attempts.count - self._attempts.calls
                self.counts.update(requests=1, calls=self._attempts.calls,
                                   retries=self._attempts.count - self._attempts.calls)
                if on_batch:
                    on_batch([i], [output])
                bar.update(1)

        pool = ThreadPoolExecutor(max_workers=self.max_concurrency)
        futures = {pool.submit(one, i): i for i in range(len(requests))}
        try:
            for future in concurrent.futures.as_completed(futures):
                if future.exception() is not None:
                    self.counts["failed"] += 1
                    raise self._failed(future.exception(), requests[futures[future]], score)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            pool.shutdown(wait=True)  # requests in flight finish and are handed on
            bar.close()
        log.info(f"{desc}: {len(requests)} request(s) through {self.base_url} in {time.perf_counter() - start:.1f} s"
                 f" ({self.retries} retries, {self.new_tokens} new tokens)")
        return [outputs[i] for i in range(len(requests))]

    def _failed(self, err: BaseException, request, score: bool) -> BaseException:
        """A failed request as one clear error (a connection error: check generation.base_url, rerun resumes)."""
        import openai

        if not isinstance(err, (openai.APIError, ValueError)) or isinstance(err, ValharmError):
            return err
        what = "scoring answers" if score else "generation"
        return ValharmError(unreachable(err, "generation", self.base_url)
                            or f"{what} through {self.base_url} failed for request {request.id}: {failure(err)}; "
                               f"rerunning the same command resumes (finished requests are kept)")

    def _create(self, endpoint, **body):
        """One API call (counted, so that retries = attempts - calls)."""
        self._attempts.calls = getattr(self._attempts, "calls", 0) + 1
        return endpoint.create(**body)

    def _generate(self, request, strip: str) -> tuple[list[str], int]:
        """`num_samples` texts: one request with `n`, or (a server that ignores `n`) one request per sample with
        seeds seed, seed+1, ... (so the samples differ)."""
        k, honours_n = request.num_samples, self._capable("n", True)
        texts, tokens = [], 0
        for j in range(1 if honours_n else k):
            got, used = self._sample(request, strip, n=k if honours_n else 1, seed=self.seed + j)
            texts, tokens = texts + got, tokens + used
        if len(texts) != k:
            raise ValharmError(f"the server at {self.base_url} returned {len(texts)} completion(s) for request "
                               f"{request.id}, asked for n={k}: it ignores `n` (not found by a probe); use a server "
                               f"that honours it (vLLM does), or benchmarks.{request.id.split('/')[0]}.num_samples=1")
        return texts, tokens

    def _sample(self, request, strip: str, n: int, seed: int) -> tuple[list[str], int]:
        sampling = {"model": self.served, "max_tokens": request.max_new_tokens,
                    "temperature": float(request.temperature), "top_p": request.top_p, "n": n, "seed": seed}
        messages = getattr(request.prompt, "messages", None)
        if messages is not None:
            response = self._create(self.client.chat.completions, messages=list(messages), **sampling)
            texts = [c.message.content or "" for c in sorted(response.choices, key=lambda c: c.index)]
        else:
            response = self._create(self.client.completions, prompt=request.prompt.removeprefix(strip), **sampling)
            texts = [c.text for c in sorted(response.choices, key=lambda c: c.index)]
        return texts, response.usage.completion_tokens if response.usage else 0

    def _loglikelihood(self, request, strip: str, tokenizer=None) -> tuple[list[float], int]:
        """Each continuation's summed token log-probabilities, from the server's echo of prompt + answer sent as
        token ids tokenised here exactly as local scoring does (so both score the same tokens, whatever the
        tokenizer does at the boundary; a server adds no BOS to token ids), or as text where the probe found
        token ids refused and the echo aligned."""
        if self._capable("scoring_prompts", "token_ids") == "text":
            return [self._text_loglikelihood(request, str(request.prompt).removeprefix(strip), continuation)
                    for continuation in request.continuations], 0
        if tokenizer is None:
            raise ValharmError("scoring answers through a server needs the model's tokenizer")
        prompt = encode_prompts(tokenizer, [str(request.prompt)])[0]
        scores = []
        for continuation in request.continuations:
            answer = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            values = self._echo(prompt + answer)
            if not values or len(values) < len(prompt) + len(answer):
                raise ValharmError(f"the server at {self.base_url} returned no token log-probabilities of the "
                                   f"prompt; scoring answers needs `echo` with `logprobs` on /v1/completions (vLLM "
                                   f"has it): use such a server, or benchmarks.pvq40.scoring=generate")
            picked = values[len(prompt):len(prompt) + len(answer)]
            if not picked or None in picked:
                raise ValharmError(f"the server at {self.base_url} gave no log-probability for the answer "
                                   f"{continuation!r} of request {request.id}")
            scores.append(float(sum(picked)))
        return scores, 0

    def _echo(self, prompt, tokens: bool = False):
        """The echoed token log-probabilities of `prompt` (and `tokens`: their texts), one generated token last."""
        response = self._create(self.client.completions, model=self.served, prompt=prompt, max_tokens=1,
                                temperature=0.0, echo=True, logprobs=1)
        logprobs = response.choices[0].logprobs if response.choices else None
        values = list(logprobs.token_logprobs or []) if logprobs else []
        return (values, list(logprobs.tokens or []) if logprobs else []) if tokens else values

    def _text_loglikelihood(self, request, prompt: str, continuation: str) -> float:
        """The continuation's log-probability from the echo of prompt + continuation sent as text: the last tokens
        of the echoed prompt whose texts cover the continuation (a token across the boundary counts)."""
        values, pieces = self._echo(prompt + continuation, tokens=True)
        end = covering(pieces, prompt + continuation)
        if end is None or len(values) < end:
            raise ValharmError(f"the server at {self.base_url} echoed a text that does not end with the answer "
                               f"{continuation!r} of request {request.id}; use benchmarks.pvq40.scoring=generate")
        picked, covered = [], 0
        for piece, value in zip(reversed(pieces[:end]), reversed(values[:end])):
            if covered >= len(continuation):
                break
            picked.append(value)
            covered += len(piece)
        if not picked or None in picked:
            raise ValharmError(f"the server at {self.base_url} gave no log-probability for the answer "
                               f"{continuation!r} of request {request.id}")
        return float(sum(picked))
