"""What both tasks' tallies count the same way (training/metrics.py `Tally`, training/spoken_metrics.py
`SpokenTally`): units, text on answers and silences, face colour, turn-taking, overlap, barge-in and
answer latency, and the mouth/loudness series of the sync metric. numpy only."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .readout import correlation, face_colour_class, mouth_opening


@dataclass
class TurnTally:
    """Counts summed over conversations; subclasses add their task's own and build on `turn_summary()`."""

    conversations: int = 0
    units: int = 0
    answer_units: int = 0
    text_answer_ok: int = 0
    silent_units: int = 0
    text_silent_ok: int = 0
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

    def add_turns(self, c, spec, audio: np.ndarray, frames: np.ndarray, active: np.ndarray, text_right: np.ndarray,
                  silent_right: np.ndarray, face_want: np.ndarray, answers) -> None:
        """One conversation `c`: `active` [U] the units the model's output is loud in; `text_right` /
        `silent_right` [U] whether each unit's text is the answer's / silence; `face_want` [U] the face
        colour class due (0 skin, 1 + colour); `answers` (end, units) of each question with an answer due
        (the window its first active unit is looked for in)."""
        u, s, f = c.units, spec.samples_per_unit, spec.frames_per_unit
        speak = c.model_speaking
        self.conversations += 1
        self.units += u
        self.answer_units += int(speak.sum())
        self.silent_units += int((~speak).sum())
        self.text_answer_ok += int(text_right[speak].sum())
        self.text_silent_ok += int(silent_right[~speak].sum())
        colour = face_colour_class(frames, spec)
        self.face_answer_ok += int((colour == face_want)[speak].sum())
        self.face_silent_ok += int((colour == face_want)[~speak].sum())
        self.active_on_answer += int(active[speak].sum())
        self.inactive_on_silent += int((~active[~speak]).sum())
        self.overlap_units += int((active & c.user_speaking).sum())
        for onset in c.barge_ins:
            quiet = np.flatnonzero(~active[onset:])
            self.barge_in_latency.append(int(quiet[0]) if len(quiet) else u - onset)
        for end, window_units in answers:
            if end + 1 < u and speak[end + 1]:
                self.questions += 1
                window = active[end + 1:end + 1 + window_units]
                if window.any():
                    self.answer_latency.append(int(np.argmax(window)) + 1)
        hop = s // f
        self.loudness.append(np.sqrt((audio[:u * s].reshape(u * f, hop).astype(np.float64) ** 2).mean(1)))
        self.mouth.append(mouth_opening(frames, spec))
        self.in_answer.append(np.repeat(speak, f))

    def rate(self, a: float, b: float) -> float:
        return a / b if b else float("nan")

    def turn_summary(self) -> dict[str, float]:
        """The shared metrics: text, face, turn, sync, barge-in, overlap, answer latency (and their parts)."""
        rate = self.rate
        mouth, loud, in_ans = (np.concatenate(x) if x else np.zeros(0) for x in (self.mouth, self.loudness, self.in_answer))
        return {
            "text": 0.5 * (rate(self.text_answer_ok, self.answer_units) + rate(self.text_silent_ok, self.silent_units)),
            "text_answer": rate(self.text_answer_ok, self.answer_units),
            "text_silent": rate(self.text_silent_ok, self.silent_units),
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


def task_score(m: dict[str, float], parts) -> float:
    """The mean of `parts` of `m`, sync counted at max(sync, 0)."""
    return float(np.mean([max(m[k], 0.0) if k == "sync" else m[k] for k in parts]))
