"""Calibration and quantized engines on the tiny preset: the recorded set replays exactly, modelopt's
INT8/FP8 quantization stays within the accepted cosine, the INT8 Q/DQ engines build, run in ONNX
Runtime and verify; FP8's TensorRT build is tested where TensorRT is importable."""
import json

import numpy as np
import onnx
import pytest

from calibration.accuracy import THRESHOLDS, cosine, snr_db, stage_error
from calibration.quantize import fp8_roundtrip, kv_scales, quantize_stage, quantizer_count
from calibration.record import CalibrationError, load_calibration, record, stage_feeds
from calibration.torch_engines import TorchStageEngine
from helpers import report
from model_src.stages import make_stages
from runtime.manifest import read_manifest
from streamer.cli import main
from unitio.media import split_units, synthetic_input

pytest.importorskip("modelopt", reason="nvidia-modelopt is a core dependency; install the project")


@pytest.fixture(scope="module")
def calibration_set(tmp_path_factory, tiny, tiny_system):
    path = tmp_path_factory.mktemp("cal") / "tiny.safetensors"
    audio, frames = synthetic_input(tiny, 8, 0)
    record(tiny_system, split_units(audio, frames, tiny, 8), seed=0, out=path)
    return path


@pytest.fixture(scope="module")
def held_out(tmp_path_factory, tiny, tiny_system):
    path = tmp_path_factory.mktemp("held") / "tiny.safetensors"
    audio, frames = synthetic_input(tiny, 4, 99)
    record(tiny_system, split_units(audio, frames, tiny, 4), seed=99, out=path)
    return load_calibration(path)[0]


def _stage(system, name):
    return next(s for s in make_stages(system) if s.name == name)


def test_recorded_inputs_replay_exactly(calibration_set, tiny, tiny_system):
    """The cache rebuilt from the deltas and the codec state rebuilt by replay are the session's own:
    replaying thinker_step gives the recorded deltas bitwise, replaying audio_enc the recorded latents."""
    tensors, meta = load_calibration(calibration_set, tiny)
    assert meta["units"] == "8" and tensors["flow_step.t"].shape[0] == 8 * tiny.flow_steps
    think = TorchStageEngine(_stage(tiny_system, "thinker_step"))
    for k, feeds in enumerate(stage_feeds(tensors, "thinker_step", tiny_system)):
        np.testing.assert_array_equal(think.run(feeds)["k_delta"], tensors["kv.k_delta"][k])
    enc = TorchStageEngine(_stage(tiny_system, "audio_enc"))
    for k, feeds in enumerate(stage_feeds(tensors, "audio_enc", tiny_system)):
        np.testing.assert_array_equal(enc.run(feeds)["z"], tensors["thinker_step.audio_in"][k])


def test_a_calibration_set_of_another_preset_is_refused(calibration_set):
    from model_src.config import get_preset

    with pytest.raises(CalibrationError, match="calibration of preset 'tiny', but the model is preset 'small'"):
        load_calibration(calibration_set, get_preset("small"))


@pytest.mark.parametrize("precision,algorithm,floor", [("int8", "max", THRESHOLDS["cosine"]), ("fp8", "max", THRESHOLDS["cosine"]),
                                                       ("int8", "smoothquant", 0.95)])
def test_quantized_stages_stay_within_the_accepted_cosine(calibration_set, held_out, tiny_system, precision, algorithm,
                                                          floor):
    """max calibration (the default) must meet the accepted cosine; SmoothQuant is measured against a
    looser floor: on random weights (no outlier channels) its smoothing costs flow_step accuracy, and
    `streamer verify` flags an engine built with it when it misses the threshold."""
    tensors, _ = load_calibration(calibration_set)
    for name in ("thinker_step", "flow_step"):
        module = quantize_stage(tiny_system, name, tensors, precision, algorithm)
        assert quantizer_count(module) > 0
        spec = _stage(tiny_system, name)
        err = stage_error(name, stage_feeds(held_out, name, tiny_system), TorchStageEngine(spec),
                          TorchStageEngine(spec, module))
        report(f"quantized {name} {precision}/{algorithm} (modelopt simulated), held-out tiny: cosine "
               f"{err.cosine:.5f}, max abs {err.max_abs:.2e}")
        assert floor <= err.cosine < 1.0  # quantized, and close


def test_fp8_kv_cache_scales_per_head(calibration_set):
    tensors, _ = load_calibration(calibration_set)
    k_scale, v_scale = kv_scales(tensors)
    layers, heads = tensors["kv.k_delta"].shape[1], tensors["kv.k_delta"].shape[3]
    assert k_scale.shape == v_scale.shape == (layers, heads)
    cache = tensors["kv.k_delta"][-1]
    roundtrip = fp8_roundtrip(cache, k_scale)
    assert 0 < np.abs(roundtrip - cache).max() <= np.abs(cache).max() / 8  # e4m3: 3 mantissa bits
    report(f"FP8 KV cache (per-head scales), last unit's keys: SNR {snr_db(cache, roundtrip):.1f} dB, "
           f"cosine {cosine(cache, roundtrip):.5f}")


def test_int8_engines_build_run_in_onnxruntime_and_verify(calibration_set, tmp_path, capsys):
    out = tmp_path / "tiny_int8"
    assert main(["build", "--preset", "tiny", "--weights-seed", "0", "--backend", "ort", "--precision", "int8",
                 "--calibration", str(calibration_set), "--out", str(out)]) == 0  # the weights it was recorded from
    manifest = read_manifest(out)
    assert manifest["calibration"]["algorithm"] == "max"
    for stage, info in manifest["stages"].items():
        ops = {n.op_type for n in onnx.load(out / info["file"], load_external_data=False).graph.node}
        quantized = stage in ("thinker_step", "flow_step")
        assert info["precision"] == ("int8" if quantized else "fp32")
        assert ({"QuantizeLinear", "DequantizeLinear"} <= ops) == quantized, stage
    capsys.readouterr()
    assert main(["verify", str(out), "--units", "3", "--session", "8"]) == 0
    text = capsys.readouterr().out
    report("int8 tiny engines: " + next(line for line in text.splitlines() if line.startswith("session of")))
    for stage in ("thinker_step", "flow_step"):
        row = next(line for line in text.splitlines() if f" {stage} " in line)
        assert " int8 " in row and " ok " in row, row


def test_fp8_export_is_tensorrt_fp8_qdq(calibration_set, tiny_system, tmp_path):
    from export.quantized_export import export_quantized_stage

    tensors, _ = load_calibration(calibration_set)
    spec = _stage(tiny_system, "flow_step")
    module = quantize_stage(tiny_system, "flow_step", tensors, "fp8")
    export_quantized_stage(spec, module, tmp_path / "flow_step.onnx", "fp8")  # passes TensorRT's op check
    ops = {(n.domain, n.op_type) for n in onnx.load(tmp_path / "flow_step.onnx").graph.node}
    assert ("trt", "TRT_FP8QuantizeLinear") in ops and ("trt", "TRT_FP8DequantizeLinear") in ops


def test_fp8_needs_tensorrt_and_int8_needs_calibration(tmp_path, capsys):
    assert main(["build", "--preset", "tiny", "--backend", "ort", "--precision", "fp8", "--out", str(tmp_path)]) == 2
    assert "no FP8 kernels: build fp8 with --backend trt" in capsys.readouterr().err
    assert main(["build", "--preset", "tiny", "--backend", "ort", "--precision", "int8", "--out", str(tmp_path)]) == 2
    assert "needs --calibration" in capsys.readouterr().err


def test_fp8_tensorrt_build(calibration_set, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installable on this machine (its wheels fetch "
                                           "binaries from an unreachable host); runs where it is")
    assert main(["build", "--preset", "tiny", "--weights-seed", "0", "--backend", "trt", "--precision", "fp8",
                 "--calibration", str(calibration_set), "--out", str(tmp_path / "fp8")]) == 0
    manifest = json.loads((tmp_path / "fp8" / "manifest.json").read_text())
    assert manifest["stages"]["flow_step"]["precision"] == "fp8"


def test_calibrate_command_reads_a_folder_of_clips(tmp_path, tiny, capsys):
    from unitio.media import write_video, write_wav

    audio, frames = synthetic_input(tiny, 3, 5)
    (tmp_path / "clips").mkdir()
    write_wav(tmp_path / "clips" / "a.wav", audio, tiny.sample_rate)
    write_video(tmp_path / "clips" / "a.mp4", frames, tiny.fps)
    out = tmp_path / "cal.safetensors"
    assert main(["calibrate", "--preset", "tiny", "--data", str(tmp_path / "clips"), "--units", "2",
                 "--out", str(out)]) == 0
    tensors, meta = load_calibration(out, tiny)
    assert meta["source"] == str(tmp_path / "clips") and tensors["thinker_step.audio_in"].shape[0] == 2
    (tmp_path / "clips" / "a.mp4").unlink()
    assert main(["calibrate", "--preset", "tiny", "--data", str(tmp_path / "clips"), "--out", str(out)]) == 2
    assert "expected NAME.wav + NAME.mp4 pairs" in capsys.readouterr().err
