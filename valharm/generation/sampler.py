"""Sampling for valharm's own decoding loop: exact top-p over a few candidates, counter-based random numbers (one
stream per request and sample, the same whatever the batch), and a KV-cache layer preallocated to its capacity."""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from valharm.caching import digest

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
