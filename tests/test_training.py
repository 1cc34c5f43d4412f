"""The offline training forward equals the streaming steps, the conversation and its metrics,
the three training stages (loss goes down, resumable, DDP on 2 processes == 1 process), and the shipped
tiny weights through the ONNX Runtime engines."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import adam_steps, random_units, report
from model_src.kv_cache import append_unit, init_cache
from model_src.layout import UnitLayout, block_causal_mask, flow_block_mask
from training.conversation import SIL, make_conversation
from training.metrics import THRESHOLDS, Tally, targets_metrics


def test_flow_blocks_offline_equal_streaming_flow_steps(tiny):
    """What stage b trains (all units' flow blocks in one pass under the block-causal + ring-window mask)
    is what streams: thinker_step + append + flow_step unit by unit, past the cache's capacity."""
    from model_src.system import build_system

    p = tiny.replace(sink_units=1, window_units=3)  # a short ring, so 7 units wrap it
    model, u = build_system(p, seed=1).model, 7
    g = torch.Generator().manual_seed(0)
    inputs = random_units(p, 1, u)
    text_out = torch.randint(0, p.vocab_size, (1, u, p.text_out_tokens), generator=g)
    na, nv = torch.randn(1, u, 4, p.audio_z, generator=g), torch.randn(1, u, p.video_z, 4, 4, generator=g)
    t = torch.rand(1, u, generator=g)
    with torch.no_grad():
        _, logits, ks, vs = model.units_offline(**inputs, text_out=text_out, sink_units=1, window_units=3)
        va, vv = model.flow_offline(na, nv, t, ks, vs, sink_units=1, window_units=3)
        cache = init_cache(p, 1)
        for k in range(u):
            out = model.thinker_step(*(inputs[n][:, k] for n in ("text_in", "video_in", "audio_in", "audio_prev",
                                                                  "video_prev")), *cache, torch.tensor([k]),
                                     text_out=text_out[:, k])
            append_unit(p, cache, out.k_delta, out.v_delta, k)
            sa, sv = model.flow_step(na[:, k], nv[:, k], t[:, k], *cache, torch.tensor([k]))
            torch.testing.assert_close(out.text_logits, logits[:, k], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(sa, va[:, k], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(sv, vv[:, k], rtol=1e-4, atol=1e-5)


def test_flow_block_mask_sees_what_the_ring_holds(tiny):
    lay = UnitLayout.from_preset(tiny)
    t, f = lay.tokens, tiny.flow_tokens
    mask = flow_block_mask(lay, 8, f, sink_units=1, window_units=3)
    seen = {int(j) for j in torch.nonzero(mask[7 * f, :8 * t])[:, 0] // t}
    assert seen == {0, 5, 6, 7}  # unit 7's solve: the sink and the 3 ring slots (4 was overwritten by 7)
    own = torch.nonzero(mask[7 * f, 8 * t:])[:, 0] // f
    assert set(own.tolist()) == {7}
    assert block_causal_mask(lay, 2).shape == (2 * t, 2 * t)


def test_conversation_targets_score_perfectly_and_noise_does_not(tiny):
    c = make_conversation(tiny, 48, 123)
    assert c.user_speaking.any() and c.model_speaking.any() and not (c.user_speaking & c.model_speaking).any()
    assert (c.text[~c.model_speaking] == SIL).all() and np.array_equal(make_conversation(tiny, 48, 123).user_audio,
                                                                       c.user_audio)
    ceiling = targets_metrics(c, tiny)
    assert ceiling["task"] > 0.99 and ceiling["tone"] == 1.0 and ceiling["text"] == 1.0 and ceiling["turn"] == 1.0
    rng = np.random.default_rng(0)
    noise = Tally()
    noise.add(c, tiny, rng.integers(0, 512, (48, 2)), 0.05 * rng.standard_normal(48 * 3840).astype(np.float32),
              rng.integers(0, 256, c.model_frames.shape).astype(np.uint8))
    assert noise.summary()["task"] < 0.4


@pytest.fixture(scope="module")
def small_latents(tiny):
    from model_src.system import build_system
    from training.data import TRAIN_SEED_BASE, encode_conversations

    system = build_system(tiny, seed=5).eval()
    return system, encode_conversations(system, [TRAIN_SEED_BASE, TRAIN_SEED_BASE + 1], 10)


def _noise(tiny, data):
    g = torch.Generator().manual_seed(0)
    b, u = data["text"].shape[:2]
    return (torch.randn(b, u, 4, tiny.audio_z, generator=g), torch.randn(b, u, tiny.video_z, 4, 4, generator=g))


def test_a_few_steps_lower_each_stage_loss(tiny, small_latents):
    """Stage a (codecs), b (LM + flow matching) and c (progressive distillation): 6 Adam steps on one
    batch lower the loss."""
    import copy

    from model_src.system import build_system
    from training.codecs import codec_clips
    from training.losses import BackboneLoss, CodecLoss, DistillLoss

    system = build_system(tiny, seed=5).train()
    wave, frames = codec_clips(tiny, [1_000_000, 1_000_001], 1, np.random.default_rng(0), conv_units=8)
    eps = (torch.zeros(2, 4, tiny.audio_z), torch.zeros(2, tiny.video_z, 1, 4, 4))
    codec = adam_steps(CodecLoss(system), list(system.audio_vae.parameters()) + list(system.video_vae.parameters()),
                       lambda: (wave, frames, *eps), steps=5)
    teacher_system, data = small_latents
    model = copy.deepcopy(teacher_system.model).train()
    na, nv = _noise(tiny, data)
    t = torch.rand(2, 10, generator=torch.Generator().manual_seed(1))
    backbone = adam_steps(BackboneLoss(model), list(model.parameters()), lambda: (data, na, nv, t))
    student = copy.deepcopy(model).train()
    grid = torch.randint(0, 2, (2, 10), generator=torch.Generator().manual_seed(2))
    distill = adam_steps(DistillLoss(student, model.eval(), 2), list(student.parameters()), lambda: (data, na, nv, grid),
                         lr=1e-3)
    for name, losses in (("a codecs", codec), ("b backbone", backbone), ("c distillation", distill)):
        report(f"stage {name}: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps")
        assert losses[-1] < 0.9 * losses[0], (name, losses)


def test_training_resumes_from_its_checkpoint(tmp_path, tiny):
    """2 steps, then --resume to 4, equals 4 steps at once (weights, Adam state and schedule restored)."""
    from safetensors.torch import load_file

    from streamer.cli import main

    init = tmp_path / "init.safetensors"
    assert main(["init-weights", "--preset", "tiny", "--seed", "3", "--out", str(init)]) == 0
    common = ["train", "--stage", "b", "--init", str(init), "--batch", "2", "--conversations", "2", "--units", "8"]
    assert main([*common, "--steps", "4", "--out", str(tmp_path / "once")]) == 0
    assert main([*common, "--steps", "2", "--out", str(tmp_path / "twice")]) == 0
    assert main([*common, "--steps", "4", "--resume", "--out", str(tmp_path / "twice")]) == 0
    a, b = (load_file(str(tmp_path / d / "teacher.safetensors")) for d in ("once", "twice"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "once" / "stage_b_loss.png").stat().st_size > 1000
    assert main([*common, "--steps", "4", "--batch", "0", "--out", str(tmp_path / "x")]) == 2  # refused, named


def _torchrun() -> list[str]:
    """docs/TRAINING.md's launcher: `PYTHONSAFEPATH=1 torchrun` (the script beside this interpreter)."""
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def test_train_all_stages_one_process_and_ddp_then_eval(tmp_path, capsys):
    """docs/TRAINING.md's commands end to end: `streamer train --stage all` (stage a's two codec loops log
    different loss terms; they crashed the loss plot) in one process and under `PYTHONSAFEPATH=1 torchrun
    --nproc_per_node 2` (DDP: each codec loop wraps only its codec, no unused parameters), from a working
    directory holding a planted struct/numpy/json that neither launcher nor worker imports; the same global
    batch ends with the same weights, and `streamer eval` loads the student."""
    from planted import leaked, plant
    from safetensors.torch import load_file

    from streamer.cli import main

    cwd = tmp_path / "cwd"
    markers = plant(cwd)
    common = ["-m", "streamer.cli", "train", "--stage", "all", "--steps", "2", "--audio-steps", "2", "--batch", "4",
              "--conversations", "2", "--units", "8", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONSAFEPATH": "1"}
    assert main([*common[2:], "--out", str(tmp_path / "one")]) == 0  # one process: in this one
    two = subprocess.run([*_torchrun(), "--nproc_per_node", "2", "--standalone", *common, "--out",
                          str(tmp_path / "two")], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "(2 processes)" in two.stderr and leaked(markers) == []
    for stage in "abc":
        assert (tmp_path / "two" / f"stage_{stage}_loss.png").stat().st_size > 1000
    a, b = (load_file(str(tmp_path / d / "student.safetensors")) for d in ("one", "two"))
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    report(f"DDP 2 processes vs 1 process, --stage all, 2 steps each: max weight difference {worst:.2e}")
    assert worst < 2e-2  # float sums in another order, through Adam's first steps (lr 5e-3): ~4e-3 measured
    assert main(["eval", "--weights", str(tmp_path / "two" / "student.safetensors"), "--units", "8",
                 "--conversations", "1"]) == 0
    assert "questions answered" in capsys.readouterr().out


def test_conversation_and_metrics_import_no_torch():
    """`streamer eval --engines` runs on the torch-free runtime: the conversation and its metrics are numpy."""
    code = ("import sys, training.conversation, training.metrics, streamer.train_cmds; "
            "bad = [m for m in ('torch', 'model_src') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def _embedded():
    from model_src.weights import embedded_weights

    try:
        return embedded_weights("tiny")
    except ValueError:
        return None


@pytest.mark.skipif(_embedded() is None, reason="the trained tiny weights are not installed (model_src/trained/)")
def test_shipped_weights_reach_the_thresholds_through_ort_engines(tiny_ort_engines, tmp_path, tiny):
    """`streamer build --preset tiny` uses the shipped weights; streamed through the ONNX Runtime engines,
    held-out conversations reach docs/TRAINING.md's thresholds, far above random weights."""
    from model_src.session import ReferenceSession
    from model_src.system import build_system
    from runtime.manifest import read_manifest
    from streamer.cli import main
    from training.data import HELD_OUT_SEED
    from training.metrics import evaluate

    assert read_manifest(tiny_ort_engines)["weights"]["embedded"] == "tiny"
    summary = tmp_path / "eval.json"
    assert main(["eval", "--engines", str(tiny_ort_engines), "--conversations", "4", "--threads", "1",
                 "--json", str(summary)]) == 0
    m = json.loads(summary.read_text())["metrics"]
    random = build_system(tiny, seed=0).eval()
    floor = evaluate(lambda s: ReferenceSession(random, seed=s), tiny, range(HELD_OUT_SEED, HELD_OUT_SEED + 2), 48)
    report("shipped tiny weights, ORT engines, 4 held-out conversations: " +
           ", ".join(f"{k} {m[k]:.3f}" for k in ("task", "text", "tone", "face", "turn", "sync", "barge_in_units", "overlap"))
           + f"; random weights (torch): task {floor['task']:.3f}")
    for key, limit in THRESHOLDS.items():
        ok = m[key] <= limit if key in ("barge_in_units", "overlap") else m[key] >= limit
        assert ok, (key, m[key], limit)
    assert m["task"] > floor["task"] + 0.4


@pytest.mark.skipif(_embedded() is None, reason="the trained tiny weights are not installed (model_src/trained/)")
def test_run_with_no_flags_answers_the_synthetic_questions(tmp_path, capsys):
    from streamer.cli import main
    from training.conversation import COLOUR_WORDS, PITCH_WORDS, make_conversation
    from model_src.config import get_preset

    assert main(["run", "--preset", "tiny", "--units", "24", "--out", str(tmp_path)]) == 0
    assert "weights: embedded trained tiny" in capsys.readouterr().err
    said = np.array([u["tokens"] for u in json.loads((tmp_path / "text.json").read_text())])
    c = make_conversation(get_preset("tiny"), 24, 0)
    answer = c.model_speaking
    assert np.isin(said[answer, 0], PITCH_WORDS).mean() > 0.7 and np.isin(said[answer, 1], COLOUR_WORDS).mean() > 0.7
    assert (said[~answer] == SIL).mean() > 0.8
