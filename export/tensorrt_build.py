"""ONNX -> serialized TensorRT engine with the TensorRT 10 Python API (needs `tensorrt` and a GPU).

Static shapes come from the ONNX graph (one optimization profile pins them, so a graph exported with a
dynamic batch gets min = opt = max = the given shapes). Precision: an fp16/bf16 export is typed in that
dtype (activations, KV cache, FP8 cache inputs), so its network is STRONGLY_TYPED and TensorRT follows
the graph's types exactly; fp32 graphs build as they are; INT8 / FP8 graphs carry Q/DQ pairs from
calibration and build weakly typed with the INT8 / FP8 (+FP16) flags. A timing cache shared by all
stages of a build; our attention plugins registered first so their ONNX nodes parse.
"""
from __future__ import annotations

from pathlib import Path

PRECISION_FLAGS = {"fp32": [], "fp16": [], "bf16": [], "fp8": ["FP8", "FP16"], "int8": ["INT8", "FP16"]}
STRONGLY_TYPED = ("fp16", "bf16")  # the ONNX itself is in that dtype


class TensorRTUnavailable(ValueError):
    """TensorRT is not importable here (a user-facing error: the CLI prints it without a traceback)."""


def import_tensorrt():
    """The tensorrt module, or TensorRTUnavailable saying how to install it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable("TensorRT is not installed: on a machine with an NVIDIA GPU run "
                                  "`pip install -e \".[gpu]\"` (tensorrt, onnxruntime-gpu, cuda-python)") from None
    return trt


def build_engine(onnx_path: Path, engine_path: Path, precision: str, timing_cache: Path,
                 input_shapes: dict[str, tuple[int, ...]], workspace_gib: int = 8) -> None:
    """Parse `onnx_path`, build for `precision`, write `engine_path`; update the timing cache file."""
    import_tensorrt()  # the clear error where TensorRT is missing
    import tensorrt as trt  # (imported by name, so the TensorRT calls below are type-checked against its API)

    from kernels.tensorrt_plugin import register

    if precision not in PRECISION_FLAGS:
        raise ValueError(f"precision {precision!r}: expected one of {list(PRECISION_FLAGS)}")
    register()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    typed = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if precision in STRONGLY_TYPED else 0
    network = builder.create_network(typed)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    for flag in PRECISION_FLAGS[precision]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, shape in input_shapes.items():
        dims = trt.Dims(list(shape))
        profile.set_shape(name, dims, dims, dims)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {onnx_path.name} ({precision}); see the log above")
    engine_path.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
