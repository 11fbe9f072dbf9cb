"""What generation is asked for and how answers are reused: request types (texts, log-likelihoods of fixed
continuations, a rating slot), batched dispatch to any generator, and the cached runner that runs only what the
result cache lacks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


from valharm.caching import Cache as ResultCache, digest

OnBatch = Callable[[list[int], list], None]

@dataclass(frozen=True)
class GenerationRequest:
    """One prompt (already formatted for the model) and how to sample from it."""

    id: str
    prompt: str
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy decoding
    top_p: float = 1.0
    num_samples: int = 1

    def sampling(self) -> tuple:
        return self.max_new_tokens, self.temperature, self.top_p, self.num_samples


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """One prompt and answers to score: the log-probability of each answer following the prompt."""

    id: str
    prompt: str
    continuations: tuple[str, ...]


@dataclass(frozen=True)
class SlotRequest:
    """Let the model reply in its own words (greedy, up to `max_new_tokens`), then score `continuations` right after
    the reply's `slot` ("my answer is"): a reading for answers that give their reason before the rating. A reply
    without the slot is read after the slot appended on a new line, and the output says so."""

    id: str
    prompt: str
    slot: str
    continuations: tuple[str, ...]
    max_new_tokens: int = 32


@dataclass(frozen=True)
class AnswerTreeRequest:
    """One prompt and a tree of answers to score: each of `branches` follows the prompt, each of `leaves` follows
    every branch. The output holds the log-probability of every branch + leaf answer ([branch][leaf]): the whole
    answer space a training taught (e.g. "<value> is" x "<importance> ..., so my answer is <rating>.")."""

    id: str
    prompt: str
    branches: tuple[str, ...]
    leaves: tuple[str, ...]

    def flat(self) -> LoglikelihoodRequest:
        """The same answers as one likelihood request (branch-major), for backends that score no trees."""
        return LoglikelihoodRequest(self.id, self.prompt, tuple(b + leaf for b in self.branches for leaf in self.leaves))

    def unflatten(self, logprobs: list[float]) -> list[list[float]]:
        width = len(self.leaves)
        return [logprobs[i:i + width] for i in range(0, len(logprobs), width)]


def cut_at_slot(reply: str, slot: str) -> tuple[str, bool]:
    """(the reply up to and including its first `slot`, whether the model wrote it); without one, the reply with
    the slot appended on a new line."""
    at = reply.lower().find(slot.lower())
    if at >= 0:
        return reply[:at + len(slot)], True
    return f"{reply.rstrip()}\n{slot[:1].upper()}{slot[1:]}".lstrip("\n"), False


def run_flattened(generator, model, tokenizer, requests: list[AnswerTreeRequest], desc: str,
                  on_batch: OnBatch | None) -> list:
    """Answer trees scored as flat likelihood requests (a backend without tree scoring, e.g. a server)."""
    def unflatten(indices: list[int], outputs: list) -> list:
        return [requests[i].unflatten(out) for i, out in zip(indices, outputs)]

    def batch_done(indices: list[int], outputs: list) -> None:
        on_batch(indices, unflatten(indices, outputs))

    flat = generator.run(model, tokenizer, [r.flat() for r in requests], desc, batch_done if on_batch else None)
    return unflatten(list(range(len(requests))), flat)


def run_requests(generator, model, tokenizer, requests: list, desc: str = "generate",
                 on_batch: OnBatch | None = None, chunk: int = 256) -> list:
    """The generator's outputs for one kind of request. SlotRequests run as two passes of any backend, `chunk`
    requests at a time (each chunk is handed to `on_batch` when done): the replies, then the continuations'
    log-probabilities after each reply's slot; each output is {reply, read_after, slot_written, logprobs}."""
    if requests and isinstance(requests[0], AnswerTreeRequest) and not getattr(generator, "scores_trees", False):
        return run_flattened(generator, model, tokenizer, requests, desc, on_batch)
    if not requests or not isinstance(requests[0], SlotRequest):
        return generator.run(model, tokenizer, requests, desc, on_batch)
    outputs = []
    for start in range(0, len(requests), chunk):
        part = requests[start:start + chunk]
        done = slot_passes(part, lambda asked, what: generator.run(model, tokenizer, asked, f"{desc} ({what})"))
        if on_batch:
            on_batch(list(range(start, start + len(part))), done)
        outputs.extend(done)
    return outputs


def slot_passes(requests: list[SlotRequest], run: Callable[[list, str], list]) -> list[dict]:
    """SlotRequests' two passes through `run(requests, what)`: the replies, then the continuations' log-probabilities
    after each reply's slot; each output is {reply, read_after, slot_written, logprobs}."""
    replies = run([GenerationRequest(r.id, r.prompt, r.max_new_tokens) for r in requests], "replies")
    cuts = [cut_at_slot(texts[0], r.slot) for texts, r in zip(replies, requests)]
    scores = run([LoglikelihoodRequest(r.id, r.prompt + text, r.continuations) for r, (text, _) in zip(requests, cuts)],
                 "slot")
    return [{"reply": texts[0], "read_after": text, "slot_written": written, "logprobs": logprobs}
            for texts, (text, written), logprobs in zip(replies, cuts, scores)]


def request_key(request) -> str:
    """What a request's outputs depend on besides the model: the formatted prompt and how it is decoded."""
    if isinstance(request, AnswerTreeRequest):
        return digest({"prompt": request.prompt, "branches": list(request.branches), "leaves": list(request.leaves)})
    if isinstance(request, SlotRequest):
        return digest({"prompt": request.prompt, "slot": request.slot, "continuations": list(request.continuations),
                       "max_new_tokens": request.max_new_tokens})
    if isinstance(request, LoglikelihoodRequest):
        return digest({"prompt": request.prompt, "continuations": list(request.continuations)})
    return digest({"prompt": request.prompt, "sampling": list(request.sampling())})


def cached_run(generator, model, tokenizer, requests: list, cache: ResultCache | None, namespace: str,
               desc: str = "generate") -> tuple[list, dict]:
    """The generator's outputs for `requests`, running only those not in `cache` under `namespace`.

    Outputs are stored batch by batch (a SlotRequest's reply and its reading each as it arrives, under their own
    keys), so an interrupted run keeps every finished batch. Returns the
    outputs and {hits, misses} (distinct requests found in / missing from the cache).
    """
    keys = [request_key(r) for r in requests]
    known = cache.get(namespace, keys) if cache else {}
    todo = list(dict.fromkeys(k for k in keys if k not in known))
    first = {k: r for k, r in zip(reversed(keys), reversed(requests))}  # each key's first request
    generator.new_tokens = 0

    def store(indices: list[int], outputs: list) -> None:
        fresh = {todo[i]: out for i, out in zip(indices, outputs)}
        known.update(fresh)
        if cache:
            cache.put(namespace, fresh)

    if todo and cache and isinstance(first[todo[0]], SlotRequest):  # each pass cached: every reply kept as it arrives
        def cached_pass(asked: list, what: str) -> list:
            return cached_run(generator, model, tokenizer, asked, cache, namespace, f"{desc} ({what})")[0]

        store(list(range(len(todo))), slot_passes([first[k] for k in todo], cached_pass))
    elif todo:
        run_requests(generator, model, tokenizer, [first[k] for k in todo], desc, on_batch=store)
    return [known[k] for k in keys], {"hits": len(set(keys)) - len(todo), "misses": len(todo)}
