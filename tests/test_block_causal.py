"""Semantics of the block-causal mask, in the mask itself and in the model's outputs."""
import torch

from helpers import random_units
from model_src.layout import SEGMENTS, TYPE_IDS, UnitLayout, block_causal_mask


def test_mask_rules(tiny):
    lay = UnitLayout.from_preset(tiny)
    t, n_units = lay.tokens, 4
    mask = block_causal_mask(lay, n_units)
    unit = torch.arange(n_units * t) // t
    seg = lay.segment_ids().repeat(n_units)
    text = seg == TYPE_IDS["text_out"]
    # a token never sees a later unit, and always sees every token of every earlier unit
    assert not (mask & (unit[None, :] > unit[:, None])).any()
    assert mask[unit[:, None] > unit[None, :]].all()
    same = unit[:, None] == unit[None, :]
    # inside a unit: every token sees every non-text_out token ...
    assert mask[same & ~text[None, :]].all()
    # ... no non-text_out token sees text_out, and text_out is token-causal
    assert not mask[same & ~text[:, None] & text[None, :]].any()
    i, j = torch.meshgrid(torch.arange(n_units * t), torch.arange(n_units * t), indexing="ij")
    tt = same & text[:, None] & text[None, :]
    assert torch.equal(mask[tt], (j <= i)[tt])


def test_windowed_mask_keeps_sinks_and_recent_units(tiny):
    lay = UnitLayout.from_preset(tiny)
    t = lay.tokens
    mask = block_causal_mask(lay, 8, sink_units=1, window_units=3)
    seen_units = {int(u) for u in torch.nonzero(mask[7 * t])[:, 0] // t}  # first token of unit 7
    assert seen_units == {0, 4, 5, 6, 7}


def _offline(model, inputs, text_out):
    with torch.no_grad():
        return model.forward_offline(**inputs, text_out=text_out)


def test_changing_a_later_unit_never_changes_an_earlier_one(tiny, tiny_system):
    model, n_units = tiny_system.model, 4
    inputs = random_units(tiny, 1, n_units)
    text_out = torch.randint(0, tiny.vocab_size, (1, n_units, tiny.text_out_tokens))
    h0, l0 = _offline(model, inputs, text_out)
    changed = {k: v.clone() for k, v in inputs.items()}
    for name, v in changed.items():  # unit 2 changes in every segment
        v[:, 2] = torch.randint_like(v[:, 2], 0, tiny.vocab_size) if name == "text_in" else torch.randn_like(v[:, 2])
    text2 = text_out.clone()
    text2[:, 2] = (text2[:, 2] + 1) % tiny.vocab_size
    h1, l1 = _offline(model, changed, text2)
    assert torch.equal(h0[:, :2], h1[:, :2]) and torch.equal(l0[:, :2], l1[:, :2])
    assert (h0[:, 2:] - h1[:, 2:]).abs().amax(dim=(0, 2, 3)).min() > 1e-3  # units 2 and 3 do change


def test_text_out_only_affects_later_text_tokens(tiny, tiny_system):
    inputs = random_units(tiny, 1, 2)
    text_out = torch.randint(0, tiny.vocab_size, (1, 2, tiny.text_out_tokens))
    h0, _ = _offline(tiny_system.model, inputs, text_out)
    text2 = text_out.clone()
    text2[0, 0, -1] = (text2[0, 0, -1] + 1) % tiny.vocab_size  # the last text_out token of unit 0
    h1, _ = _offline(tiny_system.model, inputs, text2)
    last = UnitLayout.from_preset(tiny).tokens - 1
    assert torch.equal(h0[0, 0, :last], h1[0, 0, :last])
    assert not torch.allclose(h0[0, 0, last], h1[0, 0, last]) and not torch.allclose(h0[0, 1], h1[0, 1])
    assert SEGMENTS[-1] == "text_out"
