"""Shared test helpers (imported by the tests; pytest puts tests/ on sys.path)."""
import numpy as np
import torch

MEASURED: list[str] = []  # numbers the tests measured; conftest prints them at the end of the run


def report(line: str) -> None:
    """Record a measured number (an oracle error, a loss) for the run's summary, and print it."""
    MEASURED.append(line)
    print(line)


def assert_same_outputs(want: list, got: list, want_last, got_last) -> None:
    """Two sessions' UnitResults bitwise equal: unit indices, tokens, audio and frames (None where the
    first unit has no media), and their flushed last units."""
    assert len(want) == len(got)
    for a, b in zip(want, got):
        assert a.unit_index == b.unit_index
        np.testing.assert_array_equal(a.text_tokens, b.text_tokens)
        if a.audio is None:
            assert b.audio is None
        else:
            np.testing.assert_array_equal(a.audio, b.audio)
            np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(want_last.audio, got_last.audio)
    np.testing.assert_array_equal(want_last.frames, got_last.frames)


def random_units(p, batch: int, units: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random per-unit model inputs with a unit axis: the arguments of `AVModel.forward_offline`."""
    g = torch.Generator().manual_seed(seed)
    a, h, w = p.audio_frames_per_unit, p.latent_height, p.latent_width
    return {
        "text_in": torch.randint(0, p.vocab_size, (batch, units, p.text_in_tokens), generator=g),
        "video_in": torch.randn(batch, units, p.video_z, h, w, generator=g),
        "audio_in": torch.randn(batch, units, a, p.audio_z, generator=g),
        "audio_prev": torch.randn(batch, units, a, p.audio_z, generator=g),
        "video_prev": torch.randn(batch, units, p.video_z, h, w, generator=g),
    }


def unit(inputs: dict[str, torch.Tensor], k: int) -> tuple[torch.Tensor, ...]:
    """The thinker_step arguments of unit k, in order."""
    return tuple(inputs[n][:, k] for n in ("text_in", "video_in", "audio_in", "audio_prev", "video_prev"))


def report_error(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    """Print max abs and relative error of `got` against a reference; return the relative one."""
    err = (got - want).abs().max().item()
    rel = err / want.abs().max().item()
    report(f"{name}: max abs {err:.2e}, max rel {rel:.2e} (scale {want.abs().max().item():.2e})")
    return rel


def adam_steps(loss_module, params, make_batch, steps: int = 6, lr: float = 3e-3, part: str | None = None) -> list[float]:
    """Adam on one fixed batch `make_batch()` (the loss module's arguments): the loss of each step, or
    with `part` that named term of the loss module's parts."""
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss, parts = loss_module(*make_batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float((parts[part] if part else loss).detach()))
    return losses
