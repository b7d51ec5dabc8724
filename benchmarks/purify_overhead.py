"""Purification time against the time of the bare denoiser evaluations it performs.

overhead = (time of one purification) / (time of the same number of denoiser calls on the
same batch shape). Everything besides the UNet (noise draws, schedule arithmetic, Tucker,
clamping) counts as overhead, the Tucker step included although it is LoRID's own work; its
time alone is printed beside.

On a shared machine two timings taken minutes apart differ by 15-25 % (measured: the same
15 bare calls at 162 and 205 ms in one run), which is more than the overhead itself. So the
overhead is measured two ways:
  - paired: each repeat times the purification and its bare calls back to back, in alternating
    order, with the thread count fixed; the median of the per-repeat ratios;
  - direct: the same purification with the denoiser replaced by a stub that returns zeros at no
    cost, which times everything but the denoiser (the arithmetic does not depend on the
    values); ratio = 1 + that / the bare calls. Its spread is that of a few ms, not of the UNet.

    python benchmarks/purify_overhead.py [--device cpu] [--batch 64] [--repeat 9] [--threads 1] [--append]
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import time
from typing import Callable

import torch

from harness.models.bundled import load_denoiser
from harness.purify.pipeline import Purifier, PurifierConfig
from harness.purify.samplers import timesteps
from harness.purify.schedule import Schedule
from harness.purify.tucker import tucker_denoise
from harness.rng import ExampleNoise
from harness.telemetry import machine
from results_md import publish

CONFIGS = {
    "diffpure t=0.3 steps=5": PurifierConfig(rounds=[0.3], steps=5),
    "lorid t=0.1 L=3 steps=5": PurifierConfig(rounds=[0.1] * 3, steps=5),
    "lorid t=0.1 L=3 steps=5 tucker=pre": PurifierConfig(rounds=[0.1] * 3, steps=5, tucker="pre"),
    "lorid t=0.1 L=3 all steps (100/round)": PurifierConfig(rounds=[0.1] * 3, steps=0),
}


def _timed(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def paired(a: Callable[[], object], b: Callable[[], object], repeat: int, device: str
           ) -> tuple[float, float, float]:
    """(median time of a, median time of b, median of the per-repeat ratios a/b), a and b timed
    back to back in alternating order so slow phases of a shared machine hit both."""
    ta, tb = [], []
    for i in range(repeat):
        if i % 2:
            tb.append(_timed(b, device))
            ta.append(_timed(a, device))
        else:
            ta.append(_timed(a, device))
            tb.append(_timed(b, device))
    return statistics.median(ta), statistics.median(tb), statistics.median(x / y for x, y in zip(ta, tb))


class _ZeroDenoiser(torch.nn.Module):
    """A noise predictor that costs nothing: what remains of a purification is its overhead."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    ap.add_argument("--append", action="store_true", help="add the figures to benchmarks/RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    eps = load_denoiser("digits-ddpm").to(dev)
    sched = Schedule.linear()
    x = torch.rand(args.batch, 1, 8, 8, device=dev)
    seeds = list(range(args.batch))
    lines = []
    with torch.no_grad():
        eps(2 * x - 1, torch.zeros(args.batch, dtype=torch.long, device=dev))  # warm-up
        tucker_s = statistics.median(_timed(lambda: tucker_denoise(x), dev) for _ in range(args.repeat))
        for name, cfg in CONFIGS.items():
            p = Purifier(cfg, eps, sched).to(dev)
            ts = [t for k in (sched.step_of(r) for r in cfg.rounds) for t in timesteps(k, cfg.steps)]
            tt = [torch.full((args.batch,), t, dtype=torch.long, device=dev) for t in ts]
            p(x, ExampleNoise(seeds, dev))  # warm-up
            t_pur, t_bare, ratio = paired(lambda: p(x, ExampleNoise(seeds, dev)),
                                          lambda: [eps(x, t) for t in tt], args.repeat, dev)
            stub = Purifier(cfg, _ZeroDenoiser(), sched).to(dev)
            stub(x, ExampleNoise(seeds, dev))  # warm-up
            t_rest = statistics.median(_timed(lambda: stub(x, ExampleNoise(seeds, dev)), dev)
                                       for _ in range(3 * args.repeat))
            lines.append(f"| {name} | {len(ts)} | {t_pur * 1e3:.1f} | {t_bare * 1e3:.1f} | {ratio:.3f} | "
                         f"{t_rest * 1e3:.2f} | {1 + t_rest / t_bare:.3f} |")
            print(lines[-1], flush=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = "\n".join([
        f"\n## Purification overhead — {stamp}, {machine(dev)}, batch {args.batch}, {args.threads} threads\n",
        f"`python benchmarks/purify_overhead.py --repeat {args.repeat} --threads {args.threads}`: medians of "
        f"{args.repeat} back-to-back pairs (purification, then its bare denoiser calls, order alternating); the "
        f"paired ratio is the median of the per-pair ratios. 'All but the denoiser': the median of "
        f"{3 * args.repeat} purifications with a zero-cost stub denoiser; the direct ratio is 1 + that / the "
        f"bare calls. One Tucker step (`tucker_denoise`, {args.batch} images) alone: {tucker_s * 1e3:.2f} ms.\n",
        "| configuration | NFE | purify (ms) | bare denoiser calls (ms) | ratio, paired | "
        "all but the denoiser (ms) | ratio, direct |",
        "|---|---|---|---|---|---|---|", *lines, ""]) + "\n"
    publish(text, args.append)


if __name__ == "__main__":
    main()
