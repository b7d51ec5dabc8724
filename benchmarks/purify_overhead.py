"""Purification time against the time of the bare denoiser evaluations it performs.

overhead = (time of one purification) / (time of the same number of denoiser calls on
the same batch shape). Everything besides the UNet (noise draws, schedule arithmetic,
Tucker, per-example generators) is overhead. Appends the figures, with the machine,
to benchmarks/RESULTS.md.

    python benchmarks/purify_overhead.py [--device cpu] [--batch 64] [--repeat 3]
"""
from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import torch

from harness.models.bundled import load_denoiser
from harness.purify.pipeline import Purifier, PurifierConfig
from harness.purify.samplers import timesteps
from harness.purify.schedule import Schedule
from harness.rng import ExampleNoise
from harness.telemetry import machine

CONFIGS = {
    "diffpure t=0.3 steps=5": PurifierConfig(rounds=[0.3], steps=5),
    "lorid t=0.1 L=3 steps=5": PurifierConfig(rounds=[0.1] * 3, steps=5),
    "lorid t=0.1 L=3 steps=5 tucker=pre": PurifierConfig(rounds=[0.1] * 3, steps=5, tucker="pre"),
    "lorid t=0.1 L=3 all steps (100/round)": PurifierConfig(rounds=[0.1] * 3, steps=0),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_of(fn, repeat: int, device: str) -> float:
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    dev = args.device
    eps = load_denoiser("digits-ddpm").to(dev)
    sched = Schedule.linear()
    x = torch.rand(args.batch, 1, 8, 8, device=dev)
    lines = []
    with torch.no_grad():
        eps(2 * x - 1, torch.zeros(args.batch, dtype=torch.long, device=dev))  # warm-up
        for name, cfg in CONFIGS.items():
            p = Purifier(cfg, eps, sched).to(dev)
            seeds = list(range(args.batch))
            t_pur = best_of(lambda: p(x, ExampleNoise(seeds, dev)), args.repeat, dev)
            ts = [t for k in (sched.step_of(r) for r in cfg.rounds) for t in timesteps(k, cfg.steps)]
            tt = [torch.full((args.batch,), t, dtype=torch.long, device=dev) for t in ts]
            t_bare = best_of(lambda: [eps(x, t) for t in tt], args.repeat, dev)
            lines.append(f"| {name} | {len(ts)} | {t_pur * 1e3:.1f} | {t_bare * 1e3:.1f} | {t_pur / t_bare:.2f} |")
            print(lines[-1], flush=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    block = [f"\n## Purification overhead — {stamp}, {machine(dev)}, batch {args.batch}\n",
             "| configuration | NFE | purify (ms) | bare denoiser calls (ms) | overhead ratio |",
             "|---|---|---|---|---|", *lines, ""]
    with open(args.out, "a") as f:
        f.write("\n".join(block) + "\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
