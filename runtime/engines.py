"""Engines behind one small interface: `load_engines(dir)` -> {stage: Engine}; `engine.run(feeds)`.

An Engine has `inputs` / `outputs` (TensorSpec lists from the manifest) and `run({name: array}) ->
{name: array}`; feeds are checked against the spec first (names, shapes, dtypes), so a wrong input
fails with a message naming expected and received, not inside the backend.
Backends: "ort" (onnxruntime), "aoti" (AOTInductor packages: torch, no model_src) and "trt"
(TensorRT, with torch for CUDA buffers), each imported only when such an engine is loaded; this module
imports neither torch nor model_src itself.
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


class TrtEngine(Engine):
    """A serialized TensorRT engine, run on one CUDA stream with torch tensors as device buffers."""

    backend = "trt"

    def __init__(self, stage: str, path: Path, inputs, outputs) -> None:
        import tensorrt as trt
        import torch

        from kernels.tensorrt_plugin import register

        super().__init__(stage, inputs, outputs)
        register()  # the attention plugin, if the graph holds it
        self._torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ManifestError(f"{path}: TensorRT could not deserialize this engine (other TensorRT or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.buffers = {t.name: torch.empty(t.shape, dtype=getattr(torch, t.dtype), device="cuda")
                        for t in inputs + outputs}
        for name, buf in self.buffers.items():
            self.context.set_tensor_address(name, buf.data_ptr())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check(feeds)
        torch = self._torch
        with torch.cuda.stream(self.stream):
            for t in self.inputs:
                self.buffers[t.name].copy_(torch.from_numpy(np.ascontiguousarray(feeds[t.name])), non_blocking=True)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.stage}: TensorRT execution failed")
            outs = {t.name: self.buffers[t.name].cpu() for t in self.outputs}
        self.stream.synchronize()
        return {k: v.numpy() for k, v in outs.items()}


ENGINE_TYPES = {"ort": OrtEngine, "aoti": AotiEngine, "trt": TrtEngine}


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
                 stages: list[str] | None = None) -> tuple[dict, dict[str, Engine]]:
    """(manifest, {stage: Engine}) of an engine directory (all stages, or those named), after checking
    its manifest. `threads`: CPU threads per ONNX Runtime engine (default: onnxruntime's choice)."""
    directory = Path(directory)
    manifest = read_manifest(directory, expect_preset, installed_versions())
    kind = ENGINE_TYPES.get(manifest["backend"])
    if kind is None:
        raise ManifestError(f"{directory}: backend {manifest['backend']!r} cannot be loaded by this runtime; "
                            f"it loads {sorted(ENGINE_TYPES)}")
    if kind is AotiEngine and manifest["target"]["device"] == "cuda":
        from .cuda_graphs import CudaGraphAotiEngine

        kind = CudaGraphAotiEngine  # fixed shapes: each stage captured once as a CUDA graph, replayed per unit
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
