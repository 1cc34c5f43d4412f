"""16-bit PCM mono WAV, read and written a unit at a time. numpy + stdlib only.

The header is parsed here, not by the `wave` module, so every refusal names the file, what was
expected and what came: another format (float, 8/24/32-bit), channels or rate, random bytes, no
samples, and a **truncated** file (the data chunk promises more bytes than the file holds).
The writer keeps the header valid after every unit, so a session killed mid-way leaves a playable WAV.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .growing import GrowingFile
from .units import InputError

PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE
_FORMATS = {PCM: "PCM", FLOAT: "IEEE float", 6: "A-law", 7: "mu-law", EXTENSIBLE: "extensible"}
HEADER = 44  # RIFF + fmt (16 bytes) + data chunk header: what WavWriter writes


@dataclass(frozen=True)
class WavInfo:
    """Where the samples of a checked WAV file are: `samples` 16-bit mono samples from byte `offset`."""

    path: Path
    offset: int
    samples: int
    sample_rate: int


def wav_info(path: str | Path, sample_rate: int) -> WavInfo:
    """Parse and check the header of `path` (16-bit PCM mono at `sample_rate`) -> WavInfo. Raises InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such audio file (expected a 16-bit PCM mono WAV at {sample_rate} Hz)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise InputError(f"{path}: expected a RIFF/WAVE file, got {size} bytes starting {head[:12]!r}")
        fmt = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                what = "no data chunk" if fmt else "no fmt chunk"
                raise InputError(f"{path}: expected a fmt and a data chunk, found {what} in its {size} bytes")
            cid, csize = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                fmt = _check_fmt(path, f.read(min(csize, 64)), csize, sample_rate)
                f.seek(csize - min(csize, 64) + (csize & 1), os.SEEK_CUR)
            elif cid == b"data":
                if fmt is None:
                    raise InputError(f"{path}: expected the fmt chunk before the data chunk")
                offset = f.tell()
                break
            else:  # LIST, fact, ...: skipped (chunks are padded to an even size)
                f.seek(csize + (csize & 1), os.SEEK_CUR)
    held = size - offset
    if csize > held:
        raise InputError(f"{path}: truncated: its header promises {csize} bytes of samples, the file holds {held}")
    if csize == 0:
        raise InputError(f"{path}: expected audio samples, the data chunk is empty (0 samples)")
    if csize % 2:
        raise InputError(f"{path}: expected whole 16-bit samples, the data chunk holds {csize} bytes (odd)")
    return WavInfo(path, offset, csize // 2, sample_rate)


def _check_fmt(path: Path, body: bytes, csize: int, sample_rate: int) -> tuple[int, int]:
    if len(body) < 16 or csize < 16:
        raise InputError(f"{path}: expected a fmt chunk of at least 16 bytes, got {len(body)}")
    tag, channels, rate, _, block, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == EXTENSIBLE and len(body) >= 26:
        tag = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID starts with the format tag
    if tag != PCM or bits != 16:
        got = f"{bits}-bit {_FORMATS.get(tag, f'format tag {tag}')}"
        raise InputError(f"{path}: expected 16-bit PCM samples, got {got} (convert it first)")
    if rate != sample_rate:
        raise InputError(f"{path}: expected sample rate {sample_rate} Hz, got {rate} Hz (resample it first)")
    if channels != 1:
        raise InputError(f"{path}: expected mono audio, got {channels} channels")
    if block != 2:
        raise InputError(f"{path}: expected a block size of 2 bytes (16-bit mono), got {block}")
    return channels, bits


class WavReader:
    """The samples of a checked WAV file, `read(n)` at a time -> float32 [<= n] in [-1, 1]."""

    def __init__(self, path: str | Path, sample_rate: int) -> None:
        self.info = wav_info(path, sample_rate)
        self._file = open(self.info.path, "rb")
        self._file.seek(self.info.offset)
        self._left = self.info.samples

    def read(self, n: int) -> np.ndarray:
        n = min(n, self._left)
        data = self._file.read(2 * n)
        if len(data) != 2 * n:  # the file shrank after it was checked
            raise InputError(f"{self.info.path}: truncated while reading: expected {2 * n} more bytes, got {len(data)}")
        self._left -= n
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> WavReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_wav(path: str | Path, sample_rate: int) -> np.ndarray:
    """A 16-bit PCM mono WAV at `sample_rate` -> float32 [samples] in [-1, 1] (the whole file)."""
    with WavReader(path, sample_rate) as r:
        return r.read(r.info.samples)


def to_pcm16(audio: np.ndarray) -> bytes:
    """float samples in [-1, 1] -> little-endian 16-bit PCM bytes (clipped)."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


class WavWriter(GrowingFile):
    """A 16-bit PCM mono WAV written unit by unit; the header is rewritten (and the file flushed) after
    every `write`, so the file is a valid WAV of everything written so far at any moment."""

    def __init__(self, path: str | Path, sample_rate: int) -> None:
        self.sample_rate, self.samples = sample_rate, 0
        super().__init__(path)

    def _header(self) -> bytes:
        data = 2 * self.samples
        return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + b"fmt " +
                struct.pack("<IHHIIHH", 16, PCM, 1, self.sample_rate, 2 * self.sample_rate, 2, 16) +
                b"data" + struct.pack("<I", data))

    def write(self, audio: np.ndarray) -> None:
        """Append float samples in [-1, 1] (clipped) and make the header say so."""
        data = to_pcm16(audio)
        self.samples += len(audio)
        self._append(data)

    _item_bytes = 2

    def _count(self) -> int:
        return self.samples

    def _set_count(self, count: int) -> None:
        self.samples = count


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """float [samples] in [-1, 1] -> 16-bit PCM mono WAV (the whole clip at once; an existing file or link
    at `path` is replaced, never written through)."""
    Path(path).unlink(missing_ok=True)
    w = WavWriter(path, sample_rate)
    try:
        w.write(audio)
    finally:
        w.close()
