"""`harness`: a thin command line over the modules; errors map to exit codes.

Exit codes: 0 done, 2 bad input (nothing submitted, nothing overwritten), 1 a fault.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

from .errors import UsageError


class Progress:
    """A one-line bar on a terminal, plain log lines otherwise (batch logs, Slurm output)."""

    def __init__(self, total: int, label: str, stream=sys.stderr):
        self.total, self.label, self.stream = max(total, 1), label, stream
        self.done, self.t0, self.tty = 0, time.monotonic(), stream.isatty()

    def advance(self, n: int, note: str = "") -> None:
        self.done += n
        elapsed = time.monotonic() - self.t0
        frac = self.done / self.total
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        text = f"{self.label} {self.done}/{self.total} ({frac:.0%}) {elapsed:.0f}s elapsed, ~{eta:.0f}s left {note}"
        if self.tty:
            bar = "#" * int(30 * frac)
            self.stream.write(f"\r[{bar:<30}] {text[:100]:<100}")
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(text.rstrip() + "\n")
        self.stream.flush()


def cmd_plan(args: argparse.Namespace) -> int:
    from .grid import load_grid
    from .plan import make_plan, summary, write_plan

    grid = load_grid(args.grid)
    path = write_plan(grid, args.jobs, overwrite=args.overwrite)
    print(summary(make_plan(grid)))
    print(f"plan: {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .grid import load_grid
    from .plan import make_plan, summary, write_plan
    from .launch.task import mark_complete
    from .ranks import World
    from .results import shard_dir
    from .worker import Assets, pending, run_row

    grid = load_grid(args.grid)
    path = write_plan(grid, args.jobs, overwrite=args.overwrite)
    plan = make_plan(grid)
    print(summary(plan))
    print(f"plan: {path}")
    results = Path(args.results)
    rows = plan.to_dict("records")
    todo = sum(len(pending(r, results)) for r in rows)
    progress = Progress(todo, "examples")
    if todo == 0:
        print("every row is already complete; nothing to run")
    assets = Assets(device=args.device)
    for r in rows:
        written = run_row(r, results, assets, cell_examples=grid.examples,
                          on_batch=lambda n, r=r: progress.advance(n, f"· {r['label']} · {r['attack_label']}"))
        mark_complete(r, shard_dir(results, r["sweep"], r["cell"], r["shard"]), World(), written)
    print(f"results: {results / grid.sweep}")
    if args.report:
        return cmd_report(argparse.Namespace(results=str(results / grid.sweep), out=None))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import build_report, default_out_dir

    print(build_report(args.results, args.out))
    print(f"written: {args.out or default_out_dir(args.results)}/report.{{md,csv,tex}}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from .launch.slurm import submit

    submit(args.grid, profile=args.profile, jobs=args.jobs, results=args.results,
           dry_run=args.dry_run, resume=args.resume)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .launch.status import format_status, sweep_status

    print(format_status(sweep_status(args.target, jobs=args.jobs)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .models.bundled import ASSETS
    from .train import main

    main(args.which, Path(args.out) if args.out else ASSETS, ddpm_steps=args.ddpm_steps, cnn_steps=args.cnn_steps)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("plan", cmd_plan, "validate a grid and write jobs/<sweep>/plan.parquet")
    sp.add_argument("--grid", required=True, help="grid YAML file")
    sp.add_argument("--jobs", default="jobs", help="jobs directory (default: jobs)")
    sp.add_argument("--overwrite", action="store_true", help="replace a plan of the same sweep name")

    sp = add("run", cmd_run, "plan and run every row in this process (CPU or one GPU)")
    sp.add_argument("--grid", required=True, help="grid YAML file")
    sp.add_argument("--jobs", default="jobs")
    sp.add_argument("--results", default="results", help="results directory (default: results)")
    sp.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    sp.add_argument("--overwrite", action="store_true", help="replace a plan of the same sweep name")
    sp.add_argument("--report", action="store_true", help="print the report when done")

    sp = add("submit", cmd_submit, "plan and submit the unfinished rows as Slurm job arrays (returns at once)")
    sp.add_argument("--grid", required=True, help="grid YAML file")
    sp.add_argument("--profile", default=None,
                    help="cluster profile: a name in slurm/profiles/ or a YAML file (default: the grid's `profile:`)")
    sp.add_argument("--jobs", default="jobs", help="jobs directory (default: jobs)")
    sp.add_argument("--results", default=None,
                    help="results directory (default: the last submission's, else results)")
    sp.add_argument("--dry-run", action="store_true", help="print the batch scripts and array ranges; submit nothing")
    sp.add_argument("--resume", action="store_true",
                    help="after earlier submissions: submit only rows neither complete nor queued/running")

    sp = add("status", cmd_status, "per cell: examples done / running / queued / failed / missing")
    sp.add_argument("target", help="jobs/<sweep> or results/<sweep>")
    sp.add_argument("--jobs", default=None, help="jobs directory, when the target is results/<sweep> elsewhere")

    sp = add("report", cmd_report, "tables from result files (console, Markdown, CSV, LaTeX)")
    sp.add_argument("results", help="results directory: results/ or results/<sweep>")
    sp.add_argument("--out", default=None, help="where to write report files (default: <results>/_report)")

    sp = add("train", cmd_train, "rebuild the bundled digits classifier and DDPM")
    sp.add_argument("--which", choices=("all", "classifier", "ddpm"), default="all")
    sp.add_argument("--out", default=None, help="asset directory (default: the package's assets)")
    sp.add_argument("--ddpm-steps", type=int, default=4000)
    sp.add_argument("--cnn-steps", type=int, default=3000)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except UsageError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("harness: interrupted; finished batches are kept, run again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
