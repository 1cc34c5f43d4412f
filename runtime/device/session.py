"""A streaming session whose state lives on the engines' device: the GPU data path (and its CPU twin).

One unit k reads top to bottom in `step`, as in runtime/host/session.py:

    encode u_k              inputs h2d (audio, uint8 frames, text, index); encoders on the device
    wait for y_(k-1)        the thinker's stream waits for the performer's event; y copied on the device
    thinker_step(k)         on the resident cache; the delta appended in place (one CUDA graph)
    submit delta_k          performer: (delta moved, two-gpu / two-process) N flow steps -> y_k, on its stream
    decode y_(k-1)          decoders on the device; tokens, waveform, uint8 frames d2h: the only sync

The KV cache and codec states are allocated once on the device and never cross the bus; every copy
goes through the TransferLedger (`ledger.per_unit()`). Placements: one-gpu (one process, two streams,
one cache), two-gpu (the performer on a second GPU with its own cache), two-process (a second process
on the same GPU, delta and y_k through CUDA IPC). On device "cpu" the same code runs on the CPU twin
(runtime/device/twin.py: streams that defer their work until a wait or sync orders it, and emulated CUDA
graphs with graphs=True), so CI tests it (outputs equal the sequential reference; the ledger's bytes).
The parts and their start (engines, cache, thinker, graphs, resets) are runtime/device/stack.py's.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from unitio.names import PLACEMENTS
from unitio.units import UnitResult, check_audio_unit, check_frames_unit, check_text_unit

from ..engine import check_finite
from ..order import StreamOrder, UnitOutput
from ..spec import THINKER_STAGES
from ..trace import SpanLog
from .device import Device, torch_dtype
from .engines import load_device_engines
from .performer import SharedCachePerformer, TwoDevicePerformer
from .stack import DeviceStack, load_parts


class DeviceSession(StreamOrder, DeviceStack):
    """Streams one conversation through the engines of `directory` with device-resident state.

    device: the thinker's device ("cuda:0", or "cpu" for the CPU twin); performer_device: the
    performer's (two-gpu: default cuda:1); graphs: capture each phase as a CUDA graph (default: on a
    GPU when every engine is capturable; on a CPU off, and True emulates them on the twin); engines:
    (manifest, {stage: DeviceEngine}, initial_state) given directly instead of a directory (torch stage
    modules in process, e.g. bench/gpu_check.py);
    trust: a public key the directory must be signed with (checked by every process that loads it)."""

    def __init__(self, directory: str | Path | None = None, placement: str = "one-gpu", device: str = "cuda",
                 performer_device: str | None = None, seed: int = 0, expect_preset: str | None = None,
                 threads: int | None = None, graphs: bool | None = None, performer_timeout_s: float | None = None,
                 engines: tuple[dict, dict, dict] | None = None, nvtx: bool = False,
                 trust: str | Path | None = None) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"placement: expected one of {PLACEMENTS}, got {placement!r}")
        self.placement, self.seed, self._graphs = placement, seed, graphs
        self.log = SpanLog(nvtx=nvtx)
        dev = Device(device)
        stages = [*THINKER_STAGES, *(["flow_step"] if placement == "one-gpu" else [])]
        parts = engines if engines is not None else load_parts(directory, dev, stages, threads, expect_preset, trust, graphs)
        loaded, initial = self._assemble(dev, parts)
        self._start(self._performer(placement, directory, loaded, initial, performer_device, threads,
                                    performer_timeout_s, trust), graphs)
        self.unit_index, self.received, self.decoded = 0, -1, 0

    def _performer(self, placement, directory, loaded, initial, performer_device, threads, timeout_s, trust):
        s = self.spec
        if placement == "one-gpu":
            return SharedCachePerformer(loaded["flow_step"], s, self.device, self.cache, self.ledger, self.seed)
        if directory is None:
            raise ValueError(f"placement {placement}: the performer loads its own engines from an engine directory; "
                             f"engines given in process run in one-gpu only")
        other = Device(performer_device or ("cuda:1" if self.device.cuda else "cpu"))
        if placement == "two-gpu":
            _, flow = load_device_engines(directory, other, ["flow_step"], threads, self.manifest, graphs=self._graphs)
            return TwoDevicePerformer(flow["flow_step"], s, self.device, other, self.stream, self.ledger, self.seed,
                                      initial.get("kv_cache"), torch_dtype(s.delta_dtype))
        from .process import ProcessDevicePerformer

        return ProcessDevicePerformer(directory, s, self.seed, self.log, self.ledger, self.device, self.stream,
                                      threads=threads, timeout_s=timeout_s, trust=trust, graphs=self._graphs)

    def step(self, audio: np.ndarray, frames: np.ndarray, text_in: np.ndarray | None = None) -> UnitResult:
        """One unit of user input -> the model's text for unit k and the audio/frames of unit k - 1 (None
        at k = 0, or when `decode_ready` gave them). Bad input raises InputError, state untouched."""
        s, k, d, log = self.spec, self.unit_index, self.device, self.log
        audio = check_audio_unit(audio, s)
        frames = check_frames_unit(frames, s)
        text = check_text_unit(text_in, s.text_in_tokens, s.vocab_size, s.text_pad_id)
        started, first_span = time.perf_counter(), log.count
        with d.use(self.stream):
            with log("encode", k):
                self.thinker.encode(audio[None], frames[None], text[None], [k])
            self._receive(k - 1)
            with log("think", k):
                self.thinker.think()
                self.thinker.tokens_out()
                d.record(self.delta_ready, self.stream)
        self.thinker.commit()
        with log("transfer", k):
            self.performer.submit(k, self.thinker.think_out["k_delta"], self.thinker.think_out["v_delta"],
                                  self.delta_ready)
        self.unit_index = k + 1
        media = self._decode_through(k - 1)
        with log("wait", k):
            d.sync(self.delta_ready)  # the tokens' copy was queued before it
        tokens = self.thinker.host_out["tokens"].numpy()[0].copy()  # row 0: this session's
        self.ledger.unit_done()
        timings = self.log.stage_ms(first_span)
        timings["total"] = 1000.0 * (time.perf_counter() - started)
        return UnitResult(k, tokens, media.audio if media else None, media.frames if media else None, timings)

    def flush(self) -> UnitOutput | None:
        out = super().flush()
        self.ledger.unit_done()
        return out

    def _receive(self, k: int) -> None:
        """y_k into the thinker's buffers, on its stream (the stream waits for the performer; the host does not)."""
        if k < 0 or self.received >= k:
            return
        with self.log("wait", k):
            self._take_y(k)
        self.received = k

    def _decode_through(self, k: int) -> UnitOutput | None:
        if k < self.decoded:
            return None
        d = self.device
        with d.use(self.stream):
            self._receive(k)
            with self.log("decode", k):
                self.thinker.decode()
                d.record(self.out_ready, self.stream)
                d.sync(self.out_ready)
        self.decoded = k + 1
        host = self.thinker.host_out
        wave = host["wave"].numpy()[0].copy()
        check_finite("audio_dec", k, {"wave": wave})  # what reaches the host; the device is not polled
        return UnitOutput(k, wave, host["frames"].numpy()[0].copy())
