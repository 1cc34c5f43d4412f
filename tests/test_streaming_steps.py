"""Streamed equals offline: thinker_step unit by unit against forward_offline with the block-causal mask."""
import pytest
import torch

from helpers import random_units, report, unit
from model_src.kv_cache import append_unit, cache_slot, init_cache


def _stream(model, p, inputs, n_units, batch, text_out=None):
    cache = init_cache(p, batch)
    outs = []
    with torch.no_grad():
        for k in range(n_units):
            forced = None if text_out is None else text_out[:, k]
            out = model.thinker_step(*unit(inputs, k), *cache, torch.full((batch,), k), text_out=forced)
            append_unit(p, cache, out.k_delta, out.v_delta, k)
            outs.append(out)
    return outs, cache


@pytest.mark.parametrize("sink,window,n_units", [(1, 15, 6), (1, 3, 9), (0, 2, 6)])
def test_thinker_streamed_equals_offline(tiny, sink, window, n_units):
    """Greedy streaming, then the offline teacher-forced forward on the tokens it chose (ring eviction on)."""
    from model_src.system import build_system

    p = tiny.replace(sink_units=sink, window_units=window)
    model = build_system(p, seed=1).model
    batch = 2
    inputs = random_units(p, batch, n_units, seed=2)
    outs, _ = _stream(model, p, inputs, n_units, batch)
    tokens = torch.stack([o.text_tokens for o in outs], 1)
    with torch.no_grad():
        hidden, logits = model.forward_offline(**inputs, text_out=tokens, sink_units=sink, window_units=window)
    h_err = (torch.stack([o.hidden for o in outs], 1) - hidden).abs().max().item()
    l_err = (torch.stack([o.text_logits for o in outs], 1) - logits).abs().max().item()
    report(f"sink={sink} window={window} units={n_units}: hidden max abs {h_err:.2e}, logits {l_err:.2e}")
    assert h_err < 1e-5 and l_err < 1e-5
    assert torch.equal(tokens, logits.argmax(-1))  # the streamed greedy tokens are the offline argmax


def test_forced_text_equals_greedy_when_the_same(tiny, tiny_system):
    inputs = random_units(tiny, 1, 3)
    greedy, _ = _stream(tiny_system.model, tiny, inputs, 3, 1)
    forced, _ = _stream(tiny_system.model, tiny, inputs, 3, 1, torch.stack([o.text_tokens for o in greedy], 1))
    for a, b in zip(greedy, forced):
        assert torch.equal(a.hidden, b.hidden) and torch.equal(a.k_delta, b.k_delta)


def test_invalid_cache_slots_are_never_read(tiny, tiny_system):
    """Garbage past the cache length changes nothing, for both steps."""
    model = tiny_system.model
    inputs = random_units(tiny, 1, 3)
    _, cache = _stream(model, tiny, inputs, 3, 1)
    dirty = type(cache)(cache.k.clone(), cache.v.clone(), cache.length.clone())
    n = int(cache.length[0])
    dirty.k[..., n:, :] = 1e4 * torch.randn_like(dirty.k[..., n:, :])
    dirty.v[..., n:, :] = 1e4 * torch.randn_like(dirty.v[..., n:, :])
    idx = torch.tensor([3])
    noise_a = torch.randn(1, tiny.audio_frames_per_unit, tiny.audio_z)
    noise_v = torch.randn(1, tiny.video_z, tiny.latent_height, tiny.latent_width)
    with torch.no_grad():
        clean = model.thinker_step(*unit(inputs, 2), *cache, idx)
        other = model.thinker_step(*unit(inputs, 2), *dirty, idx)
        fa, fv = model.flow_step(noise_a, noise_v, torch.tensor([0.5]), *cache, idx)
        ga, gv = model.flow_step(noise_a, noise_v, torch.tensor([0.5]), *dirty, idx)
    assert torch.equal(clean.hidden, other.hidden)
    assert torch.equal(fa, ga) and torch.equal(fv, gv)


def test_flow_step_sees_the_current_unit(tiny, tiny_system):
    model = tiny_system.model
    inputs = random_units(tiny, 1, 2)
    _, cache = _stream(model, tiny, inputs, 2, 1)
    noise_a = torch.randn(1, tiny.audio_frames_per_unit, tiny.audio_z)
    noise_v = torch.randn(1, tiny.video_z, tiny.latent_height, tiny.latent_width)
    t = tiny.tokens_per_unit
    with torch.no_grad():
        before = model.flow_step(noise_a, noise_v, torch.tensor([0.25]), *cache, torch.tensor([1]))
        cache.v[..., t:2 * t, :] += 1.0  # unit 1's values
        after = model.flow_step(noise_a, noise_v, torch.tensor([0.25]), *cache, torch.tensor([1]))
    assert not torch.allclose(before[0], after[0]) and not torch.allclose(before[1], after[1])


def test_ring_buffer_slots(tiny):
    p = tiny.replace(sink_units=1, window_units=3)
    assert [cache_slot(p, k) for k in range(10)] == [0, 1, 2, 3, 1, 2, 3, 1, 2, 3]
    cache = init_cache(p, 1)
    delta = torch.ones(p.n_layers, 1, p.n_kv_heads, p.tokens_per_unit, p.head_dim)
    for k in range(6):
        append_unit(p, cache, delta * k, delta * k, k)
    assert int(cache.length[0]) == p.cache_capacity
    t = p.tokens_per_unit
    assert [int(cache.k[0, 0, 0, s * t, 0]) for s in range(4)] == [0, 4, 5, 3]
    with pytest.raises(ValueError, match=r"KV delta must be \[n_layers, B, Hkv, 17, D\]"):
        append_unit(p, cache, delta[..., :5, :], delta[..., :5, :], 6)
