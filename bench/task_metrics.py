"""The task metrics of the trained tiny model through the whole pipeline: writes docs/TRAINING.md's table.

    python bench/task_metrics.py --teacher OUT/teacher.safetensors [--student WEIGHTS] [--conversations 8]
        [--units 48] [--work DIR] [--write docs/TRAINING.md]

Streams the same held-out synthetic conversations (seeds 100000.., never trained on) through: random
weights (the floor), the teacher (torch fp32, 8 and 16 solver steps, and 2 steps undistilled), the student
(torch fp32 at its steps and at 1), ONNX Runtime fp32 engines, AOTInductor CPU engines, ONNX Runtime INT8
engines (modelopt max and SmoothQuant, calibrated on 32 units of training-distribution conversations), and
FP8 E4M3 by simulation (modelopt fake-quant thinker_step + flow_step, and the FP8 KV cache). Every row is
scored from its outputs alone by training/metrics.py. The student defaults to the shipped weights.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from calibration.record import load_calibration, record
from calibration.torch_engines import torch_parts
from export.build import build
from model_src.session import ReferenceSession
from model_src.system import build_system
from model_src.weights import embedded_weights, load_weights, read_preset
from runtime.manifest import sha256
from runtime.host.session import EngineSession
from training.conversation import ConversationUnits
from training.data import HELD_OUT_SEED, TRAIN_SEED_BASE
from training.metrics import THRESHOLDS, evaluate

START, END = "<!-- task metrics table: start -->", "<!-- task metrics table: end -->"
COLUMNS = ("task", "text", "tone", "face", "turn", "sync", "barge_in_units", "overlap", "answer_latency_units")


def load(path: Path, steps: int | None = None):
    p = read_preset(path)
    system = build_system(p)
    load_weights(system, p, path)
    if steps is not None:
        system.preset = p.replace(flow_steps=steps)
    return system.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", type=Path, required=True, help="stage b's teacher.safetensors")
    ap.add_argument("--student", type=Path, default=None, help="the student (default: the shipped tiny weights)")
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--units", type=int, default=48)
    ap.add_argument("--work", type=Path, default=None, help="folder for the engines built (default: a temp folder)")
    ap.add_argument("--only", default=None, help="comma-separated row keys to run (default all)")
    ap.add_argument("--write", type=Path, help="replace the table in this markdown file")
    ap.add_argument("--json", type=Path, help="also write every row's metrics as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread: on shared cores two spin-waiting threads were 5-30x slower
    student_path = args.student or embedded_weights("tiny")
    work = args.work or Path(tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    student = load(student_path)
    p, n_steps = student.preset, student.preset.flow_steps
    seeds = range(HELD_OUT_SEED, HELD_OUT_SEED + args.conversations)
    weights = {"file": str(student_path.resolve()), "sha256": sha256(student_path)}

    def torch_row(system):
        return lambda: evaluate(lambda s: ReferenceSession(system, seed=s), system.preset, seeds, args.units)

    def engine_row(name, backend, precision="fp32", algorithm="max"):
        def run():
            out = work / name
            if not (out / "manifest.json").is_file():
                cal = None
                if precision == "int8":
                    cal = work / "calibration.safetensors"
                    if not cal.is_file():  # training-distribution conversations (not the held-out ones)
                        record(copy.deepcopy(student), list(ConversationUnits(p, 32, TRAIN_SEED_BASE + 999)), 0, cal,
                               source="conversation", weights=weights)
                t0 = time.perf_counter()
                build(copy.deepcopy(student), out, backend, precision, weights, calibration=cal, algorithm=algorithm)
                print(f"built {name} in {time.perf_counter() - t0:.0f} s", flush=True)
            return evaluate(lambda s: EngineSession(out, seed=s, mode="sequential", threads=1), p, seeds, args.units)
        return run

    def fp8_row(kv: bool):
        def run():
            from calibration.quantize import fp8_roundtrip, kv_scales, quantize_stage

            cal = work / "calibration_fp8.safetensors"
            if not cal.is_file():
                record(copy.deepcopy(student), list(ConversationUnits(p, 32, TRAIN_SEED_BASE + 999)), 0, cal,
                       source="conversation", weights=weights)
            tensors = load_calibration(cal)[0]
            modules = {s: quantize_stage(student, s, tensors, "fp8", "max") for s in ("thinker_step", "flow_step")}
            k_scale, v_scale = kv_scales(tensors)

            def make(seed):
                manifest, engines, initial = torch_parts(student, modules)
                if kv:
                    for s in ("thinker_step", "flow_step"):
                        inner = engines[s]
                        engines[s] = _Fp8Cache(inner, k_scale, v_scale, fp8_roundtrip)
                return EngineSession.in_process(manifest, engines, initial, seed=seed)
            return evaluate(make, p, seeds, args.units)
        return run

    rows = [
        ("random", "random weights (seed 0), torch fp32", n_steps, lambda: torch_row(build_system(p, seed=0).eval())()),
        ("teacher16", "teacher, torch fp32", 16, lambda: torch_row(load(args.teacher, 16))()),
        ("teacher8", "teacher, torch fp32", 8, lambda: torch_row(load(args.teacher, 8))()),
        ("teacher2", "teacher undistilled, torch fp32", n_steps, lambda: torch_row(load(args.teacher, n_steps))()),
        ("teacher1", "teacher undistilled, torch fp32", 1, lambda: torch_row(load(args.teacher, 1))()),
        ("student", "student, torch fp32", n_steps, torch_row(student)),
        ("student1", "student, torch fp32", 1, lambda: torch_row(load(student_path, 1))()),
        ("ort", "student, ONNX Runtime fp32 engines", n_steps, engine_row("ort_fp32", "ort")),
        ("aoti", "student, AOTInductor CPU engines", n_steps, engine_row("aoti_cpu", "aoti")),
        ("int8max", "student, ONNX Runtime INT8 engines (max)", n_steps, engine_row("ort_int8_max", "ort", "int8", "max")),
        ("int8sq", "student, ONNX Runtime INT8 engines (SmoothQuant)", n_steps,
         engine_row("ort_int8_sq", "ort", "int8", "smoothquant")),
        ("fp8", "student, FP8 E4M3 thinker+flow (modelopt simulated)", n_steps, fp8_row(False)),
        ("fp8kv", "student, FP8 E4M3 thinker+flow + FP8 KV cache (simulated)", n_steps, fp8_row(True)),
    ]
    only = set(args.only.split(",")) if args.only else None
    results = {}
    for key, name, steps, run in rows:
        if only and key not in only:
            continue
        t0 = time.perf_counter()
        results[key] = (name, steps, run())
        m = results[key][2]
        print(f"{key}: task {m['task']:.3f} text {m['text']:.3f} tone {m['tone']:.3f} face {m['face']:.3f} "
              f"turn {m['turn']:.3f} sync {m['sync']:.3f} barge-in {m['barge_in_units']:.2f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({k: {"name": n, "steps": s, "metrics": m} for k, (n, s, m) in results.items()}, indent=1))
    ref = results.get("student", (None, None, None))[2]
    lines = [START, f"{args.conversations} held-out conversations (seeds {seeds.start}..{seeds.stop - 1}) of {args.units} "
             f"units; student `{student_path.name}` (sha256 {sha256(student_path)[:12]}); "
             f"{platform.processor() or platform.machine()}; `python bench/task_metrics.py --teacher "
             f"{args.teacher} --conversations {args.conversations} --units {args.units}`.", "",
             "| model, backend, precision | steps | task | vs student | text | tone | face | turn | sync | barge-in (units) "
             "| both speak | answer latency (units) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, (name, steps, m) in results.items():
        rel = f"{100 * (m['task'] / ref['task'] - 1):+.1f} %" if ref else "-"
        lines.append(f"| {name} | {steps} | **{m['task']:.3f}** | {rel} | {m['text']:.3f} | {m['tone']:.3f} | "
                     f"{m['face']:.3f} | {m['turn']:.3f} | {m['sync']:.3f} | {m['barge_in_units']:.2f} | "
                     f"{m['overlap']:.3f} | {m['answer_latency_units']:.2f} |")
    lines += ["", "Thresholds the shipped weights must reach (tests/test_training.py, through the ONNX Runtime "
              "engines): " + ", ".join(f"{k} {'<=' if k in ('barge_in_units', 'overlap') else '>='} {v:g}"
                                        for k, v in THRESHOLDS.items()) + ".", END]
    text = "\n".join(lines)
    print(text)
    if args.write:
        doc = args.write.read_text()
        head, rest = doc.split(START, 1)
        args.write.write_text(head + text + rest.split(END, 1)[1])


class _Fp8Cache:
    """An engine fed an FP8 E4M3 round trip of its KV cache (per layer/head scales)."""

    def __init__(self, inner, k_scale, v_scale, roundtrip) -> None:
        self.inner, self.k_scale, self.v_scale, self.roundtrip = inner, k_scale, v_scale, roundtrip
        self.stage, self.inputs, self.outputs = inner.stage, inner.inputs, inner.outputs

    def run(self, feeds):
        return self.inner.run({**feeds, "cache_k": self.roundtrip(feeds["cache_k"], self.k_scale),
                               "cache_v": self.roundtrip(feeds["cache_v"], self.v_scale)})


if __name__ == "__main__":
    main()
