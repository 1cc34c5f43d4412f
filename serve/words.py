"""The words of the shipped models' text: text_out id -> word, for clients that show a transcript.

Both synthetic conversations (training/conversation.py: the tone model's "low/mid/high" + colour words;
training/spoken.py: the speech model's "yes" + colour words) share one id space, so the union covers
either model. The silence id maps to "" (the model says nothing); ids outside the map are not words of
these models (a client shows them as ids).
"""
from __future__ import annotations


def text_words() -> dict[str, str]:
    """{str(text id): word} (JSON keys are strings); the silence id maps to ""."""
    from training import conversation, spoken

    words = {**conversation.WORDS, **spoken.WORDS}
    return {str(k): ("" if k == conversation.SIL else w) for k, w in sorted(words.items())}
