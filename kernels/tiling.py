"""Launch geometry of the attention kernels: tiles, warps, pipeline stages and the cache split.

One rule for every way the kernel runs on a GPU: the torch op (kernels/attention.py), the ONNX export
(kernels/onnx.py writes it into the nodes' attributes) and the TensorRT AOT plugin (kernels/aot.py
compiles exactly that launch). The tiles per shape come from `GPU_TILES`, chosen by
`python bench/kernel_tiles.py`: the kernel compiled for sm_90a and assembled with the ptxas inside the
triton wheel; for each shape the tiles with no register spills and at least two programs per SM, the
largest such (then the deepest pipeline). tests/test_ptxas.py holds the chosen ones to that.
Under TRITON_INTERPRET=1 (the CPU tests) a fixed config, `interpreter_geometry`.
"""
from __future__ import annotations

from dataclasses import dataclass

import triton

TARGET_PROGRAMS = 264  # two programs on each of the 132 SMs of an H100 / H200 SXM


@dataclass(frozen=True)
class Tiles:
    block_m: int  # folded (query head, query) rows per program
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int  # software-pipeline depth of the cache loop (the local-key loop is not pipelined)


# (GQA group = Hq // Hkv, head dim, FP8 cache) -> tiles; written from `python bench/kernel_tiles.py`.
GPU_TILES = {
    (2, 128, False): Tiles(64, 64, 8, 3),  # base (16 / 8 heads), bf16 cache: 124 registers, 112 KiB
    (2, 128, True): Tiles(128, 64, 4, 4),  # base, FP8 cache: 255 registers (no spill), 112 KiB
    (7, 128, False): Tiles(64, 64, 8, 3),  # large (28 / 4 heads)
    (7, 128, True): Tiles(128, 64, 4, 4),
}
# other shapes (the small presets' head dims, other GQA groups): at D = 128, group 2 this is 168 registers,
# no spill, 80 KiB, 2 programs per SM (bench/kernel_tiles.py --sweep); smaller head dims need less
DEFAULT_TILES = Tiles(64, 64, 4, 2)


@dataclass(frozen=True)
class Geometry:
    block_m: int
    block_n: int
    m_blocks: int
    splits: int  # cache chunks; the partial buffers hold splits + 1 (the last: the local keys)
    chunk: int  # cache slots per chunk, a multiple of block_n
    num_warps: int = 4
    num_stages: int = 3


def gpu_tiles(group: int, head_dim: int, fp8: bool) -> Tiles:
    """The tiles for a GQA group size, head dim and cache type (the table, else `DEFAULT_TILES`)."""
    return GPU_TILES.get((group, head_dim, bool(fp8)), DEFAULT_TILES)


def num_cache_splits(capacity: int, other_programs: int, block_n: int, target_programs: int = TARGET_PROGRAMS) -> int:
    """How many chunks to cut the cache into: enough programs to fill a GPU, chunks of >= 4 tiles."""
    if capacity == 0:
        return 0
    want = max(1, target_programs // max(other_programs, 1))
    return max(1, min(want, triton.cdiv(capacity, 4 * block_n)))


def geometry(batch: int, q_heads: int, kv_heads: int, n_q: int, capacity: int, tiles: Tiles,
             target_programs: int = TARGET_PROGRAMS) -> Geometry:
    """The launch of `tiles` for q [batch, q_heads, n_q, D] over a cache of `capacity` slots (query tiles
    no taller than the folded rows, >= 16)."""
    rows = (q_heads // kv_heads) * n_q
    block_m = max(16, min(tiles.block_m, triton.next_power_of_2(rows)))
    m_blocks = triton.cdiv(rows, block_m)
    splits = num_cache_splits(capacity, m_blocks * batch * kv_heads, tiles.block_n, target_programs)
    chunk = triton.cdiv(triton.cdiv(capacity, splits), tiles.block_n) * tiles.block_n if splits else 0
    return Geometry(block_m, tiles.block_n, m_blocks, splits, chunk, tiles.num_warps, tiles.num_stages)


def launch_geometry(batch: int, q_heads: int, kv_heads: int, n_q: int, head_dim: int, capacity: int,
                    fp8: bool = False) -> Geometry:
    """The GPU launch (`GPU_TILES`, ~264 programs): what the torch op, the ONNX nodes and the plugins use."""
    return geometry(batch, q_heads, kv_heads, n_q, capacity, gpu_tiles(q_heads // kv_heads, head_dim, fp8))


def interpreter_geometry(batch: int, q_heads: int, kv_heads: int, n_q: int, capacity: int) -> Geometry:
    """Under TRITON_INTERPRET=1 the cost is per program and per op: one query tile as tall as the rows,
    256-key tiles, the cache split in two at most (the kernel code is the same)."""
    rows = (q_heads // kv_heads) * n_q
    return geometry(batch, q_heads, kv_heads, n_q, capacity, Tiles(max(16, triton.next_power_of_2(rows)), 256, 4, 1),
                    target_programs=2)
