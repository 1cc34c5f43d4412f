"""The backbone against transformers' Qwen3ForCausalLM: same weights, compared logits."""
import json
import math

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from helpers import report
from model_src.backbone import Backbone, qwen3_state_dict_to_backbone
from model_src.config import get_preset
from model_src.rope import inv_frequencies, rope_cos_sin, rope_tables
from model_src.weights import WeightsError, load_qwen3_checkpoint


def _pair(tie: bool, seed: int = 0):
    p = get_preset("tiny").replace(tie_embeddings=tie, n_layers=3)
    cfg = Qwen3Config(vocab_size=p.vocab_size, hidden_size=p.hidden, intermediate_size=p.intermediate,
                      num_hidden_layers=p.n_layers, num_attention_heads=p.n_heads, num_key_value_heads=p.n_kv_heads,
                      head_dim=p.head_dim, rms_norm_eps=p.rms_eps, tie_word_embeddings=tie,
                      rope_parameters={"rope_type": "default", "rope_theta": p.rope_theta})
    torch.manual_seed(seed)
    reference = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights, so a swapped or missing norm shows
        for name, t in reference.named_parameters():
            if name.endswith("norm.weight"):
                t.uniform_(0.5, 1.5)
    return p, reference


@pytest.mark.parametrize("tie", [True, False])
def test_logits_match_transformers_qwen3(tie):
    p, reference = _pair(tie)
    ours = Backbone(p).eval()
    ours.load_state_dict(qwen3_state_dict_to_backbone(reference.state_dict()))
    ids = torch.randint(0, p.vocab_size, (2, 57), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(input_ids=ids).logits
        got = ours.forward_causal(ids)
    err = (got - want).abs().max().item()
    report(f"Qwen3 parity (tie={tie}): max abs logit diff {err:.3e}, logit scale {want.abs().max():.3e}")
    assert err < 1e-4


def test_loads_a_transformers_checkpoint_folder(tmp_path):
    p, reference = _pair(tie=True, seed=3)
    reference.save_pretrained(tmp_path)  # safetensors, as published checkpoints are
    ours = Backbone(p).eval()
    load_qwen3_checkpoint(ours, tmp_path)
    ids = torch.randint(0, p.vocab_size, (1, 20))
    with torch.no_grad():
        assert torch.allclose(ours.forward_causal(ids), reference(input_ids=ids).logits, atol=1e-4)


def test_checkpoint_of_other_dims_is_refused_naming_the_tensor(tmp_path):
    p, reference = _pair(tie=True)
    reference.save_pretrained(tmp_path)
    other = Backbone(p.replace(intermediate=96))
    with pytest.raises(WeightsError, match=r"config.json: intermediate_size is 128, the model's preset has 96"):
        load_qwen3_checkpoint(other, tmp_path)  # config.json is read first
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))  # a config that lies
    with pytest.raises(WeightsError, match=r"layers\.0\.mlp\.\w+_proj\.weight' has shape \(\d+, \d+\), the model expects"):
        load_qwen3_checkpoint(other, tmp_path)


def test_rope_stays_exact_at_hour_long_positions():
    """The split-angle RoPE matches a float64 reference at 5.7 M positions where plain float32 does not."""
    d, theta = 128, 1e6
    positions = torch.tensor([[0, 1, 4095, 4096, 123_457, 5_700_001]])
    inv, coarse = rope_tables(d, theta)
    cos, sin = rope_cos_sin(positions, inv, coarse)
    exact = positions[0, :, None].double() * inv_frequencies(d, theta).double()
    exact = torch.cat([exact, exact], -1)
    err = (cos[0, 0].double() - exact.cos()).abs().max().item()
    naive = (torch.cos(positions[0, :, None].float() * inv.float()).double() - exact[:, : d // 2].cos()).abs().max()
    report(f"RoPE cos error at 5.7M positions: split {err:.2e}, naive float32 {naive:.2e}")
    assert err < 2e-3 and naive > 10 * err
    assert math.isclose(sin[0, 0, 1, 0].item(), math.sin(1.0), rel_tol=1e-6)
