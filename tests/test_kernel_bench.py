"""The kernel benchmarks' logic on the CPU (their --dry-run paths): the attention table's metrics, the SDPA
baseline's untimed set-up, the FP8 linears' static scales, and the two gpu_check kernel sections."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench/ is not an installed package

from bench.attention import OURS, OURS_FP8, available_methods, cost, inputs  # noqa: E402
from bench.fp8_linear import E4M3_MAX, FP8Linear, calibrate, to_fp8  # noqa: E402


class OpLog(TorchDispatchMode):
    """The aten ops run inside the block."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_attention_dry_run_reports_tflops_peak_and_bytes(tmp_path):
    """`python bench/attention.py --dry-run` end to end: every method measured at the tiny shape, TFLOP/s
    and GB/s from the counted work, % of the H100's dense bf16 peak (989.4 TFLOP/s, planning/gpus.toml)."""
    out = tmp_path / "attention.json"
    run = subprocess.run([sys.executable, "-P", "bench/attention.py", "--dry-run", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["peak_tflops_bf16"] == 989.4 and len(result["rows"]) == 1
    row = result["rows"][0]
    flops = 4 * 4 * 8 * (96 + 8) * 32  # Hq x queries x (cache + local keys) x D, two matmuls of 2 FLOPs
    for name, cache_bytes in ((OURS, 4), (OURS_FP8, 1), ("sdpa math", 4)):
        r = row[name]
        moved = 2 * 2 * 32 * (96 * cache_bytes + 8 * 4) + 2 * 4 * 8 * 32 * 4
        assert cost(4, 2, 8, 96, 32, cache_bytes, 4) == (flops, moved)
        assert r["tflops"] == pytest.approx(flops / (r["ms"] * 1e-3) / 1e12)
        assert r["peak_pct"] == pytest.approx(100 * r["tflops"] / 989.4)
    assert "| tiny | flow 8 | 96 |" in run.stdout and "% of the dense bf16 peak" in run.stdout
    timed = {k: v["ms"] for k, v in row.items() if isinstance(v, dict) and "ms" in v}
    report("bench/attention.py --dry-run (logic only): " + ", ".join(f"{k} {ms:.1f} ms" for k, ms in timed.items()))


def test_sdpa_baseline_prepares_its_keys_outside_the_timed_call(monkeypatch):
    """The SDPA baselines concatenate [valid cache ++ local keys] once when made, never in the call timed
    (the old in-model form, planted, shows its concatenation in the log)."""
    make = available_methods(dry_run=True)["sdpa math"]
    args = inputs(1, 4, 2, 8, 96, torch.float32, device="cpu", d=32)
    with OpLog() as made:
        call = make(*args)
    with OpLog() as timed:
        got = call()
    assert "cat" in made.ops and "cat" not in timed.ops, timed.ops
    with OpLog() as planted:  # the old in-model baseline: concatenation and repeats inside the call
        torch.nn.functional.scaled_dot_product_attention(args[0], torch.cat([args[1], args[4]], 2).repeat_interleave(
            2, dim=1), torch.cat([args[2], args[5]], 2).repeat_interleave(2, dim=1))
    assert "cat" in planted.ops
    from kernels.reference import block_attention_reference

    assert (got - block_attention_reference(*args)).abs().max() < 1e-5


class RuntimeAmaxLinear(FP8Linear):
    """The old FP8 linear, planted: activations scaled by their amax at run time."""

    def forward(self, x):
        scale = (x.float().abs().amax(dim=-1, keepdim=True) / E4M3_MAX).clamp(min=1e-12)
        xq = (x.float() / scale).to(torch.float8_e4m3fn)
        return torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                                out_dtype=torch.bfloat16) + self.bias


def test_fp8_linear_uses_its_calibrated_static_scale():
    """After `calibrate`, a call is a scale-and-cast and one _scaled_mm: no amax at run time (a planted
    run-time-amax linear is caught); uncalibrated it refuses; the result tracks the bf16 linear."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64)).to(torch.bfloat16)
    x = torch.randn(10, 64, dtype=torch.bfloat16)
    want = net(x).float()
    assert to_fp8(net) == 2
    with pytest.raises(RuntimeError, match="run `calibrate` on sample inputs first"):
        net(x)
    with calibrate(net) as layers:
        net(torch.randn(10, 64, dtype=torch.bfloat16))
    assert all(float(m.input_scale) == pytest.approx(float(m.input_amax) / E4M3_MAX, rel=1e-2) for m in layers)
    with OpLog() as log:
        got = net(x).float()
    assert "amax" not in log.ops and "abs" not in log.ops and log.ops.count("_scaled_mm") == 2, log.ops
    cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), 0).item()
    assert cos > 0.99
    planted = RuntimeAmaxLinear(torch.nn.Linear(64, 128).to(torch.bfloat16))
    with OpLog() as log:
        planted(x)
    assert "amax" in log.ops  # what the check above would catch
    report(f"FP8 linears with static scales: ops per call {sorted(set(log.ops))} planted; cosine to bf16 {cos:.4f}")


def test_gpu_check_kernel_sections_dry_run():
    """bench/kernel_sections.py's two sections on the CPU at tiny: the kernel table's rows (goal, ratios,
    % of peak) and the FP8 flow_step (14 linears calibrated, latents compared)."""
    from bench.gpu_sections import Context
    from bench.kernel_sections import fp8_flow, kernel_timing

    recorded = {}
    ctx = Context(preset="tiny", units=3, device="cpu", dry_run=True, attention="sdpa",
                  record=lambda k, v: recorded.__setitem__(k, v))
    kt = kernel_timing(ctx)
    assert kt["gpu"] == "h100" and kt["goal"] == "tiny flow 8 x 96" and kt["goal_196x16k_speedup"][OURS] == 1.0
    assert set(kt["rows"][0]) >= {OURS, OURS_FP8, "sdpa math"} and recorded["rows"] == kt["rows"]
    f8 = fp8_flow(ctx)
    assert f8["linears_fp8"] > 0 and 0.99 < f8["latent_cosine"] <= 1.0 + 1e-9 and "fp8_ms" in recorded
    report(f"kernel sections dry run: {len(kt['rows'])} row, FP8 flow {f8['linears_fp8']} linears, "
           f"cosine {f8['latent_cosine']:.6f}")
