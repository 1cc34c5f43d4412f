"""The host path's engine for CPU AOTInductor packages: numpy in and out, run by torch (imported when
such an engine is loaded). Kept out of runtime/host/, which holds no torch at all."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .engine import Engine


class AotiEngine(Engine):
    """An AOTInductor package; needs torch (imported here, when such an engine is loaded)."""

    backend = "aoti"

    def __init__(self, stage: str, path: Path, inputs, outputs) -> None:
        import torch

        super().__init__(stage, inputs, outputs)
        self._torch = torch
        self.runner = torch._inductor.aoti_load_package(str(path))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check(feeds)
        args = [self._torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.inputs]
        with self._torch.no_grad():
            outs = self.runner(*args)
        return {t.name: o.numpy() for t, o in zip(self.outputs, outs)}
