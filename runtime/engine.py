"""The one small interface every engine backend implements (runtime/host/engines.py, runtime/aoti.py;
the device path's twin is runtime/device/engines.py), and what every loader reads besides the engines.

An Engine has `inputs` / `outputs` (TensorSpec lists from the manifest) and `run({name: array}) ->
{name: array}`; `check` compares feeds with the spec first (names, shapes, dtypes), so a wrong input
fails with a message naming expected and received, not inside the backend. `installed_versions`: the
backend libraries here (checked against the manifest's); `load_initial_state`: the codec stages' fresh
state from the directory. numpy only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .manifest import ManifestError, TensorSpec, stage_io


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


def installed_versions() -> dict[str, str | None]:
    """Versions of the backend libraries on this machine (None where one is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for lib in ("onnxruntime", "torch", "tensorrt", "onnx"):
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = None
    return out


def load_initial_state(directory: str | Path, manifest: dict) -> dict[str, dict[str, np.ndarray]]:
    """{stage: {input name: array}}: the codec stages' state inputs for a fresh stream."""
    from safetensors.numpy import load_file

    rel, where = manifest["initial_state"], Path(directory)
    try:
        flat = load_file(str(where / rel))
    except Exception as e:  # safetensors' own error types for a file that is not safetensors
        raise ManifestError(f"{where}: initial_state {rel}: expected a safetensors file of the codec stages' "
                            f"initial state, got an error: {str(e)[:200] or type(e).__name__}") from None
    specs = {stage: {t.name: t for t in stage_io(manifest, stage)[0]} for stage in manifest["stages"]}
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, array in flat.items():
        stage, _, name = key.partition(".")
        spec = specs.get(stage, {}).get(name)
        if spec is None or tuple(array.shape) != tuple(spec.shape) or str(array.dtype) != spec.dtype:
            want = "no such stage input" if spec is None else f"{spec.dtype} {list(spec.shape)}"
            raise ManifestError(f"{where}: initial_state {rel}: {key[:80]!r} ({array.dtype} {list(array.shape)}) is "
                                f"not a state input of stage {stage[:40]!r} as the manifest declares it ({want})")
        out.setdefault(stage, {})[name] = array
    return out
