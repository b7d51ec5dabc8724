"""benchmarks/gpu_check.py runs (tiny sizes on CPU), so the script a lent GPU runs is not stale."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_gpu_check_dry_run() -> None:
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "predictions agree" in r.stdout and "| ddpm-cifar10-32 | bf16 |" in r.stdout
    assert r.stdout.split("## GPU check")[1].count("| PGD-EOT step") == 2  # with and without checkpointing
    assert "| batch search, PGD step through LoRID" in r.stdout and "no gauge (CPU): the batch stays" in r.stdout
