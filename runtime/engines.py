"""Engines behind one small interface: `load_engines(dir)` -> {stage: Engine}; `engine.run(feeds)`.

An Engine has `inputs` / `outputs` (TensorSpec lists from the manifest) and `run({name: array}) ->
{name: array}`; feeds are checked against the spec first (names, shapes, dtypes), so a wrong input
fails with a message naming expected and received, not inside the backend.
This is the host path (numpy in and out, CPU engines): "ort" (onnxruntime) and "aoti" (CPU
AOTInductor packages: torch, no model_src), each imported only when such an engine is loaded; this
module imports neither torch nor model_src itself. Engines for a GPU (trt, aoti --device cuda) run on
the device path (runtime/device_engines.py), bound once to device-resident buffers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .engine import Engine, EngineInputError  # noqa: F401  (the interface, re-exported)
from .manifest import ManifestError, read_manifest, stage_io


class OrtEngine(Engine):
    backend = "ort"

    def __init__(self, stage: str, path: Path, inputs, outputs, threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__(stage, inputs, outputs)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=ort.get_available_providers())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check(feeds)
        outs = self.session.run([t.name for t in self.outputs], feeds)
        return dict(zip((t.name for t in self.outputs), outs))


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


ENGINE_TYPES = {"ort": OrtEngine, "aoti": AotiEngine}  # the host path; GPU engines: device_engines.py


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


def load_engines(directory: str | Path, expect_preset: str | None = None, threads: int | None = None,
                 stages: list[str] | None = None, trust: str | Path | None = None) -> tuple[dict, dict[str, Engine]]:
    """(manifest, {stage: Engine}) of an engine directory (all stages, or those named), after checking
    its manifest (and its signature against the public key `trust`, where given). `threads`: CPU threads
    per ONNX Runtime engine (default: onnxruntime's choice)."""
    directory = Path(directory)
    manifest = read_manifest(directory, expect_preset, installed_versions(), trust=trust)
    if manifest["target"]["device"] == "cuda":
        raise ManifestError(f"{directory} holds {manifest['backend']} engines for a CUDA GPU: they run on the device "
                            f"path, with the cache and codec states resident there (runtime/device_session.py, "
                            f"`--placement one-gpu`), not on this host path")
    kind = ENGINE_TYPES.get(manifest["backend"])
    if kind is None:
        raise ManifestError(f"{directory}: backend {manifest['backend']!r} cannot be loaded by this runtime; "
                            f"it loads {sorted(ENGINE_TYPES)} on the host path")
    engines = {}
    for stage, info in manifest["stages"].items():
        if stages is not None and stage not in stages:
            continue
        inputs, outputs = stage_io(manifest, stage)
        extra = {"threads": threads} if kind is OrtEngine else {}
        engines[stage] = kind(stage, directory / info["file"], inputs, outputs, **extra)
    return manifest, engines


def load_initial_state(directory: str | Path, manifest: dict) -> dict[str, dict[str, np.ndarray]]:
    """{stage: {input name: array}}: the codec stages' state inputs for a fresh stream."""
    from safetensors.numpy import load_file

    flat = load_file(str(Path(directory) / manifest["initial_state"]))
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, array in flat.items():
        stage, name = key.split(".", 1)
        out.setdefault(stage, {})[name] = array
    return out
