"""Export to ONNX and ONNX Runtime engines: build, the TensorRT op check, verify, run, refusals."""
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from export.onnx_export import ExportCheckError, check_tensorrt_ops, tensorrt_ops
from helpers import report
from runtime.host.engines import EngineInputError, load_engines
from runtime.manifest import ManifestError, read_manifest
from streamer.cli import main


@pytest.fixture
def engines(tiny_ort_engines):
    return tiny_ort_engines


def test_build_writes_six_static_graphs_tensorrt_can_parse(engines):
    manifest = read_manifest(engines)
    assert set(manifest["stages"]) == {"audio_enc", "video_enc", "thinker_step", "flow_step", "audio_dec", "video_dec"}
    supported = tensorrt_ops()
    for stage, info in manifest["stages"].items():
        model = onnx.load(engines / info["file"])
        assert {n.op_type for n in model.graph.node} <= supported, stage
        for value in list(model.graph.input) + list(model.graph.output):
            assert all(d.HasField("dim_value") for d in value.type.tensor_type.shape.dim), (stage, value.name)


def test_unsupported_operator_is_named(engines):
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Det", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [])]))
    with pytest.raises(ExportCheckError, match="flow_step: operators TensorRT's ONNX parser does not support: ai.onnx::Det"):
        check_tensorrt_ops(model, "flow_step")


def test_verify_passes_for_every_stage(engines, capsys):
    assert main(["verify", str(engines), "--units", "3"]) == 0
    table = capsys.readouterr().out
    for stage in ("audio_enc", "video_enc", "thinker_step", "flow_step", "audio_dec", "video_dec"):
        row = next(line for line in table.splitlines() if f" {stage} " in line)
        assert "agrees" in row and " ok " in row, row  # our comparison and polygraphy's
    assert "FAIL" not in table


def test_run_on_engines_equals_the_torch_backend(engines, tmp_path):
    for backend in ("torch", "ort"):
        extra = ["--engines", str(engines)] if backend == "ort" else ["--preset", "tiny"]
        assert main(["run", *extra, "--input", "synthetic", "--units", "6", "--seed", "4",
                     "--out", str(tmp_path / backend)]) == 0
    a, b = (np.load(tmp_path / name / "out_audio.npy") for name in ("ort", "torch"))
    report(f"run --engines (ort) vs torch, 6 tiny units: audio max abs {np.abs(a - b).max():.2e}")
    assert np.abs(a - b).max() < 1e-4 * np.abs(b).max()
    texts = [json.loads((tmp_path / name / "text.json").read_text()) for name in ("ort", "torch")]
    assert texts[0] == texts[1]


def _copy(engines, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(engines, target)
    return target


def test_a_corrupted_engine_is_refused(engines, tmp_path):
    d = _copy(engines, tmp_path)
    with open(d / "flow_step.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ManifestError, match="flow_step.onnx was changed after the build"):
        load_engines(d)


def test_an_edited_manifest_is_refused(engines, tmp_path):
    d = _copy(engines, tmp_path)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["precision"] = "fp16"
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="was edited after the build"):
        load_engines(d)


def test_engines_of_another_preset_or_library_version_are_refused(engines, capsys):
    with pytest.raises(ManifestError, match="holds engines of preset 'tiny', expected 'small'"):
        load_engines(engines, expect_preset="small")
    with pytest.raises(ManifestError, match=r"was built with onnxruntime \d+\.\d+.*this machine has onnxruntime 0\.1\.0"):
        read_manifest(engines, installed_versions={"onnxruntime": "0.1.0"})
    assert main(["run", "--engines", str(engines), "--preset", "small", "--out", "/tmp/unused"]) == 2
    assert "expected 'small'" in capsys.readouterr().err


def test_engine_feeds_are_checked(engines):
    _, stages = load_engines(engines)
    with pytest.raises(EngineInputError, match=r"audio_dec\.z: expected float32 \[1, 4, 8\], got float64 \[1, 4, 8\]"):
        stages["audio_dec"].run({"z": np.zeros((1, 4, 8)), **{t.name: np.zeros(t.shape, np.float32)
                                                               for t in stages["audio_dec"].inputs[1:]}})


def test_runtime_imports_neither_torch_nor_model_src():
    code = ("import sys, runtime.host.session, runtime.host.engines, runtime.manifest, runtime.host.performer, runtime.live, "
            "runtime.bench, runtime.host.transport, runtime.trace; "
            "bad = [m for m in ('torch', 'model_src') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_aoti_package_of_a_stage_runs_through_the_runtime(tmp_path, tiny_system):
    """One stage (AOTInductor compiles each in ~20-40 s here; `streamer build --backend aoti` does all six).
    video_enc: its state outputs are slices of concatenations, which came back corrupted from
    AOTInductor until the states were made contiguous; run twice, so reused buffers would show."""
    import torch

    from export.aoti_export import export_stage_aoti
    from model_src.stages import make_stages
    from runtime.aoti import AotiEngine

    spec = next(s for s in make_stages(tiny_system) if s.name == "video_enc")
    inputs, outputs = export_stage_aoti(spec, tmp_path / "video_enc.pt2")
    engine = AotiEngine("video_enc", tmp_path / "video_enc.pt2", inputs, outputs)
    feeds = {k: v.numpy() for k, v in spec.example_inputs.items()}
    got, again = engine.run(feeds), engine.run(feeds)
    with torch.no_grad():
        want = spec.module(*spec.example_inputs.values())
    for t, w in zip(outputs, want):
        assert np.abs(got[t.name] - w.numpy()).max() < 1e-4 * max(1.0, float(w.abs().max())), t.name
        assert np.array_equal(got[t.name], again[t.name]), t.name


def test_tensorrt_builds_an_engine_from_an_exported_stage(engines, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here: its PyPI wheels fetch their binaries "
                                           "from a host this machine cannot reach")
    from export.tensorrt_build import build_engine

    manifest = read_manifest(engines)
    info = manifest["stages"]["audio_dec"]
    shapes = {t["name"]: tuple(t["shape"]) for t in info["inputs"]}
    build_engine(engines / info["file"], tmp_path / "audio_dec.engine", "fp16", tmp_path / "timing.cache", shapes)
    assert (tmp_path / "audio_dec.engine").stat().st_size > 0 and (tmp_path / "timing.cache").is_file()


def test_tensorrt_missing_is_a_clear_error():
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; the missing-TensorRT message cannot be shown")
    except ImportError:
        pass
    from export.tensorrt_build import TensorRTUnavailable, import_tensorrt

    with pytest.raises(TensorRTUnavailable, match=r"TensorRT is not installed: .*pip install -e \"\.\[gpu\]\""):
        import_tensorrt()


def test_build_refuses_what_it_cannot_build(capsys, tmp_path):
    assert main(["build", "--preset", "tiny", "--backend", "ort", "--precision", "fp16", "--out", str(tmp_path)]) == 2
    assert "precision 'fp16' is not available for backend 'ort'; available: ['fp32', 'int8']" in capsys.readouterr().err
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert main(["build", "--preset", "tiny", "--backend", "trt", "--out", str(tmp_path)]) == 2
        assert "TensorRT is not installed" in capsys.readouterr().err
