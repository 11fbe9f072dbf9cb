"""The `openai` client as valharm's LLM judge and serving backend build it: the key from an environment
variable, every HTTP attempt (retries included) reported to a hook, errors told without their bodies."""
from __future__ import annotations

import os
from typing import Callable

from valharm.errors import ValharmError


def openai_client(option: str, api_key_env: str, base_url: str | None, max_retries: int, timeout: float,
                  on_request: Callable):
    """An `openai.OpenAI` client; `option` names the config group in the error about a missing key."""
    import httpx
    import openai

    key = os.environ.get(api_key_env)
    if not key:
        raise ValharmError(f"{option}=openai reads its API key from the environment variable {api_key_env}, which "
                           f"is not set; export it (a local server without auth accepts any value), or name another "
                           f"variable with {option}.api_key_env")
    http = httpx.Client(timeout=timeout, event_hooks={"request": [on_request]})
    return openai.OpenAI(api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout, http_client=http)


def failure(err: Exception) -> str:
    """An API error as its class and HTTP status only (error bodies can quote the key)."""
    status = getattr(err, "status_code", None)
    return type(err).__name__ + (f" (HTTP {status})" if status else "")
