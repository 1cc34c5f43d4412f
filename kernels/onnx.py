"""ONNX form of the kernel: `torch.ops.streamer.block_attention` -> two `streamer` plugin nodes.

    BlockAttentionPartial(q, cache_k, cache_v, cache_len, local_k, local_v) -> (partial, lse)
    BlockAttentionPartialFP8(..., k_scale, v_scale)                         -> (partial, lse)
    BlockAttentionCombine(partial, lse, q)                                  -> out (q: its dtype and shape)

One node per Triton kernel, because a TensorRT ahead-of-time plugin launches exactly one compiled
kernel and owns no workspace: the flash-decoding partials (float32 [B, Hq, Lq, S + 1, D] and the
log-sum-exps [B, Hq, Lq, S + 1]) are ordinary tensors between the two nodes, sized at export by
`kernels.aot.launch_geometry` (the GPU rule), which also goes into the nodes' attributes (tiles, split,
chunk, warps, stages) so the plugins compile exactly that launch. Every node carries `plugin_namespace="streamer"`
(how TensorRT's ONNX parser finds a plugin) and `aot` (1: the compiled kernel embedded in the engine,
no Python per call; 0: the JIT plugin, which calls back into Python; set STREAMER_TRT_PLUGIN=jit at
export to debug with it). Pass `CUSTOM_TRANSLATION` as `custom_translation_table` to
`torch.onnx.export(..., dynamo=True)`. ONNX Runtime has no kernels for these nodes.
"""
from __future__ import annotations

import os

import onnx
import onnx_ir as ir
import onnxscript
import torch

from . import ops  # noqa: F401  (registers torch.ops.streamer.block_attention)
from .aot import launch_geometry

DOMAIN = "streamer"
PARTIAL, PARTIAL_FP8, COMBINE = "BlockAttentionPartial", "BlockAttentionPartialFP8", "BlockAttentionCombine"
OP_TYPES = {PARTIAL, PARTIAL_FP8, COMBINE}
GEOMETRY_ATTRIBUTES = ("causal_tail", "n_splits", "block_m", "block_n", "chunk", "num_warps", "num_stages")


def _schema(op_type: str) -> onnx.defs.OpSchema:
    """The nodes' schemas, registered with onnx so exporters and checkers know their signatures."""
    P, A = onnx.defs.OpSchema.FormalParameter, onnx.defs.OpSchema.Attribute
    INT, STRING = onnx.defs.OpSchema.AttrType.INT, onnx.defs.OpSchema.AttrType.STRING
    plugin = [A("plugin_namespace", STRING, "TensorRT plugin namespace", required=False),
              A("aot", INT, "1: TensorRT's ahead-of-time plugin, 0: the JIT one", required=False)]
    if op_type == COMBINE:
        return onnx.defs.OpSchema(op_type, DOMAIN, 1, doc=__doc__, inputs=[P("partial", "F"), P("lse", "F"), P("q", "T")],
                                  outputs=[P("out", "T")],
                                  type_constraints=[("F", ["tensor(float)"], "partials"),
                                                    ("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"],
                                                     "activations")],
                                  attributes=plugin)
    inputs = [P("q", "T"), P("cache_k", "TC"), P("cache_v", "TC"), P("cache_len", "I"), P("local_k", "T"),
              P("local_v", "T")]
    if op_type == PARTIAL_FP8:
        inputs += [P("k_scale", "F"), P("v_scale", "F")]
    return onnx.defs.OpSchema(
        op_type, DOMAIN, 1, doc=__doc__, inputs=inputs, outputs=[P("partial", "F"), P("lse", "F")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "activations"),
                          ("TC", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(float8e4m3fn)"],
                           "cache"),
                          ("I", ["tensor(int64)"], "lengths"), ("F", ["tensor(float)"], "float32")],
        attributes=[A(name, INT, "launch geometry (kernels.aot.launch_geometry)", required=False)
                    for name in GEOMETRY_ATTRIBUTES] + plugin)


for _op in (PARTIAL, PARTIAL_FP8, COMBINE):
    if not onnx.defs.has(_op, DOMAIN):
        onnx.defs.register_schema(_schema(_op))
_opset = onnxscript.values.Opset(DOMAIN, 1)


def plugin_form() -> int:
    """1 (AOT) unless STREAMER_TRT_PLUGIN=jit."""
    form = os.environ.get("STREAMER_TRT_PLUGIN", "aot")
    if form not in ("aot", "jit"):
        raise ValueError(f"STREAMER_TRT_PLUGIN: expected aot or jit, got {form!r}")
    return int(form == "aot")


def block_attention_onnx(q, cache_k, cache_v, cache_len, local_k, local_v, k_scale=None, v_scale=None,
                         causal_tail: int = 0):
    b, hq, n_q, d = (int(x) for x in q.shape)
    hkv, capacity = int(cache_k.shape[1]), int(cache_k.shape[2])
    g = launch_geometry(b, hq, hkv, n_q, d, capacity, fp8=k_scale is not None)
    attrs = dict(causal_tail=causal_tail, n_splits=g.splits, block_m=g.block_m, block_n=g.block_n, chunk=g.chunk,
                 num_warps=g.num_warps, num_stages=g.num_stages, plugin_namespace=DOMAIN, aot=plugin_form())
    args = [q, cache_k, cache_v, cache_len, local_k, local_v]
    if k_scale is not None:
        partial, lse = getattr(_opset, PARTIAL_FP8)(*args, k_scale, v_scale, _num_outputs=2, **attrs)
    else:
        partial, lse = getattr(_opset, PARTIAL)(*args, _num_outputs=2, **attrs)
    out = getattr(_opset, COMBINE)(partial, lse, q, plugin_namespace=DOMAIN, aot=attrs["aot"])
    _typed(partial, ir.DataType.FLOAT, (b, hq, n_q, g.splits + 1, d))  # the graph knows every value's type
    _typed(lse, ir.DataType.FLOAT, (b, hq, n_q, g.splits + 1))
    if q.dtype is not None:  # (otherwise the exporter types it from the torch op's output)
        _typed(out, q.dtype, (b, hq, n_q, d))
    return out


def _typed(value, dtype, shape) -> None:
    value.dtype = dtype
    value.shape = ir.Shape(list(shape))


CUSTOM_TRANSLATION = {torch.ops.streamer.block_attention.default: block_attention_onnx}
