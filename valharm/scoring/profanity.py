"""Offline toxicity scorer: the linear model packaged in `alt-profanity-check`."""
from __future__ import annotations

from importlib.metadata import version

from valharm.errors import ValharmError
from valharm.scoring import Scorer


class ProfanityCheckScorer(Scorer):
    """Probability that a text is offensive, from a trained linear model (offline stand-in for Perspective)."""

    offline = True
    description = ("OFFLINE DEFAULT: alt-profanity-check linear model (profanity/offensiveness probability); "
                   "not comparable to Perspective API TOXICITY scores")

    def __init__(self, cache_path=None):
        try:
            from profanity_check import predict_prob
        except ImportError:
            raise ValharmError("scorer=profanity_check needs the package: pip install alt-profanity-check") from None
        self._predict = predict_prob
        self.id = f"alt-profanity-check=={version('alt-profanity-check')}"
        super().__init__(cache_path)

    def _score(self, texts):
        return [float(p) for p in self._predict(texts)]
