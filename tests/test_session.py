"""The reference session end to end, its input checks, and `streamer run`."""
import json
import wave

import numpy as np
import pytest
import torch

from model_src.session import ReferenceSession
from streamer.cli import main
from unitio.media import read_video, synthetic_input, write_video, write_wav
from unitio.units import InputError


def _units(p, n, seed=0):
    audio, frames = synthetic_input(p, n, seed)
    s, f = p.samples_per_unit, p.frames_per_unit
    return [(audio[k * s:(k + 1) * s], frames[k * f:(k + 1) * f]) for k in range(n)]


def test_session_streams_and_is_deterministic(tiny, tiny_system):
    runs = []
    for _ in range(2):
        session = ReferenceSession(tiny_system, seed=3)
        results = [session.step(a, f) for a, f in _units(tiny, 4)]
        runs.append((results, session.flush()))
    (results, (last_audio, last_frames)), (again, _) = runs
    assert results[0].audio is None and results[0].frames is None  # output runs one unit behind
    for r in results[1:]:
        assert r.audio.shape == (tiny.samples_per_unit,) and r.audio.dtype == np.float32
        assert r.frames.shape == (4, tiny.frame_height, tiny.frame_width, 3) and r.frames.dtype == np.uint8
        assert set(r.timings_ms) == {"encode", "thinker_step", "flow", "decode", "total"}
    assert last_audio.shape == (tiny.samples_per_unit,)
    for a, b in zip(results, again):
        assert np.array_equal(a.text_tokens, b.text_tokens)
        if a.audio is not None:
            assert np.array_equal(a.audio, b.audio) and np.array_equal(a.frames, b.frames)
    assert not np.array_equal(results[1].audio, results[2].audio)  # units differ


def _bad_inputs(p):
    s, h, w = p.samples_per_unit, p.frame_height, p.frame_width
    ok_a, ok_f = np.zeros(s, np.float32), np.zeros((4, h, w, 3), np.uint8)
    nan = ok_a.copy()
    nan[7] = np.nan
    return [
        ((np.zeros(s - 10, np.float32), ok_f), f"expected {s} samples \\(160 ms at 24000 Hz\\), got {s - 10}"),
        ((np.zeros((s, 2), np.float32), ok_f), "expected mono"),
        ((np.zeros(s, np.int16), ok_f), "expected float32 samples in \\[-1, 1\\], got dtype int16"),
        ((nan, ok_f), "NaN"),
        ((ok_a, np.zeros((3, h, w, 3), np.uint8)), "expected 4 frames \\(160 ms at 25 fps\\), got 3"),
        ((ok_a, np.zeros((4, h + 8, w, 3), np.uint8)), f"expected frame size {h}x{w} \\(height x width\\), got {h + 8}x{w}"),
        ((ok_a, np.zeros((4, h, w, 3), np.float32)), "expected uint8 pixels"),
        ((ok_a, np.zeros((4, h, w), np.uint8)), "expected RGB frames"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_bad_input_is_refused_and_leaves_the_session_untouched(tiny, tiny_system, case):
    session = ReferenceSession(tiny_system, seed=0)
    for a, f in _units(tiny, 2):
        session.step(a, f)
    before = (session.unit_index, session.cache.k.clone(), session.cache.length.clone(), session.prev_audio.clone())
    (audio, frames), message = _bad_inputs(tiny)[case]
    with pytest.raises(InputError, match=message):
        session.step(audio, frames)
    assert session.unit_index == before[0] and torch.equal(session.cache.k, before[1])
    assert torch.equal(session.cache.length, before[2]) and torch.equal(session.prev_audio, before[3])


def test_bad_text_is_refused(tiny, tiny_system):
    session = ReferenceSession(tiny_system)
    a, f = _units(tiny, 1)[0]
    with pytest.raises(InputError, match=r"token ids must be in \[0, 512\)"):
        session.step(a, f, text_in=np.array([3, 9999]))
    assert session.step(a, f, text_in=np.array([3, 4])).unit_index == 0


def test_cli_run_synthetic_writes_audio_video_text_and_timings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--preset", "tiny", "--backend", "torch", "--input", "synthetic", "--units", "6",
                 "--out", str(out)]) == 0
    with wave.open(str(out / "out.wav")) as f:
        assert (f.getframerate(), f.getnchannels(), f.getnframes()) == (24000, 1, 6 * 3840)
    frames = read_video(out / "out.mp4", 25, 32, 32)
    assert frames.shape == (24, 32, 32, 3)
    assert len(json.loads((out / "text.json").read_text())) == 6
    lines = (out / "timings.csv").read_text().splitlines()
    assert lines[0].startswith("unit,encode") and len(lines) == 7
    assert "real-time factor" in capsys.readouterr().out


def test_cli_run_from_files_and_refusals(tmp_path, tiny, capsys):
    audio, frames = synthetic_input(tiny, 3)
    write_wav(tmp_path / "in.wav", audio, 24000)
    write_video(tmp_path / "in.mp4", frames, 25)
    spec = f"{tmp_path / 'in.wav'}+{tmp_path / 'in.mp4'}"
    assert main(["run", "--input", spec, "--out", str(tmp_path / "o")]) == 0
    with wave.open(str(tmp_path / "o" / "out.wav")) as f:
        assert f.getnframes() == 3 * 3840
    write_wav(tmp_path / "16k.wav", audio, 16000)
    assert main(["run", "--input", f"{tmp_path / '16k.wav'}+{tmp_path / 'in.mp4'}", "--out", str(tmp_path / "x")]) == 2
    assert "expected sample rate 24000 Hz, got 16000 Hz" in capsys.readouterr().err
    assert main(["run", "--input", spec, "--units", "9", "--out", str(tmp_path / "x")]) == 2
    assert "input holds 3 whole units" in capsys.readouterr().err
    write_video(tmp_path / "big.mp4", np.zeros((12, 64, 64, 3), np.uint8), 25)
    assert main(["run", "--input", f"{tmp_path / 'in.wav'}+{tmp_path / 'big.mp4'}", "--out", str(tmp_path / "x")]) == 2
    assert "expected frame size 32x32 (height x width), got 64x64" in capsys.readouterr().err


def test_cli_weights_file_sets_the_preset(tmp_path, capsys):
    w = tmp_path / "w.safetensors"
    assert main(["init-weights", "--preset", "tiny", "--seed", "2", "--out", str(w)]) == 0
    assert main(["run", "--weights", str(w), "--units", "2", "--out", str(tmp_path / "o")]) == 0
    assert main(["run", "--weights", str(w), "--preset", "small", "--units", "2", "--out", str(tmp_path / "o")]) == 2
    assert "was made for preset 'tiny', but --preset small was given" in capsys.readouterr().err


def test_cli_import_weights_from_upstream_checkpoints(tmp_path, capsys):
    from diffusers import AutoencoderKLWan

    from model_src.config import get_preset
    from model_src.system import build_system
    from model_src.weights import load_weights

    p = get_preset("tiny")
    wan = AutoencoderKLWan(base_dim=p.video_vae_dim, z_dim=p.video_z)
    wan.save_pretrained(tmp_path / "wan")
    out = tmp_path / "w.safetensors"
    assert main(["import-weights", "--preset", "tiny", "--wan-vae", str(tmp_path / "wan"), "--out", str(out)]) == 0
    system = build_system(p, seed=9)
    load_weights(system, p, out)
    assert torch.equal(system.video_vae.encoder.conv_in.weight, wan.encoder.conv_in.weight)
    assert main(["import-weights", "--preset", "tiny", "--qwen3", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "Qwen3 checkpoint" in capsys.readouterr().err
