"""A second opinion for `streamer verify`: polygraphy's Comparator on each stage, engine against torch.

Polygraphy runs the ONNX graph with its own ONNX Runtime runner (and, where TensorRT is installed,
the TensorRT engine with its TensorRT runner) beside a runner wrapping the torch stage, on the stage's
example inputs, and compares outputs with its `CompareFunc.simple` (|a - b| <= atol + rtol * |b|).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, CompareFunc
from polygraphy.logger import G_LOGGER

from model_src.stages import StageSpec

G_LOGGER.module_severity = G_LOGGER.ERROR  # verify prints its own table; polygraphy's run log is noise there


class TorchStageRunner(BaseRunner):
    """Polygraphy runner for one torch stage (the reference)."""

    def __init__(self, spec: StageSpec) -> None:
        super().__init__(name=f"torch-{spec.name}")
        self.spec = spec

    def activate_impl(self) -> None:
        pass

    def deactivate_impl(self) -> None:
        pass

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        for name, x in self.spec.example_inputs.items():
            meta.add(name, x.numpy().dtype, tuple(x.shape))
        return meta

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        with torch.no_grad():
            outs = self.spec.module(*(torch.from_numpy(feed_dict[n]) for n in self.spec.example_inputs))
        self.inference_time = time.perf_counter() - start  # polygraphy reads it
        return OrderedDict((n, o.contiguous().numpy()) for n, o in zip(self.spec.output_names, outs))


def engine_runner(backend: str, path: Path):
    """Polygraphy's own runner for an ONNX graph (ort) or a serialized TensorRT engine (trt)."""
    if backend == "ort":
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

        return OnnxrtRunner(SessionFromOnnx(str(path)))
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(path.read_bytes()))


def polygraphy_agrees(spec: StageSpec, backend: str, path: Path, rtol: float = 1e-3, atol: float = 1e-4) -> bool:
    """Run torch and the engine through polygraphy's Comparator on the example inputs; True if they agree."""
    feeds = {k: v.numpy() for k, v in spec.example_inputs.items()}
    results = Comparator.run([TorchStageRunner(spec), engine_runner(backend, path)], data_loader=[feeds])
    return bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(rtol=rtol, atol=atol)))
