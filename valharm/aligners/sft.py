"""Ordinary fine-tunes, the study's references: LoRA instruction tuning on a benign dataset."""
from __future__ import annotations

import random
from pathlib import Path

import lightning as L

from valharm.aligners import Alignment
from valharm.data.instructions import InstructionData
from valharm.errors import ValharmError
from valharm.models.batches import SupervisedDataModule
from valharm.models.loading import LoadedModel, add_lora
from valharm.models.training import fit_adapter, main_process


def split_examples(examples: list, valid_fraction: float, max_valid: int, seed: int) -> tuple[list, list]:
    """(train, valid): a seeded shuffle, valid = `valid_fraction` of it (at least 1, at most `max_valid`)."""
    shuffled = random.Random(seed).sample(examples, len(examples))
    n_valid = min(max_valid, max(1, round(len(examples) * valid_fraction)))
    if len(examples) - n_valid < 1:
        raise ValharmError(f"{len(examples)} examples leave nothing to train on; use a larger dataset")
    return shuffled[n_valid:], shuffled[:n_valid]


class SFTAligner:
    """LoRA instruction tuning (response-only loss), the adapter with the best validation loss kept."""

    trains = True

    def __init__(self, name: str = "sft", seed: int = 42, valid_fraction: float = 0.05, max_valid: int = 500,
                 lora: dict | None = None, training: dict | None = None):
        self.name, self.seed, self.valid_fraction, self.max_valid = name, seed, valid_fraction, max_valid
        self.lora = dict(lora or {})
        self.training = {"lr": 2e-5, "epochs": 1, "batch_size": 4, "effective_batch_size": 16, "max_length": 2048,
                         "compile": False, **(training or {})}
        batch, effective = self.training["batch_size"], self.training["effective_batch_size"]
        if effective % batch:
            raise ValharmError(f"aligner.training.effective_batch_size={effective} is not a multiple of "
                               f"batch_size={batch}; gradient accumulation needs a whole number of batches")

    def align(self, bundle: LoadedModel, value, data: InstructionData, run_dir: Path, make_trainer) -> Alignment:
        if not isinstance(data, InstructionData):
            raise ValharmError("aligner=sft trains on an instruction dataset: add dataset=alpaca|dolly|grammar|samsum")
        train, valid = split_examples(data.examples, self.valid_fraction, self.max_valid, self.seed)
        module = SupervisedDataModule(bundle, train, valid, self.training["batch_size"], self.training["max_length"],
                                      self.seed)
        L.seed_everything(self.seed, verbose=False)  # the adapter's initial weights follow the seed
        model = add_lora(bundle.model, **self.lora)
        metrics = {"sft": fit_adapter(model, module, run_dir / "stages" / "sft", make_trainer, lr=self.training["lr"],
                                      seed=self.seed, stage="sft", epochs=self.training["epochs"],
                                      accumulate=self.training["effective_batch_size"] // self.training["batch_size"],
                                      compile=self.training["compile"])}
        adapter_dir = run_dir / "adapter"
        if main_process():
            model.save_pretrained(adapter_dir)
        return Alignment(model=model, adapter_dir=adapter_dir, metrics=metrics, model_type=f"{self.name}_{data.name}",
                         value_aligned=False)
