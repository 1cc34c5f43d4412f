"""Presets: DESIGN.md's token counts, and every preset builds and runs its steps on the meta device."""
import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from helpers import report
from model_src.config import PRESETS, Preset, get_preset
from model_src.kv_cache import init_cache
from model_src.layout import UnitLayout
from model_src.model import parameter_count
from model_src.system import build_system


def test_base_preset_matches_design_table():
    p = get_preset("base")
    assert (p.samples_per_unit, p.unit_ms, p.frames_per_unit) == (3840, 160.0, 4)
    lay = UnitLayout.from_preset(p)
    sizes = dict(zip(("text_in", "video_in", "audio_in", "audio_out", "video_out", "text_out"), lay.sizes))
    assert sizes == {"text_in": 2, "video_in": 48, "audio_in": 4, "audio_out": 4, "video_out": 192, "text_out": 2}
    assert p.tokens_per_unit == lay.tokens == 252
    assert p.flow_tokens == 196


def test_bad_preset_is_refused_with_reason():
    with pytest.raises(ValueError, match="frame_height=30 must be a multiple of 32"):
        Preset(name="odd", frame_height=30)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        get_preset("huge")


@pytest.mark.parametrize("name", ["small", "base", "large"])
def test_backbone_has_the_parameter_count_of_its_reference_model(name):
    """Our backbone on meta has exactly as many parameters as transformers' Qwen3 with the same dims."""
    p = PRESETS[name]
    cfg = Qwen3Config(vocab_size=p.vocab_size, hidden_size=p.hidden, intermediate_size=p.intermediate,
                      num_hidden_layers=p.n_layers, num_attention_heads=p.n_heads, num_key_value_heads=p.n_kv_heads,
                      head_dim=p.head_dim, tie_word_embeddings=p.tie_embeddings)
    with torch.device("meta"):
        reference = Qwen3ForCausalLM(cfg)
    ours = build_system(p, device="meta").model.backbone
    assert parameter_count(ours) == parameter_count(reference)
    report(f"{name}: {parameter_count(build_system(p, device='meta')):,} parameters in the whole system")


@pytest.mark.parametrize("name", list(PRESETS))
def test_step_shapes_for_every_preset(name):
    """thinker_step and flow_step give the documented shapes (meta tensors: no compute, no memory)."""
    p = PRESETS[name]
    device = "cpu" if name == "tiny" else "meta"
    model = build_system(p, device=device).model
    a, h, w = p.audio_frames_per_unit, p.latent_height, p.latent_width
    with torch.device(device), torch.no_grad():
        cache = init_cache(p, batch=1, device=device)
        idx = torch.zeros(1, dtype=torch.int64)
        out = model.thinker_step(torch.zeros(1, p.text_in_tokens, dtype=torch.int64),
                                 torch.zeros(1, p.video_z, h, w), torch.zeros(1, a, p.audio_z),
                                 torch.zeros(1, a, p.audio_z), torch.zeros(1, p.video_z, h, w), *cache, idx)
        va, vv = model.flow_step(torch.zeros(1, a, p.audio_z), torch.zeros(1, p.video_z, h, w), torch.zeros(1),
                                 *cache, idx)
    delta = (p.n_layers, 1, p.n_kv_heads, p.tokens_per_unit, p.head_dim)
    assert tuple(out.k_delta.shape) == tuple(out.v_delta.shape) == delta
    assert tuple(out.text_logits.shape) == (1, p.text_out_tokens, p.vocab_size)
    assert tuple(out.text_tokens.shape) == (1, p.text_out_tokens)
    assert tuple(out.hidden.shape) == (1, p.tokens_per_unit, p.hidden)
    assert tuple(cache.k.shape) == (p.n_layers, 1, p.n_kv_heads, p.cache_capacity, p.head_dim)
    assert tuple(va.shape) == (1, a, p.audio_z) and tuple(vv.shape) == (1, p.video_z, h, w)
