"""What a session's outputs show, read from the outputs alone (numpy only): the face's colour class and
mouth opening per frame, the dominant frequency of a waveform, and the shape check every tally makes.
Both tasks' metrics (training/metrics.py, training/spoken_metrics.py) read outputs through these."""
from __future__ import annotations

import numpy as np

from .conversation import FACE_COLOURS, FACE_SKIN, face_regions


def check_outputs(tokens, audio, frames, units, spec) -> None:
    """Raise a ValueError naming the expected and received shapes unless tokens [U, 2], audio [U * S] and
    frames [U * F, H, W, 3] fit `units` units of `spec`."""
    h, w, f, s = spec.frame_height, spec.frame_width, spec.frames_per_unit, spec.samples_per_unit
    if tokens.shape != (units, 2) or audio.shape != (units * s,) or frames.shape != (units * f, h, w, 3):
        raise ValueError(f"metrics: expected tokens [{units}, 2], audio [{units * s}], frames [{units * f}, {h}, {w}, 3]; "
                         f"got {tokens.shape}, {audio.shape}, {frames.shape}")


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-length arrays; 0 when either is constant or shorter than 2."""
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def dominant_frequency(x: np.ndarray, sample_rate: int) -> float:
    """Frequency (Hz) of the largest peak of the Hann-windowed spectrum between 100 and 4000 Hz."""
    spec = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1.0 / sample_rate)
    band = (freqs >= 100) & (freqs <= 4000)
    return float(freqs[band][np.argmax(spec[band])])


def face_colour_class(frames: np.ndarray, spec) -> np.ndarray:
    """[U]: which face colour each unit shows (mean of the cheek patch over its frames): 0 skin, 1 + colour."""
    f = spec.frames_per_unit
    cheeks = face_regions(spec.frame_height, spec.frame_width)["cheeks"]
    mean = frames[:, cheeks].astype(np.float64).mean(1).reshape(-1, f, 3).mean(1)  # [U, 3]
    palette = np.concatenate([np.array([FACE_SKIN]), FACE_COLOURS]).astype(np.float64)
    return np.argmin(((mean[:, None] - palette[None]) ** 2).sum(-1), axis=1)


def mouth_opening(frames: np.ndarray, spec) -> np.ndarray:
    """[N frames]: how dark the mouth box is, 1 - mean luminance / 255 (higher = more open); continuous, so
    a blurred mouth still measures."""
    box = face_regions(spec.frame_height, spec.frame_width)["mouth_box"]
    lum = frames[:, box].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return 1.0 - lum.mean(1) / 255.0
