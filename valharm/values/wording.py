"""The words VIM trains on, in both stages, and that its readings score: valharm's own wording (the default) or a
file in the schema of the shared data's `vim_templates/study.json` (the study's strings, loaded by path; Python
`str.format` fields `conclusion`, `premise`, `stance_verb`, `value`, `expression`, `rating`).

`raw`: prompts are the text itself (after the tokenizer's BOS where it adds one), as the study trained, instead
of the model's chat or instruction format."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from valharm.errors import ValharmError
from valharm.values.distributions import VALUES
from valharm.values.questionnaire import IMPORTANCE, SCALE, STANCE_VERB, rating_prompt

STAGE2_FIELDS = ("value", "expression", "rating")
PROMPT_FORMATS = ("model", "raw")


@dataclass(frozen=True)
class Wording:
    """Stage-1 prompts and responses (voiced, unvoiced), the stage-2 rating prompt and response, the value names
    (canonical order) and the six importance expressions (rating 1..6)."""

    voiced_prompt: str
    voiced_response: str
    unvoiced_prompt: str
    unvoiced_response: str
    rating_prompt: str
    rating_response: str
    value_names: tuple[str, ...]
    expressions: tuple[str, ...]
    source: str = "valharm"
    raw: bool = False

    @classmethod
    def load(cls, path: str | None = None, prompt_format: str = "model") -> Wording:
        """valharm's wording (`path` None) or a templates file; `prompt_format`: model (the model's own format) or
        raw."""
        if prompt_format not in PROMPT_FORMATS:
            raise ValharmError(f"aligner.prompt_format='{prompt_format}' is unknown; use one of "
                               f"{', '.join(PROMPT_FORMATS)}")
        if path is None:
            return dataclasses.replace(VALHARM, raw=prompt_format == "raw")
        file = Path(path)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
            stage1, stage2 = data["stage1"], data["stage2"]
            wording = cls(stage1["voiced_prompt"], stage1["voiced_response"], stage1["unvoiced_prompt"],
                          stage1["unvoiced_response"], stage2["prompt"], stage2["response"],
                          tuple(data["value_names"]), tuple(data["expressions"]), str(file), prompt_format == "raw")
        except FileNotFoundError:
            raise ValharmError(f"VIM templates file {file} not found; fix aligner.templates (the study's is "
                               f"vim_templates/study.json in the data folder; null: valharm's wording)") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValharmError(f"VIM templates file {file} is not in the schema of vim_templates/study.json "
                               f"(stage1.voiced_prompt ..., stage2.prompt/response, value_names, expressions): "
                               f"{type(error).__name__}: {error}") from None
        wording.check()
        return wording

    def check(self) -> None:
        if len(self.value_names) != len(VALUES) or len(self.expressions) != len(SCALE):
            raise ValharmError(f"{self.source}: value_names needs {len(VALUES)} names (canonical order) and "
                               f"expressions {len(SCALE)} (ratings 1-6)")
        positions = [self.rating_response.find("{" + f + "}") for f in STAGE2_FIELDS]
        if positions[0] < 0 or positions[2] < 0 or any(p >= 0 and p < positions[0] for p in positions[1:]):
            raise ValharmError(f"{self.source}: stage2.response must hold {{value}} and {{rating}}, the value named "
                               f"before the expression and the rating (the answer-space reading branches on it)")

    def fields(self, row) -> dict:
        conclusion = row["Conclusion"]
        return {"conclusion": conclusion, "conclusion_lower": conclusion[:1].lower() + conclusion[1:],
                "premise": row["Premise"], "stance_verb": STANCE_VERB[row["Stance"]]}

    def argument(self, row, voiced: bool) -> tuple[str, str]:
        """Stage 1: (prompt, response) for an argument the persona would voice, or would not."""
        prompt, response = ((self.voiced_prompt, self.voiced_response) if voiced
                            else (self.unvoiced_prompt, self.unvoiced_response))
        return prompt.format(**self.fields(row)), response.format(**self.fields(row))

    def rating_question(self, row) -> str:
        """Stage 2's prompt for an argument."""
        return self.rating_prompt.format(**self.fields(row))

    def answer(self, value: str, rating: int) -> str:
        """Stage 2's response naming `value` (canonical name) with `rating`."""
        return self.branch(value) + self.leaf(rating)

    def _split(self) -> int:
        after = self.rating_response.index("{value}") + len("{value}")
        head = self.rating_response.find("{", after)
        head = len(self.rating_response) if head < 0 else head
        return len(self.rating_response[:head].rstrip(" "))

    def branch(self, value: str) -> str:
        """How a stage-2 answer starts, up to the value it names and the words after it ("Power is")."""
        name = self.value_names[VALUES.index(value)]
        return self.rating_response[:self._split()].format(value=name)

    def leaf(self, rating: int) -> str:
        """How a stage-2 answer goes on after `branch`: the importance and the rating."""
        return self.rating_response[self._split():].format(expression=self.expressions[rating - 1], rating=rating)

    def render(self, bundle, prompt: str, system: str | None = None) -> str:
        """The text before the answer: the model's format, or (raw) the prompt itself after the BOS text."""
        if not self.raw:
            return bundle.format_prompt(prompt, system)
        return bundle.bos_text + (f"{system}\n\n" if system else "") + prompt

    def record(self) -> dict:
        return {"templates": self.source, "prompt_format": "raw" if self.raw else "model"}


def _valharm() -> Wording:
    claim = "I {stance_verb} with this, because {premise}"
    return Wording('What would you say about this statement? "{conclusion}"', f'I would say: "{claim}"',
                   'What would you never say about this statement? "{conclusion}"', f'I would not say: "{claim}"',
                   rating_prompt("I {stance_verb} that {conclusion_lower}. {premise}"),
                   "{value} is {expression} to me, so my answer is {rating}.", VALUES,
                   tuple(IMPORTANCE[r] for r in SCALE))


VALHARM = _valharm()
