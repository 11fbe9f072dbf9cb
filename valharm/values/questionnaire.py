"""The 1-6 "how much like you" rating question shared by VIM stage 2 and the PVQ-40 benchmark."""
from __future__ import annotations

import math
import re

# Rating -> answer label (PVQ wording of the scale points) and the importance it expresses.
SCALE = {
    1: "not like me at all",
    2: "not like me",
    3: "a little like me",
    4: "somewhat like me",
    5: "like me",
    6: "very much like me",
}
IMPORTANCE = {
    1: "not important at all",
    2: "not important",
    3: "a little important",
    4: "somewhat important",
    5: "important",
    6: "very important",
}
_LABELS = sorted(SCALE.items(), key=lambda item: -len(item[1]))  # longest first: "like me" is inside others
_RATING = re.compile(r"(?<![\w.])[1-6](?!\w|\.\d)")
_LIST_ITEM = re.compile(r"^\s*[1-6]\s*[=.):]", re.MULTILINE)
_SCALE_ECHO = re.compile(r"\b[1-6]\s*(?:-|–|to)\s*[1-6]\b|\bout of\s+\d+|/\s*6\b|\bbetween\s+[1-6]\s+and\s+[1-6]\b"
                         r"|\b\d+\s*-?\s*point\s+scale\b")
# "4 = somewhat like me": one such pair may be the answer; two or more are the scale read back.
_SCALE_PAIR = re.compile(r"\b[1-6]\s*[=:]\s*(?:" + "|".join(sorted(map(re.escape, SCALE.values()), key=len, reverse=True))
                         + r")")
# A scale label counts only as the answer itself: at the start, optionally after "answer:" or "X is/am".
_LABEL_START = re.compile(r"^\W*(?:answer\W*)?(?:(?:this person|he|she|it|that|this) is\s+|i am\s+)?")


def rating_prompt(statement: str) -> str:
    """Ask how much a described person (or what they say) is like the respondent, on the 1-6 scale.

    Framing the text as a description of a person and ending on the instruction keeps small chat
    models answering with a rating (SmolLM2: 29 of the 40 PVQ items parse, against 5-16 for other phrasings).
    """
    options = ", ".join(f"{n} = {label}" for n, label in SCALE.items())
    return (f'Here is a description of a person: "{statement}"\n'
            f"How much is this person like you? Reply with only one number from 1 to 6 ({options}).")


STANCE_VERB = {"in favor of": "agree", "against": "disagree"}


def argument_statement(row) -> str:
    """The argument as something a person says (what VIM's stage 2 asks the persona to rate)."""
    conclusion = row["Conclusion"]
    return f'I {STANCE_VERB[row["Stance"]]} that {conclusion[:1].lower()}{conclusion[1:]}. {row["Premise"]}'


ANSWER_SLOT = "my answer is"  # what precedes the rating in a VIM answer; the answer-slot reading reads the next token
SLOT_ANSWERS = tuple(f" {rating}" for rating in SCALE)  # the six ratings as they follow the slot


def answer_branch(value: str) -> str:
    """How a VIM stage-2 answer starts: the value it names."""
    return f"{value} is"


def answer_leaf(rating: int) -> str:
    """How a VIM stage-2 answer goes on after `answer_branch`: the importance, then the rating it implies."""
    return f" {IMPORTANCE[rating]} to me, so {ANSWER_SLOT} {rating}."


def rating_answer(rating: int, value: str) -> str:
    """The answer a persona gives (VIM stage 2): the value and its importance first, the rating last."""
    return answer_branch(value) + answer_leaf(rating)


def value_answers(value: str) -> tuple[str, ...]:
    """The six ways to finish "<value> is": each importance and the rating it implies (the value-table read)."""
    return tuple(answer_leaf(r) for r in SCALE)


def _blank(match: re.Match) -> str:
    return " " * len(match.group())  # same length, so positions in the reply stay comparable


def parse_rating(text: str) -> int | None:
    """The rating an answer gives, as a digit 1-6 or a scale label; None when it gives none.

    Unclear answers are not guessed: an echoed scale ("1 = ...", "2 = ..." on lines or on one line), a
    range ("1 to 6", "between 1 and 6", "a 6-point scale") or a label inside a longer phrase ("nothing
    like me", "a bit like me") does not count; what the reply says besides them still can.
    """
    lowered = text.lower().strip()
    if len(_LIST_ITEM.findall(lowered)) >= 2:
        return None
    searched = _SCALE_ECHO.sub(_blank, lowered)
    if len(_SCALE_PAIR.findall(searched)) >= 2:
        searched = _SCALE_PAIR.sub(_blank, searched)
    hits = []
    match = _RATING.search(searched)
    if match:
        hits.append((match.start(), int(match.group())))
    prefix = _LABEL_START.match(lowered).end()
    for rating, label in _LABELS:
        if re.match(rf"{re.escape(label)}\b", lowered[prefix:]):
            hits.append((prefix, rating))
            break
    return min(hits)[1] if hits else None


def answer_distribution(logprobs: list[float]) -> tuple[int, float, list[float]]:
    """(most likely rating, probability-weighted mean rating, probabilities) from the six answers' log-probabilities.

    Probabilities are renormalised over the six answers.
    """
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    probs = [w / sum(weights) for w in weights]
    return logprobs.index(top) + 1, sum(r * p for r, p in enumerate(probs, start=1)), probs
