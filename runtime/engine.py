"""The one small interface every engine backend implements (runtime/host/engines.py; the device path's twin is runtime/device/engines.py).

An Engine has `inputs` / `outputs` (TensorSpec lists from the manifest) and `run({name: array}) ->
{name: array}`; `check` compares feeds with the spec first (names, shapes, dtypes), so a wrong input
fails with a message naming expected and received, not inside the backend. numpy only.
"""
from __future__ import annotations

import numpy as np

from .manifest import TensorSpec


class StageOutputError(RuntimeError):
    """A stage produced NaN or Inf: the session stops, naming the stage and the unit."""


def check_finite(stage: str, unit: int, outputs: dict) -> None:
    """Raise StageOutputError if a float output of `stage` holds NaN or Inf (numpy arrays)."""
    for name, y in outputs.items():
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise StageOutputError(f"{stage} produced NaN/Inf in {name!r} at unit {unit}: the session stops "
                                   f"(check the weights and the engine's precision; `streamer verify` compares it)")


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
