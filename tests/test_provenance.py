"""Signed engine directories (Ed25519: keygen, build --sign, --trust), the Qwen3 import's
config.json and embedding tie, and calibration files bound to the weights they were recorded from."""
import json
import shutil

import pytest
import torch

from runtime.manifest import MANIFEST, _checksum
from streamer.cli import main
from test_hardening import _cli, _engines_copy
from unitio.media import synthetic_input


@pytest.fixture
def keys(tmp_path, capsys):
    assert _cli(["keygen", "--out", tmp_path / "key"], capsys)[0] == 0
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600
    return tmp_path / "key", tmp_path / "key.pub"


def test_signed_directory_is_trusted_and_any_change_is_refused_naming_the_file(tiny_ort_engines, tmp_path, keys, capsys):
    from runtime.manifest import sign_directory

    private, public = keys
    d = _engines_copy(tiny_ort_engines, tmp_path)
    code, err = _cli(["inspect", d, "--trust", public], capsys)
    assert code == 2 and f"{d}/manifest.sig: missing: expected an engine directory signed with {public}" in err
    sign_directory(d, private)
    assert main(["inspect", str(d), "--trust", str(public)]) == 0
    assert "signature: verified with" in capsys.readouterr().out
    # another key
    assert _cli(["keygen", "--out", tmp_path / "other"], capsys)[0] == 0
    code, err = _cli(["inspect", d, "--trust", tmp_path / "other.pub"], capsys)
    assert code == 2 and "manifest.sig: signed by key" in err and "other.pub" in err
    # a manifest changed after signing (checksum recomputed, so only the signature can tell)
    m = json.loads((d / MANIFEST).read_text())
    m["precision"] = "int8"
    m["checksum"] = _checksum(m)
    (d / MANIFEST).write_text(json.dumps(m))
    code, err = _cli(["verify", d, "--trust", public], capsys)
    assert code == 2 and f"{d}/manifest.json: the signature in manifest.sig does not verify with {public}" in err
    # a keygen never overwrites
    code, err = _cli(["keygen", "--out", private], capsys)
    assert code == 2 and "already exists" in err


def test_run_with_trust_streams_a_signed_directory(tiny_ort_engines, tmp_path, keys, capsys):
    from runtime.manifest import sign_directory

    private, public = keys
    d = _engines_copy(tiny_ort_engines, tmp_path)
    sign_directory(d, private)
    (d / "plugin.so").write_bytes(b"\x7fELF")  # a file the signature does not cover
    code, err = _cli(["run", "--engines", d, "--trust", public, "--units", "2", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "plugin.so is not listed in the signed manifest" in err
    (d / "plugin.so").unlink()
    assert main(["run", "--engines", str(d), "--trust", str(public), "--sequential", "--units", "2",
                 "--out", str(tmp_path / "o")]) == 0


def test_build_sign_signs_after_the_build(tiny_ort_engines, tmp_path, keys, monkeypatch, capsys):
    import export.build

    def fake_build(system, out, *a, **kw):  # the build itself is tested elsewhere; this checks the wiring
        shutil.copytree(tiny_ort_engines, out)
        return json.loads((out / MANIFEST).read_text())

    monkeypatch.setattr(export.build, "build", fake_build)
    private, public = keys
    assert main(["build", "--preset", "tiny", "--weights-seed", "0", "--sign", str(private), "--out",
                 str(tmp_path / "b")]) == 0
    assert main(["inspect", str(tmp_path / "b"), "--trust", str(public)]) == 0
    code, err = _cli(["build", "--preset", "tiny", "--weights-seed", "0", "--sign", public, "--out", tmp_path / "c"],
                     capsys)
    assert code == 2 and "expected an unencrypted PEM Ed25519 private key" in err and not (tmp_path / "c").exists()


# --- imports and calibration provenance --------------------------------------------------------------

def _qwen3(tmp_path, tie: bool, **dims):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from model_src.config import get_preset

    p = get_preset("tiny")
    cfg = dict(vocab_size=p.vocab_size, hidden_size=p.hidden, intermediate_size=p.intermediate,
               num_hidden_layers=p.n_layers, num_attention_heads=p.n_heads, num_key_value_heads=p.n_kv_heads,
               head_dim=p.head_dim, rms_norm_eps=p.rms_eps, tie_word_embeddings=tie,
               rope_parameters={"rope_type": "default", "rope_theta": p.rope_theta})
    cfg.update(dims)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**cfg))
    model.save_pretrained(tmp_path / "q")
    return model, tmp_path / "q"


def test_an_untied_qwen3_checkpoint_never_overwrites_a_tied_embedding(tmp_path):
    from model_src.backbone import Backbone
    from model_src.config import get_preset
    from model_src.weights import WeightsError, load_qwen3_checkpoint

    reference, folder = _qwen3(tmp_path, tie=False)
    tiny = get_preset("tiny")
    with pytest.raises(WeightsError, match="an untied checkpoint .* cannot go into a preset whose LM head is its embedding"):
        load_qwen3_checkpoint(Backbone(tiny), folder)
    untied = Backbone(tiny.replace(tie_embeddings=False))
    load_qwen3_checkpoint(untied, folder)
    assert torch.equal(untied.lm_head.weight, reference.lm_head.weight)
    assert torch.equal(untied.embed_tokens.weight, reference.model.embed_tokens.weight)


def test_qwen3_config_json_must_fit_the_preset(tmp_path):
    from model_src.backbone import Backbone
    from model_src.config import get_preset
    from model_src.weights import WeightsError, load_qwen3_checkpoint

    _, folder = _qwen3(tmp_path, tie=True, num_key_value_heads=4)
    with pytest.raises(WeightsError, match=r"config.json: num_key_value_heads is 4, the model's preset has 2"):
        load_qwen3_checkpoint(Backbone(get_preset("tiny")), folder)
    (folder / "config.json").unlink()
    with pytest.raises(WeightsError, match="expected the checkpoint's config.json"):
        load_qwen3_checkpoint(Backbone(get_preset("tiny")), folder)


def test_a_calibration_set_of_other_weights_is_refused_by_build(tmp_path, tiny, tiny_system, capsys):
    from calibration.record import record
    from unitio.media import split_units

    audio, frames = synthetic_input(tiny, 2, 0)
    cal = record(tiny_system, split_units(audio, frames, tiny, 2), 0, tmp_path / "cal.safetensors", weights={"seed": 0})
    code, err = _cli(["build", "--preset", "tiny", "--weights-seed", "1", "--precision", "int8", "--calibration", cal,
                      "--out", tmp_path / "e"], capsys)
    assert code == 2 and "cal.safetensors: recorded from weights" in err and "this build's weights are" in err, err
    assert not (tmp_path / "e").exists()  # refused before any export
