"""Engines behind one small interface: `load_engines(dir)` -> {stage: Engine}; `engine.run(feeds)`.

An Engine has `inputs` / `outputs` (TensorSpec lists from the manifest) and `run({name: array}) ->
{name: array}`; feeds are checked against the spec first (names, shapes, dtypes), so a wrong input
fails with a message naming expected and received, not inside the backend.
This is the host path (numpy in and out, CPU engines): "ort" (onnxruntime) and "aoti" (CPU
AOTInductor packages through torch: runtime/aoti.py, outside this torch-free package), each imported
only when such an engine is loaded. Engines for a GPU (trt, aoti --device cuda) run on the device path
(runtime/device/engines.py), bound once to device-resident buffers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..engine import Engine, EngineInputError, installed_versions  # noqa: F401  (the interface, re-exported)
from ..manifest import ManifestError, read_manifest, stage_io


class OrtEngine(Engine):
    backend = "ort"

    def __init__(self, stage: str, path: Path, inputs, outputs, threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__(stage, inputs, outputs)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=ort.get_available_providers())
        except Exception as e:  # onnxruntime's own error types for a file that is not a model it can load
            raise ManifestError(f"{path.parent}: stage {stage}: {path.name} is not an ONNX model ONNX Runtime can "
                                f"load: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
        check_io(stage, path, "inputs", inputs, self.session.get_inputs())
        check_io(stage, path, "outputs", outputs, self.session.get_outputs())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check(feeds)
        outs = self.session.run([t.name for t in self.outputs], feeds)
        return dict(zip((t.name for t in self.outputs), outs))


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
              "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(bool)": "bool", "tensor(float8e4m3fn)": "float8_e4m3fn"}


def check_io(stage: str, path: Path, side: str, specs, args) -> None:
    """The engine file's own inputs or outputs (onnxruntime NodeArgs: name, type, shape) are the ones the
    manifest declares (names in order, dtypes, static dimensions); ManifestError naming the directory,
    the stage and both lists otherwise (a manifest whose stage was swapped or edited)."""
    declared = [(t.name, t.dtype, tuple(t.shape)) for t in specs]
    found = [(a.name, _ORT_TYPES.get(a.type, a.type), tuple(a.shape)) for a in args]
    same = len(declared) == len(found) and all(
        dn == fn and dt == ft and len(ds) == len(fs) and all(not isinstance(f, int) or d == f for d, f in zip(ds, fs))
        for (dn, dt, ds), (fn, ft, fs) in zip(declared, found))
    if not same:
        show = lambda io: ", ".join(f"{n} {t} {list(sh)}" for n, t, sh in io[:6]) + (" ..." if len(io) > 6 else "")
        raise ManifestError(f"{path.parent}: stage {stage}: the manifest declares {side} [{show(declared)}] but its "
                            f"engine file {path.name} has [{show(found)}] (a forged or mismatched manifest)")


def _engine_type(backend: str):
    """The host path's Engine class for `backend` (None: not one of the host path's)."""
    if backend == "aoti":
        from ..aoti import AotiEngine

        return AotiEngine
    return {"ort": OrtEngine}.get(backend)


HOST_BACKENDS = ("aoti", "ort")  # GPU engines: runtime/device/engines.py


def load_engines(directory: str | Path, expect_preset: str | None = None, threads: int | None = None,
                 stages: list[str] | None = None, trust: str | Path | None = None) -> tuple[dict, dict[str, Engine]]:
    """(manifest, {stage: Engine}) of an engine directory (all stages, or those named), after checking
    its manifest (and its signature against the public key `trust`, where given). `threads`: CPU threads
    per ONNX Runtime engine (default: onnxruntime's choice)."""
    directory = Path(directory)
    manifest = read_manifest(directory, expect_preset, installed_versions(), trust=trust)
    if manifest["target"]["device"] == "cuda":
        raise ManifestError(f"{directory} holds {manifest['backend']} engines for a CUDA GPU: they run on the device "
                            f"path, with the cache and codec states resident there (runtime/device/session.py, "
                            f"`--placement one-gpu`), not on this host path")
    kind = _engine_type(manifest["backend"])
    if kind is None:
        raise ManifestError(f"{directory}: backend {manifest['backend']!r} cannot be loaded by this runtime; "
                            f"it loads {list(HOST_BACKENDS)} on the host path")
    engines = {}
    for stage, info in manifest["stages"].items():
        if stages is not None and stage not in stages:
            continue
        inputs, outputs = stage_io(manifest, stage)
        extra = {"threads": threads} if kind is OrtEngine else {}
        engines[stage] = kind(stage, directory / info["file"], inputs, outputs, **extra)
    return manifest, engines
