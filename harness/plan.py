"""The plan: one row per (cell, shard), written once per sweep as Parquet.

An array task receives only (plan path, row index), so the row carries everything a worker
needs: the cell as canonical JSON, its hash and the example range. The cost columns are
estimates of denoiser evaluations, for sizing jobs before anything is submitted.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd

from . import registry
from .difftime import T  # noqa: F401  (re-exported: plan costs are in steps of T)
from .errors import UsageError
from .fsutil import atomic_write
from .grid import Grid, canonical_json, cell_hash, cell_label

COLUMNS = ("row", "sweep", "cell", "shard", "start", "stop", "cell_json", "label", "attack_label",
           "dataset", "classifier", "purifier", "attack", "seed", "batch_size",
           "nfe_per_example", "nfe_total", "gflop_total", "assets_dir", "asset_sha256", "param_columns")
_INT_COLUMNS = ("row", "shard", "start", "stop", "seed", "batch_size", "nfe_per_example",
                "nfe_total")


# ---------------------------------------------------------------- cost estimate
# The plugins' own hooks (harness.registry.PluginSpec): the plan names no plugin.

def nfe_per_purification(purifier: dict[str, Any]) -> int:
    """Estimated denoiser evaluations to purify one example once (the purifier's `nfe` hook)."""
    return int(registry.get("purifier", purifier["name"]).nfe(purifier["params"]))


def attack_passes(attack: dict[str, Any]) -> int:
    """Purifier passes per example an attack adds, a backward pass counting as one more (the
    attack's `passes` hook): greybox gradients skip the purifier, BPDA runs it forward only,
    a query attack pays one forward per query."""
    return int(registry.get("attack", attack["name"]).passes(attack["params"]))


def passes_per_example(cell: dict[str, Any]) -> int:
    """Purify-and-classify passes per example: clean and adversarial evaluation runs, plus the attack's."""
    return cell["eval_runs"] * 2 + attack_passes(cell["attack"])


def nfe_row(cell: dict[str, Any], n_examples: int) -> int:
    """Estimated denoiser evaluations of one row: clean and adversarial evaluations plus attack."""
    return nfe_per_purification(cell["purifier"]) * n_examples * passes_per_example(cell)


def gflop_row(cell: dict[str, Any], n_examples: int) -> float:
    """Estimated GFLOPs of one row (denoiser and classifier forwards; a backward pass counted
    as one more forward, like the NFE); NaN when an architecture is not in the catalogue."""
    from .catalog import arch_of, classifier_arch

    nfe = nfe_per_purification(cell["purifier"])
    denoiser = arch_of("denoiser", cell["purifier"]["params"].get("denoiser")) if nfe else None
    classifier = classifier_arch(cell["classifier"])
    if classifier is None or (nfe and denoiser is None):
        return float("nan")
    per_pass = nfe * (denoiser.gflops if denoiser else 0.0) + classifier.gflops
    return per_pass * n_examples * passes_per_example(cell)


# ---------------------------------------------------------------- plan

def param_columns(cells: list[dict[str, Any]]) -> str:
    """The result rows' parameter columns, [["<kind>.<param>", type], ...] as JSON: the union over
    the sweep's cells, so that every part file of the sweep has the same schema."""
    import json

    from .results import param_fields

    return json.dumps([list(f) for f in param_fields(cells)], separators=(",", ":"))


def shard_ranges(examples: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard; the last one may be short."""
    return [(k, min(examples, k + shard_size)) for k in range(0, examples, shard_size)]


def make_plan(grid: Grid, assets: str | Path | None = None) -> pd.DataFrame:
    """One row per (cell, shard), in cell order then shard order; `row` is the array index.

    `assets_dir` is where the workers resolve `asset:<name>` values (see harness.catalog)."""
    import json

    from .catalog import assets_dir, pins

    root = assets_dir(str(assets) if assets else None, grid.assets)
    # The sha256 of every catalogued file as staged now: the workers hold the files to it.
    pinned = json.dumps(pins(grid.cells, root), sort_keys=True)
    columns = param_columns(grid.cells)
    rows = []
    for cell in grid.cells:
        fixed = {"sweep": grid.sweep, "cell": cell_hash(cell), "cell_json": canonical_json(cell),
                 "label": cell_label(cell), "attack_label": cell_label(cell, "attack"),
                 **{k: cell[k]["name"] for k in ("dataset", "classifier", "purifier", "attack")},
                 "seed": cell["seed"], "batch_size": grid.batch_size,
                 "nfe_per_example": nfe_per_purification(cell["purifier"])}
        for k, (start, stop) in enumerate(shard_ranges(grid.examples, grid.shard_size)):
            rows.append({**fixed, "shard": k, "start": start, "stop": stop,
                         "nfe_total": nfe_row(cell, stop - start),
                         "gflop_total": gflop_row(cell, stop - start), "assets_dir": str(root),
                         "asset_sha256": pinned, "param_columns": columns})
    df = pd.DataFrame(rows)
    df["row"] = range(len(df))
    return df[list(COLUMNS)].astype({c: "int64" for c in _INT_COLUMNS})


def load_plan(path: str | Path) -> pd.DataFrame:
    """A plan written by write_plan."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no plan here; run `harness plan <grid.yaml>` first")
    return pd.read_parquet(path)


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, engine="pyarrow", index=False)
    return buf.getvalue()


def _existing_cells(path: Path) -> set[str]:
    try:
        return set(load_plan(path)["cell"])
    except Exception as exc:  # noqa: BLE001 (any unreadable plan is treated the same way)
        raise UsageError(f"{path}: existing plan is unreadable ({exc}); "
                         "pass overwrite=True to replace it") from None


def write_plan(grid: Grid, jobs_dir: str | Path = "jobs", overwrite: bool = False,
               assets: str | Path | None = None) -> Path:
    """Write jobs/<sweep>/plan.parquet and grid.yaml (the source bytes); return the plan path.

    An identical plan is left untouched. The same cells with other sizes (e.g. more
    examples) replace it, since results are keyed by cell hash and example index. Other
    cells under the same sweep name are refused unless overwrite=True.
    """
    from .fsutil import file_lock, remove_temporaries

    df = make_plan(grid, assets)
    data = _parquet_bytes(df)
    out = Path(jobs_dir) / grid.sweep
    plan_path, grid_path = out / "plan.parquet", out / "grid.yaml"
    out.mkdir(parents=True, exist_ok=True)
    # Every writer of the plan holds this lock (beside the sweep's directory, which holds only
    # the plan and grid), so under it any temporary of theirs is a killed `harness plan`'s.
    with file_lock(out.parent / f".{grid.sweep}.plan.lock") as state:
        if state == "held":
            remove_temporaries(out, plan_path.name, grid_path.name)
        if plan_path.exists():
            if not overwrite and _existing_cells(plan_path) != set(df["cell"]):
                raise UsageError(f"{plan_path}: sweep name {grid.sweep!r} is taken by a different "
                                 "grid; choose another `sweep:` name or pass overwrite=True")
            if (plan_path.read_bytes() == data and grid_path.is_file()
                    and grid_path.read_bytes() == grid.source):
                return plan_path
        atomic_write(grid_path, grid.source)  # the plan last: its presence marks a complete write
        atomic_write(plan_path, data)
    return plan_path


# ---------------------------------------------------------------- summary

def human(n: float) -> str:
    """1234567 → '1.2 M'."""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f}" if n == int(n) or abs(n) >= 100 else f"{n:.3g}"  # 0.0434, not 0


def summary(plan_df: pd.DataFrame) -> str:
    """One line: cells, shards, examples and estimated denoiser evaluations."""
    cells = plan_df["cell"].nunique()
    examples = int((plan_df["stop"] - plan_df["start"]).sum())
    per_cell = int(plan_df["stop"].max()) if len(plan_df) else 0
    nfe = int(plan_df["nfe_total"].sum())
    return (f"{cells} cells × {per_cell} examples = {examples} cell-examples in "
            f"{len(plan_df)} shards; ~{human(nfe)} denoiser evaluations (estimate)")


def cost_table(plan_df: pd.DataFrame, gpu_tflops: float | None = None) -> str:
    """Per purifier, and in all: denoiser evaluations, TFLOPs and, given a sustained TFLOP/s
    rate per GPU (the profile's `gpu_tflops`), the estimated GPU-hours."""
    if not len(plan_df):
        return ""
    groups = plan_df.groupby("purifier", sort=False).agg(
        cells=("cell", "nunique"), nfe=("nfe_total", "sum"),
        gflop=("gflop_total", lambda v: v.sum(min_count=len(v))))
    groups.loc["all"] = [plan_df["cell"].nunique(), plan_df["nfe_total"].sum(),
                         plan_df["gflop_total"].sum(min_count=len(plan_df))]
    lines = [f"{'purifier':<12} {'cells':>6} {'denoiser evals':>15} {'TFLOP':>10} {'GPU-hours':>10}"]
    for name, g in groups.iterrows():
        known = g["gflop"] == g["gflop"]
        tflop = human(g["gflop"] / 1e3) if known else "?"
        hours = f"{g['gflop'] / 1e3 / gpu_tflops / 3600:,.1f}" if known and gpu_tflops else "?"
        lines.append(f"{str(name):<12} {int(g['cells']):>6} {human(g['nfe']):>15} {tflop:>10} {hours:>10}")
    return "\n".join(lines)
