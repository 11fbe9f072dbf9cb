"""Generation: turning requests into texts and likelihoods. Request types and the cached runner (`requests`), the
local transformers generator (`local`) with its sampler and KV-cache layer (`sampler`) and static-cache CUDA-graph
decoding (`static_decoding`), and the OpenAI-compatible server backend (`serving`, `openai_api`).

May import `valharm.models`, `valharm.errors` and `valharm.caching`; nothing above.
"""
