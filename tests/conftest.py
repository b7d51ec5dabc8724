"""Shared fixtures: a tiny grid over the bundled digits, and a way to call the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TINY_GRID = """\
sweep: tiny
dataset: digits
classifier: digits-cnn
purifier:
  - none
  - name: lorid
    params: {t_s: 0.05, loops: 2, steps: 2}
attack:
  - none
  - name: pgd
    params: {norm: linf, eps: 0.1, steps: 2, step_size: 0.05, eot: 2}
examples: 12
batch_size: 4
shard_size: 6
eval_runs: 2
"""


@pytest.fixture
def tiny_grid(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY_GRID)
    return p


def harness(*args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None,
            **kw) -> subprocess.CompletedProcess:
    """Run the real console entry point in a child process (bounded in time)."""
    env = {**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env, **kw)
