"""A quantized (modelopt fake-quant) stage module to ONNX with Q/DQ pairs, then the usual checks.

modelopt's quantizers export through torch.onnx's TorchScript exporter: INT8 as standard
QuantizeLinear / DequantizeLinear (weights per output channel, activations per tensor), which both
ONNX Runtime and TensorRT consume; FP8 as TensorRT's `trt::TRT_FP8QuantizeLinear` /
`TRT_FP8DequantizeLinear`, which only TensorRT runs.
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from model_src.stages import StageSpec
from runtime.manifest import TensorSpec

from .onnx_export import _specs, check_tensorrt_ops

FP8_OPS = {"trt": {"TRT_FP8QuantizeLinear", "TRT_FP8DequantizeLinear"}}  # TensorRT's own FP8 Q/DQ


def export_quantized_stage(spec: StageSpec, module: torch.nn.Module, path: Path, precision: str
                           ) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Export the quantized `module` of `spec` to `path` and check it; returns (inputs, outputs)."""
    args = tuple(spec.example_inputs.values())
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        raw = Path(tmp) / path.name  # over 2 GB the exporter writes one file per tensor: gather them
        torch.onnx.export(module, args, str(raw), input_names=list(spec.example_inputs),
                          output_names=spec.output_names, opset_version=17, dynamo=False,
                          do_constant_folding=True)
        model = onnx.load(str(raw))
        large = len(list(Path(tmp).iterdir())) > 1 or model.ByteSize() > 1_800_000_000
        onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                        location=f"{path.name}.data")
        del model
    onnx.checker.check_model(str(path), full_check=False)
    onnx.shape_inference.infer_shapes_path(str(path), check_type=True)
    model = onnx.load(str(path), load_external_data=False)
    q_ops = {"QuantizeLinear", "DequantizeLinear"} if precision == "int8" else set(FP8_OPS["trt"])
    found = {n.op_type for n in model.graph.node} & q_ops
    if found != q_ops:
        raise RuntimeError(f"{spec.name}: the {precision} export holds no {sorted(q_ops - found)} nodes: "
                           f"the module was not quantized")
    check_tensorrt_ops(model, spec.name, extra_ops=FP8_OPS if precision == "fp8" else None)
    return _specs(model.graph.input, spec.name), _specs(model.graph.output, spec.name)
