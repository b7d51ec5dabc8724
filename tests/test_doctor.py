"""`harness doctor` on the test Slurm cluster (CPU): ready for the smoke grid under the local
profile; each problem named (an unwritable results directory, a missing asset, the profile's
arch not the machine's) with a non-zero exit; the GPU lines through a stand-in NVML."""
from __future__ import annotations

import platform
import types
from pathlib import Path

import pytest

from conftest import ROOT, harness
from test_slurm import PROFILES, Cluster, cluster, write  # noqa: F401  (the cluster fixture)

SMOKE = ROOT / "grids" / "smoke.yaml"


def fake_nvml() -> types.SimpleNamespace:
    mem = types.SimpleNamespace(total=80 * 2 ** 30)
    return types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}", nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetMemoryInfo=lambda h: mem, nvmlSystemGetDriverVersion=lambda: "560.35")


def test_doctor_is_ready_for_the_smoke_grid_on_the_test_cluster(cluster: Cluster, tmp_path: Path) -> None:
    r = harness("doctor", "--profile", "local", "--grid", str(SMOKE), "--results", str(tmp_path / "results"),
                "--jobs", str(tmp_path / "jobs"), cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1].startswith("doctor: ready (profile 'local', grid 'smoke')"), r.stdout
    for name in ("python", "torch", "gpu", "noise", "submitit", "slurm", "array", "assets", "results", "jobs"):
        assert any(line.split()[1:2] == [name] for line in lines if line.startswith("ok")), (name, r.stdout)
    assert "MaxArraySize" in r.stdout and "PROBLEM" not in r.stdout


def test_doctor_names_each_problem(cluster: Cluster, tmp_path: Path) -> None:
    other = "aarch64" if platform.machine() != "aarch64" else "x86_64"
    profile = write(tmp_path / "elsewhere.yaml", (PROFILES / "local.yaml").read_text() + f"arch: {other}\n")
    grid = write(tmp_path / "g.yaml", "sweep: c\ndataset: {name: cifar10, params: {root: 'asset:cifar10'}}\n"
                 "classifier: {name: wrn-28-10, params: {path: 'asset:wrn-28-10-cifar10'}}\n"
                 "purifier: none\nattack: none\nexamples: 4\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    r = harness("doctor", "--profile", str(profile), "--grid", str(grid), "--results", str(blocker / "results"),
                "--assets", str(tmp_path / "assets"), "--jobs", str(tmp_path / "jobs"), cwd=tmp_path, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    problems = [line for line in r.stdout.splitlines() if line.startswith("PROBLEM")]
    assert any(" python " in p and other in p for p in problems), r.stdout
    assert any(" assets " in p and "asset:cifar10" in p for p in problems), r.stdout
    assert any(" assets " in p and "asset:wrn-28-10-cifar10" in p for p in problems), r.stdout
    assert any(" results " in p and "not writable" in p for p in problems), r.stdout
    assert r.stdout.splitlines()[-1] == f"doctor: {len(problems)} problem(s) (profile 'elsewhere', grid 'c')"


def test_gpu_lines_through_a_stand_in_nvml(tmp_path: Path) -> None:
    from harness.doctor import checks
    from harness.launch.profiles import load_profile

    gpu = load_profile(write(tmp_path / "gpu.yaml", (PROFILES / "local.yaml").read_text() + "device: cuda\n"))
    found = {c.name: c for c in checks(gpu, results=tmp_path / "r", jobs=tmp_path / "j", nvml=fake_nvml())}
    # torch here has no CUDA device: a GPU profile's node check is a problem naming what NVML sees
    assert found["gpu"].status == "PROBLEM", found["gpu"]
    assert "torch.cuda.is_available() = False" in found["gpu"].detail
    assert "NVML: driver 560.35, 1 GPU(s) (NVIDIA H100 80GB HBM3)" in found["gpu"].detail
    assert found["nvml"].status == "ok" and "560.35" in found["nvml"].detail
    login = {c.name: c for c in checks(gpu, results=tmp_path / "r", jobs=tmp_path / "j", nvml=fake_nvml(), login=True)}
    assert login["gpu"].status == "ok" and "srun harness doctor" in login["gpu"].detail

    def broken() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    nv = fake_nvml()
    nv.nvmlInit = broken
    found = {c.name: c for c in checks(gpu, results=tmp_path / "r", jobs=tmp_path / "j", nvml=nv)}
    assert found["nvml"].status == "warn" and "NVML Shared Library Not Found" in found["nvml"].detail
    cpu = {c.name: c for c in checks(load_profile(PROFILES / "local.yaml"), results=tmp_path / "r",
                                     jobs=tmp_path / "j", nvml=nv)}
    assert cpu["gpu"].status == "ok" and "not needed" in cpu["gpu"].detail and "nvml" not in cpu
    assert cpu["noise"].status == "ok" and "native" in cpu["noise"].detail and "noise" not in found


def test_noise_line_warns_without_a_c_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import rng_native
    from harness.doctor import checks
    from harness.launch.profiles import load_profile

    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    rng_native.reset()
    try:
        found = {c.name: c for c in checks(load_profile(PROFILES / "local.yaml"), results=tmp_path / "r",
                                           jobs=tmp_path / "j")}
    finally:
        rng_native.reset()
    assert found["noise"].status == "warn" and "no C compiler" in found["noise"].detail


def test_run_on_cuda_without_cuda_is_a_usage_error(tmp_path: Path) -> None:
    r = harness("run", "--grid", str(SMOKE), "--device", "cuda:0", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "--device cuda:0" in r.stderr and "torch" in r.stderr, r.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "jobs").exists()
