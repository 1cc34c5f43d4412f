"""Conditional flow matching: the Euler solver and a loss that training actually lowers."""
import torch

from helpers import random_units, report, unit
from model_src.flow import euler_solve, flow_matching_loss, timestep_features
from model_src.kv_cache import append_unit, init_cache
from model_src.system import build_system


def test_euler_follows_straight_paths_exactly():
    """With the exact rectified-flow velocity (x1 - x) / (1 - t), any number of Euler steps lands on x1."""
    target_a, target_v = torch.randn(2, 4, 8), torch.randn(2, 16, 4, 4)
    noise_a, noise_v = torch.randn_like(target_a), torch.randn_like(target_v)
    calls = []

    def velocity(xa, xv, t):
        calls.append(t.clone())
        return (target_a - xa) / (1 - t).view(-1, 1, 1), (target_v - xv) / (1 - t).view(-1, 1, 1, 1)

    for n in (1, 4, 7):
        calls.clear()
        ya, yv = euler_solve(velocity, noise_a, noise_v, n)
        assert torch.allclose(ya, target_a, atol=1e-5) and torch.allclose(yv, target_v, atol=1e-5)
        assert [round(float(t[0]), 6) for t in calls] == [round(i / n, 6) for i in range(n)]


def test_timestep_features_distinguish_times():
    f = timestep_features(torch.tensor([0.0, 0.25, 1.0]), 64)
    assert f.shape == (3, 64) and torch.cdist(f, f).triu(1)[torch.triu(torch.ones(3, 3), 1) > 0].min() > 1.0


def test_flow_loss_decreases_when_training_on_a_fixed_target(tiny):
    torch.manual_seed(0)
    system = build_system(tiny, seed=0)
    model = system.model.train()
    inputs = random_units(tiny, 1, 2)
    cache = init_cache(tiny, 1)
    with torch.no_grad():
        for k in range(2):
            out = model.thinker_step(*unit(inputs, k), *cache, torch.tensor([k]))
            append_unit(tiny, cache, out.k_delta, out.v_delta, k)
    g = torch.Generator().manual_seed(1)
    # one fixed target latent (batched over 4 noise draws): learnable exactly, v = (x1 - x_t) / (1 - t)
    target_a = torch.randn(1, tiny.audio_frames_per_unit, tiny.audio_z, generator=g).expand(4, -1, -1)
    target_v = torch.randn(1, tiny.video_z, tiny.latent_height, tiny.latent_width, generator=g).expand(4, -1, -1, -1)
    batched = [c.expand(*c.shape[:1], 4, *c.shape[2:]) if c.dim() == 5 else c.expand(4) for c in cache]
    index = torch.tensor([1]).expand(4)

    def velocity(xa, xv, t):
        return model.flow_step(xa, xv, t, *batched, index)

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        loss = flow_matching_loss(velocity, target_a, target_v, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
    report(f"flow matching loss: first 30 steps {first:.3f}, last 30 steps {last:.3f}")
    assert last < 0.5 * first
    with torch.no_grad():  # and the trained solver moves its samples toward the targets
        na, nv = torch.randn(target_a.shape, generator=g), torch.randn(target_v.shape, generator=g)
        ya, yv = euler_solve(velocity, na, nv, tiny.flow_steps)
    assert (ya - target_a).pow(2).mean() < 0.5 * (na - target_a).pow(2).mean()
