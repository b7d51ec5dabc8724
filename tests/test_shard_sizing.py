"""Shards sized to a profile's time limit (issue 13): from `harness calibrate`'s rates or the
profile's assumed TFLOP/s, each cell's shards end within the task budget; a planned cell keeps
its size; one example over the budget is refused at plan time (exit 2)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import harness
from harness.grid import load_grid
from harness.launch.preflight import write_calibration
from harness.launch.profiles import load_profile
from harness.launch.sizing import sizing_for, task_budget_s
from harness.plan import load_plan, make_plan
from test_slurm import PROFILES, write

GRID = """\
sweep: sized
dataset: digits
classifier: digits-cnn
purifier:
  - none
  - name: lorid
    params: {{t_s: 0.1, loops: 3, steps: 4}}
attack:
  - none
  - name: pgd
    params: {{norm: linf, eps: 0.1, steps: 10, step_size: 0.05, eot: 4}}
examples: 400
batch_size: 8
shard_size: {shard_size}
"""


def _profile(tmp_path: Path, time_min: int = 20, rate: float | None = 50.0) -> Path:
    text = (PROFILES / "local.yaml").read_text().replace("time_min: 20", f"time_min: {time_min}")
    path = tmp_path / "local.yaml"
    path.write_text(text)
    if rate is not None:
        write_calibration(path, {"device": "test CPU", "batch": 8, "measured": "2026-12-07T00:00:00+00:00",
                                 "torch": "x", "denoiser_evals_per_s": {"digits-ddpm": rate}, "grad_evals_per_s": {}})
    return path


def _covers(plan) -> None:
    """Every cell's shards are consecutive, disjoint and cover 0..examples exactly once."""
    for _, rows in plan.groupby("cell"):
        rows = rows.sort_values("shard")
        assert list(rows["shard"]) == list(range(len(rows)))
        assert rows["start"].iloc[0] == 0 and rows["stop"].iloc[-1] == rows["cell_examples"].iloc[0]
        assert (rows["start"].iloc[1:].to_numpy() == rows["stop"].iloc[:-1].to_numpy()).all()


def test_shards_end_within_the_time_limit(tmp_path: Path) -> None:
    write(tmp_path / "g.yaml", GRID.format(shard_size=256))
    profile = _profile(tmp_path)
    r = harness("plan", "--grid", "g.yaml", "--profile", str(profile), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "shards: sized so a task ends within 16 min" in r.stdout, r.stdout
    plan = load_plan(tmp_path / "jobs" / "sized" / "plan.parquet")
    _covers(plan)
    budget = task_budget_s(load_profile(profile))
    lorid = plan[plan["denoiser"] == "digits-ddpm"]
    seconds = lorid["nfe_total"] / 50.0  # one rank a task
    assert seconds.max() <= budget
    # the attacked LoRID cell needed cutting; whole batches; the free cells keep shard_size
    attacked = lorid[lorid["attack"] == "pgd"]
    size = int(attacked["stop"].iloc[0] - attacked["start"].iloc[0])
    assert 8 <= size < 256 and size % 8 == 0
    per_example = attacked["nfe_total"].iloc[0] / size / 50.0
    assert (size + 8) * per_example > budget  # the largest whole-batch size that fits
    assert (plan.loc[plan["denoiser"] == "", "stop"] - plan.loc[plan["denoiser"] == "", "start"]).max() == 256
    # without the profile's time limit: the grid's shard_size everywhere
    plain = make_plan(load_grid(tmp_path / "g.yaml"))
    assert set(plain["stop"] - plain["start"]) <= {256, 400 - 256}


def test_assumed_tflops_size_shards_without_a_calibration(tmp_path: Path) -> None:
    write(tmp_path / "g.yaml", GRID.format(shard_size=256))
    path = _profile(tmp_path, rate=None)
    path.write_text(path.read_text() + "gpu_tflops: 0.00001\n")
    sizing, line = sizing_for(load_profile(path))
    assert sizing is not None and "TFLOP/s assumed" in line
    plan = make_plan(load_grid(tmp_path / "g.yaml"), sizing=sizing)
    _covers(plan)
    assert (plan["gflop_total"] / (0.00001 * 1e3)).max() <= sizing.budget_s
    assert (plan["stop"] - plan["start"]).min() < 256


def test_no_rate_keeps_the_grid_shard_size(tmp_path: Path) -> None:
    sizing, line = sizing_for(load_profile(_profile(tmp_path, rate=None)))
    assert sizing is None and "no calibration and no gpu_tflops" in line


def test_a_planned_cell_keeps_its_shard_size(tmp_path: Path) -> None:
    """Results live per (cell, shard index): a new calibration must not make an index mean other examples."""
    write(tmp_path / "g.yaml", GRID.format(shard_size=256))
    profile = _profile(tmp_path, rate=50.0)
    assert harness("plan", "--grid", "g.yaml", "--profile", str(profile), cwd=tmp_path, timeout=300).returncode == 0
    before = load_plan(tmp_path / "jobs" / "sized" / "plan.parquet")
    _profile(tmp_path, rate=5.0)  # ten times slower: new cells would get smaller shards
    r = harness("plan", "--grid", "g.yaml", "--profile", str(profile), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "planned cells keep their size" in r.stdout
    assert load_plan(tmp_path / "jobs" / "sized" / "plan.parquet").equals(before)
    # a fresh sweep directory is sized at the new rate
    sizing, _ = sizing_for(load_profile(profile), tmp_path / "elsewhere", "sized")
    fresh = make_plan(load_grid(tmp_path / "g.yaml"), sizing=sizing)
    assert len(fresh) > len(before)


def test_one_example_over_the_budget_is_refused_at_plan_time(tmp_path: Path) -> None:
    write(tmp_path / "g.yaml", GRID.format(shard_size=256))
    profile = _profile(tmp_path, time_min=1, rate=0.05)
    r = harness("plan", "--grid", "g.yaml", "--profile", str(profile), cwd=tmp_path, timeout=300)
    assert r.returncode == 2
    assert "lorid" in r.stderr and "time_min" in r.stderr and "budget" in r.stderr, r.stderr
    assert not (tmp_path / "jobs" / "sized" / "plan.parquet").exists()


@pytest.mark.parametrize("shard_size", [7, 64])
def test_sizing_never_grows_a_shard_past_shard_size(tmp_path: Path, shard_size: int) -> None:
    write(tmp_path / "g.yaml", GRID.format(shard_size=shard_size))
    sizing, _ = sizing_for(load_profile(_profile(tmp_path, rate=1e9)))
    plan = make_plan(load_grid(tmp_path / "g.yaml"), sizing=sizing)
    _covers(plan)
    assert (plan["stop"] - plan["start"]).max() == shard_size
    assert plan.equals(make_plan(load_grid(tmp_path / "g.yaml")))  # nothing cut: the same plan


def test_sizing_past_the_plan_row_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.plan as plan_module
    from harness.errors import UsageError

    write(tmp_path / "g.yaml", GRID.format(shard_size=256))
    sizing, _ = sizing_for(load_profile(_profile(tmp_path, rate=2.0)))
    monkeypatch.setattr(plan_module, "MAX_ROWS", 20)  # the grid's own check passed at 256 a shard
    with pytest.raises(UsageError, match=r"the plan has \d+ rows, more than 20; raise the profile's time_min"):
        make_plan(load_grid(tmp_path / "g.yaml"), sizing=sizing)
