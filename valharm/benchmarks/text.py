"""Small text helpers shared by benchmarks."""
from __future__ import annotations

import re

SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def first_sentence(text: str) -> str:
    """The first sentence of a continuation: up to the first '.', '!' or '?' before a space or the end, or
    up to the first line break (leading line breaks skipped). Leading whitespace becomes one space, so that
    prompt + sentence reads as the model wrote it."""
    body = text.lstrip()
    line = body.split("\n", 1)[0]
    end = SENTENCE_END.search(line)
    sentence = (line[:end.end()] if end else line).rstrip()
    return (" " if text[:1].isspace() and sentence else "") + sentence
