"""bench/serve_load.py end to end, as docs/BENCHMARKS.md runs it (the flood round), with few seconds:
the command works and reports what its table shows. Its figures are for the benchmark, not this test."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_flood_round_runs_and_reports_clients_sockets_and_health(tiny_ort_engines, tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, "-P", str(ROOT / "bench" / "serve_load.py"), "--engines", str(tiny_ort_engines),
                           "--clients", "1", "--seconds", "3", "--flood", "20", "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    flood = json.loads(out.read_text())["flood"]
    assert flood["idle"] == 20 and flood["idle_opened"] >= 20  # the idle sockets were opened (and reopened)
    assert flood["sessions"] == 1 and flood["units"] > 0 and flood["sent"] >= flood["units"]
    assert flood["health_polls"] > 0 and flood["health_ms"]["max"] >= flood["health_ms"]["p50"] > 0
    assert "| tiny unbatched | 20 (" in proc.stdout  # the markdown row docs/BENCHMARKS.md shows
