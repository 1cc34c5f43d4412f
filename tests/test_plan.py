"""`streamer plan`: FLOPs counted on meta tensors, the bus formula (the same numbers as the ledger), the
GPU table, the verdict, a stage as the sum of its kernels, launch costs, FP8 pricing, measured
efficiencies, sessions per GPU, every documented plan command; and bench/gpu_check.py's logic in its
CPU dry run."""
import dataclasses
import json
import math
import shlex
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
    said = "".join(capsys.readouterr())
    assert "unknown GPU 'h999'" in said and "'h100'" in said and "'h200'" in said  # the known keys, listed
    from planning.budget import known_gpu
    assert known_gpu("h100") and not known_gpu("h999") and not known_gpu("measured")
    assert main(["plan", "--preset", "tiny", "--gpu", "a100", "--precision", "fp8"]) == 2
    assert "no FP8 tensor cores" in "".join(capsys.readouterr())
    for bad, says in ((["--batch", "0"], "expected at least 1 session per call"),
                      (["--sessions", "0"], "expected at least 1"), (["--precision", "fp4"], "expected fp32, bf16")):
        assert main(["plan", "--preset", "tiny", *bad]) == 2
        assert says in "".join(capsys.readouterr())


def test_the_plans_bus_formula_is_the_ledgers(tiny_ort_engines):
    """The bytes `streamer plan` predicts per unit are the bytes the device path's ledger counts."""
    import numpy as np

    from runtime.device.session import DeviceSession
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


# bench/gpu_check.py's dry run: tests/test_gpu_check.py


# --- the honest plan ------------------------------------------------------------------------------------

def _independent_sum(stage, gpu: dict, precision: str) -> float:
    """Sum over the stage's kernels of max(compute, memory) at peak, recomputed here from the counts."""
    total = 0.0
    for k in stage.cost.kernels:
        peak = gpu["tflops_tf32"] if k.codec else gpu["tflops_bf16"]
        if k.kind == "gemm" and not k.codec and precision == "fp8" and not k.lm_head:
            peak = gpu["tflops_fp8"]
        total += max(1e3 * k.flops / (peak * 1e12), 1e3 * k.bytes / (gpu["hbm_gbps"] * 1e9))
    return total


def _check_sum(stage, gpu: dict, precision: str) -> None:
    assert stage.roofline_ms == pytest.approx(_independent_sum(stage, gpu, precision), rel=1e-9), stage.cost.name
    assert stage.roofline_ms >= stage.whole_stage_ms * (1 - 1e-12), stage.cost.name


def test_a_stage_is_the_sum_of_its_kernels():
    """Kernels on one stream do not overlap: a stage's time is the sum of its kernels' max(compute, memory),
    never below the former max over the whole stage; the thinker's memory-bound text_out passes and
    weight reads add to its compute-bound prefix attention."""
    from planning.budget import make_plan

    plan = make_plan(get_preset("base"), "h100", "bf16", measured={})
    for s in plan.stages:
        _check_sum(s, plan.gpu, "bf16")
    think = {s.cost.name: s for s in plan.stages}["thinker_step"]
    parts = {(q.part, q.kind): q for q in think.parts}
    assert parts[("pass 1 (250 tokens)", "attention")].bound == "compute"
    assert parts[("pass 2 (1 token)", "gemm")].bound == "memory" and ("LM head", "gemm") in parts
    assert think.roofline_ms > 1.05 * think.whole_stage_ms
    elementwise = [k for s in plan.stages for k in s.cost.kernels if k.kind == "elementwise"]
    assert elementwise and all(k.flops == 0 and k.bytes > 0 for k in elementwise)
    video_dec = {s.cost.name: s for s in plan.stages}["video_dec"]
    assert sum(k.bytes for k in video_dec.cost.kernels if k.kind == "elementwise") > video_dec.cost.weight_bytes
    report(f"plan base bf16 H100: thinker_step sum of kernels {think.roofline_ms:.2f} ms against the whole-stage "
           f"max {think.whole_stage_ms:.2f} ms at peak; {plan.launches_per_unit} kernels per unit")
    overlapped = dataclasses.replace(think, roofline_ms=think.whole_stage_ms)  # the former max(compute, memory)
    with pytest.raises(AssertionError):
        _check_sum(overlapped, plan.gpu, "bf16")


def test_a_fused_elementwise_chain_reads_once_and_writes_what_is_read_later():
    """norm -> SiLU -> residual add between two linears is one kernel: it reads h and the norm weight once
    and writes only its result (its 8 aten ops' intermediates stay on chip); each GEMM reads its input
    and weight and writes its output."""
    import torch
    from torch import nn

    from model_src.backbone import RMSNorm
    from planning.ops import Recorder, fuse

    lin1, norm, lin2 = (m.to("meta") for m in (nn.Linear(64, 128, bias=False), RMSNorm(128, 1e-6),
                                                nn.Linear(128, 32, bias=False)))
    weights = {id(p) for m in (lin1, norm, lin2) for p in m.parameters()}
    x = torch.empty(10, 64, device="meta")
    rec = Recorder(weights)
    with torch.no_grad(), rec:
        h = lin1(x)
        y = lin2(torch.nn.functional.silu(norm(h)) + h)
    first, chain, second = fuse(rec.ops, [y], weights, 1.0, 1.0)
    f32 = 4
    assert (first.kind, chain.kind, second.kind) == ("gemm", "elementwise", "gemm") and chain.ops > 3
    assert first.bytes == f32 * (10 * 64 + 64 * 128 + 10 * 128) and first.flops == 2 * 10 * 64 * 128
    assert chain.bytes == f32 * (10 * 128 + 128 + 10 * 128) and chain.weight_bytes == f32 * 128
    assert second.bytes == f32 * (10 * 128 + 128 * 32 + 10 * 32)


def _kernel_list(costs) -> list:
    return [(c.name, c.flops, c.bytes, c.weight_bytes, c.cache_bytes, c.largest_activation,
             [(k.part, k.kind, k.flops, k.bytes, k.weight_bytes, k.cache_bytes, k.launches) for k in c.kernels])
            for c in costs]


def test_replayed_layers_count_what_running_every_layer_counts(monkeypatch):
    """Recording decoder layer 0 and replaying it for the others gives exactly the kernels of running every
    layer (tiny: 2 layers); a replay that forgets to rewire the copied layer's input and output is caught."""
    import planning.count as count
    import planning.ops as ops

    p = get_preset("tiny")
    replayed = _kernel_list(count._count_stages.__wrapped__(p, "bf16"))
    monkeypatch.setattr(count, "REPLICATE_LAYERS", False)
    assert replayed == _kernel_list(count._count_stages.__wrapped__(p, "bf16"))
    monkeypatch.setattr(count, "REPLICATE_LAYERS", True)
    replay = ops.Recorder.replay
    monkeypatch.setattr(ops.Recorder, "replay", lambda self, s, e, i, o, ni, no: replay(self, s, e, i, o, i, o))
    assert replayed != _kernel_list(count._count_stages.__wrapped__(p, "bf16"))


def test_launch_cost_only_without_graphs():
    """launch_us moves the plan without graphs only; graph_launch_us with graphs only."""
    from planning.budget import make_plan

    p = get_preset("tiny")

    def plan(graphs: bool, **figures):
        measured = {"h100": {**figures, "source": "test"}} if figures else {}
        return make_plan(p, "h100", "bf16", graphs=graphs, measured=measured)

    g0, n0 = plan(True), plan(False)
    assert plan(True, launch_us=50.0).unit_ms == g0.unit_ms
    slow = plan(False, launch_us=50.0)
    assert slow.unit_ms > n0.unit_ms
    assert slow.resources_ms["host launches"] == pytest.approx(slow.launches_per_unit * 50e-3)
    assert plan(False, graph_launch_us=100.0).unit_ms == n0.unit_ms
    assert plan(True, graph_launch_us=100.0).unit_ms > g0.unit_ms
    assert n0.unit_ms > g0.unit_ms  # tiny's kernels are shorter than a launch


def _check_fp8_pricing(costs_fp8, costs_bf16, gpu: dict) -> None:
    from planning.budget import kernel_ms

    attention = [k for c in costs_fp8 for k in c.kernels if k.kind == "attention"]
    gemms = [k for c in costs_fp8 for k in c.kernels if k.kind == "gemm" and not k.codec]
    assert attention and any(k.lm_head for k in gemms) and any(not k.lm_head for k in gemms)
    for k in attention:  # FP8 cache, bf16 arithmetic
        assert kernel_ms(k, gpu, "fp8", None)[0] == pytest.approx(1e3 * k.flops / (gpu["tflops_bf16"] * 1e12))
    for k in gemms:
        peak = gpu["tflops_bf16"] if k.lm_head else gpu["tflops_fp8"]
        assert kernel_ms(k, gpu, "fp8", None)[0] == pytest.approx(1e3 * k.flops / (peak * 1e12))
    cache8 = sum(c.cache_bytes for c in costs_fp8)
    assert cache8 == pytest.approx(sum(c.cache_bytes for c in costs_bf16) / 2)  # 1-byte cache


def test_fp8_attention_is_priced_at_bf16_peak(monkeypatch):
    """Our kernel computes in bf16 over the FP8 cache: its FLOPs at bf16 peak, its cache bytes at 1 byte;
    FP8 GEMMs at FP8 peak, the LM head (kept bf16) at bf16. A planted all-FP8 pricing is caught."""
    import planning.budget as budget

    p, gpu = get_preset("tiny"), budget.resolve_gpu("h100")
    fp8, bf16 = count_stages(p, "fp8"), count_stages(p, "bf16")
    _check_fp8_pricing(fp8, bf16, gpu)
    monkeypatch.setattr(budget, "_peak_tflops", lambda k, g, precision: g["tflops_fp8" if precision == "fp8" else "tflops_bf16"])
    with pytest.raises(AssertionError):
        _check_fp8_pricing(fp8, bf16, gpu)


def test_measured_efficiencies_change_the_plan(tmp_path, monkeypatch, capsys):
    """A [measured.<gpu>] table, in gpus.toml or in a --measured file, replaces the assumed figure and is
    named as the source; a malformed one is refused with what was expected."""
    import planning.budget as budget

    base, measured = tmp_path / "base.json", tmp_path / "measured.toml"
    assert main(["plan", "--preset", "tiny", "--gpu", "h100", "--json", str(base)]) == 0
    measured.write_text('[measured.h100]\nmemory = 0.4\nsource = "a test run"\n')
    assert main(["plan", "--preset", "tiny", "--gpu", "h100", "--measured", str(measured), "--json", str(base) + "2"]) == 0
    before, after = json.loads(base.read_text()), json.loads(Path(str(base) + "2").read_text())
    def elementwise(plan):  # pure memory traffic: its time is inverse to the memory efficiency
        return sum(q["expected_ms"] for s in plan["stages"].values() for q in s["parts"] if q["kind"] == "elementwise")

    assert elementwise(after) == pytest.approx(2 * elementwise(before))  # 80 % -> 40 % of peak HBM
    assert after["unit_ms"] > before["unit_ms"]
    assert any(a["source"] == "measured: a test run" and a["value"].startswith("40%") for a in after["assumptions"])
    as_json = tmp_path / "measured.json"  # the JSON form of the same file
    as_json.write_text(json.dumps({"measured": {"h100": {"memory": 0.4, "source": "a test run"}}}))
    assert main(["plan", "--preset", "tiny", "--measured", str(as_json), "--json", str(base)]) == 0
    assert json.loads(base.read_text())["unit_ms"] == pytest.approx(after["unit_ms"])
    table = tmp_path / "gpus.toml"  # the same table inside gpus.toml
    table.write_text(budget.GPU_FILE.read_text() + '\n[measured.h100]\nmemory = 0.4\nsource = "in the table"\n')
    monkeypatch.setattr(budget, "GPU_FILE", table)
    assert budget.make_plan(get_preset("tiny"), "h100").unit_ms == pytest.approx(after["unit_ms"])
    assert "measured" not in budget.gpus()
    capsys.readouterr()
    for bad, says in (('[measured.h100]\nmemory = 1.5\nsource = "x"\n', "expected a fraction in (0, 1]"),
                      ('[measured.h100]\nmemory = 0.5\n', "needs a `source`"),
                      ('[measured.h100]\nspeed = 0.5\nsource = "x"\n', "expected one of")):
        measured.write_text(bad)
        assert main(["plan", "--preset", "tiny", "--measured", str(measured)]) == 2
        assert says in "".join(capsys.readouterr())


def test_batch_and_sessions_through_the_cli(tmp_path, capsys):
    """--batch B shares the weight reads and scales the rest; the largest real-time B is the last one
    whose plan holds 160 ms and fits; --sessions N asks for ceil(N / B_max) GPUs."""
    from planning.budget import kernel_ms, make_plan

    path = tmp_path / "plan.json"
    assert main(["plan", "--preset", "base", "--gpu", "h100", "--batch", "2", "--sessions", "10",
                 "--json", str(path)]) == 0
    said = capsys.readouterr().out
    plan = json.loads(path.read_text())
    b_max, gpus = plan["batch"]["b_max"], plan["batch"]["gpus"]
    assert plan["sessions_per_call"] == 2 and b_max >= 1 and gpus == math.ceil(10 / b_max)
    assert f"at most B = {b_max}" in said and f"10 concurrent sessions: {gpus} x" in said
    p = get_preset("base")
    at, over, one = (make_plan(p, "h100", batch=b) for b in (b_max, b_max + 1, 1))
    assert at.realtime and not over.realtime
    assert at.unit_ms == pytest.approx(plan["batch"]["b_max_unit_ms"])
    m1, m2 = one.memory["thinker+performer"], make_plan(p, "h100", batch=2).memory["thinker+performer"]
    assert m2["weights"] == m1["weights"] and m2["caches"] == 2 * m1["caches"] and m2["states"] == 2 * m1["states"]
    gemm = next(k for s in one.stages for k in s.cost.kernels if k.kind == "gemm" and k.weight_bytes)
    memory1, memory2 = kernel_ms(gemm, one.gpu, "bf16", None, 1)[1], kernel_ms(gemm, one.gpu, "bf16", None, 2)[1]
    assert memory2 - memory1 == pytest.approx(memory1 * (gemm.bytes - gemm.weight_bytes) / gemm.bytes)
    assert kernel_ms(gemm, one.gpu, "bf16", None, 2)[0] == pytest.approx(2 * kernel_ms(gemm, one.gpu, "bf16", None, 1)[0])
    report(f"plan base bf16 H100: B_max {b_max} ({at.unit_ms:.1f} ms per unit), 10 sessions -> {gpus} GPUs")


def _documented_plan_commands() -> list[str]:
    commands = []
    for doc in (ROOT / "README.md", ROOT / "docs" / "BENCHMARKS.md"):
        for line in doc.read_text().splitlines():
            line = line.strip()
            if line.startswith("streamer plan"):
                commands.append(line.split("  #")[0].strip())
    return commands


def test_every_documented_plan_command_runs(capsys, tmp_path, monkeypatch):
    """Each `streamer plan` command in README.md and docs/BENCHMARKS.md runs through the CLI (in a folder
    holding the measured.toml that `python -m planning.measured` would write), and the tables the
    markdown one prints are the tables BENCHMARKS shows."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "measured.toml").write_text('[measured.h100]\ncodec = 0.15\nsource = "a gpu_check run"\n')
    commands = _documented_plan_commands()
    assert any("--markdown" in c for c in commands) and len(commands) >= 2
    benchmarks = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    for command in commands:
        capsys.readouterr()
        assert main(shlex.split(command)[1:]) == 0, command
        said = capsys.readouterr().out
        if "--markdown" in command:
            rows = [r for r in said.splitlines() if r.startswith("| ") and "---" not in r]
            assert rows and all(r in benchmarks for r in rows), [r for r in rows if r not in benchmarks]


def test_planning_imports_only_what_the_gpu_image_has():
    """planning/ (imported by bench/gpu_check.py on the GPU image) uses torch, numpy, tomllib, the standard
    library and this repo's model_src/unitio: no rich, no safetensors."""
    import ast

    allowed = set(sys.stdlib_module_names) | {"torch", "numpy", "model_src", "unitio", "planning"}
    for path in sorted((ROOT / "planning").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_gpu_check_phases_fit_back_to_the_efficiencies(tmp_path, capsys):
    """A session measured at codec 12 % and attention 35 % (made here from a plan at those figures, in
    gpu_check.json's shape) fits back to them, and the written file plans the same unit."""
    from planning import measured
    from planning.budget import make_plan

    p = get_preset("base")
    truth = make_plan(p, "h100", measured={"h100": {"codec": 0.12, "attention": 0.35, "source": "truth"}})
    by = {s.cost.name: s.per_unit_ms for s in truth.stages}
    phases = {"encode": by["audio_enc"] + by["video_enc"], "think": by["thinker_step"], "flow": by["flow_step"],
              "decode": by["audio_dec"] + by["video_dec"]}
    check = {"sections": {"session": {"status": "ok", "setup": {"preset": "base", "precision": "bf16"},
                                      "cuda_graphs": True, "plan": {"gpu_key": "h100"},
                                      "phase_ms": {k: {"p50": v} for k, v in phases.items()}}}}
    key, table, notes = measured.from_gpu_check(check)
    assert key == "h100" and not notes
    assert table["codec"] == pytest.approx(0.12, abs=1e-3) and table["attention"] == pytest.approx(0.35, abs=1e-3)
    (tmp_path / "gpu_check.json").write_text(json.dumps(check))
    path = tmp_path / "measured.toml"  # the documented command: python -m planning.measured gpu_check.json --out F
    assert measured.main([str(tmp_path / "gpu_check.json"), "--out", str(path)]) == 0
    assert path.read_text() == measured.to_toml(key, table)
    out = tmp_path / "plan.json"
    assert main(["plan", "--preset", "base", "--gpu", "h100", "--measured", str(path), "--json", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["unit_ms"] == pytest.approx(truth.unit_ms, rel=1e-3)
    (tmp_path / "check.json").write_text(json.dumps({"sections": {"session": {"status": "failed"}}}))
    capsys.readouterr()
    assert measured.main([str(tmp_path / "check.json"), "--out", str(path)]) == 2
    assert "nothing measured to fit" in capsys.readouterr().err
