"""What a compiled kernel costs an SM, without a GPU: Triton's PTX assembled by ptxas, its `-v` report read.

The plain `ptxas` in the triton wheel (CUDA 12.8) refuses the PTX 9.x that Triton 3.9 writes; the
`ptxas-blackwell` beside it (CUDA 13) assembles it for sm_90a too. `programs_per_sm` applies Hopper's
limits (64K 32-bit registers, 228 KB shared memory, 2,048 threads, 32 programs per SM; registers
allocated per warp in units of 256, 1 KB of shared memory reserved per program).
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SM90 = {"registers": 65536, "shared": 228 * 1024, "threads": 2048, "programs": 32, "reserved_shared": 1024,
        "register_unit": 256}


@dataclass(frozen=True)
class Resources:
    registers: int  # per thread
    spill_stores: int  # bytes per thread
    spill_loads: int
    stack: int  # bytes of stack frame per thread
    threads: int  # per program
    shared: int  # bytes of shared memory per program (Triton's dynamic allocation)

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads

    @property
    def programs_per_sm(self) -> int:
        return programs_per_sm(self.registers, self.threads, self.shared)


def ptxas_path() -> Path | None:
    """The ptxas-blackwell inside the installed triton wheel, or None where there is none."""
    try:
        import triton
    except ImportError:
        return None
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas-blackwell"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def parse_report(text: str, name: str) -> tuple[int, int, int, int]:
    """(registers, spill stores, spill loads, stack bytes) of entry `name` in a `ptxas -v` report."""
    section = text.split(f"Function properties for {name}", 1)
    if len(section) != 2:
        raise ValueError(f"ptxas -v: no report for {name!r} in:\n{text[-2000:]}")
    body = section[1]
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", body)
    regs = re.search(r"Used (\d+) registers", body)
    if not frame or not regs:
        raise ValueError(f"ptxas -v: cannot read registers and spills for {name!r} in:\n{body[:2000]}")
    return int(regs.group(1)), int(frame.group(2)), int(frame.group(3)), int(frame.group(1))


def assemble(ptx: str, name: str, threads: int, shared: int, arch: str = "sm_90a",
             ptxas: Path | None = None) -> Resources:
    """Assemble `ptx` for `arch`; the entry `name`'s registers and spills, with its `threads` and `shared`."""
    ptxas = ptxas or ptxas_path()
    if ptxas is None:
        raise FileNotFoundError("ptxas-blackwell is not in the installed triton wheel (triton/backends/nvidia/bin)")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        run = subprocess.run([str(ptxas), "-v", "--gpu-name", arch, str(src), "-o", str(Path(tmp) / "kernel.cubin")],
                             capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise RuntimeError(f"ptxas failed ({run.returncode}): {(run.stdout + run.stderr)[-2000:]}")
    regs, stores, loads, stack = parse_report(run.stdout + run.stderr, name)
    return Resources(regs, stores, loads, stack, threads, shared)


def programs_per_sm(registers: int, threads: int, shared: int, sm: dict = SM90) -> int:
    """How many programs of `threads` threads using `registers` each and `shared` bytes fit on one SM."""
    warps = -(-threads // 32)
    unit = sm["register_unit"]
    per_warp = -(-registers * 32 // unit) * unit
    by_registers = sm["registers"] // (per_warp * warps)
    by_shared = sm["shared"] // (shared + sm["reserved_shared"])
    return min(by_registers, by_shared, sm["threads"] // threads, sm["programs"])
