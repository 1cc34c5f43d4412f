"""The performer on a device, in the thinker's process: one interface (runtime/order.py
`DevicePerformer`), two placements (the third, two-process, is runtime/device/process.py).

    submit(k, k_delta, v_delta, delta_ready)   enqueue: (move the delta), N flow steps -> y_k
    result(k) -> (y_audio, y_video, event)     y_k on the thinker's device, valid once `event` is reached
    ready(k) -> bool                           whether y_k is there (without waiting)
    capturable                                 whether its flow_step engine can be in a CUDA graph

- `SharedCachePerformer` (placement one-gpu, and the device path on a CPU): the thinker's own cache
  (the thinker appended the delta: nothing moves), its own stream at a higher priority, so the solve of
  y_k overlaps the thinker's decode of y_(k-1) and encode of u_(k+1). No race: thinker_step(k+1) waits
  for y_k, and the solve writes nothing the thinker reads before that.
- `TwoDevicePerformer` (placement two-gpu): its own cache on its own GPU; the delta crosses by a peer
  copy where the GPUs can reach each other, else through double-buffered page-locked host slots; y_k
  comes back the same way.
"""
from __future__ import annotations

from contextlib import ExitStack
from types import SimpleNamespace

import numpy as np
import torch

from ..order import PerformerError
from .device import Device
from .engines import DeviceEngine
from .ledger import TransferLedger
from .solver import DeviceSolver
from .state import DeviceKVCache


class SharedCachePerformer:
    placement = "one-gpu"

    def __init__(self, engine: DeviceEngine, spec: SimpleNamespace, device: Device, cache: DeviceKVCache,
                 ledger: TransferLedger, seed: int) -> None:
        self.device, self.stream = device, device.stream(high_priority=True)
        self.solver = DeviceSolver(engine, spec, device, cache, ledger, seed)
        self.capturable = self.solver.capturable
        self.done = device.event()
        self._unit = -1

    def capture(self) -> None:
        self.solver.capture(self.stream)

    def reset(self) -> None:
        pass  # the thinker's cache, reset by the session

    def submit(self, unit_index, k_delta, v_delta, delta_ready, seeds: list[int] | None = None) -> None:
        """Solve the unit(s) the thinker just appended: `unit_index` an int, or one per row of a batch
        (with `seeds`, one per row); the deltas are already in the shared cache."""
        d = self.device
        with d.use(self.stream):
            d.wait(self.stream, delta_ready)
            self.solver.load(unit_index, seeds)
            self.solver.run()
            d.record(self.done, self.stream)
        self._unit = unit_index

    @property
    def last_unit(self):
        return self._unit

    def ready(self, unit_index: int) -> bool:
        return self._unit >= unit_index and self.device.done(self.done)

    def result(self, unit_index: int):
        if self._unit != unit_index:
            raise PerformerError(f"result of unit {unit_index} asked, the last submitted is {self._unit}")
        return self.solver.y_audio, self.solver.y_video, self.done

    def close(self) -> None:
        pass


class TwoDevicePerformer:
    placement = "two-gpu"

    def __init__(self, engine: DeviceEngine, spec: SimpleNamespace, thinker: Device, device: Device,
                 thinker_stream, ledger: TransferLedger, seed: int, scales: dict[str, np.ndarray] | None,
                 delta_dtype: torch.dtype, peer: bool | None = None) -> None:
        self.spec, self.thinker, self.device, self.ledger = spec, thinker, device, ledger
        self.t_stream, self.stream = thinker_stream, device.stream(high_priority=True)
        self.cache = DeviceKVCache(spec, device, scales)
        self.solver = DeviceSolver(engine, spec, device, self.cache, ledger, seed)
        self.capturable = self.solver.capturable
        if peer is None:
            peer = thinker.cuda and device.cuda and torch.cuda.can_device_access_peer(device.torch, thinker.torch)
        self.peer = peer
        self.delta = [device.empty(spec.delta_shape, delta_dtype) for _ in range(2)]  # k, v on this device
        self.y_out = [thinker.empty(spec.audio_latent_shape, torch.float32),
                      thinker.empty(spec.video_latent_shape, torch.float32)]  # y_k on the thinker's device
        if not peer:  # double-buffered page-locked host slots for the delta and y_k
            self.delta_host = [[device.host(spec.delta_shape, delta_dtype) for _ in range(2)] for _ in range(2)]
            self.y_host = [[device.host(spec.audio_latent_shape, torch.float32),
                            device.host(spec.video_latent_shape, torch.float32)] for _ in range(2)]
            self.staged = [thinker.event() for _ in range(2)]
            self.y_staged = [device.event() for _ in range(2)]
        self.done = [thinker.event() for _ in range(2)]
        self._unit = -1

    def capture(self) -> None:
        self.solver.capture(self.stream)

    def reset(self) -> None:
        """Its own cache empty again (after the capture's warm-up wrote into it)."""
        self.cache.reset()
        self.device.synchronize()

    def _both(self) -> ExitStack:
        """Both workers' streams current: a cross-device copy runs after the source stream's work and the
        destination stream waits for it (torch's rule for copies between GPUs)."""
        stack = ExitStack()
        stack.enter_context(self.thinker.use(self.t_stream))
        stack.enter_context(self.device.use(self.stream))
        return stack

    def submit(self, unit_index: int, k_delta, v_delta, delta_ready) -> None:
        d, slot = self.device, unit_index % 2
        if self.peer:
            with self._both():
                self.ledger.d2d(self.delta[0], k_delta)
                self.ledger.d2d(self.delta[1], v_delta)
        else:
            d.sync(self.y_staged[slot])  # this slot's last use (unit k-2) is over
            with self.thinker.use(self.t_stream):
                self.ledger.d2h(self.delta_host[slot][0], k_delta)
                self.ledger.d2h(self.delta_host[slot][1], v_delta)
                self.thinker.record(self.staged[slot], self.t_stream)
            with d.use(self.stream):
                d.wait(self.stream, self.staged[slot])
                self.ledger.h2d(self.delta[0], self.delta_host[slot][0])
                self.ledger.h2d(self.delta[1], self.delta_host[slot][1])
        with d.use(self.stream):
            self.solver.load(unit_index)
            self.cache.append(self.solver.unit, self.delta[0], self.delta[1])
            self.ledger.count("d2d", self.cache.append_nbytes)
            self.solver.run()
        if self.peer:
            # on the performer's stream alone: with the thinker's stream current too, torch's cross-device copy
            # would put a two-way barrier between them and the thinker's decode and next encode would wait for
            # this solve. The thinker's last read of y_out (unit k-1) came before the delta copy above, which
            # ordered this stream after it; the thinker waits for `done` before it reads y_k
            with d.use(self.stream):
                self.ledger.d2d(self.y_out[0], self.solver.y_audio)
                self.ledger.d2d(self.y_out[1], self.solver.y_video)
                d.record(self.done[slot], self.stream)
        else:
            with d.use(self.stream):
                self.ledger.d2h(self.y_host[slot][0], self.solver.y_audio)
                self.ledger.d2h(self.y_host[slot][1], self.solver.y_video)
                d.record(self.y_staged[slot], self.stream)
        self._unit = unit_index

    def ready(self, unit_index: int) -> bool:
        slot = unit_index % 2
        event = self.done[slot] if self.peer else self.y_staged[slot]
        return self._unit >= unit_index and self.device.done(event)

    def result(self, unit_index: int):
        if self._unit != unit_index:
            raise PerformerError(f"result of unit {unit_index} asked, the last submitted is {self._unit}")
        slot = unit_index % 2
        if not self.peer:
            with self.thinker.use(self.t_stream):
                self.thinker.wait(self.t_stream, self.y_staged[slot])
                if not self.thinker.cuda:
                    self.device.sync(self.y_staged[slot])
                self.ledger.h2d(self.y_out[0], self.y_host[slot][0])
                self.ledger.h2d(self.y_out[1], self.y_host[slot][1])
                self.thinker.record(self.done[slot], self.t_stream)
        return self.y_out[0], self.y_out[1], self.done[slot]

    def close(self) -> None:
        pass
