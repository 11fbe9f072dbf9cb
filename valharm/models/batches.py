"""Training examples and their batches: (prompt, response) pairs encoded with response-only labels, padded or
packed, in length-grouped epochs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers.trainer_pt_utils import LengthGroupedSampler

from valharm.errors import ValharmError
from valharm.models.loading import LoadedModel, encode_prompts

IGNORE_INDEX = -100

@dataclass(frozen=True)
class Example:
    """One supervised pair: the user's message and the answer the model should learn (`raw`: the prompt is the text
    itself, not put in the model's chat or instruction format)."""

    prompt: str
    response: str
    raw: bool = False


def encode(bundle: LoadedModel, example: Example, max_length: int) -> dict | None:
    """Token ids with labels on the response only; the response tail is cut to fit `max_length`.

    Returns None when the prompt alone fills `max_length` (nothing left to learn from).
    """
    tok = bundle.tokenizer
    text = bundle.bos_text + example.prompt if example.raw else bundle.format_prompt(example.prompt)
    prompt_ids = encode_prompts(tok, [text])[0]
    response_ids = tok(example.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    room = max_length - len(prompt_ids)
    if room <= 0:
        return None
    response_ids = response_ids[:room]
    return {"input_ids": prompt_ids + response_ids,
            "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids}


def collate_packed(features: Sequence[dict], pad_id: int | None = None) -> dict[str, torch.Tensor]:
    """The batch's examples back to back in one row, each with positions from 0 and no padding; attention stays
    within each example (transformers builds the block-diagonal causal mask from the position ids). Every example
    starts with prompt tokens, which are never labelled, so no target crosses from one example into the next."""
    ids = [token for f in features for token in f["input_ids"]]
    labels = [token for f in features for token in f["labels"]]
    positions = [p for f in features for p in range(len(f["input_ids"]))]
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]), "position_ids": torch.tensor([positions])}


def collate(features: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding is masked out of attention and loss."""
    width = max(len(f["input_ids"]) for f in features)
    ids, labels, mask = [], [], []
    for f in features:
        pad = width - len(f["input_ids"])
        ids.append(f["input_ids"] + [pad_id] * pad)
        labels.append(f["labels"] + [IGNORE_INDEX] * pad)
        mask.append([1] * len(f["input_ids"]) + [0] * pad)
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


BATCHINGS = ("length_grouped", "shuffle")


class EpochSampler(torch.utils.data.Sampler):
    """Examples of similar length batched together (`batching=shuffle`: a plain shuffle, the study's), in an order
    drawn from (seed, epoch): an epoch sees the same order whether or not training was interrupted before it
    (Lightning calls `set_epoch`)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, batching: str = "length_grouped"):
        if batching not in BATCHINGS:
            raise ValharmError(f"aligner.training.batching='{batching}' is unknown; use one of {', '.join(BATCHINGS)}")
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0
        self.batching = batching

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.batching == "shuffle":
            return iter(torch.randperm(len(self.lengths), generator=generator).tolist())
        return iter(LengthGroupedSampler(self.batch_size, lengths=self.lengths, generator=generator))


def packs_by_default(model) -> bool:
    """Packing pays where attention is computed per sequence (FlashAttention's variable-length kernels); with
    sdpa or eager attention a packed row attends over its whole length under a mask, which costs more than the
    padding it saves."""
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", "") or ""
    return implementation.startswith("flash_attention")


class SupervisedDataModule(L.LightningDataModule):
    """Tokenised train/valid examples for one training stage, batched padded or packed (`packing`: true, false,
    or "auto": packed where the model's attention is FlashAttention's; `batching`: length_grouped or shuffle)."""

    def __init__(self, bundle: LoadedModel, train: Sequence[Example], valid: Sequence[Example],
                 batch_size: int = 8, max_length: int = 128, seed: int = 42, packing: bool | str = "auto",
                 batching: str = "length_grouped"):
        super().__init__()
        self.bundle, self.batch_size, self.seed, self.batching = bundle, batch_size, seed, batching
        self.packing = packs_by_default(bundle.model) if packing == "auto" else bool(packing)
        self.train = self._encode_all(train, max_length, "train")
        self.valid = self._encode_all(valid, max_length, "valid")
        self.dropped = len(train) + len(valid) - len(self.train) - len(self.valid)
        eos = bundle.tokenizer.eos_token_id
        self.truncated = sum(e["labels"][-1] != eos for e in self.train + self.valid)

    def _encode_all(self, examples, max_length, split):
        encoded = [e for e in (encode(self.bundle, x, max_length) for x in examples) if e is not None]
        if not encoded:
            raise ValharmError(f"no {split} examples fit in max_length={max_length} tokens "
                               f"(given {len(examples)}); raise the aligner's max_length or add data")
        return encoded

    def _loader(self, data, sampler):
        pad_id = self.bundle.tokenizer.pad_token_id
        batched = collate_packed if self.packing else collate
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler, collate_fn=lambda b: batched(b, pad_id))

    def train_dataloader(self):
        """Shuffled each epoch (seeded), batched with examples of similar length so little is padded."""
        lengths = [len(e["input_ids"]) for e in self.train]
        return self._loader(self.train, EpochSampler(lengths, self.batch_size, self.seed, self.batching))

    def val_dataloader(self):
        return self._loader(self.valid, sorted(range(len(self.valid)), key=lambda i: -len(self.valid[i]["input_ids"])))
