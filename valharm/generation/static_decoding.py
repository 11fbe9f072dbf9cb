"""Decoding with a static KV cache: every step has the same shapes and no host synchronisation, so on a GPU one
step (forward, token choice, bookkeeping) is captured once as a CUDA graph and replayed: kernel launches, not
Python, per token. A decode step of a 7B model is bound by weight reads; eager PyTorch spends longer launching
its kernels than the GPU spends running them.

The same step runs uncaptured on a CPU (`HFGenerator(decode="static")`), which is how its tests check it.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import StaticCache

CHECK_EVERY = 16  # decode steps between looks at whether every row has finished (each look waits for the GPU)


def supports_static(model) -> bool:
    """Full attention through sdpa or eager attention: the model accepts a prepared 4D mask and a static cache."""
    config = model.config
    attention = getattr(config, "_attn_implementation", None) or "eager"
    layer_types = getattr(config, "layer_types", None)  # where given, it says which layers use a window
    full = set(layer_types) == {"full_attention"} if layer_types else not getattr(config, "sliding_window", None)
    return attention in ("sdpa", "eager") and full and not getattr(config, "attention_chunk_size", None)


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A [batch, 1, query, key] float mask: 0 where attention is allowed, the dtype's minimum elsewhere."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


@torch.inference_mode()
def decode_static(model, ids: torch.Tensor, real: torch.Tensor, max_new: int, choose, stop: torch.Tensor,
                  graphs: bool) -> list[list[int]]:
    """New token ids (up to and including a stop token) for each left-padded row of `ids` (`real`: 1 on prompt
    tokens). `choose(logits, step)` picks each row's next token (`step` a 0-d device tensor)."""
    device = ids.device
    batch, width = ids.shape
    length = width + max_new
    dtype = model.get_input_embeddings().weight.dtype
    keys = torch.arange(length, device=device)
    allowed = torch.nn.functional.pad(real.bool(), (0, max_new))  # [batch, length]: prompt tokens, then generated
    own = keys[None, :] == torch.arange(width, device=device)[:, None]  # a padding query attends to itself only
    causal = keys[None, :] <= torch.arange(width, device=device)[:, None]
    prefill_mask = additive(allowed[:, None, :] & causal[None] | own[None], dtype)
    cache = StaticCache(config=model.config, max_cache_len=length)
    positions = (real.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=prefill_mask, position_ids=positions, cache=cache, use_cache=True,
                   logits_to_keep=1).logits[:, -1]
    del prefill_mask
    step_mask = additive(allowed[:, None, :], dtype)  # [batch, 1, 1, length]; a column opens as its token is fed
    fed = torch.zeros((), dtype=torch.long, device=device)  # tokens fed back so far = the next token's step
    position = real.sum(-1, keepdim=True)
    tokens = torch.full((batch, max_new), -1, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    token = torch.zeros(batch, dtype=torch.long, device=device)

    def pick(logits: torch.Tensor) -> None:
        new = torch.where(finished, -1, choose(logits, fed))
        tokens.index_copy_(1, fed.view(1), new[:, None])
        finished.logical_or_(torch.isin(new, stop))
        token.copy_(new.clamp(min=0))

    def step() -> None:
        step_mask.index_fill_(3, (fed + width).view(1), 0.0)
        logits = model(input_ids=token[:, None], attention_mask=step_mask, position_ids=position, cache=cache,
                       use_cache=True).logits[:, -1]
        fed.add_(1)
        position.add_(1)
        pick(logits)

    pick(logits)
    run = step
    for done in range(1, max_new):
        if done % CHECK_EVERY == 1 and bool(finished.all()):
            break
        if graphs and done == 1:
            run = captured(step)  # runs the first step eagerly (warm-up), then records it
        else:
            run()
    return [[t for t in row if t >= 0] for row in tokens.tolist()]


def captured(step):
    """Run `step` once eagerly on a side stream (warming up its kernels and libraries there), then record it as a
    CUDA graph on that stream (recording runs nothing); returns the replay. The graph's memory pool is its own,
    freed with it when the batch is done."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        step()
    return graph.replay
