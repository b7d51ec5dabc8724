"""How the plan scales: `harness plan` on a grid of N cells, and a task's read of its plan row.

A grid expanding to N cells (default 1,000,000) is synthesised: CIFAR-10, WRN-28-10, LoRID with
Tucker `pre` over P values of t_s, exact PGD-EOT over A values of eps (P x A = N), one shard
per cell, so the plan has N rows (no profile: shards are not cut to a time limit). It is planned by the real CLI (`harness plan --grid G --jobs J`:
grid expansion and checks, the plan written, its summary and cost table printed) in a fresh
process. Then fresh processes read one row of that plan as an array task does
(harness.plan.load_plan_row: first, middle and last row), and, for comparison, as tasks did
before (the whole plan through load_plan, `iloc` of the row, the cell's max `stop`).

Every figure is one process's: wall and CPU (user + system) seconds of the whole process
(interpreter start and imports included), in-process seconds of the measured call, and the peak
RSS of that process alone (getrusage of the only child of a small reaper process). On a shared
machine the wall seconds move with the load; the CPU seconds much less.

    python benchmarks/plan_scale.py [--cells 1000000] [--dir /tmp/plan-scale] [--python .venv/bin/python]
        [--tree /path/to/old/checkout] [--row-group 4096]

`--tree` also plans with another checkout (e.g. `git archive <commit>`, unpacked): today's code
path where it still exists. A checkout older than CellTable refuses more than 100,000 cells, so
its grid limit is raised in that process (harness.grid.MAX_CELLS) to N; nothing else is changed.
`--row-group` plans with another harness.plan.ROW_GROUP_ROWS (this tree only), to compare sizes.
Prints a Markdown table and the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def factor(n: int) -> tuple[int, int]:
    """(P, A) with P x A = n and P the largest divisor of n not above sqrt(n)."""
    p = max(d for d in range(1, int(n ** 0.5) + 1) if n % d == 0)
    return p, n // p


def grid_text(cells: int, sweep: str = "plan-scale") -> str:
    """The synthetic grid: LoRID over P values of t_s x PGD-EOT over A values of eps."""
    p, a = factor(cells)
    if max(p, a) > 100_000:
        raise SystemExit(f"--cells {cells}: factors as {p} x {a}; pick a number with two factors of at "
                         "most 100,000 each (a grid holds at most 100,000 values)")
    ts = ", ".join(repr(round((i + 1) / (p + 1), 9)) for i in range(p))
    eps = ", ".join(repr(round((i + 1) / (10 * a), 10)) for i in range(a))
    return f"""# synthetic ({cells} cells = {p} purifiers x {a} attacks), written by benchmarks/plan_scale.py
sweep: {sweep}
dataset: {{name: cifar10, params: {{root: "asset:cifar10"}}}}
classifier: {{name: wrn-28-10, params: {{path: "asset:wrn-28-10-cifar10"}}}}
purifier: {{name: lorid, params: {{denoiser: "asset:ddpm-cifar10-32", t_s: [{ts}], loops: 3, tucker: pre}}}}
attack: {{name: pgd, params: {{norm: linf, eps: [{eps}], steps: 200, step_size: 0.007, eot: 20}}}}
examples: 256
shard_size: 256
"""


# What each fresh process runs; it prints one JSON line (its in-process seconds and facts).
PLAN = """
import json, sys, time
import harness.grid as grid
if grid.MAX_CELLS < {cells}:  # a checkout older than CellTable: its limit raised, nothing else
    grid.MAX_CELLS = {cells}
if {row_group}:
    import harness.plan as plan
    plan.ROW_GROUP_ROWS = {row_group}
from harness.cli import main
t = time.perf_counter()
rc = main(["plan", "--grid", {grid!r}, "--jobs", {jobs!r}])
print(json.dumps({{"s": time.perf_counter() - t, "rc": rc}}))
"""

ROW = """
import json, time
t0 = time.perf_counter()
from harness.plan import load_plan_row
t = time.perf_counter()
row = load_plan_row({plan!r}, {index})
s = time.perf_counter() - t
assert row["row"] == {index}, row["row"]
print(json.dumps({{"s": s, "import_s": t - t0, "cell_examples": row["cell_examples"]}}))
"""

IMPORT_ONLY = """
import json
import pyarrow.parquet
from harness.plan import load_plan_row
print(json.dumps({"s": 0.0}))
"""

OLD_TASK_READ = """
import json, time
t0 = time.perf_counter()
from harness.plan import load_plan
t = time.perf_counter()
plan = load_plan({plan!r})
row = plan.iloc[{index}].to_dict()
cell_examples = int(plan.loc[plan.cell == row["cell"], "stop"].max())
print(json.dumps({{"s": time.perf_counter() - t, "import_s": t - t0}}))
"""


# The measured process runs under this reaper: its RUSAGE_CHILDREN peak RSS is that process's
# alone. (os.wait4 from this script would not do: a child's peak RSS starts from its parent's
# at the fork, and this script holds pyarrow by then.)
REAPER = """
import json, resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
u = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stderr.write("\\n" + json.dumps({"rc": rc, "rss_kb": u.ru_maxrss, "cpu_s": u.ru_utime + u.ru_stime}) + "\\n")
"""


def measure(python: str, code: str, tree: Path, timeout: float = 3600) -> dict[str, Any]:
    """Run `code` in a fresh interpreter in `tree`: its JSON line (stdout), wall and CPU (user +
    system) seconds, exit status and peak RSS in MB."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t = time.perf_counter()
    r = subprocess.run([python, "-c", REAPER, python, "-c", code], cwd=tree, env=env, capture_output=True,
                       text=True, timeout=timeout)
    wall = time.perf_counter() - t
    reaper = json.loads(r.stderr.strip().splitlines()[-1])
    out = r.stdout.strip().splitlines()
    info = json.loads(out[-1]) if reaper["rc"] == 0 and out else {}
    return {"wall_s": wall, "cpu_s": reaper["cpu_s"], "rc": reaper["rc"], "rss_mb": reaper["rss_kb"] / 1024,
            "err": r.stderr[-2000:], **info}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover
        pass
    try:
        mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")) / 2 ** 20
        ram = f", {mem:.1f} GiB RAM"
    except (OSError, StopIteration):  # pragma: no cover
        ram = ""
    import pyarrow

    return (f"{platform.machine()} {cpu} ({len(os.sched_getaffinity(0))} cores){ram}, Python "
            f"{platform.python_version()}, pyarrow {pyarrow.__version__}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--tree", type=Path, default=None, help="another checkout to plan with, for comparison")
    ap.add_argument("--row-group", type=int, default=0, help="harness.plan.ROW_GROUP_ROWS for this tree's plan")
    args = ap.parse_args(argv)
    work = args.dir or Path(tempfile.mkdtemp(prefix="plan-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    grid = work / "grid.yaml"
    grid.write_text(grid_text(args.cells))
    rows: list[tuple[str, ...]] = []

    def plan_with(tree: Path, label: str, row_group: int) -> Path:
        jobs = work / f"jobs-{label}"
        shutil.rmtree(jobs, ignore_errors=True)
        r = measure(args.python, PLAN.format(cells=args.cells, grid=str(grid), jobs=str(jobs),
                                                 row_group=row_group), tree)
        if r["rc"] != 0:
            print(r["err"], file=sys.stderr)
        plan = jobs / "plan-scale" / "plan.parquet"
        size = f"{plan.stat().st_size / 2 ** 20:.0f} MiB" if plan.is_file() else "-"
        rows.append((f"`harness plan` ({label})", f"{args.cells:,}", f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}",
                     f"{r.get('s', float('nan')):.1f}", f"{r['rss_mb']:.0f}", size, str(r["rc"])))
        print(rows[-1], file=sys.stderr, flush=True)
        return plan

    if args.tree is not None:
        old_plan = plan_with(args.tree.resolve(), f"before: {args.tree.name}", 0)
    plan = plan_with(REPO, "this tree" + (f", row groups of {args.row_group}" if args.row_group else ""),
                     args.row_group)
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(plan).metadata
    n = meta.num_rows
    base = measure(args.python, IMPORT_ONLY, REPO)
    rows.append(("python + `import harness.plan, pyarrow.parquet` only (what a row read imports)", "-",
                 f"{base['wall_s']:.2f}", f"{base['cpu_s']:.2f}", "-", f"{base['rss_mb']:.0f}", "-", str(base["rc"])))
    for where, index in (("first", 0), ("middle", n // 2), ("last", n - 1)):
        r = measure(args.python, ROW.format(plan=str(plan), index=index), REPO)
        rows.append((f"task: `load_plan_row` ({where} row)", f"{n:,} ({meta.num_row_groups} groups)",
                     f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}", f"{r.get('s', float('nan')):.3f}",
                     f"{r['rss_mb']:.0f}", "-", str(r["rc"])))
        print(rows[-1], file=sys.stderr, flush=True)
    old_read_plan = old_plan if args.tree is not None and old_plan.is_file() else plan
    r = measure(args.python, OLD_TASK_READ.format(plan=str(old_read_plan), index=n // 2), REPO)
    rows.append(("task before: whole plan (`load_plan`, `iloc`, cell's max `stop`; middle row)",
                 f"{n:,}", f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}", f"{r.get('s', float('nan')):.3f}",
                 f"{r['rss_mb']:.0f}", "-", str(r["rc"])))
    head = ("what", "rows", "process s", "CPU s", "call s", "peak RSS MB", "plan file", "exit")
    print(f"\nMachine: {machine()}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
