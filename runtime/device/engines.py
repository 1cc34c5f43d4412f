"""Engines bound to device tensors: the device path's side of the Engine interface.

`engine.bind(feeds, outs)` checks the tensors against the engine's I/O spec (names, shapes, dtypes,
device) once and returns a call with no arguments that runs the engine on the current stream, reading
`feeds` and writing `outs` in place. Bind once per set of buffers (a codec's two ping-pong sets are
two bindings); nothing is allocated or copied from the host per call.

Backends:
- `OrtDeviceEngine`: ONNX Runtime with an IOBinding onto the tensors' memory (the CPU provider here;
  CUDA with onnxruntime-gpu). Not capturable in a torch CUDA graph (ORT launches on its own stream).
- `TorchDeviceEngine`: any torch callable returning the outputs in order: an AOTInductor package's
  runner, or a torch stage module run in process (gpu_check, calibration). Its outputs are copied into
  `outs` inside the call, so a captured graph writes the bound buffers.
- `TrtDeviceEngine`: a TensorRT engine; `set_tensor_address` to the bound buffers, `execute_async_v3`
  on the current stream. Capturable where its plugins are (the AOT attention plugin is).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..engine import EngineInputError
from ..manifest import ManifestError, TensorSpec
from .device import Device, torch_dtype

Call = Callable[[], None]


class DeviceEngine:
    backend = "abstract"
    capturable = True  # whether a call may be captured in a torch CUDA graph

    def __init__(self, stage: str, inputs: list[TensorSpec], outputs: list[TensorSpec], device: Device) -> None:
        self.stage, self.inputs, self.outputs, self.device = stage, inputs, outputs, device

    def check(self, tensors: dict[str, torch.Tensor], specs: list[TensorSpec], what: str) -> None:
        names = [t.name for t in specs]
        if set(tensors) != set(names):
            raise EngineInputError(f"{self.stage}: expected {what} {names}, got {sorted(tensors)}")
        for t in specs:
            x = tensors[t.name]
            if tuple(x.shape) != t.shape or x.dtype != torch_dtype(t.dtype):
                raise EngineInputError(f"{self.stage}.{t.name}: expected {t.dtype} {list(t.shape)}, got "
                                       f"{str(x.dtype).removeprefix('torch.')} {list(x.shape)}")
            if x.device != self.device.torch:
                raise EngineInputError(f"{self.stage}.{t.name}: expected a tensor on {self.device}, got {x.device}")
            if not x.is_contiguous():
                raise EngineInputError(f"{self.stage}.{t.name}: bound tensors must be contiguous")

    def allocate_outputs(self) -> dict[str, torch.Tensor]:
        """One device tensor per output, shaped and typed as the manifest says."""
        return {t.name: self.device.empty(t.shape, torch_dtype(t.dtype)) for t in self.outputs}

    @property
    def can_capture(self) -> bool:
        """Whether this engine's calls can be in a graph on its device: on a GPU, `capturable`; on the CPU
        twin every engine (each call is one node of the emulated graph)."""
        return self.capturable or not self.device.cuda

    def bind(self, feeds: dict[str, torch.Tensor], outs: dict[str, torch.Tensor]) -> Call:
        """The engine bound to `feeds` and `outs` (checked here, once): a call with no arguments, issued as
        one unit of work on the current stream (`Device.launch`)."""
        self.check(feeds, self.inputs, "inputs")
        self.check(outs, self.outputs, "outputs")
        return self.device.launch(self._bind(feeds, outs))

    def _bind(self, feeds, outs) -> Call:
        raise NotImplementedError


class TorchDeviceEngine(DeviceEngine):
    """A torch callable (AOTInductor runner or stage module): fn(*inputs in order) -> outputs in order."""

    backend = "torch"

    def __init__(self, stage, inputs, outputs, device: Device, fn: Callable) -> None:
        super().__init__(stage, inputs, outputs, device)
        self.fn = fn

    def _bind(self, feeds, outs) -> Call:
        args = [feeds[t.name] for t in self.inputs]
        dests = [outs[t.name] for t in self.outputs]

        def call() -> None:
            with torch.inference_mode():
                results = self.fn(*args)
            for dest, y in zip(dests, results):
                dest.copy_(y)
        return call


class OrtDeviceEngine(DeviceEngine):
    """ONNX Runtime on bound memory (IOBinding): the engine reads and writes the tensors themselves."""

    backend = "ort"
    capturable = False

    def __init__(self, stage, path: Path, inputs, outputs, device: Device, threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__(stage, inputs, outputs, device)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if device.cuda:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ManifestError(f"{stage}: ONNX Runtime here has no CUDA provider (install onnxruntime-gpu) "
                                    f"for device {device}")
            providers = [("CUDAExecutionProvider", {"device_id": device.torch.index})]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self._where = ("cuda", device.torch.index) if device.cuda else ("cpu", 0)

    def _bind(self, feeds, outs) -> Call:
        binding = self.session.io_binding()
        kind, index = self._where
        for group, specs, add in ((feeds, self.inputs, binding.bind_input), (outs, self.outputs, binding.bind_output)):
            for t in specs:
                x = group[t.name]
                add(t.name, kind, index, np.dtype(t.dtype), tuple(x.shape), x.data_ptr())
        cuda = self.device.cuda

        def call() -> None:
            if cuda:  # ORT runs on its own stream: the inputs must be complete first
                torch.cuda.current_stream(self.device.torch).synchronize()
            self.session.run_with_iobinding(binding)
        return call


class TrtDeviceEngine(DeviceEngine):
    """A serialized TensorRT engine; one execution context, its tensor addresses set per binding."""

    backend = "trt"

    def __init__(self, stage, path: Path, inputs, outputs, device: Device) -> None:
        import tensorrt as trt

        from kernels.tensorrt_plugin import register

        super().__init__(stage, inputs, outputs, device)
        register()  # the attention plugins, if the graph holds them
        with torch.cuda.device(device.torch):
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise ManifestError(f"{path}: TensorRT could not deserialize this engine (another TensorRT or GPU?)")
            self.context = self.engine.create_execution_context()
        self._bound = None

    def _bind(self, feeds, outs) -> Call:
        addresses = {**{k: v.data_ptr() for k, v in feeds.items()}, **{k: v.data_ptr() for k, v in outs.items()}}
        key = object()

        def call() -> None:
            if self._bound is not key:  # another binding ran last: point the context at ours
                for name, address in addresses.items():
                    self.context.set_tensor_address(name, address)
                self._bound = key
            if not self.context.execute_async_v3(torch.cuda.current_stream(self.device.torch).cuda_stream):
                raise RuntimeError(f"{self.stage}: TensorRT execution failed")
        return call


def load_aoti(path: Path, device: Device, graphs: bool | None = None) -> Callable:
    """An AOTInductor package's runner for `device`. On a GPU whose calls may be captured in a CUDA graph
    (`graphs` not False; None: the sessions' default there), single-threaded: the default runner records
    and waits for its own CUDA event around each run, which a captured graph cannot hold (two calls of one
    package in one graph, as the flow steps are). The device path calls each engine from one thread."""
    extra = {"device_index": device.torch.index, "run_single_threaded": graphs is not False} if device.cuda else {}
    return torch._inductor.aoti_load_package(str(path), **extra)


def load_device_engines(directory: str | Path, device: Device, stages: list[str] | None = None,
                        threads: int | None = None, manifest: dict | None = None,
                        trust: str | Path | None = None,
                        graphs: bool | None = None) -> tuple[dict, dict[str, DeviceEngine]]:
    """(manifest, {stage: DeviceEngine}) of an engine directory, for tensors on `device` (its manifest
    checked here, with its signature against `trust` where given, unless the caller checked it); `graphs`:
    whether the engines will be captured in CUDA graphs (None: on a GPU, as the sessions' default)."""
    from ..engine import installed_versions
    from ..manifest import read_manifest, stage_io

    directory = Path(directory)
    manifest = manifest or read_manifest(directory, installed_versions=installed_versions(), trust=trust)
    backend, target = manifest["backend"], manifest["target"]["device"]
    if target == "cuda" and not device.cuda:
        raise ManifestError(f"{directory} holds {backend} engines for a CUDA GPU; the device path here is {device}")
    if backend in ("aoti",) and target == "cpu" and device.cuda:
        raise ManifestError(f"{directory} holds CPU AOTInductor packages; build them with --device cuda for {device}")
    engines: dict[str, DeviceEngine] = {}
    for stage, info in manifest["stages"].items():
        if stages is not None and stage not in stages:
            continue
        inputs, outputs = stage_io(manifest, stage)
        path = directory / info["file"]
        if backend == "ort":
            engines[stage] = OrtDeviceEngine(stage, path, inputs, outputs, device, threads)
        elif backend == "trt":
            engines[stage] = TrtDeviceEngine(stage, path, inputs, outputs, device)
        elif backend == "aoti":
            engines[stage] = TorchDeviceEngine(stage, inputs, outputs, device, load_aoti(path, device, graphs))
        else:
            raise ManifestError(f"{directory}: backend {backend!r} has no device-path engine (ort, aoti, trt)")
    return manifest, engines


class HostCall:
    """A DeviceEngine run from host tensors, one call at a time (`streamer verify`, polygraphy): its feeds
    copied in, the engine run once, its outputs copied out. Not the unit path: that binds once and
    moves only a unit's inputs and outputs (runtime/device/session.py)."""

    def __init__(self, engine: DeviceEngine) -> None:
        self.engine, self.inputs, self.outputs = engine, engine.inputs, engine.outputs
        dev = engine.device
        self.feeds = {t.name: dev.empty(t.shape, torch_dtype(t.dtype)) for t in engine.inputs}
        self.outs = engine.allocate_outputs()
        self.call = engine.bind(self.feeds, self.outs)

    def run(self, feeds: dict) -> dict:
        """{name: tensor or array} -> {name: CPU tensor} (bf16/FP8 kept as they are); numpy arrays in ->
        numpy arrays out (fp32 I/O: the quantized stages' checks)."""
        missing = sorted(set(self.feeds) - set(feeds))
        if missing:
            raise EngineInputError(f"{self.engine.stage}: missing inputs {missing}")
        for name, x in feeds.items():
            self.feeds[name].copy_(torch.as_tensor(x))
        self.call()
        if self.engine.device.cuda:
            torch.cuda.synchronize(self.engine.device.torch)
        as_numpy = all(isinstance(x, np.ndarray) for x in feeds.values())
        return {name: y.cpu().numpy() if as_numpy else y.cpu() for name, y in self.outs.items()}
