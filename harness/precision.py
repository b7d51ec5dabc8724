"""How the networks run on a device: precision, memory layout, compilation, backend flags.

On CUDA the default is bf16 autocast for the networks (denoiser, classifier) with their outputs
cast back to fp32, so the diffusion schedule's arithmetic (x0 from eps, the posterior mean,
the noise scale) stays fp32; channels_last; cudnn.benchmark; TF32 for the fp32 matmuls that
remain (not when fp32 is asked for: then fp32 means fp32). On CPU the default is fp32 and
nothing changes. The same wrapper runs on CPU when bf16 is asked for (CPU autocast), so the
code the GPU runs is the code the tests run.

Compilation (torch.compile of a network) is optional: ``HARNESS_COMPILE=1``. A network whose
compilation fails (no C compiler, an unsupported operator) falls back to eager once, with a
warning, and the rows are the same either way up to float rounding.
"""
from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from .grid import PRECISIONS  # what a grid may ask for; "auto" resolves by device (resolve())


def resolve(precision: str | None, device: str | torch.device) -> str:
    """The precision to run: an explicit one as asked, "auto" (or None): bf16 on CUDA, else fp32."""
    if precision in (None, "auto"):
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return str(precision)


def configure_backends(device: str | torch.device, precision: str) -> None:
    """Process-wide flags for a CUDA device: cudnn picks the fastest algorithms for the fixed
    shapes of a sweep; TF32 only when the networks are not asked to be fp32."""
    if torch.device(device).type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    allow = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow


class Network(nn.Module):
    """``module`` run at ``precision`` (bf16: under autocast, output back to fp32), inputs and
    weights channels_last when ``channels_last``, compiled when ``compile`` (with a fallback)."""

    def __init__(self, module: nn.Module, precision: str, device: str | torch.device,
                 channels_last: bool | None = None, compile: bool | None = None):
        super().__init__()
        self.module = module
        self.precision = precision
        self.device_type = torch.device(device).type
        cuda = self.device_type == "cuda"
        self.channels_last = cuda if channels_last is None else channels_last
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)
        wanted = os.environ.get("HARNESS_COMPILE", "0") == "1" if compile is None else compile
        self._compiled: Any = _compile(self.module) if wanted else None

    def forward(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        context = (torch.autocast(self.device_type, dtype=torch.bfloat16) if self.precision == "bf16"
                   else nullcontext())
        with context:
            out = self._call(x, *args)
        return out.float()  # (the same tensor when it is fp32 already)

    def _call(self, *args: Any) -> torch.Tensor:
        if self._compiled is not None:
            try:
                return self._compiled(*args)
            except Exception as exc:  # noqa: BLE001 (inductor raises many kinds; eager still works)
                print(f"harness: torch.compile of {type(self.module).__name__} failed "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); running eagerly",
                      file=sys.stderr)
                self._compiled = None
        return self.module(*args)


def _compile(module: nn.Module) -> Any:
    try:
        return torch.compile(module, dynamic=False)
    except Exception as exc:  # noqa: BLE001 (compile unavailable on this platform)
        print(f"harness: torch.compile unavailable ({exc}); running eagerly", file=sys.stderr)
        return None


def to_device(x: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """A host batch on ``device``: through pinned memory, asynchronously, on CUDA."""
    if torch.device(device).type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
