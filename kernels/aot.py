"""The attention kernels compiled ahead of time for fixed shapes: what the TensorRT AOT plugins embed.

`launch_geometry` (kernels/tiling.py) decides the tiles, warps, stages and the cache split for a GPU (the
rule the torch launcher uses on a GPU), so the ONNX export, the plugins and the torch op agree on the
partial buffers' shapes and compile the same kernel.
`compile_partial` / `compile_combine` compile one kernel for given shapes and dtypes with Triton for a
CUDA target and return its PTX, grid, block, shared memory and int32 scalar arguments, in the order a
TensorRT AOT plugin launches a kernel (inputs, scalars, outputs). No GPU is needed to compile (Triton
lowers to PTX itself), so the tests compile them on a CPU.
"""
from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass

import triton

from .attention import _combine_kernel, _partial_kernel, _partial_kernel_fp8
from .tiling import Geometry, launch_geometry  # noqa: F401  (the plugins and the export import them from here)

COMBINE_ROWS = 16
TRITON_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float8_e4m3fn": "fp8e4nv",
                "int64": "i64", "int32": "i32"}


@dataclass(frozen=True)
class CompiledLaunch:
    name: str
    ptx: str
    grid: tuple[int, int, int]
    block: int  # threads per program
    shared: int  # bytes of dynamic shared memory
    scalars: tuple[int, ...]  # the int32 arguments between the inputs and the outputs


def _contiguous_strides(shape: tuple[int, ...]) -> list[int]:
    return [math.prod(shape[i + 1:]) for i in range(len(shape))]


def _compile(fn, signature: dict[str, str], constants: dict, target, values: dict | None = None,
             num_warps: int = 4, num_stages: int = 3) -> object:
    """Compile `fn` for `target` (sm_90a by default). `values`: the int32 arguments' values, so those
    divisible by 16 are marked as such, as Triton's launcher specializes them at run time; every pointer is
    marked 16-byte aligned (torch and TensorRT allocate at 256)."""
    from triton.backends.compiler import GPUTarget

    names = list(signature)
    aligned = [i for i, n in enumerate(names) if signature[n].startswith("*")
               or (values is not None and n in values and values[n] % 16 == 0)]
    signature = {**signature, **{k: "constexpr" for k in constants}}
    keyword = "constexprs" if "constexprs" in inspect.signature(triton.compiler.ASTSource.__init__).parameters \
        else "constants"
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = triton.compiler.ASTSource(fn=fn, signature=signature, attrs=attrs, **{keyword: constants})
    return triton.compile(src, target=target or GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def _strip_scratch(ptx: str, name: str, n_params: int) -> str:
    """Drop the scratch-pointer parameters Triton appends after the declared ones (global / profile
    scratch), when the kernel never reads them: TensorRT passes exactly inputs, scalars, outputs."""
    params = re.findall(rf"\.param [^\n]*{name}_param_(\d+)", ptx)
    extra = [int(i) for i in params if int(i) >= n_params]
    for i in extra:
        if re.search(rf"\[{name}_param_{i}\]", ptx):
            raise RuntimeError(f"{name}: Triton's parameter {i} (scratch memory) is used; the AOT plugin cannot pass it")
    entry = re.search(rf"\.entry {name}\((.*?)\)", ptx, re.S)
    kept = [line for line in entry.group(1).split(",")
            if not any(f"{name}_param_{i}" in line for i in extra)]
    return ptx[:entry.start(1)] + ",".join(kept) + ptx[entry.end(1):]


def compile_partial(q_shape, cache_shape, local_len: int, q_dtype: str, cache_dtype: str, causal_tail: int,
                    geometry: Geometry, target=None) -> CompiledLaunch:
    """The partial kernel for q [B, Hq, Lq, D], cache [B, Hkv, Cap, D], local [B, Hkv, Ll, D] (contiguous)."""
    b, hq, n_q, d = q_shape
    _, hkv, cap, _ = cache_shape
    fp8 = cache_dtype == "float8_e4m3fn"
    g, parts = geometry, geometry.splits + 1
    scalars = [*_contiguous_strides(q_shape)[:3], *_contiguous_strides(cache_shape)[:3],
               *_contiguous_strides(cache_shape)[:3], *_contiguous_strides((b, hkv, local_len, d))[:3],
               *_contiguous_strides((b, hkv, local_len, d))[:3], *_contiguous_strides((b, hq, n_q, parts, d))[:4],
               *_contiguous_strides((b, hq, n_q, parts))[:3], hkv, n_q, local_len, g.chunk]
    t, c = TRITON_TYPES[q_dtype], TRITON_TYPES[cache_dtype]
    names = list(inspect.signature((_partial_kernel_fp8 if fp8 else _partial_kernel).fn).parameters)
    pointers = {"Q": f"*{t}", "KC": f"*{c}", "VC": f"*{c}", "CACHE_LEN": "*i64", "KL": f"*{t}", "VL": f"*{t}"}
    if fp8:
        pointers.update(KSCALE="*fp32", VSCALE="*fp32")
    scalar_names = names[len(pointers):len(pointers) + len(scalars)]
    signature = {**pointers, **dict.fromkeys(scalar_names, "i32"), "OP": "*fp32", "LSEP": "*fp32"}
    constants = {"SM_SCALE": d ** -0.5, "GROUP": hq // hkv, "D": d, "BLOCK_M": g.block_m, "BLOCK_N": g.block_n,
                 "N_SPLITS": g.splits, "CAUSAL_TAIL": causal_tail}
    kernel = _compile(_partial_kernel_fp8 if fp8 else _partial_kernel, signature, constants, target,
                      dict(zip(scalar_names, scalars)), g.num_warps, g.num_stages)
    name = kernel.metadata.name
    return CompiledLaunch(name, _strip_scratch(kernel.asm["ptx"], name, len(signature)),
                          (g.m_blocks, b * hkv, parts), kernel.metadata.num_warps * 32, kernel.metadata.shared,
                          tuple(scalars))


def compile_combine(partial_shape, out_dtype: str, target=None) -> CompiledLaunch:
    """The combine kernel for partial [B, Hq, Lq, S + 1, D] (float32) -> out [B, Hq, Lq, D] in `out_dtype`
    (its third input, q, only types the node)."""
    b, hq, n_q, parts, d = partial_shape
    n_rows = b * hq * n_q
    t = f"*{TRITON_TYPES[out_dtype]}"
    signature = {"OP": "*fp32", "LSEP": "*fp32", "Q": t, "n_rows": "i32", "s_os": "i32", "s_ls": "i32", "OUT": t}
    kernel = _compile(_combine_kernel, signature, {"D": d, "SPLITS": parts, "ROWS": COMBINE_ROWS}, target,
                      {"n_rows": n_rows, "s_os": parts * d, "s_ls": parts})
    name = kernel.metadata.name
    return CompiledLaunch(name, _strip_scratch(kernel.asm["ptx"], name, len(signature)),
                          (triton.cdiv(n_rows, COMBINE_ROWS), 1, 1), kernel.metadata.num_warps * 32,
                          kernel.metadata.shared, (n_rows, parts * d, parts))
