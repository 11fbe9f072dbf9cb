"""What an OpenAI-compatible server can do, asked once before any work (a handful of one-token requests): which
model it serves, whether it honours `n`, takes prompts as token ids, echoes prompt log-probabilities that are
aligned with the tokens they belong to, and loads LoRA adapters at runtime. Servers differ here: vLLM does all of
it; llama-cpp-python's server serves one model under any name, ignores `n`, refuses token ids (HTTP 500) and
echoes log-probabilities shifted by one token.

The answers are recorded (results.json `served_capabilities`); a capability the run needs and the server lacks is
one error naming the setting that avoids it, raised before training or generation starts.
"""
from __future__ import annotations

import logging

from valharm.errors import ValharmError
from valharm.generation.openai_api import failure, unreachable

log = logging.getLogger("valharm")
PROBE_PROMPT = "The capital of France is"
TOLERANCE = 0.05  # nats: one token scored at the same position twice (quantised weights, another batch shape)


def server_needs(benchmarks: dict, adapter: bool) -> dict[str, str]:
    """What a run asks of a server that it cannot do without: {capability: the setting that avoids it}."""
    needs = {}
    for name, benchmark in benchmarks.items():
        if getattr(benchmark, "scoring", "generate") != "generate":  # PVQ-40's probability readings
            needs["prompt_logprobs"] = f"benchmarks.{name}.scoring=generate"
    if adapter:
        needs["lora_loading"] = "generation=hf (the adapter is used in-process), or an aligner that trains none (icl)"
    return needs


def api_error(generator, err) -> ValharmError:
    """A probe request that failed for a reason other than the capability it asks about."""
    return ValharmError(unreachable(err, "generation", generator.base_url)
                        or f"asking the server at {generator.base_url} what it can do failed: {failure(err)}")


def served_model(generator) -> dict:
    """The served name of generation.model: listed by /v1/models; a single-model server that answers any name is
    taken at its word with a warning, and its own name is used (so results and caches carry it)."""
    import openai

    try:
        listed = list(generator.client.models.list())
    except openai.APIError as err:
        raise api_error(generator, err) from None
    names = [entry.id for entry in listed]
    found = {"models": names, "owned_by": sorted({str(getattr(e, "owned_by", None)) for e in listed}),
             "requested_model": generator.model, "model": generator.model, "answers_any_name": False}
    if generator.model in names:
        return found
    if len(names) == 1 and complete(generator, PROBE_PROMPT, model=generator.model) is not None:
        log.warning(f"the server at {generator.base_url} serves only '{names[0]}' and answers any model name: "
                    f"generation.model='{generator.model}' is taken to mean '{names[0]}', the name results and the "
                    f"cache record (set generation.model={names[0]} to silence this)")
        return found | {"model": names[0], "answers_any_name": True}
    raise ValharmError(f"generation.model='{generator.model}' is not served at {generator.base_url}, which serves "
                       f"{', '.join(map(repr, names)) or 'nothing'}; set generation.model to one of them")


def complete(generator, prompt, model: str | None = None, **options):
    """A one-token completion, or None when the server refuses the request itself (HTTP 4xx/5xx)."""
    import openai

    try:
        return generator.client.completions.create(model=model or generator.model, prompt=prompt, max_tokens=1,
                                                   temperature=options.pop("temperature", 0.0), seed=generator.seed,
                                                   **options)
    except openai.APIStatusError as err:
        log.debug(f"probe request refused: {failure(err)}")
        return None
    except openai.APIError as err:
        raise api_error(generator, err) from None


def echoed(generator, prompt) -> tuple[list, list]:
    """The echoed log-probabilities and token texts of `prompt` (and of any generated token after it)."""
    response = complete(generator, prompt, echo=True, logprobs=1)
    logprobs = response.choices[0].logprobs if response is not None and response.choices else None
    return (list(logprobs.token_logprobs or []), list(logprobs.tokens or [])) if logprobs else ([], [])


def covering(pieces: list[str], text: str) -> int | None:
    """The number of leading token texts that end with `text` (a BOS text before it is allowed), or None."""
    joined = ""
    for count, piece in enumerate([""] + pieces):
        joined += piece
        if joined.endswith(text):
            return count
    return None


def prompt_logprobs(generator, tokenizer, as_ids: bool) -> tuple[str, str]:
    """('aligned' | 'misaligned' | 'absent', what was seen). A token generated after a prompt comes with its
    log-probability; the same token appended to the prompt and echoed must have that log-probability (a server
    that scores each prompt token with the wrong position's distribution gives another number)."""
    from valharm.models.loading import encode_prompts

    first = complete(generator, PROBE_PROMPT, logprobs=1)
    choice = first.choices[0] if first is not None and first.choices else None
    token = choice.text if choice else ""
    generated = choice.logprobs.token_logprobs[0] if token and choice.logprobs and choice.logprobs.token_logprobs \
        else None
    if generated is None:
        return "absent", f"no log-probability of the token generated after {PROBE_PROMPT!r}"
    if as_ids:  # the token appended as it encodes alone (re-encoding the whole text could merge it)
        prompt = encode_prompts(tokenizer, [PROBE_PROMPT])[0]
        appended = tokenizer(token, add_special_tokens=False)["input_ids"]
        values, _ = echoed(generator, prompt + appended)
        at, width = len(prompt), len(appended)
    else:
        values, pieces = echoed(generator, PROBE_PROMPT + token)
        at, width = covering(pieces, PROBE_PROMPT), 1
        if at is not None and pieces[at:at + 1] != [token]:
            at = None
    scored = values[at:at + width] if at is not None else []
    if len(scored) != width or None in scored:
        return "absent", f"no echoed log-probability of {PROBE_PROMPT + token!r}'s last token (echo=true, logprobs=1)"
    seen = (f"{token!r} after {PROBE_PROMPT!r}: {generated:.3f} when generated, {sum(scored):.3f} when echoed as "
            f"part of the prompt")
    return ("aligned" if abs(generated - sum(scored)) <= TOLERANCE else "misaligned"), seen


def lora_loading(generator) -> tuple[bool, str]:
    """Whether /v1/load_lora_adapter exists (an empty request: 400 where it does, 404 where it does not)."""
    import httpx
    import openai

    try:
        generator.client.post("load_lora_adapter", cast_to=httpx.Response, body={"lora_name": "", "lora_path": ""})
    except (openai.NotFoundError, openai.APIStatusError) as err:
        if isinstance(err, openai.NotFoundError) or err.status_code == 405:
            return False, f"no /v1/load_lora_adapter ({failure(err)})"
        return True, f"/v1/load_lora_adapter answers ({failure(err)} to an empty request)"
    except openai.APIError as err:
        raise api_error(generator, err) from None
    return True, "/v1/load_lora_adapter answers"


def probe(generator, tokenizer, needs: dict[str, str]) -> dict:
    """The server's capabilities (recorded as `served_capabilities`); the first missing one in `needs` raised."""
    found = served_model(generator)
    generator.model = generator.served = found["model"]
    two = complete(generator, PROBE_PROMPT, n=2, temperature=1.0)
    found["n"] = two is not None and len(two.choices) == 2
    found["samples"] = "n" if found["n"] else "one request per sample, seeds seed+0..k-1"
    ids = encode_prompts_or_none(tokenizer)
    found["token_id_prompts"] = ids is not None and complete(generator, ids) is not None
    found["prompt_logprobs"], found["prompt_logprobs_probe"] = prompt_logprobs(generator, tokenizer,
                                                                               found["token_id_prompts"])
    aligned = found["prompt_logprobs"] == "aligned"
    found["scoring_prompts"] = ("token_ids" if found["token_id_prompts"] else "text") if aligned else None
    if "lora_loading" in needs and generator.load_adapters:
        found["lora_loading"], found["lora_loading_probe"] = lora_loading(generator)
    missing = {"prompt_logprobs": not aligned, "lora_loading": found.get("lora_loading") is False}
    for capability, avoid in needs.items():
        if missing.get(capability):
            detail = found.get(f"{capability}_probe", "")
            raise ValharmError(f"the server at {generator.base_url} lacks {WHAT[capability]} ({found[capability]}: "
                               f"{detail}), which this run needs; avoid it with {avoid}, or use a server that has "
                               f"it ({FIX[capability]})")
    return found


def encode_prompts_or_none(tokenizer) -> list[int] | None:
    from valharm.models.loading import encode_prompts

    return encode_prompts(tokenizer, [PROBE_PROMPT])[0] if tokenizer is not None else None


WHAT = {"prompt_logprobs": "aligned prompt log-probabilities (`echo` + `logprobs` on /v1/completions)",
        "lora_loading": "runtime LoRA adapter loading"}
FIX = {"prompt_logprobs": "vLLM",
       "lora_loading": "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve <base> --enable-lora"}
