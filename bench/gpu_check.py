"""The one-call GPU check: what the GPU data path claims, measured on a fresh machine in one bounded run.

    python bench/gpu_check.py [--out DIR] [--deadline-s 480] [--units 200]
    python bench/gpu_check.py --dry-run            # the headline at tiny on the CPU (the script's logic)

Sections, in order (bench/gpu_sections.py; each in its own process, started only if the time left
before the deadline covers its least time, killed at the deadline):
  env              python, torch, triton, CUDA, the GPU and its datasheet entry, CUDA_HOME, nvcc, g++, MPS,
                   which optional libraries import
  session          the headline (bench/gpu_session.py): base, bf16, our kernel, torch stage modules in
                   process on the device path (one-gpu, CUDA graphs), the ring filled first, 200 timed
                   units: step time, per-phase times, model-side latency, ledger bytes against the
                   tensors', peak memory (allocated and reserved); then the plan beside them
  kernel_check     the Triton attention kernel against the SDPA reference in fp32/fp16/bf16 and FP8 cache
  stage_attention  thinker_step and flow_step per call with --attention triton against sdpa (CUDA graphs)
  kernel_timing    the kernel against SDPA, FlexAttention and flash-attn at base and large shapes
  fp8_flow         flow_step with FP8 GEMMs (torch._scaled_mm) against bf16: time and latent cosine
  engines          tiny AOTInductor CUDA packages through `streamer build`, one-gpu and two-process
One hard deadline for the whole run, counted from this process's start (default 480 s). gpu_check.json
and gpu_check.md go to --out (default $OUT, else the current folder) as each measurement is taken, so a
run cut short keeps what it measured. Exit code: 0 the headline measured (or not asked for); 1 it failed,
timed out or was skipped; 2 bad arguments; 4 no CUDA device (not a dry run); 130 / 143 stopped by Ctrl-C /
SIGTERM (the running section killed with it); the JSON says which.
The sections need only what the GPU image has (torch, triton, numpy, onnx, onnxruntime; a dry run
refuses every other import, bench/image_imports.py), but `engines`, whose `streamer build` also wants
rich, safetensors, tqdm and imageio: carry them (bash bench/gpu_wheels.sh).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this repo's packages, from anywhere and without an install (never the cwd)

from bench.gpu_report import markdown  # noqa: E402 - standard library only

_T0 = time.time()
# section -> (least seconds to start it, most seconds it may run), on an H100, cold: each section's process
# imports torch and starts CUDA (~15 s), builds its preset and compiles its kernels; the headline streams
# sink + window + 200 units of base and counts the plan (~40 s); six cold AOTInductor CUDA compiles
# (engines) take minutes. In this order: env, then the headline.
BUDGETS = {"env": (5, 60), "session": (120, 330), "kernel_check": (30, 120), "stage_attention": (60, 180),
           "kernel_timing": (60, 240), "fp8_flow": (60, 180), "engines": (240, 480)}
SECTION_ORDER = tuple(BUDGETS)
HEADLINE = "session"
NEEDS_CARRIED_WHEELS = ("engines",)  # `streamer build` imports rich, safetensors, tqdm (bench/gpu_wheels.sh)


def process_start() -> float:
    """This process's start, epoch seconds (/proc/self/stat's start time; the module's import otherwise)."""
    try:
        ticks = float(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _T0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")), help="folder for the results")
    ap.add_argument("--deadline-s", type=float, default=480.0, help="the whole run's hard deadline from its start")
    ap.add_argument("--units", type=int, default=200, help="timed units of the headline (default 200: a real p99)")
    ap.add_argument("--prime", type=int, default=None, help="units streamed before timing (default sink + window)")
    ap.add_argument("--preset", default=None, help="default base (tiny with --dry-run)")
    ap.add_argument("--attention", default=None, help="the headline's attention: triton (default), sdpa, torch "
                                                      "(a dry run: sdpa; the Triton interpreter is ~50x slower)")
    ap.add_argument("--plan-gpu", default=None, help="the planning/gpus.toml entry to plan for (default this GPU's; "
                                                     "a dry run: h100)")
    ap.add_argument("--sections", default=",".join(SECTION_ORDER), help="comma-separated subset (env always runs, "
                                                                         "but on a dry run)")
    ap.add_argument("--dry-run", action="store_true", help="tiny preset on the CPU, imports as on the GPU image")
    ap.add_argument("--restrict-imports", action="store_true", help="refuse imports the GPU image lacks (a dry run does)")
    ap.add_argument("--section", help=argparse.SUPPRESS)  # a section process (started by this script)
    ap.add_argument("--deadline-at", type=float, default=float("inf"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.units < 2:
        ap.error(f"--units: expected at least 2, got {args.units}")
    return args


# --- the JSON, read and written whole (one writer at a time: the parent waits while a section runs) --------
def load(folder: Path) -> dict:
    return json.loads((folder / "gpu_check.json").read_text())


def save(folder: Path, results: dict) -> None:
    """gpu_check.json and gpu_check.md, each written to a temporary name and renamed (never half-written)."""
    for name, text in (("gpu_check.json", json.dumps(results, indent=1, default=_plain)),
                       ("gpu_check.md", markdown(results))):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, folder / name)


def _plain(x):
    try:
        return x.item()  # numpy / torch scalars
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return str(x)


# --- a section's process ----------------------------------------------------------------------------------
def run_section(args: argparse.Namespace) -> int:
    """Run one section in this process, recording into gpu_check.json as it goes; rc 0 ok, 1 failed."""
    finder = None
    if args.restrict_imports:
        from bench.image_imports import install

        finder = install()
    name, folder = args.section, args.out

    def record(key, value) -> None:
        results = load(folder)
        sec = results["sections"].setdefault(name, {})
        sec[key] = value
        if finder is not None:
            sec["imports_refused"] = list(finder.refused)
        save(folder, results)

    record("status", "running")
    try:
        from bench.gpu_sections import SECTIONS, Context

        ctx = Context(preset=args.preset, units=args.units, device="cpu" if args.dry_run else "cuda",
                      dry_run=args.dry_run, prime=args.prime, attention=args.attention, plan_gpu=args.plan_gpu,
                      deadline_at=args.deadline_at, record=record)
        fn = SECTIONS[name]
        out = (fn[0] if isinstance(fn, tuple) else fn)(ctx)
    except BaseException as e:  # noqa: BLE001 - reported in the JSON, then the process fails
        import traceback

        missing = isinstance(e, ModuleNotFoundError) and finder is not None and \
            str(e.name).partition(".")[0] in finder.refused
        record("error", f"{type(e).__name__}: {e}" + (" (not in the GPU image: bench/image_imports.py)" if missing else ""))
        record("traceback", traceback.format_exc()[-3000:])
        record("status", "failed")
        print(f"   FAILED: {type(e).__name__}: {e}", flush=True)
        return 1
    for key, value in out.items():
        record(key, value)
    record("status", "skipped" if "skipped" in out else "ok")
    return 0


# --- the parent: sections one after another, each bounded by the deadline -----------------------------------
def _child(args: argparse.Namespace, name: str, deadline_at: float, restrict: bool) -> list[str]:
    cmd = [sys.executable, "-P", str(Path(__file__).resolve()), "--section", name, "--out", str(args.out),
           "--units", str(args.units), "--preset", args.preset, "--attention", args.attention,
           "--deadline-at", repr(deadline_at)]
    cmd += ["--prime", str(args.prime)] if args.prime is not None else []
    cmd += ["--plan-gpu", args.plan_gpu] if args.plan_gpu else []
    return cmd + (["--dry-run"] if args.dry_run else []) + (["--restrict-imports"] if restrict else [])


def _stream(pipe, tail: list[str]) -> None:
    for line in iter(pipe.readline, ""):
        print(line, end="", flush=True)
        tail.append(line)
        del tail[:-40]


def run_child(cmd: list[str], timeout_s: float) -> tuple[int | None, str]:
    """Run a section's process (its own process group), its output passed through; killed with its
    children at `timeout_s`. Returns (rc, or None when killed; the output's last lines)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    tail: list[str] = []
    reader = threading.Thread(target=_stream, args=(proc.stdout, tail), daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(0.1, timeout_s))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        rc = None
    except BaseException:  # this process interrupted or terminated: the section's processes go with it
        _kill_group(proc)
        raise
    reader.join(timeout=5)
    return rc, "".join(tail)[-3000:]


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the section's process group, SIGKILL after 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=5)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_child, which kills the running section


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.preset = args.preset or ("tiny" if args.dry_run else "base")
    args.attention = args.attention or ("sdpa" if args.dry_run else "triton")
    if args.section:
        return run_section(args)
    started = process_start()
    deadline_at = started + args.deadline_s
    if args.dry_run and not args.plan_gpu:
        args.plan_gpu = "h100"  # no GPU here: the plan of an H100, to check the comparison's logic
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [n for n in names if n not in SECTION_ORDER]
    if unknown:
        print(f"--sections: unknown {unknown}; known: {', '.join(SECTION_ORDER)}", file=sys.stderr)
        return 2
    if not args.dry_run:
        names.append("env")  # it says whether there is a CUDA device: always first on a GPU run
    names = [n for n in SECTION_ORDER if n in names]
    results = {"command": " ".join(["python", "bench/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
               "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)) + " UTC",
               "deadline_s": args.deadline_s, "dry_run": args.dry_run, "headline": HEADLINE,
               "sections": {n: {"status": "pending"} for n in names}}
    save(args.out, results)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return _run_sections(args, names, started, deadline_at)
    except (SystemExit, KeyboardInterrupt) as e:
        results = load(args.out)
        for sec in results["sections"].values():
            if sec.get("status") in ("running", "pending"):
                sec.update(status="interrupted", error=f"bench/gpu_check.py was stopped ({type(e).__name__} {e})")
        results["headline_ok"] = results["sections"].get(HEADLINE, {}).get("status") == "ok" if HEADLINE in names else None
        save(args.out, results)
        if isinstance(e, KeyboardInterrupt):
            return 130
        raise


def _run_sections(args: argparse.Namespace, names: list[str], started: float, deadline_at: float) -> int:
    """Each section in turn, bounded by the deadline; the exit code (see the module's docstring)."""
    for name in names:
        least, most = (0, float("inf")) if args.dry_run else BUDGETS[name]  # the budgets are an H100's at base
        left = deadline_at - time.time() - 2.0  # two seconds kept for the last report
        results = load(args.out)
        sec = results["sections"][name]
        if results.get("no_cuda"):
            sec.update(status="skipped", error="no CUDA device")
        elif left < least:
            sec.update(status="skipped", error=f"{left:.0f} s left before the deadline; it needs at least {least} s")
        else:
            limit = min(most, left)
            print(f"== {name} (up to {limit:.0f} s; {left:.0f} s left)", flush=True)
            restrict = args.restrict_imports or (args.dry_run and name not in NEEDS_CARRIED_WHEELS)
            t0 = time.time()
            rc, tail = run_child(_child(args, name, t0 + limit, restrict), limit)  # it knows when it is killed
            results = load(args.out)
            sec = results["sections"][name]
            sec.update(seconds=round(time.time() - t0, 1), rc=rc)
            if rc is None:
                why = "the run's deadline" if limit < most else f"the section's limit of {most} s"
                sec.update(status="timed out", error=f"killed after {limit:.0f} s ({why})", output_tail=tail)
            elif rc != 0 or sec.get("status") not in ("ok", "skipped"):
                sec.setdefault("error", f"the section's process exited with rc {rc}")
                sec.update(status="failed", output_tail=tail)
        if name == "env" and not args.dry_run and sec.get("status") == "ok" and not sec.get("cuda_available"):
            results["no_cuda"] = "torch.cuda.is_available() is False: no CUDA device (use --dry-run on a CPU)"
        results["seconds"] = round(time.time() - started, 1)
        save(args.out, results)
    head = results["sections"].get(HEADLINE, {"status": "not asked for"})
    results["headline_ok"] = head.get("status") == "ok" if HEADLINE in names else None
    save(args.out, results)
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'} ({results['seconds']} s); headline "
          f"{head.get('status')}" + (f": {head.get('error')}" if head.get("error") else ""))
    if results.get("no_cuda"):
        print(results["no_cuda"], file=sys.stderr)
        return 4
    return 1 if results["headline_ok"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
