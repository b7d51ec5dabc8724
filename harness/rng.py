"""Explicit randomness: every draw is a function of (the example's seed, how many values
that example has drawn so far), so any example can be recomputed alone and the rows do not
depend on batch size, shard size or the number of ranks.

The generator is counter-based: Philox4x32-10 (Salmon et al., "Parallel random numbers: as
easy as 1, 2, 3", SC'11; the Random123 reference), keyed per example by its 64-bit seed and
run on a 128-bit counter. One draw for a whole batch is one pure function of (keys,
counters), with no Python loop over examples:
- CPU (the default): one C call (harness/rng_native.c, built on first use for the CPU it runs
  on; harness/rng_native.py) computes the blocks and the normal transform and advances the
  counters: about one `torch.randn` of the batch. Where it cannot be built or loaded (no C
  compiler) or HARNESS_RNG_NATIVE=0, the same arithmetic runs in numpy (Philox in uint64,
  exact 32x32-bit products), with the same bits.
- CUDA: the Philox part is compiled with torch.compile into one fused kernel (a fixed ~150
  element-wise kernels in eager where compile fails), then Box-Muller takes 4 eager kernels
  (log, mul, sqrt, polar); the counter update is one more. Compiled once per process and
  device type, with dynamic shapes (no recompile for a new batch size or image shape); by
  default on CUDA only (HARNESS_RNG_COMPILE=1: on CPU too, instead of the native call; 0:
  never). Where compile fails (no C compiler, no Triton, an old torch) eager serves, with the
  same bits.
The path is chosen when an ExampleNoise is made; `draw` reads the settings at every call.

The rule (what makes rows reproducible)
---------------------------------------
- Example i has the key (k0, k1) = (low, high 32 bits of seed_i mod 2**64) and a counter
  n_i of Philox blocks used so far, starting at 0. A block is one Philox call: 4 words.
- A draw of m values per row (randn / randn_like / rand / rand_like) takes B = ceil(m / 4)
  blocks for each row: row r of example i uses the blocks n_i + o_r*B .. n_i + o_r*B + B - 1
  (block b has the counter words (b mod 2**32, b div 2**32, 0, 0)), then n_i advances by
  (the number of rows of the view that belong to example i) * B. o_r is the number of rows
  before r in the same view that belong to the same example: 0 in a plain batch, j for copy
  j made by `tile` (copy j of example i takes example i's j-th successive draw, as
  successive draws from one shared generator did before).
- Value v of a row comes from word v of its 4*B words (block order, words w0..w3 of each
  block); the last block's unused words are dropped (its block is still counted).
- Subset views (`subset`, `tile`) share their parent's counters, as views shared generators.
So a row's values depend on its example's seed and on the shapes of that example's earlier
draws, never on the batch it is drawn in, its position, the shard or the rank.

Floats (float32 math, then cast to the asked dtype)
---------------------------------------------------
- uniform: u = (word >> 8) * 2**-24, exact: the 2**24 evenly spaced points of [0, 1).
- normal: Box-Muller on the word pairs (w0, w1) and (w2, w3) of each block:
  u1 = float32(w0 + 1) * 2**-32 in (0, 1] (correctly rounded), theta = 2 pi (w1 >> 8) 2**-24
  (float32(2 pi) times the exact fraction, rounded once), z0 = sqrt(-2 ln u1) cos theta,
  z1 = sqrt(-2 ln u1) sin theta. |z| <= sqrt(64 ln 2) = 6.66 (the normal's mass beyond is
  2.7e-11); the radius has the resolution of float32 near u1 = 1 (no |z| in (0, 3.5e-4) but
  0), the angle 2**-24 of a turn. A float64 request gets these float32 values, cast.
- The transform on CPU is our own float64 arithmetic (`_np_box_muller`: series for log, sin
  and cos from +, -, *, / and sqrt alone, rounded to float32 at the end; every value within
  one float32 ulp of the exact transform of its words), the same operations in the same order
  in C and in numpy, so the two give the same bits on any CPU and vector width. On CUDA it is
  ATen's float32 log, sqrt and torch.polar (within a few ulps).
- u1 and theta are exact functions of the words, and only they come out of the compiled
  kernel: the compiled and eager paths give the same bits (compiled code's log/sin/cos
  differ from ATen's in the last ulp, so the transform stays eager). CUDA gives the same
  words and uniforms as CPU; its normals may differ in the last ulps.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from typing import Callable, Sequence

import numpy as np
import torch

from harness import rng_native

log = logging.getLogger(__name__)

_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1
# Philox4x32 multipliers and Weyl key increments (Random123).
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_ROUNDS = 10

# HARNESS_RNG_COMPILE=0 (or false/no/off/eager): never compile the draw; 1: compile it wherever
# torch.compile works; unset (auto): compile on CUDA only. Read at every draw.
COMPILE_ENV = "HARNESS_RNG_COMPILE"


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts (stable across processes and machines)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ------------------------------------------------------------------ the pure function

def _mulhilo(x: torch.Tensor, m_lo: torch.Tensor | int, m_hi: torch.Tensor | int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of x * m for x, m < 2**32, exact in int64: m = m_hi*2**16 + m_lo,
    so both partial products are < 2**48 and no intermediate exceeds 2**49."""
    a = x * m_lo
    b = x * m_hi
    lo = (a + ((b & 0xFFFF) << 16)) & _M32
    hi = (b + (a >> 16)) >> 16
    return hi, lo


def _rounds_paired(even: torch.Tensor, odd: torch.Tensor, keys: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The 10 Philox4x32 rounds on the state held as even = (c0, c2), odd = (c1, c3) in a last
    dimension of size 2, keys = (k0, k1) likewise: the two multiplications of a round share one
    tensor, 13 element-wise kernels a round (the eager form)."""
    dev = even.device
    m = torch.tensor(_PHILOX_M, dtype=torch.int64, device=dev)
    m_lo, m_hi = m & 0xFFFF, m >> 16
    w = torch.tensor(_PHILOX_W, dtype=torch.int64, device=dev)
    for r in range(_ROUNDS):
        kr = (keys + r * w) & _M32 if r else keys
        hi, lo = _mulhilo(even, m_lo, m_hi)
        # (c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
        even = hi.flip(-1) ^ odd ^ kr
        odd = lo.flip(-1)
    return even, odd


def _rounds_words(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,
                  k0: torch.Tensor, k1: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same rounds on four separate words (the form compiled: one fused loop over blocks
    computing the four words together; the paired form's flips would make compiled code
    compute each lane's whole chain once per lane)."""
    (m0, m1), (w0, w1) = _PHILOX_M, _PHILOX_W
    for _ in range(_ROUNDS):
        hi0, lo0 = _mulhilo(c0, m0 & 0xFFFF, m0 >> 16)
        hi1, lo1 = _mulhilo(c2, m1 & 0xFFFF, m1 >> 16)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + w0) & _M32, (k1 + w1) & _M32
    return c0, c1, c2, c3


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return bool(compiler.is_compiling())
    return bool(torch._dynamo.is_compiling())  # torch < 2.3


def philox4x32(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,
               k0: torch.Tensor, k1: torch.Tensor, paired: bool = True) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 on broadcastable int64 tensors holding 32-bit words: the 4 output words
    (both forms are checked against Random123's known-answer vectors in the tests)."""
    c0, c1, c2, c3, k0, k1 = torch.broadcast_tensors(c0, c1, c2, c3, k0, k1)
    if not paired:
        return _rounds_words(c0, c1, c2, c3, k0, k1)
    even, odd = _rounds_paired(torch.stack((c0, c2), -1), torch.stack((c1, c3), -1),
                               torch.stack((k0, k1), -1))
    return even[..., 0], odd[..., 0], even[..., 1], odd[..., 1]


def _words(key: torch.Tensor, start: torch.Tensor, blocks: int) -> tuple[torch.Tensor, ...]:
    """Words (w0, w1, w2, w3), each int64 [R, blocks], of Philox blocks start[r] ..
    start[r] + blocks - 1 under key[r]; block b's counter is (b mod 2**32, b div 2**32, 0, 0)."""
    b = start.unsqueeze(1) + torch.arange(blocks, dtype=torch.int64, device=key.device)  # [R, B]
    zero = torch.zeros_like(b)
    if _compiling():
        return _rounds_words(b & _M32, b >> 32, zero, zero, key[:, 0:1], key[:, 1:2])
    even, odd = _rounds_paired(torch.stack((b & _M32, zero), -1), torch.stack((b >> 32, zero), -1),
                               key.unsqueeze(1))
    return even[..., 0], odd[..., 0], even[..., 1], odd[..., 1]


_TWO_PI = float(torch.tensor(2 * math.pi, dtype=torch.float32))  # exactly a float32


def _u1(w: torch.Tensor) -> torch.Tensor:
    return ((w + 1).to(torch.float64) * (2.0 ** -32)).to(torch.float32)       # (0, 1]


def _theta(w: torch.Tensor) -> torch.Tensor:
    return ((w >> 8).to(torch.float32) * (2.0 ** -24)) * _TWO_PI                # [0, 2 pi)


def _uniform(w: torch.Tensor) -> torch.Tensor:
    return (w >> 8).to(torch.float32) * (2.0 ** -24)                             # [0, 1)


def box_muller_inputs(key: torch.Tensor, start: torch.Tensor, blocks: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(u1, theta), float32 [R, blocks, 2] each, for the word pairs (w0, w1), (w2, w3) of each
    row's blocks: u1 from w0 | w2, theta from w1 | w3. Exact functions of the words (a
    correctly rounded conversion, products with powers of two, one correctly rounded
    product), so any backend gives the same bits."""
    w0, w1, w2, w3 = _words(key, start, blocks)
    if _compiling():  # one fused loop writing every slice
        return torch.stack((_u1(w0), _u1(w2)), -1), torch.stack((_theta(w1), _theta(w3)), -1)
    return _u1(torch.stack((w0, w2), -1)), _theta(torch.stack((w1, w3), -1))


def uniform_blocks(key: torch.Tensor, start: torch.Tensor, blocks: int) -> torch.Tensor:
    """float32 [R, blocks, 4]: uniforms on [0, 1) (24 bits, exact) from each row's blocks."""
    w = _words(key, start, blocks)
    if _compiling():
        return torch.stack([_uniform(x) for x in w], -1)
    return _uniform(torch.stack(w, -1))


def _box_muller(u1: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """float32 [R, B, 2, 2]: (r cos theta, r sin theta) with r = sqrt(-2 ln u1), per pair.

    On CPU: the float64 arithmetic of `_np_box_muller` (the native draw's, bit for bit). On
    other devices: ATen, 4 eager kernels (log, mul, sqrt, polar): the transcendental functions
    of ATen and of compiled code differ in the last ulp, so the compiled part stops before them
    and both paths agree. torch.polar rather than cos, sin and two products: one kernel."""
    if u1.device.type == "cpu":
        return torch.from_numpy(_np_box_muller(u1.numpy(), theta.numpy()))
    radius = torch.log(u1).mul_(-2.0).sqrt_()
    return torch.view_as_real(torch.polar(radius, theta))


# The CPU transform: float64 +, -, *, /, sqrt and correctly rounded conversions only, one ufunc
# per operation, in exactly the order of harness/rng_native.c's `transform` (which the native
# library's self-check and the tests compare bit for bit). ln u1 = e ln 2 + 2 atanh(s),
# s = (m - 1) / (m + 1), u1 = m 2**e with m in [sqrt 1/2, sqrt 2); theta = q pi/2 + a with
# |a| <= pi/4; series to s**11, a**11 and a**12: errors below 1e-10, far under float32's half
# ulp (3e-8); the tests check every value within one float32 ulp of the exact transform.
_LN2 = 0.69314718055994530942
_PIO2 = 1.57079632679489661923
_TWO_OVER_PI = 0.63661977236758134308
_ROUNDER = 6755399441055744.0  # 1.5 * 2**52: adding it rounds to an integer
_LOG_SERIES = [1.0 / 9, 1.0 / 7, 1.0 / 5, 1.0 / 3, 1.0]                  # after 1/11
_SIN_SERIES = [1.0 / 362880.0, -1.0 / 5040.0, 1.0 / 120.0, -1.0 / 6.0]    # after -1/11!
_COS_SERIES = [-1.0 / 3628800.0, 1.0 / 40320.0, -1.0 / 720.0, 1.0 / 24.0, -0.5, 1.0]  # after 1/12!


def _horner(first: float, rest: list[float], x: np.ndarray) -> np.ndarray:
    p = np.full_like(x, first)
    for c in rest:
        p *= x
        p += c
    return p


def _np_box_muller(u1: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """float32 [..., 2]: (r cos theta, r sin theta), r = sqrt(-2 ln u1), for float32 u1 in
    (0, 1] and theta in [0, 2 pi) (the CPU transform; see above)."""
    b = np.ascontiguousarray(u1, dtype=np.float32).view(np.uint32)
    e = (b >> np.uint32(23)).astype(np.int32) - 127
    mant = b & np.uint32(0x7FFFFF)
    big = (mant > np.uint32(0x3504F3)).astype(np.int32)                 # m > sqrt 2
    mb = mant | ((127 - big).astype(np.uint32) << np.uint32(23))
    e += big
    m = mb.view(np.float32).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    p = _horner(1.0 / 11, _LOG_SERIES, s * s)
    lnu = e.astype(np.float64) * _LN2 + (2.0 * s) * p
    rad = np.sqrt(-2.0 * lnu)
    t = theta.astype(np.float64)
    qd = t * _TWO_OVER_PI + _ROUNDER
    q = (qd.view(np.uint64) & np.uint64(3)).astype(np.int32)             # quadrant
    qd -= _ROUNDER
    a = t - qd * _PIO2
    a2 = a * a
    sn = (_horner(-1.0 / 39916800.0, _SIN_SERIES, a2) * a2) * a + a
    cs = _horner(1.0 / 479001600.0, _COS_SERIES, a2)
    odd = (q & 1).astype(bool)
    c, sv = np.where(odd, sn, cs), np.where(odd, cs, sn)
    c = np.where((((q + 1) >> 1) & 1).astype(bool), -c, c)
    sv = np.where(((q >> 1) & 1).astype(bool), -sv, sv)
    return np.stack(((rad * c).astype(np.float32), (rad * sv).astype(np.float32)), -1)


# ------------------------------------------------------------------ eager on CPU: numpy

# The eager torch form costs ~15 dispatched kernels a round (int64 has no 32x32->64 bit
# product, so each product is emulated from 16-bit halves), ~1 ms for a batch of 64 digits on
# one core, most of it per-call overhead. numpy's uint64 multiplies exactly and wraps by
# definition, and a ufunc call costs ~1 us: 6 calls a round, ~6x faster at that size and ~3x at
# 1,280 x 3x32x32. Same words, same float conversions (correctly rounded casts and float32
# products), so the same bits as the torch forms (tests: known answers and equality).
NUMPY_ON_CPU = True  # tests switch it off to exercise the torch eager form on CPU

_NP_M = np.array(_PHILOX_M, dtype=np.uint64)
_NP_W = np.array(_PHILOX_W, dtype=np.uint64)
_NP_M32 = np.uint64(_M32)
_NP_TWO_PI = np.float32(2 * math.pi)


def philox4x32_np(ctr: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Philox4x32-10 in numpy on uint64 arrays holding 32-bit words: ctr [4, ...] and key
    [2, ...] (broadcastable after the first axis). Returns (even, odd) = ((w0, w2), (w1, w3))
    as [2, ...] arrays. The lane pair is the first axis so that every ufunc runs long
    contiguous inner loops (a last axis of 2 made numpy's loops 2 elements long, 5x slower)."""
    even, odd = ctr[0::2], ctr[1::2]
    m = _NP_M.reshape(2, *([1] * (ctr.ndim - 1)))
    # the 10 round keys at once: k + r * (Weyl increments) mod 2**32
    steps = np.arange(_ROUNDS, dtype=np.uint64).reshape(_ROUNDS, *([1] * key.ndim))
    keys = (key.astype(np.uint64)[None] + steps * _NP_W.reshape(2, *([1] * (key.ndim - 1)))) & _NP_M32
    for r in range(_ROUNDS):
        p = even * m                                    # (c0 m0, c2 m1), exact in uint64
        even = (p >> np.uint64(32))[::-1] ^ odd ^ keys[r]  # (hi1 ^ c1 ^ k0, hi0 ^ c3 ^ k1)
        p &= _NP_M32
        odd = p[::-1]                                   # (lo1, lo0)
    return even, odd


def _np_blocks(key: torch.Tensor, start: torch.Tensor, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """(even, odd) [2, R, blocks] of each row's blocks (counter (b mod 2**32, b div 2**32, 0, 0))."""
    k = key.numpy().astype(np.uint64).T[:, :, None]                                  # [2, R, 1]
    b = start.numpy().astype(np.uint64)[:, None] + np.arange(blocks, dtype=np.uint64)  # [R, B]
    ctr = np.zeros((4, *b.shape), dtype=np.uint64)
    np.bitwise_and(b, _NP_M32, out=ctr[0])
    np.right_shift(b, np.uint64(32), out=ctr[1])
    return philox4x32_np(ctr, k)


def _np_box_muller_inputs(key: torch.Tensor, start: torch.Tensor, blocks: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(u1, theta) float32 [R, blocks, 2], as box_muller_inputs."""
    even, odd = _np_blocks(key, start, blocks)
    u1 = ((even + np.uint64(1)).astype(np.float64) * 2.0 ** -32).astype(np.float32)
    theta = ((odd >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24)) * _NP_TWO_PI
    return (torch.from_numpy(np.ascontiguousarray(u1.transpose(1, 2, 0))),
            torch.from_numpy(np.ascontiguousarray(theta.transpose(1, 2, 0))))


def _np_uniform_blocks(key: torch.Tensor, start: torch.Tensor, blocks: int) -> torch.Tensor:
    """float32 [R, blocks, 4], as uniform_blocks."""
    even, odd = _np_blocks(key, start, blocks)
    w = np.stack((even[0], odd[0], even[1], odd[1]), -1)
    return torch.from_numpy((w >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24))


_NUMPY = {"normal": _np_box_muller_inputs, "uniform": _np_uniform_blocks}


def numpy_draw(kind: str, key: torch.Tensor, start: torch.Tensor, blocks: int) -> torch.Tensor:
    """float32 [R, 4*blocks] as `draw` on CPU, wholly in numpy: what the native draw must equal."""
    return _values(kind, _NUMPY[kind](key, start, blocks))


def _values(kind: str, out: object) -> torch.Tensor:
    """float32 [R, 4*blocks] from a pure draw's output: (u1, theta) transformed for "normal",
    the uniforms [R, blocks, 4] as they are."""
    if kind == "normal":
        out = _box_muller(*out)
    return out.reshape(out.shape[0], -1)


NUMPY_REFERENCE = rng_native.Reference(draw=numpy_draw, transform=_box_muller)


def _eager(kind: str, key: torch.Tensor, start: torch.Tensor, blocks: int) -> object:
    """The uncompiled draw: numpy on CPU, the torch form elsewhere (a GPU whose compile failed)."""
    if NUMPY_ON_CPU and key.device.type == "cpu":
        return _NUMPY[kind](key, start, blocks)
    return _EAGER[kind](key, start, blocks)


# ------------------------------------------------------------------ compile, with a fallback

_EAGER: dict[str, Callable[..., object]] = {"normal": box_muller_inputs, "uniform": uniform_blocks}
_compiled: dict[tuple[str, str], Callable[..., object] | None] = {}
_lock = threading.Lock()


def _want_compile(device: torch.device) -> bool:
    # auto: on CUDA only. On CPU the native C draw is faster still, and compiling costs 4-12 s
    # of start-up in every process (each array task, each test's child process); the bits
    # are the same.
    setting = os.environ.get(COMPILE_ENV, "auto").strip().lower()
    if setting in ("0", "false", "no", "off", "eager"):
        return False
    if setting == "auto" and device.type != "cuda":
        return False
    return hasattr(torch, "compile")


def compiled_kernel(kind: str, device: torch.device) -> Callable[..., object] | None:
    """The torch.compile'd pure function for `kind` ("normal" | "uniform") on device's type,
    or None where compiling is off or failed (then the eager function serves).

    Compiled once per process with dynamic shapes, first on a (3 rows, 2 blocks) dummy so
    that no size is specialised (callers pad 1 row or 1 block to 2): every later batch size
    reuses the same kernel."""
    if not _want_compile(device):
        return None
    k = (kind, device.type)
    with _lock:
        if k not in _compiled:
            fn = None
            try:
                fn = torch.compile(_EAGER[kind], dynamic=True, fullgraph=True)
                with torch.inference_mode(False), torch.no_grad(), \
                        torch.autocast(device.type, enabled=False):  # the state draw() runs in
                    key = torch.tensor([[1, 2], [3, 4], [5, 6]], dtype=torch.int64, device=device)
                    start = torch.tensor([0, 7, 9], dtype=torch.int64, device=device)
                    got, want = fn(key, start, 2), _EAGER[kind](key, start, 2)
                    if kind == "normal":
                        got, want = (torch.cat([t.flatten() for t in x]) for x in (got, want))
                    if not torch.equal(got, want):
                        raise RuntimeError("compiled draw differs from eager")
            except Exception as e:  # no C compiler, unsupported platform or backend, ...
                log.warning("torch.compile of the noise draw is unavailable on %s (%s: %s); using eager",
                            device.type, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
                fn = None
            _compiled[k] = fn
        return _compiled[k]


def _run(kind: str, key: torch.Tensor, start: torch.Tensor, blocks: int,
         compiled: bool | None = None) -> tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor], bool]:
    """The pure function for `kind` on rows (key, start), compiled where that works
    (compiled=None: as configured; True/False: force, for tests). Returns (its output
    sliced to R rows and `blocks` blocks, whether the compiled path ran)."""
    fn = compiled_kernel(kind, key.device) if compiled is not False else None
    if compiled and fn is None:
        raise RuntimeError(f"the compiled noise draw is unavailable on {key.device.type}")
    if fn is None:
        return _eager(kind, key, start, blocks), False
    rows = key.shape[0]
    padded = (key.repeat(2, 1), start.repeat(2)) if rows < 2 else (key, start)
    try:  # sizes 0 and 1 would be specialised (a recompile): 1 row or 1 block is padded to 2
        out = fn(*padded, max(blocks, 2))
    except Exception as e:  # a recompile that fails (new guards): eager gives the same values
        log.warning("compiled noise draw failed on %s (%s: %s); using eager from now on",
                    key.device.type, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        with _lock:
            _compiled[(kind, key.device.type)] = None
        if compiled:
            raise
        return _eager(kind, key, start, blocks), False
    if kind == "normal":
        return (out[0][:rows, :blocks], out[1][:rows, :blocks]), True
    return out[:rows, :blocks], True


def compile_status(device: torch.device | str = "cpu") -> str:
    """'compiled', 'eager' (compile off or failed) or 'untried', for this device's type."""
    device = torch.device(device)
    if not _want_compile(device):
        return "eager"
    states = [_compiled.get((k, device.type), "untried") for k in _EAGER]
    if any(s is None for s in states):
        return "eager"
    return "untried" if any(s == "untried" for s in states) else "compiled"


def draw(kind: str, key: torch.Tensor, start: torch.Tensor, blocks: int,
         compiled: bool | None = None) -> tuple[torch.Tensor, bool]:
    """float32 [R, 4*blocks]: `kind` ("normal" | "uniform") values from Philox blocks
    start[r] .. start[r] + blocks - 1 under key[r] (int64 [R, 2] and [R], on one device),
    and whether the compiled path ran. The whole pure draw; ExampleNoise keeps the counters."""
    dev = key.device.type
    if dev == "cpu" and compiled is not True and not (compiled is None and _want_compile(key.device)):
        out = rng_native.draw(kind, key, start, blocks, NUMPY_REFERENCE)  # None where off or unavailable
        if out is not None:
            return out, False
    if torch.is_grad_enabled() or torch.is_inference_mode_enabled() or _autocast_on(dev):
        # one global state for the compiled draw (each state would be another compile)
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(dev, enabled=False):
            return draw(kind, key, start, blocks, compiled)
    out, ran = _run(kind, key, start, blocks, compiled)
    return _values(kind, out), ran


# ------------------------------------------------------------------ the per-example source

def _autocast_on(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except (TypeError, RuntimeError):  # torch < 2.4: no device argument
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())


def _key_words(seeds: Sequence[int]) -> list[list[int]]:
    out = []
    for s in seeds:
        s = int(s) & _M64
        out.append([s & _M32, s >> 32])
    return out


def _ordinals(index: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per row: rows before it with the same example, per example: its rows), vectorised."""
    counts = torch.bincount(index, minlength=n)
    if index.numel() == 0:
        return torch.zeros_like(index), counts
    ex_sorted, perm = torch.sort(index, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    ordinal = torch.empty_like(index)
    ordinal[perm] = torch.arange(index.numel(), device=index.device) - starts[ex_sorted]
    return ordinal, counts


class ExampleNoise:
    """Random draws for a batch in which row i is always a function of example i's seed and
    of the number of values example i has drawn before (the module docstring's rule).

    `subset(index)` gives a view over some rows (sharing counters), which the attack uses
    when only part of a batch is still being attacked; `tile` makes EOT copies.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self._root_seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        n = len(self._root_seeds)
        # Counters are plain tensors even when built under inference_mode: views update them in place.
        with torch.inference_mode(False):
            self._counter = torch.zeros(n, dtype=torch.int64, device=self.device)
            keys = torch.tensor(_key_words(self._root_seeds), dtype=torch.int64).view(n, 2)
            self._root_key = keys.to(self.device)
            self._key = self._root_key  # per row: (k0, k1)
            self._index = torch.arange(n, dtype=torch.int64, device=self.device)
            self._ordinal = torch.zeros(n, dtype=torch.int64, device=self.device)
        self._counts: torch.Tensor | None = None  # None: one row per example (the identity)
        self.last_compiled: bool | None = None    # which path the last draw took
        # CPU and not compiling: the native C draw where it is available (chosen when made)
        self._native = self.device.type == "cpu" and not _want_compile(self.device)

    # ---- views

    @property
    def seeds(self) -> list[int]:
        if self._counts is None:
            return list(self._root_seeds)
        return [self._root_seeds[i] for i in self._index.tolist()]

    def __len__(self) -> int:
        return self._index.numel()

    def subset(self, index: torch.Tensor | Sequence[int]) -> "ExampleNoise":
        """A view over rows `index` of this one (integer indices, repeats allowed, or a boolean
        mask); draws through it advance the same per-example counters."""
        idx = torch.as_tensor(index, device=self._index.device)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = idx.to(torch.int64).flatten()
        sub = ExampleNoise.__new__(ExampleNoise)
        sub._root_seeds = self._root_seeds
        sub.device = self.device
        sub._counter = self._counter
        sub._root_key = self._root_key
        with torch.inference_mode(False):
            sub._index = self._index[idx]
            sub._key = self._root_key[sub._index]
            sub._ordinal, sub._counts = _ordinals(sub._index, len(self._root_seeds))
        sub.last_compiled = None
        sub._native = self._native
        return sub

    # ---- draws

    def _draw(self, kind: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        m = math.prod(shape)
        rows = len(self)
        if rows == 0 or m == 0:
            return torch.zeros((rows, *shape), dtype=dtype, device=self.device)
        blocks = -(-m // 4)
        out = self._advance(kind, blocks)
        if out.shape[1] != m:
            out = out[:, :m]
        out = out.reshape(rows, *shape)
        return out if dtype == torch.float32 else out.to(dtype)

    def _advance(self, kind: str, blocks: int) -> torch.Tensor:
        """Each row's next `blocks` blocks as float32 [R, 4*blocks]; advances the counters."""
        if self._counts is None and self._native:
            # CPU's default: one C call draws and advances the counters (no tensor ops at all)
            fn = rng_native.kernel(kind, NUMPY_REFERENCE)
            if fn is not None:
                self.last_compiled = False
                return rng_native.call(fn, self._key, self._counter, blocks, advance=True)
        if self._counts is None:
            start = self._counter  # read before the update below
        else:
            start = self._counter[self._index] + self._ordinal * blocks
        out, self.last_compiled = draw(kind, self._key, start, blocks)
        if self._counts is None:
            self._counter.add_(blocks)
        else:
            self._counter.add_(self._counts, alpha=blocks)
        return out

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A tensor [len(self), *shape]: one independent standard-normal draw per row."""
        return self._draw("normal", shape, dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self):
            raise ValueError(f"batch of {x.shape[0]} but noise for {len(self)} examples")
        return self.randn(tuple(x.shape[1:]), x.dtype)

    def rand(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A tensor [len(self), *shape]: one independent uniform [0, 1) draw per row."""
        return self._draw("uniform", shape, dtype)

    def rand_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self):
            raise ValueError(f"batch of {x.shape[0]} but noise for {len(self)} examples")
        return self.rand(tuple(x.shape[1:]), x.dtype)


def tile(noise: ExampleNoise, times: int) -> ExampleNoise:
    """Noise for a batch repeated `times` (EOT copies): copy j of example i takes example i's
    j-th successive draw (a draw of B blocks per example advances its counter by times*B), so
    the draws stay a function of the example alone."""
    return noise.subset(torch.arange(len(noise)).repeat(times))
