"""What CUDA this process sees, described once for the three places that need it: an array task
that needs a GPU and finds none (it stops before loading anything), `harness run --device cuda`
on a machine without one, and `harness doctor`.

A GPU allocation whose Python cannot use it (a CPU-only torch wheel, a wrong module, an empty
CUDA_VISIBLE_DEVICES) would otherwise run on the host's cores at a hundredth of the speed; the
description names what to look at: torch's version and CUDA build, what torch sees, the
visible devices and the driver NVML reports.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

#: Set by the batch script of a profile with `device: cuda` (harness.launch.profiles).
NEEDS_ENV = "HARNESS_NEEDS"
#: Slurm's variables that say this job or step was given GPUs.
_SLURM_GPU_ENV = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")


class DeviceError(RuntimeError):
    """A task that needs CUDA and finds none: exit 3, before anything is loaded."""

    exit_code = 3


def nvml_view(nvml: Any = None) -> dict[str, Any]:
    """{driver, gpus: [{name, memory_gib}]} through NVML, or {error} where it cannot answer."""
    try:
        if nvml is None:
            import pynvml as nvml  # type: ignore[no-redef]
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 (no driver, nvidia-ml-py missing, ...)
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        def text(v: Any) -> str:
            return v.decode() if isinstance(v, bytes) else str(v)

        gpus = []
        for i in range(int(nvml.nvmlDeviceGetCount())):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            gpus.append({"name": text(nvml.nvmlDeviceGetName(h)),
                         "memory_gib": round(nvml.nvmlDeviceGetMemoryInfo(h).total / 2 ** 30, 1)})
        return {"driver": text(nvml.nvmlSystemGetDriverVersion()), "gpus": gpus}
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def cuda_view(nvml: Any = None) -> dict[str, Any]:
    """torch's build and view of CUDA, the visible devices, and NVML's view."""
    import torch

    available = torch.cuda.is_available()
    view: dict[str, Any] = {
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if available else None,
        "available": available, "count": torch.cuda.device_count() if available else 0,
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "nvml": nvml_view(nvml)}
    if available:
        view["devices"] = [{"name": torch.cuda.get_device_name(i),
                            "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2 ** 30, 1)}
                           for i in range(view["count"])]
    return view


def describe(view: Mapping[str, Any]) -> str:
    """One line of cuda_view, e.g. for an error message."""
    build = f"CUDA {view['torch_cuda']}" if view["torch_cuda"] else "a CPU-only build"
    visible = "unset" if view["visible"] is None else repr(view["visible"])
    nv = view["nvml"]
    driver = (f"NVML: driver {nv['driver']}, {len(nv['gpus'])} GPU(s)"
              + (f" ({', '.join(g['name'] for g in nv['gpus'])})" if nv["gpus"] else "")
              if "driver" in nv else f"NVML unavailable ({nv['error']})")
    return (f"torch {view['torch']} ({build}), torch.cuda.is_available() = {view['available']}, "
            f"{view['count']} device(s), CUDA_VISIBLE_DEVICES {visible}; {driver}")


def needed(env: Mapping[str, str] | None = None) -> str | None:
    """What this task must run on: the profile's `device` (HARNESS_NEEDS), else "cuda" where
    Slurm gave the job GPUs (slurm/sweep.sh with --gpus-per-node), else no requirement."""
    env = os.environ if env is None else env
    if env.get(NEEDS_ENV):
        return env[NEEDS_ENV]
    return "cuda" if any(env.get(k) for k in _SLURM_GPU_ENV) else None


def require(device: str | None, nvml: Any = None) -> None:
    """DeviceError when `device` is cuda and torch sees no CUDA device here."""
    if device != "cuda":
        return
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return
    import platform

    raise DeviceError(f"this task needs a CUDA GPU and finds none on {platform.node()}: "
                      f"{describe(cuda_view(nvml))}. Nothing was run; check the node's torch build "
                      "(`harness doctor --profile P` inside an allocation)")


FAILURES = "failures"


def task_id(env: Mapping[str, str] | None = None) -> str:
    """This Slurm task's id as `harness status` knows it ("123_4", "123"), else local-<pid>."""
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or f"local-{os.getpid()}"


def check_task(record_dir: Any = None, nvml: Any = None) -> None:
    """A task's device policy, first thing: DeviceError where it needs CUDA and finds none,
    recorded as <record_dir>/failures/<task id>.json so that `harness status` names the cause."""
    try:
        require(needed(), nvml)
    except DeviceError as exc:
        if record_dir is not None:
            import json
            import platform
            import time
            from pathlib import Path

            from .fsutil import atomic_write

            task = task_id()
            try:
                atomic_write(Path(record_dir) / FAILURES / f"{task}.json", json.dumps(
                    {"task": task, "host": platform.node(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "cause": str(exc)}).encode())
            except OSError:  # the message in the task's log still says it
                pass
        raise


def recorded_failures(record_dir: Any) -> dict[str, dict[str, Any]]:
    """task id → its recorded failure (check_task), for `harness status`."""
    from pathlib import Path

    from .fsutil import read_json

    out = {}
    for f in sorted((Path(record_dir) / FAILURES).glob("*.json")):
        doc = read_json(f)
        if doc is not None and "task" in doc:
            out[str(doc["task"])] = doc
    return out
