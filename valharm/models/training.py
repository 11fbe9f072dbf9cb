"""Causal-LM LoRA training with Lightning: response-only loss, validation loss, best adapter kept."""
from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from valharm.errors import ValharmError
from valharm.models.batches import IGNORE_INDEX, SupervisedDataModule

log = logging.getLogger("valharm")
# a stage dir holds the examples it trains on (and, resumed, its checkpoints) before Lightning writes there
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")  # set by Lightning, torchrun and SLURM


def main_process() -> bool:
    """False in the extra processes of a multi-process (DDP) job: they train, and leave the rest to rank 0."""
    return all(int(os.environ.get(key) or 0) == 0 for key in RANK_VARIABLES)


def response_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (response) tokens.

    The same number as the model's own loss with `labels`, but the vocabulary projection runs only at
    positions whose next token is labelled: prompts are most of each example, and the projection onto a
    large vocabulary is a large share of a small model's compute and memory.
    """
    targets = batch["labels"][:, 1:]
    keep = F.pad(targets != IGNORE_INDEX, (0, 1), value=False)
    inputs = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}  # padded or packed
    logits = model(input_ids=batch["input_ids"], use_cache=False, logits_to_keep=keep, **inputs).logits
    return F.cross_entropy(logits.float(), targets[targets != IGNORE_INDEX])


class LoRACausalLM(L.LightningModule):
    """Trains the LoRA parameters of a PEFT model with AdamW and a linear schedule."""

    def __init__(self, model: torch.nn.Module, lr: float = 2e-5, weight_decay: float = 0.0, warmup_steps: int = 0,
                 seed: int = 0, stage: str = "train"):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.warmup_steps, self.seed, self.stage = lr, weight_decay, warmup_steps, seed, stage
        self.strict_loading = False  # checkpoints hold the LoRA weights only (see on_save_checkpoint)

    def trained_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint):
        """Keep the trained (LoRA) weights only: the frozen base is the model config's, not the run's."""
        trained = self.trained_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}

    def on_load_checkpoint(self, checkpoint):
        missing = self.trained_keys() - set(checkpoint["state_dict"])
        if missing:
            raise ValharmError(f"the checkpoint to resume from lacks {len(missing)} LoRA weight(s) of this model "
                               f"(e.g. {min(missing)}); it belongs to another model or adapter: delete it to start afresh")

    def on_train_epoch_start(self):
        log.info(f"{self.stage}: epoch {self.current_epoch + 1} of {self.trainer.max_epochs} starts")

    def on_train_batch_start(self, batch, batch_idx):
        """Dropout draws from (seed, epoch), so a resumed epoch draws what an uninterrupted one would (seeded at
        the epoch's first batch: after its data iterator has drawn from the same generator)."""
        if batch_idx == 0:
            torch.manual_seed(self.seed + self.current_epoch)

    def training_step(self, batch, batch_idx):
        """The loss goes to the logger every `log_every_n_steps`, not to the progress bar: showing it there reads it
        back from the device at every step, which stalls a GPU step (measured: bench/bench_gpu.py)."""
        loss = response_loss(self.model, batch)
        self.log("train_loss", loss, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        loss = response_loss(self.model, batch)
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, sync_dist=True,
                 batch_size=batch["input_ids"].shape[0])

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = max(1, self.trainer.estimated_stepping_batches)
        schedule = get_linear_schedule_with_warmup(optimizer, self.warmup_steps, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class BestAdapterCheckpoint(L.Callback):
    """Save the PEFT adapter (not the base) whenever the monitored validation loss improves.

    Under DDP the validation loss is averaged over ranks and rank 0's decision is broadcast, so every rank
    keeps the same epoch; rank 0 alone writes, and the others wait until the file is there. The best weights
    are also part of the resume checkpoint, and are written again on resuming: an attempt killed after saving
    a better adapter but before its checkpoint leaves an adapter the restored state does not know.
    """

    def __init__(self, dirpath: str | Path, monitor: str = "val_loss"):
        self.dirpath, self.monitor = Path(dirpath), monitor
        self.best = math.inf
        self.best_epoch = None
        self.best_weights = None

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        from peft import get_peft_model_state_dict

        score = trainer.callback_metrics.get(self.monitor)
        improved = trainer.strategy.broadcast(score is not None and float(score) < self.best, src=0)
        if improved:
            self.best, self.best_epoch = trainer.strategy.broadcast((float(score), trainer.current_epoch), src=0)
            self.best_weights = {k: v.detach().to("cpu", copy=True)
                                 for k, v in get_peft_model_state_dict(pl_module.model).items()}
            self.write(trainer, pl_module.model)

    def on_train_start(self, trainer, pl_module):
        if self.best_weights is not None:  # restored from a checkpoint
            self.write(trainer, pl_module.model)

    def write(self, trainer, model) -> None:
        """The best weights as a PEFT adapter dir (config, then the weights file replaced atomically)."""
        from safetensors.torch import save_file

        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            model.peft_config[model.active_adapter].save_pretrained(self.dirpath)
            staging = self.dirpath / "adapter_model.safetensors.tmp"
            save_file(self.best_weights, staging, metadata={"format": "pt"})
            os.replace(staging, self.dirpath / "adapter_model.safetensors")
        trainer.strategy.barrier("best_adapter_saved")

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "best_weights": self.best_weights}

    def load_state_dict(self, state):
        self.best, self.best_epoch, self.best_weights = state["best"], state["best_epoch"], state["best_weights"]


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated transformer blocks (the classes transformers names in `_no_split_modules`)."""
    names = set(getattr(model.get_base_model() if hasattr(model, "get_base_model") else model, "_no_split_modules",
                        None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise ValharmError(f"aligner.training.compile=true: {type(model).__name__} names no decoder-layer class "
                           f"(_no_split_modules); set aligner.training.compile=false for this model")
    return layers


@contextmanager
def compiled_layers(model: torch.nn.Module, enabled: bool):
    """Each decoder layer's forward compiled with torch.compile while training (regional compilation: the layers
    share their compiled graphs, so compiling takes no longer for deeper models); the eager forwards are back after.
    Fused norms, rotary embeddings, activations and LoRA branches mean fewer kernels and less Python per step."""
    layers = decoder_layers(model) if enabled else []
    own = [layer.__dict__.get("forward") for layer in layers]  # a forward set on the instance (accelerate's hooks)
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=True)
    try:
        yield
    finally:
        for layer, forward in zip(layers, own):
            if forward is None:
                del layer.forward  # the class's forward again
            else:
                layer.forward = forward


STAGE_DONE = "stage.json"  # a finished stage's metrics, next to its best adapter
LAST_CHECKPOINT = "last.ckpt"  # LoRA weights, optimizer, schedule and loop state after the latest epoch


def fit_adapter(peft_model, data: SupervisedDataModule, out_dir: Path, make_trainer: Callable[..., L.Trainer],
                lr: float, seed: int, stage: str = "train", epochs: int = 1, accumulate: int = 1,
                compile: bool = False, weight_decay: float = 0.0) -> dict:
    """Train one stage; reload the best adapter into `peft_model` and return the stage's metrics.

    Resumable: a stage finished by an earlier, interrupted attempt is not trained again (its best adapter is
    reloaded), and an unfinished one continues from its last epoch's checkpoint (adapter, optimizer, schedule).
    `make_trainer(stage=..., callbacks=..., default_root_dir=..., max_epochs=..., accumulate_grad_batches=...)`
    builds the Lightning Trainer (the `trainer` config plus the run's logger). `compile`: decoder layers compiled
    while training (`compiled_layers`). `weight_decay`: AdamW's (the study's, torch's default, is 0.01).
    """
    out_dir = Path(out_dir)
    if (out_dir / STAGE_DONE).is_file():
        reload_adapter(peft_model, out_dir)
        log.info(f"{stage}: finished by an earlier attempt; its best adapter is reloaded, not trained again")
        return {**json.loads((out_dir / STAGE_DONE).read_text()), "resumed": "finished"}
    resume, epochs_before = readable_checkpoint(out_dir / LAST_CHECKPOINT, stage)
    L.seed_everything(seed, workers=True, verbose=False)
    checkpoint = BestAdapterCheckpoint(out_dir)
    latest = L.pytorch.callbacks.ModelCheckpoint(dirpath=out_dir, filename=Path(LAST_CHECKPOINT).stem, save_top_k=1,
                                                 enable_version_counter=False)  # the latest epoch, overwritten
    trainer = make_trainer(stage=stage, callbacks=[checkpoint, latest], default_root_dir=str(out_dir),
                           max_epochs=epochs, accumulate_grad_batches=accumulate)
    module = LoRACausalLM(peft_model, lr=lr, weight_decay=weight_decay, seed=seed, stage=stage)
    peft_model.train()
    start = time.perf_counter()
    if resume:
        log.info(f"{stage}: resuming from {resume} after epoch {epochs_before} (an earlier attempt was interrupted)")
    with compiled_layers(peft_model, compile):
        trainer.fit(module, datamodule=data, ckpt_path=resume)
    seconds = time.perf_counter() - start
    peft_model.eval()
    if checkpoint.best_epoch is None:
        raise ValharmError(f"{stage}: validation never ran, so no adapter was kept; "
                           "keep trainer.limit_val_batches above 0")
    reload_adapter(peft_model, out_dir)
    metrics = {"best_val_loss": checkpoint.best, "best_epoch": checkpoint.best_epoch,
               "train_examples": len(data.train), "valid_examples": len(data.valid), "dropped_examples": data.dropped,
               "truncated_examples": data.truncated, "packed": data.packing, "compiled": compile,
               "steps": trainer.global_step, "epochs": trainer.current_epoch, "batch_size": data.batch_size,
               "accumulate_grad_batches": accumulate, "precision": str(trainer.precision),
               "seconds": round(seconds, 1), "resumed": "from_checkpoint" if resume else None,
               "epochs_before_resume": epochs_before,
               "processes": trainer.world_size}
    if trainer.is_global_zero:
        tmp = out_dir / (STAGE_DONE + ".tmp")
        tmp.write_text(json.dumps(metrics))
        os.replace(tmp, out_dir / STAGE_DONE)
    trainer.strategy.barrier("stage_done")
    return metrics


def readable_checkpoint(last: Path, stage: str) -> tuple[str | None, int]:
    """(the checkpoint to resume from, epochs it holds); one that cannot be read (cut off by a kill while it was
    written) is moved aside with a warning, and the stage starts afresh."""
    if not last.is_file():
        return None, 0
    try:
        return str(last), torch.load(last, map_location="cpu", weights_only=False)["epoch"] + 1
    except Exception as err:  # noqa: BLE001 - truncated or foreign: not resumable
        aside = last.with_name(f"{last.name}.unreadable-{int(time.time())}")
        os.replace(last, aside)
        log.warning(f"{stage}: {last} cannot be read ({type(err).__name__}); moved to {aside}, the stage starts afresh")
        return None, 0


def reload_adapter(peft_model, adapter_dir: Path) -> None:
    """Load the saved adapter weights back into the live model (the best epoch's)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(peft_model, load_file(str(Path(adapter_dir) / "adapter_model.safetensors")))
