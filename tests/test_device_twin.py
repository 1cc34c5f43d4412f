"""The CPU twin of the GPU data path, in the forms the GPU runs it: bf16/fp16 builds (in-process torch stage
modules in that dtype on the device path) against the fp32 reference session, emulated CUDA graphs and
deferred streams (runtime/device/twin.py), with a bug of each class planted back to show the check
catches it."""
import numpy as np
import pytest
import torch

from calibration.torch_engines import torch_device_parts, torch_parts
from helpers import assert_same_outputs, report
from model_src.system import build_system
from model_src.weights import embedded_weights, load_weights
from runtime.device.session import DeviceSession
from runtime.host.session import EngineSession
from unitio.media import split_units, synthetic_input

UNITS = 6
SEED = 7


def _trained(preset, dtype=torch.float32):
    """The tiny preset with its shipped trained weights (random weights give near-zero velocities, so a
    wrong y would hardly show), the transformer in `dtype` as a bf16/fp16 build has it (codecs fp32)."""
    system = build_system(preset)
    load_weights(system, preset, embedded_weights(preset.name))
    system.model.to(dtype)
    return system


def _latents(session) -> np.ndarray:
    """y_(k-1) as the session's thinker holds it (fp32), audio and video flattened."""
    if isinstance(session, EngineSession):
        return np.concatenate([np.ravel(session.prev_audio), np.ravel(session.prev_video)])
    t = session.thinker
    return torch.cat([t.prev_audio.ravel(), t.prev_video.ravel()]).numpy().copy()


def _stream(session, units):
    """(results, last unit's media, y_k after each unit k) of `units` streamed through `session`."""
    results, latents = [], []
    for k, (a, f) in enumerate(units):
        results.append(session.step(a, f, text_in=np.full(session.spec.text_in_tokens, k % 5 + 1)))
        latents.append(_latents(session))  # y_(k-1) after unit k
    last = session.flush()
    latents.append(_latents(session))
    return results, last, latents[1:]


@pytest.fixture(scope="module")
def fp32_reference(tiny):
    """The fp32 reference: the runtime's sequential session on the fp32 torch stage modules."""
    units = list(split_units(*synthetic_input(tiny, UNITS, 0), tiny, UNITS))
    with EngineSession.in_process(*torch_parts(_trained(tiny)), seed=SEED) as session:
        return units, *_stream(session, units)


def _compare(reference, got) -> dict:
    """Per-unit agreement of a run with the reference: token match, latent cosine, audio errors."""
    (_, want, want_last, want_y), (results, last, ys) = reference, got
    tokens = float(np.mean([np.mean(a.text_tokens == b.text_tokens) for a, b in zip(want, results)]))
    cos = [float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)) for x, y in zip(want_y, ys)]
    audio_w = [a.audio for a in want[1:len(results)]] + ([want_last.audio] if len(results) == len(want) else [])
    audio_g = [b.audio for b in results[1:]] + ([last.audio] if len(results) == len(want) else [])
    rel = [float(np.sqrt(np.mean((a - b) ** 2) / np.mean(a ** 2))) for a, b in zip(audio_w, audio_g)]
    return {"tokens": tokens, "min_cos": min(cos), "max_rel_rms": max(rel),
            "max_abs": max(float(np.abs(a - b).max()) for a, b in zip(audio_w, audio_g))}


# Tolerances of a bf16 build against fp32. bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2 %
# per value), through 2 layers x 4 flow steps; the latents y_k are accumulated in fp32 by the solver.
# - tokens: argmax of logits whose top two differ by far more than bf16's error; a rare near-tie may flip,
#   so 90 % of positions must match (measured: 100 % in bf16 and fp16).
# - latents: cosine of y_k with the reference >= 0.999 (an error of ~2 % of the norm; measured >= 0.9998).
# - audio: the decoders (fp32) amplify the latents' error; RMS error <= 15 % of the reference's RMS per
#   unit, max error <= 0.03 at a peak of ~0.25 (measured: 6 % and 0.009 in bf16, 1 % and 0.001 in fp16).
# Each bound is 5-20x away from y_(k-2) fed to thinker_step (tokens 60 %, cosine -0.2, RMS error ~100 %).
TOLERANCE = {"tokens": 0.9, "min_cos": 0.999, "max_rel_rms": 0.15, "max_abs": 0.03}


def _within(m: dict) -> bool:
    t = TOLERANCE
    return (m["tokens"] >= t["tokens"] and m["min_cos"] >= t["min_cos"] and m["max_rel_rms"] <= t["max_rel_rms"]
            and m["max_abs"] <= t["max_abs"])


def _plant_prev_cast_in_encode(thinker, monkeypatch) -> None:
    """The old order planted back: y_(k-1) cast to thinker_step's dtype inside encode, before the session
    received it, so thinker_step(k) reads y_(k-2)."""
    moved = list(thinker.prev_casts)
    assert moved, "a bf16 build casts y_(k-1) for thinker_step"
    thinker.prev_casts.clear()
    encode = thinker.encode
    monkeypatch.setattr(thinker, "encode", lambda *a: (encode(*a), [cast() for cast in moved]))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_device_path_matches_the_fp32_reference(tiny, fp32_reference, dtype, monkeypatch):
    """bf16/fp16 stage modules on the device path (CPU twin, emulated CUDA graphs) within the stated
    tolerances of the fp32 reference; in bf16, the same run with thinker_step fed y_(k-2) falls outside them."""
    parts = torch_device_parts(_trained(tiny, getattr(torch, dtype)), "cpu")
    units = fp32_reference[0][:UNITS if dtype == "bfloat16" else 3]  # fp16 matmuls are slow on a CPU
    graphs = dtype == "bfloat16"  # as bench/gpu_check.py --dry-run runs it; fp16 eager (fewer runs)
    with DeviceSession(None, engines=parts, device="cpu", seed=SEED, graphs=graphs) as session:
        got = _compare(fp32_reference, _stream(session, units))
    report(f"device path {dtype} vs fp32 reference ({len(units)} tiny units, cpu twin): tokens {got['tokens']:.0%}, "
           f"latent cosine >= {got['min_cos']:.5f}, audio RMS error <= {got['max_rel_rms']:.1%}, "
           f"max {got['max_abs']:.4f}")
    assert _within(got), (got, TOLERANCE)
    if dtype != "bfloat16":
        return
    with DeviceSession(None, engines=parts, device="cpu", seed=SEED, graphs=False) as session:  # planted eagerly
        _plant_prev_cast_in_encode(session.thinker, monkeypatch)
        planted = _compare(fp32_reference, _stream(session, units[:4]))
    report(f"  thinker_step fed y_(k-2): tokens {planted['tokens']:.0%}, cosine >= {planted['min_cos']:.2f}, "
           f"RMS error {planted['max_rel_rms']:.0%}: caught")
    assert not _within(planted), planted
    assert planted["min_cos"] < 0.9 and planted["max_rel_rms"] > 0.5, planted


def test_batched_bf16_rows_read_y_k_minus_1(tiny, fp32_reference, monkeypatch):
    """The batched session (2 rows, bf16 stage modules, CPU twin with emulated graphs): row 0 streams the
    reference's input beside another session and stays within the same tolerances of the fp32 reference;
    with the old cast order planted back (eagerly), y_1 already falls outside them (2 units suffice)."""
    from types import SimpleNamespace

    from runtime.device.batch import BatchedSession

    parts = torch_device_parts(_trained(tiny, torch.bfloat16), "cpu", batch=2)
    units = fp32_reference[0]
    text = lambda k: np.full(tiny.text_in_tokens, k % 5 + 1)  # noqa: E731

    def stream(batch, n):
        a, b = batch.join(seed=SEED), batch.join(seed=SEED + 1)
        held = lambda: torch.cat([batch.thinker.prev_audio[a].ravel(), batch.thinker.prev_video[a].ravel()])  # noqa
        results, ys = [], []
        for k in range(n):
            results.append(batch.step({a: (*units[k], text(k)), b: units[-1 - k]})[a])
            ys.append(held().numpy().copy())
        wave, _ = batch.flush(a)
        return results, SimpleNamespace(audio=wave), ys[1:] + [held().numpy().copy()]

    runs = {}
    for planted, n in ((False, 3), (True, 2)):
        with BatchedSession(None, engines=parts, graphs=not planted) as batch:
            if planted:
                _plant_prev_cast_in_encode(batch.thinker, monkeypatch)
            runs[planted] = _compare(fp32_reference, stream(batch, n))
    report(f"batched bf16 row vs fp32 reference (3 units): cosine >= {runs[False]['min_cos']:.5f}, audio RMS error "
           f"<= {runs[False]['max_rel_rms']:.1%}; y_(k-2) planted: cosine >= {runs[True]['min_cos']:.2f}: caught")
    assert _within(runs[False]), runs[False]
    assert not _within(runs[True]) and runs[True]["min_cos"] < 0.9, runs[True]


# --- CUDA graphs and streams on the CPU twin (runtime/device/twin.py) -----------------------------------------
def test_twin_streams_defer_until_a_wait_and_graphs_replay_only_tensor_work():
    """The twin's rules on bare tensors: a side stream's write is not there before a wait or sync orders
    it; a replay re-runs the captured tensor ops on the same tensors (new inputs, new outputs) but not the
    Python around them (a counter stays at its capture value); a host read during capture raises."""
    from runtime.device.device import Device
    from runtime.device.twin import CaptureError

    d = Device("cpu")
    side, main = d.stream(), d.stream(high_priority=True)
    x, y = d.empty((4,), torch.float32), d.empty((4,), torch.float32)
    written = d.event()
    with d.use(side):
        x.fill_(3.0)
        d.record(written, side)
    assert side.pending() == 1 and float(x.sum()) == 0.0  # issued, not run: the host sees the old value
    with d.use(main):
        y.copy_(x)  # no wait: reads x before the side stream's write
    main.synchronize()
    assert float(y.sum()) == 0.0
    with d.use(main):
        d.wait(main, written)
        y.copy_(x)
    main.synchronize()
    assert y.tolist() == [3.0] * 4

    calls = []

    def phase() -> None:
        calls.append(1)  # host-side work: runs at warm-up and capture only
        torch.add(x * 2, float(len(calls)), out=y)

    replay = d.capture(phase, main)
    assert len(calls) == 2 and y.tolist() == [3.0 * 2 + 1] * 4  # the capture ran no kernel: the warm-up's y
    x.fill_(1.0)
    replay()
    assert len(calls) == 2 and y.tolist() == [2.0 + 2.0] * 4  # new x, the counter frozen at capture (2)
    x.fill_(5.0)
    with d.use(main):
        replay()
    assert y.tolist() == [4.0] * 4  # deferred to its stream
    main.synchronize()
    assert y.tolist() == [12.0] * 4
    with pytest.raises(CaptureError, match="read by the host during CUDA graph capture"):
        d.capture(lambda: y.add_(x.sum().item()), main)
    with pytest.raises(CaptureError, match="host sync during CUDA graph capture"):
        d.capture(lambda: d.sync(written), main)


def _ort_units(spec, n):
    return list(split_units(*synthetic_input(spec, n, 0), spec, n))


def _ort_stream(session, units):
    text = lambda k: np.full(session.spec.text_in_tokens, k % 5 + 1)  # noqa: E731
    return [session.step(a, f, text_in=text(k)) for k, (a, f) in enumerate(units)], session.flush()


@pytest.fixture(scope="module")
def ort_reference(tiny_ort_engines):
    with EngineSession(tiny_ort_engines, seed=SEED, threads=1, mode="sequential") as session:
        units = _ort_units(session.spec, 5)
        return units, *_ort_stream(session, units)


def _same(want, got) -> bool:
    try:
        assert_same_outputs(want[0], got[0], want[1], got[1])
    except AssertionError:
        return False
    return True


def test_host_side_work_inside_a_captured_phase_is_caught_by_the_emulated_graph(tiny_ort_engines, ort_reference,
                                                                                  monkeypatch):
    """The cache append planted with the unit index counted on the host (a Python int made a tensor inside
    the think phase): eager, it is right (bitwise the reference); captured, the replay keeps the capture's
    value for every unit, as a CUDA graph would, and the outputs differ."""
    from runtime.device.state import DeviceKVCache

    append, reset = DeviceKVCache.append, DeviceKVCache.reset

    def host_counted_append(self, unit, k_delta, v_delta):
        self.host_unit = getattr(self, "host_unit", -1) + 1
        append(self, torch.tensor([self.host_unit] * self.rows), k_delta, v_delta)

    def host_reset(self):
        reset(self)
        self.host_unit = -1

    monkeypatch.setattr(DeviceKVCache, "append", host_counted_append)
    monkeypatch.setattr(DeviceKVCache, "reset", host_reset)
    units, want, want_last = ort_reference
    runs = {}
    for graphs in (False, True):
        with DeviceSession(tiny_ort_engines, device="cpu", seed=SEED, threads=1, graphs=graphs) as session:
            runs[graphs] = _ort_stream(session, units)
    assert _same((want, want_last), runs[False])  # the planted append is right when it runs every unit
    assert not _same((want, want_last), runs[True])  # frozen at its capture value by the emulated graph
    report("host-side unit counter inside the captured think phase: eager == reference, emulated graph differs: caught")


def test_a_missing_stream_wait_reads_stale_latents_on_the_twin(tiny_ort_engines, ort_reference, monkeypatch):
    """The thinker's wait for the performer's event removed: its copy of y_(k-1) runs before the solve it
    needs (the performer's stream is deferred until something orders it) and the outputs differ."""
    from runtime.device.device import Device

    units, want, want_last = ort_reference
    wait = Device.wait
    with DeviceSession(tiny_ort_engines, device="cpu", seed=SEED, threads=1, graphs=True) as session:
        nodes = session.thinker._think_call.raw.nodes  # the think phase's emulated graph
        assert [n[0] for n in nodes].count("call") == 1 and any(n[0] == "op" for n in nodes)  # ORT call + append
        assert _same((want, want_last), _ort_stream(session, units))
    with DeviceSession(tiny_ort_engines, device="cpu", seed=SEED, threads=1, graphs=True) as session:
        done = session.performer.done
        monkeypatch.setattr(Device, "wait", staticmethod(lambda s, e: None if e is done else wait(s, e)))
        got = _ort_stream(session, units)
    assert not _same((want, want_last), got)
    report("thinker's wait for y_(k-1) removed: stale latents read on the CPU twin: caught")
