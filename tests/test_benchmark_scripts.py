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
