"""Items per second of `harness purify` on the bundled digits.

The 450 test digits (uint8, as harness.data.digits gives them x 255) written as an image folder,
purified by LoRID as in grids/smoke.yaml (t_s 0.1, 3 loops, 4 DDPM steps: 12 denoiser evaluations
per item) into a fresh output directory, for each batch size (default 64 and 450; the shard holds
all 450 items, so batch 450 is one batch). Each measurement is the job's whole local path after
the networks are loaded: plan (shard listing, plan.json), read and decode, purify, PNG encode,
stage Parquet parts, write the output folder and the manifests. The median of --repeat
measurements, after one unmeasured warm-up per batch size. Then the console command itself
(`python -m harness.cli purify`, process start, imports and network load included), the
median of --repeat runs at batch 64.

Prints a Markdown block with the machine and torch's threads; --append adds it to
benchmarks/RESULTS.md.

    python benchmarks/purify_items.py [--device cpu|cuda] [--batch-sizes 64,450] [--repeat 3]
                                      [--threads N] [--precision auto] [--no-cli] [--append]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.data.digits import arrays  # noqa: E402
from harness.dataset_io import write_dataset  # noqa: E402
from harness.purify_job import Purifier, make_job, nfe_per_item, plan_job, run_shard, shard_done  # noqa: E402
from harness.telemetry import machine  # noqa: E402
from results_md import publish  # noqa: E402

LORID = {"t_s": 0.1, "loops": 3, "steps": 4}


def fresh(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(Path(str(path) + ".purify"), ignore_errors=True)


def one_job(inp: Path, out: Path, batch: int, shard_items: int, precision: str, net: dict) -> float:
    """Seconds for the whole local job (networks loaded once per process, in `net`)."""
    fresh(out)
    t0 = time.perf_counter()
    job = make_job({"input": str(inp), "output": str(out), "purifier": {"name": "lorid", "params": LORID},
                    "batch_size": batch, "shard_items": shard_items, "precision": precision})
    plan = plan_job(job)
    if "net" not in net:
        net["net"] = Purifier.load(plan, net["device"])
    for i in range(len(plan["shards"])):
        run_shard(plan, i, net["net"])  # finishes the shard once every item is staged
    if net["device"].startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    assert all(shard_done(plan, i) for i in range(len(plan["shards"]))), "a shard did not finish"
    return seconds


def cli_job(inp: Path, out: Path, device: str, precision: str) -> float:
    fresh(out)
    cmd = [sys.executable, "-m", "harness.cli", "purify", "--input", str(inp), "--output", str(out),
           "--purifier", "lorid", "--params", json.dumps(LORID), "--device", device, "--precision", precision]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"harness purify failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--batch-sizes", default="64,450")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: as `harness purify` sets them)")
    ap.add_argument("--precision", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16")
    ap.add_argument("--no-cli", action="store_true", help="skip the console-command measurement")
    ap.add_argument("--append", action="store_true", help="append the block to benchmarks/RESULTS.md")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        from harness.ranks import configure_threads

        configure_threads()
    batches = [int(b) for b in args.batch_sizes.split(",") if b]

    x, y = arrays("test")
    n = len(y)
    rows, cli = [], None
    with tempfile.TemporaryDirectory(prefix="purify-bench-") as tmp:
        inp, out = Path(tmp) / "digits", Path(tmp) / "purified"
        write_dataset(inp, "folder", np.round(x[:, 0] * 255).astype(np.uint8), y)
        nfe = nfe_per_item(make_job({"input": str(inp), "output": str(out), "purifier": {"name": "lorid", "params": LORID}}))
        net = {"device": dev}
        first = one_job(inp, out, batches[0], n, args.precision, net)  # loads the networks: unmeasured
        for b in batches:
            if b != batches[0]:
                one_job(inp, out, b, n, args.precision, net)  # warm-up at this batch size
            times = [one_job(inp, out, b, n, args.precision, net) for _ in range(args.repeat)]
            med = statistics.median(times)
            rows.append(f"| {b} | {', '.join(f'{t:.2f}' for t in times)} | {med:.2f} | {n / med:,.0f} | "
                        f"{n * nfe / med:,.0f} |")
            print(rows[-1], flush=True)
        if not args.no_cli:
            times = [cli_job(inp, out, dev, args.precision) for _ in range(args.repeat)]
            med = statistics.median(times)
            cli = (f"| 64 (`harness purify` command, process included) | {', '.join(f'{t:.2f}' for t in times)} | "
                   f"{med:.2f} | {n / med:,.0f} | {n * nfe / med:,.0f} |")
            print(cli, flush=True)

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    from harness.precision import resolve

    block = [f"\n## Purify items/s (`harness purify`, digits) — {stamp}, {machine(dev)}, device {dev}, "
             f"{torch.get_num_threads()} torch threads, precision {resolve(args.precision, dev)}, load average {load}\n",
             f"{n} digits (8x8 grayscale PNG, image folder, one shard), LoRID t_s 0.1, 3 loops, 4 DDPM steps "
             f"({nfe} denoiser evaluations per item), no classifier. Seconds per whole local job after the networks "
             "are loaded (plan, read, purify, PNG, staging, output, manifests), each of "
             f"{args.repeat} runs and their median, after one warm-up per batch size; the first job of the process "
             f"(network load included) took {first:.2f} s.\n",
             "| batch size | runs (s) | median (s) | items/s | denoiser evaluations/s |",
             "|---|---|---|---|---|", *rows, *([cli] if cli else [])]
    text = "\n".join(block) + "\n"
    publish(text, args.append, args.out)


if __name__ == "__main__":
    main()
