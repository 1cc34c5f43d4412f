"""The video VAE against diffusers' AutoencoderKLWan, and streamed == offline for encode and decode."""
import pytest
import torch
from diffusers import AutoencoderKLWan

from helpers import report_error
from model_src.config import get_preset
from model_src.video_vae import VideoVAE


def _pair(p, seed=0):
    torch.manual_seed(seed)
    wan = AutoencoderKLWan(base_dim=p.video_vae_dim, z_dim=p.video_z).eval()
    with torch.no_grad():  # non-trivial norm gains, so a misplaced norm shows
        for name, t in wan.named_parameters():
            if name.endswith("gamma"):
                t.uniform_(0.5, 1.5)
    ours = VideoVAE(p).eval()
    ours.load_state_dict(wan.state_dict())
    return wan, ours


def _clip(p, units, seed=1):
    """The priming frame (mid-gray) followed by `units` random units: 1 + 4k frames, as Wan expects."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(1, 3, 4 * units, p.frame_height, p.frame_width, generator=g) * 2 - 1
    return torch.cat([torch.zeros(1, 3, 1, p.frame_height, p.frame_width), frames], dim=2)


@pytest.mark.parametrize("preset,units", [("tiny", 3), ("small", 2)])
def test_stream_matches_wan(preset, units):
    """Streaming unit by unit from the priming frame gives diffusers' latents and frames for the clip."""
    p = get_preset(preset)
    if preset == "small":
        p = p.replace(video_vae_dim=16)  # the small preset's frame size, narrower channels: fast on a CPU
    wan, ours = _pair(p)
    clip = _clip(p, units)
    with torch.no_grad():
        want_z = wan.encode(clip).latent_dist.mean
        state, zs = ours.init_encoder_state(1), [ours.priming_latent(1)[:, :, 0]]
        for k in range(units):
            z, state = ours.encode_step(clip[:, :, 1 + 4 * k:5 + 4 * k], state)
            zs.append(z)
        got_z = torch.stack(zs, dim=2)
        assert report_error(f"{preset} latents vs AutoencoderKLWan", got_z, want_z) < 1e-4

        want_x = wan.decode(want_z).sample
        state, xs = ours.init_decoder_state(1), []
        for k in range(units):
            x, state = ours.decode_step(want_z[:, :, 1 + k], state)
            xs.append(x)
        got_x = torch.cat(xs, dim=2)
        assert report_error(f"{preset} frames vs AutoencoderKLWan", got_x, want_x[:, :, 1:]) < 1e-4


def test_streamed_equals_offline_chunk(tiny):
    """Per-unit steps equal one offline call over all units (the temporal resamplers see 4k frames)."""
    torch.manual_seed(0)
    vae = VideoVAE(tiny).eval()
    clip = _clip(tiny, 4)[:, :, 1:]
    with torch.no_grad():
        offline, _ = vae.encode_chunk(clip, vae.init_encoder_state(1))
        state, zs = vae.init_encoder_state(1), []
        for k in range(4):
            z, state = vae.encode_step(clip[:, :, 4 * k:4 * k + 4], state)
            zs.append(z)
        assert report_error("encode streamed vs offline", torch.stack(zs, 2), offline) < 1e-5
        frames, _ = vae.decode_chunk(offline, vae.init_decoder_state(1))
        state, xs = vae.init_decoder_state(1), []
        for k in range(4):
            x, state = vae.decode_step(offline[:, :, k], state)
            xs.append(x)
        assert report_error("decode streamed vs offline", torch.cat(xs, 2), frames) < 1e-5


def test_loads_a_diffusers_checkpoint_and_refuses_other_shapes(tmp_path, tiny):
    from model_src.weights import WeightsError, load_wan_vae_checkpoint

    wan, _ = _pair(tiny, seed=2)
    wan.save_pretrained(tmp_path / "wan")  # diffusion_pytorch_model.safetensors, as published
    vae = VideoVAE(tiny)
    load_wan_vae_checkpoint(vae, tmp_path / "wan")
    for name, t in wan.state_dict().items():
        assert torch.equal(vae.state_dict()[name], t), name
    with pytest.raises(WeightsError, match=r"tensor 'encoder\.conv_in\.weight' has shape \(8, 3, 3, 3, 3\), "
                                           r"the model expects \(16, 3, 3, 3, 3\)"):
        load_wan_vae_checkpoint(VideoVAE(tiny.replace(video_vae_dim=16)), tmp_path / "wan")
    with pytest.raises(WeightsError, match="does not exist"):
        load_wan_vae_checkpoint(vae, tmp_path / "nowhere")


def test_bad_unit_shapes_are_named(tiny):
    vae = VideoVAE(tiny)
    state = vae.init_encoder_state(1)
    with pytest.raises(ValueError, match=r"expected a tensor \[B, rgb=3, frames=4, height=32, width=32\], "
                                         r"got shape \(1, 3, 3, 32, 32\)"):
        vae.encode_step(torch.zeros(1, 3, 3, 32, 32), state)
    with pytest.raises(ValueError, match="got shape \\(1, 16, 5, 4\\)"):
        vae.decode_step(torch.zeros(1, 16, 5, 4), vae.init_decoder_state(1))
