"""`streamer train`: the three stages at tiny scale, on one process or under torchrun (DDP, gloo on a CPU,
nccl on a GPU), each resumable from a safetensors checkpoint, with a progress bar and a loss-curve PNG.

    a  codecs      audio + video VAE, reconstruction + KL               -> OUT/codecs.safetensors
    b  backbone    LM on text_out + flow matching, teacher-forced,       -> OUT/teacher.safetensors
                   block-causal (training/losses.py)
    c  distill     progressive distillation of the teacher's solver     -> OUT/student.safetensors
                   (8 -> 4 -> 2 steps), LM kept                           (flow_steps = the student's)

Every file OUT/*.safetensors is a weights file of the av-streamer format (`streamer run --weights`);
OUT/stage_X.ckpt.safetensors holds the weights, the Adam state, the step and the loss history, so an
interrupted stage resumes where its last checkpoint was (`--resume`). The global batch is split over
the processes and every random draw is made per global sample, so N processes compute what one does.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model_src.system import build_system
from model_src.weights import load_weights, read_preset, save_weights
from unitio.growing import write_replacing
from unitio.jsonsafe import loads_bounded

from .codecs import SEMANTIC_WEIGHT, codec_clip, standardize_latents, start_posteriors_narrow, user_clip_every
from .tasks import task_of
from .data import TRAIN_SEED_BASE, batch_indices, encode_conversations, sample_rand, sample_randn
from .losses import BackboneLoss, CodecLoss, DistillLoss

CKPT_FORMAT = "av-streamer-train/1"
OUTPUTS = {"a": "codecs.safetensors", "b": "teacher.safetensors", "c": "student.safetensors"}


@dataclass
class StageConfig:
    steps: int
    batch: int  # global batch (split over processes)
    lr: float
    clip_units: int = 1  # stage a: units per codec clip with a loss
    codecs: tuple[str, ...] = ("audio", "video")  # stage a: which codecs to train
    audio_steps: int = 1500  # stage a: steps of the audio loop (cfg.steps: the video loop)
    audio_lr: float = 2e-3
    reinit: bool = False  # stage a with --init: restart the trained codecs from seeded weights
    context_units: int = 2  # stage a: units before each clip that only set the stream state
    semantic: float = 0.0  # stage a: weight of the audio latents' log-mel term (training/codecs.py audio_vae_loss)
    video_from: str = ""  # stage a: a weights file (or "shipped:PRESET") whose video VAE this one starts from
    prev_noise: bool = False  # stages b, c: mix each unit's previous latents towards noise (losses.teacher_forced_inputs)
    heard_weight: float = 0.0  # stage b: weight of the training-only heard-word term (training/losses.py heard_loss)
    in_noise: float = 0.0  # stage b: the user's audio latents perturbed per conversation at this scale (perturb_heard)
    onset_weight: float = 1.0  # stages b, c: weight of an answer's first text token in the LM loss (losses.lm_loss)
    conversations: int = 96  # stages b, c: training conversations
    units: int = 40  # stages b, c: units per conversation
    rounds: tuple[int, ...] = ()  # stage c: student steps per distillation round (teacher: twice the first)
    checkpoint_every: int = 100
    seed: int = 0


DEFAULTS = {
    "a": StageConfig(steps=1000, batch=8, lr=5e-3, clip_units=1, context_units=1, checkpoint_every=250),  # video loop: 4 clips
    "b": StageConfig(steps=500, batch=8, lr=3e-3, conversations=64, units=32, checkpoint_every=50),
    "c": StageConfig(steps=80, batch=8, lr=5e-4, conversations=64, units=32, rounds=(4, 2), checkpoint_every=20),
}
# the spoken task (docs/TRAINING.md "The speech model"): a longer audio loop (4 words to voice, many voices
# to hear), the video VAE warm-started from tiny's (the same faces and squares) and tuned briefly, and
# many more, shorter conversations (every conversation is one speaker: the speakers heard set how well
# unheard voices are understood); stage b's steps are the total of the phases that made the first
# shipped weights (700 + 450 + 600 + 600, docs/TRAINING.md), in one run; the audio latents must hold
# the log-mel spectrum (semantic) and the backbone must name the word it heard (heard_weight): both
# training-only terms, docs/TRAINING.md "the latents must carry the words"; the user's audio latents are
# perturbed per conversation (in_noise) so that no training speaker can be learned by heart
PRESET_DEFAULTS = {"tiny-speech": {
    "a": replace(DEFAULTS["a"], steps=300, lr=1e-3, audio_steps=2400, audio_lr=1e-3, clip_units=2, semantic=SEMANTIC_WEIGHT,
                 video_from="shipped:tiny"),
    "b": replace(DEFAULTS["b"], steps=2350, lr=2e-3, conversations=1280, units=24, prev_noise=True, onset_weight=10.0,
                 heard_weight=0.5, in_noise=0.2),
    "c": replace(DEFAULTS["c"], conversations=1280, units=24, prev_noise=True, onset_weight=10.0),
}}


def stage_defaults(preset_name: str, stage: str) -> StageConfig:
    """The default StageConfig of `stage` ("a", "b", "c") for a preset."""
    return PRESET_DEFAULTS.get(preset_name, DEFAULTS)[stage]


class TrainError(ValueError):
    """A training run that cannot start: a missing input file, a checkpoint of another stage, bad sizes."""


# --- processes ---------------------------------------------------------------------------------------------
@dataclass
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: np.ndarray) -> np.ndarray:
        per = len(items) // self.size
        return items[self.rank * per:(self.rank + 1) * per]

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()


def init_world() -> World:
    """One process, or the torchrun group from its environment (gloo on a CPU, nccl with CUDA)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def wrap(module: nn.Module, world: World) -> nn.Module:
    if world.size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, find_unused_parameters=False)


# --- checkpoints ---------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, stage: str, step: int, system, optimizer, history: list, cfg: StageConfig,
                    extra: nn.Module | None = None) -> None:
    """The system's weights, a training-only `extra` module's (stage a's semantic head, stage b's
    heard-word head), Adam's state."""
    from safetensors.torch import save_file

    tensors = {f"weights.{k}": v.detach().clone().contiguous() for k, v in system.state_dict().items()}
    if extra is not None:
        tensors.update({f"extra.{k}": v.detach().clone().contiguous() for k, v in extra.state_dict().items()})
    state = optimizer.state_dict()
    for i, s in state["state"].items():
        for name, value in s.items():
            tensors[f"optim.{i}.{name}"] = torch.as_tensor(value).detach().clone().contiguous()
    meta = {"format": CKPT_FORMAT, "stage": stage, "step": str(step), "preset_json": system.preset.to_json(),
            "history": json.dumps(history), "config": json.dumps(asdict(cfg)),
            "param_groups": json.dumps(state["param_groups"])}
    write_replacing(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))  # never half a checkpoint


def load_checkpoint(path: Path, stage: str, system, optimizer, extra: nn.Module | None = None) -> tuple[int, list]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != CKPT_FORMAT or meta.get("stage") != stage:
        raise TrainError(f"{path}: expected a stage {stage} checkpoint ({CKPT_FORMAT}), found format "
                         f"{meta.get('format')!r} stage {meta.get('stage')!r}")
    if meta["preset_json"] != system.preset.to_json():
        raise TrainError(f"{path}: checkpoint of another preset or flow_steps than this run's")
    tensors = load_file(str(path))
    system.load_state_dict({k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")})
    held = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    if extra is None and held:
        raise TrainError(f"{path}: checkpoint with a training-only head this run does not have (a run with "
                         "--semantic or --heard-weight): resume with the same, or start without --resume")
    if extra is not None:
        if set(held) != set(extra.state_dict()):
            raise TrainError(f"{path}: checkpoint without this run's training-only head (a run with another "
                             "--semantic or --heard-weight): resume with the same, or start without --resume")
        extra.load_state_dict(held)
    try:  # metadata from disk: bounded (size, nesting) before it is parsed
        groups, history = (loads_bounded(meta.get(k, ""), 64 << 20, 8) for k in ("param_groups", "history"))
    except ValueError as e:
        raise TrainError(f"{path}: checkpoint metadata: {e}") from None
    state: dict = {"state": {}, "param_groups": groups}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            state["state"].setdefault(int(i), {})[name] = v
    optimizer.load_state_dict(state)
    return int(meta["step"]), history


def load_system(path: Path, what: str):
    if not Path(path).is_file():
        raise TrainError(f"{what}: {path} does not exist (run the earlier stage first, or give --init)")
    preset = read_preset(path)
    system = build_system(preset)
    load_weights(system, preset, path)
    return system


# --- the loop --------------------------------------------------------------------------------------------------
def lr_at(step: int, cfg: StageConfig) -> float:
    """Linear warm-up over 5 % of the steps, then cosine down to 10 %."""
    warm = max(1, cfg.steps // 20)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    x = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, x))))


def run_loop(stage: str, system, loss_module: nn.Module, params, cfg: StageConfig, out: Path, world: World,
             batch_fn, resume: bool, label: str, step_offset: int = 0, history: list | None = None,
             extra: nn.Module | None = None) -> list:
    """Adam over `params` (and a training-only `extra` module's, checkpointed beside the system) for
    cfg.steps steps of `loss_module(*batch_fn(step, shard_positions))`; checkpoints every
    cfg.checkpoint_every steps and at the end. Returns the loss history."""
    ckpt = out / f"stage_{stage}{'_' + label if label else ''}.ckpt.safetensors"
    params = list(params) + (list(extra.parameters()) if extra is not None else [])
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    model = wrap(loss_module, world)
    start, history = 0, list(history or [])
    if resume and ckpt.is_file():
        start, history = load_checkpoint(ckpt, stage, system, optimizer, extra)
        if world.main:
            _say(f"stage {stage}{' ' + label if label else ''}: resumed from {ckpt} at step {start}")
    positions = world.shard(np.arange(cfg.batch))
    bar = _progress(world, f"stage {stage}{' ' + label if label else ''}", cfg.steps, start)
    # the next step's batch is made in a thread while this step computes (speech rendering and clip
    # cutting are numpy and C: they overlap torch's work); a batch depends only on its step
    from concurrent.futures import ThreadPoolExecutor

    prefetch = ThreadPoolExecutor(1, thread_name_prefix="batches")
    upcoming = prefetch.submit(batch_fn, start, positions) if start < cfg.steps else None
    for step in range(start, cfg.steps):
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, cfg)
        batch = upcoming.result()
        upcoming = prefetch.submit(batch_fn, step + 1, positions) if step + 1 < cfg.steps else None
        loss, parts = model(*batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        values = {"loss": _mean_over(loss.detach(), world), **{k: _mean_over(v, world) for k, v in parts.items()}}
        history.append([step_offset + step, values])
        if bar is not None:
            bar.update(1, " ".join(f"{k} {v:.4f}" for k, v in values.items()))
        done = step + 1 == cfg.steps
        if world.main and (done or (step + 1) % cfg.checkpoint_every == 0):
            save_checkpoint(ckpt, stage, step + 1, system, optimizer, history, cfg, extra)
    prefetch.shutdown()
    if bar is not None:
        bar.close()
    world.barrier()
    return history


def _mean_over(x: torch.Tensor, world: World) -> float:
    if world.size > 1:
        x = x.detach().clone()
        torch.distributed.all_reduce(x)
        x /= world.size
    return float(x)


# --- the stages -------------------------------------------------------------------------------------------------
def stage_a(out: Path, cfg: StageConfig, world: World, resume: bool, init: Path | None, preset_name: str = "tiny"):
    """Both codecs, each in its own loop (their costs differ ~10x per clip): the audio VAE for
    cfg.audio_steps steps of cfg.batch clips, then the video VAE for cfg.steps steps of cfg.batch // 2
    clips. cfg.codecs picks which; with --init, cfg.reinit restarts the picked ones from seeded weights."""
    from model_src.config import get_preset

    system = load_system(init, "--init") if init else build_system(get_preset(preset_name), seed=cfg.seed)
    fresh = build_system(system.preset, seed=cfg.seed)
    start_posteriors_narrow(fresh)
    for codec in cfg.codecs:
        if init is None or cfg.reinit:
            getattr(system, f"{codec}_vae").load_state_dict(getattr(fresh, f"{codec}_vae").state_dict())
    if cfg.video_from and "video" in cfg.codecs and (init is None or cfg.reinit):
        warm_start_video(system, cfg.video_from)
    system.train()
    p = system.preset
    every = user_clip_every(p)
    history = []
    for codec in ("audio", "video"):
        if codec not in cfg.codecs:
            continue
        loop_cfg = (replace(cfg, steps=cfg.audio_steps, lr=cfg.audio_lr) if codec == "audio"
                    else replace(cfg, batch=max(world.size, cfg.batch // 2)))

        def batch(step, positions, codec=codec, loop_cfg=loop_cfg):
            """Clips by global batch position (so any split over processes makes the same ones): the
            user's side at every `every`-th position (the encoders must tell users apart), else the model's."""
            seeds = TRAIN_SEED_BASE + batch_indices(cfg.seed, step, 10**6, loop_cfg.batch)
            made = [codec_clip(p, seeds[i], cfg.clip_units, i % every == every - 1, [cfg.seed, step, int(i), 1 if codec == "audio" else 2],
                               context=cfg.context_units) for i in positions]
            if codec == "audio":
                eps = sample_randn(cfg.seed, step, positions, (cfg.clip_units * p.audio_frames_per_unit, p.audio_z), 1)
                return torch.from_numpy(np.stack([a for a, _ in made])), None, eps, None
            eps = sample_randn(cfg.seed, step, positions, (p.video_z, cfg.clip_units, p.latent_height, p.latent_width), 2)
            return None, torch.from_numpy(np.stack([f for _, f in made])), None, eps

        vae = getattr(system, f"{codec}_vae")
        # only this codec: DDP sees no unused parameter; speech drops the spectral term (training/codecs.py)
        loss = CodecLoss(system, cfg.context_units, (codec,), spectral=task_of(p) != "speech", semantic=cfg.semantic)
        history += run_loop("a", system, loss, list(vae.parameters()), loop_cfg, out, world, batch, resume, codec,
                            step_offset=len(history), extra=loss.semantic_head)
    system.eval()
    if world.main:
        sa, sv = standardize_latents(system, p, TRAIN_SEED_BASE + np.arange(32))
        save_weights(system, p, out / OUTPUTS["a"])
        loss_png(history, out / "stage_a_loss.png", "stage a: codecs (reconstruction + KL), audio then video")
        _say(f"stage a: latent scales audio {np.round(sa, 3).tolist()}, video mean {float(np.mean(sv)):.3f}; "
             f"wrote {out / OUTPUTS['a']}")
    world.barrier()
    return history


def warm_start_video(system, source: str) -> None:
    """Load the video VAE of `source` (a weights file, or "shipped:PRESET" for a preset's shipped
    weights) into `system`'s; its sizes must be this preset's."""
    from model_src.weights import embedded_weights

    path = embedded_weights(source.split(":", 1)[1]) if source.startswith("shipped:") else Path(source)
    if path is None or not Path(path).is_file():
        raise TrainError(f"--video-from: no weights file {source!r}")
    donor = load_system(Path(path), "--video-from")
    mine, theirs = system.video_vae.state_dict(), donor.video_vae.state_dict()
    wrong = [k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape]
    if wrong:
        raise TrainError(f"--video-from {path}: its video VAE has other sizes than preset {system.preset.name!r}'s "
                         f"(first: {wrong[0]}); expected video_z {system.preset.video_z}, "
                         f"video_vae_dim {system.preset.video_vae_dim}")
    system.video_vae.load_state_dict(theirs)


def training_latents(system, out: Path, cfg: StageConfig, world: World) -> dict[str, torch.Tensor]:
    """The training conversations encoded by the stage-a codecs, cached in OUT/latents.safetensors
    (keyed by the codecs' weights, the sizes and the conversation generator's version, so a retrained
    codec or a changed generator re-encodes)."""
    from safetensors.torch import load_file, save_file

    key = _codec_key(system, cfg)
    path = out / "latents.safetensors"
    if world.main and not (path.is_file() and _meta(path).get("key") == key):
        bar = _progress(world, "encoding the training conversations", cfg.conversations, 0)
        data = encode_conversations(system, TRAIN_SEED_BASE + np.arange(cfg.conversations), cfg.units,
                                    on_batch=lambda n: bar.update(n, ""))
        bar.close()
        write_replacing(path, lambda tmp: save_file({k: v.contiguous() for k, v in data.items()}, str(tmp),
                                                    metadata={"key": key}))
    world.barrier()
    data = load_file(str(path))
    return {k: v.bool() if k == "speaking" else v for k, v in data.items()}


def _codec_key(system, cfg: StageConfig) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted({**system.audio_vae.state_dict(), **system.video_vae.state_dict()}.items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    from .spoken import VERSION as SPOKEN_VERSION

    h.update(f"{cfg.conversations} {cfg.units} {system.preset.to_json()} heard spoken/{SPOKEN_VERSION}".encode())
    return h.hexdigest()


def _meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def _conversation_batch(data, cfg: StageConfig, step: int, positions, p, draw_t):
    idx = batch_indices(cfg.seed, step, len(data["text"]), cfg.batch)[positions]
    batch = {k: v[torch.from_numpy(idx)] for k, v in data.items()}
    u = batch["text"].shape[1]
    na = sample_randn(cfg.seed, step, positions, (u, p.audio_frames_per_unit, p.audio_z), 3)
    nv = sample_randn(cfg.seed, step, positions, (u, p.video_z, p.latent_height, p.latent_width), 4)
    if cfg.prev_noise:  # losses.teacher_forced_inputs: previous latents as the solver may leave them
        mix = sample_rand(cfg.seed, step, positions, (u,), 8)
        mix[:, 0] = 0.0  # unit 0's previous latents are a session's zeros, exactly
        batch.update(prev_mix=mix, prev_noise_audio=sample_randn(cfg.seed, step, positions, (u, p.audio_frames_per_unit, p.audio_z), 9),
                     prev_noise_video=sample_randn(cfg.seed, step, positions, (u, p.video_z, p.latent_height, p.latent_width), 10))
    if cfg.in_noise > 0:
        batch["audio_in"] = perturb_heard(batch["audio_in"], cfg.in_noise, cfg.seed, step, positions)
    return batch, na, nv, draw_t(positions, u)


def perturb_heard(audio_in: torch.Tensor, scale: float, seed: int, step: int, positions) -> torch.Tensor:
    """The user's audio latents [B, U, A, Za] as another microphone and speaker might give them: per
    sample, each channel scaled by 1 + scale * g and shifted by scale * b (g, b ~ N(0, 1), the same
    through the conversation), plus N(0, (scale / 2)^2) per frame; drawn per (seed, step, global index)."""
    za = audio_in.shape[-1]
    gain = sample_randn(seed, step, positions, (za,), 11)[:, None, None, :]
    shift = sample_randn(seed, step, positions, (za,), 12)[:, None, None, :]
    noise = sample_randn(seed, step, positions, tuple(audio_in.shape[1:]), 13)
    return audio_in * (1 + scale * gain) + scale * shift + 0.5 * scale * noise


def stage_b(out: Path, cfg: StageConfig, world: World, resume: bool, init: Path | None):
    system = load_system(init or out / OUTPUTS["a"], "stage b needs the codecs")
    system.eval()  # the codecs are frozen from here on
    data = training_latents(system, out, cfg, world)
    model, p = system.model, system.preset
    model.train()

    def batch(step, positions):
        return _conversation_batch(data, cfg, step, positions, p,
                                   lambda pos, u: sample_rand(cfg.seed, step, pos, (u,), 5))

    loss = BackboneLoss(model, cfg.onset_weight, cfg.heard_weight)
    if loss.heard_head is not None and "heard" not in data:
        raise TrainError(f"{out / 'latents.safetensors'} has no heard-word labels: delete it to re-encode")
    history = run_loop("b", system, loss, list(model.parameters()), cfg, out, world, batch, resume, "", extra=loss.heard_head)
    model.eval()
    if world.main:
        save_weights(system, p, out / OUTPUTS["b"])
        loss_png(history, out / "stage_b_loss.png", "stage b: backbone (LM + flow matching)")
        _say(f"stage b: wrote {out / OUTPUTS['b']}")
    world.barrier()
    return history


def stage_c(out: Path, cfg: StageConfig, world: World, resume: bool, init: Path | None):
    import copy

    teacher_system = load_system(init or out / OUTPUTS["b"], "stage c needs the teacher")
    data = training_latents(teacher_system, out, cfg, world)
    teacher = teacher_system.model.eval()
    p, history = teacher_system.preset, []
    steps_per_round = max(1, cfg.steps // len(cfg.rounds))
    for r, n in enumerate(cfg.rounds):
        student_system = copy.deepcopy(teacher_system)
        student_system.preset = p.replace(flow_steps=n)
        student = student_system.model.train().requires_grad_(True)
        round_cfg = replace(cfg, steps=steps_per_round)

        def batch(step, positions, n=n):
            return _conversation_batch(data, round_cfg, step + 1000 * r, positions, p,
                                       lambda pos, u: torch.from_numpy(
                                           np.stack([np.random.default_rng([cfg.seed, step, r, int(i), 6]).integers(0, n, u)
                                                     for i in pos])))

        history = run_loop("c", student_system, DistillLoss(student, teacher, n, cfg.onset_weight), list(student.parameters()),
                           round_cfg, out, world, batch, resume, f"round{r + 1}_{2 * n}to{n}",
                           step_offset=r * steps_per_round, history=history)
        teacher_system, teacher = student_system, student.eval()
        for q in teacher.parameters():
            q.requires_grad_(False)
    final = teacher_system
    final.preset = p.replace(flow_steps=cfg.rounds[-1])
    if world.main:
        save_weights(final, final.preset, out / OUTPUTS["c"])
        loss_png(history, out / "stage_c_loss.png", f"stage c: progressive distillation {2 * cfg.rounds[0]} -> "
                 f"{cfg.rounds[-1]} steps")
        _say(f"stage c: wrote {out / OUTPUTS['c']} (flow_steps {cfg.rounds[-1]})")
    world.barrier()
    return history


# --- output ------------------------------------------------------------------------------------------------------
def loss_png(history: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for h in history for name in h[1]))  # loops may log different terms
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        steps = [h[0] for h in history if name in h[1]]
        ys = np.array([h[1][name] for h in history if name in h[1]])
        k = max(1, len(ys) // 50)
        smooth = np.convolve(ys, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, label=name, lw=1.5 if name == "loss" else 1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_replacing(path, lambda tmp: fig.savefig(tmp, dpi=90))
    plt.close(fig)


def _say(text: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(text)


class _Bar:
    def __init__(self, description: str, total: int, done: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, desc=description, dynamic_ncols=True, mininterval=1.0)

    def update(self, n: int, text: str) -> None:
        self.bar.update(n)
        if text:
            self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self.bar.close()


def _progress(world: World, description: str, total: int, done: int):
    return _Bar(description, total, done) if world.main else None
