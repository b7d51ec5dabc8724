"""`harness submit`: the unfinished rows of a plan as Slurm job arrays, through submitit.

Each array task calls `ArrayTask()(plan_path, row)`: a picklable, stateless callable of the
plan path (str) and the row index (int) only, which runs `task.run_task`; the results
directory reaches it as HARNESS_RESULTS, exported (quoted) by the batch script. On the
pre-timeout signal submitit calls `checkpoint()`, which resubmits the same call; the worker
then resumes from the files already written.

`--dry-run` renders the batch text with the same executor and the same submitit function
that a real submission uses, so what it prints is what would be submitted.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from submitit.helpers import Checkpointable, DelayedSubmission
from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

from ..errors import UsageError
from .profiles import Profile, load_named, load_profile, resolve
from .status import ACTIVE, SUBMISSIONS, read_submissions, shard_key, shard_states

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize


# ---------------------------------------------------------------- what runs on the node

def run_array_task(plan_path: str, row: int) -> int:
    """One array task: (plan path, row index) → this rank's result rows."""
    from .task import run_task

    return run_task(plan_path, int(row), os.environ.get("HARNESS_RESULTS") or None)


class ArrayTask(Checkpointable):
    """The submitit job function: stateless, so the checkpoint is the call itself."""

    def __call__(self, plan_path: str, row: int) -> int:
        return run_array_task(plan_path, row)

    def checkpoint(self, plan_path: str, row: int) -> DelayedSubmission:  # type: ignore[override]
        """Requeue the same (plan, row); the worker skips the batches already on disk."""
        return DelayedSubmission(self, plan_path, row)


# ---------------------------------------------------------------- executor and rendering

class _Executor(SlurmExecutor):
    """submitit's SlurmExecutor, constructible where srun is absent (for --dry-run)."""

    @classmethod
    def affinity(cls) -> int:
        return 2


def make_executor(folder: Path, profile: Profile, job_name: str, results: Path) -> SlurmExecutor:
    python = profile.python_command(sys.executable)
    ex = _Executor(folder, max_num_timeout=profile.max_requeues, python=python)
    setup = profile.setup.lines() + profile.env_lines() + [f"export HARNESS_RESULTS={shlex.quote(str(results))}"]
    ex.update_parameters(**profile.sbatch_parameters(job_name), setup=setup)
    return ex


def render(ex: SlurmExecutor, n: int) -> str:
    """The batch script submitit writes for an array of n calls (a plain job when n == 1)."""
    params = dict(ex.parameters)
    if n > 1:
        params["map_count"] = n
    return _make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder, **params)


def cluster_max_array_size(timeout: float = 20) -> int | None:
    """MaxArraySize from `scontrol show config`, or None when the cluster cannot be asked."""
    try:
        r = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", r.stdout, re.M)
    return int(m.group(1)) if r.returncode == 0 and m else None


def chunks(rows: list[int], size: int) -> list[list[int]]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def ranges(rows: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] → '0-2,5,7-8'."""
    out, start = [], None
    for i, r in enumerate(rows):
        if start is None:
            start = r
        if i + 1 == len(rows) or rows[i + 1] != r + 1:
            out.append(str(start) if start == r else f"{start}-{r}")
            start = None
    return ",".join(out)


# ---------------------------------------------------------------- which rows

def row_complete(row: dict[str, Any], results: Path) -> bool:
    """No example of the shard missing from its valid part files (bad ones are moved to _bad/
    on the way). A _COMPLETE.json is not taken on trust: a trusted one lists valid parts that
    cover the shard, which is exactly this test, so a marker whose parts were deleted or
    damaged never hides missing rows."""
    from ..worker import pending

    return not pending(row, results)


@dataclass
class Selection:
    todo: list[dict[str, Any]]
    complete: int
    active: dict[str, str]  # shard key → state of its live task


def select_rows(plan_rows: list[dict[str, Any]], results: Path, submissions: list[dict[str, Any]],
                resume: bool, states: dict[str, str] | None = None) -> Selection:
    complete = {shard_key(r) for r in plan_rows if row_complete(r, results)}
    active = active_shards(submissions, complete, resume, states, "rows of this sweep")
    todo = [r for r in plan_rows if shard_key(r) not in complete and shard_key(r) not in active]
    return Selection(todo, len(complete), active)


def active_shards(submissions: list[dict[str, Any]], complete: set[str], resume: bool,
                  states: dict[str, str] | None, what: str) -> dict[str, str]:
    """Shard key → state of its live task, for the shards not complete, from the scheduler's
    view of the earlier submissions (a sweep's or a purify job's). UsageError where the
    scheduler cannot say (a shard might run twice), or where some are active and `resume`
    was not asked for."""
    if not submissions:
        return {}
    by_shard, source = shard_states(submissions, states)
    if source == "none" and any(k not in complete for k in by_shard):
        raise UsageError("cannot read the scheduler's state of earlier submissions (sacct and "
                         "squeue failed), so rows might run twice; retry where Slurm answers")
    active = {k: s for k, s in by_shard.items() if s in ACTIVE and k not in complete}
    if active and not resume:
        jobs = sorted({str(j["job_id"]) for j in submissions})
        raise UsageError(f"{len(active)} {what} are still queued or running (jobs "
                         f"{', '.join(jobs)}); see `harness status`, or pass --resume to submit "
                         "only the rows that are neither done nor active")
    return active


def group_rows(rows: list[dict[str, Any]], profile: Profile) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """Rows by resource needs: one array job (or several, by MaxArraySize) per group."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(profile.group_key(r), []).append(r)
    return groups


# ---------------------------------------------------------------- submit

def submit(grid_path: str | Path, profile: str | None = None, jobs: str | Path = "jobs",
           results: str | Path | None = None, dry_run: bool = False, resume: bool = False,
           out: Callable[[str], None] = print, states: dict[str, str] | None = None,
           assets: str | None = None, preflight: bool = False) -> list[str]:
    """Check the assets, plan, select the unfinished rows, submit them as arrays; return the job ids.

    A missing or changed asset stops it before anything is written or submitted (exit 2), as
    does a failed ``preflight`` (every distinct combination once on one node, see
    harness.launch.preflight)."""
    from ..catalog import assets_dir, needs, problems, require_grid
    from ..grid import load_grid
    from ..plan import load_plan, plan_frame, plan_table, write_plan
    from ..results import write_report_spec
    from .sizing import sizing_for

    grid = load_grid(grid_path)
    root = assets_dir(assets, grid.assets)
    if dry_run:
        for line in problems(needs(grid.representative_cells), root):
            out(f"# asset problem (a real submission stops here): {line}")
    else:
        require_grid(grid, assets)
    jobs_sweep = Path(jobs).absolute() / grid.sweep
    submissions = read_submissions(jobs_sweep)
    last = submissions[-1] if submissions else {}
    prof = load_profile(resolve(profile or grid.profile or last.get("profile"), grid.path))
    prof.check_arch(python_given=prof.python is not None or prof.container is not None)
    results_root = Path(results or last.get("results") or "results").absolute()
    plan_path = jobs_sweep / "plan.parquet"
    sizing, sized = sizing_for(prof, jobs_sweep.parent, grid.sweep)
    table = plan_table(grid, root, sizing)  # built once: compared, written and selected from
    plan = plan_frame(table)
    sel = select_rows(plan.to_dict("records"), results_root, submissions, resume, states)
    if preflight and not dry_run and sel.todo:
        run_preflight(grid, prof, jobs_sweep / "slurm", results_root, root, out)
    if not dry_run:
        if sel.active and plan_path.is_file() and not load_plan(plan_path).equals(plan):
            raise UsageError(f"{plan_path}: the grid now gives another plan, but {len(sel.active)} rows of "
                             "the old one are queued or running (they read the plan when they start); "
                             "wait for them or scancel them, then submit again")
        write_plan(grid, jobs_sweep.parent, assets=root, plan=table)
        write_report_spec(results_root, grid.sweep, grid.report)
    out(f"plan: {plan_path}{' (not written: dry run)' if dry_run else ''}")
    out(f"profile: {prof.name} ({prof.path})")
    out(sized)
    out(f"results: {results_root}")
    out(f"{len(plan)} rows: {sel.complete} complete, {len(sel.active)} queued or running, "
        f"{len(sel.todo)} to submit")
    if not sel.todo:
        out("nothing to submit")
        return []
    limit, source = array_limit(prof)
    folder = jobs_sweep / "slurm"
    ids: list[str] = []
    keys = {int(r["row"]): shard_key(r) for r in sel.todo}
    batches = [c for g in group_rows(sel.todo, prof).values() for c in chunks([int(r["row"]) for r in g], limit)]
    for k, rows in enumerate(batches, 1):
        ex = make_executor(folder, prof, f"harness-{grid.sweep}", results_root)
        head = f"array job {k}/{len(batches)}: plan rows {ranges(rows)} (max array size {limit}, {source})"
        if dry_run:
            out(f"# {head}\n{render(ex, len(rows))}")
            continue
        job_id = submit_array(ex, ArrayTask(), str(plan_path), rows, [keys[r] for r in rows], prof, jobs_sweep,
                              results=str(results_root))
        ids.append(job_id)
        out(f"submitted {head}: job {job_id}")
    if not dry_run:
        out(f"status: harness status {shlex.quote(str(jobs_sweep))}")
    return ids


def array_limit(prof: Profile) -> tuple[int, str]:
    """The most tasks one array may have, and where that number comes from."""
    if prof.max_array_size is not None:
        return prof.max_array_size, "profile"
    limit = cluster_max_array_size()
    return (limit, "scontrol") if limit is not None else (DEFAULT_MAX_ARRAY_SIZE, "default; scontrol did not answer")


def submit_array(ex: SlurmExecutor, fn: Any, target: str, rows: list[int], keys: list[str], prof: Profile,
                 record_dir: Path, **extra: str) -> str:
    """Submit fn(target, row) for each row as one array; record it in record_dir/submissions.jsonl
    (what `harness status` and `--resume` read: the shard key of each row); the job id."""
    folder = Path(ex.folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        jobs_ = ex.map_array(fn, [target] * len(rows), rows)
    except FileNotFoundError as exc:
        raise _no_sbatch(exc) from None
    job_id = jobs_[0].job_id.split("_")[0]
    record = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "job_id": job_id, "array": len(rows) > 1, "rows": rows, "shards": keys,
              "profile": str(prof.path.absolute()), "profile_name": prof.name,
              "plan": target, **extra, "folder": str(folder), "sbatch": str(jobs_[0].paths.submission_file)}
    with open(record_dir / SUBMISSIONS, "a") as f:
        f.write(json.dumps(record) + "\n")
    return job_id


# ---------------------------------------------------------------- plan once (slurm/sweep.sh)

def plan_once(grid_path: str | Path, jobs: str | Path = "jobs") -> Path:
    """The plan of a grid for an array task of `sbatch slurm/sweep.sh GRID.yaml`.

    The first task to get here writes it (under a lock); the others use that plan as is, and
    refuse to run if the grid file changed since, because the row indices would change meaning.
    """
    import fcntl

    from ..grid import load_grid
    from ..plan import write_plan

    from ..catalog import require_grid

    grid = load_grid(grid_path)
    require_grid(grid)  # fail every task fast, naming each missing asset
    out = Path(jobs) / grid.sweep
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".plan.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        plan, planned = out / "plan.parquet", out / "grid.yaml"
        if plan.is_file():
            if not planned.is_file() or planned.read_bytes() != grid.source:
                raise UsageError(f"{grid_path}: changed since {plan} was planned from it; the array's "
                                 f"row numbers would mean other rows. Plan again (`harness plan`) and resubmit")
            return plan
        from .sizing import sizing_for

        # sized as `harness plan` sizes it (the grid's profile), so the array's row numbers match
        path = write_plan(grid, jobs, sizing=sizing_for(load_named(grid.profile, grid.path), jobs, grid.sweep)[0])
        from ..results import write_report_spec
        from .task import results_dir_for

        write_report_spec(results_dir_for(path), grid.sweep, grid.report)  # the tasks' default
        return path

# ---------------------------------------------------------------- one job on one node (preflight, calibrate)

def _no_sbatch(exc: FileNotFoundError) -> UsageError:
    return UsageError(f"cannot submit: {exc.filename or 'sbatch'} not found; is this a Slurm login node?")


def run_on_node(profile: Any, folder: Path, results: Path, name: str, fn: Any, *args: Any,
                timeout_min: int = 30) -> Any:
    """``fn(*args)`` as one plain job of one task on one node of ``profile`` (its partition,
    setup and GPUs), waited for; its value, or UsageError with the job's log tail."""
    ex = make_executor(folder, profile, name, results)
    gpus = 1 if profile.gpus_per_node else None
    ex.update_parameters(ntasks_per_node=1, time=min(profile.time_min, timeout_min),
                         **({"gpus_per_node": gpus} if gpus else {}))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        job = ex.submit(fn, *args)
    except FileNotFoundError as exc:
        raise _no_sbatch(exc) from None
    try:
        return job.result()
    except Exception as exc:  # noqa: BLE001 (submitit raises FailedJobError with the log)
        raise UsageError(f"{name}: job {job.job_id} failed: {str(exc)[-2000:]}") from None


def run_preflight(grid: Any, profile: Any, folder: Path, results: Path, root: Path,
                  out: Any = print) -> None:
    """Every distinct combination of ``grid`` once on a tiny batch, in one job on one node of
    ``profile``; UsageError (nothing submitted) naming each failure."""
    from ..catalog import pins
    from .preflight import check_combinations, combinations

    combos = combinations(grid.cells)
    out(f"preflight: {len(combos)} distinct (data set, classifier, purifier, attack) combination(s) "
        f"on one node of {profile.name}")
    problems = run_on_node(profile, folder, results, f"harness-preflight-{grid.sweep}", check_combinations,
                           combos, str(root), pins(combos, root))
    if problems:
        raise UsageError(f"preflight: {len(problems)} of {len(combos)} combination(s) failed on "
                         f"{profile.name}; nothing submitted:\n  " + "\n  ".join(problems))
    out(f"preflight: all {len(combos)} combination(s) ran")


def calibrate(grid: Any, profile: Any, folder: Path, root: Path, out: Any = print) -> Path:
    """measure_rates on one node of ``profile`` for ``grid``'s networks; written beside the profile."""
    from ..catalog import pins
    from .preflight import combinations, measure_rates, write_calibration

    combos = combinations(grid.cells)
    rates = run_on_node(profile, folder, folder, f"harness-calibrate-{grid.sweep}", measure_rates,
                        combos, str(root), pins(combos, root), grid.batch_size)
    path = write_calibration(profile.path, rates)
    out(f"calibration on {rates['device']} (batch {rates['batch']}): written to {path}")
    for name, v in rates["denoiser_evals_per_s"].items():
        out(f"  {name}: {v:,.1f} denoiser evaluations/s")
    for name, v in rates["grad_evals_per_s"].items():
        out(f"  {name}: {v:,.1f} denoiser evaluations/s with exact gradients")
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m harness.launch.slurm",
                                 description="print the plan path of a grid, planning it once (for slurm/sweep.sh)")
    ap.add_argument("--plan-once", required=True, metavar="GRID")
    ap.add_argument("--jobs", default="jobs")
    args = ap.parse_args(argv)
    try:
        print(plan_once(args.plan_once, args.jobs))
    except UsageError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
