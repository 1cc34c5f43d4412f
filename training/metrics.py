"""Task metrics of a conversation, from the model's outputs only (text tokens, waveform, frames). numpy only,
so they apply to the torch reference and to every engine backend and precision alike.

Per conversation (training/conversation.py), with the model "active" in a unit when its output audio's
RMS exceeds ACTIVE_RMS:

    text        answer units whose two text tokens are [pitch word, colour word], and silent units whose
                tokens are [SIL, SIL] (the mean of both rates)
    tone        answer units whose dominant output frequency is nearest (in semitones) the right answer tone
    face        units whose face colour (a cheek patch) is the answer's colour while answering, skin otherwise
                (the mean of both rates)
    turn        balanced accuracy of "active" against the target's speaking units (listens, answers on pause,
                stops on barge-in)
    sync        correlation, over every 40 ms frame, of the mouth's opening (darkness of the mouth box)
                with the RMS of the same 40 ms of output audio (also within answer units alone)
    barge-in    units from the user's barge-in to the model's first inactive unit (target 0)
    overlap     fraction of units where the user speaks and the model is active (target 0)
    latency     units from the end of a question to the model's first active unit (target 1)

The task score is the mean of text, tone, face, turn and max(sync, 0): 1 is perfect, random weights
score about 0.2.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .conversation import ANSWER_FREQS_HZ, ANSWER_UNITS, COLOUR_WORDS, SIL, Conversation
from .readout import check_outputs, correlation, dominant_frequency, face_colour_class, mouth_opening  # noqa: F401 (re-exported)
from .turn_tally import TurnTally, task_score

ACTIVE_RMS = 0.04  # output audio RMS above which the model counts as speaking (answers: ~0.15-0.35)
# what the shipped weights must reach through the ONNX Runtime engines on held-out conversations
# (docs/TRAINING.md; measured there: task 0.75, text 0.83, tone 0.70, face 0.54, turn 0.95, sync 0.74,
# barge-in 0.18 units; random weights: task 0.21)
THRESHOLDS = {"task": 0.65, "text": 0.70, "tone": 0.55, "face": 0.45, "turn": 0.85, "sync": 0.55,
              "barge_in_units": 1.0, "overlap": 0.05}
SCORE_PARTS = ("text", "tone", "face", "turn", "sync")


@dataclass
class Tally(TurnTally):
    """Counts summed over tone conversations; `summary()` turns them into the metrics."""

    tone_ok: int = 0
    semitone_errors: list = field(default_factory=list)

    def add(self, c: Conversation, spec, tokens: np.ndarray, audio: np.ndarray, frames: np.ndarray) -> None:
        """Score one conversation's outputs: tokens [U, 2], audio [U * S], frames [U * F, H, W, 3]."""
        u, s = c.units, spec.samples_per_unit
        check_outputs(tokens, audio, frames, u, spec)
        speak, ans = c.model_speaking, c.answer
        rms = np.sqrt((audio[:u * s].reshape(u, s).astype(np.float64) ** 2).mean(1))
        right = np.stack([np.array((10, 11, 12))[np.maximum(ans, 0) // 3], np.array(COLOUR_WORDS)[np.maximum(ans, 0) % 3]], 1)
        for m in np.flatnonzero(speak):
            freq = dominant_frequency(audio[m * s:(m + 1) * s], spec.sample_rate)
            semis = 12 * np.log2(freq / np.array(ANSWER_FREQS_HZ))
            self.tone_ok += int(np.argmin(np.abs(semis)) == ans[m])
            self.semitone_errors.append(float(abs(semis[ans[m]])))
        self.add_turns(c, spec, audio, frames, rms > ACTIVE_RMS, np.all(tokens == right, axis=1), np.all(tokens == SIL, axis=1),
                       np.where(speak, 1 + np.maximum(ans, 0) % 3, 0), [(end, ANSWER_UNITS) for _, end, _, _ in c.turns])

    def summary(self) -> dict[str, float]:
        m = {**self.turn_summary(), "tone": self.rate(self.tone_ok, self.answer_units),
             "semitone_error": float(np.median(self.semitone_errors)) if self.semitone_errors else float("nan")}
        m["task"] = task_score(m, SCORE_PARTS)
        return m


# --- streaming a conversation through any session ---------------------------------------------------------
def stream(session, c: Conversation, spec, on_unit=lambda: None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The user's side of `c` through a session (ReferenceSession or runtime EngineSession: `step`, `flush`)
    -> (tokens [U, 2], audio [U * S], frames [U * F, H, W, 3]) aligned with the conversation's units."""
    tokens, audio, frames = [], [], []
    for a, fr in c.units_of(spec):
        r = session.step(a, fr)
        tokens.append(np.asarray(r.text_tokens))
        if r.audio is not None:
            audio.append(r.audio)
            frames.append(r.frames)
        on_unit()
    last = session.flush()
    if last is not None:
        la, lf = (last.audio, last.frames) if hasattr(last, "audio") else last
        audio.append(la)
        frames.append(lf)
    return np.stack(tokens), np.concatenate(audio), np.concatenate(frames)


def new_tally(spec):
    """The tally of the task of `spec` (training/tasks.py): `Tally` for tones, `SpokenTally` for speech."""
    from .tasks import task_of

    if task_of(spec) == "speech":
        from .spoken_metrics import SpokenTally

        return SpokenTally()
    return Tally()


def thresholds(spec) -> dict[str, float]:
    """What the shipped weights of the task of `spec` must reach (docs/TRAINING.md)."""
    from .tasks import task_of

    if task_of(spec) == "speech":
        from .spoken_metrics import THRESHOLDS as SPOKEN

        return SPOKEN
    return THRESHOLDS


LOWER_IS_BETTER = ("barge_in_units", "overlap", "unasked", "unasked_long")


def misses(m: dict[str, float], limits: dict[str, float]) -> list[str]:
    """The metrics of `m` on the wrong side of `limits` ("name value vs limit")."""
    out = []
    for k, limit in limits.items():
        bad = m[k] > limit if k in LOWER_IS_BETTER else m[k] < limit
        if bad or m[k] != m[k]:
            out.append(f"{k} {m[k]:.3f} {'>' if k in LOWER_IS_BETTER else '<'} {limit:g}")
    return out


def evaluate(make_session, spec, seeds, units: int, on_unit=lambda: None) -> dict[str, float]:
    """Stream the conversations `seeds` (each `units` long) of the task of `spec` through fresh sessions
    `make_session(seed)`."""
    from .tasks import conversation

    tally = new_tally(spec)
    for seed in seeds:
        c = conversation(spec, units, seed)
        session = make_session(seed)
        try:
            tally.add(c, spec, *stream(session, c, spec, on_unit))
        finally:
            if hasattr(session, "close"):
                session.close()
    return tally.summary()


def targets_metrics(c: Conversation, spec) -> dict[str, float]:
    """The metrics of the target outputs themselves (the ceiling; checks the metrics and the generator)."""
    tally = new_tally(spec)
    tally.add(c, spec, c.text, c.model_audio, c.model_frames)
    return tally.summary()
