"""The 1-6 "how much like you" rating question shared by VIM stage 2 and the PVQ-40 benchmark."""
from __future__ import annotations

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
_RATING = re.compile(r"(?<!\d)[1-6](?!\d)")
_LIST_ITEM = re.compile(r"^\s*[1-6]\s*[=.):]", re.MULTILINE)


def rating_prompt(statement: str) -> str:
    """Ask how much a described person or a statement is like the respondent, on the 1-6 scale."""
    options = ", ".join(f"{n} = {label}" for n, label in SCALE.items())
    return f'How much is this like you? Answer with one number ({options}).\nStatement: "{statement}"'


def rating_answer(rating: int, value: str) -> str:
    """The answer a persona gives: the rating first, then the value behind it."""
    return f"{rating}. {value} is {IMPORTANCE[rating]} to me."


def parse_rating(text: str) -> int | None:
    """The first rating in an answer, as a digit 1-6 or a scale label; None if there is none.

    An answer that lists several scale points (the scale echoed back) holds no rating.
    """
    lowered = text.lower()
    if len(_LIST_ITEM.findall(lowered)) >= 2:
        return None
    hits = []
    match = _RATING.search(lowered)
    if match:
        hits.append((match.start(), 0, int(match.group())))
    for rating, label in _LABELS:
        at = re.search(rf"\b{re.escape(label)}\b", lowered)
        if at:
            hits.append((at.start(), -len(label), rating))
    return min(hits)[2] if hits else None
