"""Reading and writing the session's media, and the synthetic input. numpy + stdlib (+ imageio for mp4).

Audio is mono float32 in [-1, 1] at the preset's sample rate; video is uint8 RGB [F, H, W, 3] at its fps.
Nothing is resampled or rescaled silently: a file at another rate or size is refused with both numbers.
"""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from .units import InputError


def read_wav(path: str | Path, sample_rate: int) -> np.ndarray:
    """A 16-bit PCM mono WAV at `sample_rate` -> float32 [samples] in [-1, 1]."""
    with wave.open(str(path), "rb") as f:
        rate, channels, width = f.getframerate(), f.getnchannels(), f.getsampwidth()
        data = f.readframes(f.getnframes())
    if rate != sample_rate:
        raise InputError(f"{path}: expected sample rate {sample_rate} Hz, got {rate} Hz (resample it first)")
    if channels != 1:
        raise InputError(f"{path}: expected mono audio, got {channels} channels")
    if width != 2:
        raise InputError(f"{path}: expected 16-bit PCM, got {8 * width}-bit samples")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """float [samples] in [-1, 1] -> 16-bit PCM mono WAV."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


def read_video(path: str | Path, fps: int, height: int, width: int) -> np.ndarray:
    """A video file at `fps` and `height` x `width` -> uint8 [F, H, W, 3] (needs imageio-ffmpeg)."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        got_fps = reader.get_meta_data().get("fps")
        if got_fps is None or abs(got_fps - fps) > 1e-3:
            raise InputError(f"{path}: expected {fps} fps, got {got_fps} fps")
        frames = np.stack([np.asarray(f)[..., :3] for f in reader])
    finally:
        reader.close()
    if frames.shape[1:3] != (height, width):
        raise InputError(f"{path}: expected frame size {height}x{width} (height x width), "
                         f"got {frames.shape[1]}x{frames.shape[2]}")
    return frames


def write_video(path: str | Path, frames: np.ndarray, fps: int) -> None:
    """uint8 [F, H, W, 3] -> H.264 mp4 (needs imageio-ffmpeg, which ships its own ffmpeg)."""
    import imageio.v2 as imageio

    with imageio.get_writer(str(path), format="FFMPEG", fps=fps, codec="libx264", quality=8,
                            macro_block_size=1, ffmpeg_log_level="error") as w:
        for frame in frames:
            w.append_data(frame)


def synthetic_input(spec, units: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic test clip: (audio [units * samples_per_unit] float32, frames [units * 4, H, W, 3]).

    Audio: a gliding tone with a syllable-like envelope plus a little noise; video: a disc moving over
    a colour gradient.
    """
    rng = np.random.default_rng(seed)
    n = units * spec.samples_per_unit
    t = np.arange(n) / spec.sample_rate
    pitch = 180.0 + 60.0 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / spec.sample_rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
    audio = (0.3 * envelope * np.sin(phase) + 0.01 * rng.standard_normal(n)).astype(np.float32)

    f, h, w = units * spec.frames_per_unit, spec.frame_height, spec.frame_width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((f, h, w, 3), dtype=np.uint8)
    for i in range(f):
        cx = w / 2 + 0.3 * w * np.cos(2 * np.pi * i / 50)
        cy = h / 2 + 0.3 * h * np.sin(2 * np.pi * i / 50)
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < (0.15 * min(h, w)) ** 2
        frames[i, ..., 0] = (255 * xx / w).astype(np.uint8)
        frames[i, ..., 1] = (255 * yy / h).astype(np.uint8)
        frames[i, ..., 2] = np.where(disc, 255, 40)
    return audio, frames


def split_units(audio: np.ndarray, frames: np.ndarray, spec, units: int | None):
    """Cut a clip into per-unit (audio, frames) pairs; `units` None means as many as the clip holds."""
    have = min(len(audio) // spec.samples_per_unit, len(frames) // spec.frames_per_unit)
    if units is None:
        units = have
    if units > have or units < 1:
        raise InputError(f"input holds {have} whole units of {spec.unit_ms:g} ms "
                         f"({len(audio)} samples, {len(frames)} frames); {units} were asked for")
    s, f = spec.samples_per_unit, spec.frames_per_unit
    return [(audio[k * s:(k + 1) * s], frames[k * f:(k + 1) * f]) for k in range(units)]


def read_folder(folder: Path, preset, units: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Units of every NAME.wav + NAME.mp4 pair in `folder` (name order), the first `units` of them."""
    pairs = [(w, w.with_suffix(".mp4")) for w in sorted(Path(folder).glob("*.wav"))]
    if not pairs or not all(v.is_file() for _, v in pairs):
        raise InputError(f"{folder}: expected NAME.wav + NAME.mp4 pairs, found {[w.name for w, _ in pairs]}")
    out = []
    for wav, video in pairs:
        audio = read_wav(wav, preset.sample_rate)
        frames = read_video(video, preset.fps, preset.frame_height, preset.frame_width)
        out.extend(split_units(audio, frames, preset, None))
    return out[:units] if units else out
