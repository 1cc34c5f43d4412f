"""Every figure the plan assumes beyond the datasheet, with where it comes from, and measured overrides.

Efficiencies are achieved / peak. A GPU's `[measured.<gpu>]` table in planning/gpus.toml, or a file
passed with `streamer plan --measured FILE`, replaces any of them for that GPU (format below); the
plan then names the measurement as the source.

    # TOML (gpus.toml or a separate file)         # or JSON, the same shape
    [measured.h100]                               # {"measured": {"h100": {"attention": 0.42,
    attention = 0.42                              #   "source": "bench/gpu_check.py 2026-12-01"}}}
    codec = 0.17
    source = "bench/gpu_check.py, 2026-12-01, H100 SXM"

`python -m planning.measured gpu_check.json --out FILE` writes such a file from a GPU run (planning/measured.py).
Keys: any of DEFAULTS' keys (gemm, attention, codec, memory, bus: fractions in (0, 1];
launch_us, graph_launch_us, kernel_gap_us: microseconds), plus `source` (required).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from unitio.jsonsafe import loads_bounded


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str
    what: str
    source: str


DEFAULTS: dict[str, Figure] = {
    "gemm": Figure(0.6, "of peak tensor FLOP/s", "transformer GEMMs (linears, LM head)",
                   "dense GEMMs of these sizes reach ~60-70 % of peak on H100 (cuBLAS; vLLM and "
                   "FlashAttention-3 report numbers in this range)"),
    "attention": Figure(0.5, "of peak bf16 FLOP/s", "attention (our Triton kernel; FP8 cache computes in bf16)",
                        "FlashAttention-3 reaches 50-75 % of bf16 peak on H100 at long sequences; 196-250 "
                        "queries against a 16k-32k cache is a smaller problem: 50 % assumed"),
    "codec": Figure(0.2, "of peak TF32 FLOP/s", "codec convolutions (small 3-D / 1-D convs, fp32 as TF32)",
                    "assumed; likely range 10-30 %: few channels (96-384 video, 64-512 audio), small spatial "
                    "tiles and 1-D convs on 4 frames give cuDNN little to tile; measure with gpu_check"),
    "memory": Figure(0.8, "of peak HBM bandwidth", "weights, KV cache, activations, elementwise kernels",
                     "streaming kernels reach ~80-90 % of peak HBM bandwidth on H100 (STREAM-like copies)"),
    "bus": Figure(0.8, "of PCIe / NVLink peak", "host <-> device and peer copies",
                  "pinned-memory copies reach ~80 % of the PCIe Gen5 x16 theoretical rate"),
    "launch_us": Figure(4.5, "us per kernel launch", "outside CUDA graphs: the CPU issues one launch at a time",
                        "~4-5 us per launch through the CUDA runtime from a framework on H100 (the review's "
                        "figure; NVIDIA's 'Getting Started with CUDA Graphs' blog measures a few us per "
                        "launch); the GPU waits where a kernel is shorter than a launch"),
    "graph_launch_us": Figure(10.0, "us per graph replay", "with CUDA graphs: one replay per phase (4 per unit)",
                              "cudaGraphLaunch costs a few us to ~10 us of CPU time (NVIDIA CUDA Graphs blog); "
                              "10 us assumed"),
    "kernel_gap_us": Figure(1.0, "us per kernel", "the GPU-side gap between two kernels, graphed or not",
                            "order of magnitude of the kernel-to-kernel gap in Nsight traces of back-to-back "
                            "kernels; assumed, not measured"),
}
FRACTIONS = ("gemm", "attention", "codec", "memory", "bus")
# the device path's graphs per unit, by the stage whose call replays them: encode (both codecs), thinker_step
# + append, the N-step solve, decode (both codecs)
GRAPHS_PER_UNIT = {"audio_enc": 1, "video_enc": 0, "thinker_step": 1, "flow_step": 1, "audio_dec": 1, "video_dec": 0}
DATASHEET = "planning/gpus.toml (datasheet peaks, dense)"


def load_measured(path: Path) -> dict[str, dict]:
    """A measured-efficiency file (TOML or JSON, the format above) -> {gpu key: {figure: value, source}}."""
    text = Path(path).read_text()
    try:
        data = loads_bounded(text, 1 << 20, 8) if Path(path).suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError, RecursionError) as e:
        raise ValueError(f"--measured {path}: not valid {'JSON' if Path(path).suffix == '.json' else 'TOML'}: {e}") from None
    table = data.get("measured")
    if not isinstance(table, dict):
        raise ValueError(f"--measured {path}: expected a [measured.<gpu>] table (or {{\"measured\": {{...}}}}), "
                         f"got keys {sorted(data)}")
    for gpu, figures in table.items():
        check_measured(gpu, figures, str(path))
    return table


def check_measured(gpu: str, figures: dict, where: str) -> None:
    """Refuse unknown keys, values out of range and a missing source, naming what was expected."""
    if not isinstance(figures, dict) or not isinstance(figures.get("source"), str):
        raise ValueError(f"{where}: [measured.{gpu}] needs a `source` string (what measured it)")
    for key, value in figures.items():
        if key == "source":
            continue
        if key not in DEFAULTS:
            raise ValueError(f"{where}: [measured.{gpu}] {key!r}: expected one of {sorted(DEFAULTS)}")
        bad = not isinstance(value, (int, float)) or value <= 0 or (key in FRACTIONS and value > 1)
        if bad:
            want = "a fraction in (0, 1]" if key in FRACTIONS else "a positive number of microseconds"
            raise ValueError(f"{where}: [measured.{gpu}] {key} = {value!r}: expected {want}")


def figures_for(measured: dict | None) -> dict[str, Figure]:
    """DEFAULTS with a GPU's measured values (and their source) put in their place."""
    out = dict(DEFAULTS)
    for key, value in (measured or {}).items():
        if key != "source":
            d = DEFAULTS[key]
            out[key] = Figure(float(value), d.unit, d.what, f"measured: {measured['source']}")
    return out
