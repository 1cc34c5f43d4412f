"""`torch.ops.streamer.block_attention`: the Triton kernel as a torch custom op.

Registered with `torch.library.triton_op`, so eager calls launch the kernel, `torch.export` keeps it
as one node (the ONNX exporter turns it into a `streamer::BlockAttention` node, kernels/onnx.py), and
AOTInductor compiles the Triton kernel into the package.
"""
from __future__ import annotations

import torch
from torch.library import triton_op, wrap_triton

from .attention import block_attention_triton

HEAD_DIMS = (16, 32, 64, 128)
FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)
FP8_TYPES = (torch.float8_e4m3fn,)


def check_inputs(q, cache_k, cache_v, cache_len, local_k, local_v, k_scale, v_scale) -> None:
    """Raise a ValueError that names the expected and the received, before any kernel runs."""
    if q.dim() != 4 or cache_k.dim() != 4 or local_k.dim() != 4:
        raise ValueError(f"block_attention: expected 4-D q [B, Hq, Lq, D], cache [B, Hkv, Cap, D] and local "
                         f"[B, Hkv, Ll, D]; got {tuple(q.shape)}, {tuple(cache_k.shape)}, {tuple(local_k.shape)}")
    b, hq, n_q, d = q.shape
    hkv = cache_k.shape[1]
    if d not in HEAD_DIMS:
        raise ValueError(f"block_attention: head dim must be one of {HEAD_DIMS}, got {d}")
    if hq % hkv:
        raise ValueError(f"block_attention: Hq={hq} must be a multiple of Hkv={hkv}")
    for name, t in (("cache_k", cache_k), ("cache_v", cache_v), ("local_k", local_k), ("local_v", local_v)):
        if t.shape[0] != b or t.shape[1] != hkv or t.shape[3] != d:
            raise ValueError(f"block_attention: {name} must be [{b}, {hkv}, *, {d}], got {tuple(t.shape)}")
        if t.stride(-1) != 1 or q.stride(-1) != 1:
            raise ValueError(f"block_attention: the last dim of q and {name} must be contiguous")
    if local_k.shape[2] < n_q or local_v.shape != local_k.shape or cache_v.shape != cache_k.shape:
        raise ValueError(f"block_attention: local keys ({local_k.shape[2]}) must include the {n_q} queries' own, "
                         "and K/V shapes must match")
    if q.dtype not in FLOAT_TYPES or local_k.dtype != q.dtype or local_v.dtype != q.dtype:
        raise ValueError(f"block_attention: q and local K/V must share one of {FLOAT_TYPES}, got "
                         f"{q.dtype}, {local_k.dtype}, {local_v.dtype}")
    if cache_k.dtype in FP8_TYPES:
        if k_scale is None or v_scale is None or k_scale.shape != (hkv,) or v_scale.shape != (hkv,):
            raise ValueError(f"block_attention: an FP8 cache needs k_scale and v_scale of shape ({hkv},)")
    elif cache_k.dtype != q.dtype or cache_v.dtype != q.dtype:
        raise ValueError(f"block_attention: cache dtype must be q's ({q.dtype}) or FP8 E4M3, got {cache_k.dtype}")
    if cache_len.shape != (b,) or cache_len.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"block_attention: cache_len must be int32/int64 of shape ({b},), got "
                         f"{cache_len.dtype} {tuple(cache_len.shape)}")


@triton_op("streamer::block_attention", mutates_args=())
def block_attention(q: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, cache_len: torch.Tensor,
                    local_k: torch.Tensor, local_v: torch.Tensor, k_scale: torch.Tensor | None = None,
                    v_scale: torch.Tensor | None = None, causal_tail: int = 0) -> torch.Tensor:
    """Attention of q [B, Hq, Lq, D] over the valid cache and the local keys; returns [B, Hq, Lq, D]."""
    check_inputs(q, cache_k, cache_v, cache_len, local_k, local_v, k_scale, v_scale)
    return block_attention_triton(q, cache_k, cache_v, cache_len, local_k, local_v, k_scale, v_scale,
                                  causal_tail, launch=wrap_triton)


@block_attention.register_fake
def _block_attention_fake(q, cache_k, cache_v, cache_len, local_k, local_v, k_scale=None, v_scale=None,
                          causal_tail=0):
    """Shapes only (export, fake tensors): like the real op's output, shaped like q and contiguous whatever
    q's strides (`empty_like` would copy a transposed q's strides, and the graph would be planned wrongly)."""
    return q.new_empty(q.shape)
