"""Prompt strategies: what is said to the model around each benchmark prompt."""
from __future__ import annotations

from valharm.models import LoadedModel


class PromptStrategy:
    """Adds an optional system instruction to every prompt (`input_only` adds none)."""

    def __init__(self, name: str = "input_only", system: str | None = None):
        self.name, self.system = name, system

    def chat(self, bundle: LoadedModel, user: str, system: str | None = None) -> str:
        """A prompt the model answers; the aligner's system prompt (if any) comes first."""
        parts = [p for p in (system, self.system) if p]
        return bundle.format_prompt(user, "\n\n".join(parts) or None)

    def raw(self, bundle: LoadedModel, text: str, system: str | None = None) -> str:
        """A text the model continues (no chat template); instructions, if any, go in front."""
        parts = [p for p in (system, self.system) if p]
        return bundle.bos_text + "\n\n".join([*parts, text])
