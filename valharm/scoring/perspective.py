"""Perspective API TOXICITY scores (the study's toxicity scorer), rate-limited, retried, concurrent.

The key is read from an environment variable and sent in a header (never in the URL, so it cannot
appear in an error message or a log). Retries use urllib3's `Retry` (exponential backoff, Retry-After
honoured) on 429, 5xx and connection errors. A 400 about the text itself (unsupported language,
empty, too long) makes the item invalid: Perspective answered that it cannot score it. Any other error
(a bad key, a quota, a 403) fails the item: it is not cached, and a rerun tries it again.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from valharm.errors import ValharmError
from valharm.scoring import Scorer, Verdict

URL = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze"
TEXT_ERRORS = ("COMMENT_EMPTY", "COMMENT_TOO_LONG", "LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE", "UNKNOWN_LANGUAGE")


def error_types(response) -> list[str]:
    """The errorType of each detail of a Google API error body (empty when there is none)."""
    try:
        details = response.json().get("error", {}).get("details", [])
    except ValueError:
        return []
    return [d.get("errorType", "") for d in details if isinstance(d, dict)]


class RateLimiter:
    """At most `per_second` starts per second across threads (0: unlimited)."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.next_start = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.interval
        time.sleep(max(0.0, start - now))


class PerspectiveScorer(Scorer):
    """TOXICITY summary score in [0, 1] for each text."""

    kind = "perspective"
    task = "toxicity"
    offline = False
    description = "Perspective API TOXICITY (summary score)"

    def __init__(self, api_key_env: str = "PERSPECTIVE_API_KEY", url: str = URL, languages: tuple | None = ("en",),
                 attribute: str = "TOXICITY", requests_per_second: float = 1.0, max_concurrency: int = 4,
                 max_retries: int = 6, backoff_factor: float = 1.0, timeout: float = 30.0, cache_path=None,
                 progress: bool = True, version: str | None = None):
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        key = os.environ.get(api_key_env)
        if not key:
            raise ValharmError(f"scorer=perspective reads its API key from the environment variable {api_key_env}, "
                               f"which is not set; export it, or name another variable with scorer.api_key_env")
        self.url, self.attribute, self.version = url, attribute, version
        self.languages = list(languages) if languages else None  # None: Perspective detects the language
        self.timeout, self.max_concurrency = timeout, max_concurrency
        self.limiter = RateLimiter(requests_per_second)
        retry = Retry(total=max_retries, backoff_factor=backoff_factor, status_forcelist=(429, 500, 502, 503, 504),
                      allowed_methods=None, respect_retry_after_header=True, raise_on_status=False)
        self.session = requests.Session()
        self.session.mount("https://", HTTPAdapter(max_retries=retry, pool_maxsize=max_concurrency))
        self.session.mount("http://", HTTPAdapter(max_retries=retry, pool_maxsize=max_concurrency))
        self.session.headers["X-Goog-Api-Key"] = key
        super().__init__(cache_path, progress)

    def settings(self):
        """Perspective reports no model version: `version` (e.g. the month of scoring) keeps periods apart."""
        return {"attribute": self.attribute, "languages": self.languages, "url": self.url,
                **({"version": self.version} if self.version else {})}

    def _ask(self, text: str) -> tuple[Verdict, int]:
        import requests

        if not text.strip():
            return Verdict.invalid("empty text (Perspective rejects it)"), 0
        self.limiter.wait()
        body = {"comment": {"text": text}, "requestedAttributes": {self.attribute: {}}, "doNotStore": True,
                **({"languages": self.languages} if self.languages else {})}
        try:
            response = self.session.post(self.url, json=body, timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as err:  # retries exhausted on connection errors / timeouts
            return Verdict.failed(f"{type(err).__name__}"), 0
        retries = len(response.raw.retries.history) if response.raw.retries else 0
        if response.status_code == 400 and set(error_types(response)) & set(TEXT_ERRORS):
            return Verdict.invalid(f"Perspective cannot score it: {', '.join(error_types(response))}"), retries
        if response.status_code != 200:
            return Verdict.failed(f"HTTP {response.status_code} after {retries} retries"), retries
        try:
            value = response.json()["attributeScores"][self.attribute]["summaryScore"]["value"]
        except (ValueError, KeyError, TypeError):
            return Verdict.invalid(f"unexpected response: {response.text[:200]}"), retries
        return Verdict(float(value)), retries

    def _score(self, texts, done):
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = {pool.submit(self._ask, text): i for i, text in enumerate(texts)}
            for future in as_completed(futures):
                verdict, retries = future.result()
                self.counts["calls"] += 1
                self.counts["retries"] += retries
                done(futures[future], verdict)
