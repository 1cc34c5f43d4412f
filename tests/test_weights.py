"""Weights: safetensors round trip with the preset in the metadata; clear refusals."""
import pytest
import torch

from model_src.config import get_preset
from model_src.system import build_system
from model_src.weights import WeightsError, load_weights, read_preset, save_weights


def test_round_trip_keeps_every_tensor_and_the_tie(tmp_path, tiny):
    src = build_system(tiny, seed=5)
    save_weights(src, tiny, tmp_path / "w.safetensors")
    assert read_preset(tmp_path / "w.safetensors") == tiny
    dst = build_system(tiny, seed=6)
    load_weights(dst, tiny, tmp_path / "w.safetensors")
    for (name, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), name
    bb = dst.model.backbone
    assert bb.lm_head.weight is bb.embed_tokens.weight


def test_file_of_another_preset_is_refused_naming_both(tmp_path, tiny):
    save_weights(build_system(tiny), tiny, tmp_path / "tiny.safetensors")
    small = get_preset("small")
    with pytest.raises(WeightsError, match="was made for preset 'tiny', but the model is preset 'small'"):
        load_weights(build_system(small, device="meta"), small, tmp_path / "tiny.safetensors")
    changed = tiny.replace(flow_steps=8)
    with pytest.raises(WeightsError, match="differs in its settings"):
        load_weights(build_system(changed), changed, tmp_path / "tiny.safetensors")


def test_damaged_or_foreign_files_are_refused(tmp_path, tiny):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        read_preset(bad)
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(WeightsError, match="expected weights format"):
        read_preset(tmp_path / "foreign.safetensors")
    with pytest.raises(WeightsError, match="does not exist"):
        read_preset(tmp_path / "missing.safetensors")
