"""Every module a build exports for a device holds all its parameters and buffers on that device: each
stage moved to `meta` (no memory, any device's rules), the old bound-method codec planted back and caught,
and the builder's error names the stage and the tensor before torch.export runs."""
import pytest
import torch
from torch import nn

from export.aoti_export import export_stage_aoti
from export.placement import PlacementError, misplaced
from model_src.stages import StageSpec, make_stages
from model_src.system import build_system


class BoundMethodCodec(nn.Module):
    """The old CodecStep: the VAE reached through a bound method, so it is not a submodule."""

    def __init__(self, step) -> None:
        super().__init__()
        self.step = step

    def forward(self, x, *state):
        y, new_state = self.step(x, state)
        return (y, *new_state)


@pytest.fixture
def stages(tiny):
    return make_stages(build_system(tiny))  # a system of its own: moved to meta below


def test_every_stage_moves_all_its_tensors_with_to(stages):
    for spec in stages:
        spec.module.to("meta")
    for spec in stages:
        tensors = list(spec.module.parameters()) + list(spec.module.buffers())
        assert tensors, f"{spec.name} holds no parameters: its weights are not in the module tree"
        assert all(t.device.type == "meta" for t in tensors), spec.name
        assert misplaced(spec.module, "meta") == [], spec.name


def test_a_codec_behind_a_bound_method_or_a_plain_tensor_is_caught(stages):
    spec = next(s for s in stages if s.name == "audio_enc")
    old = BoundMethodCodec(spec.module.vae.encode_step).to("meta")
    assert list(old.parameters()) == []  # what the parameter walk alone sees: nothing to move
    wrong = misplaced(old, "meta")
    assert wrong and all("__self__" in w and "(cpu, a module held by a bound method" in w for w in wrong), wrong[:3]
    assert len(wrong) == len(list(spec.module.vae.parameters())) + len(list(spec.module.vae.buffers()))
    module = spec.module.to("meta")
    module.scale = torch.ones(3)  # a tensor kept as a plain attribute: .to() leaves it behind
    assert misplaced(module.to("meta"), "meta") == ["scale (cpu, a plain attribute: .to() does not move it)"]


def test_the_builder_names_the_stage_and_tensor_instead_of_failing_inside_export(stages, tmp_path, monkeypatch):
    spec = next(s for s in stages if s.name == "video_dec")
    planted = StageSpec(spec.name, BoundMethodCodec(spec.module.vae.decode_step), spec.example_inputs,
                        spec.output_names, spec.initial_state)

    def export(*args, **kwargs):
        raise AssertionError("torch.export reached with a misplaced module")

    monkeypatch.setattr(torch.export, "export", export)
    with pytest.raises(PlacementError, match=r"stage video_dec: built for meta, but \d+ tensor\(s\) .* "
                                             r"step\.__self__\.\S+ \(cpu, a module held by a bound method"):
        export_stage_aoti(planted, tmp_path / "video_dec.pt2", device="meta")
