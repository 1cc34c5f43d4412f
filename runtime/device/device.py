"""Where a worker's tensors live: one torch device, its streams and events, host buffers for it.

On "cuda:N": streams (the performer's at a higher priority), events for the dependencies between them,
page-locked host buffers so host<->device copies are asynchronous DMA, CUDA graphs. On "cpu": the same
calls on the CPU twin (runtime/device/twin.py): streams defer their work until an event wait or a sync
orders it, and `capture` records a graph whose replay re-runs only the recorded tensor ops and engine
calls, so the device path's ordering and capture bugs show on a CPU (`Device("cpu", twin=False)`: no
streams, events or graphs, everything in order). The runtime imports torch only here and in the
device-path modules.
"""
from __future__ import annotations

from contextlib import ExitStack, nullcontext
from typing import Callable

import numpy as np
import torch

from . import twin as device_twin


def torch_dtype(name: str) -> torch.dtype:
    """A manifest dtype name (numpy's: "float32", "bfloat16", "float8_e4m3fn", ...) -> torch dtype."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype {name!r} of the manifest has no torch equivalent")
    return dtype


class Device:
    """One torch device with what the runtime needs of it."""

    def __init__(self, name: str = "cpu", twin: bool = True) -> None:
        self.torch = torch.device(name)
        self.cuda = self.torch.type == "cuda"
        self.twin = twin and not self.cuda  # streams, events and graphs emulated on the CPU
        self._streams: list = []
        if self.cuda:
            if not torch.cuda.is_available():
                raise RuntimeError(f"device {name}: torch sees no CUDA device on this machine")
            if self.torch.index is None:
                self.torch = torch.device("cuda", torch.cuda.current_device())
            if self.torch.index >= torch.cuda.device_count():
                raise RuntimeError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")

    def __str__(self) -> str:
        return str(self.torch)

    def empty(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """A device tensor, allocated once (filled with zeros: every page touched now, not in the unit loop)."""
        return torch.zeros(tuple(shape), dtype=dtype, device=self.torch)

    def host(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """A host staging tensor for this device: page-locked on a GPU (asynchronous DMA), plain on a CPU."""
        return torch.zeros(tuple(shape), dtype=dtype, pin_memory=self.cuda)

    def stream(self, high_priority: bool = False):
        """A new stream (the performer's at a higher priority): a CUDA stream, a CpuStream on the twin."""
        if not self.cuda:
            if not self.twin:
                return None
            stream = device_twin.CpuStream(f"{self}#{len(self._streams)}{' high' if high_priority else ''}")
            self._streams.append(stream)
            return stream
        low, high = torch.cuda.Stream.priority_range()  # (0, -N): lower numbers run first
        return torch.cuda.Stream(self.torch, priority=high if high_priority else low)

    def use(self, stream):
        """Context: this device and `stream` current (on the twin: the CpuStream its work is deferred to):
        TensorRT and graph capture run on the current device, so a second GPU's work must have it current,
        not only its stream."""
        if stream is None:
            return nullcontext()
        if isinstance(stream, device_twin.CpuStream):
            return device_twin.use(stream)
        stack = ExitStack()
        stack.enter_context(torch.cuda.device(self.torch))
        stack.enter_context(torch.cuda.stream(stream))
        return stack

    def current_stream(self):
        """The stream work is issued on now (None: the CPU without the twin, or no twin stream current)."""
        if self.cuda:
            return torch.cuda.current_stream(self.torch)
        return device_twin.current_stream() if self.twin else None

    def event(self):
        if self.cuda:
            return torch.cuda.Event()
        return device_twin.CpuEvent() if self.twin else None

    @staticmethod
    def record(event, stream) -> None:
        if event is not None:
            event.record(stream)

    @staticmethod
    def wait(stream, event) -> None:
        """`stream` waits (on the device, the host goes on) for `event` (the twin runs the event's work
        now, so `stream`'s later work comes after it)."""
        if isinstance(event, device_twin.CpuEvent):
            event.synchronize()
        elif stream is not None and event is not None:
            stream.wait_event(event)

    @staticmethod
    def sync(event) -> None:
        """The host waits for `event` (for a value it needs: tokens, media)."""
        if event is not None:
            if device_twin.capturing():
                raise device_twin.CaptureError("a host sync during CUDA graph capture (a GPU refuses it)")
            event.synchronize()

    @staticmethod
    def done(event) -> bool:
        return event is None or event.query()

    def launch(self, call: Callable[[], None]) -> Callable[[], None]:
        """`call` as one unit of device work (an engine call): on the twin, a node of the graph being
        captured, or deferred to the current stream; on a GPU (or without the twin) `call` itself."""
        return device_twin.launch(call) if self.twin else call

    def capture(self, call: Callable[[], None], stream, warmup: int = 2) -> Callable[[], None]:
        """`call` captured once as a CUDA graph on `stream` (after `warmup` plain runs: allocations and
        autotuning happen before the capture), returned as its replay; on the CPU twin an emulated graph
        (runtime/device/twin.py); on a CPU without it, `call` itself."""
        if not self.cuda:
            return device_twin.capture(call, stream, min(warmup, 1)) if self.twin else call
        with torch.cuda.device(self.torch):
            stream.wait_stream(torch.cuda.current_stream(self.torch))  # set-up on the default stream (zero fills) first
            with torch.cuda.stream(stream):
                for _ in range(warmup):
                    call()
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                call()
            stream.synchronize()
        return graph.replay

    def synchronize(self) -> None:
        """The host waits for all of this device's work (setup only: after resets on its default stream)."""
        if self.cuda:
            torch.cuda.synchronize(self.torch)
        for stream in self._streams:
            stream.synchronize()


def host_view(t: torch.Tensor) -> np.ndarray:
    """The numpy view of a host tensor (written by the host before an h2d copy, read after a d2h)."""
    return t.numpy()
