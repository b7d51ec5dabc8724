"""`harness purify --profile P`: the shards of a purify plan as one Slurm job array (submitit).

Each array task calls `PurifyTask()(state, shard)`: stateless like the sweep's ArrayTask, so a
pre-timeout signal requeues the same call, which skips the items already staged. Submissions
are recorded in <output>.purify/submissions.jsonl, read by `harness status` as a sweep's are.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Callable

from submitit.core.utils import DelayedSubmission
from submitit.helpers import Checkpointable

from ..devices import check_task
from ..purify_job import Purifier, finish_shard, job_of, read_plan, run_shard, shard_done
from ..ranks import detect
from .profiles import Profile
from .slurm import active_shards, array_limit, chunks, make_executor, ranges, render, submit_array
from .status import failure_lines, read_submissions, shard_states


def shard_key(index: int) -> str:
    return f"purify:{index}"


def run_purify_task(state: str, index: int) -> int:
    """One array task: this rank's items of shard `index`; the shard finished when all are staged."""
    check_task(state)  # a task that needs CUDA and has none stops before loading anything
    world = detect()
    world.configure_threads()
    device = world.device()
    plan = read_plan(state)
    n = run_shard(plan, int(index), lambda: Purifier.load(plan, device), world.rank, world.size)
    world.barrier()
    if world.rank == 0:
        finish_shard(plan, int(index))
    print(f"rank {world.rank}/{world.size}: shard {index}: {n} items purified"
          + (", shard done" if shard_done(plan, int(index)) else ""), flush=True)
    return n


class PurifyTask(Checkpointable):
    def __call__(self, state: str, index: int) -> int:
        return run_purify_task(state, index)

    def checkpoint(self, state: str, index: int) -> DelayedSubmission:  # type: ignore[override]
        """Requeue the same shard; the staged items are skipped."""
        return DelayedSubmission(self, state, index)


def submit_purify(plan: dict[str, Any], prof: Profile, dry_run: bool = False, resume: bool = False,
                  out: Callable[[str], None] = print, states: dict[str, str] | None = None) -> list[str]:
    """Submit the unfinished shards as array jobs; return the job ids."""
    job = job_of(plan)
    state = job.state
    submissions = read_submissions(state)
    done = {i for i in range(len(plan["shards"])) if shard_done(plan, i)}
    active = active_shards(submissions, {shard_key(i) for i in done}, resume, states, "shards of this job")
    todo = [i for i in range(len(plan["shards"])) if i not in done and shard_key(i) not in active]
    out(f"{len(plan['shards'])} shards: {len(plan['shards']) - len(todo)} done or active, {len(todo)} to submit")
    if not todo:
        return []
    limit = array_limit(prof)[0]
    folder = state / "slurm"
    ids = []
    for rows in chunks(todo, limit):
        ex = make_executor(folder, prof, f"purify-{Path(job.output).name}", state)
        head = f"array job: shards {ranges(rows)} (profile {prof.name})"
        if dry_run:
            out(f"# {head}\n{render(ex, len(rows))}")
            continue
        ids.append(submit_array(ex, PurifyTask(), str(state), rows, [shard_key(i) for i in rows], prof, state))
        out(f"submitted {head}: job {ids[-1]}")
    if not dry_run:
        out(f"status: harness status {shlex.quote(str(state))}")
    return ids


def scheduler_summary(state: Path, states: dict[str, str] | None = None) -> str:
    """One line: the latest scheduler state of each submitted, unfinished shard, counted."""
    submissions = read_submissions(state)
    if not submissions:
        return "not submitted to Slurm (local run, or not yet)"
    plan = read_plan(state)
    by_shard, source = shard_states(submissions, states)
    counts: dict[str, int] = {}
    for key, s in by_shard.items():
        if not shard_done(plan, int(key.split(":")[1])):
            counts[s] = counts.get(s, 0) + 1
    body = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "every submitted shard done"
    return "\n".join([f"scheduler ({source}): {body}", *failure_lines(state, submissions)])
