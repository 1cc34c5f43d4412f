"""`streamer plan`: FLOPs counted on meta tensors, the bus formula (the same numbers as the ledger), the
GPU table, the verdict; and bench/gpu_check.py's logic in its CPU dry run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import report
from model_src.config import get_preset
from planning.count import count_stages
from planning.traffic import unit_traffic
from streamer.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_counted_flops_match_the_transformer_arithmetic():
    """thinker_step's FLOPs on meta tensors against 2 * tokens * weights + the attention over a full cache."""
    p = get_preset("small")
    costs = {c.name: c for c in count_stages(p, "bf16")}
    layer_weights = p.n_layers * (p.hidden * (p.n_heads + 2 * p.n_kv_heads) * p.head_dim
                                  + p.n_heads * p.head_dim * p.hidden + 3 * p.hidden * p.intermediate)
    prefix = p.tokens_per_unit - p.text_out_tokens
    attention = 4 * p.n_layers * p.n_heads * p.head_dim * prefix * (p.cache_capacity + prefix)
    dense = 2 * prefix * layer_weights
    low, high = dense + attention, 1.15 * (dense + attention)  # + 2 text tokens, LM head, projections
    flow = costs["flow_step"]
    report(f"plan count small bf16: thinker_step {costs['thinker_step'].flops / 1e12:.3f} TFLOP (arithmetic "
           f"{low / 1e12:.3f}+), flow_step {flow.flops / 1e12:.3f} TFLOP x {flow.calls_per_unit}")
    assert low <= costs["thinker_step"].flops <= high
    assert costs["thinker_step"].cache_bytes == pytest.approx(3 * 2 * p.n_layers * p.n_kv_heads * p.cache_capacity
                                                              * p.head_dim * 2)  # 3 passes read the bf16 cache
    assert flow.calls_per_unit == p.flow_steps


def test_plan_verdicts_and_refusals(tmp_path, capsys):
    path = tmp_path / "plan.json"
    assert main(["plan", "--preset", "tiny", "--gpu", "h100", "--json", str(path)]) == 0
    plan = json.loads(path.read_text())
    assert plan["realtime"] and plan["fits"] and plan["unit_ms"] < 160
    assert set(plan["stages"]) == {"audio_enc", "video_enc", "thinker_step", "flow_step", "audio_dec", "video_dec"}
    assert plan["bytes_per_unit"]["h2d"] < plan["host_path_bytes_per_unit"]["h2d"]  # the cache no longer crosses
    assert "REAL TIME" in capsys.readouterr().out
    assert main(["plan", "--preset", "tiny", "--gpu", "h999"]) == 2
    assert "unknown GPU 'h999'" in "".join(capsys.readouterr())
    assert main(["plan", "--preset", "tiny", "--gpu", "a100", "--precision", "fp8"]) == 2
    assert "no FP8 tensor cores" in "".join(capsys.readouterr())


def test_the_plans_bus_formula_is_the_ledgers(tiny_ort_engines):
    """The bytes `streamer plan` predicts per unit are the bytes the device path's ledger counts."""
    import numpy as np

    from runtime.device_session import DeviceSession
    from unitio.media import split_units, synthetic_input

    p = get_preset("tiny")
    audio, frames = synthetic_input(p, 5, 0)
    with DeviceSession(tiny_ort_engines, device="cpu", threads=1) as session:
        for a, f in split_units(audio, frames, p, 5):
            session.step(a, f)
        counted = list(session.ledger.units)[2]
    want = unit_traffic(p, "one-gpu", "fp32")
    assert {d: counted[d] for d in ("h2d", "d2h", "d2d")} == {d: want[d] for d in ("h2d", "d2h", "d2d")}
    assert np.isfinite(list(want.values())).all()


def test_gpu_check_dry_run(tmp_path):
    """bench/gpu_check.py's sections at tiny on the CPU (the script's logic; a GPU run measures)."""
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--units", "3",
                          "--sections", "env,session,stage_attention", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    session = results["sections"]["session"]
    assert "error" not in session, session
    assert session["units"] == 3 and session["bytes_per_unit"]["h2d"] > 0
    assert set(results["sections"]["stage_attention"]["speedup"]) == {"thinker_step", "flow_step"}
    assert "| per unit p50 / p99 (ms) |" in (tmp_path / "gpu_check.md").read_text()
