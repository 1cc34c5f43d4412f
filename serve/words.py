"""The words of the shipped models' text: text_out id -> word, for clients that show a transcript.

Both synthetic conversations share one id space: the tone model's (training/conversation.py: pitch words
"low/mid/high" and colour words) and the speech model's (training/spoken.py: "yes" and the same colour
words), so one table covers either model. serve may not import training (tests/test_layout.py), so the
table is written here and tests/test_serve.py holds it equal to training's `WORDS`. The silence id maps
to "" (the model says nothing); an id outside the table is not a word of these models.
"""
from __future__ import annotations

SILENCE = 1  # training.conversation.SIL
WORDS = {SILENCE: "", 10: "low", 11: "mid", 12: "high", 20: "red", 21: "green", 22: "blue", 23: "yes"}


def text_words() -> dict[str, str]:
    """{str(text id): word} (JSON object keys are strings); the silence id maps to ""."""
    return {str(k): w for k, w in sorted(WORDS.items())}
