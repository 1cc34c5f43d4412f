"""One way to open a session on an engine directory, whichever path runs it.

    how = "sequential" | "pipelined"            the host path (numpy; CPU engines): runtime/host/session.py
    how = "one-gpu" | "two-gpu" | "two-process"  the device path (state resident on the device):
                                                 runtime/device/session.py (on "cpu" too, for tests)

Engines built for a CUDA GPU run on the device path only: the host path would copy the whole KV cache
and the codec states across the bus every call. Imports torch only when the device path is opened.
"""
from __future__ import annotations

from pathlib import Path

from unitio.names import PLACEMENTS

from .host.session import MODES, EngineSession
from .manifest import ManifestError
from .worker import check_worker_options

HOWS = MODES + PLACEMENTS


def default_how(manifest: dict) -> str:
    """one-gpu for engines built for a GPU, else the pipelined host path."""
    return "one-gpu" if manifest["target"]["device"] == "cuda" else "pipelined"


def default_device(manifest: dict) -> str:
    return "cuda" if manifest["target"]["device"] == "cuda" else "cpu"


def open_session(directory: str | Path, how: str, manifest: dict, seed: int = 0, threads: int | None = None,
                 performer_timeout_s: float | None = None, device: str | None = None,
                 performer_device: str | None = None, expect_preset: str | None = None, nvtx: bool = False,
                 trust: str | Path | None = None):
    """A session of kind `how` on the engines of `directory` (its checked `manifest`)."""
    if how not in HOWS:
        raise ValueError(f"expected one of {list(HOWS)}, got {how!r}")
    if how in MODES:
        if manifest["target"]["device"] == "cuda":
            raise ManifestError(f"{directory} holds engines for a CUDA GPU: they run with their state on the device "
                                f"(--placement one-gpu | two-gpu | two-process), not on the host path ({how})")
        return EngineSession(directory, seed=seed, expect_preset=expect_preset, threads=threads, mode=how,
                             performer_timeout_s=performer_timeout_s, nvtx=nvtx, trust=trust)
    from .device.session import DeviceSession

    check_worker_options(threads, performer_timeout_s)
    return DeviceSession(directory, placement=how, device=device or default_device(manifest),
                         performer_device=performer_device, seed=seed, expect_preset=expect_preset,
                         threads=threads, performer_timeout_s=performer_timeout_s, nvtx=nvtx, trust=trust)
