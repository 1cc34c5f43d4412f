"""bench/gpu_check.py, run as on a GPU machine but on the CPU (--dry-run: tiny, bf16 device path, imports
limited to the GPU image's): the JSON and the markdown hold the headline's measurements; a section that
imports a library the image lacks fails and shows as failed; the deadline kills a section that hangs;
a stopped run keeps what it measured and leaves no section running; no CUDA outside a dry run is a
non-zero exit with a JSON that says so. Plants go in through a
sitecustomize on PYTHONPATH that the section processes load (tests/planted_import.py)."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECK = [sys.executable, "-P", str(ROOT / "bench" / "gpu_check.py")]


def _run(args: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(CHECK + args, cwd="/", capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _plant(tmp_path: Path, target: str, action: str) -> dict:
    """Environment that makes module `target`, once imported in a section's process, `import rich` or hang."""
    folder = tmp_path / "plant"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text((ROOT / "tests" / "planted_import.py").read_text())
    return {"PYTHONPATH": str(folder), "PLANT_TARGET": target, "PLANT_ACTION": action,
            "PLANT_PID": str(tmp_path / "planted.pid")}


def _assert_gone(pid: int) -> None:
    """The planted hung process no longer exists (if it does, it is killed here, then the test fails)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"the hung section process {pid} outlived bench/gpu_check.py")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    run = _run(["--dry-run", "--units", "8", "--prime", "6", "--sections", "env,session", "--out", str(out)])
    return run, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_dry_run_measures_the_headline(dry_run):
    run, results, md = dry_run
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    env, ses = results["sections"]["env"], results["sections"]["session"]
    assert env["status"] == "ok" and {"cuda_home", "nvcc", "gxx"} <= set(env)
    assert ses["status"] == "ok", ses.get("error")
    assert ses["setup"]["precision"] == "bf16" and ses["setup"]["preset"] == "tiny"
    fill = ses["cache_fill"]  # 6 units primed (the default fills the ring: test_the_default_prime_fills_the_ring)
    assert fill["primed_units"] == 6 and fill["tokens"] == 6 * 17 and fill["capacity"] == 16 * 17
    for key in ("step_ms", "cycle_ms", "latency_ms"):
        assert ses[key]["p50"] > 0 and ses[key]["p99"] is None and "no p99" in ses[key]["p99_note"]  # 8 < 200
    assert ses["step_ms"]["n"] == ses["cycle_ms"]["n"] == ses["latency_ms"]["n"] == 8
    phases = ses["phase_ms"]
    summed = {"encode", "think", "handover", "flow", "decode"}
    assert set(phases) == summed | {"performer_lag"}
    assert all(ses["latency_ms"]["p50"] >= phases[p]["p50"] for p in summed)  # the sum of the five
    assert ses["cuda_graphs"] is True  # emulated on the CPU twin
    assert all(c["equal"] for c in ses["bytes_check"].values()), ses["bytes_check"]
    assert ses["plan"]["gpu_key"] == "h100" and ses["plan"]["latency_ms"] > 0
    assert "imports_refused" in ses  # the section ran behind the image's finder
    from planning.budget import LATENCY_DEFINITION

    assert LATENCY_DEFINITION in md and "| model-side latency |" in md  # the plan's definition, once
    assert f"| step time per unit | {ses['step_ms']['p50']:.1f} |" in md
    assert "| h2d |" in md and "(38 % full) after 6 primed units" in md


def test_the_default_prime_fills_the_ring():
    from bench.gpu_session import prime_units
    from model_src.config import get_preset

    for name, units in (("tiny", 16), ("base", 128)):
        p = get_preset(name)
        assert prime_units(p, None) == units == p.sink_units + p.window_units
        assert units * p.tokens_per_unit == p.cache_capacity  # the whole ring
    assert prime_units(get_preset("base"), 3) == 3


def test_a_planted_import_of_rich_fails_the_headline(tmp_path):
    """The mutation: runtime.device.session, on the headline's path, imports rich. Without the finder it
    imports (rich is installed here); behind it the section fails, and the JSON and markdown say so."""
    env = _plant(tmp_path, "runtime.device.session", "import")
    assert importlib.util.find_spec("rich") is not None
    plain = subprocess.run([sys.executable, "-P", "-c", "import runtime.device.session, sys; print('rich' in sys.modules)"],
                           cwd="/", capture_output=True, text=True, timeout=120, env={**os.environ, **env,
                                                                                    "PYTHONPATH": f"{env['PYTHONPATH']}:{ROOT}"})
    assert plain.stdout.strip() == "True", plain.stderr[-2000:]
    run = _run(["--dry-run", "--units", "2", "--sections", "session", "--out", str(tmp_path)], env)
    assert run.returncode == 1, run.stdout[-3000:]
    ses = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["session"]
    assert ses["status"] == "failed" and "No module named 'rich'" in ses["error"]
    assert "not in the GPU image" in ses["error"] and "rich" in ses["imports_refused"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| session | FAILED |" in md and "No module named 'rich'" in md


def test_the_deadline_kills_a_hung_section(tmp_path):
    env = _plant(tmp_path, "runtime.device.session", "hang")
    t0 = time.monotonic()
    run = _run(["--dry-run", "--deadline-s", "15", "--sections", "session", "--out", str(tmp_path)], env, timeout=120)
    took = time.monotonic() - t0
    assert run.returncode == 1, run.stdout[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    ses = results["sections"]["session"]
    assert ses["status"] == "timed out" and "deadline" in ses["error"], ses
    assert took < 15 + 15, took  # the deadline counts from the process start; killing takes a moment
    assert (tmp_path / "planted.pid").exists(), "the section was killed before it reached the planted hang"
    _assert_gone(int((tmp_path / "planted.pid").read_text()))  # its group was killed
    assert "| session | TIMED OUT |" in (tmp_path / "gpu_check.md").read_text()


def test_a_stopped_run_keeps_its_measurements_and_takes_its_section_with_it(tmp_path):
    """The headline hangs where it computes the plan, after measuring (planning.report's import): the
    measurements are in the JSON already. SIGTERM to bench/gpu_check.py (a tool's timeout) then kills the
    section's process group too (no orphan left on the GPU), and the JSON says it was interrupted."""
    env = _plant(tmp_path, "planning.report", "hang")
    proc = subprocess.Popen(CHECK + ["--dry-run", "--units", "2", "--prime", "1", "--sections", "session", "--out",
                                     str(tmp_path)], cwd="/", env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid_file, t0 = tmp_path / "planted.pid", time.monotonic()
    while not pid_file.exists() and time.monotonic() - t0 < 90 and proc.poll() is None:
        time.sleep(0.2)
    assert pid_file.exists(), "the section never reached the planted hang"
    proc.terminate()
    assert proc.wait(timeout=30) == 128 + 15
    _assert_gone(int(pid_file.read_text()))
    ses = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["session"]
    assert ses["status"] == "interrupted" and "SystemExit" in ses["error"]
    assert ses["step_ms"]["n"] == ses["latency_ms"]["n"] == 2 and "bytes_check" in ses and "plan" not in ses
    assert "| session | interrupted |" in (tmp_path / "gpu_check.md").read_text()


def test_no_cuda_is_an_error_with_a_json(tmp_path):
    run = _run(["--sections", "env", "--out", str(tmp_path)])
    assert run.returncode == 4, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "no CUDA device" in results["no_cuda"] and results["sections"]["env"]["cuda_available"] is False
    assert "**No CUDA device**" in (tmp_path / "gpu_check.md").read_text()


def test_unknown_gpus_have_no_datasheet_entry():
    """A GPU planning/gpus.toml has no entry for is named and left unpriced, never priced as an H100."""
    from bench.gpu_report import markdown
    from bench.gpu_sections import datasheet_key
    from planning.budget import gpus

    known = {"NVIDIA H100 80GB HBM3": "h100", "NVIDIA H100 PCIe": "h100-pcie", "NVIDIA H200": "h200",
             "NVIDIA A100-SXM4-80GB": "a100", "NVIDIA L40S": "l40s", "NVIDIA L4": "l4", "NVIDIA B200": "b200"}
    assert {n: datasheet_key(n) for n in known} == known and set(known.values()) <= set(gpus())
    for name in ("NVIDIA H100 NVL", "NVIDIA GH200 480GB", "NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-40GB",
                 "NVIDIA L40", "NVIDIA H200 NVL", "NVIDIA RTX 6000 Ada Generation", "NVIDIA H100"):
        assert datasheet_key(name) is None, name
    results = {"sections": {"env": {"status": "ok", "gpu": "NVIDIA H100 NVL", "plan_key": "no datasheet entry"},
                            "session": {"status": "ok", "setup": {"preset": "base", "units": 200},
                                        "plan": {"skipped": "NVIDIA H100 NVL: no datasheet entry in planning/gpus.toml"}}}}
    md = markdown(results)
    assert "planning/gpus.toml entry: no datasheet entry" in md and "Plan: NVIDIA H100 NVL: no datasheet entry" in md


def test_the_report_shows_failures_and_absent_columns():
    """A failed build's rc and output reach the markdown; flash-attn's column stays, "not installed"; a
    p99 of fewer than 200 samples is the max, said so."""
    from bench.gpu_report import markdown
    from bench.gpu_session import summary

    assert summary(list(range(1, 201)))["p99"] is not None
    few = summary([1.0, 2.0, 3.0])
    assert few["p99"] is None and few["max"] == 3.0 and "no p99" in few["p99_note"]
    row = {"preset": "base", "queries": "flow 196", "keys": 4096, "triton (ours)": {"ms": 0.1}}
    results = {"sections": {"env": {"status": "ok", "flash_attn": "not installed"},
                            "kernel_timing": {"status": "ok", "rows": [row]},
                            "engines": {"status": "failed", "error": "RuntimeError: streamer build ... rc 1",
                                        "build_rc": 1, "build_error": "PlacementError: stage audio_enc"},
                            "session": {"status": "ok", "setup": {"units": 3}, "step_ms": few}}}
    md = markdown(results)
    assert "| engines | FAILED |" in md and "build rc 1" in md and "PlacementError: stage audio_enc" in md
    assert "| triton (ours) | flash-attn |" in md and "| 0.100 | not installed |" in md
    assert "max 3.0 (n = 3, no p99)" in md
