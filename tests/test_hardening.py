"""Every bad input a clear refusal (exit code 2, naming what was expected, what came and the
file), never a traceback; outputs streamed to disk and kept on a fault; signed engine directories.

`CASES` is the table of every refusal the issue lists: each builds its files in tmp_path and gives the
command line and the words the message must hold. Each of them was a traceback, a silent accept or
an unclear message before the change.
"""
import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import wave

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from runtime.manifest import MANIFEST, _checksum
from streamer.cli import main
from unitio.media import synthetic_input, write_video, write_wav

PRESET_JSON = None  # the tiny preset as JSON, filled on first use


def _cli(argv, capsys):
    """Run the CLI in-process -> (exit code, stderr); a traceback never passes."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, " ".join(err.split())  # rich wraps nothing (soft_wrap), but be sure


def _wav(path, data=b"", tag=1, bits=16, channels=1, rate=24000, declared=None):
    """A WAV file with exactly these header fields; `declared` is the data size the header claims."""
    block = channels * bits // 8
    size = len(data) if declared is None else declared
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
                     + b"data" + struct.pack("<I", size) + data)
    return path


def _clip(tmp_path, tiny, audio_units=3, video_units=3):
    audio, frames = synthetic_input(tiny, max(audio_units, video_units))
    write_wav(tmp_path / "in.wav", audio[:audio_units * tiny.samples_per_unit], tiny.sample_rate)
    write_video(tmp_path / "in.mp4", frames[:video_units * tiny.frames_per_unit], tiny.fps)
    return tmp_path / "in.wav", tmp_path / "in.mp4"


def _run_files(tmp_path, wav, mp4, *extra):
    return ["run", "--preset", "tiny", "--input", f"{wav}+{mp4}", "--out", tmp_path / "o", *extra]


def _weights(tmp_path, meta_changes=None, tensors=None, name="w.safetensors"):
    """A small safetensors file with weights metadata (the tiny preset unless changed)."""
    from model_src.config import get_preset

    meta = {"format": "av-streamer-weights/1", "preset": "tiny", "preset_json": get_preset("tiny").to_json(),
            "aliases": "{}"}
    meta.update(meta_changes or {})
    meta = {k: v for k, v in meta.items() if v is not None}
    save_file(tensors or {"x": torch.zeros(1)}, str(tmp_path / name), metadata=meta)
    return tmp_path / name


def _tiny_json(**changes):
    from model_src.config import get_preset

    return json.dumps({**json.loads(get_preset("tiny").to_json()), **changes})


def _engines_copy(engines, tmp_path, edit=None):
    """A copy of the tiny engines whose manifest `edit(manifest, dir)` changed, checksum recomputed (so
    only the new checks can catch it)."""
    d = tmp_path / "eng"
    shutil.copytree(engines, d)
    if edit is not None:
        m = json.loads((d / MANIFEST).read_text())
        edit(m, d)
        m["checksum"] = _checksum(m)
        (d / MANIFEST).write_text(json.dumps(m))
    return d


def _escape(kind):
    def edit(m, d):
        stage = m["stages"]["flow_step"]
        if kind == "dotdot":
            stage["file"] = "../../flow_step.onnx"
        elif kind == "absolute":
            stage["file"] = str(d / "flow_step.onnx")
        else:  # a symlink inside the directory that points outside it
            os.symlink("/etc/hostname", d / "outside.onnx")
            from runtime.manifest import sha256

            m["files"]["outside.onnx"] = sha256(d / "outside.onnx")
            stage["file"] = "outside.onnx"
    return edit


_DEEP = "[" * 5000 + "]" * 5000


def _swap_stage_files(m, d):
    """A forged manifest: audio_dec's file is video_dec's (both hashed, checksum recomputed)."""
    m["stages"]["audio_dec"]["file"] = m["stages"]["video_dec"]["file"]


# (id, argv builder (tmp_path, tiny, engines) -> argv, words the message must hold)
CASES = [
    ("float-wav", lambda t, p, e: _run_files(t, _wav(t / "f.wav", b"\0" * 4 * 3840, tag=3, bits=32), _clip(t, p)[1]),
     ["f.wav", "expected 16-bit PCM samples, got 32-bit IEEE float"]),
    ("empty-wav", lambda t, p, e: _run_files(t, (t / "e.wav", (t / "e.wav").write_bytes(b""))[0], _clip(t, p)[1]),
     ["e.wav", "expected a RIFF/WAVE file, got 0 bytes"]),
    ("random-wav", lambda t, p, e: _run_files(t, (t / "r.wav", (t / "r.wav").write_bytes(os.urandom(300)))[0],
                                              _clip(t, p)[1]), ["r.wav", "expected a RIFF/WAVE file"]),
    ("no-samples-wav", lambda t, p, e: _run_files(t, _wav(t / "z.wav"), _clip(t, p)[1]),
     ["z.wav", "expected audio samples, the data chunk is empty"]),
    ("truncated-wav", lambda t, p, e: _run_files(t, _wav(t / "t.wav", b"\0" * 1000, declared=2 * 3840 * 3), _clip(t, p)[1]),
     ["t.wav", "truncated: its header promises 23040 bytes of samples, the file holds 1000"]),
    ("corrupt-mp4", lambda t, p, e: _run_files(t, _clip(t, p)[0], (t / "c.mp4", (t / "c.mp4").write_bytes(os.urandom(2000)))[0]),
     ["c.mp4", "expected a video file ffmpeg can read"]),
    ("empty-mp4", lambda t, p, e: _run_files(t, _clip(t, p)[0], (t / "e.mp4", (t / "e.mp4").write_bytes(b""))[0]),
     ["e.mp4", "expected a video file ffmpeg can read"]),
    ("unequal-lengths", lambda t, p, e: _run_files(t, *_clip(t, p, 3, 2)),
     ["in.wav holds 11520 samples (0.480 s)", "in.mp4 holds 8 frames (0.320 s)", "expected audio and video of equal "
      "length", "--pad", "--trim"]),
    ("units-beyond-file", lambda t, p, e: _run_files(t, *_clip(t, p), "--units", "9"),
     ["input holds 3 whole units", "9 were asked for"]),
    ("out-is-a-file", lambda t, p, e: ["run", "--units", "2", "--out", (t / "f", (t / "f").write_text("x"))[0]],
     ["--out", "expected a folder, got an existing file"]),
    ("out-not-writable", lambda t, p, e: ["run", "--units", "2", "--out", (t / "f", (t / "f").write_text("x"))[0] / "sub"],
     ["--out", "/f/sub", "expected a folder that can be made"]),
    ("bench-json-dir", lambda t, p, e: ["bench", "--engines", e, "--json", t], ["--json", "expected a file name, got a folder"]),
    ("profile-out-dir", lambda t, p, e: ["profile", "--engines", e, "--out", t], ["--out", "expected a file name, got a folder"]),
    ("seed-negative", lambda t, p, e: ["run", "--engines", e, "--seed", "-1", "--out", t / "o"],
     ["--seed", "expected an integer in [0, 9223372036854775807], got -1"]),
    ("timeout-inf", lambda t, p, e: ["run", "--engines", e, "--performer-timeout", "inf", "--out", t / "o"],
     ["--performer-timeout", "expected seconds in (0, 86400], got 'inf'"]),
    ("timeout-negative", lambda t, p, e: ["run", "--engines", e, "--performer-timeout", "-1", "--out", t / "o"],
     ["--performer-timeout", "expected seconds in (0, 86400], got '-1'"]),
    ("threads-negative", lambda t, p, e: ["run", "--engines", e, "--threads", "-2", "--out", t / "o"],
     ["--threads", "expected an integer in [1,", "(the CPU cores this process may use), got -2"]),
    ("threads-100000", lambda t, p, e: ["bench", "--engines", e, "--threads", "100000"],
     ["--threads", f"expected an integer in [1, {len(os.sched_getaffinity(0))}]", "got 100000"]),
    ("units-too-many", lambda t, p, e: ["run", "--units", str(10**9), "--out", t / "o"],
     ["--units", "expected an integer in [1, 3780000]", "got 1000000000"]),
    ("weights-no-preset-json", lambda t, p, e: ["run", "--weights", _weights(t, {"preset_json": None}), "--out", t / "o"],
     ["w.safetensors", "expected a preset_json entry", "found none"]),
    ("weights-preset-json-not-json", lambda t, p, e: ["run", "--weights", _weights(t, {"preset_json": "{tiny"}), "--out", t / "o"],
     ["w.safetensors", "preset_json: expected JSON, got '{tiny'"]),
    ("weights-preset-json-bad-field", lambda t, p, e: ["run", "--weights", _weights(t, {"preset_json": _tiny_json(n_layers="two")}),
                                                       "--out", t / "o"],
     ["w.safetensors", "n_layers: expected an integer in [1, 256], got 'two'"]),
    ("weights-bad-aliases", lambda t, p, e: ["run", "--weights", _weights(t, {"aliases": "[1]"}), "--out", t / "o"],
     ["w.safetensors", "aliases: expected a JSON object of tensor name -> stored tensor name, got '[1]'"]),
    ("weights-huge-dims-named-tiny", lambda t, p, e: ["run", "--preset", "tiny", "--weights",
                                                      _weights(t, {"preset_json": _tiny_json(n_layers=200, hidden=32768)}),
                                                      "--out", t / "o"],
     ["w.safetensors", "says preset 'tiny' but its numbers are not that preset's", "n_layers 200 (expected 2)"]),
    ("weights-custom-preset-tensors-differ", lambda t, p, e: ["run", "--weights", _weights(
        t, {"preset": "mine", "preset_json": _tiny_json(name="mine", n_layers=3)}), "--out", t / "o"],
     ["w.safetensors", "tensor 'x' is not a parameter of a mine model"]),
    ("manifest-a-list", lambda t, p, e: ["inspect", (_engines_copy(e, t), (t / "eng" / MANIFEST).write_text("[]"))[0]],
     ["manifest.json: expected a JSON object, got list"]),
    ("manifest-wrong-shape", lambda t, p, e: ["inspect", _engines_copy(e, t, lambda m, d: m.update(stages=[]))],
     ["manifest.json: stages: expected a JSON dict, got '[]'"]),
    ("manifest-huge-shape", lambda t, p, e: ["run", "--engines", _engines_copy(
        e, t, lambda m, d: m["stages"]["thinker_step"]["inputs"][0].update(shape=[2**40, 2**40])), "--out", t / "o"],
     ["manifest.json: stages.thinker_step.inputs", "expected a shape of at most 8 non-negative integers"]),
    ("manifest-path-dotdot", lambda t, p, e: ["inspect", _engines_copy(e, t, _escape("dotdot"))],
     ["stages.flow_step.file '../../flow_step.onnx'", "climbs out with .."]),
    ("manifest-path-absolute", lambda t, p, e: ["inspect", _engines_copy(e, t, _escape("absolute"))],
     ["stages.flow_step.file", "expected a path inside the engine directory, got an absolute path"]),
    ("manifest-symlink-out", lambda t, p, e: ["run", "--engines", _engines_copy(e, t, _escape("symlink")), "--out", t / "o"],
     ["'outside.onnx'", "resolves to /etc/hostname, outside the engine directory"]),
    # JSON nested 5,000 deep in 10 KB: a RecursionError (exit 1, traceback) before the bounded parser
    ("manifest-deep-nesting", lambda t, p, e: ["inspect", (_engines_copy(e, t), (t / "eng" / MANIFEST).write_text(_DEEP))[0]],
     ["manifest.json is not valid JSON: expected JSON nested at most 16 deep"]),
    ("weights-preset-json-deep", lambda t, p, e: ["run", "--weights", _weights(t, {"preset_json": _DEEP}), "--out", t / "o"],
     ["w.safetensors", "preset_json: expected JSON", "nested at most 4 deep"]),
    ("weights-aliases-deep", lambda t, p, e: ["run", "--weights", _weights(t, {"aliases": _DEEP}), "--out", t / "o"],
     ["w.safetensors", "aliases: expected a JSON object of tensor name -> stored tensor name"]),
    ("initial-state-not-safetensors", lambda t, p, e: ["run", "--engines", _engines_copy(
        e, t, lambda m, d: m.update(initial_state="thinker_step.onnx")), "--sequential", "--units", "2", "--out", t / "o"],
     ["/eng: initial_state thinker_step.onnx: expected a safetensors file"]),
    ("stage-io-swapped", lambda t, p, e: ["run", "--engines", _engines_copy(e, t, _swap_stage_files), "--sequential",
                                          "--units", "2", "--out", t / "o"],
     ["/eng: stage audio_dec: the manifest declares inputs", "its engine file video_dec.onnx has"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_refusal_names_expected_received_and_file(case, tmp_path, tiny, tiny_ort_engines, capsys, monkeypatch):
    import model_src.system

    real = model_src.system.build_system

    def only_meta(p, *a, device="cpu", **kw):  # nothing may be allocated from a refused file
        assert device == "meta", f"a {p.name} model was built before the refusal"
        return real(p, *a, device=device, **kw)

    monkeypatch.setattr(model_src.system, "build_system", only_meta)
    _, build, words = case
    code, err = _cli(build(tmp_path, tiny, tiny_ort_engines), capsys)
    assert code == 2, err
    for w in words:
        assert w in err, f"{w!r} not in {err!r}"


def test_nan_weights_are_refused_naming_the_tensor(tmp_path, tiny, tiny_system, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from model_src.weights import save_weights

    path = tmp_path / "nan.safetensors"
    save_weights(tiny_system, tiny, path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(path), metadata=meta)
    code, err = _cli(["run", "--weights", path, "--units", "1", "--out", tmp_path / "o"], capsys)
    assert code == 2 and f"tensor '{name}' holds 1 NaN/Inf values (expected finite weights)" in err, err


def test_pad_and_trim_say_what_to_do_with_unequal_lengths(tmp_path, tiny):
    from streamer.outputs import read_input

    wav, mp4 = _clip(tmp_path, tiny, audio_units=3, video_units=2)
    spec = f"{wav}+{mp4}"
    trimmed = list(read_input(spec, tiny, None, 0, "trim"))
    padded = list(read_input(spec, tiny, None, 0, "pad"))
    assert len(trimmed) == 2 and len(padded) == 3
    _, last_frames = padded[2]
    assert (last_frames == padded[1][1][-1]).all()  # the video's last frame, held
    np.testing.assert_array_equal(padded[0][0], trimmed[0][0])


def _streamed(tmp_path, tiny_ort_engines, monkeypatch, capsys, fail_at, error):
    """run --engines (sequential) with `error` raised at the unit `fail_at` -> (exit code, stderr, out folder)."""
    import runtime.host.session

    real = runtime.host.session.EngineSession.step

    def step(self, *a, **kw):
        if self.unit_index == fail_at:
            raise error
        return real(self, *a, **kw)

    monkeypatch.setattr(runtime.host.session.EngineSession, "step", step)
    out = tmp_path / "o"
    code, err = _cli(["run", "--engines", tiny_ort_engines, "--sequential", "--units", "6", "--out", out], capsys)
    return code, err, out


def _kept_units(out, tiny):
    """Units in out.wav (its header must be valid) after checking the other files agree."""
    with wave.open(str(out / "out.wav")) as f:
        units = f.getnframes() // tiny.samples_per_unit
    assert np.load(out / "out_audio.npy").shape == (units * tiny.samples_per_unit,)
    assert len(json.loads((out / "text.json").read_text())) >= units
    from unitio.media import read_video

    assert read_video(out / "out.mp4", tiny.fps, tiny.frame_height, tiny.frame_width).shape[0] == 4 * units
    assert not list(out.glob("*.partial")) and not list(out.glob(".partial-*"))  # nothing left staged
    assert all(p.stat().st_size for p in out.iterdir())  # no zero-byte leftovers
    assert len(json.loads((out / "text.json").read_text())) == units  # every output cut to the same units
    return units


def test_a_performer_fault_keeps_what_was_streamed_and_exits_3(tmp_path, tiny, tiny_ort_engines, monkeypatch, capsys):
    from runtime.order import PerformerError

    code, err, out = _streamed(tmp_path, tiny_ort_engines, monkeypatch, capsys, 4,
                               PerformerError("performer hung: no answer after 1.0 s solving unit 3"))
    assert code == 3 and "error: performer: performer hung: no answer after 1.0 s solving unit 3" in err, err
    assert _kept_units(out, tiny) == 3  # units 0..2 decoded (output runs one unit behind)
    assert "stopped early" in err


def test_a_full_disk_is_named_and_keeps_what_was_written(tmp_path, tiny, tiny_ort_engines, monkeypatch, capsys):
    import unitio.wav

    real, calls = unitio.wav.WavWriter.write, []

    def write(self, audio):
        calls.append(1)
        if len(calls) > 2 and self.path.name.startswith("out.wav"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, audio)

    monkeypatch.setattr(unitio.wav.WavWriter, "write", write)
    code, err, out = _streamed(tmp_path, tiny_ort_engines, monkeypatch, capsys, 99, None)
    assert code == 2, err
    assert f"{out / 'out.wav'}: could not be written (disk full): No space left on device" in err
    with wave.open(str(out / "out.wav")) as f:  # finalised with the units written before
        assert f.getnframes() == 2 * tiny.samples_per_unit


def test_sigterm_keeps_and_finalises_every_output(tiny_ort_engines, tmp_path, tiny):
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-P", "-m", "streamer.cli", "run", "--engines", str(tiny_ort_engines),
                             "--units", "3000", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120

    def streamed() -> int:  # bytes in the private staging folder's out.wav.partial
        return sum(p.stat().st_size for p in out.glob(".partial-*/out.wav.partial"))

    while time.time() < deadline and streamed() < 44 + 2 * 3 * 3840 * 2:
        time.sleep(0.1)
    proc.terminate()  # SIGTERM
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert 3 <= _kept_units(out, tiny) < 3000


def test_streaming_memory_is_flat_in_the_session_length(tmp_path, tiny):
    """The writers and the synthetic input keep nothing per unit but 8 bytes per timed stage."""
    import tracemalloc

    from streamer.outputs import stream_session
    from unitio.media import SyntheticUnits
    from unitio.units import UnitResult

    count, traced = [0], {}

    def step(audio, frames):
        k = count[0] = count[0] + 1
        if k in (200, 1000):  # not counting the progress bar's speed samples (a deque of at most 1,000)
            traced[k] = tracemalloc.take_snapshot().filter_traces([  # nor the first snapshot itself
                tracemalloc.Filter(False, "*/rich/*", all_frames=True),
                tracemalloc.Filter(False, tracemalloc.__file__, all_frames=True)])
        return UnitResult(k, np.array([1, 2]), audio, frames, {"encode": 1.0, "think": 2.0, "total": 3.0})

    tracemalloc.start(4)  # frames enough to see rich under the allocation
    try:
        stream_session(step, lambda: None, SyntheticUnits(tiny, 1000, 0), tmp_path, tiny, "(test)")
    finally:
        tracemalloc.stop()
    grew = sum(s.size_diff for s in traced[1000].compare_to(traced[200], "filename"))
    assert grew < 800 * 3 * 8 * 1.2 + 32 * 1024, grew  # the timing arrays, and allocator noise
    with wave.open(str(tmp_path / "out.wav")) as f:  # (before: ~30 KB held per unit until the end)
        assert f.getnframes() == 1000 * tiny.samples_per_unit


def test_wav_header_is_valid_after_every_unit(tmp_path):
    from unitio.wav import WavWriter, read_wav

    w = WavWriter(tmp_path / "a.wav", 24000)
    for k in range(3):
        w.write(np.full(3840, 0.5, np.float32))
        assert read_wav(tmp_path / "a.wav", 24000).shape == ((k + 1) * 3840,)  # a reader sees every unit so far
    w.close()


def test_synthetic_units_are_the_synthetic_clip_made_per_unit(tiny):
    from unitio.media import SyntheticUnits, split_units

    audio, frames = synthetic_input(tiny, 5, 3)
    for (a, f), (a2, f2) in zip(SyntheticUnits(tiny, 5, 3), split_units(audio, frames, tiny, 5)):
        np.testing.assert_array_equal(a, a2)
        np.testing.assert_array_equal(f, f2)
