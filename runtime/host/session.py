"""A streaming session on built engines, sequential or pipelined (thinker + performer processes).

One unit k, in both modes, reads top to bottom in `step`:

    encode u_k                         (thinker: audio_enc, video_enc)
    wait for y_(k-1)                   (performer's result; zeros before unit 0)
    thinker_step(k) on y_(k-1)         -> text tokens, KV delta_k, appended to the thinker's cache
    submit delta_k                     -> performer: append to its cache, N flow steps -> y_k
    decode y_(k-1)                     (thinker: audio_dec, video_dec), unless already decoded

Sequential: the performer runs in this process inside `submit` (the reference order).
Pipelined: the performer is a second process, so its solve of y_k overlaps the thinker's decode of
y_(k-1) and encode of u_(k+1). Same engines, inputs and noise -> bitwise the same outputs.
Imports neither torch nor model_src: the preset's numbers come from the manifest.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from unitio.units import (
    UnitResult,
    check_audio_unit,
    check_frames_unit,
    check_text_unit,
)

from ..child import claim_core
from ..engine import load_initial_state
from ..order import Performer, StreamOrder, UnitOutput
from ..spec import THINKER_STAGES, unit_spec
from ..trace import SpanLog
from ..worker import check_worker_options
from .engines import load_engines
from .kv_cache import KVBuffers
from .performer import LocalPerformer, PerformerProcess
from .solver import FlowSolver
from .thinker import Thinker

MODES = ("sequential", "pipelined")


class EngineSession(StreamOrder):
    """Streams one conversation through the engines of `directory` (batch 1). Use as a context manager
    (or call `close`) so a pipelined session's performer process is stopped.

    threads: CPU threads per engine (ORT); performer_core: CPU core the performer is pinned to (default:
    a core no other session holds, when threads == 1); performer_timeout_s: seconds without a result
    before it counts as hung (10x that for start-up); trust: a public key the directory must be signed
    with (checked here and again by the performer as it loads). CPU engines only: GPU engines run on
    the device path (runtime/device/session.py)."""

    performer: Performer  # LocalPerformer (sequential) or PerformerProcess (pipelined)

    def __init__(self, directory: str | Path, seed: int = 0, expect_preset: str | None = None,
                 threads: int | None = None, mode: str = "sequential", performer_timeout_s: float | None = None,
                 performer_core: int | None = None, nvtx: bool = False, trust: str | Path | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        check_worker_options(threads, performer_timeout_s)
        stages = [*THINKER_STAGES, *(["flow_step"] if mode == "sequential" else [])]
        manifest, engines = load_engines(directory, expect_preset, threads, stages=stages, trust=trust)
        self._start(manifest, engines, load_initial_state(directory, manifest), seed, nvtx)
        self.mode = mode
        if mode == "sequential":
            self.performer = LocalPerformer(FlowSolver(engines["flow_step"], self.spec, seed), self.cache, self.log)
        else:
            if performer_core is None and threads == 1 and len(os.sched_getaffinity(0)) >= 2:
                self._core = claim_core()  # a core no other live session's performer has
                performer_core = self._core.core
            self.performer = PerformerProcess(directory, self.spec, seed, self.log, threads, performer_core,
                                              timeout_s=performer_timeout_s, trust=trust)

    @classmethod
    def in_process(cls, manifest: dict, engines: dict, initial_state: dict, seed: int = 0) -> "EngineSession":
        """A sequential session on engines given directly (anything with the Engine interface, e.g. the
        torch stage modules that calibration records through); `manifest` needs "preset" and "stages"."""
        self = cls.__new__(cls)
        self._start(manifest, engines, initial_state, seed, nvtx=False)
        self.mode = "sequential"
        self.performer = LocalPerformer(FlowSolver(engines["flow_step"], self.spec, seed), self.cache, self.log)
        return self

    def _start(self, manifest: dict, engines: dict, initial_state: dict, seed: int, nvtx: bool) -> None:
        self.manifest, self.spec, self.seed, self.log = manifest, unit_spec(manifest), seed, SpanLog(nvtx=nvtx)
        s = self.spec
        self.thinker = Thinker(engines, initial_state, s)
        self.cache = KVBuffers(s)
        self.unit_index = 0  # next unit to step
        self.received = -1  # last unit whose y has come back from the performer
        self.decoded = 0  # next unit to decode
        self.prev_audio = np.zeros(s.audio_latent_shape, np.float32)  # y_(k-1): zeros before unit 0
        self.prev_video = np.zeros(s.video_latent_shape, np.float32)

    def step(self, audio: np.ndarray, frames: np.ndarray, text_in: np.ndarray | None = None) -> UnitResult:
        """One unit of user input -> the model's text for unit k and the audio/frames of unit k - 1 (None
        at k = 0, or when `decode_ready` already gave them). Bad input raises InputError, state untouched."""
        s, k, log = self.spec, self.unit_index, self.log
        audio = check_audio_unit(audio, s)
        frames = check_frames_unit(frames, s)
        text = check_text_unit(text_in, s.text_in_tokens, s.vocab_size, s.text_pad_id)
        started, first_span = time.perf_counter(), log.count
        with log("encode", k):
            za, zv, encoder_states = self.thinker.encode(audio, frames, k)
        self._receive(k - 1)
        with log("think", k):
            tokens, k_delta, v_delta = self.thinker.think(k, text, za, zv, self.prev_audio, self.prev_video, self.cache)
            self.cache.append(k, k_delta, v_delta)
        self.thinker.commit(encoder_states)
        self.performer.submit(k, k_delta, v_delta)
        self.unit_index = k + 1
        media = self._decode_through(k - 1)
        return UnitResult(k, tokens, media.audio if media else None, media.frames if media else None,
                          self._thinker_ms(first_span, started))

    def close(self) -> None:
        self.performer.close()
        if getattr(self, "_core", None) is not None:
            self._core.release()

    def _receive(self, k: int) -> None:
        if k < 0 or self.received >= k:
            return
        with self.log("wait", k):
            self.prev_audio, self.prev_video = self.performer.result(k)
        self.received = k

    def _decode_through(self, k: int) -> UnitOutput | None:
        if k < self.decoded:
            return None
        self._receive(k)
        with self.log("decode", k):
            wave, frames = self.thinker.decode(self.prev_audio, self.prev_video, k)
        self.decoded = k + 1
        return UnitOutput(k, wave, frames)

    def _thinker_ms(self, first_span: int, started: float) -> dict[str, float]:
        """Milliseconds per stage this process spent in this step (the in-process solve too), plus its total."""
        out = self.log.stage_ms(first_span, None if self.mode == "sequential" else "thinker")
        out["total"] = 1000.0 * (time.perf_counter() - started)
        return out
