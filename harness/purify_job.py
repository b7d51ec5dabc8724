"""`harness purify`: a whole data set purified into the same layout, shard by shard.

A job (flags or a small YAML file, validated as a grid is, before anything runs) names the
input data set (image folder, WebDataset tars or Parquet: harness.dataset_io), the output
directory, the purifier and its parameters. Planning splits the input into shards; each shard
is one array task (data-parallel ranks within) or one step of a local run.

Exactly once: a rank stages each batch of purified items as one Parquet part under
<output>.purify/staging/<shard>/, atomically, and skips the items already staged; when every
item of a shard is staged, the shard's output files are written in the input's layout
(atomically, deterministic bytes) and then its manifest, whose presence marks the shard done.
So kill -9, scancel, requeue and a second concurrent run never lose, duplicate or corrupt an
item, and an interrupted job gives the same bytes as an uninterrupted one: each item's noise
comes from the job's seed and the item's key alone (harness.rng), never from its batch.

Provenance lives beside the output, not in it (an image folder must hold only the data set
for ImageFolder-style loaders): <output>.purify/ holds plan.json and manifests/<shard>.parquet
(item key, input and output sha256, status, purifier and parameters, seed, denoiser sha256,
time, L2/Linf change and, with a classifier, its predictions before and after).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from .batching import FitRecord, gauge_for, run_batches, start_fit
from .errors import GridError, ItemError, UsageError
from .fsutil import safe_name

JOB_KEYS = ("input", "output", "layout", "purifier", "classifier", "seed", "shard_items", "batch_size",
            "on_error", "precision", "assets")
ON_ERROR = ("skip", "stop")
STATE_SUFFIX = ".purify"
PLAN_FILE = "plan.json"
MANIFEST_COLUMNS = ("position", "key", "status", "input_sha256", "output_sha256", "seed", "l2", "linf",
                    "pred_before", "pred_after", "time_s")


@dataclass(frozen=True)
class PurifyJob:
    input: str
    output: str
    layout: str
    purifier: dict[str, Any]  # {name, params}, defaults filled (as a grid cell's)
    classifier: dict[str, Any] | None
    seed: int = 0
    shard_items: int = 256
    batch_size: int = 64
    on_error: str = "skip"
    precision: str = "auto"
    assets: str | None = None

    @property
    def state(self) -> Path:
        """Where the plan, staging and manifests live: beside the output."""
        return Path(self.output + STATE_SUFFIX)

    def identity(self) -> dict[str, Any]:
        """What the output bytes depend on (a rerun with another identity would mix two jobs)."""
        d = asdict(self)
        d.pop("on_error")
        d.pop("batch_size")  # items do not depend on their batch
        d.pop("assets")
        return d


# ---------------------------------------------------------------- the job, checked

def load_job_file(path: str | Path) -> dict[str, Any]:
    """A job YAML file's fields (read as strictly as a grid file)."""
    from .grid import parse_yaml

    p = Path(path)
    try:
        raw = parse_yaml(p.read_bytes(), str(p))
    except OSError as exc:
        raise UsageError(f"{p}: cannot read the job file ({exc.strerror})") from None
    if not isinstance(raw, dict):
        raise GridError(str(p), "(top)", f"expected a mapping with keys: {', '.join(JOB_KEYS)}")
    return raw


def make_job(fields: dict[str, Any], file: str = "command line") -> PurifyJob:
    """The job from its fields, every one checked (GridError naming the key, exit 2)."""
    from .dataset_io import LAYOUTS, detect_layout
    from .grid import _expand_entry
    from .grid import PRECISIONS

    for k in fields:
        if k not in JOB_KEYS:
            raise GridError(file, str(k), f"unknown key; allowed: {', '.join(JOB_KEYS)}")
    for k in ("input", "output", "purifier"):
        if fields.get(k) in (None, ""):
            raise GridError(file, k, "required")
    src, dst = Path(str(fields["input"])).absolute(), Path(str(fields["output"])).absolute()
    if not src.exists():
        raise GridError(file, "input", f"{src}: no such file or directory")
    if dst == src or src in dst.parents or dst in src.parents:
        raise GridError(file, "output", f"{dst} overlaps the input {src}; expected a separate directory")
    layout = fields.get("layout") or detect_layout(src)
    if layout not in LAYOUTS:
        raise GridError(file, "layout", f"{layout!r} is not allowed; expected one of {', '.join(LAYOUTS)}")
    variants = _expand_entry("purifier", fields["purifier"], file, "purifier")
    if len(variants) != 1:
        raise GridError(file, "purifier", f"{len(variants)} variants; a purify job takes one (no lists of values)")
    classifier = None
    if fields.get("classifier") not in (None, ""):
        cls = _expand_entry("classifier", fields["classifier"], file, "classifier")
        if len(cls) != 1:
            raise GridError(file, "classifier", "a purify job takes one classifier")
        classifier = cls[0]

    def integer(key: str, default: int, low: int, high: int) -> int:
        v = fields.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise GridError(file, key, f"{v!r} is not allowed; expected a whole number in {low}..{high}")
        return v

    on_error = fields.get("on_error", "skip")
    if on_error not in ON_ERROR:
        raise GridError(file, "on_error", f"{on_error!r} is not allowed; expected one of {', '.join(ON_ERROR)}")
    precision = fields.get("precision", "auto")
    if precision not in PRECISIONS:
        raise GridError(file, "precision", f"{precision!r} is not allowed; expected one of {', '.join(PRECISIONS)}")
    return PurifyJob(input=str(src), output=str(dst), layout=layout, purifier=variants[0], classifier=classifier,
                     seed=integer("seed", 0, 0, 2 ** 63 - 1), shard_items=integer("shard_items", 256, 1, 10_000_000),
                     batch_size=integer("batch_size", 64, 1, 100_000), on_error=on_error, precision=precision,
                     assets=str(fields["assets"]) if fields.get("assets") else None)


def _entries(job: PurifyJob) -> list[dict[str, Any]]:
    """The job as the asset checks see a cell: its purifier and classifier."""
    return [{"purifier": job.purifier, **({"classifier": job.classifier} if job.classifier else {})}]


def nfe_per_item(job: PurifyJob) -> int:
    from .plan import nfe_per_purification

    return nfe_per_purification(job.purifier)


def denoiser_input(value: Any, root: Path) -> tuple[tuple[int, ...], str] | None:
    """(channels, height, width) a denoiser takes and what it is: a catalogued or bundled
    architecture's, or a diffusers folder's config.json (in_channels, sample_size); None when
    neither says."""
    from .catalog import arch_of, resolve

    den = arch_of("denoiser", value)
    if den is not None:
        return tuple(den.input), den.name
    if not isinstance(value, str) or not value:
        return None
    config = resolve(value, root) / "config.json"
    try:
        cfg = json.loads(config.read_text())
        side = cfg["sample_size"]
        h, w = (side, side) if isinstance(side, int) else tuple(side)
        return (int(cfg.get("in_channels", 3)), int(h), int(w)), f"diffusers folder {config.parent}"
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not a diffusers folder: the loader names the problem


def _check_resolution(job: PurifyJob, first: Any, root: Path) -> None:
    """The denoiser's input size against the data set's first image (plan time, not the worker)."""
    found = denoiser_input(job.purifier["params"].get("denoiser"), root)
    if found is None or first.image is None:
        return
    (want, name), (h, w, c) = found, first.image.shape
    if (c, h, w) != want:
        raise GridError(job.input, "purifier.params.denoiser",
                        f"{job.purifier['params']['denoiser']} ({name}) works on "
                        f"{'x'.join(map(str, want))} (channels x height x width) images; item "
                        f"{first.key!r} is {c}x{h}x{w}")


def plan_job(job: PurifyJob, write: bool = True) -> dict[str, Any]:
    """Shard the input, check what can be checked before anything runs, and write (or reuse)
    <output>.purify/plan.json. A second plan of the same job reuses the first (so a rerun
    resumes); another job over the same output is refused, as is an output directory that
    holds anything but this job's files. `write=False` (a dry run): check and return only."""
    from .catalog import assets_dir, needs, pins, require
    from .dataset_io import list_shards, read_items
    from .fsutil import atomic_write

    root = assets_dir(job.assets, None)
    require(needs(_entries(job)), root)
    shards = list_shards(Path(job.input), job.layout, job.shard_items)
    first = next((s for s in shards if len(s)), None)
    if first is None:
        raise UsageError(f"{job.input}: no items to purify")
    _check_resolution(job, read_items(Path(job.input), first, [0])[0], root)
    plan = {"kind": "purify", "job": asdict(job), "identity": job.identity(),
            "assets_dir": str(root), "asset_sha256": pins(_entries(job), root),
            "nfe_per_item": nfe_per_item(job), "items": sum(len(s) for s in shards),
            "shards": [asdict(s) for s in shards]}
    plan = json.loads(json.dumps(plan))  # as read back (tuples become lists), to compare with a plan on disk
    path = job.state / PLAN_FILE
    if path.is_file():
        old = read_plan(job.state)
        if old["identity"] != plan["identity"] or old["shards"] != plan["shards"]:
            raise UsageError(f"{path}: {job.output} is (being) written by another job or from another input "
                             "(purifier, parameters, seed, input or sharding differ); choose another --output, "
                             f"or remove {job.output} and {job.state} to start over")
        if old.get("asset_sha256") != plan["asset_sha256"]:
            raise UsageError(f"{path}: the denoiser or classifier files changed since this job was planned; "
                             "its finished shards were made with the old ones")
        if old["job"] != plan["job"] and write:  # batch size, on_error: the output does not depend on them
            atomic_write(path, json.dumps(plan, indent=1, sort_keys=True).encode())
        return plan
    out = Path(job.output)
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"{out}: not empty, and no purify job of this output is planned ({path} is absent); "
                         "the purified data set would mix with its files; choose an empty or new --output")
    if not write:
        return plan
    job.state.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(plan, indent=1, sort_keys=True).encode())
    return plan


def read_plan(state: str | Path) -> dict[str, Any]:
    path = Path(state) / PLAN_FILE
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a purify plan ({exc})") from None
    if plan.get("kind") != "purify":
        raise UsageError(f"{path}: not a purify plan")
    return plan


def job_of(plan: dict[str, Any]) -> PurifyJob:
    return PurifyJob(**plan["job"])


def cost_line(plan: dict[str, Any], rates: dict[str, float] | None = None, tflops: float | None = None) -> str:
    """Items × denoiser evaluations, and GPU-hours from a measured rate or an assumed TFLOP/s."""
    from .catalog import arch_of
    from .plan import human

    job = job_of(plan)
    nfe = plan["items"] * plan["nfe_per_item"]
    den = str(job.purifier["params"].get("denoiser") or "")
    line = (f"{plan['items']:,} items in {len(plan['shards'])} shards × {plan['nfe_per_item']} denoiser "
            f"evaluations = ~{human(nfe)} evaluations")
    if rates and rates.get(den):
        return line + f"; ~{nfe / rates[den] / 3600:,.2f} GPU-hours at the measured {rates[den]:,.0f} evaluations/s"
    arch = arch_of("denoiser", den or None)
    if tflops and arch is not None:
        return line + f"; ~{nfe * arch.gflops / 1e3 / tflops / 3600:,.2f} GPU-hours at {tflops:g} TFLOP/s assumed"
    return line + "; GPU-hours: no rate (`harness calibrate`, or a profile's gpu_tflops)"


# ---------------------------------------------------------------- one shard

def manifest_path(state: Path, shard_name: str) -> Path:
    return state / "manifests" / (safe_name(shard_name) + ".parquet")


def staging_dir(state: Path, shard_name: str) -> Path:
    """Where a shard's ranks stage their purified items until the shard is finished."""
    return state / "staging" / safe_name(shard_name)


def source_shard(plan: dict[str, Any], index: int) -> Any:
    """Shard `index` of the plan as harness.dataset_io's SourceShard."""
    from .dataset_io import SourceShard

    return SourceShard(**{**plan["shards"][index], "files": tuple(plan["shards"][index]["files"])})


def shard_done(plan: dict[str, Any], index: int) -> bool:
    return manifest_path(job_of(plan).state, plan["shards"][index]["name"]).is_file()


def _staged(staging: Path) -> dict[int, Path]:
    """position → the valid part file holding it (a part that does not read is set aside)."""
    import pyarrow.parquet as pq

    out: dict[int, Path] = {}
    for f in sorted(staging.glob("rank-*-part-*.parquet")):
        try:
            positions = pq.read_table(f, columns=["position"]).column("position").to_pylist()
        except Exception:  # noqa: BLE001 (a damaged part counts for nothing: its items are redone)
            f.rename(f.with_name(f.name + ".bad"))
            continue
        for p in positions:
            out.setdefault(int(p), f)
    return out


@dataclass
class Purifier:
    """The job's networks on one device, loaded once per process."""

    purify: Callable[..., Any]
    classify: Callable[..., Any] | None
    device: str

    @classmethod
    def load(cls, plan: dict[str, Any], device: str) -> "Purifier":
        from .worker import Assets

        job = job_of(plan)
        assets = Assets(device=device, root=Path(plan["assets_dir"]), pinned=plan.get("asset_sha256") or {})
        precision = assets.precision({"precision": job.precision})
        purify = assets.purifier(job.purifier, precision)
        classify = assets.classifier(job.classifier, precision) if job.classifier else None
        return cls(purify, classify, device)


def _purify_group(net: Purifier, plan: dict[str, Any], items: list[Any]) -> list[dict[str, Any]]:
    """Rows for items of one image shape: purified PNG, sha256s, changes, predictions."""
    import numpy as np
    import torch

    from .dataset_io import encode_png
    from .precision import to_device
    from .rng import ExampleNoise, derive_seed

    job = job_of(plan)
    t0 = time.perf_counter()
    x = to_device(torch.from_numpy(np.stack([i.image for i in items])).permute(0, 3, 1, 2).float().div_(255),
                  net.device)
    seeds = [derive_seed("purify", job.seed, i.key) for i in items]
    with torch.inference_mode():
        out = net.purify(x, ExampleNoise(seeds, net.device)).float().clamp_(0, 1)
        u8 = out.mul(255).round_().to(torch.uint8)
        diff = u8.float().div(255) - x
        l2 = diff.flatten(1).norm(dim=1).tolist()
        linf = diff.flatten(1).abs().amax(dim=1).tolist()
        before = after = [None] * len(items)
        if net.classify is not None:
            before = net.classify(x).argmax(1).tolist()
            after = net.classify(u8.float().div(255)).argmax(1).tolist()
    images = u8.permute(0, 2, 3, 1).cpu().numpy()
    per_item = (time.perf_counter() - t0) / len(items)
    rows = []
    for k, item in enumerate(items):
        png = encode_png(images[k])
        rows.append({"position": item.index, "key": item.key, "status": "purified", "png": png,
                     "input_sha256": item.source_sha256, "output_sha256": hashlib.sha256(png).hexdigest(),
                     "seed": seeds[k], "l2": l2[k], "linf": linf[k], "pred_before": before[k],
                     "pred_after": after[k], "time_s": per_item})
    return rows


def _part_bytes(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("position", pa.int64()), ("key", pa.string()), ("status", pa.string()),
                        ("png", pa.binary()), ("input_sha256", pa.string()), ("output_sha256", pa.string()),
                        ("seed", pa.int64()), ("l2", pa.float64()), ("linf", pa.float64()),
                        ("pred_before", pa.int64()), ("pred_after", pa.int64()), ("time_s", pa.float64())])
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    return buf.getvalue()


_FITS: dict[str, Any] = {}  # the batch that fits, per device and job combination, in this process


def run_shard(plan: dict[str, Any], index: int, net: Purifier | Callable[[], Purifier], rank: int = 0,
              world: int = 1, on_items: Callable[[int], None] | None = None) -> int:
    """Purify and stage this rank's missing items of shard `index`, then finish the shard if
    every item is staged. Returns the items this call staged (0: done, or another process
    holds this rank's slice)."""
    import numpy as np  # noqa: F401  (loaded before torch: the order the workers use)

    from .dataset_io import read_items
    from .fsutil import atomic_write, file_lock

    job = job_of(plan)
    shard = source_shard(plan, index)
    if shard_done(plan, index):
        return 0
    staging = staging_dir(job.state, shard.name)
    staging.mkdir(parents=True, exist_ok=True)
    written = 0
    with file_lock(staging / f".rank-{rank}.lock", wait=False) as state:
        if state == "busy":
            print(f"harness: {staging} rank {rank}: another process is purifying it; skipped", file=sys.stderr)
            return 0
        done = _staged(staging)
        todo = [p for p in range(rank, len(shard), world) if p not in done]
        if todo and not isinstance(net, Purifier):
            net = net()

        def step(positions: list[int]) -> None:
            nonlocal written
            items = read_items(Path(job.input), shard, positions)
            rows: list[dict[str, Any]] = []
            good = [i for i in items if i.error is None]
            for bad in (i for i in items if i.error is not None):
                if job.on_error == "stop":
                    raise ItemError(f"{job.input}: item {bad.key!r} (shard {shard.name}): {bad.error}; "
                                    "stopped (on_error: stop); fix or remove it, or run with on_error: skip")
                print(f"harness: {job.input}: item {bad.key!r} skipped: {bad.error}", file=sys.stderr)
                rows.append({"position": bad.index, "key": bad.key, "status": f"skipped: {bad.error}",
                             "png": None, "input_sha256": bad.source_sha256, "output_sha256": None,
                             "seed": None, "l2": None, "linf": None, "pred_before": None, "pred_after": None,
                             "time_s": 0.0})
            shapes: dict[tuple[int, ...], list[Any]] = {}
            for i in good:
                shapes.setdefault(i.image.shape, []).append(i)
            for group in shapes.values():
                rows += _purify_group(net, plan, group)  # type: ignore[arg-type]
            rows.sort(key=lambda r: r["position"])
            atomic_write(staging / f"rank-{rank}-part-{positions[0]:07d}.parquet", _part_bytes(rows))
            written += len(positions)
            if on_items:
                on_items(len(positions))

        if todo:  # the batch grows on a GPU and steps back out of memory (harness.batching)
            device = str(net.device)  # type: ignore[union-attr]
            combination = {"purifier": job.purifier, "classifier": job.classifier, "precision": job.precision}
            record = FitRecord(job.state, device)
            gauge = gauge_for(device)
            fit = start_fit(record, combination, job.batch_size, gauge, device, _FITS, gradients=False)
            run_batches(todo, step, fit, gauge=gauge, record=record, cell=combination, device=device)
    finish_shard(plan, index)
    return written


def finish_shard(plan: dict[str, Any], index: int) -> bool:
    """Write the shard's output and then its manifest once every item is staged (idempotent,
    under the shard's lock); True when the shard is done."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from .dataset_io import write_shard
    from .fsutil import atomic_write, file_lock

    job = job_of(plan)
    shard = source_shard(plan, index)
    staging = staging_dir(job.state, shard.name)
    manifest = manifest_path(job.state, shard.name)
    with file_lock(staging.parent / f".{staging.name}.finish.lock"):
        if manifest.is_file():
            return True
        done = _staged(staging) if staging.is_dir() else {}
        if len(done) < len(shard):
            return False
        parts = sorted(set(done.values()))
        table = pa.concat_tables([pq.read_table(f) for f in parts]).sort_by("position")
        positions = table.column("position").to_pylist()
        if positions != list(range(len(shard))):  # two parts holding one item: keep the first
            first: dict[int, int] = {}
            for i, p in enumerate(positions):
                first.setdefault(p, i)
            keep = [first[p] for p in range(len(shard))]
            table = table.take(pa.array(keep))
        outputs = {int(p): png for p, png in zip(table.column("position").to_pylist(),
                                                  table.column("png").to_pylist()) if png is not None}
        write_shard(Path(job.output), Path(job.input), shard, outputs)
        meta = table.drop_columns(["png"]).append_column(
            "shard", pa.array([shard.name] * table.num_rows, pa.string()))
        for name, value in (("purifier", json.dumps(job.purifier, sort_keys=True)),
                            ("denoiser_sha256", json.dumps(plan.get("asset_sha256") or {}, sort_keys=True)),
                            ("job_seed", str(job.seed))):
            meta = meta.append_column(name, pa.array([value] * table.num_rows, pa.string()))
        meta = meta.append_column("finished", pa.array([time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())]
                                                       * table.num_rows, pa.string()))
        buf = io.BytesIO()
        pq.write_table(meta, buf)
        manifest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(manifest, buf.getvalue())  # last: its presence marks the shard done
        shutil.rmtree(staging, ignore_errors=True)
        return True


# ---------------------------------------------------------------- status and report

def purify_status(state: str | Path) -> str:
    """Shards done / staged / untouched, items done and skipped."""
    import pyarrow.parquet as pq

    plan = read_plan(state)
    job = job_of(plan)
    done = [i for i in range(len(plan["shards"])) if shard_done(plan, i)]
    skipped = sum(sum(1 for s in pq.read_table(manifest_path(job.state, plan["shards"][i]["name"]),
                                                columns=["status"]).column("status").to_pylist()
                      if s != "purified") for i in done)
    unfinished = [staging_dir(job.state, s["name"]) for i, s in enumerate(plan["shards"]) if i not in set(done)]
    staged = sum(len(_staged(d)) for d in unfinished if d.is_dir())
    items_done = sum(plan["shards"][i]["stop"] - plan["shards"][i]["start"] for i in done)
    return (f"purify {job.input} -> {job.output}\n"
            f"shards: {len(done)}/{len(plan['shards'])} done; items: {items_done:,}/{plan['items']:,} in finished "
            f"shards ({skipped} skipped as unreadable), {staged:,} staged in unfinished shards")


def purify_report(state: str | Path) -> str:
    """Per-item changes over the finished shards' manifests, as a Markdown summary."""
    import pandas as pd

    plan = read_plan(state)
    job = job_of(plan)
    files = sorted((job.state / "manifests").glob("*.parquet"))
    if not files:
        raise UsageError(f"{job.state}: no finished shard yet (no manifests)")
    m = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    ok = m[m["status"] == "purified"]
    lines = [f"# Purification of {job.input}", "",
             f"- purifier: {json.dumps(job.purifier, sort_keys=True)}; seed {job.seed}",
             f"- items: {len(ok):,} purified, {len(m) - len(ok):,} skipped; shards {len(files)}/{len(plan['shards'])}",
             f"- change per item (images in [0, 1]): L2 mean {ok['l2'].mean():.4f}, max {ok['l2'].max():.4f}; "
             f"Linf mean {ok['linf'].mean():.4f}, max {ok['linf'].max():.4f}"]
    if ok["pred_before"].notna().any():
        changed = (ok["pred_before"] != ok["pred_after"]).mean()
        lines.append(f"- classifier {job.classifier['name']}: prediction changed by purification on "
                     f"{changed:.1%} of items")
    if len(m) > len(ok):
        lines += ["", "Skipped items:"] + [f"- {k}: {s}" for k, s in zip(m.loc[m['status'] != 'purified', 'key'],
                                                                         m.loc[m['status'] != 'purified', 'status'])][:50]
    return "\n".join(lines) + "\n"


def purify_state(path: str | Path) -> Path | None:
    """The purify job state a path names (the state directory, or the job's output), else None."""
    p = Path(path)
    for state in (p, Path(str(p).rstrip(os.sep) + STATE_SUFFIX)):
        if (state / PLAN_FILE).is_file() and state.name.endswith(STATE_SUFFIX):
            return state
    return None
