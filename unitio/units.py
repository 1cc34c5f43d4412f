"""Checks on one unit of user input, and the per-unit solver noise. numpy only.

`spec` is anything with the preset's time/frame attributes (a `model_src.config.Preset`, or the
runtime's view of a manifest): sample_rate, samples_per_unit, frames_per_unit, frame_height,
frame_width, unit_ms.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class InputError(ValueError):
    """User input that does not fit the stream: the message names what was expected and what came."""


def check_audio_unit(audio: np.ndarray, spec) -> np.ndarray:
    """audio: mono float samples [samples_per_unit] in [-1, 1] -> float32 array (a copy only if cast)."""
    if not isinstance(audio, np.ndarray):
        raise InputError(f"audio unit: expected a numpy array, got {type(audio).__name__}")
    n = spec.samples_per_unit
    if audio.ndim != 1:
        hint = f" ({min(audio.shape)} channels? mix down to mono)" if audio.ndim == 2 else ""
        raise InputError(f"audio unit: expected mono, a 1-D array of {n} samples, got shape {audio.shape}{hint}")
    if audio.shape[0] != n:
        raise InputError(f"audio unit: expected {n} samples ({spec.unit_ms:g} ms at {spec.sample_rate} Hz), "
                         f"got {audio.shape[0]}")
    if audio.dtype not in (np.float32, np.float64):
        raise InputError(f"audio unit: expected float32 samples in [-1, 1], got dtype {audio.dtype}")
    if not np.isfinite(audio).all():
        raise InputError("audio unit: contains NaN or Inf samples")
    return audio.astype(np.float32, copy=False)


def check_frames_unit(frames: np.ndarray, spec) -> np.ndarray:
    """frames: uint8 RGB [frames_per_unit, H, W, 3] -> the same array, checked."""
    if not isinstance(frames, np.ndarray):
        raise InputError(f"video unit: expected a numpy array, got {type(frames).__name__}")
    want = (spec.frames_per_unit, spec.frame_height, spec.frame_width, 3)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"video unit: expected RGB frames of shape {want} (frames, height, width, 3), "
                         f"got shape {frames.shape}")
    if frames.shape[0] != want[0]:
        raise InputError(f"video unit: expected {want[0]} frames ({spec.unit_ms:g} ms at "
                         f"{round(1000 * want[0] / spec.unit_ms)} fps), got {frames.shape[0]}")
    if frames.shape[1:3] != want[1:3]:
        raise InputError(f"video unit: expected frame size {want[1]}x{want[2]} (height x width), "
                         f"got {frames.shape[1]}x{frames.shape[2]}")
    if frames.dtype != np.uint8:
        raise InputError(f"video unit: expected uint8 pixels, got dtype {frames.dtype}")
    return frames


def check_text_unit(text_in: np.ndarray | None, n_tokens: int, vocab_size: int, pad_id: int) -> np.ndarray:
    """User text ids for one unit ([n_tokens] int, or None for none) -> int64 [n_tokens], pad-filled."""
    if text_in is None:
        return np.full(n_tokens, pad_id, dtype=np.int64)
    ids = np.asarray(text_in)
    if ids.shape != (n_tokens,) or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"text unit: expected {n_tokens} integer token ids, got shape {ids.shape} dtype {ids.dtype}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise InputError(f"text unit: token ids must be in [0, {vocab_size}), got {ids.min()}..{ids.max()}")
    return ids.astype(np.int64)


def unit_noise(seed: int, unit_index: int, audio_shape: tuple[int, ...], video_shape: tuple[int, ...]
               ) -> tuple[np.ndarray, np.ndarray]:
    """The solver's starting noise for one unit, float32, reproducible from (seed, unit_index) alone."""
    rng = np.random.default_rng([seed, unit_index])
    return (rng.standard_normal(audio_shape, dtype=np.float32), rng.standard_normal(video_shape, dtype=np.float32))


def cache_slot(unit_index, sink_units: int, window_units: int):
    """KV-cache unit slot of unit `unit_index`: the first `sink_units` stay, later ones go round a ring of
    `window_units`. The one formula of the ring, for a Python int, a numpy array or a torch int64 tensor
    alike (tensor ops only, so a CUDA graph may hold it): the reference, the host and the device path."""
    past = (unit_index - sink_units) * (unit_index >= sink_units)  # units past the sinks (0 within them)
    return unit_index - past + past % window_units


def write_unit(k, v, length, unit_index: int, k_delta, v_delta, sink_units: int, window_units: int) -> None:
    """Unit `unit_index`'s keys/values [L, B, Hkv, T, D] into its ring slot of k, v [L, B, Hkv, capacity, D]
    in place, and `length` (every row) set to the valid tokens: numpy arrays or torch tensors alike (the
    reference's append, model_src.kv_cache.append_unit, and the host path's, runtime/host/kv_cache.py)."""
    t = k_delta.shape[-2]
    start = cache_slot(unit_index, sink_units, window_units) * t
    k[..., start:start + t, :] = k_delta
    v[..., start:start + t, :] = v_delta
    length[...] = min(unit_index + 1, sink_units + window_units) * t


@dataclass
class UnitResult:
    """What a session gives back for unit k."""

    unit_index: int
    text_tokens: np.ndarray  # [n_text_out] int64, the model's text for unit k
    audio: np.ndarray | None  # [samples_per_unit] float32, output audio of unit k - 1 (None at k = 0)
    frames: np.ndarray | None  # [frames_per_unit, H, W, 3] uint8, output video of unit k - 1
    timings_ms: dict[str, float] = field(default_factory=dict)


def frames_to_model(frames: np.ndarray) -> np.ndarray:
    """uint8 [F, H, W, 3] -> float32 [1, 3, F, H, W] in [-1, 1]."""
    return (frames.transpose(3, 0, 1, 2)[None].astype(np.float32) / np.float32(127.5) - np.float32(1.0))


def model_to_frames(video: np.ndarray) -> np.ndarray:
    """float [1, 3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3]."""
    x = np.clip(np.round((video[0].astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return x.transpose(1, 2, 3, 0)
