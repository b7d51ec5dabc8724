"""Where a sweep stands: per cell, examples done / running / queued / failed / missing.

Done comes from the result files (the truth); the others from the scheduler's view of the
array tasks recorded in jobs/<sweep>/submissions.jsonl: `sacct` (needs accounting) and
`squeue` (live jobs), either alone when the other fails; with neither, every unfinished
example counts as missing.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import UsageError

SUBMISSIONS = "submissions.jsonl"
RUNNING = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING",
                     "SUSPENDED", "STOPPED"})
QUEUED = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT"})
FAILED = frozenset({"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
                    "BOOT_FAIL", "DEADLINE", "REVOKED"})
ACTIVE = RUNNING | QUEUED
STATES = ("done", "running", "queued", "failed", "missing")


# ---------------------------------------------------------------- submissions

def read_submissions(jobs_sweep: Path) -> list[dict[str, Any]]:
    """Every array job recorded for the sweep, oldest first (one JSON object a line)."""
    f = jobs_sweep / SUBMISSIONS
    if not f.is_file():
        return []
    out = []
    for n, line in enumerate(f.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise UsageError(f"{f}: line {n} is not JSON; fix or remove it") from None
    return out


def task_id(job: dict[str, Any], i: int) -> str:
    """The scheduler's id of the i-th row of a recorded job ("123_4", or "123" for a plain job)."""
    return f"{job['job_id']}_{i}" if job.get("array", True) else str(job["job_id"])


def shard_key(row: dict[str, Any]) -> str:
    """A plan row by what it computes ("<cell>:<shard>"), stable when a re-plan renumbers rows."""
    return f"{row['cell']}:{int(row['shard'])}"


def shard_tasks(submissions: list[dict[str, Any]]) -> dict[str, str]:
    """Shard key → the task id of its latest submission."""
    out: dict[str, str] = {}
    for job in submissions:
        for i, key in enumerate(job["shards"]):
            out[key] = task_id(job, i)
    return out


# ---------------------------------------------------------------- the scheduler's view

_ARRAY_RE = re.compile(r"^(\d+)_\[([0-9,\-]+)(?:%\d+)?\]$")


def _expand(job_id: str) -> list[str]:
    """'123_[0-3,7%2]' → ['123_0', ..., '123_3', '123_7']; other ids unchanged."""
    m = _ARRAY_RE.match(job_id)
    if not m:
        return [job_id]
    out = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def _parse(lines: Iterable[str]) -> dict[str, str]:
    states: dict[str, str] = {}
    for line in lines:
        jid, _, state = line.strip().partition("|")
        if not jid or "." in jid:  # job steps (123_4.batch, 123_4.0) are not tasks
            continue
        state = state.split()[0] if state.split() else "UNKNOWN"  # "CANCELLED by 0"
        for t in _expand(jid):
            states[t] = state
    return states


def _query(cmd: list[str], timeout: float) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        # squeue -j with one id that has left the queue fails; that just means "not live".
        return "" if "Invalid job id" in r.stderr and cmd[0] == "squeue" else None
    return r.stdout


def scheduler_states(job_ids: Iterable[str], timeout: float = 30) -> tuple[dict[str, str], str]:
    """Task id → state for the given jobs, and which sources answered ("sacct+squeue", ..., "none").

    sacct (accounting) knows finished tasks; squeue's live view wins where both answer, since
    sacct already says CANCELLED while a cancelled task is still COMPLETING (still writing).
    """
    ids = sorted({str(j).split("_")[0] for j in job_ids})
    if not ids:
        return {}, "none"
    states: dict[str, str] = {}
    sources = []
    out = _query(["sacct", "-j", ",".join(ids), "-P", "-n", "-o", "JobID,State"], timeout)
    if out is not None:
        states.update(_parse(out.splitlines()))
        sources.append("sacct")
    out = _query(["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i|%T"], timeout)
    if out is not None:
        states.update(_parse(out.splitlines()))
        sources.append("squeue")
    return states, "+".join(sources) or "none"


def shard_states(submissions: list[dict[str, Any]], states: dict[str, str] | None = None
                 ) -> tuple[dict[str, str], str]:
    """Shard key → scheduler state of its latest task (UNKNOWN when the scheduler does not say)."""
    tasks = shard_tasks(submissions)
    source = "given"
    if states is None:
        states, source = scheduler_states(tasks.values())
    return {key: states.get(t, "UNKNOWN") for key, t in tasks.items()}, source


def failure_lines(record_dir: Path, submissions: list[dict[str, Any]]) -> list[str]:
    """Why the latest task of a shard failed, where the task recorded it (harness.devices)."""
    from ..devices import recorded_failures

    failed = recorded_failures(record_dir)
    latest = set(shard_tasks(submissions).values())
    return [f"task {t} failed on {doc.get('host', '?')}: {doc['cause']}" for t, doc in sorted(failed.items())
            if t in latest]


# ---------------------------------------------------------------- the sweep

@dataclass
class SweepStatus:
    sweep: str
    plan: Path | None
    results: Path
    source: str                                   # sacct | squeue | none
    cells: list[dict[str, Any]] = field(default_factory=list)   # label, attack_label, cell, counts
    jobs: dict[str, int] = field(default_factory=dict)          # state → tasks
    causes: list[str] = field(default_factory=list)             # why latest tasks failed, where recorded

    def totals(self) -> dict[str, int]:
        return {k: sum(c[k] for c in self.cells) for k in ("examples", *STATES)}


def locate(target: str | Path, jobs: str | Path | None = None) -> tuple[str, Path | None, Path]:
    """(sweep, jobs/<sweep> dir or None, results/<sweep> dir) from either directory."""
    target = Path(target)
    if (target / "plan.parquet").is_file():
        subs = read_submissions(target)
        results_root = Path(subs[-1]["results"]) if subs else target.parent.parent / "results"
        return target.name, target, results_root / target.name
    if target.is_dir():
        jobs_root = Path(jobs) if jobs else target.parent.parent / "jobs"
        jd = jobs_root / target.name
        return target.name, (jd if (jd / "plan.parquet").is_file() else None), target
    raise UsageError(f"{target}: neither jobs/<sweep> (with plan.parquet) nor a results/<sweep> directory")


def _labels(cell_dir: Path) -> tuple[str, str]:
    """(defence label, attack label) of a cell directory from its _cell.json; the hash without one."""
    from ..results import CELL_FILE, read_cell_file

    try:
        meta = read_cell_file(cell_dir / CELL_FILE)
    except (OSError, ValueError, KeyError, TypeError):  # absent (older layout) or unreadable
        return cell_dir.name[5:], ""
    return meta["label"] or cell_dir.name[5:], meta["attack_label"]


def _shard_problems(directory: Path, start: int | None = None, stop: int | None = None,
                    eval_runs: int | None = None) -> tuple[set[int], list[str]]:
    """(examples in valid part files, ["shard=<k>/<file>: why not", ...]) of a shard directory:
    its bad part files and an untrusted completion marker. Reads only; `harness run` and
    `harness submit --resume` move bad files to _bad/ and compute their rows again."""
    from ..results import COMPLETE, OLDER_MARKER, check_marker, scan_shard

    scan = scan_shard(directory, eval_runs)
    out = [f"{directory.name}/{c.path.name}: {c.reason}" for c in scan.bad]
    if (directory / COMPLETE).exists():
        if start is None or stop is None:
            start, stop = (min(scan.done), max(scan.done) + 1) if scan.done else (0, 0)
        why = check_marker(directory, start, stop, scan)
        if why not in (None, OLDER_MARKER):  # an older marker is no damage: the files decide
            out.append(f"{directory.name}/{COMPLETE}: not trusted: {why}")
    return scan.done, out


def sweep_status(target: str | Path, jobs: str | Path | None = None,
                 states: dict[str, str] | None = None) -> SweepStatus:
    """Count examples per cell; `states` overrides the scheduler query (tests)."""
    from ..plan import load_plan
    from ..results import shard_dir

    sweep, jobs_dir, results_sweep = locate(target, jobs)
    results_root = results_sweep.parent
    subs = read_submissions(jobs_dir) if jobs_dir else []
    by_shard, source = shard_states(subs, states) if subs else ({}, "none")
    st = SweepStatus(sweep, jobs_dir / "plan.parquet" if jobs_dir else None, results_sweep, source)
    for s in by_shard.values():
        st.jobs[s] = st.jobs.get(s, 0) + 1
    if jobs_dir is not None and subs:
        st.causes = failure_lines(jobs_dir, subs)
    if jobs_dir is None:  # results only: what is there, nothing about what is not
        for d in sorted(results_sweep.glob("cell=*")):
            n, problems = 0, []
            for s in sorted(d.glob("shard=*")):
                done, found = _shard_problems(s)
                n += len(done)
                problems += found
            label, attack_label = _labels(d)
            st.cells.append({"cell": d.name[5:], "label": label, "attack_label": attack_label,
                             "examples": n, "done": n, "running": 0, "queued": 0, "failed": 0, "missing": 0,
                             "problems": problems})
        return st
    # The columns counted here only (not the provenance ones every row repeats)
    plan = load_plan(jobs_dir / "plan.parquet", ["cell", "shard", "start", "stop", "label", "attack_label",
                                                 "cell_json"])
    cells: dict[str, dict[str, Any]] = {}
    eval_runs: dict[str, int] = {}  # per cell: its JSON parsed once, not once per shard
    for row in plan.to_dict("records"):
        if row["cell"] not in cells:
            cells[row["cell"]] = {"cell": row["cell"], "label": row["label"], "attack_label": row["attack_label"],
                                  "examples": 0, **{k: 0 for k in STATES}, "problems": []}
            eval_runs[row["cell"]] = int(json.loads(row["cell_json"])["eval_runs"])
        c = cells[row["cell"]]
        want = set(range(int(row["start"]), int(row["stop"])))
        have, problems = _shard_problems(shard_dir(results_root, sweep, row["cell"], int(row["shard"])),
                                         int(row["start"]), int(row["stop"]), eval_runs[row["cell"]])
        c["problems"] += problems
        done = len(want & have)
        rest = len(want) - done
        state = by_shard.get(shard_key(row), "UNKNOWN")
        kind = ("running" if state in RUNNING else "queued" if state in QUEUED
                else "failed" if state in FAILED else "missing")
        c["examples"] += len(want)
        c["done"] += done
        c[kind] += rest
    st.cells = list(cells.values())
    return st


def format_status(st: SweepStatus) -> str:
    head = ("cell", "purifier", "attack", "examples", *STATES)
    rows = [(c["cell"][:10], c["label"], c["attack_label"], str(c["examples"]),
             *(str(c[k]) for k in STATES)) for c in st.cells]
    t = st.totals()
    rows.append(("total", "", "", str(t["examples"]), *(str(t[k]) for k in STATES)))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines = [f"sweep {st.sweep}: results {st.results}" + (f", plan {st.plan}" if st.plan else " (no plan found)"),
             fmt(head), *map(fmt, rows)]
    problems = [(c, p) for c in st.cells for p in c.get("problems", ())]
    if problems:
        lines.append(f"{len(problems)} bad result file(s) (not counted as done; `harness run` or "
                     "`harness submit --resume` moves them to <shard>/_bad/ and computes their rows again):")
        lines += [f"  cell {c['cell'][:10]} ({c['label']} · {c['attack_label']}) {p}" for c, p in problems]
    if st.jobs:
        jobs = ", ".join(f"{n} {s.lower()}" for s, n in sorted(st.jobs.items()))
        lines.append(f"array tasks (latest per row, from {st.source}): {jobs}")
    elif st.plan is not None:
        lines.append("no submissions recorded (jobs/<sweep>/submissions.jsonl)")
    lines += st.causes
    if st.plan is not None and (t["failed"] or t["missing"]) and not (t["running"] or t["queued"]):
        lines.append("to finish: harness submit --grid " + shlex.quote(str(st.plan.parent / "grid.yaml"))
                     + " --jobs " + shlex.quote(str(st.plan.parent.parent)) + " --resume")
    elif t["done"] == t["examples"] and st.plan is not None:
        lines.append(f"complete; tables: harness report {st.results}")
    return "\n".join(lines)
