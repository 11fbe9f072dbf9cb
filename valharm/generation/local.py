"""Text generation behind one small interface: a list of requests in, k texts per request out.

`HFGenerator` runs its own decoding loop over a transformers model and its KV cache, so that it can
- batch prompts by token length (little padding),
- compute the KV cache of a prefix common to a whole batch once (chat template, questionnaire framing),
- encode each prompt once for its k samples,
- drop finished sequences from the batch,
- sample top-p exactly without sorting the whole vocabulary at every step.
On a GPU (`decode: auto`) it decodes with a static cache instead, each step replayed as a CUDA graph
(valharm/generation/static_decoding.py): there, launching kernels, not computing, is what a decode step waits on.
Greedy decoding gives the same tokens as `model.generate`; sampling draws from the same distribution.
"""
from __future__ import annotations

import os
from itertools import groupby

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import Cache

from valharm.errors import ValharmError
from valharm.models.loading import encode_prompts
from valharm.generation.requests import (AnswerTreeRequest, GenerationRequest, LoglikelihoodRequest, OnBatch,
                                        request_key)
from valharm.generation.sampler import new_cache, next_tokens, sample_keys
from valharm.generation.static_decoding import additive, decode_static, supports_static


class HFGenerator:
    """Batched generation with a transformers model on one device (see the module docstring)."""

    name = "hf"
    needs_weights = True
    scores_trees = True  # AnswerTreeRequests: branches, then leaves, from each prompt's cache

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
        """Texts for GenerationRequests, log-probabilities for LoglikelihoodRequests and AnswerTreeRequests (one kind
        per call)."""
        if requests and isinstance(requests[0], (LoglikelihoodRequest, AnswerTreeRequest)):
            return self.loglikelihood(model, tokenizer, requests, desc, on_batch)
        return self.generate(model, tokenizer, requests, desc, on_batch)

    @torch.inference_mode()
    def loglikelihood(self, model, tokenizer, requests: list[LoglikelihoodRequest],
                      desc: str = "loglikelihood", on_batch: OnBatch | None = None) -> list[list[float]]:
        """For every request, the summed log-probability of each continuation's tokens after the prompt (of each
        branch + leaf, for AnswerTreeRequests)."""
        model.eval().to(self.device)
        self.new_tokens = 0
        prompts = encode_prompts(tokenizer, [r.prompt for r in requests])
        order = sorted(range(len(requests)), key=lambda i: -len(prompts[i]))
        scores: dict[int, list[float]] = {}
        bar = tqdm(total=len(requests), desc=desc, disable=not self.progress, unit="prompt")
        if isinstance(requests[0], AnswerTreeRequest) and len({(r.branches, r.leaves) for r in requests}) > 1:
            raise ValueError("answer-tree requests scored together must share one tree")
        answers = [len(r.branches) * len(r.leaves) if isinstance(r, AnswerTreeRequest) else len(r.continuations)
                   for r in requests]
        per_batch = max(1, self.batch_size // max(answers)) if requests else 1
        for start in range(0, len(order), per_batch):
            batch = order[start:start + per_batch]
            rows = [prompts[i] for i in batch]
            scored = (self._score_tree(model, tokenizer, rows, requests[batch[0]].branches, requests[batch[0]].leaves)
                      if isinstance(requests[0], AnswerTreeRequest) else
                      self._score_batch(model, tokenizer, rows, [requests[i].continuations for i in batch]))
            for i, row in zip(batch, scored):
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

    def _score_tree(self, model, tokenizer, rows, branches, leaves) -> list[list[list[float]]]:
        """Prefill each prompt once, run every branch from that cache, then every leaf from each branch's cache:
        [row][branch][leaf] summed log-probabilities of branch + leaf (the same tree for every row)."""
        padded = self._padded(tokenizer, branches)
        leaf_ids = tokenizer(list(leaves), add_special_tokens=False)["input_ids"]
        first, mask, cache = self._tree_prefill(model, rows, padded[0].shape[1] + sum(map(len, leaf_ids)))
        totals, after, mask = self._extend(model, cache, mask, first, padded, then=True)
        leaf_totals = (self._extend_as_tree(model, cache, mask, after, leaf_ids) if supports_static(model) else
                       self._extend(model, cache, mask, after, self._padded(tokenizer, leaves), then=False)[0])
        width = len(leaves)
        return (totals.repeat_interleave(width) + leaf_totals).view(len(rows), len(branches), width).tolist()

    def _padded(self, tokenizer, texts) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids of `texts`, right-padded, and which positions are real."""
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        if any(not x for x in ids):
            raise ValueError("every branch and leaf needs at least one token")
        width = max(map(len, ids))
        tokens = torch.tensor([x + [0] * (width - len(x)) for x in ids], device=self.device)
        return tokens, torch.tensor([[t < len(x) for t in range(width)] for x in ids], device=self.device)

    def _tree_prefill(self, model, rows, room: int):
        """The prompts run into a cache with `room` tokens more (the longest branch, then every leaf's tokens, as the
        leaves run side by side): (next-token log-probabilities, attention mask, cache)."""
        cache = new_cache(model, max(map(len, rows)) + room, self.preallocate)
        logits, mask = self._prefill(model, rows, cache)
        return logits.float().log_softmax(-1), mask, cache

    def _extend(self, model, cache, mask, first, padded, then: bool):
        """Every row's cache followed by each of k continuations (teacher-forced; padding masked out): their summed
        log-probabilities [rows * k] and, when something follows (`then`), the next-token log-probabilities after
        each and the mask that goes with the extended cache. `first`: each row's next-token log-probabilities."""
        tokens, real = padded
        k, width = tokens.shape
        totals = first.gather(-1, tokens[:, 0].expand(len(first), k)).reshape(-1)
        fed = width if then else width - 1  # the last token predicts nothing unless something follows
        if fed == 0:
            return totals, None, None
        cache.batch_repeat_interleave(k)
        mask = mask.repeat_interleave(k, 0)
        tokens, real = tokens.repeat(len(first), 1), real.repeat(len(first), 1)
        position = mask.sum(-1, keepdim=True) + torch.arange(fed, device=self.device)
        mask = torch.cat([mask, real[:, :fed].to(mask.dtype)], 1)
        logprobs = model(input_ids=tokens[:, :fed], attention_mask=mask, position_ids=position, cache=cache,
                         use_cache=True).logits.float().log_softmax(-1)
        picked = logprobs[:, :width - 1].gather(-1, tokens[:, 1:, None]).squeeze(-1)
        totals = totals + (picked * real[:, 1:]).sum(-1)
        if not then:
            return totals, None, None
        return totals, logprobs[torch.arange(len(tokens), device=self.device), real.sum(-1) - 1], mask

    def _extend_as_tree(self, model, cache, mask, first, continuations: list[list[int]]) -> torch.Tensor:
        """What `_extend` gives without `then` (the k continuations' summed log-probabilities, [rows * k]), with all
        k fed in one row per cached row: their token prefixes as a tree (a prefix they share, once), a 4D mask
        letting each token see the row's cache and its own prefix. No padding, no copy of the cache per
        continuation. Needs a model that takes a prepared 4D mask (sdpa or eager attention)."""
        nodes: dict[tuple[int, ...], int] = {}  # every proper prefix of a continuation: its position in the row
        for ids in continuations:
            for end in range(1, len(ids)):
                nodes.setdefault(tuple(ids[:end]), len(nodes))
        firsts = torch.tensor([ids[0] for ids in continuations], device=self.device)
        totals = first[:, firsts]  # [rows, k]
        if nodes:
            sees = torch.zeros(len(nodes), len(nodes), dtype=torch.bool, device=self.device)
            for prefix, at in nodes.items():
                sees[at, [nodes[prefix[:end]] for end in range(1, len(prefix) + 1)]] = True
            rows, seen = len(first), mask.shape[1]
            allowed = torch.cat([mask.bool()[:, None, :].expand(rows, len(nodes), seen), sees.expand(rows, -1, -1)], 2)
            tokens = torch.tensor([prefix[-1] for prefix in nodes], device=self.device).expand(rows, -1)
            depth = torch.tensor([len(prefix) - 1 for prefix in nodes], device=self.device)
            dtype = model.get_input_embeddings().weight.dtype
            logprobs = model(input_ids=tokens, attention_mask=additive(allowed, dtype), cache=cache, use_cache=True,
                             position_ids=mask.sum(-1, keepdim=True) + depth).logits.float().log_softmax(-1)
            scored = [(j, nodes[tuple(ids[:t])], ids[t])
                      for j, ids in enumerate(continuations) for t in range(1, len(ids))]
            owner, at, token = (torch.tensor(column, device=self.device) for column in zip(*scored))
            totals = totals.index_add(1, owner, logprobs[:, at, token])
        return totals.reshape(-1)

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
