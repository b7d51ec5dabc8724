"""The command line as a user runs it: exit codes, messages, files written or not."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import TINY_GRID, harness

BAD_GRIDS = {
    "not_yaml": ("sweep: x\npurifier: [none\n", "<root>"),
    "unknown_key": (TINY_GRID + "colour: blue\n", "colour"),
    "unknown_plugin": (TINY_GRID.replace("  - none\n  - name: lorid", "  - nonesuch\n  - name: lorid"), "nonesuch"),
    "out_of_range": (TINY_GRID.replace("loops: 2", "loops: 0"), "purifier[1].params.loops"),
    "empty_list": (TINY_GRID.replace("loops: 2", "loops: []"), "purifier[1].params.loops"),
    "zip_unequal": (TINY_GRID.replace("params: {t_s: 0.05, loops: 2, steps: 2}",
                                      "params: {t_s: [0.05, 0.1], loops: [1, 2, 3], steps: 2}\n    zip: [[t_s, loops]]"),
                    "zip"),
}


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
@pytest.mark.parametrize("command", ["plan", "run"])
def test_bad_grid_exits_2_and_writes_nothing(case: str, command: str, tmp_path: Path) -> None:
    text, key = BAD_GRIDS[case]
    grid = tmp_path / f"{case}.yaml"
    grid.write_text(text)
    r = harness(command, "--grid", str(grid), "--jobs", "jobs", *(["--results", "results"] if command == "run" else []),
                cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"{case}.yaml" in r.stderr and key in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "jobs").exists() and not (tmp_path / "results").exists()


def test_plan_prints_summary(tiny_grid: Path, tmp_path: Path) -> None:
    r = harness("plan", "--grid", str(tiny_grid), "--jobs", "jobs", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    plan = pd.read_parquet(tmp_path / "jobs/tiny/plan.parquet")
    assert len(plan) == 4 * 2  # 2 purifiers × 2 attacks, 12 examples in shards of 6
    assert "cells" in r.stdout and (tmp_path / "jobs/tiny/grid.yaml").read_text() == tiny_grid.read_text()


def _rows(results: Path) -> pd.DataFrame:
    files = sorted(results.rglob("rank-*-part-*.parquet"))
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def test_run_resume_after_sigkill_is_exactly_once(tiny_grid: Path, tmp_path: Path) -> None:
    """Kill `harness run` mid-way, run again: every row once, the finished parts untouched."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "harness.cli", "run", "--grid", str(tiny_grid), "--jobs", "jobs",
           "--results", "results"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((tmp_path / "results").rglob("rank-*-part-*.parquet"))) >= 3:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    if proc.returncode == 0:  # a fast machine finished before the kill landed: lose one shard's work
        last = sorted((tmp_path / "results").rglob("rank-*-part-*.parquet"))[-1].parent
        for f in last.iterdir():
            f.unlink()
    before = {f: f.stat().st_mtime_ns for f in (tmp_path / "results").rglob("rank-*-part-*.parquet")}
    partial = _rows(tmp_path / "results")
    assert 0 < len(partial) < 4 * 12 * 2
    # what a writer killed mid-write leaves behind: a temporary, never a short part file
    some_shard = next(iter(before)).parent
    (some_shard / ".rank-0-part-0000099.parquet.999999.tmp").write_bytes(b"PAR1 half a file")
    (some_shard / "._COMPLETE.json.999999.tmp").write_text("{")  # killed while marking the shard

    r = harness("run", "--grid", str(tiny_grid), "--jobs", "jobs", "--results", "results", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = _rows(tmp_path / "results")
    assert len(rows) == 4 * 12 * 2
    assert not rows.duplicated(["cell", "example", "eval_run"]).any()
    assert rows.groupby("cell").example.nunique().eq(12).all()
    for f, mtime in before.items():  # finished work is kept as it was, not recomputed
        assert f.stat().st_mtime_ns == mtime
    assert not list((tmp_path / "results").rglob("*.tmp"))

    again = harness("run", "--grid", str(tiny_grid), "--jobs", "jobs", "--results", "results", cwd=tmp_path)
    assert again.returncode == 0 and "nothing to run" in again.stdout
    assert len(_rows(tmp_path / "results")) == 4 * 12 * 2


def test_rows_are_reproducible_and_independent_of_batching(tiny_grid: Path, tmp_path: Path) -> None:
    """Per-example seeds: another batch and shard size gives the same predictions."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (b / "tiny.yaml").write_text(tiny_grid.read_text().replace("batch_size: 4", "batch_size: 5")
                                 .replace("shard_size: 6", "shard_size: 12"))
    for d, g in ((a, tiny_grid), (b, b / "tiny.yaml")):
        r = harness("run", "--grid", str(g), "--jobs", "jobs", "--results", "results", cwd=d)
        assert r.returncode == 0, r.stderr
    key = ["cell", "example", "eval_run"]
    ra = _rows(a / "results").sort_values(key).reset_index(drop=True)
    rb = _rows(b / "results").sort_values(key).reset_index(drop=True)
    cols = key + ["y", "clean_pred", "adv_pred", "seed_purify", "seed_attack", "data_index"]
    pd.testing.assert_frame_equal(ra[cols], rb[cols])
    # the defence is random: different evaluation runs used different seeds
    assert ra.groupby(["cell", "example"]).seed_purify.nunique().max() == 2


def test_report_command(tiny_grid: Path, tmp_path: Path) -> None:
    r = harness("run", "--grid", str(tiny_grid), "--jobs", "jobs", "--results", "results", "--report",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "pgd" in r.stdout and "lorid" in r.stdout
    assert (tmp_path / "results/tiny/_report/report.md").is_file()
    assert (tmp_path / "results/tiny/_report/report.csv").is_file()
    missing = harness("report", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 2 and "no result files" in missing.stderr


def test_autoattack_outcomes_are_recorded_per_example(tmp_path: Path) -> None:
    grid = tmp_path / "aa.yaml"
    grid.write_text("""\
sweep: aa
dataset: digits
classifier: digits-cnn
purifier: none
attack:
  - name: autoattack
    params: {version: custom, attacks: [apgd-ce], eps: 0.3, steps: 5}
  - name: pgd
    params: {eps: 0.3, steps: 2, step_size: 0.1}
examples: 6
batch_size: 6
""")
    r = harness("run", "--grid", str(grid), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = _rows(tmp_path / "results")
    aa = rows[rows.attack == "autoattack"]
    assert len(aa) == 6 and aa.found_by.notna().all()
    assert set(aa.found_by) <= {"apgd-ce", "clean", ""}
    # an example counts as fooled by a sub-attack exactly when it is no longer correct
    assert ((aa.found_by != "") == ~aa.adv_correct).all()
    assert rows[rows.attack == "pgd"].found_by.isna().all()
