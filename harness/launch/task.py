"""One array task: (plan path, row index) → this rank's part files → completion marker.

This is the only entry point a scheduler calls, through submitit or `slurm/sweep.sh`:
    python -m harness.launch.task --plan jobs/<sweep>/plan.parquet --row 7
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write
from ..plan import load_plan
from ..ranks import World, detect
from ..telemetry import GpuMonitor, system_description
from ..results import done_examples, shard_dir
from ..worker import Assets, run_row

COMPLETE = "_COMPLETE.json"


def results_dir_for(plan_path: Path) -> Path:
    """jobs/<sweep>/plan.parquet → results/ beside jobs/, unless the plan says otherwise."""
    return plan_path.resolve().parent.parent.parent / "results"


def mark_complete(row: dict[str, Any], out: Path, world: World, written: int) -> bool:
    """Write the shard's completion marker once every rank is done and every example is there."""
    total = world.sum(written)
    world.barrier()
    if world.rank != 0:
        return False
    have = done_examples(out)
    expected = set(range(int(row["start"]), int(row["stop"])))
    if not expected <= have:
        return False  # a rank without a communicator may still be running; status reads the files
    atomic_write(out / COMPLETE, json.dumps({"cell": row["cell"], "shard": int(row["shard"]),
                                            "examples": len(expected), "ranks": world.size,
                                            "rows_this_run": total}) + "\n")
    return True


def run_task(plan_path: str, row_index: int, results: str | None = None, world: World | None = None) -> int:
    """Run one plan row on this rank; returns the rows this rank wrote."""
    plan_file = Path(plan_path)
    plan = load_plan(plan_file)
    if not 0 <= row_index < len(plan):
        raise IndexError(f"{plan_file}: row {row_index} out of range 0..{len(plan) - 1}")
    row = plan.iloc[row_index].to_dict()
    world = world or detect()
    results_dir = Path(results) if results else results_dir_for(plan_file)
    cell_examples = int(plan.loc[plan.cell == row["cell"], "stop"].max())
    world.configure_threads()
    device = world.device()
    out = shard_dir(results_dir, row["sweep"], row["cell"], int(row["shard"]))
    with GpuMonitor(int(device.split(":")[1]) if device.startswith("cuda") else None) as gpu:
        written = run_row(row, results_dir, Assets.for_plan_row(row, device), rank=world.rank, world=world.size,
                          cell_examples=cell_examples)
    if written:  # telemetry of the run that did the work, beside its part files
        run_id = os.environ.get("SLURM_JOB_ID") or f"pid{os.getpid()}-{int(time.time())}"
        atomic_write(out / f"_telemetry-rank-{world.rank}-{run_id}.json",
                     json.dumps({"rows": written, "device": device, "world": world.size,
                                 "backend": world.backend, **gpu.info, "system": system_description()},
                                default=str) + "\n")
    mark_complete(row, out, world, written)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.launch.task", description=__doc__.splitlines()[0])
    ap.add_argument("--plan", required=True)
    ap.add_argument("--row", type=int, required=True)
    ap.add_argument("--results", default=None, help="results directory (default: results/ beside jobs/)")
    args = ap.parse_args(argv)
    world = detect()
    n = run_task(args.plan, args.row, args.results, world)
    print(f"rank {world.rank}/{world.size} ({world.backend}): row {args.row} done, {n} rows written", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
