"""What the commands share for input and output: the two consoles, reading a clip into units (lazily),
checking output paths before a run, streaming a session's outputs to disk unit by unit, and the
per-unit timing table. numpy, rich and the media helpers only."""
from __future__ import annotations

import csv
import errno
import json
import os
import shutil
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
    """--input / --data: 'synthetic' (the user's side of the preset's task's conversation `seed`:
    training/tasks.py), 'AUDIO.wav+VIDEO.mp4' or a folder of pairs -> `unitio.media.Units`
    (made or read one unit at a time; the files' formats and lengths are checked here, before any unit).
    `fit`: None, "pad" or "trim" when audio and video lengths differ."""
    from unitio.media import FileUnits, FolderUnits

    if spec == "synthetic":
        if fit is not None:
            raise InputError(f"--{fit} goes with files (AUDIO.wav+VIDEO.mp4); synthetic input has equal lengths")
        from training.tasks import TaskUnits  # the preset's own task's conversation (tones or speech)

        return TaskUnits(preset, 50 if units is None else units, seed)
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


RESERVE_BYTES = 8 << 20


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
    values for the final table (8 bytes per stage per unit). `ends[n]`: the file's size after n rows."""

    def __init__(self, path: Path) -> None:
        self.path, self.file, self.names, self.early = path, None, None, []
        self.values: dict[str, array] = {}
        self.ends = array("q")  # 8 bytes a row

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
        from unitio.growing import create_new

        names = list(dict.fromkeys(s for r in self.early for s in r if s != "total"))
        self.names = names + ["total"] if any("total" in r for r in self.early) else names
        self.file = create_new(self.path)
        self.writer = csv.DictWriter(self.file, fieldnames=["unit", *self.names], restval="", extrasaction="ignore")
        self.writer.writeheader()
        self.file.flush()
        self.ends = array("q", [self.file.tell()])
        early, self.early, self.unit = self.early, [], 0
        for row in early:
            self._write(row)

    def _write(self, row: dict[str, float]) -> None:
        self.writer.writerow({"unit": self.unit, **{s: f"{v:.3f}" for s, v in row.items()}})
        self.unit += 1
        self.file.flush()
        self.ends.append(self.file.tell())

    def close(self, units: int | None = None) -> bool:
        """Finish the file (cut to its first `units` rows when given); False when there was never a row."""
        if units is not None:
            self.early = self.early[:units]
        if self.names is None and self.early:
            self._start()
        if self.file is not None and not self.file.closed:
            if units is not None and units + 1 < len(self.ends):
                self.file.truncate(self.ends[units])
            self.file.close()
        return self.file is not None


class OutputStream:
    """A session's outputs, streamed to `folder` unit by unit: out.wav (16-bit PCM, its header valid
    after every unit), out.mp4 (H.264, fragmented: playable at any cut), out_audio.npy (unquantized
    float32, valid after every unit), text.jsonl (a line per unit; text.json, the same as one JSON
    array, is made at close) and timings.csv (when there are timings). Memory stays flat.

    Every file is first written as NAME.partial in a private folder `folder`/.partial-XXXXXXXX (mkdtemp:
    new, mode 0700, so no link planted in `folder` is ever opened or written through) and renamed into
    `folder` by `close` (a rename replaces a link at the final name, never follows it). After a hard
    kill the .partial files there hold everything streamed. A stop before the end (a fault, a full
    disk, a signal) cuts every output to the units all of them hold, and says that number."""

    def __init__(self, folder: Path, spec) -> None:
        from unitio.growing import create_new
        from unitio.media import VideoWriter
        from unitio.npy import NpyWriter
        from unitio.wav import WavWriter

        self.folder, self.units, self.media_units = folder, 0, 0
        self.samples, self.frames_per_unit = spec.sample_rate * spec.frames_per_unit // spec.fps, spec.frames_per_unit
        self.spec = spec
        self.stage = self._guard(".partial", lambda: Path(tempfile.mkdtemp(prefix=".partial-", dir=folder)))
        self.parts: dict[str, Path] = {}
        try:
            self.wav = self._guard("out.wav", lambda: WavWriter(self._part("out.wav"), spec.sample_rate))
            self.npy = self._guard("out_audio.npy", lambda: NpyWriter(self._part("out_audio.npy")))
            self.text = self._guard("text.jsonl", lambda: create_new(self._part("text.jsonl")))
            self.text_ends = array("q", [0])  # text.jsonl's size after n lines (8 bytes a unit)
            self.timings = _Timings(self._part("timings.csv"))
            self.video = self._guard("out.mp4", lambda: VideoWriter(self._part("out.mp4"), spec.fps,
                                                                    spec.frame_height, spec.frame_width))
        except BaseException:
            shutil.rmtree(self.stage, ignore_errors=True)  # nothing was streamed: nothing left behind
            raise
        self.broken: set[str] = set()  # outputs a write failed on: their last unit may be partial
        self._reserve()

    def _reserve(self) -> None:
        """Room kept on the disk for finishing: a file of min(8 MiB, a quarter of the free space), removed
        first thing at `close`, so a full disk still lets ffmpeg write the MP4's last fragment and
        text.json be made. Without it (no space at all) the outputs are still cut consistently."""
        from unitio.growing import NEW_FILE

        try:
            st = os.statvfs(self.stage)
            fd = os.open(self.stage / "reserve", NEW_FILE, 0o600)
            try:
                os.posix_fallocate(fd, 0, max(1, min(RESERVE_BYTES, st.f_bavail * st.f_frsize // 4)))
            finally:
                os.close(fd)
        except OSError:
            pass

    def _part(self, name: str) -> Path:
        self.parts[name] = self.stage / f"{name}.partial"
        return self.parts[name]

    def _guard(self, name: str, write):
        """Run one write; an OSError becomes an OutputError naming the file (disk full said so)."""
        try:
            return write()
        except OSError as e:
            if hasattr(self, "broken"):
                self.broken.add(name)
            full = " (disk full)" if e.errno == errno.ENOSPC else ""
            raise OutputError(f"{self.folder / name}: could not be written{full}: {e.strerror or e}") from None

    def add_text(self, unit: int, tokens) -> None:
        line = json.dumps({"unit": unit, "tokens": tokens.tolist()}) + "\n"
        self._guard("text.jsonl", lambda: (self.text.write(line), self.text.flush()))
        self.text_ends.append(self.text.tell())
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

    def _video_units(self, problems: list[str]) -> int:
        """Finish the MP4 -> the whole units it holds: all it was fed when ffmpeg exited 0, else what
        decodes of what reached the disk (a fragmented MP4 plays up to its last whole fragment)."""
        from unitio.media import count_frames
        from unitio.units import InputError

        try:
            self.video.close()
            if "out.mp4" not in self.broken:
                return self.video.frames // self.frames_per_unit
        except OSError as e:
            problems.append(str(e))
        from unitio.media import cut_video

        try:
            frames = count_frames(self.parts["out.mp4"])
        except InputError:
            return 0
        units = frames // self.frames_per_unit
        if frames != units * self.frames_per_unit:  # part of a unit reached the disk: cut it off
            try:
                cut_video(self.parts["out.mp4"], units * self.frames_per_unit)
            except OSError as e:
                problems.append(str(e))
                return 0
        return units

    def close(self, complete: bool = True) -> list[str]:
        """Finalise every file (also after a fault: what was streamed is kept, every output cut to the
        units they all hold) and rename it into the folder; returns the names. A file that cannot be
        finished raises OutputError when `complete`, else is only reported (the fault that stopped the
        session is the error then). No unit of media: no media files; nothing empty is left."""
        problems: list[str] = []
        (self.stage / "reserve").unlink(missing_ok=True)
        units = min(self.media_units, self._video_units(problems))
        if not complete or units < self.media_units or self.broken:
            cut = units  # every output to the units all of them hold
        else:
            cut = None
        for name, finish in (("out.wav", lambda: self._cut_and_close(self.wav, cut)),
                             ("out_audio.npy", lambda: self._cut_and_close(self.npy, cut)),
                             ("text.jsonl", lambda: self._close_text(cut)),
                             ("timings.csv", lambda: self.timings.close(cut))):
            try:
                finish()
            except OSError as e:
                problems.append(f"{self.folder / name}: {e.strerror or e}")
        names = self._publish(units, problems)
        state = "" if complete else ", stopped early: every output cut to the units all of them hold"
        console.print(f"wrote {self.folder}/: {', '.join(names) or 'nothing'} ({units} units of output{state})")
        if problems and complete:
            raise OutputError("could not finish " + "; ".join(problems) + f"; every output holds the first {units} units")
        for problem in problems:
            console.print(f"[red]could not finish[/] {escape(problem)}")
        return names

    def _cut_and_close(self, writer, units: int | None) -> None:
        try:
            if units is not None:
                writer.cut(units * self.samples)
        finally:
            writer.close()

    def _close_text(self, units: int | None) -> None:
        try:
            if units is not None and units + 1 < len(self.text_ends):
                self.text.flush()
                self.text.truncate(self.text_ends[units])
        finally:
            self.text.close()

    def _publish(self, units: int, problems: list[str]) -> list[str]:
        """Rename the finished parts into the folder (none empty, no media without a unit of media),
        make text.json, and remove the private folder."""
        names = []
        for name in ("out.wav", "out_audio.npy", "text.jsonl", "out.mp4", "timings.csv"):
            part = self.parts[name]
            media = name in ("out.wav", "out_audio.npy", "out.mp4")
            if part.is_file() and part.stat().st_size and (units or not media):
                try:
                    os.replace(part, self.folder / name)
                    names.append(name)
                except OSError as e:
                    problems.append(f"{self.folder / name}: {e.strerror or e}")
        if "text.jsonl" in names:
            try:
                _jsonl_to_json(self.folder / "text.jsonl", self.stage / "text.json.partial", self.folder / "text.json")
                names.insert(names.index("text.jsonl"), "text.json")
            except OSError as e:
                problems.append(f"{self.folder / 'text.json'}: {e.strerror or e}")
        shutil.rmtree(self.stage, ignore_errors=True)
        return names


def _jsonl_to_json(src: Path, part: Path, dst: Path) -> None:
    """One JSON array of the objects in a JSON-lines file, line by line (flat memory), written as the new
    file `part` and renamed to `dst`."""
    from unitio.growing import create_new

    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)  # a link swapped in for text.jsonl is never read through
        with open(fd, encoding="utf-8") as lines, create_new(part) as f:
            f.write("[")
            for i, line in enumerate(lines):
                f.write(("," if i else "") + "\n" + line.rstrip("\n"))
            f.write("\n]\n")
        os.replace(part, dst)
    finally:
        part.unlink(missing_ok=True)


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
