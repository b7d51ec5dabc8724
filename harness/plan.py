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

from .errors import UsageError
from .fsutil import atomic_write
from .grid import Grid, canonical_json, cell_hash, cell_label

T = 1000  # diffusion steps of the backbones' forward process; a float t_s < 1 is a fraction of it

COLUMNS = ("row", "sweep", "cell", "shard", "start", "stop", "cell_json", "label", "attack_label",
           "dataset", "classifier", "purifier", "attack", "seed", "batch_size",
           "nfe_per_example", "nfe_total", "gflop_total", "assets_dir", "asset_sha256")
_INT_COLUMNS = ("row", "shard", "start", "stop", "seed", "batch_size", "nfe_per_example",
                "nfe_total")


# ---------------------------------------------------------------- cost estimate

def diffusion_steps(t: int | float) -> int:
    """Forward steps a diffusion time stands for: an int is a step, a float < 1 a fraction of T."""
    n = round(t * T) if isinstance(t, float) and t < 1 else round(t)
    return max(0, min(int(n), T))


def steps_per_round(t: int | float, steps: int = 0) -> int:
    """Reverse (denoiser) steps of one diffuse/denoise round; `steps` > 0 respaces to fewer."""
    n = diffusion_steps(t)
    return min(steps, n) if steps > 0 else n


def nfe_per_purification(purifier: dict[str, Any]) -> int:
    """Estimated denoiser evaluations to purify one example once.

    Read from the parameters, not the name, so a new purifier declaring `t_s`/`loops`
    or `schedule` is costed too; one without either (none, tucker) costs nothing.
    """
    p = purifier["params"]
    steps = int(p.get("steps", 0))
    if "schedule" in p:
        return sum(steps_per_round(t, steps) for t in p["schedule"])
    if "t_s" in p:
        return int(p.get("loops", 1)) * steps_per_round(p["t_s"], steps)
    return 0


# Gradient sub-attacks of each AutoAttack version, counted with their target classes
# (APGD-T and FAB-T try 9 targets): an upper bound, since robust points stop early.
_AA_GRADIENT_RUNS = {"standard": 1 + 9 + 9, "rand": 2}
_AA_RUNS = {"apgd-ce": 1, "apgd-dlr": 1, "apgd-t": 9, "fab": 1, "fab-t": 9}


def attack_passes(attack: dict[str, Any]) -> int:
    """Purifier passes per example an attack adds (a backward pass counts as one more).

    Greybox gradients skip the purifier, so only the final evaluation pays for it; BPDA runs
    the purifier forward only; query attacks pay one forward per query.
    """
    name, p = attack["name"], attack["params"]
    if p.get("gradient") == "greybox":
        return 0
    if name == "square":
        return int(p["queries"])
    if name == "bpda":
        return int(p["steps"]) * int(p["eot"])
    if name == "autoattack":
        version = p["version"]
        runs = (_AA_GRADIENT_RUNS.get(version)
                or sum(_AA_RUNS.get(a, 0) for a in p.get("attacks", [])))
        eot = int(p.get("eot") or (20 if version == "rand" else 1))
        queries = int(p["queries"]) if version == "standard" or "square" in p.get("attacks", []) else 0
        return int(p["steps"]) * eot * 2 * runs + queries
    if "steps" not in p:
        return 0
    return int(p["steps"]) * int(p.get("eot", 1)) * 2


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
                         "asset_sha256": pinned})
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
    df = make_plan(grid, assets)
    data = _parquet_bytes(df)
    out = Path(jobs_dir) / grid.sweep
    plan_path, grid_path = out / "plan.parquet", out / "grid.yaml"
    if plan_path.exists():
        if not overwrite and _existing_cells(plan_path) != set(df["cell"]):
            raise UsageError(f"{plan_path}: sweep name {grid.sweep!r} is taken by a different "
                             "grid; choose another `sweep:` name or pass overwrite=True")
        if (plan_path.read_bytes() == data and grid_path.is_file()
                and grid_path.read_bytes() == grid.source):
            return plan_path
    out.mkdir(parents=True, exist_ok=True)
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
