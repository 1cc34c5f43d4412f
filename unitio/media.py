"""Reading and writing the session's media a unit at a time, and the synthetic input. numpy + stdlib
(+ imageio-ffmpeg for mp4; WAV in `unitio.wav`).

Audio is mono float32 in [-1, 1] at the preset's sample rate; video is uint8 RGB [F, H, W, 3] at its fps.
Nothing is resampled or rescaled silently: a file at another rate or size is refused with both numbers.
Inputs are `Units`: made (`SyntheticUnits`) or read from the files (`FileUnits`, `FolderUnits`) one unit
at a time, so a session's memory does not grow with its length.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .units import InputError
from .wav import read_wav, write_wav  # noqa: F401  (re-exported: media is where callers look)


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.startswith("===")]
    return lines[-1][:200] if lines else type(e).__name__


def count_frames(path: str | Path) -> int:
    """Frames in the first video stream of `path`, by decoding it (ffmpeg in its own process; flat memory)."""
    import imageio_ffmpeg

    try:
        n, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (OSError, RuntimeError) as e:
        raise InputError(f"{path}: expected a video file ffmpeg can decode, got an error: {_first_line(e)}") from None
    return int(n or 0)


class VideoReader:
    """The frames of a video at `fps` and `height` x `width`, `read(n)` at a time -> uint8 [<= n, H, W, 3].
    The header (fps, size) is checked when it opens; nothing is resampled or resized."""

    def __init__(self, path: str | Path, fps: int, height: int, width: int) -> None:
        import imageio_ffmpeg

        self.path, self.shape = Path(path), (height, width, 3)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such video file (expected {fps} fps, {height}x{width} frames)")
        self._gen = imageio_ffmpeg.read_frames(str(self.path), pix_fmt="rgb24")
        try:
            meta = next(self._gen)
        except (OSError, RuntimeError, StopIteration) as e:
            self.close()
            raise InputError(f"{self.path}: expected a video file ffmpeg can read, got an error: {_first_line(e)}") from None
        got_fps, size = meta.get("fps"), tuple(meta.get("size") or (0, 0))
        if got_fps is None or abs(got_fps - fps) > 1e-3:
            self.close()
            raise InputError(f"{self.path}: expected {fps} fps, got {got_fps} fps")
        if size != (width, height):
            self.close()
            raise InputError(f"{self.path}: expected frame size {height}x{width} (height x width), got {size[1]}x{size[0]}")

    def read(self, n: int) -> np.ndarray:
        frames = []
        for _ in range(n):
            try:
                raw = next(self._gen, None)
            except (OSError, RuntimeError) as e:
                raise InputError(f"{self.path}: the video could not be decoded: {_first_line(e)}") from None
            if raw is None:
                break
            frames.append(np.frombuffer(raw, np.uint8).reshape(self.shape))
        return np.stack(frames) if frames else np.zeros((0, *self.shape), np.uint8)

    def close(self) -> None:
        self._gen.close()  # stops ffmpeg

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_video(path: str | Path, fps: int, height: int, width: int) -> np.ndarray:
    """A video file at `fps` and `height` x `width` -> uint8 [F, H, W, 3] (the whole file; needs imageio-ffmpeg)."""
    with VideoReader(path, fps, height, width) as r:
        chunks = []
        while len(chunk := r.read(256)):
            chunks.append(chunk)
    if not chunks:
        raise InputError(f"{path}: expected video frames, the file holds none")
    return np.concatenate(chunks)


class VideoWriter:
    """An H.264 MP4 fed frame by frame to ffmpeg (imageio-ffmpeg's binary, in its own session so a
    terminal's Ctrl-C does not reach it). Fragmented (`-movflags frag_keyframe+empty_moov`, a keyframe
    each second): what reached the disk is playable at any cut (a full disk, a kill). `close` waits for
    ffmpeg and raises OSError naming the file unless it exited 0."""

    def __init__(self, path: str | Path, fps: int, height: int, width: int) -> None:
        import subprocess
        import tempfile

        import imageio_ffmpeg

        self.path, self.shape, self.frames = Path(path), (height, width, 3), 0
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}",
               "-pix_fmt", "rgb24", "-r", str(fps), "-i", "-", "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p",
               "-crf", "10", "-g", str(fps), "-movflags", "frag_keyframe+empty_moov", "-v", "error",
               "-f", "mp4", str(self.path)]  # -f: the name may end in .partial
        self._log = tempfile.TemporaryFile()  # ffmpeg's messages, read when it fails
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log,
                                      start_new_session=True)

    def _said(self) -> str:
        self._log.seek(0)
        lines = [line.strip() for line in self._log.read()[-4000:].decode(errors="replace").splitlines() if line.strip()]
        return lines[-1][:200] if lines else f"exit status {self._proc.poll()}"

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 frames [n, H, W, 3]."""
        for frame in frames:
            if frame.shape != self.shape or frame.dtype != np.uint8:
                raise ValueError(f"{self.path}: expected uint8 frames {self.shape}, got {frame.dtype} {frame.shape}")
            try:
                self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
            except OSError as e:
                self._proc.wait()
                raise OSError(e.errno, f"{self.path}: ffmpeg stopped taking frames: {self._said()}") from None
            self.frames += 1

    def close(self) -> None:
        """Finish the file: ffmpeg's input closed, its exit waited for and checked (OSError unless 0)."""
        if self._proc.returncode is not None and self._log.closed:
            return
        try:
            self._proc.stdin.close()
        except OSError:
            pass  # ffmpeg already gone: its exit status says why
        code = self._proc.wait()
        said = self._said() if code else ""
        self._log.close()
        if code:
            raise OSError(f"{self.path}: ffmpeg could not finish the file (exit status {code}): {said}")


def cut_video(path: str | Path, frames: int) -> None:
    """Keep only the first `frames` frames of a (fragmented) MP4 we wrote, in place: ffmpeg copies them
    without re-encoding to a new file beside it, which replaces it. OSError naming the file on failure."""
    import subprocess

    import imageio_ffmpeg

    path = Path(path)
    cut = path.with_name(path.name + ".cut")
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy",
           "-frames:v", str(frames), "-movflags", "frag_keyframe+empty_moov", "-f", "mp4", str(cut)]
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, start_new_session=True)
    if done.returncode:
        cut.unlink(missing_ok=True)
        said = done.stderr.decode(errors="replace").strip().splitlines()
        raise OSError(f"{path}: could not be cut to {frames} frames: {said[-1][:200] if said else done.returncode}")
    os.replace(cut, path)


def write_video(path: str | Path, frames: np.ndarray, fps: int) -> None:
    """uint8 [F, H, W, 3] -> H.264 mp4 (needs imageio-ffmpeg, which ships its own ffmpeg)."""
    w = VideoWriter(path, fps, frames.shape[1], frames.shape[2])
    try:
        w.write(frames)
    finally:
        w.close()


def _synthetic_frames(spec, first: int, n: int) -> np.ndarray:
    """Frames first..first+n-1 of the synthetic clip: a disc moving over a colour gradient."""
    h, w = spec.frame_height, spec.frame_width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    for j, i in enumerate(range(first, first + n)):
        cx = w / 2 + 0.3 * w * np.cos(2 * np.pi * i / 50)
        cy = h / 2 + 0.3 * h * np.sin(2 * np.pi * i / 50)
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < (0.15 * min(h, w)) ** 2
        frames[j, ..., 0] = (255 * xx / w).astype(np.uint8)
        frames[j, ..., 1] = (255 * yy / h).astype(np.uint8)
        frames[j, ..., 2] = np.where(disc, 255, 40)
    return frames


class Units:
    """A clip as units (audio [samples_per_unit] float32, frames [F, H, W, 3] uint8), made or read one at
    a time: `len` is the count, iterating (again, from the start, as often as wanted) yields them."""

    note: str | None = None  # something the user should be told (e.g. a dropped incomplete tail)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class SyntheticUnits(Units):
    """The synthetic clip of `synthetic_input`, made one unit at a time (bitwise the same samples):
    a gliding tone with a syllable-like envelope plus a little noise; a disc moving over a gradient."""

    def __init__(self, spec, units: int, seed: int = 0) -> None:
        super().__init__(units)
        self.spec, self.seed = spec, seed

    def __iter__(self):
        s, sr, f = self.spec.samples_per_unit, self.spec.sample_rate, self.spec.frames_per_unit
        rng, carry = np.random.default_rng(self.seed), 0.0
        for k in range(self.n):
            t = np.arange(k * s, (k + 1) * s) / sr
            pitch = 180.0 + 60.0 * np.sin(2 * np.pi * 0.5 * t)
            cum = np.cumsum(np.concatenate([[carry], pitch]))[1:]  # the same running sum as over the clip
            carry = cum[-1]
            phase = 2 * np.pi * cum / sr
            envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
            audio = (0.3 * envelope * np.sin(phase) + 0.01 * rng.standard_normal(s)).astype(np.float32)
            yield audio, _synthetic_frames(self.spec, k * f, f)


def synthetic_input(spec, units: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic test clip: (audio [units * samples_per_unit] float32, frames [units * 4, H, W, 3])."""
    made = list(SyntheticUnits(spec, units, seed))
    return np.concatenate([a for a, _ in made]), np.concatenate([f for _, f in made])


FITS = (None, "pad", "trim")


class FileUnits(Units):
    """The units of AUDIO.wav + VIDEO.mp4, read from the files one unit at a time (flat memory).

    Both are checked when this is made (formats, and their lengths: unequal lengths are refused unless
    `fit` is "pad" (silence and the last frame fill the shorter, up to whole units) or "trim" (cut to
    the shorter)); `units` None means all the clip holds."""

    def __init__(self, wav: str | Path, video: str | Path, spec, units: int | None = None, fit: str | None = None):
        from .wav import wav_info

        if fit not in FITS:
            raise ValueError(f"fit: expected one of {FITS}, got {fit!r}")
        self.wav, self.video, self.spec, self.fit = Path(wav), Path(video), spec, fit
        samples = wav_info(self.wav, spec.sample_rate).samples
        VideoReader(self.video, spec.fps, spec.frame_height, spec.frame_width).close()  # header checks
        frames = count_frames(self.video)
        if frames == 0:
            raise InputError(f"{self.video}: expected video frames, the file holds none")
        s, f = spec.samples_per_unit, spec.frames_per_unit
        clip = (f"{self.wav} holds {samples} samples ({samples / spec.sample_rate:.3f} s), {self.video} holds "
                f"{frames} frames ({frames / spec.fps:.3f} s)")
        if fit is None and abs(samples * spec.fps - frames * spec.sample_rate) >= spec.sample_rate:
            raise InputError(f"{clip}: expected audio and video of equal length (within one frame); pass --pad "
                             f"(silence / the last frame fill the shorter) or --trim (cut to the shorter)")
        have = (max(-(-samples // s), -(-frames // f)) if fit == "pad" else min(samples // s, frames // f))
        if units is None:
            units = have
        if not 1 <= units <= have:
            raise InputError(f"input holds {have} whole units of {spec.unit_ms:g} ms ({clip}); {units} were asked for")
        tail = min(samples / spec.sample_rate, frames / spec.fps) * 1000 - have * spec.unit_ms
        if fit != "pad" and units == have and tail >= 1:
            self.note = f"the last {tail:.0f} ms of the input are not a whole unit of {spec.unit_ms:g} ms and are left out"
        super().__init__(units)

    def __iter__(self):
        from .wav import WavReader

        s, f, spec = self.spec.samples_per_unit, self.spec.frames_per_unit, self.spec
        last = None
        with WavReader(self.wav, spec.sample_rate) as audio_in, \
                VideoReader(self.video, spec.fps, spec.frame_height, spec.frame_width) as video_in:
            for k in range(self.n):
                audio, frames = audio_in.read(s), video_in.read(f)
                if len(frames):
                    last = frames[-1]
                if self.fit == "pad":
                    audio = np.concatenate([audio, np.zeros(s - len(audio), np.float32)])
                    frames = np.concatenate([frames, np.repeat(last[None], f - len(frames), 0)])
                elif len(audio) < s or len(frames) < f:
                    raise InputError(f"{self.video if len(frames) < f else self.wav}: ended inside unit {k} "
                                     f"(read {len(audio)} samples, {len(frames)} frames of {s} and {f})")
                yield audio, frames


class FolderUnits(Units):
    """The units of every NAME.wav + NAME.mp4 pair in `folder` (name order), the first `units` of them."""

    def __init__(self, folder: Path, spec, units: int | None = None, fit: str | None = None) -> None:
        pairs = [(w, w.with_suffix(".mp4")) for w in sorted(Path(folder).glob("*.wav"))]
        if not pairs or not all(v.is_file() for _, v in pairs):
            raise InputError(f"{folder}: expected NAME.wav + NAME.mp4 pairs, found {[w.name for w, _ in pairs]}")
        self.clips = [FileUnits(w, v, spec, None, fit) for w, v in pairs]
        total = sum(len(c) for c in self.clips)
        if units is not None and not 1 <= units <= total:
            raise InputError(f"{folder}: its clips hold {total} whole units; {units} were asked for")
        super().__init__(units or total)

    def __iter__(self):
        made = 0
        for clip in self.clips:
            for unit in clip:
                if made == self.n:
                    return
                made += 1
                yield unit


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
