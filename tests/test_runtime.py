"""The thinker-performer runtime on the tiny ONNX Runtime engines: pipelined == sequential bitwise,
failures of the performer, Ctrl-C, live pacing with missing input, flat memory, bench/profile."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_same_outputs, report
from runtime.bench import rss_bytes
from runtime.live import LiveInput, replay, run_live
from runtime.order import PerformerError
from runtime.host.session import EngineSession
from streamer.cli import main
from unitio.media import split_units, synthetic_input
from unitio.units import InputError


def _units(spec, n, seed=0):
    audio, frames = synthetic_input(spec, n, seed)
    return split_units(audio, frames, spec, n)


def _stream(engines, mode, units, seed=7):
    with EngineSession(engines, seed=seed, threads=1, mode=mode) as session:
        results = [session.step(a, f, text_in=np.full(session.spec.text_in_tokens, k % 5 + 1))
                   for k, (a, f) in enumerate(units)]
        last = session.flush()
    return results, last


def test_pipelined_equals_sequential_bitwise(tiny_ort_engines):
    """Same engines, inputs and seed: the two-process schedule gives bitwise the same tokens, audio, frames."""
    with EngineSession(tiny_ort_engines) as probe:
        units = _units(probe.spec, 12)
    (seq, seq_last), (pipe, pipe_last) = (_stream(tiny_ort_engines, m, units) for m in ("sequential", "pipelined"))
    assert_same_outputs(seq, pipe, seq_last, pipe_last)
    assert any(np.abs(r.audio).max() > 0 for r in seq[1:])  # not trivially equal
    report("runtime: pipelined == sequential bitwise over 12 tiny units (tokens, audio, frames)")


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_failed_performer_is_noticed_reported_and_reaped(tiny_ort_engines, how):
    with EngineSession(tiny_ort_engines, threads=1, mode="pipelined", performer_timeout_s=1.0) as session:
        units = _units(session.spec, 4)
        for a, f in units[:2]:
            session.step(a, f)
        pid, shm = session.performer.process.pid, Path("/dev/shm") / session.performer.slots.name.lstrip("/")
        assert shm.exists()
        os.kill(pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        t0 = time.perf_counter()
        with pytest.raises(PerformerError, match="died" if how == "killed" else "hung: no answer after 1.0 s"):
            for a, f in units[2:]:  # unit 2 may still get y_1 (sent before the signal); y_2 never comes
                session.step(a, f)
        noticed = time.perf_counter() - t0
    assert noticed < (1.0 if how == "killed" else 3.0), noticed
    assert session.performer.process.returncode is not None  # reaped: no zombie
    assert not shm.exists()  # shared memory freed
    report(f"runtime: performer {how} -> PerformerError after {1000 * noticed:.0f} ms, process reaped")


def test_ctrl_c_stops_thinker_and_performer(tiny_ort_engines, tmp_path):
    cmd = [sys.executable, "-m", "streamer.cli", "run", "--engines", str(tiny_ort_engines), "--live",
           "--units", "200", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.time() + 60
    while time.time() < deadline and not children.read_text().split():
        time.sleep(0.1)
    performer = int(children.read_text().split()[0])
    time.sleep(2.0)  # streaming by now
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the whole process group
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    deadline = time.time() + 5
    while time.time() < deadline and not _dead(performer):
        time.sleep(0.05)
    assert _dead(performer)


def test_live_mode_fills_missing_input_and_never_stalls(tiny_ort_engines):
    with EngineSession(tiny_ort_engines, threads=1, mode="pipelined") as session:
        units = _units(session.spec, 12)
        units[7] = (units[7][0][:-1], units[7][1])  # a malformed unit from the capture side
        source, outputs = LiveInput(), []
        t0 = time.perf_counter()
        replay(units, source, session.spec.unit_ms / 1000, t0, drop={3, 4})
        stats = run_live(session, source, len(units), outputs.append, t0)
        wall = time.perf_counter() - t0
    assert (stats.units, stats.missing, stats.rejected) == (12, 2, 1)
    assert [o.unit_index for o in outputs] == list(range(12))
    assert wall < 12 * 0.160 + 1.0  # paced, and no stall on the missing units
    report(f"runtime live (tiny, pipelined): model-side latency p50 {np.median(stats.latency_ms):.1f} ms, "
           f"missing {stats.missing}, rejected {stats.rejected}")


def test_bad_input_leaves_a_pipelined_session_untouched(tiny_ort_engines):
    with EngineSession(tiny_ort_engines, threads=1, mode="pipelined") as session:
        units = _units(session.spec, 3)
        session.step(*units[0])
        with pytest.raises(InputError, match="expected mono"):
            session.step(np.stack([units[1][0]] * 2), units[1][1])
        assert session.unit_index == 1
        r = session.step(*units[1])
    with EngineSession(tiny_ort_engines, threads=1, mode="sequential") as reference:
        expected = [reference.step(a, f) for a, f in units[:2]][1]
    np.testing.assert_array_equal(expected.audio, r.audio)  # as if the bad unit never came


def test_memory_stays_flat_over_2500_units(tiny_ort_engines):
    """The sink + ring-window cache and the span ring keep both processes' peak memory where it was at 500
    (the hour-long soak, bench/soak.py, goes to 22,500 units: docs/BENCHMARKS.md)."""
    with EngineSession(tiny_ort_engines, threads=1, mode="pipelined") as session:
        units = _units(session.spec, 8)
        performer = session.performer.process.pid
        peaks = {}
        for k in range(2500):
            session.step(*units[k % len(units)])
            if k + 1 in (500, 2500):
                peaks[k + 1] = (rss_bytes(), rss_bytes(performer))
        assert session.cache.length[0] == session.cache.k.shape[3]  # the window has wrapped many times
    (t500, p500), (t_end, p_end) = peaks[500], peaks[2500]
    report(f"runtime memory, tiny pipelined: peak RSS thinker {t500 / 2**20:.1f} -> {t_end / 2**20:.1f} MiB, "
           f"performer {p500 / 2**20:.1f} -> {p_end / 2**20:.1f} MiB (500 -> 2500 units)")
    assert t_end - t500 < 2 * 2**20 and p_end - p500 < 2 * 2**20


def test_bench_and_profile_commands(tiny_ort_engines, tmp_path, capsys):
    summary, png, trace = tmp_path / "bench.json", tmp_path / "timeline.png", tmp_path / "trace.json"
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    for path in (summary, png, trace):  # links planted at the names the user gives: replaced, never followed
        path.symlink_to(victim)
    assert main(["bench", "--engines", str(tiny_ort_engines), "--units", "6", "--json", str(summary),
                 "--timeline", str(png)]) == 0
    data = json.loads(summary.read_text())
    assert [m["mode"] for m in data["modes"]] == ["sequential", "pipelined"]
    assert data["bitwise_equal"] == {"pipelined": True} and data["throughput_ratio"]["pipelined"] > 0
    assert all(m["unit_ms"]["p50"] > 0 and m["latency_ms"]["p99"] >= m["latency_ms"]["p50"] for m in data["modes"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["profile", "--engines", str(tiny_ort_engines), "--units", "4", "--out", str(trace)]) == 0
    events = json.loads(trace.read_text())["traceEvents"]
    names = {(e["cat"], e["name"]) for e in events if e["ph"] == "X"}
    assert {("thinker", "encode"), ("thinker", "think"), ("performer", "solve"), ("thinker", "decode")} <= names
    assert victim.read_bytes() == b"precious" and not any(p.is_symlink() for p in (summary, png, trace))


def test_the_performer_never_imports_from_the_working_directory(tiny_ort_engines, tmp_path, monkeypatch):
    """A `struct.py` planted in the current folder (the performer imports struct) never runs in the child."""
    marker = tmp_path / "planted-module-ran"
    (tmp_path / "struct.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom _struct import *\n")
    monkeypatch.chdir(tmp_path)
    with EngineSession(tiny_ort_engines, threads=1, mode="pipelined") as session:
        for a, f in _units(session.spec, 2):
            session.step(a, f)
        session.flush()
    assert not marker.exists()
    report("runtime: a struct.py planted in the working directory is not imported by the performer")


def test_nan_in_a_stage_output_stops_the_session_naming_the_stage(tiny):
    import torch

    from calibration.torch_engines import torch_parts
    from model_src.system import build_system
    from runtime.engine import StageOutputError

    system = build_system(tiny, seed=0)
    with torch.no_grad():
        next(system.audio_vae.decoder.parameters()).fill_(float("nan"))
    session = EngineSession.in_process(*torch_parts(system))
    units = _units(session.spec, 2)
    session.step(*units[0])  # unit 0 decodes nothing
    with pytest.raises(StageOutputError, match="audio_dec produced NaN/Inf in 'wave' at unit 0"):
        session.step(*units[1])


def test_a_performer_hanging_at_start_is_caught_by_the_timeout(monkeypatch):
    """Start-up is bounded too (10x --performer-timeout): a child that never says READY is refused, killed."""
    import runtime.worker as worker

    def sleeper(module, config, fd):  # a performer that hangs while loading its engines
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], pass_fds=(fd,))

    monkeypatch.setattr(worker, "start_child", sleeper)
    released = []
    handle = worker.WorkerProcess(release=lambda: released.append(1))
    t0 = time.perf_counter()
    with pytest.raises(PerformerError, match="hung: no answer after 2.0 s starting"):
        handle.start("runtime.host.performer", {}, timeout_s=0.2)
    assert time.perf_counter() - t0 < 10 and handle.process.returncode is not None  # killed and reaped
    assert released == [1]  # the shared buffer freed once


def test_concurrent_sessions_do_not_claim_the_same_performer_core():
    from runtime.child import claim_core

    first, second = claim_core(), claim_core()
    try:
        assert first.core is not None and first.core != second.core
    finally:
        first.release()
        second.release()
