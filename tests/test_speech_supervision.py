"""The speech recipe's two training-only supervisions (docs/TRAINING.md "The speech model"): stage a's
semantic term (the audio latents must hold each frame's log-mel spectrum, through a linear head that is
checkpointed but never exported) and stage b's heard-word term (the state that predicts an answer's first
word must tell which word the user asked)."""
import numpy as np
import pytest
import torch

from helpers import adam_steps
from model_src.config import get_preset
from training.tasks import TRAIN_SEED_BASE, conversation, heard_labels

SPEECH = get_preset("tiny-speech")
FRAME = SPEECH.samples_per_unit // SPEECH.audio_frames_per_unit  # 960 samples: one latent frame


def test_mel_targets_match_a_numpy_reference_are_causal_and_loudness_free():
    """mel_targets: per latent frame the log10 mel spectrum of that frame's own samples (a numpy reference
    with the recognizer's filterbank), nothing after the frame changes it, and a gain moves only the level."""
    from training.codecs import MEL_BANDS, mel_targets
    from training.recognizer import mel_filterbank

    g = torch.Generator().manual_seed(0)
    wave = 0.1 * torch.randn(2, 4 * FRAME, generator=g, dtype=torch.float64)
    got = mel_targets(wave, FRAME)
    assert got.shape == (2, 4, MEL_BANDS + 1)
    x = wave.numpy().reshape(2, 4, FRAME) * np.hanning(FRAME + 1)[:-1]
    logmel = np.log10(np.abs(np.fft.rfft(x, 1024)) ** 2 @ mel_filterbank(1024, MEL_BANDS).T.astype(np.float64) + 1e-7)
    want = np.concatenate([logmel - logmel.mean(-1, keepdims=True), logmel.mean(-1, keepdims=True)], -1)
    assert np.allclose(got.numpy(), want, atol=1e-9)
    later = wave.clone()
    later[:, 3 * FRAME:] = 0.5 * torch.randn(2, FRAME, generator=g, dtype=torch.float64)
    assert torch.equal(mel_targets(later, FRAME)[:, :3], got[:, :3]) and not torch.allclose(mel_targets(later, FRAME)[:, 3], got[:, 3])
    louder = mel_targets(2 * wave, FRAME)
    assert torch.allclose(louder[..., :-1], got[..., :-1], atol=1e-4)
    assert torch.allclose(louder[..., -1], got[..., -1] + np.log10(4.0), atol=1e-4)


def test_semantic_head_lowers_its_term_and_is_checkpointed(tmp_path):
    """CodecLoss(semantic=1): a few Adam steps on the audio VAE and its head lower the log-mel term; without
    the weight there is no head and no term; the stage checkpoint holds the head and gives it back on
    resume (the head is not in the system, so a weights file never carries it)."""
    from model_src.system import build_system
    from training.codecs import codec_clips, start_posteriors_narrow
    from training.losses import CodecLoss
    from training.trainer import StageConfig, TrainError, load_checkpoint, save_checkpoint, stage_defaults

    system = build_system(SPEECH, seed=5).train()
    start_posteriors_narrow(system)
    wave, _ = codec_clips(SPEECH, [TRAIN_SEED_BASE, TRAIN_SEED_BASE + 1], 1, np.random.default_rng(0), conv_units=8)
    eps = torch.zeros(2, 4, SPEECH.audio_z)
    loss = CodecLoss(system, 0, ("audio",), spectral=False, semantic=1.0)
    params = list(system.audio_vae.parameters()) + list(loss.semantic_head.parameters())
    mel = adam_steps(loss, params, lambda: (wave, None, eps, None), steps=12, lr=1e-3, part="audio_mel")
    assert mel[-1] < 0.8 * mel[0], mel
    plain = CodecLoss(system, 0, ("audio",), spectral=False)
    assert plain.semantic_head is None and "audio_mel" not in plain(wave, None, eps, None)[1]
    assert stage_defaults("tiny-speech", "a").semantic == 1.0 and stage_defaults("tiny", "a").semantic == 0.0
    ckpt = tmp_path / "stage_a.ckpt.safetensors"
    save_checkpoint(ckpt, "a", 6, system, torch.optim.Adam(params, lr=1e-3), [], StageConfig(steps=6, batch=2, lr=1e-3),
                    loss.semantic_head)
    fresh = CodecLoss(system, 0, ("audio",), spectral=False, semantic=1.0).semantic_head
    assert not torch.equal(fresh.weight, loss.semantic_head.weight)
    step, _ = load_checkpoint(ckpt, "a", system, torch.optim.Adam(params, lr=1e-3), fresh)
    assert step == 6 and torch.equal(fresh.weight, loss.semantic_head.weight)
    headless = tmp_path / "headless.ckpt.safetensors"
    save_checkpoint(headless, "a", 6, system, torch.optim.Adam(system.audio_vae.parameters()), [], StageConfig(steps=6, batch=2, lr=1e-3))
    with pytest.raises(TrainError, match="without this run's training-only head"):
        load_checkpoint(headless, "a", system, torch.optim.Adam(system.audio_vae.parameters()), fresh)
    with pytest.raises(TrainError, match="with a training-only head this run does not have"):
        load_checkpoint(ckpt, "a", system, torch.optim.Adam(system.audio_vae.parameters()))


def test_heard_labels_mark_the_asked_word_from_the_question_end_through_its_answer():
    c = conversation(SPEECH, 40, TRAIN_SEED_BASE + 7)
    labels, turns = heard_labels(c), c.spoken.turns
    assert len(turns) >= 2
    for i, t in enumerate(turns):
        until = turns[i + 1].start if i + 1 < len(turns) else c.units
        assert (labels[t.start:t.end] == -1).all()  # the word is not yet heard whole
        stop = min(until, t.end + 1 + t.answer_units)
        assert (labels[t.end:stop] == t.asked).all()
    scored = sum(min(c.units if i + 1 == len(turns) else turns[i + 1].start, t.end + 1 + t.answer_units) - t.end
                 for i, t in enumerate(turns))
    assert (labels >= 0).sum() == scored
    assert (heard_labels(conversation(get_preset("tiny"), 20, 3)) == -1).all()  # the tone task has none


def test_heard_head_learns_the_asked_word_and_only_scores_labelled_units():
    """BackboneLoss(heard_weight): the heard-word term falls in a few Adam steps on encoded spoken
    conversations; units labelled -1 are not scored (all -1: the term is 0); tiny's recipe has no head."""
    from model_src.system import build_system
    from training.data import encode_conversations
    from training.losses import BackboneLoss, heard_loss
    from training.trainer import stage_defaults

    system = build_system(SPEECH, seed=5).eval()
    data = encode_conversations(system, [TRAIN_SEED_BASE + 2, TRAIN_SEED_BASE + 3], 16)
    assert data["heard"].shape == (2, 16) and (data["heard"] >= 0).any()
    g = torch.Generator().manual_seed(0)
    na, nv = torch.randn(2, 16, 4, SPEECH.audio_z, generator=g), torch.randn(2, 16, SPEECH.video_z, 4, 4, generator=g)
    t = torch.rand(2, 16, generator=g)
    model = system.model.train()
    loss = BackboneLoss(model, heard_weight=1.0)
    heard = adam_steps(loss, list(model.parameters()) + list(loss.heard_head.parameters()), lambda: (data, na, nv, t),
                       part="heard")
    assert heard[-1] < 0.7 * heard[0], heard
    hidden = torch.randn(2, 16, SPEECH.hidden)
    assert float(heard_loss(loss.heard_head, hidden, torch.full((2, 16), -1))) == 0.0
    one = torch.full((2, 16), -1)
    one[0, 3] = 2
    want = torch.nn.functional.cross_entropy(loss.heard_head(hidden[0, 3:4]), torch.tensor([2]))
    assert torch.allclose(heard_loss(loss.heard_head, hidden, one), want)
    assert stage_defaults("tiny-speech", "b").heard_weight > 0 and stage_defaults("tiny", "b").heard_weight == 0
    assert BackboneLoss(model).heard_head is None


def test_semantic_weight_out_of_range_is_refused_by_the_cli(tmp_path, capsys):
    from streamer.cli import main

    assert main(["train", "--preset", "tiny-speech", "--stage", "a", "--out", str(tmp_path), "--semantic", "-1"]) == 2
    assert "--semantic: expected a weight in [0, 100], got -1" in capsys.readouterr().err
    assert main(["train", "--preset", "tiny-speech", "--stage", "b", "--out", str(tmp_path), "--heard-weight", "101"]) == 2
    assert "--heard-weight: expected a weight in [0, 100], got 101" in capsys.readouterr().err


def test_word_probe_bench_writes_its_section_and_refuses_bad_input(tmp_path):
    """`python bench/word_probe.py` (the docs' command, with few clips and steps): the log-mel and latent
    rows with accuracies in [0, 1] into the marked section; a file without the markers and tone weights
    are refused before any work, naming what was expected."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    from model_src.weights import embedded_weights

    root = Path(__file__).resolve().parent.parent
    run = lambda *a: subprocess.run([sys.executable, "-P", "bench/word_probe.py", *a], cwd=root, capture_output=True,
                                    text=True, timeout=600, env={**os.environ, "PYTHONSAFEPATH": "1"})
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- word probe: start -->\nold\n<!-- word probe: end -->\nafter\n")
    shipped = str(embedded_weights("tiny-speech"))
    done = run("--weights", shipped, "--train", "12", "--heldout", "6", "--steps", "5", "--warp", "--write", str(doc))
    assert done.returncode == 0, done.stderr[-2000:]
    text = doc.read_text()
    assert text.startswith("before\n<!-- word probe: start -->\n12 clips") and text.endswith("<!-- word probe: end -->\nafter\n")
    rows = re.findall(r"^\| (log-mel|audio latents)([^|]*)\| ([0-9.]+) \| ([0-9.]+) \|$", text, re.M)
    assert [r[0] for r in rows] == ["log-mel", "audio latents", "audio latents"] and "warped" in rows[2][1]
    assert all(0 <= float(x) <= 1 for r in rows for x in r[2:]) and "--warp`" in text
    doc.write_text("no markers\n")
    refused = run("--weights", shipped, "--write", str(doc))
    assert refused.returncode != 0 and "<!-- word probe: start -->" in refused.stderr and doc.read_text() == "no markers\n"
    tones = run("--weights", str(embedded_weights("tiny")), "--train", "3", "--heldout", "3", "--steps", "3")
    assert tones.returncode == 2 and "expected weights of a speech preset (tiny-speech), got" in tones.stderr
