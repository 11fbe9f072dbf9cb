"""Text generation behind one small interface: a list of requests in, k texts per request out."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

import torch
from tqdm.auto import tqdm


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


class HFGenerator:
    """Batched generation with a transformers model: left padding, longest prompts first."""

    name = "hf"

    def __init__(self, batch_size: int = 32, seed: int = 0, progress: bool = True, device: str = "auto"):
        self.batch_size, self.seed, self.progress = batch_size, seed, progress
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device

    @torch.inference_mode()
    def generate(self, model, tokenizer, requests: list[GenerationRequest], desc: str = "generate") -> list[list[str]]:
        """Texts for every request, in request order (num_samples per request)."""
        model.eval().to(self.device)
        tokenizer.padding_side = "left"
        outputs: dict[str, list[str]] = {}
        # Longest prompts first (by characters, close enough to tokens) so batches pad little.
        ordered = sorted(requests, key=lambda r: (r.sampling(), -len(r.prompt)))
        bar = tqdm(total=len(requests), desc=desc, disable=not self.progress, unit="prompt")
        for sampling, group in groupby(ordered, key=GenerationRequest.sampling):
            group = list(group)
            per_batch = max(1, self.batch_size // sampling[3])
            for start in range(0, len(group), per_batch):
                batch = group[start:start + per_batch]
                texts = self._batch(model, tokenizer, [r.prompt for r in batch], *sampling, start)
                for i, request in enumerate(batch):
                    outputs[request.id] = texts[i * sampling[3]:(i + 1) * sampling[3]]
                bar.update(len(batch))
        bar.close()
        return [outputs[r.id] for r in requests]

    def _batch(self, model, tokenizer, prompts, max_new_tokens, temperature, top_p, k, offset):
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sample = temperature > 0
        if sample:
            torch.manual_seed(self.seed + offset)  # same batch, same samples, whatever ran before
        out = model.generate(
            **encoded, max_new_tokens=max_new_tokens, do_sample=sample, num_return_sequences=k,
            temperature=temperature if sample else None, top_p=top_p if sample else None, top_k=None,
            pad_token_id=tokenizer.pad_token_id)
        return tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
