"""valharm: study the unintended harms of value-aligned LLMs."""

__version__ = "0.1.0"
