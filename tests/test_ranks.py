"""The data-parallel world: rank detection, and two ranks giving the rows of one.

The multi-rank runs need the test cluster (srun) and Open MPI (mpirun); see test_slurm.py's
`cluster` fixture, which brings a cluster up when none is reachable (never under CI).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY_GRID, harness
from test_slurm import KEY, Cluster, cluster, result_rows, run  # noqa: F401 (cluster is a fixture)

from harness.ranks import World, _MPI_ENV, detect

_SLURM_ENV = ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_LOCALID")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for n in (*_MPI_ENV, *_SLURM_ENV):
        monkeypatch.delenv(n, raising=False)
    return monkeypatch


def test_single_process(clean_env: pytest.MonkeyPatch) -> None:
    assert detect() == World()


def test_srun_step_without_mpi(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SLURM_STEP_NUM_TASKS", "4")
    clean_env.setenv("SLURM_PROCID", "3")
    clean_env.setenv("SLURM_LOCALID", "1")
    w = detect()
    assert (w.rank, w.size, w.local_rank, w.backend, w.comm) == (3, 4, 1, "slurm", None)


def test_batch_script_is_one_rank(clean_env: pytest.MonkeyPatch) -> None:
    """The batch step of an sbatch with --ntasks=4 running python directly is no multi-task step."""
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert detect() == World()


def test_world_without_communicator_sums_locally() -> None:
    w = World(rank=1, size=2, backend="slurm")
    assert w.sum(5) == 5
    w.barrier()  # no communicator: returns at once


# ---------------------------------------------------------------- two ranks, same rows

ROW = 7  # lorid purifier × PGD: the row with every random stream (purification, attack, EOT)


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """The tiny plan and the one-rank rows of its heaviest row."""
    d = tmp_path_factory.mktemp("ranks")
    (d / "tiny.yaml").write_text(TINY_GRID)
    assert harness("plan", "--grid", "tiny.yaml", "--jobs", "jobs", cwd=d).returncode == 0
    plan = d / "jobs" / "tiny" / "plan.parquet"
    run(sys.executable, "-m", "harness.launch.task", "--plan", str(plan), "--row", str(ROW),
        "--results", str(d / "one"), cwd=d, timeout=300, env={"OMP_NUM_THREADS": "1"})
    return plan, _preds(d / "one")


def _preds(results: Path) -> pd.DataFrame:
    rows = result_rows(results / "tiny")
    assert not rows.duplicated(KEY).any()
    return rows.set_index(KEY)[["clean_pred", "adv_pred", "perturbation"]].sort_index()


def _check_two_ranks(results: Path, one: pd.DataFrame, stdout: str, backend: str) -> None:
    rows = result_rows(results / "tiny")
    assert sorted(rows["rank"].unique()) == [0, 1], rows["rank"].value_counts()
    pd.testing.assert_frame_equal(_preds(results), one)
    assert f"rank 0/2 ({backend})" in stdout and f"rank 1/2 ({backend})" in stdout, stdout


@pytest.mark.parametrize("mpi", ["pmix", "none"])
def test_srun_two_ranks_give_the_rows_of_one(mpi: str, cluster: Cluster, tiny_plan, tmp_path: Path) -> None:
    """srun --mpi=pmix: ranks from MPI (mpi4py); --mpi=none: ranks from Slurm's step environment."""
    plan, one = tiny_plan
    r = run("srun", f"--mpi={mpi}", "-n", "2", "-t", "10", sys.executable, "-m", "harness.launch.task",
            "--plan", str(plan), "--row", str(ROW), "--results", str(tmp_path / "two"), cwd=tmp_path, timeout=300)
    _check_two_ranks(tmp_path / "two", one, r.stdout, "mpi" if mpi == "pmix" else "slurm")
    if mpi == "pmix":  # with a communicator rank 0 waits for rank 1, then marks the shard complete
        marker = json.loads(next((tmp_path / "two").rglob("_COMPLETE.json")).read_text())
        assert marker["ranks"] == 2 and marker["examples"] == 6 and marker["rows_this_run"] == 12


def test_mpirun_two_ranks_give_the_rows_of_one(cluster: Cluster, tiny_plan, tmp_path: Path) -> None:
    plan, one = tiny_plan
    r = run("mpirun", "-n", "2", "--oversubscribe", sys.executable, "-m", "harness.launch.task",
            "--plan", str(plan), "--row", str(ROW), "--results", str(tmp_path / "two"), cwd=tmp_path, timeout=300)
    _check_two_ranks(tmp_path / "two", one, r.stdout, "mpi")
    marker = json.loads(next((tmp_path / "two").rglob("_COMPLETE.json")).read_text())
    assert marker["ranks"] == 2 and marker["rows_this_run"] == 12
