"""What quantization costs: per-stage error on held-out inputs, and per-session differences.

Stage metrics compare a stage's outputs with the fp32 reference on the same feeds: max abs error and
the cosine similarity of each output (flattened; the worst output counts). Session metrics stream the
same input and seed through two sessions and compare what a user gets: text tokens that differ, and
the SNR (dB) of the output audio and frames, 10 log10(|ref|^2 / |ref - x|^2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THRESHOLDS = {"cosine": 0.99}  # per quantized stage output: e.g. flow velocity cosine >= 0.99


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    ref, x = ref.astype(np.float64), x.astype(np.float64)
    noise = float(((ref - x) ** 2).sum())
    return float("inf") if noise == 0 else float(10 * np.log10(float((ref**2).sum()) / noise))


@dataclass
class StageError:
    stage: str
    max_abs: float = 0.0
    cosine: float = 1.0  # worst over outputs and calls
    tokens_equal_fraction: float | None = None  # thinker_step's text tokens, where present

    def add(self, want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
        for name, ref in want.items():
            if name == "text_tokens" or name.startswith("new_state_"):
                continue
            self.max_abs = max(self.max_abs, float(np.abs(got[name].astype(np.float64) - ref).max()))
            self.cosine = min(self.cosine, cosine(ref, got[name]))

    @property
    def ok(self) -> bool:
        return self.cosine >= THRESHOLDS["cosine"]


def stage_error(stage: str, feeds_iter, reference, candidate, max_calls: int | None = None) -> StageError:
    """Run `reference` and `candidate` (Engine-like) on every feeds dict -> the stage's worst error."""
    err, same, total = StageError(stage), 0, 0
    for i, feeds in enumerate(feeds_iter):
        if max_calls is not None and i >= max_calls:
            break
        want, got = reference.run(feeds), candidate.run(feeds)
        err.add(want, got)
        if "text_tokens" in want:
            same += int(np.sum(want["text_tokens"] == got["text_tokens"]))
            total += want["text_tokens"].size
    if total:
        err.tokens_equal_fraction = same / total
    return err


@dataclass
class SessionDiff:
    units: int
    tokens_differ: int  # of units x text_out tokens
    tokens_total: int
    audio_snr_db: float
    frames_snr_db: float
    latents_snr_db: float  # the solver's clean latents y_k (audio and video), before the decoders


def session_diff(reference, candidate, units: list[tuple[np.ndarray, np.ndarray]]) -> SessionDiff:
    """Stream `units` through both sessions (same input; each seeded alike) -> what differs."""
    outs = []
    for session in (reference, candidate):
        tokens, audio, frames, latents = [], [], [], []
        for a, f in units:
            r = session.step(a, f)
            latents += [session.prev_audio.ravel().copy(), session.prev_video.ravel().copy()]  # y_(k-1)
            tokens.append(r.text_tokens)
            if r.audio is not None:
                audio.append(r.audio)
                frames.append(r.frames)
        last = session.flush()
        audio.append(last.audio)
        frames.append(last.frames)
        latents += [session.prev_audio.ravel().copy(), session.prev_video.ravel().copy()]
        outs.append((np.stack(tokens), np.concatenate(audio), np.concatenate(frames).astype(np.float64),
                     np.concatenate(latents)))
    (t0, a0, f0, y0), (t1, a1, f1, y1) = outs
    return SessionDiff(len(units), int(np.sum(t0 != t1)), int(t0.size), snr_db(a0, a1), snr_db(f0, f1), snr_db(y0, y1))
