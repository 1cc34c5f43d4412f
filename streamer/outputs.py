"""What the commands share for input and output: the two consoles, reading a clip into units, writing
a session's outputs, and the per-unit timing table. numpy, rich and the media helpers only."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from unitio.units import InputError

console = Console(stderr=True, soft_wrap=True)  # progress and messages, never wrapped mid-message
out = Console(width=None if sys.stdout.isatty() else 160)  # tables (not squeezed to 80 columns in a pipe)


def read_input(spec: str, preset, units: int | None, seed: int):
    """--input / --data: 'synthetic', 'AUDIO.wav+VIDEO.mp4' or a folder of pairs -> [(audio, frames)] per unit."""
    from unitio.media import read_video, read_wav, split_units, synthetic_input

    if spec == "synthetic":
        audio, frames = synthetic_input(preset, units or 50, seed)
    elif Path(spec).is_dir():
        from unitio.media import read_folder

        return read_folder(Path(spec), preset, units)
    elif "+" in spec:
        wav, video = spec.split("+", 1)
        audio = read_wav(wav, preset.sample_rate)
        frames = read_video(video, preset.fps, preset.frame_height, preset.frame_width)
    else:
        raise InputError(f"--input: expected 'synthetic', 'AUDIO.wav+VIDEO.mp4' or a folder of NAME.wav + "
                         f"NAME.mp4 pairs, got {spec!r}")
    return split_units(audio, frames, preset, units)


def write_outputs(folder: Path, p, audio: list, frames: list, results: list) -> None:
    """out.wav, out.mp4, out_audio.npy (unquantized), text.json, timings.csv (when there are timings)."""
    import numpy as np

    from unitio.media import write_video, write_wav

    folder.mkdir(parents=True, exist_ok=True)
    write_wav(folder / "out.wav", np.concatenate(audio), p.sample_rate)
    write_video(folder / "out.mp4", np.concatenate(frames), p.fps)
    np.save(folder / "out_audio.npy", np.concatenate(audio))  # unquantized, for comparing backends
    texts = [{"unit": r.unit_index, "tokens": r.text_tokens.tolist()} for r in results]
    (folder / "text.json").write_text(json.dumps(texts, indent=0))
    written = "out.wav, out.mp4, out_audio.npy, text.json"
    rows = [r.timings_ms for r in results if r.timings_ms]
    if rows:
        with open(folder / "timings.csv", "w", newline="") as f:
            names = list(dict.fromkeys(name for row in rows for name in row))  # stages in first-seen order
            writer = csv.DictWriter(f, fieldnames=["unit", *names], restval="")
            writer.writeheader()
            for k, row in enumerate(rows):
                writer.writerow({"unit": k, **{s: f"{v:.3f}" for s, v in row.items()}})
        written += ", timings.csv"
    console.print(f"wrote {folder}/: {written}")


def print_timings(summary: dict, unit_ms: float, n_units: int) -> None:
    table = Table(title=f"per-unit time over {n_units} units (ms)")
    for col in ("stage", "p50", "p90", "p99", "max", "mean"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for stage, s in summary.items():
        table.add_row(stage, *(f"{s[c]:.2f}" for c in ("p50", "p90", "p99", "max", "mean")))
    out.print(table)
    rtf = summary["total"]["mean"] / unit_ms
    out.print(f"real-time factor {rtf:.3f} (mean unit time / {unit_ms:g} ms; below 1 keeps up)")
