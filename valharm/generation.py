"""Text generation behind one small interface: a list of requests in, k texts per request out.

`HFGenerator` runs its own decoding loop over a transformers model and its KV cache, so that it can
- batch prompts by token length (little padding),
- compute the KV cache of a prefix common to a whole batch once (chat template, questionnaire framing),
- encode each prompt once for its k samples,
- drop finished sequences from the batch,
- sample top-p exactly without sorting the whole vocabulary at every step.
On a GPU (`decode: auto`) it decodes with a static cache instead, each step replayed as a CUDA graph
(valharm/static_decoding.py): there, launching kernels, not computing, is what a decode step waits on.
Greedy decoding gives the same tokens as `model.generate`; sampling draws from the same distribution.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import groupby
from typing import Callable

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from valharm.caching import Cache as ResultCache, digest
from valharm.errors import ValharmError
from valharm.models.loading import encode_prompts
from valharm.static_decoding import decode_static, supports_static

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


def cut_at_slot(reply: str, slot: str) -> tuple[str, bool]:
    """(the reply up to and including its first `slot`, whether the model wrote it); without one, the reply with
    the slot appended on a new line."""
    at = reply.lower().find(slot.lower())
    if at >= 0:
        return reply[:at + len(slot)], True
    return f"{reply.rstrip()}\n{slot[:1].upper()}{slot[1:]}".lstrip("\n"), False


def run_requests(generator, model, tokenizer, requests: list, desc: str = "generate",
                 on_batch: OnBatch | None = None, chunk: int = 256) -> list:
    """The generator's outputs for one kind of request. SlotRequests run as two passes of any backend, `chunk`
    requests at a time (each chunk is handed to `on_batch` when done): the replies, then the continuations'
    log-probabilities after each reply's slot; each output is {reply, read_after, slot_written, logprobs}."""
    if not requests or not isinstance(requests[0], SlotRequest):
        return generator.run(model, tokenizer, requests, desc, on_batch)
    outputs = []
    for start in range(0, len(requests), chunk):
        part = requests[start:start + chunk]
        replies = generator.run(model, tokenizer, [GenerationRequest(r.id, r.prompt, r.max_new_tokens) for r in part],
                                f"{desc} (replies)")
        cuts = [cut_at_slot(texts[0], r.slot) for texts, r in zip(replies, part)]
        scores = generator.run(model, tokenizer, [LoglikelihoodRequest(r.id, r.prompt + text, r.continuations)
                                                  for r, (text, _) in zip(part, cuts)], f"{desc} (slot)")
        done = [{"reply": texts[0], "read_after": text, "slot_written": written, "logprobs": logprobs}
                for texts, (text, written), logprobs in zip(replies, cuts, scores)]
        if on_batch:
            on_batch(list(range(start, start + len(part))), done)
        outputs.extend(done)
    return outputs


def nucleus(logits: torch.Tensor, temperature: float, top_p: float,
            candidates: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, weights) of the top-p nucleus of each row of `logits` at `temperature`.

    A token is kept when the probability mass of the tokens ranked above it is below `top_p` (the rule
    of transformers' TopPLogitsWarper); weights are proportional to the kept tokens' probabilities and 0
    elsewhere. Only the `candidates` most likely tokens are ranked, and the total mass is bounded by
    assuming every other token as likely as the last candidate: where that bound leaves a row's nucleus
    in doubt, the row's exact total is computed, and where the nucleus reaches past the candidates the
    row is ranked over the whole vocabulary. The result is exact; the common case touches the full
    vocabulary only in `topk`. `candidates=0` ranks the whole vocabulary.
    """
    vocab = logits.shape[-1]
    if candidates <= 0:  # the whole vocabulary, sorted: no data-dependent branch (a CUDA graph can hold it)
        scores, ids = (logits.float() / temperature).sort(dim=-1, descending=True)
        weights = (scores - scores[:, :1]).exp()
        before = weights.cumsum(-1) - weights
        return ids, weights * (before < top_p * weights.sum(-1, keepdim=True))
    top, ids = logits.topk(min(candidates, vocab), dim=-1)
    scores = top.float() / temperature
    weights = (scores - scores[:, :1]).exp()  # relative to the most likely token
    before = weights.cumsum(-1) - weights  # mass ranked above each candidate
    total = weights.sum(-1, keepdim=True)
    bound = total + (vocab - top.shape[-1]) * weights[:, -1:]
    doubt = ((before >= top_p * total) & (before < top_p * bound)).any(-1) | (total < top_p * bound).squeeze(-1)
    if doubt.any():
        exact = ((logits[doubt].float() / temperature) - scores[doubt, :1]).exp().sum(-1, keepdim=True)
        total[doubt] = exact
        wide = doubt.clone()
        wide[doubt] = (weights[doubt].sum(-1, keepdim=True) < top_p * exact).squeeze(-1)
        if wide.any():  # the nucleus reaches past the candidates: rank the whole vocabulary
            full, full_ids = logits[wide].float().sort(dim=-1, descending=True)
            full_weights = (full / temperature - scores[wide, :1]).exp()
            pad = full.shape[-1] - top.shape[-1]
            weights, ids = (torch.cat([t, t.new_zeros(len(t), pad)], -1) for t in (weights, ids))
            weights[wide], ids[wide] = full_weights, full_ids
            before = weights.cumsum(-1) - weights
    return ids, weights * (before < top_p * total)


MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit pattern as torch's int64 holds it."""
    return value - (1 << 64) if value >= 1 << 63 else value


GOLDEN, MIX1, MIX2 = (_signed(v) for v in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (wrapping arithmetic): a well-mixed 64-bit hash of each element."""
    z = x + GOLDEN
    z = (z ^ _shift_right(z, 30)) * MIX1
    z = (z ^ _shift_right(z, 27)) * MIX2
    return z ^ _shift_right(z, 31)


def sample_keys(seed: int, request_keys: list[str], k: int, device) -> torch.Tensor:
    """One random stream per sample: from the seed, the request (its prompt and sampling) and the sample's index,
    so a sample never depends on which other requests share its batch (a resumed run draws what an
    uninterrupted one would)."""
    base = [int(digest({"seed": seed, "request": key})[:15], 16) for key in request_keys]
    keys = torch.tensor(base, dtype=torch.long).repeat_interleave(k) * 64 + torch.arange(k).repeat(len(base))
    return splitmix64(keys).to(device)


def uniforms(keys: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """A uniform number in [0, 1) for each row's stream at decoding `step` (an int, or a 0-d tensor on the device:
    int64 products wrap, as the Python int arithmetic does modulo 2**64)."""
    offset = step * GOLDEN if isinstance(step, torch.Tensor) else _signed((step * 0x9E3779B97F4A7C15) & MASK64)
    bits = _shift_right(splitmix64(keys + offset), 11)
    return bits.double().mul(2.0 ** -53).float()


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float, keys: torch.Tensor | None = None,
                step: int | torch.Tensor = 0, candidates: int = 64) -> torch.Tensor:
    """The next token of every row: argmax when temperature is 0, else a top-p sample drawn by inverse transform
    from each row's own random stream (`keys`, see `sample_keys`)."""
    if temperature <= 0:
        return logits.float().argmax(-1)
    if top_p >= 1.0:
        ids, weights = None, (logits.float() / temperature).softmax(-1)
    else:
        ids, weights = nucleus(logits, temperature, top_p, candidates)
    cumulative = weights.cumsum(-1)
    threshold = uniforms(keys, step)[:, None] * cumulative[:, -1:]
    picked = (cumulative <= threshold).sum(-1, keepdim=True).clamp(max=weights.shape[-1] - 1)
    picked = torch.where(weights.gather(-1, picked) > 0, picked, (weights > 0).int().argmax(-1, keepdim=True))
    return (picked if ids is None else ids.gather(-1, picked)).squeeze(-1)


class PreallocatedLayer(DynamicLayer):
    """A full-attention KV cache layer with room for `capacity` tokens, written in place.

    transformers' DynamicLayer concatenates the whole cache at every step; this keeps a buffer and
    hands out views of its filled part.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states, value_states):
        self.device = key_states.device
        self.buffers = [s.new_empty(*s.shape[:2], self.capacity, s.shape[3]) for s in (key_states, value_states)]
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self.buffers[0][:, :, self.length:end] = key_states
        self.buffers[1][:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = (b[:, :, :end] for b in self.buffers)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def _reshape_batch(self, pick) -> None:
        if self.is_initialized:
            filled = [pick(b[:, :, :self.length]) for b in self.buffers]
            self.buffers = [f.new_empty(f.shape[0], f.shape[1], self.capacity, f.shape[3]) for f in filled]
            for buffer, f in zip(self.buffers, filled):
                buffer[:, :, :self.length] = f
            self.keys, self.values = (b[:, :, :self.length] for b in self.buffers)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._reshape_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._reshape_batch(lambda t: t[indices])


def new_cache(model, capacity: int, preallocate: bool = True) -> Cache:
    """A preallocated cache for full-attention models; transformers' DynamicCache otherwise (sliding windows)."""
    cache = DynamicCache(config=model.config)
    if preallocate and cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        return Cache(layers=[PreallocatedLayer(capacity) for _ in cache.layers])
    return cache


class HFGenerator:
    """Batched generation with a transformers model on one device (see the module docstring)."""

    name = "hf"
    needs_weights = True

    def __init__(self, batch_size: int = 256, seed: int = 0, progress: bool = True, device: str = "auto",
                 share_prefix: bool = True, top_p_candidates: int = 64, compact_fraction: float = 0.25,
                 preallocate: bool = True, decode: str = "auto"):
        if decode not in ("auto", "dynamic", "static"):
            raise ValharmError(f"generation.decode={decode!r} is unknown; use auto, dynamic or static")
        self.batch_size, self.seed, self.progress = batch_size, seed, progress
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.share_prefix, self.top_p_candidates = share_prefix, top_p_candidates
        self.compact_fraction, self.preallocate, self.decode = compact_fraction, preallocate, decode

    def static_decoding(self, model) -> bool:
        """Whether to decode with a static cache (CUDA graphs on a GPU): `auto` does on CUDA where the model allows."""
        if self.decode == "auto":
            return str(self.device).startswith("cuda") and supports_static(model)
        if self.decode == "static" and not supports_static(model):
            raise ValharmError("generation.decode=static needs full attention through sdpa or eager attention; "
                               "use generation.decode=dynamic for this model")
        return self.decode == "static"

    def identity(self) -> str:
        """What outputs depend on besides the model and prompt (the cache namespace): nothing more here."""
        return self.name

    @torch.inference_mode()
    def generate(self, model, tokenizer, requests: list[GenerationRequest], desc: str = "generate",
                 on_batch: OnBatch | None = None) -> list[list[str]]:
        """Texts for every request, in request order (num_samples per request).

        `on_batch(indices, outputs)` is called as each batch finishes (to store results before the next).
        """
        model.eval().to(self.device)
        self.new_tokens = 0
        stop = stop_token_ids(model, tokenizer)
        encoded = encode_prompts(tokenizer, [r.prompt for r in requests])
        order = sorted(range(len(requests)), key=lambda i: (requests[i].sampling(), -len(encoded[i])))
        outputs: dict[int, list[str]] = {}
        bar = tqdm(total=len(requests), desc=desc, disable=not self.progress, unit="prompt")
        for sampling, group in groupby(order, key=lambda i: requests[i].sampling()):
            group = list(group)
            max_new, temperature, top_p, k = sampling
            per_batch = max(1, self.batch_size // k)
            for start in range(0, len(group), per_batch):
                batch = group[start:start + per_batch]
                keys = sample_keys(self.seed, [request_key(requests[i]) for i in batch], k, self.device) \
                    if temperature > 0 else None
                tokens = self._batch(model, [encoded[i] for i in batch], k, max_new, temperature, top_p, keys, stop)
                self.new_tokens += sum(map(len, tokens))
                texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
                for n, i in enumerate(batch):
                    outputs[i] = texts[n * k:(n + 1) * k]
                if on_batch:
                    on_batch(batch, [outputs[i] for i in batch])
                bar.update(len(batch))
        bar.close()
        return [outputs[i] for i in range(len(requests))]

    def run(self, model, tokenizer, requests: list, desc: str = "generate", on_batch: OnBatch | None = None) -> list:
        """Texts for GenerationRequests, log-probabilities for LoglikelihoodRequests (one kind per call)."""
        if requests and isinstance(requests[0], LoglikelihoodRequest):
            return self.loglikelihood(model, tokenizer, requests, desc, on_batch)
        return self.generate(model, tokenizer, requests, desc, on_batch)

    @torch.inference_mode()
    def loglikelihood(self, model, tokenizer, requests: list[LoglikelihoodRequest],
                      desc: str = "loglikelihood", on_batch: OnBatch | None = None) -> list[list[float]]:
        """For every request, the summed log-probability of each continuation's tokens after the prompt."""
        model.eval().to(self.device)
        self.new_tokens = 0
        prompts = encode_prompts(tokenizer, [r.prompt for r in requests])
        order = sorted(range(len(requests)), key=lambda i: -len(prompts[i]))
        scores: dict[int, list[float]] = {}
        bar = tqdm(total=len(requests), desc=desc, disable=not self.progress, unit="prompt")
        per_batch = max(1, self.batch_size // max(len(r.continuations) for r in requests)) if requests else 1
        for start in range(0, len(order), per_batch):
            batch = order[start:start + per_batch]
            for i, row in zip(batch, self._score_batch(model, tokenizer, [prompts[i] for i in batch],
                                                       [requests[i].continuations for i in batch])):
                scores[i] = row
            if on_batch:
                on_batch(batch, [scores[i] for i in batch])
            bar.update(len(batch))
        bar.close()
        return [scores[i] for i in range(len(requests))]

    def _score_batch(self, model, tokenizer, rows, continuations) -> list[list[float]]:
        """Prefill each prompt once, then run all of its continuations (teacher-forced) from that cache."""
        answers = [tokenizer(list(c), add_special_tokens=False)["input_ids"] for c in continuations]
        count = len(answers[0])
        if any(len(a) != count for a in answers) or any(not ids for a in answers for ids in a):
            raise ValueError("every request needs the same number of non-empty continuations")
        width = max(len(ids) for a in answers for ids in a)
        cache = new_cache(model, max(map(len, rows)) + width, self.preallocate)
        logits, mask = self._prefill(model, rows, cache)
        flat = [ids for a in answers for ids in a]
        tokens = torch.tensor([ids + [0] * (width - len(ids)) for ids in flat], device=self.device)
        first = logits.float().log_softmax(-1)  # [rows, vocab]: each row's `count` first tokens picked at once
        totals = first.gather(-1, tokens[:, 0].view(len(rows), count)).view(-1)
        if width > 1:  # the rest of each continuation, every row from its prompt's cache
            cache.batch_repeat_interleave(count)
            mask = mask.repeat_interleave(count, 0)
            position = mask.sum(-1, keepdim=True) + torch.arange(width - 1, device=self.device)
            mask = torch.cat([mask, mask.new_ones(len(mask), width - 1)], 1)
            later = model(input_ids=tokens[:, :-1], attention_mask=mask, position_ids=position, cache=cache,
                          use_cache=True).logits.float().log_softmax(-1)
            picked = later.gather(-1, tokens[:, 1:, None]).squeeze(-1)
            real = torch.tensor([[t < len(ids) for t in range(1, width)] for ids in flat], device=self.device)
            totals = totals + (picked * real).sum(-1)
        return totals.view(len(rows), count).tolist()

    def _prefill(self, model, rows: list[list[int]], cache: Cache) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the prompts into `cache`; return the next-token logits and the attention mask.

        A prefix common to all rows is run once and its cache copied to every row; the rest of each
        prompt follows it, left-padded: [shared prefix | padding | own tokens].
        """
        shared = len(os.path.commonprefix(rows)) if self.share_prefix and len(rows) > 1 else 0
        shared = min(shared, min(map(len, rows)) - 1)  # every row keeps a token of its own
        if shared > 0:
            model(input_ids=torch.tensor([rows[0][:shared]], device=self.device), cache=cache, use_cache=True,
                  logits_to_keep=1)
            cache.batch_repeat_interleave(len(rows))
        ids, own = left_pad([r[shared:] for r in rows], self.device)
        mask = torch.cat([own.new_ones(len(rows), shared), own], 1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]
        return logits, mask

    def _batch(self, model, rows, k, max_new, temperature, top_p, keys, stop) -> list[list[int]]:
        """New token ids for k samples of each prompt in `rows`, up to and including a stop token (`keys`: each
        sample's random stream when sampling).

        As with `generate`, decoding with skip_special_tokens drops the stop token when it is special.
        """
        if self.static_decoding(model):
            ids, real = left_pad([row for row in rows for _ in range(k)], self.device)
            return decode_static(model, ids, real, max_new, lambda logits, step: next_tokens(
                logits, temperature, top_p, keys, step, candidates=0), stop, str(self.device).startswith("cuda"))
        cache = new_cache(model, max(map(len, rows)) + max_new, self.preallocate)
        logits, mask = self._prefill(model, rows, cache)
        if k > 1:  # each prompt was encoded once; its k samples share that cache
            cache.batch_repeat_interleave(k)
            logits, mask = logits.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
        slots = torch.arange(len(mask), device=self.device)  # output row of each live row
        position = mask.sum(-1, keepdim=True)
        finished = torch.zeros(len(mask), dtype=torch.bool, device=self.device)
        tokens = torch.full((len(mask), max_new), -1, dtype=torch.long)
        for step in range(max_new):
            token = torch.where(finished, -1, next_tokens(logits, temperature, top_p, keys, step,
                                                          self.top_p_candidates))
            tokens[slots.cpu(), step] = token.cpu()
            finished |= torch.isin(token, stop)
            if step == max_new - 1 or bool(finished.all()):
                break
            if finished.sum() >= self.compact_fraction * len(slots):  # drop finished rows from the batch
                live = (~finished).nonzero().squeeze(-1)
                cache.batch_select_indices(live)
                slots, token, mask, position, finished = (t[live] for t in (slots, token, mask, position, finished))
                keys = keys[live] if keys is not None else None
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], 1)
            logits = model(input_ids=token.clamp(min=0)[:, None], attention_mask=mask, position_ids=position,
                           cache=cache, use_cache=True).logits[:, -1]
            position = position + 1
        return [[t for t in row if t >= 0] for row in tokens.tolist()]


def stop_token_ids(model, tokenizer) -> torch.Tensor:
    """The ids that end a sequence: the model's generation config, else the tokenizer's EOS."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos)
    return torch.tensor(eos, device=model.device)


def left_pad(rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) with rows right-aligned; the pad id is irrelevant under the mask."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def request_key(request: GenerationRequest | LoglikelihoodRequest | SlotRequest) -> str:
    """What a request's outputs depend on besides the model: the formatted prompt and how it is decoded."""
    if isinstance(request, SlotRequest):
        return digest({"prompt": request.prompt, "slot": request.slot, "continuations": list(request.continuations),
                       "max_new_tokens": request.max_new_tokens})
    if isinstance(request, LoglikelihoodRequest):
        return digest({"prompt": request.prompt, "continuations": list(request.continuations)})
    return digest({"prompt": request.prompt, "sampling": list(request.sampling())})


def cached_run(generator, model, tokenizer, requests: list, cache: ResultCache | None, namespace: str,
               desc: str = "generate") -> tuple[list, dict]:
    """The generator's outputs for `requests`, running only those not in `cache` under `namespace`.

    Outputs are stored batch by batch, so an interrupted run keeps every finished batch. Returns the
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

    if todo:
        run_requests(generator, model, tokenizer, [first[k] for k in todo], desc, on_batch=store)
    return [known[k] for k in keys], {"hits": len(set(keys)) - len(todo), "misses": len(todo)}
