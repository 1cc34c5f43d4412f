"""The one small interface every engine backend implements (runtime/engines.py; the device path's twin is runtime/device_engines.py).

An Engine has `inputs` / `outputs` (TensorSpec lists from the manifest) and `run({name: array}) ->
{name: array}`; `check` compares feeds with the spec first (names, shapes, dtypes), so a wrong input
fails with a message naming expected and received, not inside the backend. numpy only.
"""
from __future__ import annotations

import numpy as np

from .manifest import TensorSpec


class EngineInputError(ValueError):
    """Feeds that do not match an engine's input spec."""


class Engine:
    backend = "abstract"

    def __init__(self, stage: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
        self.stage, self.inputs, self.outputs = stage, inputs, outputs

    def check(self, feeds: dict[str, np.ndarray]) -> None:
        names = [t.name for t in self.inputs]
        if set(feeds) != set(names):
            raise EngineInputError(f"{self.stage}: expected inputs {names}, got {sorted(feeds)}")
        for t in self.inputs:
            x = feeds[t.name]
            if tuple(x.shape) != t.shape or x.dtype != np.dtype(t.dtype):
                raise EngineInputError(f"{self.stage}.{t.name}: expected {t.dtype} {list(t.shape)}, "
                                       f"got {x.dtype} {list(x.shape)}")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError
