"""CUDA graphs for a fixed-shape stage: capture the AOTInductor package's call once, replay it per unit.

Every stage has static shapes (the preset fixes them), so one capture per session holds: the inputs
(KV cache, codec state, latents) live in static device buffers that `run` refills from the host
(through a page-locked staging buffer, asynchronously), the graph replays on the stage's stream, and
the outputs are copied back into pinned host buffers. Needs torch with CUDA; imported only then.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .engine import Engine


class CudaGraphAotiEngine(Engine):
    """An AOTInductor package compiled for CUDA, run as one captured CUDA graph per call."""

    backend = "aoti"

    def __init__(self, stage: str, path: Path, inputs, outputs, device: str = "cuda", warmup: int = 3) -> None:
        import torch

        super().__init__(stage, inputs, outputs)
        if not torch.cuda.is_available():
            raise RuntimeError(f"{stage}: CUDA graphs need a CUDA device; this process sees none")
        self._torch = torch
        self.runner = torch._inductor.aoti_load_package(str(path))
        self.stream = torch.cuda.Stream(device)
        dt = lambda t: getattr(torch, t.dtype)  # noqa: E731
        self.static_in = [torch.zeros(t.shape, dtype=dt(t), device=device) for t in inputs]
        self.staging = [torch.zeros(t.shape, dtype=dt(t), pin_memory=True) for t in inputs]
        self.host_out = [torch.zeros(t.shape, dtype=dt(t), pin_memory=True) for t in outputs]
        with torch.no_grad(), torch.cuda.stream(self.stream):
            for _ in range(warmup):  # allocations and autotuning happen before the capture
                self.runner(*self.static_in)
        self.stream.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph, stream=self.stream):
            self.static_out = self.runner(*self.static_in)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check(feeds)
        torch = self._torch
        with torch.cuda.stream(self.stream):
            for t, stage_buf, dev in zip(self.inputs, self.staging, self.static_in):
                stage_buf.numpy()[...] = feeds[t.name]
                dev.copy_(stage_buf, non_blocking=True)
            self.graph.replay()
            for host, dev in zip(self.host_out, self.static_out):
                host.copy_(dev, non_blocking=True)
        self.stream.synchronize()
        return {t.name: host.numpy().copy() for t, host in zip(self.outputs, self.host_out)}
