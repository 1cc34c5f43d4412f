"""The task metrics of a trained model through the whole pipeline: writes docs/TRAINING.md's table.

    python bench/task_metrics.py --teacher OUT/teacher.safetensors [--preset tiny | --student WEIGHTS]
        [--conversations 8] [--units 48] [--work DIR] [--only KEY,...] [--write docs/TRAINING.md] [--json FILE]

Streams the same held-out conversations of the preset's task (training/tasks.py: tones for tiny, the
spoken colour conversation for tiny-speech; seeds 100000.., never trained on) through: random weights
(the floor), the teacher (torch fp32, 8 and 16 solver steps, and 2 steps undistilled), the student (torch
fp32 at its steps and at 1), ONNX Runtime fp32 engines, AOTInductor CPU engines, ONNX Runtime INT8 engines
(modelopt max and SmoothQuant, calibrated on 32 units of a training conversation of the same task), and
FP8 E4M3 by simulation (modelopt fake-quant thinker_step + flow_step, and the FP8 KV cache). Every row is
scored from its outputs alone by training/metrics.py (or training/spoken_metrics.py). The student defaults
to the shipped weights of `--preset`; with `--student FILE` the preset is the file's. A row that fails
(an engine build, say) is reported in the table with its error's first line; the others still run.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench/ itself, from anywhere and without an install (never the cwd)

from bench.marked import check_marked, replace_marked  # noqa: E402
from calibration.record import load_calibration, record
from calibration.torch_engines import torch_parts
from export.build import build
from model_src.session import ReferenceSession
from model_src.system import build_system
from model_src.weights import embedded_weights, load_weights, read_preset
from runtime.manifest import sha256
from runtime.host.session import EngineSession
from training.data import HELD_OUT_SEED, TRAIN_SEED_BASE
from training.metrics import LOWER_IS_BETTER, evaluate, misses, thresholds
from training.tasks import TaskUnits, task_of

# per task: the table's markers, its metric columns (key, header, decimals) after task and "vs student",
# and where its thresholds come from
TABLES = {
    "tones": {
        "markers": ("<!-- task metrics table: start -->", "<!-- task metrics table: end -->"),
        "columns": (("text", "text", 3), ("tone", "tone", 3), ("face", "face", 3), ("turn", "turn", 3),
                    ("sync", "sync", 3), ("barge_in_units", "barge-in (units)", 2), ("overlap", "both speak", 3),
                    ("answer_latency_units", "answer latency (units)", 2)),
        "thresholds_from": "tests/test_training.py, 4 of these conversations through the ONNX Runtime engines; "
                           "training/metrics.py THRESHOLDS",
        "thresholds_more": "; and the task score at least 0.4 above random weights'",
    },
    "speech": {
        "markers": ("<!-- speech task metrics table: start -->", "<!-- speech task metrics table: end -->"),
        "columns": (("words", "words", 3), ("text", "text", 3), ("face", "face", 3), ("turn", "turn", 3),
                    ("sync", "sync", 3), ("barge_in_units", "barge-in (units)", 2), ("overlap", "both speak", 3),
                    ("unasked", "speaking unasked", 3), ("answer_latency_units", "answer latency (units)", 2)),
        "thresholds_from": "through the ONNX Runtime engines on held-out voices; training/spoken_metrics.py THRESHOLDS",
        "thresholds_more": "",
    },
}
START, END = TABLES["tones"]["markers"]  # the tone task's (tiny's) markers, as before
CALIBRATION_UNITS = 32


def load(path: Path, steps: int | None = None):
    """The system of a weights file (its own preset), at `steps` flow solver steps if given."""
    p = read_preset(path)
    system = build_system(p)
    load_weights(system, p, path)
    if steps is not None:
        system.preset = p.replace(flow_steps=steps)
    return system.eval()


def student_file(preset: str | None, student: Path | None) -> Path:
    """--student FILE (its preset must be --preset where both are given), else the shipped weights of
    --preset (default tiny); raises SystemExit naming what is missing."""
    if student is not None:
        got = read_preset(student).name
        if preset is not None and got != preset:
            raise SystemExit(f"--student {student} holds preset {got!r}, but --preset is {preset!r} "
                             f"(with --student the preset comes from the file: drop --preset or pass its weights)")
        return student
    path = embedded_weights(preset or "tiny")
    if path is None:
        raise SystemExit(f"preset {preset!r} ships no trained weights: pass --student FILE (its student.safetensors)")
    return path


def markers(task: str) -> tuple[str, str]:
    """(start, end) markers of the table of `task` ('tones' or 'speech')."""
    return TABLES[task]["markers"]


def check_markers(doc: str, path: Path, task: str) -> None:
    """Raise SystemExit unless `doc` holds the task's start marker followed by its end marker."""
    check_marked(doc, path, *markers(task), f"the {task} task's table")


def replace_table(doc: str, text: str, path: Path, task: str) -> str:
    """`doc` with the text between (and including) the task's markers replaced by `text`."""
    return replace_marked(doc, text, path, *markers(task), f"the {task} task's table")


def _cell(m: dict, key: str, decimals: int) -> str:
    return f"{m[key]:.{decimals}f}"


def table_row(task: str, name: str, steps: int, m: dict | None, ref: dict | None, error: str | None = None) -> str:
    """One markdown row: the metrics `m`, or 'failed: <error>' where the row failed."""
    columns = TABLES[task]["columns"]
    if m is None:
        why = (error or "unknown error").replace("|", "\\|")
        return f"| {name} | {steps} | failed: {why} | - | " + " | ".join("-" for _ in columns) + " |"
    rel = f"{100 * (m['task'] / ref['task'] - 1):+.1f} %" if ref else "-"
    return (f"| {name} | {steps} | **{m['task']:.3f}** | {rel} | "
            + " | ".join(_cell(m, k, d) for k, _, d in columns) + " |")


def thresholds_text(task: str, spec, results: dict) -> str:
    """The sentence under the table: the task's thresholds (training.metrics.thresholds), and how the ONNX
    Runtime fp32 engines' row (where it ran) stands against them."""
    limits = thresholds(spec)
    t = TABLES[task]
    out = (f"Thresholds the shipped weights must reach ({t['thresholds_from']}): "
           + ", ".join(f"{k} {'<=' if k in LOWER_IS_BETTER else '>='} {v:g}" for k, v in limits.items())
           + t["thresholds_more"] + ".")
    ort = results.get("ort")
    if task == "speech" and ort is not None and ort[2] is not None:
        below = misses(ort[2], limits)
        out += (" The ONNX Runtime fp32 engines here reach all of them." if not below else
                " The ONNX Runtime fp32 engines here miss: " + "; ".join(below) + ".")
    return out


def render(task: str, spec, results: dict, head: str) -> str:
    """The whole marked block: `head` (what was run), the table, the thresholds sentence."""
    start, end = markers(task)
    columns = TABLES[task]["columns"]
    ref = results.get("student", (None, None, None, None))[2]
    lines = [start, head, "",
             "| model, backend, precision | steps | task | vs student | " + " | ".join(h for _, h, _ in columns) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(columns)]
    for key, (name, steps, m, error, _) in results.items():
        lines.append(table_row(task, name, steps, m, ref, error))
    lines += ["", thresholds_text(task, spec, results), end]
    return "\n".join(lines)


def _weights_sha(meta_weights) -> str | None:
    if isinstance(meta_weights, str):
        meta_weights = json.loads(meta_weights or "{}")
    return (meta_weights or {}).get("sha256")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", type=Path, required=True, help="stage b's teacher.safetensors (same preset)")
    ap.add_argument("--preset", default=None, help="the student is this preset's shipped weights (default tiny)")
    ap.add_argument("--student", type=Path, default=None, help="the student weights (its preset is the file's)")
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--units", type=int, default=48)
    ap.add_argument("--work", type=Path, default=None, help="folder for the engines built (default: a temp folder)")
    ap.add_argument("--only", default=None, help="comma-separated row keys to run (default all)")
    ap.add_argument("--write", type=Path, help="replace the task's table (between its markers) in this markdown file")
    ap.add_argument("--json", type=Path, help="also write every row's metrics (and wall seconds) as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread: on shared cores two spin-waiting threads were 5-30x slower
    student_path = student_file(args.preset, args.student)
    student = load(student_path)
    p, n_steps = student.preset, student.preset.flow_steps
    task = task_of(p)
    teacher_preset = read_preset(args.teacher)
    if teacher_preset.name != p.name:
        raise SystemExit(f"--teacher {args.teacher} holds preset {teacher_preset.name!r}, the student {student_path} "
                         f"preset {p.name!r}: expected the teacher of the same preset")
    if args.write:  # refuse before the run, not after it
        check_markers(args.write.read_text(), args.write, task)
    work = args.work or Path(tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    seeds = range(HELD_OUT_SEED, HELD_OUT_SEED + args.conversations)
    weights = {"file": str(student_path.resolve()), "sha256": sha256(student_path)}

    def calibration() -> Path:
        """32 units of a training conversation of the task (not a held-out one), recorded once per --work."""
        cal = work / "calibration.safetensors"
        if cal.is_file():
            got = _weights_sha(load_calibration(cal, p)[1].get("weights"))
            if got != weights["sha256"]:
                raise SystemExit(f"{cal} was recorded with other weights (sha256 {str(got)[:12]}), expected "
                                 f"{weights['sha256'][:12]} of {student_path}: use another --work or delete it")
            return cal
        units = list(TaskUnits(p, CALIBRATION_UNITS, TRAIN_SEED_BASE + 999))
        return record(copy.deepcopy(student), units, 0, cal, source="conversation", weights=weights)

    def torch_row(system):
        return lambda: evaluate(lambda s: ReferenceSession(system, seed=s), system.preset, seeds, args.units)

    def engine_row(name, backend, precision="fp32", algorithm="max"):
        def run():
            out = work / name
            if (out / "manifest.json").is_file():
                got = _weights_sha(json.loads((out / "manifest.json").read_text()).get("weights"))
                if got != weights["sha256"]:
                    raise RuntimeError(f"{out} holds engines of other weights (sha256 {str(got)[:12]}), expected "
                                       f"{weights['sha256'][:12]} of {student_path}: use another --work or delete it")
            else:
                cal = calibration() if precision == "int8" else None
                t0 = time.perf_counter()
                build(copy.deepcopy(student), out, backend, precision, weights, calibration=cal, algorithm=algorithm)
                print(f"built {name} in {time.perf_counter() - t0:.0f} s", flush=True)
            return evaluate(lambda s: EngineSession(out, seed=s, expect_preset=p.name, mode="sequential", threads=1),
                            p, seeds, args.units)
        return run

    def fp8_row(kv: bool):
        def run():
            from calibration.quantize import fp8_roundtrip, kv_scales, quantize_stage

            tensors = load_calibration(calibration(), p)[0]
            modules = {s: quantize_stage(student, s, tensors, "fp8", "max") for s in ("thinker_step", "flow_step")}
            k_scale, v_scale = kv_scales(tensors)

            def make(seed):
                manifest, engines, initial = torch_parts(student, modules)
                if kv:
                    for s in ("thinker_step", "flow_step"):
                        engines[s] = _Fp8Cache(engines[s], k_scale, v_scale, fp8_roundtrip)
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
    unknown = sorted((only or set()) - {key for key, *_ in rows})
    if unknown:
        raise SystemExit(f"--only: unknown row keys {unknown}; expected some of {[key for key, *_ in rows]}")
    results = {}  # key -> (name, steps, metrics or None, error's first line or None, wall seconds)
    for key, name, steps, run in rows:
        if only and key not in only:
            continue
        t0 = time.perf_counter()
        try:
            m, error = run(), None
        except Exception as e:  # one failed row (a build error, say) is reported, the others still run
            traceback.print_exc(file=sys.stderr)
            first = (str(e).strip().splitlines() or [""])[0]
            m, error = None, f"{type(e).__name__}: {first}" if first else type(e).__name__
        wall = time.perf_counter() - t0
        results[key] = (name, steps, m, error, wall)
        shown = ("failed: " + error) if m is None else f"task {m['task']:.3f} " + " ".join(
            f"{k} {_cell(m, k, d)}" for k, _, d in TABLES[task]["columns"])
        print(f"{key}: {shown} ({wall:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({k: {"name": n, "steps": s, "metrics": m, "error": e, "wall_s": round(w, 1)}
                                         for k, (n, s, m, e, w) in results.items()}, indent=1))
    command = (f"python bench/task_metrics.py --teacher {args.teacher}"
               + (f" --student {args.student}" if args.student else f" --preset {p.name}" if p.name != "tiny" else "")
               + f" --conversations {args.conversations} --units {args.units}")
    head = (f"{args.conversations} held-out conversations (seeds {seeds.start}..{seeds.stop - 1}) of {args.units} "
            f"units; student `{student_path.name}` (sha256 {weights['sha256'][:12]}); "
            f"{platform.processor() or platform.machine()}; `{command}`.")
    text = render(task, p, results, head)
    print(text)
    if args.write:
        args.write.write_text(replace_table(args.write.read_text(), text, args.write, task))


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
