"""Where a worker's tensors live: one torch device, its streams and events, host buffers for it.

On "cuda:N": streams (the performer's at a higher priority), events for the dependencies between them,
page-locked host buffers so host<->device copies are asynchronous DMA, CUDA graphs. On "cpu": the same
calls with no streams, events or graphs (everything runs in order), so the device path's logic runs
and is tested on a CPU. The runtime imports torch only here and in the device-path modules.
"""
from __future__ import annotations

from contextlib import ExitStack, nullcontext
from typing import Callable

import numpy as np
import torch


def torch_dtype(name: str) -> torch.dtype:
    """A manifest dtype name (numpy's: "float32", "bfloat16", "float8_e4m3fn", ...) -> torch dtype."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype {name!r} of the manifest has no torch equivalent")
    return dtype


class Device:
    """One torch device with what the runtime needs of it."""

    def __init__(self, name: str = "cpu") -> None:
        self.torch = torch.device(name)
        self.cuda = self.torch.type == "cuda"
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
        if not self.cuda:
            return None
        low, high = torch.cuda.Stream.priority_range()  # (0, -N): lower numbers run first
        return torch.cuda.Stream(self.torch, priority=high if high_priority else low)

    def use(self, stream):
        """Context: this device and `stream` current (nothing on a CPU): TensorRT and graph capture run on
        the current device, so a second GPU's work must have it current, not only its stream."""
        if stream is None:
            return nullcontext()
        stack = ExitStack()
        stack.enter_context(torch.cuda.device(self.torch))
        stack.enter_context(torch.cuda.stream(stream))
        return stack

    def event(self):
        return torch.cuda.Event() if self.cuda else None

    @staticmethod
    def record(event, stream) -> None:
        if event is not None:
            event.record(stream)

    @staticmethod
    def wait(stream, event) -> None:
        """`stream` waits (on the device, the host goes on) for `event`."""
        if stream is not None and event is not None:
            stream.wait_event(event)

    @staticmethod
    def sync(event) -> None:
        """The host waits for `event` (for a value it needs: tokens, media)."""
        if event is not None:
            event.synchronize()

    @staticmethod
    def done(event) -> bool:
        return event is None or event.query()

    def capture(self, call: Callable[[], None], stream, warmup: int = 2) -> Callable[[], None]:
        """`call` captured once as a CUDA graph on `stream` (after `warmup` plain runs: allocations and
        autotuning happen before the capture), returned as its replay; on a CPU, `call` itself."""
        if not self.cuda:
            return call
        with torch.cuda.device(self.torch):
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


def host_view(t: torch.Tensor) -> np.ndarray:
    """The numpy view of a host tensor (written by the host before an h2d copy, read after a d2h)."""
    return t.numpy()
