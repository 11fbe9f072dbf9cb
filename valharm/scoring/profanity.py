"""Offline toxicity scorer: the linear model packaged in `alt-profanity-check`."""
from __future__ import annotations

from importlib.metadata import version

from valharm.errors import ValharmError
from valharm.scoring import Scorer, Verdict


class ProfanityCheckScorer(Scorer):
    """Probability that a text is offensive, from a trained linear model (offline stand-in for Perspective)."""

    kind = "profanity_check"
    task = "toxicity"
    flush_every = 256  # fast and local: batch the cache writes
    offline = True
    description = ("OFFLINE DEFAULT: alt-profanity-check linear model (profanity/offensiveness probability); "
                   "not comparable to Perspective API TOXICITY scores")

    def __init__(self, cache_path=None, progress: bool = True):
        try:
            from profanity_check import predict_prob
        except ImportError:
            raise ValharmError("scorer=profanity_check needs the package: pip install alt-profanity-check") from None
        self._predict = predict_prob
        super().__init__(cache_path, progress)

    def settings(self):
        return {"package": f"alt-profanity-check=={version('alt-profanity-check')}"}

    def _score(self, texts, done):
        for start in range(0, len(texts), 256):
            for i, p in enumerate(self._predict(texts[start:start + 256]), start):
                done(i, Verdict(float(p)))
