"""What the commands share for input and output: the two consoles, reading a clip into units (lazily),
checking output paths before a run, streaming a session's outputs to disk unit by unit, and the
per-unit timing table. numpy, rich and the media helpers only."""
from __future__ import annotations

import csv
import errno
import json
import os
import sys
import tempfile
from array import array
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from unitio.units import InputError

console = Console(stderr=True, soft_wrap=True)  # progress and messages, never wrapped mid-message
out = Console(width=None if sys.stdout.isatty() else 160)  # tables (not squeezed to 80 columns in a pipe)


def read_input(spec: str, preset, units: int | None, seed: int, fit: str | None = None):
    """--input / --data: 'synthetic', 'AUDIO.wav+VIDEO.mp4' or a folder of pairs -> `unitio.media.Units`
    (made or read one unit at a time; the files' formats and lengths are checked here, before any unit).
    `fit`: None, "pad" or "trim" when audio and video lengths differ."""
    from unitio.media import FileUnits, FolderUnits

    if spec == "synthetic":
        if fit is not None:
            raise InputError(f"--{fit} goes with files (AUDIO.wav+VIDEO.mp4); synthetic input has equal lengths")
        from training.conversation import ConversationUnits  # the synthetic conversation (issue 14)

        return ConversationUnits(preset, 50 if units is None else units, seed)
    if Path(spec).is_dir():
        made = FolderUnits(Path(spec), preset, units, fit)
    elif "+" in spec:
        wav, video = spec.split("+", 1)
        made = FileUnits(wav, video, preset, units, fit)
    else:
        raise InputError(f"--input: expected 'synthetic', 'AUDIO.wav+VIDEO.mp4' or a folder of NAME.wav + "
                         f"NAME.mp4 pairs, got {spec!r}")
    if made.note:
        console.print(f"note: {made.note}")
    return made


class OutputError(ValueError):
    """An output that cannot be written (--out is a file or not writable, the disk is full): names the file."""


def _writable(folder: Path, what: str) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as e:
        raise OutputError(f"{what}: expected a writable folder {folder}, got: {e.strerror or e}") from None


def check_out_dir(folder: Path) -> None:
    """--out FOLDER: made if missing and proven writable, before the first unit runs."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--out {folder}: expected a folder, got an existing file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"--out {folder}: expected a folder that can be made, got: {e.strerror or e}") from None
    _writable(folder, f"--out {folder}")


def check_out_file(path: Path | None, what: str) -> None:
    """An output file named on the command line (--json, --timeline, profile --out), checked before the run."""
    if path is None:
        return
    if path.is_dir():
        raise OutputError(f"{what} {path}: expected a file name, got a folder")
    if not path.parent.is_dir():
        raise OutputError(f"{what} {path}: expected an existing folder {path.parent} to write it in")
    _writable(path.parent, f"{what} {path}")


class _Timings:
    """timings.csv row by row (columns: the stages of the first rows, "total" last) and each stage's
    values for the final table (8 bytes per stage per unit)."""

    def __init__(self, path: Path) -> None:
        self.path, self.file, self.names, self.early = path, None, None, []
        self.values: dict[str, array] = {}

    def add(self, row: dict[str, float]) -> None:
        for stage, ms in row.items():
            self.values.setdefault(stage, array("d")).append(ms)
        if self.names is None:
            self.early.append(row)
            if len(self.early) == 4:  # a stage may first appear at unit 1 (e.g. waiting for y_0)
                self._start()  # writes the rows so far
            return
        self._write(row)

    def _start(self) -> None:
        names = list(dict.fromkeys(s for r in self.early for s in r if s != "total"))
        self.names = names + ["total"] if any("total" in r for r in self.early) else names
        self.file = open(self.path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=["unit", *self.names], restval="", extrasaction="ignore")
        self.writer.writeheader()
        early, self.early, self.unit = self.early, [], 0
        for row in early:
            self._write(row)

    def _write(self, row: dict[str, float]) -> None:
        self.writer.writerow({"unit": self.unit, **{s: f"{v:.3f}" for s, v in row.items()}})
        self.unit += 1
        self.file.flush()

    def close(self) -> bool:
        """Finish the file; False when there was never a row (no file)."""
        if self.names is None and self.early:
            self._start()
        if self.file is not None:
            self.file.close()
        return self.file is not None


class OutputStream:
    """A session's outputs, written to `folder` unit by unit under temporary names (NAME.partial) and
    renamed by `close`: out.wav (16-bit PCM, its header valid after every unit), out.mp4 (H.264, fed
    per frame), out_audio.npy (unquantized float32, valid after every unit), text.jsonl (a line per
    unit; text.json, the same as one JSON array, is made at close) and timings.csv (when there are
    timings). Memory stays flat; after a hard kill the .partial files hold everything but the MP4."""

    def __init__(self, folder: Path, spec) -> None:
        from unitio.media import VideoWriter
        from unitio.npy import NpyWriter
        from unitio.wav import WavWriter

        self.folder, self.units, self.media_units = folder, 0, 0
        self.parts: dict[str, Path] = {}
        self.wav = WavWriter(self._part("out.wav"), spec.sample_rate)
        self.npy = NpyWriter(self._part("out_audio.npy"))
        self.text = open(self._part("text.jsonl"), "w")
        self.timings = _Timings(self._part("timings.csv"))
        self.video = self._guard("out.mp4", lambda: VideoWriter(self._part("out.mp4"), spec.fps,
                                                                spec.frame_height, spec.frame_width))

    def _part(self, name: str) -> Path:
        self.parts[name] = self.folder / f"{name}.partial"
        return self.parts[name]

    def _guard(self, name: str, write):
        """Run one write; an OSError becomes an OutputError naming the file (disk full said so)."""
        try:
            return write()
        except OSError as e:
            full = " (disk full)" if e.errno == errno.ENOSPC else ""
            raise OutputError(f"{self.folder / name}: could not be written{full}: {e.strerror or e}; "
                              f"the {self.media_units} units before are kept") from None

    def add_text(self, unit: int, tokens) -> None:
        self._guard("text.jsonl", lambda: (self.text.write(json.dumps({"unit": unit, "tokens": tokens.tolist()}) + "\n"),
                                           self.text.flush()))
        self.units += 1

    def add_timings(self, row: dict[str, float]) -> None:
        if row:
            self._guard("timings.csv", lambda: self.timings.add(row))

    def add_media(self, audio, frames) -> None:
        """One unit's decoded output: audio [samples] float32, frames [F, H, W, 3] uint8."""
        self._guard("out.wav", lambda: self.wav.write(audio))
        self._guard("out_audio.npy", lambda: self.npy.write(audio))
        self._guard("out.mp4", lambda: self.video.write(frames))
        self.media_units += 1

    def add(self, result) -> None:
        """A `UnitResult`: its text, timings and (from unit 1 on) the previous unit's audio and frames."""
        self.add_text(result.unit_index, result.text_tokens)
        self.add_timings(result.timings_ms)
        if result.audio is not None:
            self.add_media(result.audio, result.frames)

    def timing_summary(self) -> dict:
        from unitio.timing import percentiles

        stages = sorted(self.timings.values, key=lambda s: s == "total")
        return {s: percentiles(self.timings.values[s]) for s in stages}

    def close(self, complete: bool = True) -> list[str]:
        """Finalise every file (also after a fault: what was streamed is kept) and rename it; returns the
        names. A file that cannot be finished raises OutputError when `complete`, else is only reported
        (the fault that stopped the session is the error then). No media yet: no media files."""
        problems, names = [], []
        for name, finish in (("out.wav", self.wav.close), ("out_audio.npy", self.npy.close),
                             ("text.jsonl", self.text.close), ("out.mp4", self.video.close),
                             ("timings.csv", self.timings.close)):
            try:
                if finish() is not False and (self.media_units or name not in ("out.wav", "out_audio.npy", "out.mp4")):
                    os.replace(self.parts[name], self.folder / name)
                    names.append(name)
                else:
                    self.parts[name].unlink(missing_ok=True)
            except OSError as e:
                problems.append(f"{self.folder / name}: {e.strerror or e}")
        if "text.jsonl" in names:
            try:
                _jsonl_to_json(self.folder / "text.jsonl", self.folder / "text.json")
                names.insert(names.index("text.jsonl"), "text.json")
            except OSError as e:
                problems.append(f"{self.folder / 'text.json'}: {e.strerror or e}")
        state = "" if complete else ", stopped early: everything streamed so far"
        console.print(f"wrote {self.folder}/: {', '.join(names) or 'nothing'} ({self.media_units} units of "
                      f"output{state})")
        if problems and complete:
            raise OutputError("could not finish " + "; ".join(problems))
        for problem in problems:
            console.print(f"[red]could not finish[/] {escape(problem)}")
        return names


def _jsonl_to_json(src: Path, dst: Path) -> None:
    """One JSON array of the objects in a JSON-lines file, line by line (flat memory)."""
    part = dst.with_name(dst.name + ".partial")
    with open(src) as lines, open(part, "w") as f:
        f.write("[")
        for i, line in enumerate(lines):
            f.write(("," if i else "") + "\n" + line.rstrip("\n"))
        f.write("\n]\n")
    os.replace(part, dst)


def stream_session(step, flush, units, folder: Path, spec, label: str) -> OutputStream:
    """Feed `units` to `step(audio, frames) -> UnitResult`, writing each unit's outputs as they come, then
    `flush() -> (audio, frames)` of the last unit. On Ctrl-C, SIGTERM or a fault the outputs streamed so
    far are finalised and the exception goes on (the exit code says which). Returns the closed stream."""
    from rich.progress import Progress

    from .signals import deferred, stop_signals

    stream, complete = OutputStream(folder, spec), False
    with stop_signals():
        try:
            with Progress(console=console, transient=True) as bar:
                task = bar.add_task(f"streaming {len(units)} units {label}", total=len(units))
                for audio, frames in units:
                    r = step(audio, frames)
                    with deferred():
                        stream.add(r)
                    bar.advance(task)
                last = flush()
                if last is not None:
                    with deferred():
                        stream.add_media(*last)
            complete = True
        finally:
            with deferred():
                stream.close(complete)
    return stream


def print_timings(summary: dict, unit_ms: float, n_units: int) -> None:
    table = Table(title=f"per-unit time over {n_units} units (ms)")
    for col in ("stage", "p50", "p90", "p99", "max", "mean"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for stage, s in summary.items():
        table.add_row(stage, *(f"{s[c]:.2f}" for c in ("p50", "p90", "p99", "max", "mean")))
    out.print(table)
    rtf = summary["total"]["mean"] / unit_ms
    out.print(f"real-time factor {rtf:.3f} (mean unit time / {unit_ms:g} ms; below 1 keeps up)")
