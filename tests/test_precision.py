"""Builds in bf16/fp16/FP8-cache with our kernel inside, checked from the graphs themselves: the exported
program and the ONNX hold the kernel and no score matmul over the cache, the I/O dtypes are the build's,
and verify judges each precision by its own tolerance."""
import json

import onnx
import pytest
import torch

from export.options import BuildOptionError, BuildOptions
from export.tolerances import tolerance
from helpers import report
from model_src.stages import make_stages, per_layer_cache
from model_src.system import build_system
from streamer.cli import main

ATTENTION_OPS = ("mm", "bmm", "matmul", "baddbmm", "addmm", "_scaled_dot_product", "scaled_dot_product")


def _system(tiny, dtype=torch.bfloat16, attention="triton", fp8=False):
    system = build_system(tiny, seed=0)
    system.model.to(dtype)
    system.model.backbone.set_attn_impl(attention)
    if fp8:
        scales = torch.full((tiny.n_layers, tiny.n_kv_heads), 0.01)
        system.model.backbone.set_kv_cache_scales(scales, scales * 1.5)
    return system


def _cache_matmuls(program, capacity: int) -> list[str]:
    """Matmul-like nodes of an exported program with an operand spanning the cache's capacity."""
    found = []
    for node in program.graph.nodes:
        if node.op != "call_function" or not any(k in str(node.target) for k in ATTENTION_OPS):
            continue
        shapes = [tuple(a.meta["val"].shape) for a in node.args if hasattr(a, "meta") and "val" in a.meta
                  and hasattr(a.meta["val"], "shape")]
        if any(capacity in s or capacity + 1 in s for s in shapes):
            found.append(str(node.target))
    return found


@pytest.mark.parametrize("stage", ["thinker_step", "flow_step"])
def test_exported_program_holds_the_kernel_and_no_score_matmul_over_the_cache(tiny, stage):
    counts = {}
    for attention in ("triton", "torch"):
        spec = next(s for s in make_stages(_system(tiny, attention=attention)) if s.name == stage)
        with torch.no_grad():
            program = torch.export.export(spec.module, tuple(spec.example_inputs.values()), strict=False)
        kernel = sum(1 for n in program.graph.nodes if "streamer.block_attention" in str(n.target))
        counts[attention] = (kernel, _cache_matmuls(program, tiny.cache_capacity))
    kernel, matmuls = counts["triton"]
    assert kernel > 0 and matmuls == [], counts["triton"]
    assert counts["torch"][0] == 0 and counts["torch"][1], "the control (reference attention) matmuls over the cache"
    report(f"torch.export {stage} tiny bf16: {kernel} block_attention nodes, no matmul over the "
           f"{tiny.cache_capacity}-slot cache (reference attention: {len(counts['torch'][1])} such matmuls)")


def _matmul_input_shapes(model: onnx.ModelProto) -> list[tuple]:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
              for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    return [shapes.get(i, ()) for n in inferred.graph.node if n.op_type in ("MatMul", "Gemm") for i in n.input]


def test_streamer_export_writes_bf16_onnx_with_the_kernel_nodes(tmp_path, tiny):
    out = tmp_path / "export"
    assert main(["export", "--preset", "tiny", "--weights-seed", "0", "--precision", "bf16", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["backend"], manifest["precision"], manifest["attention"]) == ("onnx", "bf16", "triton")
    assert manifest["kv_cache"]["dtype"] == "bfloat16"
    io = {name: {t["name"]: t["dtype"] for t in info["inputs"] + info["outputs"]}
          for name, info in manifest["stages"].items()}
    for name in ("video_in", "audio_in", "audio_prev", "video_prev", "cache_k", "cache_v", "k_delta", "v_delta"):
        assert io["thinker_step"][name] == "bfloat16", name
    assert io["thinker_step"]["text_logits"] == "float32" and io["flow_step"]["t"] == "float32"
    assert io["flow_step"]["noisy_video"] == "bfloat16" and io["flow_step"]["v_video"] == "float32"
    assert set(io["video_dec"].values()) == {"float32"}  # the codecs stay fp32
    for stage in ("thinker_step", "flow_step"):
        model = onnx.load(str(out / f"{stage}.onnx"))
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("BlockAttentionPartial") == ops.count("BlockAttentionCombine") > 0
        assert "Softmax" not in ops
        assert not [s for s in _matmul_input_shapes(model) if tiny.cache_capacity in s], stage
    report("streamer export tiny bf16: plugin nodes in thinker_step and flow_step, no MatMul over the cache")


def test_fp8_cache_exports_per_layer_inputs_into_the_fp8_plugin(tmp_path, tiny):
    from export.onnx_export import export_stage

    spec = next(s for s in make_stages(_system(tiny, fp8=True)) if s.name == "flow_step")
    inputs, _ = export_stage(per_layer_cache(spec), tmp_path / "flow_step.onnx")
    dtypes = {t.name: t.dtype for t in inputs}
    assert dtypes["cache_k_0"] == dtypes["cache_v_1"] == "float8_e4m3fn" and "cache_k" not in dtypes
    model = onnx.load(str(tmp_path / "flow_step.onnx"))
    partial = [n for n in model.graph.node if n.op_type == "BlockAttentionPartialFP8"]
    graph_inputs = {i.name for i in model.graph.input}
    assert len(partial) == tiny.n_layers and all(n.input[1] in graph_inputs for n in partial)


def test_verify_judges_each_precision_by_its_tolerance(tiny):
    """A bf16 flow_step passes bf16's tolerance and fails fp32's; an FP8 cache passes FP8's."""
    from export.verify import check_stage
    from runtime.device.device import Device
    from runtime.device.engines import HostCall, TorchDeviceEngine
    from runtime.manifest import TensorSpec

    reference = next(s for s in make_stages(build_system(tiny, seed=0)) if s.name == "flow_step")
    results = {}
    for label, fp8 in (("bf16", False), ("bf16+fp8 cache", True)):
        system = _system(tiny, attention="torch", fp8=fp8)
        spec = next(s for s in make_stages(system) if s.name == "flow_step")
        with torch.no_grad():
            outs = spec.module(*spec.example_inputs.values())
        io = lambda names, xs: [TensorSpec(n, tuple(x.shape), str(x.dtype)[6:]) for n, x in zip(names, xs)]  # noqa: E731
        engine = TorchDeviceEngine("flow_step", io(spec.example_inputs, spec.example_inputs.values()),
                                   io(spec.output_names, outs), Device("cpu"), spec.module)
        scales = tuple(system.model.backbone.kv_cache_scales) if fp8 else None
        results[label] = check_stage(reference, HostCall(engine), "bf16", 2, torch.Generator().manual_seed(0), tiny,
                                     scales)
    bf16 = results["bf16"]
    assert bf16.ok and bf16.cosine >= tolerance("bf16").min_cosine
    assert bf16.max_rel > tolerance("fp32").max_rel  # fp32's tolerance would refuse it
    assert results["bf16+fp8 cache"].ok and results["bf16+fp8 cache"].limit == tolerance("fp8")
    report(f"verify flow_step tiny: bf16 cosine {bf16.cosine:.5f} (max rel {bf16.max_rel:.1e}); with an FP8 cache "
           f"cosine {results['bf16+fp8 cache'].cosine:.5f}")


@pytest.mark.parametrize("options, message", [
    (dict(backend="ort", precision="bf16"), "no bf16 kernels"),
    (dict(backend="ort", attention="triton"), "no kernel for the streamer::BlockAttention"),
    (dict(backend="aoti", precision="bf16"), "add --device cuda"),
    (dict(backend="aoti", attention="triton"), "Triton kernels compile for GPUs only"),
    (dict(backend="onnx", kv_cache="fp8"), "needs --calibration"),
    (dict(backend="aoti", kv_cache="fp8", calibration="c"), "FP8 caches are for GPUs"),
    (dict(backend="onnx", kv_cache="fp8", attention="sdpa", calibration="c"), "needs --attention triton"),
    (dict(backend="trt", precision="int8", calibration="c", attention="triton"), "takes --attention torch"),
])
def test_build_options_refuse_what_cannot_be_built(options, message):
    with pytest.raises(BuildOptionError, match=message):
        BuildOptions(**options).resolve()
    assert BuildOptions(backend="onnx").resolve().attention == "triton"  # CUDA targets default to our kernel
    assert BuildOptions(backend="ort").resolve().attention == "torch"
