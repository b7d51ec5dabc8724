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
