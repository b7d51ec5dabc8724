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
from typing import Any, Callable

from ..fsutil import atomic_write
from ..plan import load_plan_row
from ..devices import DeviceError, check_task
from ..ranks import World, detect
from ..telemetry import GpuMonitor, system_description
from ..results import COMPLETE, rank_lock, rank_lock_holder, shard_dir, write_marker
from ..worker import Assets, run_row

__all__ = ["COMPLETE", "mark_complete", "run_row_recorded", "run_task", "results_dir_for"]


def results_dir_for(plan_path: Path) -> Path:
    """jobs/<sweep>/plan.parquet → results/ beside jobs/, unless the plan says otherwise."""
    return plan_path.resolve().parent.parent.parent / "results"


def mark_complete(row: dict[str, Any], out: Path, world: World, written: int) -> bool:
    """Write the shard's completion marker if every example of it is in a valid part file;
    True if this rank wrote it.

    Every rank calls this after its own slice, whatever the launcher: with a communicator
    (MPI) after a barrier, without one (srun without MPI, separate processes) as each
    finishes, so the last to finish sees the shard complete. The marker lists the part files
    it covers; the shard lock and a link into place make exactly one writer win."""
    total = world.sum(written)
    world.barrier()
    eval_runs = int(json.loads(row["cell_json"])["eval_runs"]) if row.get("cell_json") else None
    wrote, _ = write_marker(out, int(row["start"]), int(row["stop"]),
                            {"cell": row["cell"], "shard": int(row["shard"]), "ranks": world.size,
                             "rows_this_run": total, "written_by_rank": world.rank}, eval_runs)
    return wrote


def write_telemetry(out: Path, rank: int, written: int, device: str, gpu: GpuMonitor,
                    world: int = 1, backend: str = "single") -> Path:
    """The telemetry of the run that did the work (rows, device, NVML energy and utilisation),
    beside its part files: the report's joules per image and cost by device type."""
    run_id = os.environ.get("SLURM_JOB_ID") or f"pid{os.getpid()}-{int(time.time())}"
    return atomic_write(out / f"_telemetry-rank-{rank}-{run_id}.json",
                        json.dumps({"rows": written, "device": device, "world": world, "backend": backend,
                                    **gpu.info, "system": system_description()}, default=str) + "\n")


def run_task(plan_path: str, row_index: int, results: str | None = None, world: World | None = None) -> int:
    """Run one plan row on this rank; returns the rows this rank wrote."""
    return run_task_marked(plan_path, row_index, results, world)[0]


def run_task_marked(plan_path: str, row_index: int, results: str | None = None,
                    world: World | None = None) -> tuple[int, bool]:
    """run_task, and whether this rank wrote the shard's completion marker."""
    plan_file = Path(plan_path)
    check_task(plan_file.parent)  # a task that needs CUDA and has none stops before loading anything
    row = load_plan_row(plan_file, row_index)  # its row group only: every task and rank reads one
    world = world or detect()
    results_dir = Path(results) if results else results_dir_for(plan_file)
    cell_examples = int(row["cell_examples"])
    world.configure_threads()
    device = world.device()
    return run_row_recorded(row, results_dir, Assets.for_plan_row(row, device), device, world, cell_examples)


def run_row_recorded(row: dict[str, Any], results_dir: Path, assets: Assets, device: str, world: World,
                     cell_examples: int, on_batch: Callable[[int], None] | None = None) -> tuple[int, bool]:
    """run_row for this rank with the GPU monitored, then the run's telemetry written, all under
    the (shard, rank) lock (another process taking the lock clears this rank's temporaries, so a
    telemetry file written after releasing it could lose its temporary mid-rename), then
    mark_complete, which every rank calls, a skipped one too. What `harness run` and every array
    task call; returns (the rows written: 0 when done or another process has it, whether this
    rank wrote the shard's completion marker)."""
    out = shard_dir(results_dir, row["sweep"], row["cell"], int(row["shard"]))
    written = 0
    with rank_lock(out, world.rank) as state:
        if state == "busy":
            print(f"harness: rank {world.rank}: another process is computing this rank's slice of {out} "
                  f"({rank_lock_holder(out, world.rank) or 'holder unknown'}); skipped, run again to check",
                  file=sys.stderr, flush=True)
        else:
            gpu_index = int(device.split(":")[1]) if device.startswith("cuda:") else (0 if device == "cuda" else None)
            with GpuMonitor(gpu_index) as gpu:
                written = run_row(row, results_dir, assets, rank=world.rank, world=world.size,
                                  cell_examples=cell_examples, on_batch=on_batch)
            if written:
                write_telemetry(out, world.rank, written, device, gpu, world.size, world.backend)
    return written, mark_complete(row, out, world, written)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.launch.task", description=__doc__.splitlines()[0])
    ap.add_argument("--plan", required=True)
    ap.add_argument("--row", type=int, required=True)
    ap.add_argument("--results", default=None, help="results directory (default: results/ beside jobs/)")
    args = ap.parse_args(argv)
    world = detect()
    try:
        n, wrote = run_task_marked(args.plan, args.row, args.results, world)
    except DeviceError as exc:
        print(f"rank {world.rank}: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    marked = ", shard marked complete" if wrote else ""
    print(f"rank {world.rank}/{world.size} ({world.backend}): row {args.row} done, {n} rows written{marked}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
