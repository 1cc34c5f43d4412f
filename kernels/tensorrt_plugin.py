"""TensorRT plugins for the attention kernel (`tensorrt.plugin`, TensorRT's quickly deployable plugins).

`register()` registers the three nodes of kernels/onnx.py by namespace and name, each in two forms:

- ahead of time (`trtp.aot_impl`, the default the ONNX nodes ask for with `aot=1`): at build time the
  Triton kernel is compiled for the engine's static shapes and dtypes (kernels/aot.py) and its PTX is
  embedded in the engine; at run time TensorRT launches it itself. No Python per call, so an engine
  runs from C++ and is captured in a CUDA graph;
- just in time (`trtp.impl`, nodes exported with STREAMER_TRT_PLUGIN=jit): TensorRT calls back into
  Python on its stream and the kernel launches on torch views of the plugin's buffers. For debugging.

Written against TensorRT 10.x's `tensorrt.plugin` API (TensorRT 10.8+ for AOT plugins); it needs
`tensorrt` to import, and runs where TensorRT and a GPU are (its test skips elsewhere, saying why).
"""
from __future__ import annotations

from typing import Tuple

_registered = False
DTYPES = {"float32": "float", "float16": "half", "bfloat16": "bf16", "float8_e4m3fn": "fp8", "int64": "int64",
          "int32": "int32"}  # our dtype names -> tensorrt.DataType attribute names


def _dtype_name(trt, dtype) -> str:
    for name, attr in DTYPES.items():
        if dtype == getattr(trt, attr, None):
            return name
    raise ValueError(f"attention plugin: unsupported TensorRT dtype {dtype}")


def _static(desc) -> tuple[int, ...]:
    """A TensorDesc's shape as ints (every engine of this project has static shapes)."""
    dims = []
    for e in desc.shape_expr:
        if not e.is_constant:
            raise ValueError("attention plugin: the AOT kernel is compiled for static shapes; this input is dynamic")
        dims.append(int(e.constant_value))
    return tuple(dims)


def register() -> None:
    """Register the plugins with TensorRT (idempotent). Raises ImportError without tensorrt."""
    global _registered
    if _registered:
        return
    import tensorrt as trt
    import tensorrt.plugin as trtp
    import torch
    import triton

    from .aot import Geometry, compile_combine, compile_partial
    from .attention import launch_combine, launch_partial

    def as_torch(t) -> torch.Tensor:
        return torch.as_tensor(t, device="cuda")

    def launch_params(compiled):
        params = trtp.KernelLaunchParams()
        params.grid_x, params.grid_y, params.grid_z = compiled.grid
        params.block_x = compiled.block
        params.shared_mem = compiled.shared
        extra = trtp.SymIntExprs(len(compiled.scalars))  # (from_tuple is annotated for a 1-tuple)
        for i, v in enumerate(compiled.scalars):
            extra[i] = trtp.SymInt32(v)
        return compiled.name.encode(), compiled.ptx.encode(), params, extra

    def partial_desc(q, n_splits: int):
        b, hq, n_q, d = (q.shape_expr[i] for i in range(4))
        return (trtp.from_shape_expr((b, hq, n_q, n_splits + 1, d), dtype=trt.float32),
                trtp.from_shape_expr((b, hq, n_q, n_splits + 1), dtype=trt.float32))

    def partial_aot(q, cache_k, local_k, causal_tail, n_splits, block_m, block_n, chunk, num_warps, num_stages):
        qs, cs, ls = _static(q), _static(cache_k), _static(local_k)
        geometry = Geometry(block_m, block_n, triton.cdiv(qs[1] // cs[1] * qs[2], block_m), n_splits, chunk,
                            num_warps, num_stages)
        return launch_params(compile_partial(qs, cs, ls[2], _dtype_name(trt, q.dtype), _dtype_name(trt, cache_k.dtype),
                                             causal_tail, geometry))

    def partial_jit(stream, outputs, tensors, scales, causal_tail, block_m, block_n, chunk, num_warps,
                    num_stages) -> None:
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            args = [as_torch(t) for t in tensors]
            k_scale, v_scale = (as_torch(s) for s in scales) if scales else (None, None)
            launch_partial(*args, k_scale, v_scale, causal_tail, as_torch(outputs[0]), as_torch(outputs[1]),
                           block_m, block_n, chunk, num_warps=num_warps, num_stages=num_stages)

    # --- BlockAttentionPartial: a float cache -----------------------------------------------------------
    @trtp.register("streamer::BlockAttentionPartial")
    def _desc(q: trtp.TensorDesc, cache_k: trtp.TensorDesc, cache_v: trtp.TensorDesc, cache_len: trtp.TensorDesc,
              local_k: trtp.TensorDesc, local_v: trtp.TensorDesc, causal_tail: int, n_splits: int, block_m: int,
              block_n: int, chunk: int, num_warps: int, num_stages: int) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        return partial_desc(q, n_splits)

    @trtp.aot_impl("streamer::BlockAttentionPartial")
    def _aot(q: trtp.TensorDesc, cache_k: trtp.TensorDesc, cache_v: trtp.TensorDesc, cache_len: trtp.TensorDesc,
             local_k: trtp.TensorDesc, local_v: trtp.TensorDesc, causal_tail: int, n_splits: int, block_m: int,
             block_n: int, chunk: int, num_warps: int, num_stages: int, outputs: Tuple[trtp.TensorDesc],
             tactic: int):
        return partial_aot(q, cache_k, local_k, causal_tail, n_splits, block_m, block_n, chunk, num_warps, num_stages)

    @trtp.impl("streamer::BlockAttentionPartial")
    def _jit(q: trtp.Tensor, cache_k: trtp.Tensor, cache_v: trtp.Tensor, cache_len: trtp.Tensor,
             local_k: trtp.Tensor, local_v: trtp.Tensor, causal_tail: int, n_splits: int, block_m: int,
             block_n: int, chunk: int, num_warps: int, num_stages: int, outputs: Tuple[trtp.Tensor],
             stream: int) -> None:
        partial_jit(stream, outputs, (q, cache_k, cache_v, cache_len, local_k, local_v), (), causal_tail, block_m,
                    block_n, chunk, num_warps, num_stages)

    # --- BlockAttentionPartialFP8: an FP8 E4M3 cache with per-KV-head scales ----------------------------
    @trtp.register("streamer::BlockAttentionPartialFP8")
    def _desc_fp8(q: trtp.TensorDesc, cache_k: trtp.TensorDesc, cache_v: trtp.TensorDesc, cache_len: trtp.TensorDesc,
                  local_k: trtp.TensorDesc, local_v: trtp.TensorDesc, k_scale: trtp.TensorDesc,
                  v_scale: trtp.TensorDesc, causal_tail: int, n_splits: int, block_m: int, block_n: int,
                  chunk: int, num_warps: int, num_stages: int) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        return partial_desc(q, n_splits)

    @trtp.aot_impl("streamer::BlockAttentionPartialFP8")
    def _aot_fp8(q: trtp.TensorDesc, cache_k: trtp.TensorDesc, cache_v: trtp.TensorDesc, cache_len: trtp.TensorDesc,
                 local_k: trtp.TensorDesc, local_v: trtp.TensorDesc, k_scale: trtp.TensorDesc,
                 v_scale: trtp.TensorDesc, causal_tail: int, n_splits: int, block_m: int, block_n: int, chunk: int,
                 num_warps: int, num_stages: int, outputs: Tuple[trtp.TensorDesc], tactic: int):
        return partial_aot(q, cache_k, local_k, causal_tail, n_splits, block_m, block_n, chunk, num_warps, num_stages)

    @trtp.impl("streamer::BlockAttentionPartialFP8")
    def _jit_fp8(q: trtp.Tensor, cache_k: trtp.Tensor, cache_v: trtp.Tensor, cache_len: trtp.Tensor,
                 local_k: trtp.Tensor, local_v: trtp.Tensor, k_scale: trtp.Tensor, v_scale: trtp.Tensor,
                 causal_tail: int, n_splits: int, block_m: int, block_n: int, chunk: int, num_warps: int,
                 num_stages: int, outputs: Tuple[trtp.Tensor], stream: int) -> None:
        partial_jit(stream, outputs, (q, cache_k, cache_v, cache_len, local_k, local_v), (k_scale, v_scale),
                    causal_tail, block_m, block_n, chunk, num_warps, num_stages)

    # --- BlockAttentionCombine ----------------------------------------------------------------------------
    @trtp.register("streamer::BlockAttentionCombine")
    def _desc_combine(partial: trtp.TensorDesc, lse: trtp.TensorDesc, q: trtp.TensorDesc) -> trtp.TensorDesc:
        return q.like()

    @trtp.aot_impl("streamer::BlockAttentionCombine")
    def _aot_combine(partial: trtp.TensorDesc, lse: trtp.TensorDesc, q: trtp.TensorDesc,
                     outputs: Tuple[trtp.TensorDesc], tactic: int):
        return launch_params(compile_combine(_static(partial), _dtype_name(trt, q.dtype)))

    @trtp.impl("streamer::BlockAttentionCombine")
    def _jit_combine(partial: trtp.Tensor, lse: trtp.Tensor, q: trtp.Tensor, outputs: Tuple[trtp.Tensor],
                     stream: int) -> None:
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            launch_combine(as_torch(partial), as_torch(lse), as_torch(q), as_torch(outputs[0]))

    _registered = True
