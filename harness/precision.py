"""How the networks run on a device: precision, memory layout, compilation, backend flags.

On CUDA the default is bf16 autocast for the networks (denoiser, classifier) with their outputs
cast back to fp32, so the diffusion schedule's arithmetic (x0 from eps, the posterior mean,
the noise scale) stays fp32; channels_last; cudnn.benchmark; TF32 for the fp32 matmuls that
remain (not when fp32 is asked for: then fp32 means fp32). On CPU the default is fp32 and
nothing changes. The same wrapper runs on CPU when bf16 is asked for (CPU autocast), so the
code the GPU runs is the code the tests run.

Compilation is optional: ``HARNESS_COMPILE=1`` compiles the networks (``Network``) and the
sampler's arithmetic step (``compiled_function``; on a GPU its ~8 element-wise kernels become
one). A network or function whose compilation fails (no C compiler, an unsupported operator)
falls back to eager once, with a warning, and the rows are the same either way up to float
rounding.
"""
from __future__ import annotations

import os
import sys
from contextlib import nullcontext
import threading
from typing import Any, Callable

import torch
import torch.utils.checkpoint
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
        wanted = compile_wanted() if compile is None else compile
        compiled = _compile(self.module, dynamic=False) if wanted else None
        self._call = Guarded(self.module, compiled, type(self.module).__name__)

    def forward(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        context = (torch.autocast(self.device_type, dtype=torch.bfloat16) if self.precision == "bf16"
                   else nullcontext())
        with context:
            out = self._call(x, *args)
        return out.float()  # (the same tensor when it is fp32 already)


class Guarded:
    """``compiled`` called in place of ``eager`` until it fails: then one warning, and ``eager``
    for good (the values are the same up to float rounding). Exceptions that are not the compile
    failing (``passes_through``) propagate instead."""

    def __init__(self, eager: Callable[..., Any], compiled: Callable[..., Any] | None, name: str):
        self.eager, self.compiled, self.name = eager, compiled, name

    def __call__(self, *args: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as exc:  # noqa: BLE001 (inductor raises many kinds; eager still works)
                if passes_through(exc):
                    raise
                print(f"harness: torch.compile of {self.name} failed "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); running eagerly",
                      file=sys.stderr)
                self.compiled = None
        return self.eager(*args)


def passes_through(exc: BaseException) -> bool:
    """An exception from a compiled call that is not the compile failing, so no reason to fall
    back to eager: out of memory (the batch search halves on it), and the early stop that
    non-reentrant checkpointing raises through the forward it recomputes."""
    stop = getattr(torch.utils.checkpoint, "_StopRecomputationError", ())
    return isinstance(exc, (torch.OutOfMemoryError, stop))


def compile_wanted() -> bool:
    """HARNESS_COMPILE=1: compile the networks and the sampler step (read at each use)."""
    return os.environ.get("HARNESS_COMPILE", "0") == "1"


_FUNCTIONS: dict[Callable[..., Any], Guarded] = {}
_functions_lock = threading.Lock()


def compiled_function(fn: Callable[..., Any]) -> Guarded:
    """``fn`` compiled once per process (dynamic shapes: no recompile for a new batch size or
    step; floats are symbolic), called through a ``Guarded``: a compile that fails makes ``fn``
    itself serve from then on."""
    with _functions_lock:
        if fn not in _FUNCTIONS:
            _FUNCTIONS[fn] = Guarded(fn, _compile(fn, dynamic=True), fn.__name__)
        return _FUNCTIONS[fn]


def _compile(fn: Callable[..., Any], dynamic: bool) -> Any:
    try:
        return torch.compile(fn, dynamic=dynamic)
    except Exception as exc:  # noqa: BLE001 (compile unavailable on this platform)
        print(f"harness: torch.compile unavailable ({exc}); running eagerly", file=sys.stderr)
        return None


def to_device(x: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """A host batch on ``device``: through pinned memory, asynchronously, on CUDA."""
    if torch.device(device).type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
