"""The attention kernel's launch at the GPU shapes, assembled for sm_90a without a GPU: no register spills and
at least two programs per SM (bench/kernel_tiles.py through its command line; kernels/ptxas.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import report
from kernels.ptxas import parse_report, programs_per_sm, ptxas_path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = """ptxas-blackwell info    : Compiling entry function '_partial_kernel' for 'sm_90a'
ptxas-blackwell info    : Function properties for _partial_kernel
    184 bytes stack frame, 184 bytes spill stores, 184 bytes spill loads
ptxas-blackwell info    : Used 255 registers, used 1 barriers, 184 bytes cumulative stack size
"""


def test_report_parsing_and_occupancy_arithmetic():
    """The `ptxas -v` lines of the kernel as it was (64x32 tiles, 4 warps) and Hopper's per-SM limits."""
    assert parse_report(SAMPLE, "_partial_kernel") == (255, 184, 184, 184)
    with pytest.raises(ValueError, match="no report for '_combine_kernel'"):
        parse_report(SAMPLE, "_combine_kernel")
    assert programs_per_sm(255, 128, 32768) == 2  # 8,192 registers per warp x 4 warps: two in 64K
    assert programs_per_sm(124, 256, 80 * 1024) == 2  # 4,096 per warp x 8 warps
    assert programs_per_sm(135, 256, 64 * 1024) == 1  # 136 x 32 -> 4,352 per warp: one program
    assert programs_per_sm(64, 128, 120 * 1024) == 1  # shared memory: 228 KiB holds one


@pytest.mark.skipif(ptxas_path() is None, reason="ptxas-blackwell is not in the installed triton wheel "
                                                 "(triton/backends/nvidia/bin): nothing can assemble the PTX here")
def test_chosen_tiles_do_not_spill_and_fit_two_programs_per_sm(tmp_path):
    """The flow shapes of base and large, bf16 and FP8 cache, at the launch the plugins and the torch op use
    (the thinker shapes compile the same code: `python bench/kernel_tiles.py` covers them); and a planted
    config (128-row query tiles, 8 warps: 187 registers, one program per SM) that the check must reject."""
    out = tmp_path / "tiles.json"
    names = "base-flow-bf16,base-flow-fp8,large-flow-bf16,large-flow-fp8"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-P", "bench/kernel_tiles.py", "--shapes", names, "--sweep", "--candidates", "128x64x8x2",
           "--sweep-at", "base-flow-bf16", "--json", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    for r in result["chosen"]:
        report(f"{r['shape']}: {r['config']}: {r['registers']} registers, {r['spill_bytes']} B spilled, "
               f"{r['shared_kib']:.0f} KiB shared, {r['programs_per_sm']} programs/SM, grid {r['grid']}")
        assert r["spill_bytes"] == 0 and r["programs_per_sm"] >= 2 and r["ok"], r
    assert len(result["chosen"]) == 4
    planted = result["sweep"]["base-flow-bf16"]["rows"]
    assert len(planted) == 1 and not planted[0]["ok"] and planted[0]["programs_per_sm"] == 1, planted
