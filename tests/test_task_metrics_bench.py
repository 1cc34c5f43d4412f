"""bench/task_metrics.py and bench/quantization.py without their long runs: the tone table's format is
docs/TRAINING.md's, the speech table has its own columns and markers, a failed row is reported in the table
while the others run, and `--write` refuses a file without the task's (or preset's) markers."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench/ is not an installed package

from bench import quantization  # noqa: E402
from bench.task_metrics import TABLES, render, table_row  # noqa: E402
from model_src.config import get_preset  # noqa: E402
from model_src.weights import embedded_weights  # noqa: E402


def _bench(*args, timeout=600):
    return subprocess.run([sys.executable, "-P", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONSAFEPATH": "1"})


def _doc_table():
    doc = (ROOT / "docs" / "TRAINING.md").read_text()
    start, end = TABLES["tones"]["markers"]
    return [line for line in doc.split(start, 1)[1].split(end, 1)[0].splitlines() if line.startswith("|")]


def test_tone_table_rows_are_docs_training_format():
    """Every row of docs/TRAINING.md's tone table comes back unchanged from its own numbers (header,
    separator and cells; "vs student" is from unrounded scores, so it is compared as a +/-x.x % cell)."""
    lines = _doc_table()
    keys = ["task"] + [k for k, _, _ in TABLES["tones"]["columns"]]
    table = render("tones", get_preset("tiny"), {}, "head").splitlines()
    assert table[3:5] == lines[:2]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        name, steps, task, rel, rest = cells[0], int(cells[1]), cells[2].strip("*"), cells[3], cells[4:]
        m = dict(zip(keys, map(float, [task, *rest])))
        got = table_row("tones", name, steps, m, {"task": m["task"]})
        got_cells = [c.strip() for c in got.strip("|").split("|")]
        assert re.fullmatch(r"[+-]\d+\.\d %", rel)
        assert got_cells[:3] + got_cells[4:] == cells[:3] + cells[4:], (got, line)


def test_speech_table_has_its_columns_markers_and_a_failed_row():
    """The speech table: words first, "both speak" and "speaking unasked"; its own markers; a failed row
    as many cells as the header, the error's first line in the task column."""
    results = {"ort": ("student, ONNX Runtime fp32 engines", 2, None, "RuntimeError: build | failed", 1.0)}
    text = render("speech", get_preset("tiny-speech"), results, "head").splitlines()
    assert text[0] == "<!-- speech task metrics table: start -->" and text[-1] == "<!-- speech task metrics table: end -->"
    assert text[3] == ("| model, backend, precision | steps | task | vs student | words | text | face | turn | sync "
                       "| barge-in (units) | both speak | speaking unasked | answer latency (units) |")
    row = text[5]
    assert "failed: RuntimeError: build \\| failed" in row
    assert row.count(" | ") == text[3].count(" | ")
    assert "unasked <= 0.05" in text[-2] and "words >= 0.65" in text[-2]


def test_a_failed_row_is_reported_and_the_table_written(tmp_path):
    """`python bench/task_metrics.py --only random,ort --write FILE` end to end (tiny, 1 conversation of 12
    units): the ONNX Runtime row fails (its --work folder holds engines of other weights), the table in FILE
    says so with the error's first line, the random row is measured, the text outside the markers kept."""
    tiny = embedded_weights("tiny")
    (tmp_path / "work" / "ort_fp32").mkdir(parents=True)
    (tmp_path / "work" / "ort_fp32" / "manifest.json").write_text(json.dumps({"weights": {"sha256": "0" * 64}}))
    doc = tmp_path / "doc.md"
    start, end = TABLES["tones"]["markers"]
    doc.write_text(f"before\n{start}\nold\n{end}\nafter\n")
    run = _bench("bench/task_metrics.py", "--teacher", str(tiny), "--conversations", "1", "--units", "12",
                 "--work", str(tmp_path / "work"), "--only", "random,ort", "--write", str(doc))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    text = doc.read_text()
    assert text.startswith(f"before\n{start}\n") and text.endswith(f"{end}\nafter\n") and "\nold\n" not in text
    ort = next(line for line in text.splitlines() if line.startswith("| student, ONNX Runtime fp32"))
    assert "failed: RuntimeError: " in ort and "holds engines of other weights" in ort
    assert re.search(r"\| random weights \(seed 0\), torch fp32 \| 2 \| \*\*0\.\d{3}\*\* \|", text)


def test_write_without_the_markers_is_refused_before_the_run(tmp_path):
    """--write FILE without the task's markers: both benches refuse, naming the markers, and leave FILE as it was."""
    doc = tmp_path / "doc.md"
    doc.write_text("no markers here\n<!-- task metrics table: start -->\n<!-- task metrics table: end -->\n")
    tiny = str(embedded_weights("tiny"))
    run = _bench("bench/quantization.py", "--preset", "tiny-speech", "--write", str(doc))
    assert run.returncode != 0 and "<!-- quantization tiny-speech: start -->" in run.stderr, run.stderr[-2000:]
    run = _bench("bench/task_metrics.py", "--teacher", tiny, "--preset", "tiny-speech", "--write", str(doc))
    assert run.returncode != 0 and "expected the teacher of the same preset" in run.stderr, run.stderr[-2000:]
    assert doc.read_text().startswith("no markers here")
    doc.write_text("no markers here\n")
    run = _bench("bench/task_metrics.py", "--teacher", tiny, "--write", str(doc))
    assert run.returncode != 0 and "<!-- task metrics table: start -->" in run.stderr, run.stderr[-2000:]
    assert doc.read_text() == "no markers here\n"


@pytest.mark.parametrize("name,start", [("tiny", "<!-- quantization tables: start -->"),
                                        ("tiny-speech", "<!-- quantization tiny-speech: start -->")])
def test_quantization_sections_per_preset(name, start):
    """tiny keeps its section's markers; another preset replaces only its own."""
    s, e = quantization.markers(name)
    assert s == start
    tiny = f"{quantization.START}\ntiny\n{quantization.END}\n" if name != "tiny" else ""
    doc = f"a\n{tiny}{s}\nold\n{e}\nz\n"
    out = quantization.replace_section(doc, f"{s}\nnew\n{e}", Path("d.md"), name)
    assert "new" in out and "old" not in out and out.startswith("a\n") and out.endswith("\nz\n")
    if name != "tiny":
        assert "\ntiny\n" in out
