"""The `openai` client as valharm's LLM judge and serving backend build it: the key from an environment
variable, every HTTP attempt (retries included) reported to a hook and logged at DEBUG, errors that cannot heal
not retried, errors told without their bodies."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable

from valharm.errors import ValharmError

log = logging.getLogger("valharm")
# A 500 whose body says the request itself is wrong (llama-cpp-python answers token-id prompts with a pydantic
# "Input should be a valid string" as HTTP 500): asking again gives the same answer, so it is not retried.
NOT_HEALING = ("should be a valid", "validation error", "invalid request", "not supported", "unsupported")


def quiet_http_logs() -> None:
    """httpx logs every request and openai every retry at INFO; valharm logs both at DEBUG itself."""
    for name in ("httpx", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)


def mark_not_healing(response) -> None:
    """httpx response hook: a 5xx whose body says the request is invalid gets `x-should-retry: false`, the header
    the `openai` client obeys, so it fails at once instead of after max_retries backoffs."""
    log.debug(f"{response.request.method} {response.request.url} -> HTTP {response.status_code}")
    if response.status_code >= 500:
        body = response.read().decode("utf-8", "replace").lower()
        if any(marker in body for marker in NOT_HEALING):
            response.headers["x-should-retry"] = "false"


def openai_client(option: str, api_key_env: str, base_url: str | None, max_retries: int, timeout: float,
                  on_request: Callable, on_response: Callable | None = None):
    """An `openai.OpenAI` client; `option` names the config group in the error about a missing key.
    `on_request` sees every attempt, `on_response` (optional) every response."""
    import httpx
    import openai

    key = os.environ.get(api_key_env)
    if not key:
        raise ValharmError(f"{option}=openai reads its API key from the environment variable {api_key_env}, which "
                           f"is not set; export it (a local server without auth accepts any value), or name another "
                           f"variable with {option}.api_key_env")
    quiet_http_logs()
    responses = [mark_not_healing] + ([on_response] if on_response else [])
    http = httpx.Client(timeout=timeout, event_hooks={"request": [on_request], "response": responses})
    return openai.OpenAI(api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout, http_client=http)


def failure(err: Exception) -> str:
    """An API error as its class and HTTP status only (error bodies can quote the key)."""
    status = getattr(err, "status_code", None)
    return type(err).__name__ + (f" (HTTP {status})" if status else "")


def unreachable(err: Exception, option: str, base_url: str) -> str | None:
    """What to do about an error that says the server is not there, or not at this URL; None for other errors."""
    import openai

    if isinstance(err, openai.APIConnectionError):  # also APITimeoutError
        return (f"cannot reach the server at {base_url} ({failure(err)}): start it, or fix {option}.base_url; "
                f"rerunning the same command resumes (finished work is kept)")
    if isinstance(err, openai.NotFoundError) and not base_url.rstrip("/").endswith("/v1"):
        return (f"the server at {base_url} answered {failure(err)}: {option}.base_url usually ends in /v1 "
                f"(e.g. http://localhost:8000/v1)")
    return None
