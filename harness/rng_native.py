"""The CPU noise draw as one compiled C function (harness/rng_native.c), built on first use.

Why: on CPU a draw in numpy or torch ops is ~30 calls, each with a fixed cost, so a draw for
64 digits cost ~12x one `torch.randn` of the batch; one C pass over the blocks (Philox, then the
normal transform, vectorised by the compiler) costs about what `torch.randn` does.

How: the source is compiled with the system C compiler ($CC, else cc) for the CPU it runs on
(-march=native; -O3 alone where that is refused) into a cache directory keyed by the source, the
compiler, the machine and its CPU flags, so a cluster whose login and compute nodes differ
builds one library per CPU kind, and concurrent ranks race harmlessly (atomic rename). It is
loaded with ctypes (no Python headers, no torch extension build: ~0.3 s once) and then checked
bit for bit against the numpy form on blocks chosen to reach every branch; where there is no
compiler, the build fails or the check differs, the numpy form serves (the same bits), with one
warning. HARNESS_RNG_NATIVE=0 turns it off; HARNESS_CACHE_DIR moves the cache.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, NamedTuple

import torch

log = logging.getLogger(__name__)

NATIVE_ENV = "HARNESS_RNG_NATIVE"
SOURCE = Path(__file__).with_name("rng_native.c")
_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared"]
_ARGS = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int32]

_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib": the loaded library or None (unavailable), "why": reason


def enabled() -> bool:
    """False where HARNESS_RNG_NATIVE says 0 / false / no / off (read at every draw)."""
    return os.environ.get(NATIVE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("flags", "Features"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cache_dir() -> Path:
    root = os.environ.get("HARNESS_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    base = Path(root) if root else Path.home() / ".cache"
    if not os.environ.get("HARNESS_CACHE_DIR"):
        base = base / "lorid-harness"
    return base / "native"


def _compiler() -> str | None:
    cc = os.environ.get("CC", "cc").split()
    return shutil.which(cc[0]) if cc else None


def _build(cc: str) -> Path:
    """The library for this source, compiler and CPU, built unless the cache has it."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    ident = hashlib.sha256("\0".join([SOURCE.read_text(), cc, version, platform.machine(),
                                      _cpu_flags(), " ".join(_FLAGS)]).encode()).hexdigest()[:20]
    target = _cache_dir() / ident / "libharness_rng.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        errors = []
        for arch in (["-march=native"], []):  # some compilers refuse -march=native (aarch64: -mcpu)
            cmd = [cc, *_FLAGS, *arch, "-o", tmp, str(SOURCE)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                os.replace(tmp, target)  # atomic: concurrent builders each install a whole file
                return target
            errors.append(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "")
        raise RuntimeError(f"{cc} failed: {' | '.join(errors)}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Reference(NamedTuple):
    """What the library must equal bit for bit (harness.rng.NUMPY_REFERENCE: the numpy forms)."""
    draw: Callable[[str, torch.Tensor, torch.Tensor, int], torch.Tensor]  # (kind, key, start, blocks)
    transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]       # (u1, theta) -> [..., 2]


def self_check(lib: ctypes.CDLL, reference: Reference) -> None:
    """The library's draws must equal the reference's bit for bit, on
    rows crossing counter 2**32, rows past one C tile of blocks and the edge keys, and its
    transform must equal the reference's on the edge inputs (`edge_inputs`): else it is not
    used."""
    key = torch.tensor([[0, 0], [0xFFFFFFFF, 0xFFFFFFFF], [0x243F6A88, 0x85A308D3]] * 3,
                       dtype=torch.int64)
    start = torch.tensor([0, (1 << 32) - 3, 12345, 7, 1 << 40, 99, 1, 2, 3], dtype=torch.int64)
    for kind, fn in (("normal", lib.harness_philox_normal), ("uniform", lib.harness_philox_uniform)):
        got = call(fn, key, start, 131)
        want = reference.draw(kind, key, start, 131)
        if not torch.equal(got, want):
            bad = int((got != want).sum())
            raise RuntimeError(f"{kind} draws differ from the numpy form in {bad} of {got.numel()} values")
    u1, theta = edge_inputs()
    u1, theta = u1.reshape(1, -1, 1), theta.reshape(1, -1, 1)
    got = transform(lib, u1, theta)
    want = reference.transform(u1, theta)
    if not torch.equal(got, want):
        raise RuntimeError(f"the normal transform differs from the numpy form in {int((got != want).sum())} "
                           f"of {got.numel()} values")


def edge_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """(u1, theta) float32 pairs on the transform's edges: u1 = 1, 2**-32, either side of the
    sqrt 2 fold and of powers of two; theta at and either side of every octant boundary (where
    the quadrant rounding turns) and at 0."""
    fold = torch.tensor(0.5 ** 0.5, dtype=torch.float32)
    u1 = [torch.tensor([1.0, 2.0 ** -32, 0.5, 0.25, 1 - 2.0 ** -24])]
    for p in range(0, 33, 4):
        scale = torch.tensor(2.0 ** -p)
        u1 += [torch.nextafter(fold, torch.tensor(0.0)) * scale, fold * scale,
               torch.nextafter(fold, torch.tensor(1.0)) * scale]
    u1 = torch.cat([x.reshape(-1) for x in u1]).to(torch.float32)
    k = (torch.arange(-3, 4)[:, None] + (torch.arange(9) << 21)[None, :]).reshape(-1)
    k = k[(k >= 0) & (k < 1 << 24)]
    theta = (k.to(torch.float32) * 2.0 ** -24) * torch.tensor(6.283185307179586, dtype=torch.float32)
    return (u1.repeat_interleave(theta.numel()).contiguous(), theta.repeat(u1.numel()).contiguous())


def transform(lib: ctypes.CDLL, u1: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The library's normal transform: float32 [..., 2] (r cos theta, r sin theta) per pair."""
    a = u1.to(torch.float32).contiguous().reshape(-1)
    t = theta.to(torch.float32).contiguous().reshape(-1)
    z = torch.empty(2, a.numel(), dtype=torch.float32)
    lib.harness_normal_transform(a.numel(), a.data_ptr(), t.data_ptr(), z[0].data_ptr(), z[1].data_ptr())
    return z.T.reshape(*u1.shape, 2)


def call(fn: Callable[..., None], key: torch.Tensor, start: torch.Tensor, blocks: int,
         advance: bool = False) -> torch.Tensor:
    """float32 [R, 4*blocks] from `fn` (`kernel(kind)`) for int64 CPU key [R, 2] and start [R].
    advance: start is the rows' counters and gets += blocks (in place, so it must be
    contiguous: a copy would be advanced instead)."""
    if advance and not start.is_contiguous():
        raise ValueError("advance needs contiguous counters")
    key = key.contiguous()
    start = start.contiguous()
    if torch.is_inference_mode_enabled():  # draws are plain tensors, as the other paths give
        with torch.inference_mode(False):
            out = torch.empty(key.shape[0], 4 * blocks, dtype=torch.float32)
    else:
        out = torch.empty(key.shape[0], 4 * blocks, dtype=torch.float32)
    fn(key.data_ptr(), start.data_ptr(), key.shape[0], blocks, out.data_ptr(), int(advance))
    return out


def load(path: Path) -> ctypes.CDLL:
    """A built library, its functions' signatures declared (unchecked: see `library`)."""
    lib = ctypes.CDLL(str(path))
    for name in ("harness_philox_normal", "harness_philox_uniform"):
        getattr(lib, name).argtypes = _ARGS
        getattr(lib, name).restype = None
    lib.harness_normal_transform.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 4
    lib.harness_normal_transform.restype = None
    return lib


def library(reference: Reference) -> ctypes.CDLL | None:
    """The library, checked against `reference` when first loaded, or None where it is
    unavailable (the reason: `status()`)."""
    lib = _state.get("lib", False)
    if lib is not False:
        return lib  # type: ignore[return-value]
    with _lock:  # others wait here for the one build; the state is set once, at the end
        if "lib" not in _state:
            loaded, why = None, ""
            try:
                cc = _compiler()
                if cc is None:
                    raise RuntimeError(f"no C compiler ({os.environ.get('CC', 'cc')}) on PATH")
                loaded = load(_build(cc))
                self_check(loaded, reference)
            except Exception as e:  # no compiler, a read-only cache, a failed check, ...
                loaded, why = None, f"{type(e).__name__}: {e}"
                log.warning("the native CPU noise draw is unavailable (%s); using numpy (same values)", why)
            _state["why"] = why
            _state["lib"] = loaded
    return _state["lib"]  # type: ignore[return-value]


def status() -> str:
    """'native', 'off' (HARNESS_RNG_NATIVE=0), 'unavailable: <why>' or 'untried'."""
    if not enabled():
        return "off"
    if "lib" not in _state:
        return "untried"
    return "native" if _state["lib"] is not None else f"unavailable: {_state['why']}"


def kernel(kind: str, reference: Reference) -> Callable[..., None] | None:
    """The library's function for `kind` ("normal" | "uniform"), for `call`, or None where the
    library is off (HARNESS_RNG_NATIVE=0) or unavailable."""
    if not enabled() or sys.byteorder != "little":
        return None
    lib = library(reference)
    if lib is None:
        return None
    return lib.harness_philox_normal if kind == "normal" else lib.harness_philox_uniform


def draw(kind: str, key: torch.Tensor, start: torch.Tensor, blocks: int,
         reference: Reference) -> torch.Tensor | None:
    """float32 [R, 4*blocks] as `reference.draw` gives, or None where the
    library is off or unavailable (the caller then draws in numpy)."""
    fn = kernel(kind, reference) if key.device.type == "cpu" else None
    return None if fn is None else call(fn, key, start, blocks)


def reset() -> None:
    """Forget the loaded library (tests: build again under other settings)."""
    with _lock:
        _state.clear()
