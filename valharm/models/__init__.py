"""Models: loading (hub ids, the packaged GGUF, tiny random Llamas, adapters), numerics (precision from the
hardware) and LoRA training (examples and batches, the Lightning module, checkpoints).

The lowest layer: imports only `valharm.errors` and `valharm.caching`.
"""
