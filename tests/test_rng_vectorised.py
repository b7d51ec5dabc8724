"""harness.rng: the counter-based per-example noise (Philox4x32-10, one vectorised draw).

Rows must depend only on (the example's seed, the shapes of its earlier draws): not on the
batch, the split into batches or ranks, the position in a view, nor on whether the compiled
or the eager path ran. Every test runs on whichever path this machine takes by default
(compiled where torch.compile works); `path` also forces eager.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness import rng, rng_native
from harness.rng import ExampleNoise, derive_seed, tile

SEEDS = [derive_seed("rng-test", i) for i in range(64)]


@pytest.fixture(params=["native", "compiled", "eager", "torch-eager"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every path: the native C draw (CPU's default), compiled (forced on CPU), uncompiled
    (numpy on CPU) and uncompiled in torch ops (what a GPU whose compile failed runs)."""
    monkeypatch.setenv(rng.COMPILE_ENV, "1" if request.param == "compiled" else "0")
    monkeypatch.setenv(rng_native.NATIVE_ENV, "1" if request.param == "native" else "0")
    if request.param == "native":
        assert rng_native.library(rng.NUMPY_REFERENCE) is not None, rng_native.status()
    monkeypatch.setattr(rng, "NUMPY_ON_CPU", request.param != "torch-eager")
    return request.param


@pytest.fixture
def compile_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled draw on CPU, which must work wherever a C++ compiler is (CI has one)."""
    import shutil

    monkeypatch.setenv(rng.COMPILE_ENV, "1")
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler: torch.compile cannot build CPU kernels here")
    assert rng.compiled_kernel("normal", torch.device("cpu")) is not None, "torch.compile failed on CPU"


def _draws(noise: ExampleNoise) -> torch.Tensor:
    """A fixed sequence of draws of mixed kinds and shapes (odd sizes: partial blocks), one row
    per example."""
    parts = [noise.randn((1, 8, 8)), noise.rand((3,)), noise.randn((5,)), noise.randn((2, 3, 3)),
             noise.rand((1,)), noise.randn((1,))]
    return torch.cat([p.flatten(1) for p in parts], 1)


def _split(seeds: list[int], size: int) -> torch.Tensor:
    return torch.cat([_draws(ExampleNoise(seeds[i:i + size])) for i in range(0, len(seeds), size)])


# ------------------------------------------------------------------ the generator itself

RANDOM123_KAT = [  # Random123's kat_vectors for philox4x32_R(10): counter, key, output
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("paired", [True, False])
def test_philox_known_answers(paired: bool) -> None:
    for ctr, key, expected in RANDOM123_KAT:
        words = [torch.tensor([v], dtype=torch.int64) for v in (*ctr, *key)]
        out = rng.philox4x32(*words, paired=paired)
        assert [int(w) for w in out] == list(expected)


def test_philox_known_answers_numpy() -> None:
    """The numpy form (CPU's uncompiled draw), on a batch of the three vectors at once."""
    ctr = np.array([c for c, _, _ in RANDOM123_KAT], dtype=np.uint64).T  # [4, 3]
    key = np.array([k for _, k, _ in RANDOM123_KAT], dtype=np.uint64).T  # [2, 3]
    even, odd = rng.philox4x32_np(ctr, key)
    got = np.stack((even[0], odd[0], even[1], odd[1]), -1)
    assert got.tolist() == [list(e) for _, _, e in RANDOM123_KAT]


@pytest.mark.parametrize("rows,blocks", [(1, 1), (2, 1), (1, 300), (7, 2), (64, 16), (300, 257)])
@pytest.mark.parametrize("kind", ["normal", "uniform"])
def test_native_numpy_and_torch_eager_agree_bit_for_bit(kind: str, rows: int, blocks: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    key = torch.tensor(rng._key_words([derive_seed("kat", i) for i in range(rows)]), dtype=torch.int64)
    start = torch.arange(rows, dtype=torch.int64) * 1_000_003 + (1 << 32) - 5  # crosses 2**32
    native = rng_native.draw(kind, key, start, blocks, rng.NUMPY_REFERENCE)
    assert native is not None, rng_native.status()
    monkeypatch.setenv(rng_native.NATIVE_ENV, "0")
    with_numpy, _ = rng.draw(kind, key, start, blocks, compiled=False)
    monkeypatch.setattr(rng, "NUMPY_ON_CPU", False)
    with_torch, _ = rng.draw(kind, key, start, blocks, compiled=False)
    assert with_numpy.dtype == torch.float32 and with_numpy.shape == (rows, 4 * blocks)
    assert torch.equal(with_numpy, with_torch)
    assert torch.equal(native, with_numpy)


def test_first_uniforms_are_the_known_block(path: str) -> None:
    """Seed 0 is key (0, 0), its first block is counter 0: Random123's first answer."""
    u = ExampleNoise([0]).rand((4,))
    expected = torch.tensor([(w >> 8) * 2.0 ** -24 for w in RANDOM123_KAT[0][2]], dtype=torch.float32)
    assert torch.equal(u[0], expected)


def test_seed_uses_all_64_bits() -> None:
    low = 12345
    a, b, c = ExampleNoise([low, low + (1 << 32), low + (1 << 62)]).randn((16,))
    assert not torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(b, c)
    assert ExampleNoise([-1]).randn((4,)).equal(ExampleNoise([(1 << 64) - 1]).randn((4,)))


# ------------------------------------------------------------------ rows independent of the batch

def test_rows_identical_for_batch_sizes_1_7_64(path: str) -> None:
    whole = _split(SEEDS, 64)
    assert torch.equal(whole, _split(SEEDS, 7))
    assert torch.equal(whole, _split(SEEDS, 1))


def test_rows_identical_for_one_or_two_ranks(path: str) -> None:
    whole = _draws(ExampleNoise(SEEDS))
    halves = torch.cat([_draws(ExampleNoise(SEEDS[:32])), _draws(ExampleNoise(SEEDS[32:]))])
    assert torch.equal(whole, halves)
    # an uneven split and a permuted batch: each row follows its seed
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0)).tolist()
    permuted = _draws(ExampleNoise([SEEDS[i] for i in perm]))
    assert torch.equal(permuted, whole[perm])


def test_rows_identical_in_large_batches(path: str) -> None:
    """Thousands of rows of a CIFAR-sized draw (parallel chunks, vector tails) still give each
    row the values it has alone."""
    seeds = [derive_seed("rng-large", i) for i in range(1500)]
    big = ExampleNoise(seeds).randn((3, 32, 33))
    for i in (0, 1, 777, 1499):
        assert torch.equal(big[i], ExampleNoise([seeds[i]]).randn((3, 32, 33))[0])


def test_counter_rule_blocks_of_four(path: str) -> None:
    """A draw of m values takes ceil(m/4) blocks: two draws of 4 are one draw of 8, and a
    draw of 5 uses 2 blocks (3 words dropped)."""
    s = SEEDS[:3]
    a = ExampleNoise(s)
    assert torch.equal(torch.cat([a.rand((4,)), a.rand((2, 2)).flatten(1)], 1), ExampleNoise(s).rand((8,)))
    b = ExampleNoise(s)
    first, then = b.rand((5,)), b.rand((4,))
    ref = ExampleNoise(s).rand((12,))
    assert torch.equal(first, ref[:, :5]) and torch.equal(then, ref[:, 8:12])
    # normals and uniforms share the counter; a normal value is a function of its block
    c = ExampleNoise(s)
    c.rand((3,))
    assert torch.equal(c.randn((6,)), ExampleNoise(s).randn((12,))[:, 4:10])


# ------------------------------------------------------------------ views: subset and tile

def test_subset_views_share_counters(path: str) -> None:
    seeds = SEEDS[:10]
    noise = ExampleNoise(seeds)
    rows = [3, 5, 7]
    view = noise.subset(torch.tensor(rows))
    assert len(view) == 3 and view.seeds == [seeds[i] for i in rows]
    first = view.randn((2, 3))
    after = noise.randn((2, 3))
    fresh = ExampleNoise(seeds)
    f1, f2 = fresh.randn((2, 3)), fresh.randn((2, 3))
    assert torch.equal(first, f1[rows])
    for i in range(10):  # the viewed rows are at their second draw, the others at their first
        assert torch.equal(after[i], (f2 if i in rows else f1)[i])
    # a boolean mask selects the same rows as their indices
    mask = torch.zeros(10, dtype=torch.bool)
    mask[rows] = True
    assert ExampleNoise(seeds).subset(mask).randn((4,)).equal(ExampleNoise(seeds).subset(rows).randn((4,)))


def test_subset_of_subset_and_repeats(path: str) -> None:
    """Rows that repeat an example take its successive draws in row order (AutoAttack's
    `arange(n) % len(noise)` views), through views of views."""
    seeds = SEEDS[:4]
    view = ExampleNoise(seeds).subset([3, 1, 2]).subset([2, 0, 2, 1, 0])  # examples 2, 3, 2, 1, 3
    got = view.randn((5,))
    singles = {i: ExampleNoise([seeds[i]]) for i in range(4)}
    draws = {i: [singles[i].randn((5,))[0] for _ in range(2)] for i in range(4)}
    expected = [draws[2][0], draws[3][0], draws[2][1], draws[1][0], draws[3][1]]
    assert torch.equal(got, torch.stack(expected))


@pytest.mark.parametrize("times", [1, 3, 20])
def test_tile_copy_j_takes_the_jth_successive_draw(path: str, times: int) -> None:
    seeds = SEEDS[:5]
    n = len(seeds)
    noise = ExampleNoise(seeds)
    tiled = tile(noise, times)
    assert len(tiled) == n * times and tiled.seeds == seeds * times
    got = tiled.randn((1, 8, 8)).view(times, n, 1, 8, 8)
    next_parent = noise.randn((1, 8, 8))  # the parent's counter moved past all copies
    for i, s in enumerate(seeds):
        alone = ExampleNoise([s])
        for j in range(times):
            assert torch.equal(got[j, i], alone.randn((1, 8, 8))[0])
        assert torch.equal(next_parent[i], alone.randn((1, 8, 8))[0])


def test_tile_of_a_subset(path: str) -> None:
    seeds = SEEDS[:6]
    got = tile(ExampleNoise(seeds).subset([4, 1]), 2).rand((3,))
    a, b = ExampleNoise([seeds[4]]), ExampleNoise([seeds[1]])
    expected = torch.cat([a.rand((3,)), b.rand((3,)), a.rand((3,)), b.rand((3,))])
    assert torch.equal(got, expected)


# ------------------------------------------------------------------ streams differ

def test_distinct_seeds_and_successive_draws_differ(path: str) -> None:
    noise = ExampleNoise(SEEDS[:8] + [0, 1, 2])
    a, b = noise.randn((64,)), noise.randn((64,))
    assert not torch.equal(a, b)
    for x in (a, b):
        for i in range(len(x)):
            for j in range(i):
                assert not torch.equal(x[i], x[j])
    # the same seed twice in one batch: two examples, two counters, the same stream
    twice = ExampleNoise([7, 7]).randn((16,))
    assert torch.equal(twice[0], twice[1])


# ------------------------------------------------------------------ statistics (fixed seeds)

def _ks(sample: torch.Tensor, cdf) -> float:
    x, _ = sample.double().sort()
    n = x.numel()
    f = cdf(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - f, f - (i - 1) / n).max())


def test_normal_statistics(path: str) -> None:
    z = ExampleNoise(SEEDS).randn((41, 97)).double()  # 254,528 values, blocks with dropped words
    n = z.numel()
    assert abs(z.mean().item()) < 4 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 4 * math.sqrt(2 / n)
    skew = (z ** 3).mean().item()
    kurt = (z ** 4).mean().item()
    assert abs(skew) < 4 * math.sqrt(15 / n) and abs(kurt - 3) < 4 * math.sqrt(96 / n)
    normal_cdf = lambda x: 0.5 * (1 + torch.erf(x / math.sqrt(2)))  # noqa: E731
    assert _ks(z.flatten(), normal_cdf) < 1.95 / math.sqrt(n)  # the 0.1 % critical value
    assert z.abs().max().item() <= math.sqrt(64 * math.log(2)) + 1e-6
    # per row too (each example's stream is a normal stream), and rows uncorrelated
    rows = z.flatten(1)
    assert (rows.mean(1).abs() < 5 / math.sqrt(rows.shape[1])).all()
    corr = torch.corrcoef(rows)
    off = corr - torch.eye(corr.shape[0], dtype=corr.dtype)
    assert off.abs().max().item() < 5 / math.sqrt(rows.shape[1])


def test_uniform_statistics(path: str) -> None:
    u = ExampleNoise(SEEDS).rand((1, 8, 8))
    more = ExampleNoise(SEEDS[:40]).rand((5003,))
    for x in (u, more):
        assert x.dtype == torch.float32 and x.min().item() >= 0 and x.max().item() < 1
    x = more.double().flatten()
    n = x.numel()
    assert abs(x.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(x.var().item() - 1 / 12) < 4 * math.sqrt(1 / 180 / n)
    assert _ks(x, lambda v: v) < 1.95 / math.sqrt(n)
    # 24-bit grid: every value is k * 2**-24
    k = x * 2 ** 24
    assert torch.equal(k, k.round())


def test_rand_like_and_randn_like_follow_x(path: str) -> None:
    noise = ExampleNoise(SEEDS[:4])
    x = torch.zeros(4, 2, 3, dtype=torch.float64)
    u = noise.rand_like(x)
    z = noise.randn_like(x)
    assert u.shape == z.shape == x.shape and u.dtype == z.dtype == torch.float64
    ref = ExampleNoise(SEEDS[:4])
    assert torch.equal(u, ref.rand((2, 3)).double()) and torch.equal(z, ref.randn((2, 3)).double())
    with pytest.raises(ValueError):
        noise.randn_like(torch.zeros(3, 2))
    with pytest.raises(ValueError):
        noise.rand_like(torch.zeros(5, 2))
    assert noise.randn((0,)).shape == (4, 0)
    assert ExampleNoise([]).randn((3,)).shape == (0, 3)


def test_inference_mode_and_grad_mode_do_not_matter() -> None:
    with torch.inference_mode():
        noise = ExampleNoise(SEEDS[:3])
        a = noise.randn((7,))
    b = noise.randn((7,))  # counters made under inference_mode still advance outside it
    ref = ExampleNoise(SEEDS[:3])
    assert torch.equal(a, ref.randn((7,))) and torch.equal(b, ref.randn((7,)))
    x = torch.zeros(3, 7, requires_grad=True)
    z = ExampleNoise(SEEDS[:3]).randn_like(x)
    assert not z.requires_grad and torch.equal(z, a)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the precision of the networks, not of the noise
        assert torch.equal(ExampleNoise(SEEDS[:3]).randn((7,)), a)


def test_one_compile_for_every_shape_and_mode(compile_on: None) -> None:
    """Batch sizes, shapes, views and grad/inference/autocast states reuse one compiled draw."""
    from torch._dynamo.utils import counters

    ExampleNoise(SEEDS[:2]).randn((3,))
    before = counters["stats"]["unique_graphs"]
    for n, shape in [(1, (1,)), (3, (5,)), (64, (1, 8, 8)), (5, (3, 4, 4)), (2, (2,))]:
        noise = ExampleNoise(SEEDS[:n])
        noise.randn(shape)
        tile(noise, 3).subset(torch.arange(n)).randn(shape)
        with torch.inference_mode():
            noise.randn(shape)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            noise.randn(shape)
        with torch.no_grad():
            noise.randn(shape)
    assert counters["stats"]["unique_graphs"] == before


# ------------------------------------------------------------------ compiled and eager agree

@pytest.mark.parametrize("rows,blocks", [(1, 1), (2, 1), (1, 3), (7, 2), (64, 16), (300, 257)])
@pytest.mark.parametrize("kind", ["normal", "uniform"])
def test_compiled_and_eager_agree_bit_for_bit(kind: str, rows: int, blocks: int, compile_on: None) -> None:
    key = torch.tensor(rng._key_words([derive_seed("kat", i) for i in range(rows)]), dtype=torch.int64)
    start = torch.arange(rows, dtype=torch.int64) * 1_000_003 + (1 << 32) - 5  # crosses 2**32
    eager, ran = rng.draw(kind, key, start, blocks, compiled=False)
    assert not ran and eager.shape == (rows, 4 * blocks)
    compiled, ran = rng.draw(kind, key, start, blocks, compiled=True)
    assert ran and torch.equal(compiled, eager)


def test_default_path_is_eager_on_cpu_and_compiled_on_request(monkeypatch: pytest.MonkeyPatch,
                                                                compile_on: None) -> None:
    monkeypatch.delenv(rng.COMPILE_ENV)
    noise = ExampleNoise(SEEDS[:3])
    noise.randn((4,))
    assert noise.last_compiled is False and rng.compile_status("cpu") == "eager"
    assert rng._want_compile(torch.device("cuda", 0))  # auto: compiled on CUDA
    monkeypatch.setenv(rng.COMPILE_ENV, "1")
    again = ExampleNoise(SEEDS[:3])
    again.randn((4,))
    assert again.last_compiled is True


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform where compiling fails (no C compiler, ...) draws the same values in eager."""
    expected = ExampleNoise(SEEDS[:5]).randn((9,))

    def broken(*args: object, **kwargs: object):
        raise RuntimeError("no C compiler")

    monkeypatch.setattr(rng, "_compiled", {})
    monkeypatch.setattr(torch, "compile", broken)
    noise = ExampleNoise(SEEDS[:5])
    got = noise.randn((9,))
    assert noise.last_compiled is False and rng.compile_status("cpu") == "eager"
    assert torch.equal(got, expected)


def test_box_muller_is_the_transform_of_its_words() -> None:
    """Each normal is sqrt(-2 ln u1) (cos, sin)(2 pi u2) of its block's words, to float32
    rounding."""
    key = torch.tensor(rng._key_words(SEEDS[:16]), dtype=torch.int64)
    start = torch.arange(16, dtype=torch.int64) * 7
    z, _ = rng.draw("normal", key, start, 8, compiled=False)
    words = rng.philox4x32(start.unsqueeze(1) + torch.arange(8), torch.zeros(1, dtype=torch.int64),
                           torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64),
                           key[:, :1], key[:, 1:])
    w = torch.stack(words, -1).double()  # [16, 8, 4]
    u1 = (w[..., 0::2] + 1) * 2.0 ** -32
    theta = 2 * math.pi * torch.floor(w[..., 1::2] / 256) * 2.0 ** -24
    r = torch.sqrt(-2 * torch.log(u1))
    exact = torch.stack((r * torch.cos(theta), r * torch.sin(theta)), -1).reshape(16, 32)
    assert torch.allclose(z.double(), exact, rtol=0, atol=4e-6)
    assert (z.double() - exact).abs().mean() < 2e-7


# ------------------------------------------------------------------ the CPU transform and its library

def _exact(u1: np.ndarray, theta: np.ndarray) -> np.ndarray:
    r = np.sqrt(-2 * np.log(u1.astype(np.float64)))
    t = theta.astype(np.float64)
    return np.stack((r * np.cos(t), r * np.sin(t)), -1)


def test_cpu_transform_is_within_one_float32_ulp_of_exact() -> None:
    """The float64 series (log, sin, cos from +, *, / and sqrt alone) rounds to float32 within
    one ulp of the exactly computed transform, on every edge: u1 = 1 (radius 0) and 2**-32,
    mantissas either side of the sqrt 2 fold, angles at and either side of each quadrant
    boundary, and 1M random words."""
    gen = np.random.default_rng(7)
    fold = np.float32(np.sqrt(2.0) / 2)
    u1 = np.concatenate([
        np.array([1.0, 2.0 ** -32, 0.5, 0.25, 1 - 2.0 ** -24], dtype=np.float32),
        np.nextafter(fold, np.float32(0)) * np.float32(2.0) ** -np.arange(3, dtype=np.float32),
        np.nextafter(fold, np.float32(1)) * np.float32(2.0) ** -np.arange(3, dtype=np.float32),
        ((gen.integers(0, 2 ** 32, 1_000_000, dtype=np.uint64) + 1).astype(np.float64)
         * 2.0 ** -32).astype(np.float32)])
    # every octant boundary (multiples of 2**21 of the 2**24 angle steps) and its neighbours
    k = (np.arange(-3, 4)[:, None] + (np.arange(9) << 21)[None, :]).ravel()
    k = k[(k >= 0) & (k < 2 ** 24)]
    k = np.concatenate([k, gen.integers(0, 2 ** 24, u1.size - k.size)])
    theta = (k.astype(np.float32) * np.float32(2.0 ** -24)) * np.float32(2 * math.pi)
    got = rng._np_box_muller(u1, theta).astype(np.float64)
    exact = _exact(u1, theta)
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(got - exact) <= ulp), float(np.max(np.abs(got - exact) / ulp))
    assert got[0, 0] == 0.0 and got[0, 1] == 0.0  # u1 = 1


def test_native_draw_is_the_default_on_cpu_and_equals_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(rng_native.NATIVE_ENV, raising=False)
    monkeypatch.delenv(rng.COMPILE_ENV, raising=False)
    calls = []
    real = rng_native.call
    monkeypatch.setattr(rng_native, "call", lambda *a, **k: calls.append(1) or real(*a, **k))
    noise = ExampleNoise(SEEDS[:7])
    got = torch.cat([noise.randn((1, 8, 8)).flatten(1), noise.rand((5,))], 1)
    assert len(calls) == 2 and rng_native.status() == "native"
    monkeypatch.setenv(rng_native.NATIVE_ENV, "0")
    again = ExampleNoise(SEEDS[:7])
    assert torch.equal(got, torch.cat([again.randn((1, 8, 8)).flatten(1), again.rand((5,))], 1))
    assert len(calls) == 2 and rng_native.status() == "off"


@pytest.fixture
def fresh_native(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """The native library forgotten and its cache in tmp_path; the real one back afterwards."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(rng_native.NATIVE_ENV, raising=False)
    rng_native.reset()
    yield tmp_path / "cache"
    rng_native.reset()


def test_no_compiler_falls_back_to_numpy_with_one_warning(fresh_native, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(rng_native.NATIVE_ENV, "0")
    expected = ExampleNoise(SEEDS[:5]).randn((9,))
    monkeypatch.setenv(rng_native.NATIVE_ENV, "1")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with caplog.at_level("WARNING", logger="harness.rng_native"):
        first = ExampleNoise(SEEDS[:5]).randn((9,))
        second = ExampleNoise(SEEDS[:5]).randn((9,))
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert rng_native.status().startswith("unavailable: RuntimeError: no C compiler")
    assert len([r for r in caplog.records if "native CPU noise draw" in r.message]) == 1


def test_a_library_that_differs_is_not_used(fresh_native, monkeypatch: pytest.MonkeyPatch) -> None:
    """The self-check compares with the reference bit for bit: one flipped value refuses it."""
    def off_by_one_ulp(kind, key, start, blocks):
        out = rng.numpy_draw(kind, key, start, blocks)
        out[0, 0] = torch.nextafter(out[0, 0], torch.tensor(2.0))
        return out

    assert rng_native.library(rng_native.Reference(off_by_one_ulp, rng._box_muller)) is None
    assert "differ from the numpy form in 1 of" in rng_native.status()


def test_library_is_built_once_per_cpu_kind_in_the_cache(fresh_native) -> None:
    """Two processes building at once both load a checked library; the cache then holds one
    library, and a third process only loads it."""
    import subprocess
    import sys

    code = ("import torch; from harness import rng, rng_native; "
            "n = rng.ExampleNoise([1, 2]); n.randn((3,)); print(rng_native.status())")
    env = {**__import__("os").environ}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert outs == ["native", "native"]
    libs = list(fresh_native.rglob("*.so"))
    assert len(libs) == 1 and not list(fresh_native.rglob("*.tmp*"))
    mtime = libs[0].stat().st_mtime_ns
    third = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert third.stdout.strip() == "native" and libs[0].stat().st_mtime_ns == mtime


def test_native_transform_equals_numpy_on_edges_and_1m_random_pairs() -> None:
    lib = rng_native.library(rng.NUMPY_REFERENCE)
    assert lib is not None, rng_native.status()
    gen = torch.Generator().manual_seed(3)
    edge_u1, edge_theta = rng_native.edge_inputs()
    words = torch.randint(0, 2 ** 32, (2, 1_000_000), generator=gen, dtype=torch.int64)
    u1 = torch.cat([edge_u1, rng._u1(words[0])])
    theta = torch.cat([edge_theta, rng._theta(words[1])])
    assert edge_u1.numel() > 1000 and bool((u1 == 1).any())
    native = rng_native.transform(lib, u1, theta)
    assert torch.equal(native, rng._box_muller(u1, theta))


@pytest.mark.parametrize("flags", [["-O0"], ["-O3"], ["-O2", "-march=native"]])
def test_every_build_gives_the_same_bits(flags: list[str], tmp_path) -> None:
    """Scalar code (-O0), the baseline vector width (-O3) and this CPU's widest (-march=native)
    all pass the self-check against numpy and agree on a large draw: the bits do not depend on
    how the library was compiled (what lets a cluster of mixed CPUs give the same rows)."""
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "CI has a C compiler"
    out = tmp_path / "lib.so"
    subprocess.run([cc, *flags, "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared", "-o", str(out),
                    str(rng_native.SOURCE)], check=True, timeout=120)
    lib = rng_native.load(out)
    rng_native.self_check(lib, rng.NUMPY_REFERENCE)  # raises on any difference
    key = torch.tensor(rng._key_words([derive_seed("builds", i) for i in range(300)]), dtype=torch.int64)
    start = torch.arange(300, dtype=torch.int64) * 977 + (1 << 32) - 500
    got = rng_native.call(lib.harness_philox_normal, key, start, 257)
    assert torch.equal(got, rng.numpy_draw("normal", key, start, 257))
