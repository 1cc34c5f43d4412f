"""The spoken task end to end: its metrics (targets ~1, random outputs at chance, a planted misreading caught),
the three training stages on tiny-speech (a few steps lower each loss; `streamer train --preset tiny-speech`
and `streamer eval` through the CLI), and the shipped tiny-speech weights through the ONNX Runtime engines on
held-out voices against docs/TRAINING.md's thresholds."""
import copy
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import adam_steps, report
from model_src.config import get_preset
from training.metrics import misses, new_tally, targets_metrics, thresholds
from training.tasks import conversation, task_of

SPEECH = get_preset("tiny-speech")
SEEDS = range(100_000, 100_004)  # held-out conversations: held-out voices


@pytest.fixture(scope="module")
def held_out():
    return [conversation(SPEECH, 48, s) for s in SEEDS]


def test_task_of_presets_and_voice_split(held_out):
    assert task_of(SPEECH) == "speech" and task_of(get_preset("tiny")) == "tones" and task_of(get_preset("base")) == "tones"
    from training.speech import speakers

    assert all(c.spoken.split == "heldout" and c.spoken.speaker in speakers(0, "heldout") for c in held_out)
    train = conversation(SPEECH, 16, 1_000_003)
    assert train.spoken.split == "train" and replace(train.spoken.speaker, range=50) in speakers(0, "train")
    c = held_out[0]
    assert c.user_audio.shape == (48 * 3840,) and c.user_frames.shape == (192, 32, 32, 3) and c.text.shape == (48, 2)


def test_spoken_targets_score_one_and_random_outputs_chance(held_out):
    tally = new_tally(SPEECH)
    for c in held_out:
        tally.add(c, SPEECH, c.text, c.model_audio, c.model_frames)
    m = tally.summary()
    report("spoken targets: " + ", ".join(f"{k} {m[k]:.3f}" for k in ("task", "text", "words", "face", "turn", "sync", "unasked")))
    assert m["word_answers"] >= 6 and m["words"] == 1.0 and m["text"] == 1.0 and m["face"] == 1.0 and m["turn"] == 1.0
    assert m["unasked"] == 0.0 and m["overlap"] == 0.0 and m["barge_in_units"] == 0.0 and m["sync"] > 0.8
    assert not misses(m, thresholds(SPEECH))
    rng = np.random.default_rng(0)
    noise = new_tally(SPEECH)
    for c in held_out:
        tokens = rng.choice([1, 20, 21, 22, 23], size=(48, 2))
        audio = (0.1 * rng.standard_normal(48 * 3840)).astype(np.float32)
        noise.add(c, SPEECH, tokens, audio, rng.integers(0, 256, c.model_frames.shape, dtype=np.uint8))
    r = noise.summary()
    report(f"random outputs: task {r['task']:.3f}, words {r['words']:.3f}, text {r['text']:.3f}, unasked {r['unasked']:.3f}")
    assert r["words"] <= 0.25 and r["text"] < 0.5 and r["task"] < 0.4 and r["unasked"] > 0.9


def test_wrong_word_and_late_silence_are_caught(held_out):
    """Planted: every answer said as another answer word (text too) scores 0 words and text on answers;
    answering in every pause scores 'speaking unasked' near 1."""
    from training import speech
    from training.spoken import ANSWER_WORDS, WORD_IDS

    wrong = new_tally(SPEECH)
    chatty = new_tally(SPEECH)
    for c in held_out:
        audio = np.zeros((48, 3840), np.float32)
        tokens = c.text.copy()
        for t in c.turns:
            other = (t.answer + 1) % len(ANSWER_WORDS)
            said = speech.render(ANSWER_WORDS[other])
            a = t.end + 1
            span = audio[a:a + t.spoken_units].reshape(-1)
            n = min(len(span), len(said))
            span[:n] = said[:n]
            audio[a:a + t.spoken_units] = span.reshape(t.spoken_units, -1)
            tokens[a:a + t.spoken_units, 0] = WORD_IDS[other]
        wrong.add(c, SPEECH, tokens, audio.reshape(-1), c.model_frames)
        loud = c.model_audio.reshape(48, -1).copy()
        loud[~c.user_speaking] += 0.05 * np.sin(np.arange(3840) / 3.0).astype(np.float32)
        chatty.add(c, SPEECH, c.text, loud.reshape(-1), c.model_frames)
    w, ch = wrong.summary(), chatty.summary()
    assert w["words"] == 0.0 and w["text_answer"] == 0.0, w
    assert ch["unasked"] > 0.95 and ch["unasked_long"] > 0.95, ch


def test_a_few_steps_lower_each_stage_loss_on_speech():
    """tiny-speech: 5 Adam steps of stage a (the audio codec on spoken clips), b (LM + flow on encoded spoken
    conversations) and c (distillation) on one batch lower each loss."""
    from model_src.system import build_system
    from training.codecs import codec_clips, start_posteriors_narrow
    from training.data import TRAIN_SEED_BASE, encode_conversations
    from training.losses import BackboneLoss, CodecLoss, DistillLoss

    torch.manual_seed(0)
    system = build_system(SPEECH, seed=5).train()
    start_posteriors_narrow(system)  # as stage a starts
    wave, _ = codec_clips(SPEECH, [TRAIN_SEED_BASE, TRAIN_SEED_BASE + 1], 1, np.random.default_rng(0), conv_units=8)
    assert float(wave.abs().max()) > 0.01  # speech or an answer, not silence
    eps = torch.zeros(2, 4, SPEECH.audio_z)
    a = adam_steps(CodecLoss(system, 0, ("audio",), spectral=False), list(system.audio_vae.parameters()), lambda: (wave, None, eps, None),
                   steps=5, lr=5e-4)
    system.eval()
    data = encode_conversations(system, [TRAIN_SEED_BASE + 2, TRAIN_SEED_BASE + 3], 10)
    g = torch.Generator().manual_seed(0)
    na, nv = torch.randn(2, 10, 4, SPEECH.audio_z, generator=g), torch.randn(2, 10, SPEECH.video_z, 4, 4, generator=g)
    t = torch.rand(2, 10, generator=g)
    model = system.model.train()
    b = adam_steps(BackboneLoss(model), list(model.parameters()), lambda: (data, na, nv, t), steps=5)
    student = copy.deepcopy(model).train()
    grid = torch.randint(0, 2, (2, 10), generator=g)
    c = adam_steps(DistillLoss(student, model.eval(), 2), list(student.parameters()), lambda: (data, na, nv, grid), steps=5, lr=1e-3)
    for name, losses in (("a audio codec", a), ("b backbone", b), ("c distillation", c)):
        report(f"tiny-speech stage {name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
        assert losses[-1] < 0.9 * losses[0], (name, losses)


def test_train_speech_all_stages_then_eval_through_the_cli(tmp_path, capsys):
    """`streamer train --preset tiny-speech --stage all` (2 steps a stage, the video VAE warm-started from the
    shipped tiny's), then `streamer eval --weights` scores it with the spoken metrics; a later stage given
    another --preset than its input file's is refused."""
    from streamer.cli import main

    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny-speech", "--stage", "all", "--out", str(out), "--steps", "2",
                 "--audio-steps", "2", "--conversations", "2", "--units", "10"]) == 0
    for name in ("codecs", "teacher", "student"):
        assert (out / f"{name}.safetensors").is_file()
    from model_src.weights import read_preset

    assert read_preset(out / "student.safetensors") == SPEECH
    capsys.readouterr()
    summary = tmp_path / "eval.json"
    assert main(["eval", "--weights", str(out / "student.safetensors"), "--units", "12", "--conversations", "1",
                 "--json", str(summary)]) == 0
    printed = capsys.readouterr().out
    assert "words: the recognizer hears the right answer" in printed and "speaking unasked" in printed
    assert "words" in json.loads(summary.read_text())["metrics"]
    assert main(["train", "--preset", "tiny", "--stage", "b", "--out", str(out), "--steps", "1"]) == 2
    assert "preset 'tiny-speech'" in capsys.readouterr().err


def test_tasks_and_spoken_metrics_import_no_torch():
    code = ("import sys, training.tasks, training.spoken_metrics, training.metrics, streamer.train_cmds; "
            "bad = [m for m in ('torch', 'model_src') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-P", "-c", code], check=True)


def _shipped():
    from model_src.weights import EMBEDDED, embedded_weights

    return embedded_weights("tiny-speech") if "tiny-speech" in EMBEDDED else None


@pytest.mark.skipif(_shipped() is None, reason="the trained tiny-speech weights are not installed (model_src/trained/)")
def test_shipped_speech_weights_reach_the_thresholds_through_ort_engines(speech_ort_engines, tmp_path):
    """`streamer build --preset tiny-speech` uses the shipped weights; held-out voices streamed through the
    ONNX Runtime engines reach the spoken thresholds (docs/TRAINING.md), far above random weights."""
    from model_src.session import ReferenceSession
    from model_src.system import build_system
    from runtime.manifest import read_manifest
    from streamer.cli import main
    from training.metrics import evaluate

    assert read_manifest(speech_ort_engines)["weights"]["embedded"] == "tiny-speech"
    summary = tmp_path / "eval.json"
    assert main(["eval", "--engines", str(speech_ort_engines), "--conversations", "4", "--threads", "1",
                 "--json", str(summary)]) == 0
    m = json.loads(summary.read_text())["metrics"]
    floor = evaluate(lambda s: ReferenceSession(build_system(SPEECH, seed=0).eval(), seed=s), SPEECH, SEEDS[:1], 48)
    report("shipped tiny-speech weights, ORT engines, 4 held-out conversations: "
           + ", ".join(f"{k} {m[k]:.3f}" for k in ("task", "words", "text", "face", "turn", "sync", "barge_in_units",
                                                   "overlap", "unasked")) + f"; random weights (torch): task {floor['task']:.3f}")
    assert not misses(m, thresholds(SPEECH)), misses(m, thresholds(SPEECH))
    assert m["task"] > floor["task"] + 0.3


def test_previous_latents_are_mixed_towards_noise_as_configured():
    """Stages b/c of the spoken task feed each unit's previous latents mixed towards noise by
    batch["prev_mix"] (losses.teacher_forced_inputs): mix 0 is the clean shift, mix 1 the noise itself,
    and unit 0 stays the session's zeros; the trainer draws the mix only where the preset's config says."""
    from model_src.system import build_system
    from training.losses import teacher_forced_inputs
    from training.trainer import _conversation_batch, stage_defaults

    model = build_system(SPEECH, device="meta").model
    g = torch.Generator().manual_seed(0)
    b, u = 2, 5
    batch = {"audio_out": torch.randn(b, u, 4, SPEECH.audio_z, generator=g), "video_out": torch.randn(b, u, 16, 4, 4, generator=g),
             "audio_in": torch.zeros(b, u, 4, SPEECH.audio_z), "video_in": torch.zeros(b, u, 16, 4, 4),
             "text": torch.ones(b, u, 2, dtype=torch.int64)}
    clean = teacher_forced_inputs(model, batch)
    noise = {"prev_noise_audio": torch.randn(b, u, 4, SPEECH.audio_z, generator=g), "prev_noise_video": torch.randn(b, u, 16, 4, 4, generator=g)}
    same = teacher_forced_inputs(model, {**batch, **noise, "prev_mix": torch.zeros(b, u)})
    assert torch.equal(same["audio_prev"], clean["audio_prev"]) and torch.equal(same["video_prev"], clean["video_prev"])
    full = teacher_forced_inputs(model, {**batch, **noise, "prev_mix": torch.ones(b, u)})
    assert torch.equal(full["audio_prev"], noise["prev_noise_audio"]) and torch.equal(full["video_prev"], noise["prev_noise_video"])
    assert stage_defaults("tiny-speech", "b").prev_noise and stage_defaults("tiny-speech", "c").prev_noise
    assert not stage_defaults("tiny", "b").prev_noise  # the tone recipe is unchanged
    data = {k: v for k, v in batch.items()}
    made, *_ = _conversation_batch(data, stage_defaults("tiny-speech", "b"), 0, np.arange(2), SPEECH, lambda pos, n: None)
    assert made["prev_mix"].shape == (2, u) and (made["prev_mix"][:, 0] == 0).all() and made["prev_mix"][:, 1:].std() > 0.1
    plain, *_ = _conversation_batch(data, stage_defaults("tiny", "b"), 0, np.arange(2), SPEECH, lambda pos, n: None)
    assert "prev_mix" not in plain


def test_answer_onsets_weigh_more_in_the_lm_loss():
    """losses.lm_loss: weight 1 is F.cross_entropy's mean (the tone recipe unchanged); with a weight, only
    slot 0 of the units where an answer word follows SIL weighs more (a planted error there moves the loss
    by that weight, the same error in a later answer unit does not)."""
    import torch.nn.functional as F

    from training.losses import lm_loss
    from training.trainer import stage_defaults

    text = torch.tensor([[[1, 1], [23, 1], [23, 1], [1, 1]]])  # SIL, answer onset, its second unit, SIL
    right = torch.full((1, 4, 2, 30), -9.0)
    right.scatter_(3, text[..., None], 9.0)
    assert torch.allclose(lm_loss(right, text), F.cross_entropy(right.flatten(0, 2), text.flatten()))
    def wrong_at(unit):
        x = right.clone()
        x[0, unit, 0] = -9.0
        x[0, unit, 0, 20] = 9.0
        return x
    base = float(lm_loss(right, text, 10.0))
    onset, later = float(lm_loss(wrong_at(1), text, 10.0)) - base, float(lm_loss(wrong_at(2), text, 10.0)) - base
    assert onset > 9 * later > 0, (onset, later)
    assert stage_defaults("tiny-speech", "b").onset_weight == 10.0 and stage_defaults("tiny", "b").onset_weight == 1.0


def test_latents_cache_key_follows_the_conversation_generator(monkeypatch):
    """Stage b's cached latents are keyed by the generator's version: training conversations made by a
    changed generator (spoken.VERSION) are re-encoded, never read from a stale cache."""
    from model_src.system import build_system
    from training import spoken, trainer

    system, cfg = build_system(SPEECH, seed=1), trainer.stage_defaults("tiny-speech", "b")
    key = trainer._codec_key(system, cfg)
    assert trainer._codec_key(system, cfg) == key
    monkeypatch.setattr(spoken, "VERSION", spoken.VERSION + 1)
    assert trainer._codec_key(system, cfg) != key


def test_heard_latents_are_perturbed_per_conversation_only_where_configured():
    """perturb_heard: a per-sample gain and shift of each channel (the same in every unit) plus per-frame
    noise, drawn per global index (so processes split a batch without changing it); scale 0 is the
    identity, and the trainer perturbs only the user's audio latents, only when `in_noise` says so."""
    from training.trainer import _conversation_batch, perturb_heard, stage_defaults

    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 6, 4, SPEECH.audio_z, generator=g)
    assert torch.equal(perturb_heard(z, 0.0, 0, 0, np.arange(3)), z)
    big = perturb_heard(torch.zeros(3, 6, 4, SPEECH.audio_z), 1.0, 0, 0, np.arange(3))  # shift + noise only
    per_conversation = big.mean((1, 2))
    assert per_conversation.std() > 0.5 and (big - big.mean((1, 2), keepdim=True)).std() < 0.7
    both = perturb_heard(z, 0.2, 4, 7, np.arange(3))
    np.testing.assert_array_equal(perturb_heard(z[1:], 0.2, 4, 7, np.arange(1, 3)).numpy(), both[1:].numpy())
    assert 0.05 < (both - z).std() < 0.5
    data = {"audio_out": torch.randn(2, 6, 4, SPEECH.audio_z, generator=g), "video_out": torch.randn(2, 6, 16, 4, 4, generator=g),
            "audio_in": z[:2].clone(), "video_in": torch.zeros(2, 6, 16, 4, 4), "text": torch.ones(2, 6, 2, dtype=torch.int64)}
    cfg = stage_defaults("tiny-speech", "b")
    assert cfg.in_noise == 0.2 and stage_defaults("tiny", "b").in_noise == 0 and stage_defaults("tiny-speech", "c").in_noise == 0
    plain, *_ = _conversation_batch(data, replace(cfg, in_noise=0.0), 0, np.arange(2), SPEECH, lambda pos, n: None)
    noisy, *_ = _conversation_batch(data, replace(cfg, in_noise=0.2), 0, np.arange(2), SPEECH, lambda pos, n: None)
    assert not torch.equal(noisy["audio_in"], plain["audio_in"]) and torch.equal(noisy["audio_out"], plain["audio_out"])
    assert torch.equal(noisy["video_in"], plain["video_in"]) and torch.equal(data["audio_in"], z[:2])
