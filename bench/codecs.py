"""Benchmark: the four VAE streaming steps per 160 ms unit on this machine, and their state sizes.

    python bench/codecs.py --preset small --seconds 10 [--threads N]

Streams a synthetic clip through audio/video encode_step, then its latents through decode_step, and
prints a markdown table (p50/p90/mean ms per unit, real-time factor, state bytes) for docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from tqdm import tqdm

from model_src.config import get_preset
from model_src.session import frames_to_tensor
from model_src.system import build_system
from unitio.media import synthetic_input


def state_bytes(state) -> int:
    return sum(t.numel() * t.element_size() for t in state)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    p = get_preset(args.preset)
    system = build_system(p)
    units = int(args.seconds * 1000 // p.unit_ms)
    audio, frames = synthetic_input(p, units)
    s, f = p.samples_per_unit, p.frames_per_unit
    av, vv = system.audio_vae, system.video_vae
    states = {"audio_enc": av.init_encoder_state(1), "video_enc": vv.init_encoder_state(1),
              "audio_dec": av.init_decoder_state(1), "video_dec": vv.init_decoder_state(1)}
    sizes = {k: state_bytes(v) for k, v in states.items()}
    times: dict[str, list[float]] = {k: [] for k in states}

    def timed(stage, fn, *a):
        t0 = time.perf_counter()
        out, states[stage] = fn(*a, states[stage])
        times[stage].append(1000 * (time.perf_counter() - t0))
        return out

    with torch.no_grad():
        for k in tqdm(range(units), desc=f"{p.name}: {units} units", unit="unit"):
            za = timed("audio_enc", av.encode_step, torch.from_numpy(audio[k * s:(k + 1) * s])[None])
            zv = timed("video_enc", vv.encode_step, frames_to_tensor(frames[k * f:(k + 1) * f]))
            timed("audio_dec", av.decode_step, za)
            timed("video_dec", vv.decode_step, zv)

    print(f"\n{p.name} preset, {units} units ({units * p.unit_ms / 1000:g} s), {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}\n")
    print("| step | p50 ms | p90 ms | mean ms | real-time factor | state bytes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for stage, xs in times.items():
        x = np.array(xs[1:] if len(xs) > 1 else xs)  # the first unit warms up
        print(f"| {stage} | {np.percentile(x, 50):.1f} | {np.percentile(x, 90):.1f} | {x.mean():.1f} | "
              f"{x.mean() / p.unit_ms:.3f} | {sizes[stage]:,} |")


if __name__ == "__main__":
    main()
