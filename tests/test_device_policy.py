"""Device policy (issue 15): a task launched under a GPU profile on a node without CUDA (the
test cluster) stops first thing, before loading anything, naming torch's build, what it sees
and the driver; it writes no result rows and `harness status` names the cause. The batch
script exports the requirement; the check reads it (or Slurm's GPU variables)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import harness
from test_slurm import (CHEAP_GRID, PROFILES, Cluster, cluster, job_id_from, wait_tasks,  # noqa: F401
                        write)


def test_gpu_task_without_cuda_fails_fast_and_status_says_why(cluster: Cluster, tmp_path: Path) -> None:
    write(tmp_path / "cheap.yaml", CHEAP_GRID.format(sweep="nocuda"))
    profile = write(tmp_path / "gpu-here.yaml", (PROFILES / "local.yaml").read_text() + "device: cuda\n")
    r = harness("submit", "--grid", "cheap.yaml", "--profile", str(profile), "--jobs", "jobs", "--results",
                "results", cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    job = job_id_from(r.stdout)
    states = wait_tasks([job], 180, logs=tmp_path / "jobs" / "nocuda" / "slurm")
    assert states[job] == "FAILED", states
    # stopped before loading anything: no shard directory (the worker makes one before its first batch)
    assert not list((tmp_path / "results").rglob("cell=*")), list((tmp_path / "results").rglob("*"))
    log = next((tmp_path / "jobs" / "nocuda" / "slurm").glob("*_log.out")).read_text()
    assert "needs a CUDA GPU and finds none" in log and "torch.cuda.is_available() = False" in log, log[-3000:]
    assert not list((tmp_path / "results").rglob("*.parquet"))  # no result rows
    st = harness("status", "jobs/nocuda", cwd=tmp_path)
    assert st.returncode == 0, st.stderr
    assert f"task {job} failed on" in st.stdout and "needs a CUDA GPU and finds none" in st.stdout, st.stdout
    assert "CPU-only build" in st.stdout or "CUDA" in st.stdout


def test_the_batch_script_exports_the_requirement(tmp_path: Path) -> None:
    from harness.launch.profiles import load_profile

    write(tmp_path / "cheap.yaml", CHEAP_GRID.format(sweep="needs"))
    for name, exported in (("gh200", True), ("a100", True), ("local", False)):
        r = harness("submit", "--grid", "cheap.yaml", "--profile", str(PROFILES / f"{name}.yaml"), "--dry-run",
                    cwd=tmp_path, timeout=120)
        assert r.returncode == 0, r.stderr
        assert ("export HARNESS_NEEDS=cuda" in r.stdout) == exported, (name, r.stdout)
        assert load_profile(PROFILES / f"{name}.yaml").device == ("cuda" if exported else "cpu")


@pytest.mark.parametrize("env,needs", [({}, None), ({"HARNESS_NEEDS": "cuda"}, "cuda"),
                                       ({"SLURM_JOB_GPUS": "0,1"}, "cuda"), ({"SLURM_GPUS_ON_NODE": ""}, None),
                                       ({"HARNESS_NEEDS": "cpu", "SLURM_JOB_GPUS": "0"}, "cpu")])
def test_what_a_task_needs(env: dict, needs: str | None) -> None:
    from harness.devices import needed

    assert needed(env) == needs


def test_require_names_the_build_and_nvml(tmp_path: Path) -> None:
    from harness.devices import DeviceError, require
    from test_doctor import fake_nvml

    require(None)
    require("cpu")
    with pytest.raises(DeviceError, match=r"torch .*is_available\(\) = False.*NVML: driver 560\.35"):
        require("cuda", nvml=fake_nvml())
