"""The audio VAE against transformers' Mimi convs, and streamed == offline for encode and decode."""
import pytest
import torch
from transformers import MimiConfig, MimiModel

from model_src.audio_vae import AudioVAE
from helpers import report_error
from model_src.config import get_preset


def _mimi_pair(p, seed=0):
    cfg = MimiConfig(num_filters=p.audio_filters, hidden_size=p.audio_hidden, upsampling_ratios=list(p.audio_ratios),
                     num_hidden_layers=1, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
                     codebook_dim=16, vector_quantization_hidden_dimension=16, num_quantizers=2, codebook_size=8,
                     upsample_groups=p.audio_hidden)
    torch.manual_seed(seed)
    mimi = MimiModel(cfg).eval()
    ours = AudioVAE(p).eval()
    enc, dec = _seanet(mimi)
    ours.encoder.load_state_dict(enc.state_dict())
    ours.decoder.load_state_dict(dec.state_dict())
    return (enc, dec), ours


def _seanet(mimi):
    """Mimi's SEANet encoder and decoder modules (their place in MimiModel moved between versions)."""
    from transformers.models.mimi.modeling_mimi import MimiDecoder, MimiEncoder
    enc = next(m for m in mimi.modules() if isinstance(m, MimiEncoder))
    dec = next(m for m in mimi.modules() if isinstance(m, MimiDecoder))
    return enc, dec


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_convs_match_mimi(preset):
    p = get_preset(preset)
    (mimi_enc, mimi_dec), ours = _mimi_pair(p)
    wave = 0.3 * torch.randn(1, 3 * p.samples_per_unit, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = mimi_enc(wave[:, None])
        got = ours.encoder(wave[:, None], _io(ours.init_encoder_state(1)))
        assert report_error(f"{preset} encoder vs Mimi", got, want) < 1e-5
        feats = torch.randn(1, p.audio_hidden, 12)
        want = mimi_dec(feats)
        got = ours.decoder(feats, _io(ours.init_decoder_state(1)))
        assert want.shape == got.shape == (1, 1, 12 * p.audio_hop)
        assert report_error(f"{preset} decoder vs Mimi", got, want) < 1e-5


def _io(state):
    from model_src.conv_state import StateIO
    return StateIO(state)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_streamed_equals_offline(preset):
    p = get_preset(preset)
    torch.manual_seed(0)
    vae = AudioVAE(p).eval()
    units = 5
    wave = 0.3 * torch.randn(2, units * p.samples_per_unit)
    with torch.no_grad():
        mean, _, _ = vae.encode(wave, vae.init_encoder_state(2))
        state, chunks = vae.init_encoder_state(2), []
        for k in range(units):
            z, state = vae.encode_step(wave[:, k * p.samples_per_unit:(k + 1) * p.samples_per_unit], state)
            chunks.append(z)
        assert report_error(f"{preset} encode streamed vs offline", torch.cat(chunks, 1), mean) < 1e-5
        full, _ = vae.decode(mean, vae.init_decoder_state(2))
        state, pieces = vae.init_decoder_state(2), []
        for k in range(units):
            w, state = vae.decode_step(mean[:, 4 * k:4 * (k + 1)], state)
            pieces.append(w)
        assert report_error(f"{preset} decode streamed vs offline", torch.cat(pieces, 1), full) < 1e-5
    assert all(s.shape[0] == 2 for s in state)


def test_loads_a_mimi_checkpoint_and_refuses_other_shapes(tmp_path):
    from model_src.weights import WeightsError, load_mimi_checkpoint

    p = get_preset("tiny")
    mimi = MimiModel(MimiConfig(num_filters=p.audio_filters, hidden_size=p.audio_hidden, num_hidden_layers=1,
                                intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
                                upsample_groups=p.audio_hidden))
    mimi.save_pretrained(tmp_path / "mimi")
    vae = AudioVAE(p)
    load_mimi_checkpoint(vae, tmp_path / "mimi")
    enc, _ = _seanet(mimi)
    for name, t in enc.state_dict().items():
        assert torch.equal(vae.encoder.state_dict()[name], t), name
    with pytest.raises(WeightsError, match=r"tensor '(en|de)coder\.layers\.[\w.]+' has shape \([\d, ]+\), "
                                           r"the model expects \([\d, ]+\)"):
        load_mimi_checkpoint(AudioVAE(get_preset("small")), tmp_path / "mimi")
    (tmp_path / "mimi.pth").write_bytes(b"not read")
    with pytest.raises(WeightsError, match="only .safetensors files are read"):
        load_mimi_checkpoint(vae, tmp_path / "mimi.pth")
