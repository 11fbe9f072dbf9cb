"""The untuned base model: the reference every aligned model is compared with."""
from __future__ import annotations

from valharm.aligners import Alignment


class VanillaAligner:
    """No training, no prompt: the base model as it is."""

    trains = False

    def __init__(self, name: str = "vanilla"):
        self.name = name

    def align(self, bundle, value, data, run_dir, make_trainer) -> Alignment:
        return Alignment(model=bundle.model, value_aligned=False)
