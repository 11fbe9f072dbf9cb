"""Aligners turn a base model and a value distribution into an aligned model (adapter or prompt): VIM, vanilla,
ICL, SFT.

May import values, data, models, generation, `errors` and `caching`; never `runs`, `analysis` or the entry points.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch


@dataclass
class Alignment:
    """What an aligner hands to evaluation: the model to query and what made it."""

    model: torch.nn.Module
    adapter_dir: Path | None = None
    system_prompt: str | None = None
    metrics: dict = field(default_factory=dict)
    model_type: str | None = None  # how analysis groups runs; None: the aligner's name (sft sets sft_<dataset>)
    check: object | None = None  # an AlignmentCheck to run on the trained adapter against its base (vim)
    value_aligned: bool = True  # False (vanilla, sft): the run's `value` is not the model's, so prompts never name it
    wording: object | None = None  # the words VIM's stage 2 trained (a values.wording.Wording): answer-space reads use them


class Aligner(Protocol):
    """What every `aligner=` option provides (vim, vanilla, icl, sft)."""

    name: str
    trains: bool  # True: it gets the `dataset` and a Lightning Trainer factory; False: neither is built

    def align(self, bundle, value, data, run_dir: Path, make_trainer: Callable | None) -> Alignment: ...
