"""Can a backbone hear the user's word in an audio VAE's latents? A probe for the speech codec.

    python bench/word_probe.py --weights F [--weights G ...] [--label "what F is" ...] [--train 900]
        [--heldout 300] [--steps 800] [--warp] [--write docs/TRAINING.md]

The user's three questions ("red?", "green?", "blue?", training/spoken.py) are rendered in training
voices (`--train` clips) and in held-out voices (`--heldout`: espeak variants never trained on), each at
a random loudness (peak 0.08-0.8) over a room's noise, starting anywhere in the first half of a clip's
second unit (as a conversation's question). The same small probe (two 1-D convolutions of width 3 over
time, max-pooled, a linear layer: shift-invariant, as the backbone's attention is) is trained on the
training voices and scored on the held-out ones, on two inputs:

- the audio latents of each --weights file's VAE encoder (16 frames of 40 ms from the question's unit),
- log-mel features of the same clips (40 bands, 60-7,600 Hz, 10 ms frames averaged to 40 ms): what a
  hand-made front end gets, the reference the latents are measured against.

With `--warp` each latent row is scored twice: probes trained on the training pool's voices as they are,
and on training speakers as stage b's conversations make them (spoken.training_speaker: a pitch range of
their own and a vocal-tract warp); the held-out clips are the same in both. Chance is 1/3. `--write` replaces the marked section (`<!-- word probe: start/end -->`) of the file,
refused before anything runs when the file has no markers.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench/ itself, from anywhere and without an install (never the cwd)

from bench.marked import check_marked, replace_marked  # noqa: E402

START, END = "<!-- word probe: start -->", "<!-- word probe: end -->"
FRAMES = 16  # latent frames (40 ms) from the question's unit: 0.64 s, the longest question


def clips(split: str, n: int, seed: int, samples_per_unit: int, on_clip=lambda: None,
          warp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """n clips of 6 units, each one question in a voice of `split` (with `warp`, a training speaker as
    stage b makes it from that voice): (audio float32 [n, 6 * S], word [n])."""
    from training import speech, spoken

    pool, rng, s = speech.speakers(0, split), np.random.default_rng([seed, 0 if split == "train" else 1]), samples_per_unit
    audio, words = np.zeros((n, 6 * s), np.float32), np.zeros(n, np.int64)
    for i in range(n):
        voice, word = pool[int(rng.integers(len(pool)))], int(rng.integers(3))
        voice, w = spoken.training_speaker(voice, [seed, i]) if warp else (voice, 1.0)
        q = spoken.warped(speech.render(spoken.QUESTIONS[word], voice), w)
        q = q * np.float32(np.exp(rng.uniform(np.log(0.08), np.log(0.8))) / np.abs(q).max())
        audio[i] = spoken.room_noise(rng, 6 * s, speech.SAMPLE_RATE)
        at = s + int(rng.integers(0, s // 2))
        q = q[:len(audio[i]) - at]
        audio[i, at:at + len(q)] += q
        words[i] = word
        on_clip()
    return audio, words


def latent_features(weights: Path, audio: np.ndarray):
    """The VAE encoder's latent means of `audio` from the question's unit: [n, FRAMES, audio_z]."""
    import torch

    from model_src.system import build_system
    from model_src.weights import load_weights, read_preset

    preset = read_preset(weights)
    system = build_system(preset)
    load_weights(system, preset, weights)
    av = system.audio_vae.eval()
    with torch.no_grad():
        z = torch.cat([av.encode(torch.from_numpy(audio[i:i + 64]), av.init_encoder_state(len(audio[i:i + 64])))[0]
                       for i in range(0, len(audio), 64)])
    a = preset.audio_frames_per_unit
    return z[:, a:a + FRAMES].float()


def logmel_features(audio: np.ndarray, samples_per_unit: int):
    """log-mel features of `audio` (the recognizer's filterbank, 10 ms frames averaged to 40 ms) from the
    question's unit: [n, FRAMES, 40]."""
    import torch

    from training.recognizer import _MEL, _WINDOW, HOP, frames_of

    per = samples_per_unit // HOP // 4 * 4  # 10 ms frames per unit, in whole 40 ms groups
    out = []
    for x in audio:
        f = frames_of(x)
        m = np.log(np.abs(np.fft.rfft(f * _WINDOW, axis=1)) ** 2 @ _MEL.T + 1e-8)
        m = m[:len(m) // 4 * 4].reshape(-1, 4, m.shape[1]).mean(1)
        out.append(m[per // 4:per // 4 + FRAMES])
    return torch.from_numpy(np.stack(out).astype(np.float32))


def probe(train_x, train_y, test_x, test_y, steps: int, seed: int = 0) -> tuple[float, float]:
    """Train the probe on (train_x [n, T, C], train_y) with Adam; (train accuracy, held-out accuracy)."""
    import torch
    from torch import nn

    mu, sd = train_x.mean((0, 1)), train_x.std((0, 1)) + 1e-6
    tr, te = ((train_x - mu) / sd).transpose(1, 2), ((test_x - mu) / sd).transpose(1, 2)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv1d(tr.shape[1], 64, 3, padding=1), nn.GELU(), nn.Conv1d(64, 64, 3, padding=1),
                          nn.GELU(), nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(64, 3))
    opt = torch.optim.Adam(model.parameters(), 1e-3, weight_decay=1e-2)
    ytr, yte = torch.from_numpy(train_y), torch.from_numpy(test_y)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(tr), ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((model(tr).argmax(1) == ytr).float().mean()), float((model(te).argmax(1) == yte).float().mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, action="append", required=True, help="a tiny-speech weights file (repeatable)")
    ap.add_argument("--label", action="append", default=[], help="what each --weights file is, in its order (default: its name)")
    ap.add_argument("--train", type=int, default=900, help="clips in training voices (default 900)")
    ap.add_argument("--heldout", type=int, default=300, help="clips in held-out voices (default 300)")
    ap.add_argument("--steps", type=int, default=800, help="Adam steps of each probe (default 800)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the clips")
    ap.add_argument("--warp", action="store_true", help="also probe latents trained on warped training speakers "
                    "(as stage b's conversations make them)")
    ap.add_argument("--write", type=Path, help="replace the marked section of this file with the table")
    args = ap.parse_args(argv)
    if args.write is not None:
        check_marked(args.write.read_text() if args.write.is_file() else "", args.write, START, END, "the word-probe table")
    for name in ("train", "heldout", "steps"):
        if getattr(args, name) < 3:
            print(f"--{name}: expected at least 3, got {getattr(args, name)}", file=sys.stderr)
            return 2
    if args.label and len(args.label) != len(args.weights):
        print(f"--label: expected one per --weights ({len(args.weights)}), got {len(args.label)}", file=sys.stderr)
        return 2
    for w in args.weights:
        if not w.is_file():
            print(f"--weights {w}: no such file", file=sys.stderr)
            return 2
    import torch
    from tqdm import tqdm

    from model_src.weights import read_preset
    from training.tasks import task_of

    torch.set_num_threads(1)
    presets = {w: read_preset(w) for w in args.weights}
    wrong = [f"{w} ({p.name})" for w, p in presets.items() if task_of(p) != "speech"]
    if wrong:
        print(f"--weights: expected weights of a speech preset (tiny-speech), got {', '.join(wrong)}", file=sys.stderr)
        return 2
    s = next(iter(presets.values())).samples_per_unit
    bar = tqdm(total=args.train * (1 + args.warp) + args.heldout, desc="rendering the questions", unit="clip")
    xtr, ytr = clips("train", args.train, args.seed, s, lambda: bar.update(1))
    warped = clips("train", args.train, args.seed, s, lambda: bar.update(1), warp=True) if args.warp else None
    xte, yte = clips("heldout", args.heldout, args.seed, s, lambda: bar.update(1))
    bar.close()
    rows = [("log-mel features (40 bands, 40 ms)", *probe(logmel_features(xtr, s), ytr, logmel_features(xte, s), yte, args.steps))]
    for w, label in zip(args.weights, args.label or [f"`{w.name}` ({w.parent.name})" for w in args.weights]):
        test = latent_features(w, xte)
        rows.append((f"audio latents of {label}", *probe(latent_features(w, xtr), ytr, test, yte, args.steps)))
        if warped is not None:
            rows.append((f"audio latents of {label}, probe trained on warped training speakers",
                         *probe(latent_features(w, warped[0]), warped[1], test, yte, args.steps)))
    lines = [f"{args.train} clips in training voices, {args.heldout} in held-out voices (seed {args.seed}), probe "
             f"{args.steps} Adam steps; {platform.machine()}; `python bench/word_probe.py "
             + " ".join(f"--weights {w}" for w in args.weights) + f" --train {args.train} --heldout {args.heldout}" + " --warp" * args.warp + "`"
             + " (labels: --label)." * bool(args.label),
             "", "| features | train voices | held-out voices (chance 0.33) |", "|---|---:|---:|"]
    lines += [f"| {name} | {a:.3f} | {b:.3f} |" for name, a, b in rows]
    table = "\n".join(lines)
    print(table)
    if args.write is not None:
        args.write.write_text(replace_marked(args.write.read_text(), f"{START}\n{table}\n{END}", args.write, START, END,
                                             "the word-probe table"))
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
