"""Peak memory of ONE exact-gradient PGD-EOT step as the number of denoising steps grows.

One attack step is `pgd.loss_gradient` through Defended = classifier(purifier(x)): a
forward and a backward through every reverse step of every round, for `eot` copies of
the batch. With per-step checkpointing (the purifier's default) only each step's input
is kept and the UNet's activations are recomputed one step at a time in the backward
pass, so the peak should stay flat as the steps grow; without it, every step's
activations are alive at once and the peak grows linearly.

Measured at 1×, 2× and 4× the reverse steps per round (same rounds, same batch), with
checkpointing on and, for contrast, off:

- CPU: each configuration runs in a fresh subprocess; after loading the models and the
  data and one small warm-up step (which pages in torch's kernels), the RSS high-water
  mark is reset to the current RSS (/proc/self/clear_refs); the figure is the peak RSS
  over the step (getrusage ru_maxrss) minus that RSS.
  tracemalloc cannot see torch's allocations, hence RSS. The subprocess runs with
  MALLOC_MMAP_THRESHOLD_=65536 so that glibc serves every large tensor from its own
  mapping and returns it on free: RSS then tracks live tensors. With glibc's default
  (dynamic) threshold, freed activation buffers are recycled through the heap, whose
  fragmentation adds a few MB per step that no tensor holds; `--glibc-default` measures
  that way instead (the figure a plain process would show).
- CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus the
  memory allocated before the step.

Appends the table, with the machine, to benchmarks/RESULTS.md.

    python benchmarks/attack_memory.py [--device cpu|cuda] [--batch 128] [--eot 4]
                                        [--steps 5] [--loops 3] [--t-s 0.1] [--quick]
                                        [--glibc-default] [--no-append]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

FACTORS = (1, 2, 4)
TARGET = 1.25  # with checkpointing, the 2× and 4× peaks must stay within this ratio of 1×
MMAP_THRESHOLD = 65536  # bytes: larger allocations get their own mapping, unmapped on free


def _reset_peak_rss() -> int:
    """Reset the process's peak RSS to its current RSS and return that (KiB); where the
    reset is not allowed, the peak so far (the step's increase then excludes earlier peaks)."""
    import resource

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset the RSS high-water mark (VmHWM, ru_maxrss)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _step_memory(steps: int, loops: int, checkpoint: bool, batch: int, eot: int, t_s: float,
                 device: str) -> dict[str, Any]:
    """In THIS process: the memory one exact-gradient PGD-EOT step adds (MB) and its NFE."""
    import gc
    import resource

    import torch

    from harness.attacks.pgd import loss_gradient
    from harness.data.digits import arrays
    from harness.models.bundled import load_classifier, load_denoiser
    from harness.purify.pipeline import Defended, Purifier, PurifierConfig
    from harness.rng import ExampleNoise, derive_seed

    torch.manual_seed(0)
    x_np, y_np = arrays("test")
    reps = -(-batch // len(y_np))  # a batch larger than the test split repeats it
    x = torch.from_numpy(x_np).repeat(reps, 1, 1, 1)[:batch].to(device)
    y = torch.from_numpy(y_np).repeat(reps)[:batch].to(device)
    purifier = Purifier(PurifierConfig(rounds=[t_s] * loops, steps=steps), load_denoiser("digits-ddpm"),
                        checkpoint=checkpoint)
    model = Defended(purifier, load_classifier({})).to(device).eval()

    def noise(n: int) -> ExampleNoise:
        return ExampleNoise([derive_seed("attack-memory", i) for i in range(n)], device)

    # Warm-up on two examples: loads kernels and allocator pools that are not the step's.
    loss_gradient(model, x[:2], y[:2], "exact", eot, noise(2))
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _reset_peak_rss()
    g, _ = loss_gradient(model, x, y, "exact", eot, noise(batch))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return {"steps": steps, "loops": loops, "checkpoint": checkpoint, "batch": batch, "eot": eot,
            "nfe": purifier.nfe, "peak_mb": peak_mb, "grad_finite": bool(torch.isfinite(g).all())}


def measure(steps: int, loops: int, checkpoint: bool, batch: int, eot: int, t_s: float = 0.1,
            device: str = "cpu", glibc_default: bool = False) -> dict[str, Any]:
    """The memory one attack step adds, measured in a fresh subprocess (so no earlier
    configuration's high-water mark or allocator cache hides it)."""
    env = dict(os.environ)
    if not glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    cmd = [sys.executable, __file__, "--child", json.dumps(
        {"steps": steps, "loops": loops, "checkpoint": checkpoint, "batch": batch, "eot": eot,
         "t_s": t_s, "device": device})]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"measurement subprocess failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(base_steps: int, loops: int, batch: int, eot: int, t_s: float, device: str,
          factors: tuple[int, ...] = FACTORS, glibc_default: bool = False) -> list[dict[str, Any]]:
    """Every (factor, checkpoint) configuration, each with its ratio to the 1× figure."""
    rows = []
    for checkpoint in (True, False):
        first = None
        for f in factors:
            r = measure(base_steps * f, loops, checkpoint, batch, eot, t_s, device, glibc_default)
            first = first if first is not None else r["peak_mb"]
            r["factor"] = f
            r["ratio"] = r["peak_mb"] / first if first > 0 else float("nan")
            rows.append(r)
            print(_line(r), flush=True)
    return rows


def _line(r: dict[str, Any]) -> str:
    return (f"| {r['factor']}× | {r['steps']} × {r['loops']} = {r['nfe']} | "
            f"{'on' if r['checkpoint'] else 'off'} | {r['peak_mb']:.1f} | {r['ratio']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=128, help="digits per attack step")
    ap.add_argument("--eot", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="reverse steps per round at 1×")
    ap.add_argument("--loops", type=int, default=3)
    ap.add_argument("--t-s", type=float, default=0.1, help="diffusion time per round (0.1 = 100 steps)")
    ap.add_argument("--quick", action="store_true", help="CI size: batch 16, eot 2, steps 2/4/8, loops 2")
    ap.add_argument("--glibc-default", action="store_true",
                    help="CPU: keep glibc's default malloc thresholds (RSS then includes heap fragmentation)")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_step_memory(**json.loads(args.child))))
        return
    if args.quick:
        args.batch, args.eot, args.steps, args.loops = 16, 2, 2, 2

    from harness.telemetry import machine

    rows = table(args.steps, args.loops, args.batch, args.eot, args.t_s, args.device,
                 glibc_default=args.glibc_default)
    on = [r for r in rows if r["checkpoint"]]
    met = all(r["ratio"] <= TARGET for r in on)
    verdict = (f"checkpointing on: 2× and 4× within {TARGET}× of 1× — "
               f"{'met' if met else 'NOT met'} (max ratio {max(r['ratio'] for r in on):.2f})")
    print(verdict)
    if args.no_append:
        return
    what = ("torch.cuda.max_memory_allocated over the step" if args.device.startswith("cuda") else
            "the peak RSS's increase over the step (glibc's default malloc)" if args.glibc_default else
            f"the peak RSS's increase over the step (MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD})")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    block = [f"\n## Attack-step memory vs denoising steps — {stamp}, {machine(args.device)}\n",
             f"One exact-gradient PGD-EOT step (loss_gradient through classifier(purifier(x))), "
             f"{args.batch} digits × eot {args.eot}, t_s={args.t_s}, {args.loops} rounds; "
             f"peak MB = {what}, each configuration in a fresh process"
             f"{' (--quick)' if args.quick else ''}.\n",
             "| steps | reverse steps (per round × rounds = NFE) | checkpoint | peak MB | ratio to 1× |",
             "|---|---|---|---|---|", *(_line(r) for r in rows), "", verdict, ""]
    with open(args.out, "a") as f:
        f.write("\n".join(block) + "\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
