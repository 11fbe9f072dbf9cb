"""Hugging Face sequence classifiers by hub id or local path: toxicity (a probability) or regard (a label)."""
from __future__ import annotations

from valharm.errors import ValharmError
from valharm.scoring import REGARD_LABELS, Scorer, Verdict


class HFClassifier(Scorer):
    """A transformers text classifier.

    task=toxicity: the score is the probability of `positive_label` (e.g. 'toxic').
    task=regard: the most likely label, mapped to negative/neutral/positive/other through `label_map`
    (model label -> regard label; labels already named so need no entry), as for `sasha/regardv3`.
    """

    kind = "hf_classifier"
    offline = False
    flush_every = 256  # fast and local: batch the cache writes
    description = "Hugging Face sequence classifier"

    def __init__(self, model: str, task: str = "toxicity", positive_label: str | None = "toxic",
                 label_map: dict | None = None, revision: str | None = None, batch_size: int = 32,
                 max_length: int = 512, device: str = "auto", cache_path=None, progress: bool = True):
        self.task, self.model_id, self.revision = task, model, revision
        self.positive_label, self.label_map = positive_label, dict(label_map or {})
        self.batch_size, self.max_length = batch_size, max_length
        self.description = f"Hugging Face classifier {model} ({task})"
        from transformers import pipeline

        try:
            self._pipe = pipeline("text-classification", model=model, revision=revision,
                                  device=None if device == "auto" else device)
        except OSError as err:
            raise ValharmError(f"cannot load classifier '{model}': {err}; set the scorer's model to a hub id "
                               f"you can reach or a local directory") from None
        labels = list(self._pipe.model.config.id2label.values())
        if task == "toxicity" and positive_label not in labels:
            raise ValharmError(f"classifier {model} has labels {labels}; set positive_label to the toxic one")
        if task == "regard":
            unmapped = [lab for lab in labels if self.label_map.get(lab, lab.lower()) not in REGARD_LABELS]
            if unmapped:
                raise ValharmError(f"classifier {model}: labels {unmapped} are not regard labels; map them with "
                                   f"label_map (model label -> one of {', '.join(REGARD_LABELS)})")
        super().__init__(cache_path, progress)

    def commit(self) -> str:
        """The weights that answer: the hub commit the revision resolved to, or a local folder's content digest."""
        from pathlib import Path

        from valharm.caching import content_digest, digest_cache

        found = getattr(self._pipe.model.config, "_commit_hash", None)
        if found:
            return found
        return f"local:{content_digest(Path(self.model_id), digest_cache())[:16]}" if Path(self.model_id).exists() \
            else "unknown"

    def settings(self):
        return {"model": self.model_id, "revision": self.revision, "commit": self.commit(),
                "positive_label": self.positive_label, "label_map": self.label_map, "max_length": self.max_length}

    def _score(self, texts, done):
        for start in range(0, len(texts), 1024):  # each chunk reaches the cache before the next
            outputs = self._pipe(texts[start:start + 1024], top_k=None, batch_size=self.batch_size, truncation=True,
                                 max_length=self.max_length)
            for i, scores in enumerate(outputs, start):
                self._done(i, scores, done)

    def _done(self, i, scores, done):
        probs = {s["label"]: float(s["score"]) for s in scores}
        if self.task == "toxicity":
            done(i, Verdict(probs[self.positive_label]))
        else:
            top = max(probs, key=probs.get)
            done(i, Verdict(self.label_map.get(top, top.lower()), reason=f"p={probs[top]:.4f}"))
