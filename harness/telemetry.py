"""A description of the machine, stored with results and benchmark figures."""
from __future__ import annotations

import os
import platform


def machine(device: str = "cpu") -> str:
    """One line: CPU architecture and cores, and the GPU name when the device is one."""
    text = f"{platform.machine()} {_cpu_model()} ({os.cpu_count()} cores), torch "
    import torch

    text += torch.__version__
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return text


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def system_description() -> dict[str, object]:
    """Nodes, GPUs, CPU architecture, driver and library versions, for the results."""
    import platform as pf

    desc: dict[str, object] = {
        "host": pf.node(), "arch": pf.machine(), "cpu": _cpu_model(), "cores": os.cpu_count(),
        "python": pf.python_version(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"), "slurm_array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "slurm_nodes": os.environ.get("SLURM_JOB_NUM_NODES"),
    }
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("torch", "diffusers", "tensorly", "numpy", "pyarrow", "mpi4py", "submitit"):
        try:  # metadata only: importing diffusers just for its version costs seconds
            desc[dist] = version(dist)
        except PackageNotFoundError:
            desc[dist] = None
    try:
        import torch

        desc["cuda"] = torch.version.cuda
        desc["gpus"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover
        pass
    return desc


class GpuMonitor:
    """Energy, peak memory and utilisation samples of one GPU over a task, through NVML.

    Absent NVML (no NVIDIA driver, or nvidia-ml-py missing) it records why and carries on;
    the task never fails for lack of telemetry.
    """

    def __init__(self, index: int | None, interval_s: float = 1.0, nvml: object | None = None):
        self.index, self.interval = index, interval_s
        self.samples: list[int] = []
        self.info: dict[str, object] = {"nvml": "not used (CPU device)"} if index is None else {}
        self._nvml, self._handle, self._energy0 = None, None, None
        self._stop = None
        if index is None:
            return
        try:
            if nvml is None:
                import pynvml as nvml  # type: ignore[no-redef]
            nvml.nvmlInit()  # type: ignore[attr-defined]
            self._nvml = nvml
            self._handle = nvml.nvmlDeviceGetHandleByIndex(index)  # type: ignore[attr-defined]
            name = nvml.nvmlDeviceGetName(self._handle)  # type: ignore[attr-defined]
            self.info.update(nvml="ok", gpu=name.decode() if isinstance(name, bytes) else name,
                             driver=_decode(nvml.nvmlSystemGetDriverVersion()))  # type: ignore[attr-defined]
            try:
                self._energy0 = nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 (older GPUs do not report energy)
                self.info["energy_j"] = None
        except Exception as exc:  # noqa: BLE001 (NVMLError_LibraryNotFound, ImportError, ...)
            self._nvml = None
            self.info["nvml"] = f"unavailable: {type(exc).__name__}: {exc}"

    def __enter__(self) -> "GpuMonitor":
        if self._nvml is not None:
            import threading

            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):  # type: ignore[union-attr]
            try:
                self.samples.append(int(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001
                return

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=5)
        if self._nvml is not None:
            if self._energy0 is not None:
                e1 = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)  # type: ignore[attr-defined]
                self.info["energy_j"] = (e1 - self._energy0) / 1000.0  # NVML reports millijoules
            self.info["util_samples"] = list(self.samples)
            self.info["util_mean"] = sum(self.samples) / len(self.samples) if self.samples else None
            try:
                import torch

                self.info["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(self.index))
            except Exception:  # noqa: BLE001
                pass
            try:
                self._nvml.nvmlShutdown()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001
                pass


def _decode(v: object) -> object:
    return v.decode() if isinstance(v, bytes) else v
