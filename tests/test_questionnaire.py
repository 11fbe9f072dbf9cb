import pytest

from valharm.values.questionnaire import SCALE, parse_rating, rating_answer, rating_prompt


@pytest.mark.parametrize("text, rating", [
    ("5", 5),
    (" 6 (very much like me)", 6),
    ("It is not like me at all.", 1),
    ("Not like me. 4", 2),
    ("Somewhat like me; 3", 4),
    ("very much like me", 6),
    ("like me", 5),
    ("My answer: 3", 3),
    ("I am 25 years old", None),   # 25 is no rating
    ("7", None),
    ("", None),
    ("1 = not like me at all\n2 = not like me\n3 = a", None),   # the scale echoed back is no answer
    ("1. Not like me\n2. Not like me\n3.", None),
    ("4. Somewhat like me, because I care.", 4),
    ("He is nothing like me", None),                # labels inside other phrases are not answers
    ("not really like me", None),
    ("a bit like me", None),
    ("Not very much like me", None),
    ("This person is not like me.", 2),
    ("Answer: very much like me", 6),
    ("On a scale from 1 to 6, I'd say 4", 4),      # the range is not the rating
    ("Rating (1-6): 5", 5),
    ("4 out of 6", 4),
    ("1.5", None),
    ("2nd option", None),
    ("1 = not like me at all, 2 = not like me, 3 = a little like me", None),   # one-line echo of the scale
    ("1 = not like me at all, 6 = very much like me. My answer: 4", 4),
    ("Between 1 and 6, 4", 4),
    ("On a 6-point scale, I'd give 4", 4),
    ("I would give 4 points.", 4),
    ("5 points", 5),
    ("4 = somewhat like me", 4),                    # a single pair is an answer
])
def test_first_valid_rating_is_parsed(text, rating):
    assert parse_rating(text) == rating


def test_prompt_lists_the_whole_scale_and_answers_parse_back():
    prompt = rating_prompt("I agree that cities should grow.")
    assert all(f"{n} = {label}" in prompt for n, label in SCALE.items())
    for n in SCALE:
        assert parse_rating(rating_answer(n, "Power")) == n
