"""Judge ratings, AxBench-style: a chat model rates each completion 0–2 on three criteria, and the three combine
by harmonic mean (0 when any is 0), as AxBench combines its concept, instruction and fluency scores.

The prompts are saejobs' own, versioned (``PROMPTS``): ratings are stored with the version that asked for them,
so ratings from different wordings are never mixed (changing a word of ``TEMPLATES`` means a new ``PROMPTS``).
Each prompt asks for a short explanation, then the rating as ``Rating: [[N]]`` (AxBench's reply format); the last
such line of the reply counts, and a reply without one is stored unrated. Torch-free; no network here
(``tasks.judge`` sends the requests).
"""

from __future__ import annotations

import re
from enum import StrEnum

PROMPTS = "saejobs-judge-1"  # the wording below; a changed wording is a new version
MAX_RATING = 2
MAX_REPLY_TOKENS = 400
RATING = re.compile(r"Rating:\s*\[\[\s*(\d+)\s*\]\]")

_SCALE = ("End with your rating on its own line, in exactly this format: \"Rating: [[score]]\", where score is 0, 1 "
          "or 2.")


class Criterion(StrEnum):
    """What a judge rates. To add one: a member, its template in ``TEMPLATES`` and a new ``PROMPTS`` version."""

    CONCEPT = "concept"  # is the steered feature's concept (its explanation) in the text?
    INSTRUCTION = "instruction"  # does the text follow on from the prompt (the last user turn of a chat)?
    FLUENCY = "fluency"  # is it fluent, repetition counting against it?


TEMPLATES = {
    Criterion.CONCEPT: (
        "You are an impartial judge. Decide how clearly the concept below appears in the text fragment. Judge only "
        "the concept's presence, not grammar or coherence.\n\nExplain briefly, quoting where the concept appears. "
        "Rate 0 if the concept is absent, 1 if it is only hinted at or appears in passing, 2 if it is clearly part "
        "of the text. " + _SCALE + "\n\n[Concept]\n{concept}\n[End of concept]\n\n[Text fragment]\n{text}\n"
        "[End of text fragment]"),
    Criterion.INSTRUCTION: (
        "You are an impartial judge. Decide how well the text fragment follows on from the instruction or prompt "
        "below: whether it is about what was asked or begun. Judge only relatedness, not grammar or quality.\n\n"
        "Explain briefly, then rate 0 if the text is unrelated, 1 if it is partly related or drifts away, 2 if it "
        "clearly addresses or continues it. " + _SCALE + "\n\n[Instruction]\n{instruction}\n[End of instruction]\n\n"
        "[Text fragment]\n{text}\n[End of text fragment]"),
    Criterion.FLUENCY: (
        "You are an impartial judge. Rate the fluency of the text fragment below. Judge only fluency, not "
        "completeness, relevance or informativeness; repeated words or phrases count against it.\n\nExplain "
        "briefly, naming any unnatural phrasing, grammatical errors or repetition, then rate 0 if the text is not "
        "fluent (incomprehensible or repetitive), 1 if it is somewhat fluent with noticeable errors or awkward "
        "phrasing, 2 if it is fluent and nearly flawless. " + _SCALE + "\n\n[Text fragment]\n{text}\n"
        "[End of text fragment]"),
}


def prompt(criterion: Criterion, text: str, instruction: str = "", concept: str = "") -> str:
    return TEMPLATES[criterion].format(text=text, instruction=instruction, concept=concept)


def request_body(model: str, content: str) -> dict:
    """An OpenAI chat-completions request: one user turn, greedy, the reply's length bounded."""
    return {"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": MAX_REPLY_TOKENS}


def reply_text(answer) -> str:
    """The assistant's text of a chat-completions answer; ValueError naming what is missing."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("the answer has no choices[0].message.content") from None
    if not isinstance(content, str):
        raise ValueError("choices[0].message.content is not text")
    return content


def rating(reply: str) -> int | None:
    """The last ``Rating: [[N]]`` of a reply when N is 0..2; None otherwise (stored unrated)."""
    found = RATING.findall(reply)
    if not found:
        return None
    n = int(found[-1])
    return n if 0 <= n <= MAX_RATING else None


def harmonic(ratings: dict[str, int | None]) -> float | None:
    """AxBench's aggregate: the harmonic mean of the three ratings (0 when any is 0); None unless all three exist."""
    vals = [ratings.get(c.value) for c in Criterion]
    if any(v is None for v in vals):
        return None
    if any(v == 0 for v in vals):
        return 0.0
    return len(vals) / sum(1 / v for v in vals)
