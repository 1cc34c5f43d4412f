"""The device path (state resident on the device) run on the CPU: its outputs equal the sequential
reference bitwise in every placement, and the transfer ledger counts exactly a unit's inputs, KV delta,
y_k and outputs, never the cache or a codec state."""
import json

import numpy as np
import pytest
import torch

from helpers import assert_same_outputs, report
from runtime.device.session import DeviceSession
from runtime.manifest import ManifestError
from runtime.open_session import open_session
from runtime.host.session import EngineSession
from streamer.cli import main
from unitio.media import split_units, synthetic_input
from unitio.units import InputError

PLACEMENTS = ["one-gpu", "two-gpu", "two-process"]


def _units(spec, n, seed=0):
    audio, frames = synthetic_input(spec, n, seed)
    return split_units(audio, frames, spec, n)


def _stream(session, units):
    text = lambda k: np.full(session.spec.text_in_tokens, k % 5 + 1)  # noqa: E731
    results = [session.step(a, f, text_in=text(k)) for k, (a, f) in enumerate(units)]
    return results, session.flush()


@pytest.fixture(scope="module")
def reference(tiny_ort_engines):
    with EngineSession(tiny_ort_engines, seed=7, threads=1, mode="sequential") as session:
        units = _units(session.spec, 10)
        return units, *_stream(session, units)


def _expected_bytes(spec, placement: str) -> dict[str, int]:
    """A unit's traffic from the spec alone: inputs, seed noise and unit indices in; tokens, waveform and
    uint8 frames out; the delta appended (and moved between workers) and y_k handed to the thinker."""
    f32, i64 = 4, 8
    frames = spec.frames_per_unit * spec.frame_height * spec.frame_width * 3
    inputs = spec.samples_per_unit * f32 + frames + spec.text_in_tokens * i64 + i64
    y = f32 * (int(np.prod(spec.audio_latent_shape)) + int(np.prod(spec.video_latent_shape)))
    noise = y + i64  # the performer's seed noise and unit index
    outputs = spec.text_out_tokens * i64 + spec.samples_per_unit * f32 + frames
    delta = 2 * int(np.prod(spec.delta_shape)) * f32  # keys + values (fp32 engines)
    if placement == "one-gpu":  # one cache: the thinker's append; y_k copied on the device
        return {"h2d": inputs + noise, "d2h": outputs, "d2d": delta + y}
    if placement == "two-gpu":  # no peer access on a CPU: the delta and y_k cross through host slots
        return {"h2d": inputs + noise + delta + y, "d2h": outputs + delta + y, "d2d": 2 * delta + y}
    # two-process: the thinker's append, the delta into the IPC slot, the performer's append; y_k into the slot
    # and out of it
    return {"h2d": inputs + noise, "d2h": outputs, "d2d": 3 * delta + 2 * y}


@pytest.mark.parametrize("placement,graphs", [(p, True) for p in PLACEMENTS] + [("one-gpu", False)])
def test_device_path_equals_the_reference_bitwise_and_moves_only_a_units_io(tiny_ort_engines, reference, placement,
                                                                            graphs):
    """Every placement on the CPU twin (deferred streams; emulated CUDA graphs, and one-gpu eager too):
    tokens, audio and frames bitwise the sequential host path's; the ledger per unit exactly the spec's
    formula (inputs, seed noise, delta, y_k, outputs), never the state."""
    units, want, want_last = reference
    with DeviceSession(tiny_ort_engines, placement=placement, device="cpu", seed=7, threads=1,
                       graphs=graphs) as session:
        assert session.graphs is graphs
        got, got_last = _stream(session, units)
        rows, spec, cache_bytes = list(session.ledger.units), session.spec, session.cache.nbytes()
    assert_same_outputs(want, got, want_last, got_last)
    expected = _expected_bytes(spec, placement)
    for row in rows[2:len(units)]:  # every step after the first two (the two-process report arrives a unit late)
        assert row == expected, (placement, row, expected)
    assert max(max(r.values()) for r in rows) < cache_bytes  # the cache never crosses
    how = "emulated graphs" if graphs else "eager"
    report(f"device path ({placement}, {how}, on cpu) == sequential reference bitwise over {len(units)} tiny units; "
           f"{expected} bytes per unit (cache {cache_bytes} B stays put)")


def test_host_path_refuses_gpu_engines_and_placements_check_their_options(tiny_ort_engines):
    with pytest.raises(ManifestError, match="engines for a CUDA GPU"):
        open_session(tiny_ort_engines, "sequential", {"target": {"device": "cuda"}})
    with pytest.raises(ValueError, match="placement: expected one of"):
        DeviceSession(tiny_ort_engines, placement="three-gpu", device="cpu")
    with pytest.raises(ValueError, match="threads: expected 1 to"):
        open_session(tiny_ort_engines, "one-gpu", {"target": {"device": "cpu"}}, threads=10_000)


def test_bad_input_leaves_the_device_session_as_it_was(tiny_ort_engines, reference):
    units, want, _ = reference
    with DeviceSession(tiny_ort_engines, device="cpu", seed=7, threads=1) as session:
        text = lambda k: np.full(session.spec.text_in_tokens, k % 5 + 1)  # noqa: E731
        got = [session.step(*units[0], text_in=text(0))]
        with pytest.raises(InputError, match="expected 3840 samples"):
            session.step(units[1][0][:100], units[1][1])
        got += [session.step(a, f, text_in=text(k)) for k, (a, f) in enumerate(units[1:4], start=1)]
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a.text_tokens, b.text_tokens)
        if a.audio is not None:
            np.testing.assert_array_equal(a.audio, b.audio)


def test_fp8_append_quantizes_like_the_reference(tiny):
    """DeviceKVCache's FP8 append (slot computed on the device) == model_src's append_unit, bytewise."""
    from types import SimpleNamespace

    from model_src.kv_cache import append_unit, init_cache
    from runtime.device.device import Device
    from runtime.device.state import DeviceKVCache

    g = torch.Generator().manual_seed(0)
    shape = (tiny.n_layers, 1, tiny.n_kv_heads, tiny.cache_capacity, tiny.head_dim)
    delta_shape = shape[:3] + (tiny.tokens_per_unit, tiny.head_dim)
    spec = SimpleNamespace(cache_shape=shape, cache_dtype="float8_e4m3fn", delta_shape=delta_shape,
                           unit_tokens=tiny.tokens_per_unit, sink_units=tiny.sink_units, window_units=tiny.window_units)
    scales = {"k_scale": np.full((tiny.n_layers, tiny.n_kv_heads), 0.01, np.float32),
              "v_scale": np.linspace(0.005, 0.02, tiny.n_layers * tiny.n_kv_heads, dtype=np.float32).reshape(2, -1)}
    device_cache = DeviceKVCache(spec, Device("cpu"), scales)
    ref = init_cache(tiny, 1, dtype=torch.float8_e4m3fn)
    stacked = torch.stack([torch.from_numpy(scales["k_scale"]), torch.from_numpy(scales["v_scale"])])
    for k in (0, 1, tiny.cache_units + 3):  # a sink slot, a window slot, a slot reused by the ring
        kd, vd = (torch.randn(delta_shape, generator=g) * 3 for _ in range(2))
        device_cache.append(torch.tensor([k]), kd, vd)
        append_unit(tiny, ref, kd, vd, k, stacked)
    assert torch.equal(device_cache.k.view(torch.uint8), ref.k.view(torch.uint8))
    assert torch.equal(device_cache.v.view(torch.uint8), ref.v.view(torch.uint8))
    assert torch.equal(device_cache.length, ref.length)


def test_bench_reports_bytes_per_unit_for_every_mode(tiny_ort_engines, tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--engines", str(tiny_ort_engines), "--units", "3", "--warmup", "1",
                 "--modes", "sequential,one-gpu", "--device", "cpu", "--json", str(path)]) == 0
    summary = json.loads(path.read_text())
    modes = {m["mode"]: m for m in summary["modes"]}
    assert set(modes) == {"sequential", "one-gpu"}
    assert modes["sequential"]["bytes_per_unit"] == {"h2d": 0.0, "d2h": 0.0, "d2d": 0.0}
    assert modes["one-gpu"]["bytes_per_unit"]["h2d"] > 0 and modes["one-gpu"]["cuda_graphs"] is False
    assert summary["bitwise_equal"] == {"one-gpu": True}
    assert "h2d / unit" in capsys.readouterr().out


def test_aoti_packages_load_single_threaded_where_cuda_graphs_capture_them(monkeypatch, tmp_path):
    """A GPU AOTInductor runner to be captured is loaded with run_single_threaded=True (the default runner
    records and waits for its own CUDA event, which a graph cannot hold); the real loader takes that
    keyword; a CPU package is loaded as before."""
    import inspect
    from types import SimpleNamespace

    from runtime.device.device import Device
    from runtime.device.engines import load_aoti

    real = torch._inductor.aoti_load_package
    calls = []
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda path, **kw: calls.append(kw))
    gpu = SimpleNamespace(cuda=True, torch=torch.device("cuda", 1))  # no CUDA here: only what load_aoti reads
    for graphs in (None, True, False):
        load_aoti(tmp_path / "flow_step.pt2", gpu, graphs)
    load_aoti(tmp_path / "flow_step.pt2", Device("cpu"))
    assert calls == [{"device_index": 1, "run_single_threaded": True}, {"device_index": 1, "run_single_threaded": True},
                     {"device_index": 1, "run_single_threaded": False}, {}]
    inspect.signature(real).bind("x.pt2", **calls[0])  # the installed torch's loader accepts both keywords


def _ring_caches(tiny, units, slot):
    """(reference, host, device) caches after appending `units` (fp32 deltas: the unit index + 1), the host
    and device paths with the ring formula `slot` in place of unitio.units.cache_slot (the reference's kept)."""
    from types import SimpleNamespace
    from unittest import mock

    import runtime.device.state
    import unitio.units
    from model_src.kv_cache import append_unit, init_cache
    from runtime.device.device import Device
    from runtime.device.state import DeviceKVCache
    from runtime.host.kv_cache import KVBuffers

    shape = (tiny.n_layers, 1, tiny.n_kv_heads, tiny.cache_capacity, tiny.head_dim)
    delta_shape = shape[:3] + (tiny.tokens_per_unit, tiny.head_dim)
    spec = SimpleNamespace(cache_shape=shape, cache_dtype="float32", delta_shape=delta_shape,
                           unit_tokens=tiny.tokens_per_unit, sink_units=tiny.sink_units, window_units=tiny.window_units)
    ref, host, device = init_cache(tiny, 1), KVBuffers(spec), DeviceKVCache(spec, Device("cpu", twin=False))
    for k in units:
        delta = torch.full(delta_shape, float(k + 1))
        append_unit(tiny, ref, delta, -delta, k)  # the reference keeps the real ring
        with mock.patch.object(unitio.units, "cache_slot", slot):
            host.append(k, delta.numpy(), -delta.numpy())
        with mock.patch.object(runtime.device.state, "cache_slot", slot):
            device.append(torch.tensor([k]), delta, -delta)
    return ref, host, device


def test_the_kv_ring_is_one_formula_on_every_path(tiny):
    """unitio.units.cache_slot gives the same slots for an int, a numpy array and a torch tensor; the
    reference's append, the host path's and the device path's leave the same cache over units that wrap
    the ring (sink slots kept). With the host and device paths given a ring off by one, they differ."""
    from unitio.units import cache_slot

    s, w = tiny.sink_units, tiny.window_units
    units = list(range(3 * (s + w) + 1))
    want = [k if k < s + w else s + (k - s) % w for k in units]
    assert [cache_slot(k, s, w) for k in units] == want
    assert cache_slot(np.array(units), s, w).tolist() == want == cache_slot(torch.tensor(units), s, w).tolist()
    ref, host, device = _ring_caches(tiny, units, cache_slot)
    assert np.array_equal(ref.k.numpy(), host.k) and np.array_equal(ref.v.numpy(), host.v)
    assert torch.equal(ref.k, device.k) and torch.equal(ref.v, device.v)
    assert ref.length.tolist() == host.length.tolist() == device.length.tolist()
    off_by_one = lambda k, s, w: cache_slot(k, s, w + 1) % (s + w)  # noqa: E731 - a ring one slot too long
    ref, host, device = _ring_caches(tiny, units, off_by_one)
    assert not np.array_equal(ref.k.numpy(), host.k) and not torch.equal(ref.k, device.k)


def test_graphs_refused_where_the_flow_step_engine_cannot_be_captured(tiny_ort_engines, tiny_batch_engines,
                                                                         monkeypatch):
    """graphs=True on engines whose flow_step cannot be captured is refused by the solo and the batched
    session alike (the performer's `capturable` is checked with the thinker's engines)."""
    from runtime.device.batch import BatchedSession
    from runtime.device.engines import DeviceEngine

    real = DeviceEngine.can_capture
    monkeypatch.setattr(DeviceEngine, "can_capture", property(lambda e: e.stage != "flow_step" and real.fget(e)))
    for make in (lambda: DeviceSession(tiny_ort_engines, device="cpu", threads=1, graphs=True),
                 lambda: BatchedSession(tiny_batch_engines, threads=1, graphs=True)):
        with pytest.raises(ValueError, match="graphs=True: an engine of this directory cannot be captured"):
            make()
    with DeviceSession(tiny_ort_engines, device="cpu", threads=1) as session:  # the default: no graphs on a CPU
        assert session.graphs is False
    # planted: the performer claims to be capturable, as `getattr(performer, "capturable", True)` read a
    # performer without the attribute; graphs=True then goes through
    from runtime.device.performer import SharedCachePerformer

    init = SharedCachePerformer.__init__

    def claims_capturable(self, *a, **kw):
        init(self, *a, **kw)
        self.capturable = True
    monkeypatch.setattr(SharedCachePerformer, "__init__", claims_capturable)
    with DeviceSession(tiny_ort_engines, device="cpu", threads=1, graphs=True) as session:
        assert session.graphs  # not refused: the refusal is the performer's `capturable`
