"""The benchmark scripts still run against the current code (a schema change must not leave
their synthesised data behind), at sizes that mean nothing for speed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_report_scale_synthesises_the_current_schema_and_reports(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "benchmarks/report_scale.py", "--rows", "20000", "--parts-min", "10",
                        "--dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    row = next(line for line in r.stdout.splitlines() if line.startswith("| 19,"))
    assert row.rstrip().endswith("| 0 |"), row  # the report's own exit code


def test_purify_items_runs_the_current_purify_path(tmp_path: Path) -> None:
    """benchmarks/purify_items.py (which benchmarks/gpu_check.sh runs on a lent GPU) still runs."""
    r = subprocess.run([sys.executable, "benchmarks/purify_items.py", "--batch-sizes", "450", "--repeat", "1",
                        "--no-cli", "--out", str(tmp_path / "RESULTS.md")], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| 450 |" in r.stdout and "items/s" in r.stdout, r.stdout
    assert not (tmp_path / "RESULTS.md").exists()  # --append not given


def test_purify_overhead_measures_every_configuration_both_ways() -> None:
    """benchmarks/purify_overhead.py: a row per configuration with both ratios (paired and with a
    zero-cost stub denoiser), and nothing appended without --append."""
    before = (ROOT / "benchmarks" / "RESULTS.md").read_bytes()
    r = subprocess.run([sys.executable, "benchmarks/purify_overhead.py", "--batch", "2", "--repeat", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {line: line.split("|")[1:-1] for line in r.stdout.splitlines()  # printed, then in the table
            if line.startswith(("| diffpure", "| lorid"))}.values()
    assert len(rows) == 4, r.stdout
    for cells in rows:
        paired, rest, direct = float(cells[4]), float(cells[5]), float(cells[6])
        assert paired > 0 and rest > 0 and direct > 1.0, cells
    assert (ROOT / "benchmarks" / "RESULTS.md").read_bytes() == before
