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

from .conversation import ANSWER_FREQS_HZ, COLOUR_WORDS, SIL, Conversation
from .readout import check_outputs, correlation, dominant_frequency, face_colour_class, mouth_opening  # noqa: F401 (re-exported)

ACTIVE_RMS = 0.04  # output audio RMS above which the model counts as speaking (answers: ~0.15-0.35)
# what the shipped weights must reach through the ONNX Runtime engines on held-out conversations
# (docs/TRAINING.md; measured there: task 0.75, text 0.83, tone 0.70, face 0.54, turn 0.95, sync 0.74,
# barge-in 0.18 units; random weights: task 0.21)
THRESHOLDS = {"task": 0.65, "text": 0.70, "tone": 0.55, "face": 0.45, "turn": 0.85, "sync": 0.55,
              "barge_in_units": 1.0, "overlap": 0.05}
SCORE_PARTS = ("text", "tone", "face", "turn", "sync")


@dataclass
class Tally:
    """Counts summed over conversations; `summary()` turns them into the metrics."""

    conversations: int = 0
    units: int = 0
    answer_units: int = 0
    text_answer_ok: int = 0
    silent_units: int = 0
    text_silent_ok: int = 0
    tone_ok: int = 0
    semitone_errors: list = field(default_factory=list)
    face_answer_ok: int = 0
    face_silent_ok: int = 0
    active_on_answer: int = 0
    inactive_on_silent: int = 0
    overlap_units: int = 0
    barge_in_latency: list = field(default_factory=list)
    answer_latency: list = field(default_factory=list)
    questions: int = 0
    mouth: list = field(default_factory=list)
    loudness: list = field(default_factory=list)
    in_answer: list = field(default_factory=list)

    def add(self, c: Conversation, spec, tokens: np.ndarray, audio: np.ndarray, frames: np.ndarray) -> None:
        """Score one conversation's outputs: tokens [U, 2], audio [U * S], frames [U * F, H, W, 3]."""
        u, s, f = c.units, spec.samples_per_unit, spec.frames_per_unit
        check_outputs(tokens, audio, frames, u, spec)
        speak, ans = c.model_speaking, c.answer
        rms = np.sqrt((audio[:u * s].reshape(u, s).astype(np.float64) ** 2).mean(1))
        active = rms > ACTIVE_RMS
        self.conversations += 1
        self.units += u
        self.answer_units += int(speak.sum())
        self.silent_units += int((~speak).sum())
        right = np.stack([np.array((10, 11, 12))[np.maximum(ans, 0) // 3], np.array(COLOUR_WORDS)[np.maximum(ans, 0) % 3]], 1)
        self.text_answer_ok += int(np.all(tokens[speak] == right[speak], axis=1).sum())
        self.text_silent_ok += int(np.all(tokens[~speak] == SIL, axis=1).sum())
        for m in np.flatnonzero(speak):
            freq = dominant_frequency(audio[m * s:(m + 1) * s], spec.sample_rate)
            semis = 12 * np.log2(freq / np.array(ANSWER_FREQS_HZ))
            self.tone_ok += int(np.argmin(np.abs(semis)) == ans[m])
            self.semitone_errors.append(float(abs(semis[ans[m]])))
        colour = face_colour_class(frames, spec)  # [U]: 0 skin, 1 + colour
        want = np.where(speak, 1 + np.maximum(ans, 0) % 3, 0)
        self.face_answer_ok += int((colour == want)[speak].sum())
        self.face_silent_ok += int((colour == want)[~speak].sum())
        self.active_on_answer += int(active[speak].sum())
        self.inactive_on_silent += int((~active[~speak]).sum())
        self.overlap_units += int((active & c.user_speaking).sum())
        for onset in c.barge_ins:
            quiet = np.flatnonzero(~active[onset:])
            self.barge_in_latency.append(int(quiet[0]) if len(quiet) else u - onset)
        for start, end, _, _ in c.turns:
            if end + 1 < u and speak[end + 1]:
                self.questions += 1
                window = active[end + 1:end + 5]
                if window.any():
                    self.answer_latency.append(int(np.argmax(window)) + 1)
        hop = s // f
        self.loudness.append(np.sqrt((audio[:u * s].reshape(u * f, hop).astype(np.float64) ** 2).mean(1)))
        self.mouth.append(mouth_opening(frames, spec))
        self.in_answer.append(np.repeat(speak, f))

    def summary(self) -> dict[str, float]:
        rate = lambda a, b: a / b if b else float("nan")
        mouth, loud, in_ans = (np.concatenate(x) if x else np.zeros(0) for x in (self.mouth, self.loudness, self.in_answer))
        m = {
            "text": 0.5 * (rate(self.text_answer_ok, self.answer_units) + rate(self.text_silent_ok, self.silent_units)),
            "text_answer": rate(self.text_answer_ok, self.answer_units),
            "text_silent": rate(self.text_silent_ok, self.silent_units),
            "tone": rate(self.tone_ok, self.answer_units),
            "semitone_error": float(np.median(self.semitone_errors)) if self.semitone_errors else float("nan"),
            "face": 0.5 * (rate(self.face_answer_ok, self.answer_units) + rate(self.face_silent_ok, self.silent_units)),
            "turn": 0.5 * (rate(self.active_on_answer, self.answer_units) + rate(self.inactive_on_silent, self.silent_units)),
            "sync": correlation(mouth, loud),
            "sync_answer": correlation(mouth[in_ans.astype(bool)], loud[in_ans.astype(bool)]),
            "barge_in_units": float(np.mean(self.barge_in_latency)) if self.barge_in_latency else float("nan"),
            "barge_ins": float(len(self.barge_in_latency)),
            "overlap": rate(self.overlap_units, self.units),
            "answer_latency_units": float(np.mean(self.answer_latency)) if self.answer_latency else float("nan"),
            "answered": rate(len(self.answer_latency), self.questions),
        }
        m["task"] = float(np.mean([max(m[k], 0.0) if k == "sync" else m[k] for k in SCORE_PARTS]))
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
