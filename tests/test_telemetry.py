"""GPU telemetry: NVML cannot run here, so a stand-in module plays the driver and the
same code path records energy, utilisation and the device; absent NVML it carries on."""
from __future__ import annotations

import json
import time
import types
from pathlib import Path

from harness.launch.task import run_task
from harness.telemetry import GpuMonitor, system_description

from conftest import harness


def fake_nvml(energy_mj: list[int]) -> types.SimpleNamespace:
    calls = iter(energy_mj)
    util = types.SimpleNamespace(gpu=87)
    return types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}",
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlSystemGetDriverVersion=lambda: "560.35",
        nvmlDeviceGetTotalEnergyConsumption=lambda h: next(calls),
        nvmlDeviceGetUtilizationRates=lambda h: util,
    )


def test_monitor_records_energy_and_utilisation() -> None:
    with GpuMonitor(0, interval_s=0.01, nvml=fake_nvml([1_000_000, 1_250_500])) as mon:
        deadline = time.monotonic() + 30  # wait for the outcome (a sample), not a fixed time
        while not mon.samples and time.monotonic() < deadline:
            time.sleep(0.01)
    assert mon.info["nvml"] == "ok" and mon.info["gpu"] == "NVIDIA H100 80GB HBM3"
    assert mon.info["energy_j"] == 250.5  # NVML counts millijoules
    assert mon.info["util_samples"] and set(mon.info["util_samples"]) == {87}
    assert mon.info["driver"] == "560.35"


def test_monitor_without_nvml_carries_on() -> None:
    def broken_init() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    nvml = fake_nvml([0])
    nvml.nvmlInit = broken_init
    with GpuMonitor(0, nvml=nvml) as mon:
        pass
    assert mon.info["nvml"].startswith("unavailable: RuntimeError")
    with GpuMonitor(None) as cpu:
        pass
    assert "CPU" in cpu.info["nvml"]


def test_task_writes_telemetry_beside_its_results(tiny_grid: Path, tmp_path: Path) -> None:
    r = harness("plan", "--grid", str(tiny_grid), "--jobs", "jobs", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_task(str(tmp_path / "jobs/tiny/plan.parquet"), 0, str(tmp_path / "results"))
    [tele] = list((tmp_path / "results").rglob("_telemetry-rank-0-*.json"))
    info = json.loads(tele.read_text())
    assert info["rows"] > 0 and info["device"] == "cpu" and info["nvml"].startswith("not used")
    assert info["system"]["torch"] and info["system"]["arch"]
    assert (tele.parent / "_COMPLETE.json").is_file()
    assert system_description()["cores"] >= 1
