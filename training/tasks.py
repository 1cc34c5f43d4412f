"""The synthetic task a preset is trained and measured on: the tone conversation (training/conversation.py)
or the spoken one (training/spoken.py). numpy only.

Every consumer (stage a's codec clips, stage b's encoded conversations, `streamer eval`, `streamer run
--input synthetic`, the benchmarks) asks `conversation(spec, units, seed)` and gets a
`conversation.Conversation` with the same fields whichever task it is, so the trainer and the streaming
code have one path. Which task a preset has is `TASK_OF_PRESET` (by preset name; every other preset
has the tone task). Seeds from TRAIN_SEED_BASE up are training conversations; every other seed is held
out, and the spoken task then also holds out the user's voice (`speech.speakers(0, "heldout")`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import conversation as tones

TRAIN_SEED_BASE = 1_000_000  # training conversations are seeds 1_000_000 + i; every other seed is held out
TASK_OF_PRESET = {"tiny-speech": "speech"}
TASKS = ("tones", "speech")


def task_of(spec) -> str:
    """'speech' or 'tones': the task of a preset (or unit spec) by its name."""
    return TASK_OF_PRESET.get(getattr(spec, "name", ""), "tones")


def is_training_seed(seed) -> bool:
    first = seed[0] if isinstance(seed, (list, tuple)) else seed
    return int(first) >= TRAIN_SEED_BASE


@dataclass
class SpokenAsConversation(tones.Conversation):
    """A spoken conversation in the tone conversation's fields (text [U, 2] = [word id, SIL] per unit,
    `answer` indexes spoken.ANSWER_WORDS, `amplitude` is the target mouth opening); `spoken` is the
    original (its turns, speaker and split), what the spoken metrics and the recognizer read."""

    spoken: object = None


def spoken_conversation(spec, units: int, seed) -> SpokenAsConversation:
    """The spoken conversation of `seed` at the sizes of `spec`: training voices for training seeds,
    held-out voices otherwise."""
    from . import spoken

    if spec.sample_rate != 24_000:
        raise ValueError(f"the spoken task is made at 24,000 Hz; the preset {spec.name!r} runs at {spec.sample_rate}")
    split = "train" if is_training_seed(seed) else "heldout"
    c = spoken.make_spoken(units, seed, split, samples_per_unit=spec.samples_per_unit)
    h, w, f = spec.frame_height, spec.frame_width, spec.frames_per_unit
    text = np.full((units, 2), tones.SIL, np.int64)
    text[:, 0] = c.words
    return SpokenAsConversation(seed=seed, units=units, user_audio=c.user_audio.reshape(-1),
                                user_frames=c.user_frames(h, w, f), model_audio=c.model_audio.reshape(-1),
                                model_frames=c.model_frames(h, w, f), text=text, user_speaking=c.user_speaking,
                                model_speaking=c.model_speaking, answer=c.answer, amplitude=c.mouth(f),
                                turns=list(c.turns), barge_ins=list(c.barge_ins), spoken=c)


def conversation(spec, units: int, seed) -> tones.Conversation:
    """The conversation of `seed` (an int or a list of ints), `units` long, of the task of `spec`."""
    if task_of(spec) == "speech":
        return spoken_conversation(spec, units, seed)
    return tones.make_conversation(spec, units, seed)


def heard_labels(c) -> np.ndarray:
    """[U] int64: the word the user asked (0-2, spoken.QUESTIONS) on each unit from the question's last
    unit (the word is then heard whole) through its answer's units, -1 elsewhere and everywhere for the
    tone task: the targets of stage b's training-only heard-word head (training/losses.py)."""
    out = np.full(c.units, -1, np.int64)
    if isinstance(c, SpokenAsConversation):
        turns = c.spoken.turns
        for i, t in enumerate(turns):
            until = turns[i + 1].start if i + 1 < len(turns) else c.units
            out[t.end:min(until, t.end + 1 + t.answer_units)] = t.asked
    return out


def describe(c) -> list[str]:
    """One line per unit of either task's conversation (for humans reading a run)."""
    if isinstance(c, SpokenAsConversation):
        from .spoken import describe as spoken_describe

        return spoken_describe(c.spoken)
    return tones.describe(c)


class TaskUnits(tones.ConversationUnits):
    """`streamer run --input synthetic` for any preset: the user's side of its task's conversation `seed`,
    made one chunk of CHUNK_UNITS at a time (flat memory however long the stream)."""

    make = staticmethod(conversation)
