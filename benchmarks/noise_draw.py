"""Per-example noise: one vectorised counter-based draw (harness.rng) against one torch.randn
of the same batch and against the per-example generator loop it replaced.

For each batch shape: the median over --repeat measurements (each the mean of enough calls
to last ~20 ms) of
  - torch.randn(batch) on the default generator (the floor: one kernel, no per-example streams),
  - the old loop: one torch.Generator per example, one torch.randn per example, then stack
    (harness.rng before issue 13, kept here as `LegacyExampleNoise`),
  - ExampleNoise.randn_like through the native C draw (CPU's default: harness/rng_native.c,
    Philox and the normal transform in one pass),
  - the same through the compiled Philox kernel (when compile works here),
  - the same uncompiled and without the native library (HARNESS_RNG_COMPILE=0,
    HARNESS_RNG_NATIVE=0): numpy's uint64 on CPU,
  - the same in torch eager ops (what a GPU whose compile failed runs; rng.NUMPY_ON_CPU off),
and the ratios to torch.randn. Also checks that rows are identical for batch sizes 1/7/64
and for 1 vs 2 ranks (two ExampleNoise over the two halves). Prints a Markdown table and the
machine; --append adds them to benchmarks/RESULTS.md.

The digits purifier draws at 1x8x8 per example (harness.data.digits gives N x 1 x 8 x 8 and
the pipeline does not resize: purify.pipeline.run_rounds and samplers.reverse call
noise.randn_like on the batch itself); an exact-gradient PGD-EOT step draws for the tiled
batch, 64 x EOT 20 = 1,280 rows.

    python benchmarks/noise_draw.py [--device cpu] [--repeat 7] [--threads N] [--append]
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from pathlib import Path

import torch

from harness import rng, rng_native
from harness.rng import ExampleNoise, derive_seed
from harness.telemetry import machine
from results_md import publish

SHAPES = [
    ("64 digits, 1x8x8 (purifier's draw)", 64, (1, 8, 8)),
    ("1,280 digits (64 x EOT 20), 1x8x8", 1280, (1, 8, 8)),
    ("64 x 3x32x32", 64, (3, 32, 32)),
    ("1,280 x 3x32x32", 1280, (3, 32, 32)),
]


class LegacyExampleNoise:
    """harness.rng.ExampleNoise before issue 13: one torch.Generator per example."""

    def __init__(self, seeds: list[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        gen_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        self.generators = [torch.Generator(device=gen_device).manual_seed(s) for s in seeds]

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        draws = [torch.randn(tuple(x.shape[1:]), generator=g, device=g.device, dtype=x.dtype)
                 for g in self.generators]
        return torch.stack(draws).to(self.device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeat: int, device: str, budget_s: float = 0.02) -> float:
    """Median seconds per call over `repeat` measurements, each averaging calls for ~budget_s."""
    fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, min(1000, int(budget_s / one)))
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


class _Env:
    """Within the block, harness.rng draws with torch.compile off and the native CPU library
    on or off."""

    def __init__(self, native: bool):
        self.set = {rng.COMPILE_ENV: "0", rng_native.NATIVE_ENV: "1" if native else "0"}

    def __enter__(self) -> None:
        self.before = {k: os.environ.get(k) for k in self.set}
        os.environ.update(self.set)

    def __exit__(self, *exc: object) -> None:
        for k, v in self.before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def rows_check(device: str) -> tuple[bool, bool]:
    """(rows identical for batch sizes 1/7/64, rows identical for 1 vs 2 ranks), two draws each."""
    seeds = [derive_seed("noise-bench", i) for i in range(64)]

    def draws(parts: list[range]) -> torch.Tensor:
        out = []
        for part in parts:
            n = ExampleNoise([seeds[i] for i in part], device)
            out.append(torch.cat([n.randn((1, 8, 8)).flatten(1), n.randn((3, 5)).flatten(1)], 1))
        return torch.cat(out)

    whole = draws([range(64)])
    ones = draws([range(i, i + 1) for i in range(64)])
    sevens = draws([range(i, min(i + 7, 64)) for i in range(0, 64, 7)])
    ranks = draws([range(0, 32), range(32, 64)])
    return (torch.equal(whole, ones) and torch.equal(whole, sevens)), torch.equal(whole, ranks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    dev = args.device
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    ExampleNoise([1, 2, 3], dev).randn((5,))  # compiles where it can (once per process)
    ExampleNoise([1, 2, 3], dev).rand((5,))
    first_call_s = time.perf_counter() - t0
    status = rng.compile_status(dev)
    t0 = time.perf_counter()
    native_ok = dev == "cpu" and rng_native.library(rng.NUMPY_REFERENCE) is not None
    native_s = time.perf_counter() - t0

    lines = []
    for name, n, shape in SHAPES:
        x = torch.zeros(n, *shape, device=dev)
        seeds = [derive_seed("noise-bench", i) for i in range(n)]
        t_randn = timed(lambda: torch.randn(x.shape, device=dev), args.repeat, dev)
        legacy = LegacyExampleNoise(seeds, dev)
        t_loop = timed(lambda: legacy.randn_like(x), args.repeat, dev)
        new = ExampleNoise(seeds, dev)
        t_new = timed(lambda: new.randn_like(x), args.repeat, dev) if status == "compiled" else float("nan")
        with _Env(native=True):
            native = ExampleNoise(seeds, dev)
            t_native = timed(lambda: native.randn_like(x), args.repeat, dev) if native_ok else float("nan")
        with _Env(native=False):
            eager = ExampleNoise(seeds, dev)
            t_eager = timed(lambda: eager.randn_like(x), args.repeat, dev)
            rng.NUMPY_ON_CPU = False
            try:
                t_torch = timed(lambda: eager.randn_like(x), args.repeat, dev)
            finally:
                rng.NUMPY_ON_CPU = True
        us = lambda t: f"{t * 1e6:,.0f}"  # noqa: E731
        lines.append(f"| {name} | {us(t_randn)} | {us(t_loop)} ({t_loop / t_randn:.1f}x) | "
                     f"{us(t_native)} ({t_native / t_randn:.2f}x) | {us(t_new)} ({t_new / t_randn:.2f}x) | {us(t_eager)} ({t_eager / t_randn:.1f}x) | "
                     f"{us(t_torch)} ({t_torch / t_randn:.1f}x) |")
        print(lines[-1], flush=True)
    same_batch, same_ranks = rows_check(dev)
    with _Env(native=False):
        eager_batch, eager_ranks = rows_check(dev)
    if native_ok:
        with _Env(native=True):
            native_batch, native_ranks = rows_check(dev)
            same_batch, same_ranks = same_batch and native_batch, same_ranks and native_ranks
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    block = [f"\n## Noise draw (issue 13) — {stamp}, {machine(dev)}, {torch.get_num_threads()} threads, "
             f"load average {load}\n",
             f"Median of {args.repeat} measurements, microseconds per draw (ratio to one torch.randn of "
             "the batch). Compiled path: "
             f"{status}; first draws in the process (compile, or load from the inductor cache): "
             f"{first_call_s:.1f} s. Native C draw: {rng_native.status()} (build or load, and its "
             f"self-check: {native_s:.2f} s).\n",
             "| batch | torch.randn | per-example generators (before) | native C (CPU default) | "
             "Philox, compiled | "
             f"Philox, uncompiled ({'numpy' if dev == 'cpu' else 'torch'}) | Philox, torch eager ops |",
             "|---|---|---|---|---|---|---|", *lines, "",
             f"Rows identical for batch sizes 1/7/64: {'yes' if same_batch and eager_batch else 'NO'}; "
             f"for 1 vs 2 ranks: {'yes' if same_ranks and eager_ranks else 'NO'} (native, compiled and eager)."]
    text = "\n".join(block) + "\n"
    publish(text, args.append, args.out)


if __name__ == "__main__":
    main()
