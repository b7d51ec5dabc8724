"""`harness`: a thin command line over the modules; errors map to exit codes.

Exit codes: 0 done, 2 bad input (nothing submitted, nothing overwritten), 1 a fault.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

from .errors import GridError, ItemError, UsageError


class Progress:
    """A one-line bar on a terminal, plain log lines otherwise (batch logs, Slurm output)."""

    def __init__(self, total: int, label: str, stream=sys.stderr, quiet: bool = False):
        self.total, self.label, self.stream = max(total, 1), label, stream
        self.done, self.t0, self.tty = 0, time.monotonic(), stream.isatty()
        self.quiet = quiet and not self.tty  # e.g. under Slurm: the log keeps no progress lines

    def advance(self, n: int, note: str = "") -> None:
        self.done += n
        elapsed = time.monotonic() - self.t0
        frac = self.done / self.total
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        rate = f"{self.done / elapsed:,.1f}/s, " if elapsed > 0 else ""
        text = (f"{self.label} {self.done}/{self.total} ({frac:.0%}) {rate}{elapsed:.0f}s elapsed, "
                f"~{eta:.0f}s left {note}")
        if self.quiet:
            return
        if self.tty:
            bar = "#" * int(30 * frac)
            self.stream.write(f"\r[{bar:<30}] {text[:100]:<100}")
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(text.rstrip() + "\n")
        self.stream.flush()


def cmd_plan(args: argparse.Namespace) -> int:
    from .catalog import assets_dir, needs, problems, refusal
    from .grid import load_grid
    from .launch.profiles import load_named
    from .launch.sizing import calibrated_rates, sizing_for
    from .plan import SUMMARY_COLUMNS, cost_table, load_plan, summary, write_plan

    grid = load_grid(args.grid)
    prof = load_named(args.profile or grid.profile, grid.path)
    root = assets_dir(args.assets, grid.assets)
    bad = problems(needs(grid.representative_cells), root)
    if bad and args.check_assets:
        raise refusal(bad, root)
    sizing, sized = sizing_for(prof, args.jobs, grid.sweep)
    path = write_plan(grid, args.jobs, overwrite=args.overwrite, assets=args.assets, sizing=sizing)
    plan = load_plan(path, SUMMARY_COLUMNS)  # read back, not built again: the costs' columns only
    print(summary(plan))
    print(sized)
    tflops = prof.gpu_tflops if prof else None
    rate = f"{tflops:g} TFLOP/s per GPU assumed by profile {prof.name!r}" if tflops else (
        f"profile {prof.name!r} sets no gpu_tflops" if prof else "no profile: pass --profile for GPU-hours")
    print(f"estimated cost ({rate}):")
    print(cost_table(plan, tflops))
    measured = calibrated_rates(prof.path) if prof else None
    if measured and measured[1]:
        device, rates = measured
        print(f"estimated cost (denoiser evaluations/s measured on {device} by `harness calibrate`):")
        print(cost_table(plan, rates=rates))
    print(f"assets: {root}: " + ("every asset the grid names is present" if not bad else
                                 f"{len(bad)} problem(s); `harness submit` and `harness run` will refuse:"))
    for line in bad:
        print(f"  {line}")
    print(f"plan: {path}")
    return 0


def check_device(device: str) -> str:
    """The torch device `run` will use, checked before anything runs: cpu, cuda or cuda:N
    with N < torch.cuda.device_count(); else a UsageError naming what is available."""
    import re

    m = re.fullmatch(r"(cpu|cuda)(?::(\d{1,4}))?", device)
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise UsageError(f"--device {device[:40]!r} is not a device; expected cpu, cuda or cuda:N")
    if m.group(1) == "cpu":
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(m.group(2) or 0)
    if index >= count:
        from .devices import cuda_view, describe

        available = "cpu" + "".join(f", cuda:{i}" for i in range(count))
        raise UsageError(f"--device {device}: no such device here ({describe(cuda_view())}); "
                         f"available: {available}")
    return device


def cmd_run(args: argparse.Namespace) -> int:
    check_device(args.device)
    from .catalog import require_grid
    from .grid import load_grid
    from .plan import load_plan, summary, write_plan
    from .launch.task import run_row_recorded
    from .ranks import World, configure_threads
    from .results import write_report_spec
    from .worker import Assets, pending

    from .launch.profiles import load_named
    from .launch.sizing import sizing_for

    grid = load_grid(args.grid)
    require_grid(grid, args.assets)
    # sized as `harness submit` sizes it, so that both write the same plan
    sizing, _ = sizing_for(load_named(grid.profile, grid.path), args.jobs, grid.sweep)
    path = write_plan(grid, args.jobs, overwrite=args.overwrite, assets=args.assets, sizing=sizing)
    plan = load_plan(path)  # what was written (and what a task would read), not a second build
    print(summary(plan))
    print(f"plan: {path}")
    results = Path(args.results)
    write_report_spec(results, grid.sweep, grid.report)
    rows = plan.to_dict("records")
    todo = sum(len(pending(r, results)) for r in rows)
    progress = Progress(todo, "examples")
    if todo == 0:
        print("every row is already complete; nothing to run")
    configure_threads()  # from the cores this process owns, as every array task does
    assets = Assets.for_plan_row(rows[0], args.device)
    for r in rows:
        run_row_recorded(r, results, assets, args.device, World(), int(r["cell_examples"]),
                         on_batch=lambda n, r=r: progress.advance(n, f"· {r['label']} · {r['attack_label']}"))
    print(f"results: {results / grid.sweep}")
    if args.report:
        return cmd_report(argparse.Namespace(results=str(results / grid.sweep), out=None))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .purify_job import purify_report, purify_state

    state = purify_state(args.results)
    if state is not None:  # a purify job: the manifests' summary
        from .fsutil import atomic_write

        text = purify_report(state)
        print(text, end="")
        out = Path(args.out) if args.out else state
        atomic_write(out / "report.md", text)
        print(f"written: {out / 'report.md'}")
        return 0
    from analysis.report import ReportOptions, build_report, default_out_dir

    split = lambda values: [v for text in values or [] for v in text.split(",") if v]  # noqa: E731
    options = ReportOptions(plots=getattr(args, "plots", "png"), rows=split(getattr(args, "rows", None)),
                            cols=split(getattr(args, "cols", None)), where=list(getattr(args, "where", None) or []),
                            value=getattr(args, "value", "robust_mean"),
                            reference=getattr(args, "reference", None), cost=getattr(args, "cost", False))
    print(build_report(args.results, args.out, options))
    out = args.out or default_out_dir(args.results)
    figures = "" if options.plots == "none" else f", figures/*.{options.plots}"
    print(f"written: {out}/report.{{md,csv,tex,html}}{figures}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from .launch.slurm import submit

    submit(args.grid, profile=args.profile, jobs=args.jobs, results=args.results,
           dry_run=args.dry_run, resume=args.resume, assets=args.assets, preflight=args.preflight)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .catalog import assets_dir
    from .grid import load_grid
    from .launch.slurm import calibrate
    from .launch.profiles import load_profile, resolve

    grid = load_grid(args.grid)
    prof = load_profile(resolve(args.profile or grid.profile, grid.path))
    calibrate(grid, prof, Path(args.jobs).absolute() / grid.sweep / "calibrate", assets_dir(args.assets, grid.assets))
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from .catalog import is_ref, load_catalog, needs, problems, ref_name
    from .staging import stage

    cat = load_catalog()
    if args.list:
        for name, a in cat.assets.items():
            arch = cat.archs.get(a.arch or "")
            what = f"{arch.name}, {arch.params:,} parameters" if arch else (
                f"{len(a.files)} listed file(s)" if a.files else "") + (
                f"{', ' if a.files else ''}{a.images['count']:,} images counted" if a.images else "")
            what += ("; published checksum verified" if a.pinned else
                     "; no published checksum: sha256 recorded by the first stage" if a.files or arch else "")
            print(f"{name} ({a.kind}): <assets>/{a.path}\n    {what}\n    published: {a.published}")
        return 0
    if not args.dir:
        raise UsageError("harness stage: give the asset directory (or --list)")
    root = Path(args.dir).absolute()
    selected = args.only is not None or args.grid is not None
    names = list(args.only or [])
    local: list[str] = []
    if args.grid:
        from .grid import load_grid

        needed = needs(load_grid(args.grid).cells)
        names += [ref_name(n.value) for n in needed if is_ref(n.value)]
        local = problems([n for n in needed if not is_ref(n.value)], root)
    results = stage(root, list(dict.fromkeys(names)) if selected else None)
    for line in local:  # the grid's local paths: checked for presence only
        print(f"missing  {line}")
    bad = [r for r in results if r.status == "bad" or (selected and r.status == "missing")]
    return 2 if bad or local else 0


def cmd_status(args: argparse.Namespace) -> int:
    from .launch.status import format_status, sweep_status
    from .purify_job import purify_state, purify_status

    state = purify_state(args.target)
    if state is not None:
        from .launch.purify_array import scheduler_summary

        print(purify_status(state))
        print(scheduler_summary(state))
        return 0
    print(format_status(sweep_status(args.target, jobs=args.jobs)))
    return 0


def cmd_purify(args: argparse.Namespace) -> int:
    import json
    import os

    from .launch.profiles import load_named
    from .launch.sizing import calibrated_rates
    from .purify_job import (Purifier, cost_line, load_job_file, make_job, plan_job, purify_report, run_shard,
                             shard_done)

    fields = load_job_file(args.job) if args.job else {}
    where = args.job or "command line"
    for key, value in (("input", args.input), ("output", args.output), ("layout", args.layout),
                       ("seed", args.seed), ("shard_items", args.shard_items), ("batch_size", args.batch_size),
                       ("on_error", args.on_error), ("precision", args.precision), ("assets", args.assets)):
        if value is not None:
            fields[key] = value
    for key, name, params in (("purifier", args.purifier, args.params),
                              ("classifier", args.classifier, args.classifier_params)):
        if name is not None or params is not None:
            entry = fields.get(key) if isinstance(fields.get(key), dict) else (
                {"name": fields[key]} if isinstance(fields.get(key), str) else {})
            if name is not None:
                entry["name"] = name
            if params is not None:
                try:
                    entry["params"] = json.loads(params)
                except ValueError as exc:
                    raise GridError(where, f"{key}.params", f"not JSON ({exc}); e.g. '{{\"t_s\": 0.1}}'") from None
            fields[key] = entry
    job = make_job(fields, where)
    plan = plan_job(job, write=not args.dry_run)
    prof = load_named(args.profile, Path(where))
    measured = calibrated_rates(prof.path) if prof else None
    print(f"purify {job.input} ({job.layout}) -> {job.output}")
    print(cost_line(plan, measured[1] if measured else None, prof.gpu_tflops if prof else None))
    print(f"plan: {job.state / 'plan.json'}")
    if args.dry_run:
        return 0
    if prof is not None:
        from .launch.purify_array import submit_purify

        submit_purify(plan, prof, resume=args.resume)
        return 0
    check_device(args.device)
    from .ranks import configure_threads

    configure_threads()
    progress = Progress(plan["items"], "items", quiet="SLURM_JOB_ID" in os.environ)
    net: list[Purifier] = []

    def load() -> Purifier:
        if not net:
            net.append(Purifier.load(plan, args.device))
        return net[0]

    for i, shard in enumerate(plan["shards"]):
        if shard_done(plan, i):
            progress.advance(shard["stop"] - shard["start"], "(done before)")
            continue
        run_shard(plan, i, load, on_items=progress.advance)  # finishes the shard once every item is staged
    busy = [s["name"] for i, s in enumerate(plan["shards"]) if not shard_done(plan, i)]
    if busy:  # another process holds them: this run's output is not the whole data set yet
        print(f"harness: {len(busy)} shard(s) ({', '.join(busy[:5])}{', ...' if len(busy) > 5 else ''}) are being "
              f"purified by another process; see `harness status {job.output}`, or run again when it ends",
              file=sys.stderr)
        return 1
    print(f"output: {job.output}")
    print(purify_report(job.state), end="")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from . import doctor
    from .grid import load_grid
    from .launch.profiles import load_named

    grid = load_grid(args.grid) if args.grid else None
    prof = load_named(args.profile or (grid.profile if grid else None), grid.path if grid else None)
    return doctor.run(prof, grid, args.results, args.jobs, args.assets, login=args.login)


def cmd_train(args: argparse.Namespace) -> int:
    from .models.bundled import ASSETS
    from .train import main

    main(args.which, Path(args.out) if args.out else ASSETS, ddpm_steps=args.ddpm_steps, cnn_steps=args.cnn_steps)
    return 0


MAX_MESSAGE = 3000

ASSETS_HELP = ("asset directory that asset:<name> values resolve against (default: the grid's "
               "`assets:`, else $HARNESS_ASSETS, else ./assets)")


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
    sp.add_argument("--profile", default=None,
                    help="cluster profile for the GPU-hour estimate (default: the grid's `profile:`)")
    sp.add_argument("--assets", default=None, help=ASSETS_HELP)
    sp.add_argument("--check-assets", action="store_true",
                    help="exit 2 when an asset the grid names is missing or changed")

    sp = add("run", cmd_run, "plan and run every row in this process (CPU or one GPU)")
    sp.add_argument("--grid", required=True, help="grid YAML file")
    sp.add_argument("--jobs", default="jobs")
    sp.add_argument("--results", default="results", help="results directory (default: results)")
    sp.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    sp.add_argument("--overwrite", action="store_true", help="replace a plan of the same sweep name")
    sp.add_argument("--report", action="store_true", help="print the report when done")
    sp.add_argument("--assets", default=None, help=ASSETS_HELP)

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
    sp.add_argument("--preflight", action="store_true",
                    help="first run every distinct combination on 2 examples in one job on one node; "
                         "submit nothing if any fails")
    sp.add_argument("--assets", default=None, help=ASSETS_HELP)

    sp = add("calibrate", cmd_calibrate,
             "measure the denoiser and gradient rates of a grid's networks on one node of a profile")
    sp.add_argument("--grid", required=True, help="grid YAML file (its networks and batch size)")
    sp.add_argument("--profile", default=None, help="cluster profile (default: the grid's `profile:`)")
    sp.add_argument("--jobs", default="jobs", help="jobs directory (default: jobs)")
    sp.add_argument("--assets", default=None, help=ASSETS_HELP)

    sp = add("stage", cmd_stage, "check a local asset directory against the catalogue (never downloads)")
    sp.add_argument("dir", nargs="?", help="the asset directory")
    sp.add_argument("--only", action="append", metavar="NAME",
                    help="check only this catalogued asset (repeat for more)")
    sp.add_argument("--grid", default=None, help="check the assets this grid names; exit 2 if any is missing")
    sp.add_argument("--list", action="store_true", help="list the catalogue: names, layout, where published")

    sp = add("purify", cmd_purify, "purify a whole data set (image folder, WebDataset, Parquet) into the same "
             "layout, locally or as a Slurm array; resumable, with per-shard manifests")
    sp.add_argument("--job", default=None, help="job YAML file with the fields below (flags override it)")
    sp.add_argument("--input", default=None, help="the data set: an image folder, .tar shards or .parquet files")
    sp.add_argument("--output", default=None, help="where the purified data set goes (provenance: <output>.purify/)")
    sp.add_argument("--layout", default=None, help="folder | webdataset | parquet (default: detected)")
    sp.add_argument("--purifier", default=None, help="purifier plugin, e.g. lorid")
    sp.add_argument("--params", default=None, help="the purifier's parameters as JSON")
    sp.add_argument("--classifier", default=None, help="optional: record its prediction before and after")
    sp.add_argument("--classifier-params", default=None, help="the classifier's parameters as JSON")
    sp.add_argument("--seed", type=int, default=None, help="noise seed (per item: this and the item's key)")
    sp.add_argument("--shard-items", type=int, default=None, help="items per shard of an image folder (default 256)")
    sp.add_argument("--batch-size", type=int, default=None, help="items per batch (default 64)")
    sp.add_argument("--on-error", default=None, choices=("skip", "stop"),
                    help="an unreadable input image: skip it (named, recorded) or stop (default: skip)")
    sp.add_argument("--precision", default=None, help="auto | fp32 | bf16")
    sp.add_argument("--assets", default=None, help=ASSETS_HELP)
    mode = sp.add_mutually_exclusive_group()
    mode.add_argument("--profile", default=None, help="submit the shards as a Slurm array with this profile")
    mode.add_argument("--local", action="store_true", help="run every shard in this process (the default)")
    sp.add_argument("--device", default="cpu", help="torch device for --local, e.g. cpu or cuda:0")
    sp.add_argument("--resume", action="store_true", help="with --profile: submit only shards neither done nor active")
    sp.add_argument("--dry-run", action="store_true", help="plan and print the cost; purify nothing")

    sp = add("doctor", cmd_doctor, "check that a grid would run here under a profile: Python and arch, torch and "
             "CUDA, GPUs and NVML, MPI, Slurm, assets, writable results; exit 0 only if ready")
    sp.add_argument("--profile", default=None, help="cluster profile (default: the grid's `profile:`)")
    sp.add_argument("--grid", default=None, help="grid YAML file: its assets and expected output size")
    sp.add_argument("--results", default="results", help="results directory (default: results)")
    sp.add_argument("--jobs", default="jobs", help="jobs directory (default: jobs)")
    sp.add_argument("--assets", default=None, help=ASSETS_HELP)
    sp.add_argument("--login", action="store_true",
                    help="on a login node: the GPU is checked on the nodes (srun harness doctor ...), not here")

    sp = add("status", cmd_status, "per cell: examples done / running / queued / failed / missing")
    sp.add_argument("target", help="jobs/<sweep> or results/<sweep>")
    sp.add_argument("--jobs", default=None, help="jobs directory, when the target is results/<sweep> elsewhere")

    sp = add("report", cmd_report, "tables and figures from result files (console, Markdown, CSV, LaTeX, HTML)")
    sp.add_argument("results", help="results directory: results/ or results/<sweep>")
    sp.add_argument("--out", default=None, help="where to write report files (default: <results>/_report)")
    sp.add_argument("--plots", choices=("none", "png", "svg"), default="png",
                    help="figures beside the tables and in report.html (default: png)")
    sp.add_argument("--rows", action="append", metavar="COL[,COL]",
                    help="pivot: row keys, any summary or parameter column (e.g. purifier.t_s)")
    sp.add_argument("--cols", action="append", metavar="COL[,COL]", help="pivot: column keys")
    sp.add_argument("--where", action="append", metavar="EXPR",
                    help="filter: key=value, key!=value, key=a,b, key<=x ... (repeat to AND; eps=8/255 works)")
    sp.add_argument("--value", default="robust_mean",
                    choices=("robust_mean", "clean", "robust_vote", "robust_worst", "nfe", "s_per_row", "j_per_row"),
                    help="what the pivot's cells show (default: robust_mean with its interval)")
    sp.add_argument("--reference", default=None, metavar="YAML",
                    help="published numbers to compare against (e.g. references/lorid-aaai2025.yaml)")
    sp.add_argument("--cost", action="store_true",
                    help="print the cost table per defence and by device type (always in report.md/html)")

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
        text = str(exc)
        if isinstance(exc, GridError) and len(text) > MAX_MESSAGE:  # a message never floods the terminal (values are cut anyway)
            text = text[:MAX_MESSAGE] + f" [... {len(text) - MAX_MESSAGE} more characters]"
        print(f"harness: error: {text}", file=sys.stderr)
        return exc.exit_code
    except ItemError as exc:  # an input item that does not decode, with on_error: stop
        print(f"harness: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("harness: interrupted; finished batches are kept, run again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
