"""How `harness report` scales: synthesise a results directory of N rows, time the report on it.

The synthetic directory is what the workers write, in the current schema and layout
(harness.results): a CIFAR-10-like grid (cifar10, wrn-28-10; purifiers none / diffpure(t_s) /
lorid(t_s x loops x tucker none/pre); attacks none / PGD-EOT Linf 8/255 / AutoAttack standard /
Square; seeds 0, 1, 2 on the same images; eval_runs 3, plus a small eval_runs-1 sweep) is
expanded and planned by the real code (harness.grid.load_grid, harness.plan.make_plan and
write_plan), so the cell JSON, hashes, labels and parameter columns are genuine. Then, per plan
row (a shard), the part files `rank-0-part-<first example>.parquet` (one per batch: its examples
x eval runs, rows in the worker's order), the cell's `_cell.json` (results.cell_file_bytes /
write_cell_file), the completion marker `_COMPLETE.json` (results.write_marker's format: the
info mark_complete passes, examples, rows, and the part list {name, rows, size}), the telemetry
`_telemetry-rank-0-<job id>.json` and the two lock files the worker leaves (.lock-shard,
.lock-rank-0). Row values are simulated per image and cell so that the tables are sensible:
accuracies fall with the attack and rise with purification, deterministic defences repeat their
predictions over runs, AutoAttack/Square record `found_by` and leave unfooled examples
unperturbed (adv_pred == clean_pred there), PGD reaches the budget. The only values that are not
what a worker would compute are seed_purify/seed_attack (random 63-bit integers from a vectorised
hash instead of harness.rng.derive_seed's sha256: the same width and entropy, so the same
Parquet size) and the telemetry's util_samples (capped at 600 samples per shard).

Directories are cached: <dir>/rows-<N>-seed-<S>/ holds results/ (what the report reads), jobs/
(plans), grids/ and _synth.json (written last: a directory without it is rebuilt).

    python benchmarks/report_scale.py --rows 1000000 10000000 --dir /tmp/report-scale \
        [--python .venv/bin/python] [--tree /path/to/other/checkout] [--synth-only]

prints a Markdown table (rows, parts, cells, synth s, report s, peak RSS GB, exit code) and the
machine. `--tree` runs the report from another checkout (PYTHONPATH and working directory set to
it); the peak RSS is that of the report process alone (getrusage(RUSAGE_CHILDREN) in a wrapper
process whose only child is the report).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Bump when what synthesise writes changes: cached directories of another version are rebuilt.
SYNTH_VERSION = 2
STAMP = "_synth.json"
EPS = 8 / 255
MAX_EXAMPLES = 10_000  # CIFAR-10's test split
CIFAR_TEST = 10_000

# ---------------------------------------------------------------- the grids

_HEAD = """\
# synthetic ({what}), written by benchmarks/report_scale.py
sweep: {sweep}
profile: gh200
dataset: {{name: cifar10, params: {{root: "asset:cifar10"}}}}
classifier: {{name: wrn-28-10, params: {{path: "asset:wrn-28-10-cifar10"}}}}
"""

MAIN_GRID = _HEAD + """\
purifier:
  - none
  - {{name: diffpure, params: {{denoiser: "asset:ddpm-cifar10-32", t_s: {diffpure}}}}}
  - {{name: lorid, params: {{denoiser: "asset:ddpm-cifar10-32", t_s: {lorid_t}, loops: {loops}, tucker: [none, pre]}}}}
attack:
  - none
  - {{name: pgd, params: {{norm: linf, eps: {eps!r}, steps: [100, 200], step_size: 0.007, eot: 20}}}}
  - {{name: autoattack, params: {{version: standard, norm: linf, eps: {eps!r}}}}}
  - {{name: square, params: {{norm: linf, eps: {eps!r}, queries: 5000}}}}
examples: {examples}
batch_size: {batch}
shard_size: {shard}
seeds: {seeds}
eval_runs: 3
"""

SINGLE_RUN_GRID = _HEAD + """\
purifier:
  - none
  - {{name: diffpure, params: {{denoiser: "asset:ddpm-cifar10-32", t_s: 0.1}}}}
  - {{name: lorid, params: {{denoiser: "asset:ddpm-cifar10-32", t_s: 0.1, loops: 3}}}}
attack:
  - none
  - {{name: pgd, params: {{norm: linf, eps: {eps!r}, steps: 200, step_size: 0.007, eot: 20}}}}
  - {{name: autoattack, params: {{version: standard, norm: linf, eps: {eps!r}}}}}
examples: {examples}
batch_size: {batch}
shard_size: {shard}
seeds: [0, 1, 2]
eval_runs: 1
"""
SINGLE_RUN_CELLS = 3 * 3 * 3

#: Main-sweep sizes, smallest first: the first whose examples per cell fit CIFAR-10 is used.
LEVELS = (
    {"diffpure": [0.05, 0.1], "lorid_t": [0.05, 0.1], "loops": [2, 3]},  # 11 purifiers: 165 cells
    {"diffpure": [0.05, 0.075, 0.1], "lorid_t": [0.02, 0.05, 0.1], "loops": [2, 3, 5]},  # 22: 330 cells
)


def _purifiers(level: dict[str, Any]) -> int:
    return 1 + len(level["diffpure"]) + 2 * len(level["lorid_t"]) * len(level["loops"])


def _sizes(rows: int) -> dict[str, Any]:
    """Grid settings for about ``rows`` rows: ~10 % in the eval_runs-1 sweep, the rest in the
    main one (eval_runs 3), its axes widened (then seeds added) until examples fit CIFAR-10."""
    single = min(max(rows // 10, SINGLE_RUN_CELLS), SINGLE_RUN_CELLS * MAX_EXAMPLES)
    main = max(rows - single, 1)
    seeds = 3
    for level in LEVELS:
        cells = _purifiers(level) * 5 * seeds
        if main / (cells * 3) <= MAX_EXAMPLES:
            break
    else:
        per_seed = _purifiers(level) * 5 * 3
        seeds = math.ceil(main / (per_seed * MAX_EXAMPLES))
        cells = _purifiers(level) * 5 * seeds
    return {"level": level, "seeds": list(range(seeds)),
            "main_examples": max(1, min(MAX_EXAMPLES, round(main / (cells * 3)))),
            "single_examples": max(1, min(MAX_EXAMPLES, round(single / SINGLE_RUN_CELLS)))}


def _write_grids(root: Path, rows: int, batch: int, shard: int) -> list[Path]:
    s = _sizes(rows)
    lv = s["level"]
    grids = root / "grids"
    grids.mkdir(parents=True, exist_ok=True)
    main = grids / "synth-cifar10.yaml"
    main.write_text(MAIN_GRID.format(what="eval_runs 3", sweep="synth-cifar10", eps=EPS,
                                     examples=s["main_examples"], batch=batch, shard=shard,
                                     seeds=json.dumps(s["seeds"]), diffpure=json.dumps(lv["diffpure"]),
                                     lorid_t=json.dumps(lv["lorid_t"]), loops=json.dumps(lv["loops"])))
    single = grids / "synth-cifar10-r1.yaml"
    single.write_text(SINGLE_RUN_GRID.format(what="eval_runs 1", sweep="synth-cifar10-r1", eps=EPS,
                                             examples=s["single_examples"], batch=batch, shard=shard))
    return [main, single]


def _plans(root: Path, rows: int, parts_min: int, batch: int = 64) -> list[tuple[Any, Any]]:
    """[(grid, plan DataFrame)] for both sweeps, batch_size ``batch`` (shard_size 4 batches)
    halved until there are at least ``parts_min`` part files."""
    from harness.grid import load_grid
    from harness.plan import make_plan

    while True:
        out = []
        for path in _write_grids(root, rows, batch, 4 * batch):
            grid = load_grid(path)
            out.append((grid, make_plan(grid, root / "assets")))
        parts = sum(int(-(-(p["stop"] - p["start"]) // batch).sum()) for _, p in out)
        if parts >= parts_min or batch == 1:
            return out
        batch //= 2


# ---------------------------------------------------------------- simulated outcomes

_A, _S = 1.3, 0.9  # weight of the image's difficulty; of the purification noise (stochastic defences)
_SUBATTACKS = (("apgd-ce", 0.80), ("apgd-t", 0.15), ("fab-t", 0.03), ("square", 0.02))


def _accuracies(cell: dict[str, Any]) -> tuple[float, float]:
    """(clean, robust) accuracy the simulation aims at for the cell."""
    p, a = cell["purifier"], cell["attack"]
    pp, ap = p["params"], a["params"]
    if p["name"] == "none":
        clean = 0.955
    elif p["name"] == "diffpure":
        clean = 0.955 - 0.6 * float(pp["t_s"])
    else:
        clean = 0.955 - 0.35 * float(pp["t_s"]) * math.sqrt(int(pp["loops"])) - (0.01 if pp["tucker"] == "pre" else 0)
    if a["name"] == "none":
        return clean, clean
    if p["name"] == "none":
        ratio = {"pgd": 0.0, "autoattack": 0.0, "square": 0.012}[a["name"]]
    else:
        t = float(pp["t_s"])
        base = (0.25 + 3.0 * t) if p["name"] == "diffpure" else (
            0.30 + 2.5 * t + 0.04 * int(pp["loops"]) + (0.03 if pp["tucker"] == "pre" else 0))
        if a["name"] == "pgd":
            ratio = base - (0.02 if int(ap["steps"]) >= 200 else 0)
        elif a["name"] == "autoattack":
            ratio = base + 0.12
        else:
            ratio = 0.86
    return clean, clean * min(max(ratio, 0.0), 0.95)


def _hash64(*keys: Any) -> np.ndarray:
    """splitmix64 over broadcast integer keys: a vectorised stand-in for derive_seed (63 bits)."""
    with np.errstate(over="ignore"):
        h = np.uint64(0x9E3779B97F4A7C15)
        for k in keys:
            h = (h ^ np.asarray(k, dtype=np.uint64)) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(31))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(29))
    return (h >> np.uint64(1)).astype(np.int64)


class _Images:
    """Per-image facts shared by every cell: label, difficulty, the class it is mistaken for."""

    def __init__(self, seed: int):
        rng = np.random.default_rng([seed, 12345])
        self.y = rng.integers(0, 10, CIFAR_TEST)
        self.z = rng.standard_normal(CIFAR_TEST)
        self.confuser = (self.y + 1 + rng.integers(0, 9, CIFAR_TEST)) % 10

    @staticmethod
    @lru_cache(maxsize=8)
    def selection(data_seed: int) -> np.ndarray:
        # harness.data.base.selection (importing it would import torch)
        return np.random.RandomState(data_seed).permutation(CIFAR_TEST)


def _simulate(cell: dict[str, Any], cell_hash: str, examples: np.ndarray, runs: int, images: _Images,
              seed: int) -> dict[str, np.ndarray]:
    """Per-row arrays for ``examples`` x ``runs`` in the worker's order (run-major within a batch:
    the caller passes one batch's examples), plus per-example ones."""
    rng = np.random.default_rng([seed, int(cell_hash, 16) & 0xFFFFFFFF, int(examples[0])])
    n = len(examples)
    idx = _Images.selection(cell["data_seed"])[examples]
    y, z, conf = images.y[idx], images.z[idx], images.confuser[idx]
    stochastic = cell["purifier"]["name"] != "none"
    s = _S if stochastic else 0.0
    den = math.hypot(_A, s)
    clean_acc, adv_acc = _accuracies(cell)
    inv = NormalDist().inv_cdf
    b_c = inv(min(max(clean_acc, 1e-4), 1 - 1e-4)) * den
    b_a = inv(min(max(adv_acc, 1e-4), 1 - 1e-4)) * den
    e_c = rng.standard_normal((runs, n)) if stochastic else np.zeros((runs, n))
    e_a = (0.5 * e_c + math.sqrt(0.75) * rng.standard_normal((runs, n))) if stochastic else np.zeros((runs, n))
    clean_ok = b_c + _A * z + s * e_c > 0

    def wrong(shape: tuple[int, ...]) -> np.ndarray:
        # the class a misclassified image goes to; a deterministic defence repeats it in every run
        draw = shape if stochastic else shape[1:]
        other = (y + 1 + rng.integers(0, 9, draw)) % 10
        return np.broadcast_to(np.where(rng.random(draw) < 0.7, conf, other), shape)

    clean_pred = np.where(clean_ok, y, wrong((runs, n)))
    attack = cell["attack"]
    name = attack["name"]
    found_by = None
    if name == "none":
        adv_ok, adv_pred, pert = clean_ok, clean_pred, np.zeros(n)
    else:
        adv_ok = (b_a + _A * z + s * e_a > 0) & (adv_acc > 0)
        adv_pred = np.where(adv_ok, y, wrong((runs, n)))
        if name == "pgd":
            pert = np.full(n, float(np.float32(EPS)))  # PGD ends on the budget's boundary
            pert[rng.random(n) < 0.05] -= 2 ** -24  # (a few a float32 step inside it)
        else:  # AutoAttack / Square: unfooled examples come back unperturbed
            e0 = rng.standard_normal(n) if stochastic else np.zeros(n)
            att_clean = b_c + _A * z + s * e0 > 0
            att_robust = (b_a + _A * z + s * e0 > 0) & (adv_acc > 0)
            if name == "autoattack":
                subs = np.array([a for a, _ in _SUBATTACKS], dtype=object)
                sub = subs[rng.choice(len(subs), n, p=[w for _, w in _SUBATTACKS])]
            else:
                sub = np.full(n, "square", dtype=object)
            found_by = np.where(~att_clean, "clean", np.where(att_robust, "", sub)).astype(object)
            perturbed = (found_by != "") & (found_by != "clean")
            adv_ok = np.where(perturbed, adv_ok, clean_ok)  # unperturbed: the clean input, same seeds
            adv_pred = np.where(perturbed, adv_pred, clean_pred)
            scale = 1.0 if name == "autoattack" else rng.uniform(0.55, 1.0, n)
            pert = np.where(perturbed, float(np.float32(EPS)) * scale, 0.0)
    return {"idx": idx, "y": y, "clean_pred": clean_pred, "adv_pred": adv_pred, "clean_ok": clean_ok,
            "adv_ok": adv_ok, "pert": pert, "found_by": found_by}


# ---------------------------------------------------------------- writing

@lru_cache(maxsize=64)
def _assets_record(cell_json: str) -> str:
    """{asset: {file: sha256}} as the worker records it (Assets.record), with made-up digests."""
    from harness.catalog import is_ref, load_catalog, needs, ref_name

    cell = json.loads(cell_json)
    cat = load_catalog()
    out = {}
    for need in needs([cell]):
        if not is_ref(need.value):
            continue
        asset = cat.assets[ref_name(need.value)]
        files = (list(asset.files) if asset.files else
                 ["config.json", "diffusion_pytorch_model.safetensors"] if asset.format == "diffusers" else [""])
        out[need.value] = {f: hashlib.sha256(f"{need.value}/{f}".encode()).hexdigest() for f in files}
    return json.dumps(out, sort_keys=True)


def _column(value: Any, n: int, typ: pa.DataType) -> pa.Array:
    if value is None:
        return pa.nulls(n, typ)
    return pa.array([value], typ).take(pa.array(np.zeros(n, dtype=np.int32)))


def _provenance() -> dict[str, str]:
    from importlib.metadata import version

    import harness

    rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip() or "unknown"
    try:
        torch_version = version("torch").split("+")[0] + "+cu128"
    except Exception:  # noqa: BLE001
        torch_version = "2.13.0+cu128"
    return {"harness_version": harness.__version__, "git_rev": rev, "torch_version": torch_version}


def _write_shard(row: dict[str, Any], cell: dict[str, Any], results: Path, schema: pa.Schema,
                 fields: list[tuple[str, str]], cell_examples: int, images: _Images, seed: int,
                 prov: dict[str, str]) -> tuple[int, int, int]:
    """One plan row as a worker (one rank) leaves it; returns (parts, rows, bytes)."""
    from harness import registry
    from harness.plan import passes_per_example
    from harness.results import (COMPLETE, SHARD_LOCK, cell_file_bytes, param_values, part_path, shard_dir,
                                 write_cell_file)

    out = shard_dir(results, row["sweep"], row["cell"], int(row["shard"]))
    out.mkdir(parents=True, exist_ok=True)
    write_cell_file(out, 0, cell_file_bytes(row["sweep"], row["cell"], row["cell_json"],
                                            _assets_record(row["cell_json"]), row["label"], row["attack_label"]))
    job = 48_000_000 + int(_hash64(int(row["cell"], 16) & 0x7FFFFFFF, int(row["shard"]))) % 1_000_000
    host = f"nid{int(_hash64(job)) % 2048:06d}"
    for lock in (SHARD_LOCK, ".lock-rank-0"):
        (out / lock).write_text(f"{100000 + job % 900000} {host}\n")
    attack = cell["attack"]
    norm, eps = registry.get("attack", attack["name"]).threat(attack["params"])
    nfe = int(registry.get("purifier", cell["purifier"]["name"]).nfe(cell["purifier"]["params"]))
    passes = passes_per_example(cell)
    runs = int(cell["eval_runs"])
    constant = {"sweep": row["sweep"], "cell": row["cell"], "shard": int(row["shard"]), "rank": 0,
                "label": row["label"], "attack_label": row["attack_label"],
                **{k: cell[k]["name"] for k in ("dataset", "classifier", "purifier", "attack")},
                "threat": str(norm), "eps": float(eps), "seed": cell["seed"], "data_seed": cell["data_seed"],
                "cell_examples": cell_examples, "eval_runs": runs, "device": "cuda:0", "precision": "bf16", "grad_checkpoint": False, **prov, "host": host,
                "grad_nonfinite": 0, "nfe": nfe, **param_values(cell, fields)}
    bs = int(row["batch_size"])
    # the columns constant over the shard, built once at a full part's length and sliced
    fixed = {f.name: _column(constant[f.name], bs * runs, f.type) for f in schema if f.name in constant}
    cell_int = int(row["cell"], 16) & 0x7FFFFFFFFFFF
    parts, total, nbytes, seconds = [], 0, 0, 0.0
    rng = np.random.default_rng([seed, cell_int & 0xFFFFFFFF, int(row["shard"])])
    for first in range(int(row["start"]), int(row["stop"]), bs):
        ex = np.arange(first, min(first + bs, int(row["stop"])))
        n, rows_n = len(ex), len(ex) * runs
        sim = _simulate(cell, row["cell"], ex, runs, images, seed)
        ex_r = np.tile(ex, runs)
        run_r = np.repeat(np.arange(runs), n)
        if attack["name"] == "pgd":
            grad_evals = int(attack["params"]["steps"]) * int(attack["params"]["eot"])
        elif attack["name"] == "autoattack":
            grad_evals = int(100 * 19 * rng.uniform(0.25, 0.75))
        else:
            grad_evals = 0
        batch_s = n * passes * (max(nfe, 1) * 1.0e-4 + 5e-5) * rng.uniform(0.9, 1.1)
        seconds += batch_s
        values = {
            "example": pa.array(ex_r, pa.int64()), "data_index": pa.array(np.tile(sim["idx"], runs), pa.int64()),
            "y": pa.array(np.tile(sim["y"], runs), pa.int64()), "eval_run": pa.array(run_r, pa.int32()),
            "clean_pred": pa.array(sim["clean_pred"].ravel(), pa.int64()),
            "adv_pred": pa.array(sim["adv_pred"].ravel(), pa.int64()),
            "clean_correct": pa.array(sim["clean_ok"].ravel(), pa.bool_()),
            "adv_correct": pa.array(sim["adv_ok"].ravel(), pa.bool_()),
            "perturbation": pa.array(np.tile(sim["pert"], runs), pa.float64()),
            "grad_evals": _column(grad_evals, rows_n, pa.int64()),
            "found_by": (pa.array(np.tile(sim["found_by"], runs), pa.string()) if sim["found_by"] is not None
                         else pa.nulls(rows_n, pa.string())),
            "seed_purify": pa.array(_hash64(cell_int, int(cell["seed"]), ex_r, run_r + 1), pa.int64()),
            "seed_attack": pa.array(_hash64(cell_int, int(cell["seed"]), ex_r, 0), pa.int64()),
            "time_s": _column(batch_s / rows_n, rows_n, pa.float64()),
        }
        arrays = [values[f.name] if f.name in values else fixed[f.name].slice(0, rows_n) for f in schema]
        table = pa.Table.from_arrays(arrays, schema=schema)
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)  # as results.write_part does
        data = buf.getvalue().to_pybytes()
        path = part_path(out, 0, int(ex[0]))
        tmp = path.with_name(f".{path.name}.synth.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        parts.append({"name": path.name, "rows": rows_n, "size": len(data)})
        total += rows_n
        nbytes += len(data)
    # the marker exactly as results.write_marker writes it (info: launch.task.mark_complete's)
    doc = {"cell": row["cell"], "shard": int(row["shard"]), "ranks": 1, "rows_this_run": total,
           "written_by_rank": 0, "examples": int(row["stop"]) - int(row["start"]), "rows": total,
           "parts": sorted(parts, key=lambda p: p["name"])}
    (out / COMPLETE).write_text(json.dumps(doc, sort_keys=True) + "\n")
    util = [int(v) for v in rng.integers(88, 100, min(600, max(1, round(seconds))))]
    telemetry = {"rows": total, "device": "cuda:0", "world": 1, "backend": "slurm", "nvml": "ok",
                 "gpu": "NVIDIA GH200 480GB", "driver": "560.35.03", "energy_j": round(seconds * 610.0, 3),
                 "util_samples": util, "util_mean": sum(util) / len(util),
                 "peak_mem_bytes": int(2.1e9 + nfe * 4e7), "system": _SYSTEM | {"host": host,
                                                                                 "slurm_job": str(job)}}
    (out / f"_telemetry-rank-0-{job}.json").write_text(json.dumps(telemetry, default=str) + "\n")
    return len(parts), total, nbytes


_SYSTEM = {"arch": "aarch64", "cpu": "Neoverse-V2", "cores": 72, "python": "3.11.9", "slurm_array_task": None,
           "slurm_nodes": "1", "torch": "2.13.0", "diffusers": "0.31.0", "tensorly": "0.9.0", "numpy": "2.4.6",
           "pyarrow": "26.0.1", "mpi4py": None, "submitit": "1.5.2", "cuda": "12.8", "gpus": 1}

_JOBS: list[tuple[dict[str, Any], dict[str, Any], list[tuple[str, str]], int]] = []
_CTX: dict[str, Any] = {}


def _work(i: int) -> tuple[int, int, int]:
    row, cell, fields, cell_examples = _JOBS[i]
    from harness.results import row_schema

    return _write_shard(row, cell, _CTX["results"], row_schema(fields), fields, cell_examples,
                        _CTX["images"], _CTX["seed"], _CTX["prov"])


def synthesise(out_dir: str | os.PathLike[str], rows: int, parts_min: int = 1000, seed: int = 0,
               jobs: int | None = None, batch: int = 64) -> dict[str, Any]:
    """Write (or reuse) <out_dir>/rows-<rows>-seed-<seed>/ and return its stamp: {results, rows,
    parts, cells, synth_s, bytes, ...}; ``results`` is the directory to give the report."""
    from harness.plan import write_plan
    from harness.results import param_fields

    root = Path(out_dir) / (f"rows-{rows}-seed-{seed}" + (f"-batch-{batch}" if batch != 64 else ""))
    stamp = root / STAMP
    from harness.results import SCHEMA

    want = {"version": SYNTH_VERSION, "rows_asked": rows, "seed": seed, "parts_min": parts_min,
            "schema": hashlib.sha256(str(SCHEMA).encode()).hexdigest()[:16]}  # rebuilt when the schema changes
    if stamp.is_file():
        doc = json.loads(stamp.read_text())
        if all(doc.get(k) == v for k, v in want.items()):
            return doc | {"cached": True}
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    results = root / "results"
    planned = _plans(root, rows, parts_min, batch)
    _JOBS.clear()
    cells = 0
    for grid, plan in planned:
        write_plan(grid, root / "jobs", assets=root / "assets")
        fields = [tuple(f) for f in json.loads(plan["param_columns"].iloc[0])]
        assert fields == param_fields(grid.cells)
        per_cell = {c: json.loads(j) for c, j in zip(plan["cell"], plan["cell_json"])}
        cells += len(per_cell)
        examples = plan.groupby("cell")["stop"].max().to_dict()
        for row in plan.to_dict("records"):
            _JOBS.append((row, per_cell[row["cell"]], fields, int(examples[row["cell"]])))
    _CTX.update(results=results, images=_Images(seed), seed=seed, prov=_provenance())
    jobs = jobs or min(2, os.cpu_count() or 1)
    if jobs > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(jobs) as pool:
            done = pool.map(_work, range(len(_JOBS)), chunksize=16)
    else:
        done = [_work(i) for i in range(len(_JOBS))]
    doc = {**want, "results": str(results), "rows": sum(d[1] for d in done), "parts": sum(d[0] for d in done),
           "bytes": sum(d[2] for d in done), "shards": len(_JOBS), "cells": cells,
           "sweeps": [g.sweep for g, _ in planned], "examples": {g.sweep: g.examples for g, _ in planned},
           "batch_size": planned[0][0].batch_size, "shard_size": planned[0][0].shard_size,
           "synth_s": round(time.perf_counter() - t0, 1)}
    verify(results, sample=12, seed=seed)
    stamp.write_text(json.dumps(doc, indent=1) + "\n")
    return doc | {"cached": False}


def verify(results: str | os.PathLike[str], sample: int = 12, seed: int = 0) -> None:
    """Check a sample of shards with the harness's own validators (results.check_marker: every
    listed part there, valid, of its size and rows, covering the shard's examples; _cell.json
    readable and of the same cell). AssertionError on any problem."""
    from harness.results import CELL_FILE, check_marker, read_cell_file

    shards = sorted(Path(results).glob("*/cell=*/shard=*"))
    rng = np.random.default_rng(seed)
    for d in [shards[i] for i in rng.choice(len(shards), min(sample, len(shards)), replace=False)]:
        doc = json.loads((d / "_COMPLETE.json").read_text())
        meta = read_cell_file(d.parent / CELL_FILE)
        assert meta["cell"] == d.parent.name.split("=", 1)[1], d
        start = min(int(p["name"].split("-part-")[1].split(".")[0]) for p in doc["parts"])
        why = check_marker(d, start, start + doc["examples"], eval_runs=json.loads(meta["cell_json"])["eval_runs"])
        assert why is None, f"{d}: {why}"


# ---------------------------------------------------------------- measuring

_WRAPPER = r"""
import json, resource, subprocess, sys, time
argv, log, limit_kb, timeout = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
t0, why = time.perf_counter(), None
with open(log, "wb") as out:
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    while True:
        try:
            rc = p.wait(timeout=0.25)
            break
        except subprocess.TimeoutExpired:
            pass
        if why:
            continue
        if timeout > 0 and time.perf_counter() - t0 > timeout:
            why = f"killed after {timeout:g} s"
        elif limit_kb > 0:
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    rss = next(int(x.split()[1]) for x in f if x.startswith("VmRSS"))
            except (OSError, StopIteration, ValueError):
                rss = 0
            if rss > limit_kb:
                why = f"killed at {rss / 2**20:.1f} GB RSS (limit {limit_kb / 2**20:g} GB)"
        if why:
            p.kill()
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall_s": wall, "maxrss_kb": ru.ru_maxrss, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
                  "killed": why}))
"""


def run_measured(argv: list[str], env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                 head: int = 12, timeout: float | None = None, max_rss_gb: float | None = None) -> dict[str, Any]:
    """Run ``argv`` as the only child of a fresh wrapper process: {rc, wall_s, peak_rss_gb (the
    child's ru_maxrss), user_s, sys_s, killed (why the wrapper killed it: ``timeout`` seconds
    passed or its RSS went over ``max_rss_gb``; else None), head (first output lines), tail}."""
    with tempfile.TemporaryDirectory(prefix="report-scale-log-") as tmp:
        log = Path(tmp) / "out.txt"
        p = subprocess.run([sys.executable, "-c", _WRAPPER, json.dumps(argv), str(log),
                            str((max_rss_gb or 0) * 2**20), str(timeout or 0)],
                           env=env, cwd=cwd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"measuring wrapper failed: {p.stderr.strip()[-2000:]}")
        res = json.loads(p.stdout.strip().splitlines()[-1])
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return {"rc": res["rc"], "wall_s": round(res["wall_s"], 2), "peak_rss_gb": round(res["maxrss_kb"] / 2**20, 3),
            "user_s": round(res["user_s"], 1), "sys_s": round(res["sys_s"], 1), "killed": res["killed"],
            "head": lines[:head], "tail": lines[-head:] if len(lines) > head else []}


def _tree_env(tree: str | os.PathLike[str] | None) -> tuple[dict[str, str], Path]:
    """Environment and working directory that make `python -m harness.cli` import ``tree``'s
    harness and analysis (``-m`` puts the working directory first on sys.path)."""
    env = dict(os.environ)
    where = Path(tree).resolve() if tree else REPO
    env["PYTHONPATH"] = str(where) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONHASHSEED", "0")
    return env, where


def imported_from(python: str, tree: str | os.PathLike[str] | None = None) -> str:
    env, cwd = _tree_env(tree)
    p = subprocess.run([python, "-c", "import harness, analysis.report as r; print(harness.__file__, r.__file__)"],
                       env=env, cwd=cwd, capture_output=True, text=True)
    return p.stdout.strip() or p.stderr.strip()[-300:]


def measure(results_dir: str | os.PathLike[str], cmd: list[str] | None = None, *, python: str | None = None,
            tree: str | os.PathLike[str] | None = None, timeout: float | None = None,
            max_rss_gb: float | None = None) -> dict[str, Any]:
    """Time `harness report <results_dir> --out <tmp>` (``cmd``: the command before the directory,
    default ``<python> -m harness.cli report``) in its own process: {rc, wall_s, peak_rss_gb, ...}."""
    python = python or default_python()
    cmd = list(cmd) if cmd else [python, "-m", "harness.cli", "report"]
    env, cwd = _tree_env(tree)
    with tempfile.TemporaryDirectory(prefix="report-scale-out-") as out:
        res = run_measured([*cmd, str(results_dir), "--out", out], env=env, cwd=cwd, timeout=timeout,
                           max_rss_gb=max_rss_gb)
        res["written"] = sorted(os.listdir(out))
    return res


def default_python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def machine(tree: str | os.PathLike[str] | None = None, report: bool = True) -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = "?"
    try:
        kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        ram = f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        pass
    text = f"{platform.machine()} {cpu} ({os.cpu_count()} cores), {ram} RAM, Python {platform.python_version()}"
    return text + (f", report from {tree_rev(tree)}" if report else "")


def tree_rev(tree: str | os.PathLike[str] | None = None) -> str:
    """The checkout's git revision (plus '+changes' when its work tree differs from it), or the
    revision in <tree>/.git-archive-rev for a `git archive` export."""
    where = Path(tree).resolve() if tree else REPO
    p = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=where, capture_output=True, text=True)
    if p.returncode == 0 and (where / ".git").exists():
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "harness", "analysis"],
                               cwd=where, capture_output=True, text=True).stdout.strip()
        return f"{where} @ {p.stdout.strip()}" + (" + uncommitted changes in harness/ or analysis/" if dirty else "")
    marker = where / ".git-archive-rev"
    if marker.is_file():
        return f"{where} @ {marker.read_text().strip()} (git archive)"
    return f"{where} (revision unknown)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--dir", default="/tmp/report-scale", help="cache of synthesised directories")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts-min", type=int, default=1000)
    ap.add_argument("--python", default=None, help="interpreter for the report (default: .venv/bin/python)")
    ap.add_argument("--tree", default=None, help="run the report from this checkout instead of this one")
    ap.add_argument("--synth-only", action="store_true", help="synthesise, do not run the report")
    ap.add_argument("--timeout", type=float, default=None, help="seconds before the report is killed")
    ap.add_argument("--max-rss-gb", type=float, default=None,
                    help="kill the report when its RSS passes this (a shared machine's safety; the row then "
                         "shows exit -9 and the peak it reached)")
    ap.add_argument("--jobs", type=int, default=None, help="synthesis processes (default: min(2, cores))")
    ap.add_argument("--batch", type=int, default=64,
                    help="examples per part file (the worker's batch_size; default 64, halved until "
                         "--parts-min parts)")
    args = ap.parse_args(argv)
    python = args.python or default_python()
    lines = ["| rows | parts | cells | synth s | report s | peak RSS GB | exit code |", "|---|---|---|---|---|---|---|"]
    notes = []
    for n in args.rows:
        doc = synthesise(args.dir, n, args.parts_min, args.seed, args.jobs, args.batch)
        synth = f"{doc['synth_s']}" + (" (cached)" if doc.get("cached") else "")
        print(f"synthesised: {doc['results']}: {doc['rows']} rows, {doc['parts']} parts, {doc['cells']} cells, "
              f"{doc['bytes'] / 2**30:.2f} GiB, {synth} s", file=sys.stderr, flush=True)
        if args.synth_only:
            lines.append(f"| {doc['rows']:,} | {doc['parts']:,} | {doc['cells']} | {synth} | – | – | – |")
            continue
        res = measure(doc["results"], python=python, tree=args.tree, timeout=args.timeout, max_rss_gb=args.max_rss_gb)
        lines.append(f"| {doc['rows']:,} | {doc['parts']:,} | {doc['cells']} | {synth} | {res['wall_s']} | "
                     f"{res['peak_rss_gb']} | {res['rc']} |")
        notes.append(f"{doc['rows']:,} rows, exit {res['rc']}" + (f" ({res['killed']})" if res["killed"] else "")
                     + ", output starts:\n    "
                     + "\n    ".join(res["head"][:6])
                     + (("\n  ... ends:\n    " + "\n    ".join(res["tail"][-4:])) if res["rc"] else ""))
    print("\n".join(lines))
    print(f"\nmachine: {machine(args.tree)}; report interpreter {python}")
    if not args.synth_only:
        print(f"imported: {imported_from(python, args.tree)}")
        for note in notes:
            print("\n" + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
