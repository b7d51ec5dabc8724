"""What the numbers cost: denoiser evaluations, gradient calls, device time and energy.

Per summary row (a defence under one attack) the cost per image evaluation (one row: one
purification and attack of one image in one run): ``nfe`` (denoiser evaluations), ``grad_evals``
(gradient calls, where recorded), ``s_per_row`` (device seconds, the worker's timed batches
divided by their rows) and ``j_per_row`` (joules from the tasks' NVML telemetry, where present).
Worst-of rows add up their attacks' costs and are left out of the totals, which would otherwise
count those attacks twice. By device type: the GPU name NVML gave, else the torch device.
"""
from __future__ import annotations

import math

import pandas as pd

from .tables import aligned, format_eps

WORST_PREFIX = "worst:"


def _num(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def cost_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per summary row with its cost per image evaluation and in total."""
    out = pd.DataFrame({
        "dataset": summary["dataset"], "threat": summary["threat"],
        "eps": [format_eps(e) if t != "none" else "" for t, e in zip(summary["threat"], summary["eps"])],
        "attack": summary["attack_label"], "defence": summary["label"],
        "classifier": summary["classifier"], "rows": summary["rows"],
        "nfe/img": summary["nfe"], "grad/img": summary.get("grad_evals"),
        "s/img": summary.get("s_per_row"), "J/img": summary.get("j_per_row"),
        "device-h": summary["time_s"] / 3600.0, "device": summary.get("devices"),
    })
    return out


def totals(cells: pd.DataFrame) -> dict[str, float]:
    """The sweep's totals over its real cells: rows, device-hours, kWh (where NVML recorded it)
    and the share of rows whose energy is known."""
    real = cells[~cells["cell"].astype(str).str.startswith(WORST_PREFIX)]
    rows = float(real["rows"].sum())
    energy = real["energy_j"].sum(min_count=1) if "energy_j" in real else math.nan
    covered = float(real["energy_rows"].fillna(0).sum()) if "energy_rows" in real else 0.0
    return {"rows": rows, "device_h": float(real["time_s"].sum()) / 3600.0,
            "nfe": float(real["nfe_sum"].sum()),
            "kwh": float(energy) / 3.6e6 if not pd.isna(energy) else math.nan,
            "energy_share": covered / rows if rows else 0.0}


def by_device(cells: pd.DataFrame) -> pd.DataFrame:
    """Per device type and defence: rows, seconds and joules per image evaluation, hours, kWh."""
    real = cells[~cells["cell"].astype(str).str.startswith(WORST_PREFIX)].copy()
    gpu = real["gpu"] if "gpu" in real else pd.Series(None, index=real.index)
    real["device type"] = [g if isinstance(g, str) and g else (d or "?")
                           for g, d in zip(gpu, real.get("device", pd.Series("", index=real.index)))]
    real["energy_j"] = real["energy_j"] if "energy_j" in real else math.nan
    g = real.groupby(["device type", "dataset", "label"], sort=True, dropna=False).agg(
        rows=("rows", "sum"), time_s=("time_s", "sum"), nfe_sum=("nfe_sum", "sum"),
        energy_j=("energy_j", lambda s: s.sum(min_count=1)), energy_rows=("energy_rows", "sum"))
    g = g.reset_index()
    g["nfe/img"] = g["nfe_sum"] / g["rows"]
    g["s/img"] = g["time_s"] / g["rows"]
    g["J/img"] = g["energy_j"] / g["energy_rows"].where(g["energy_rows"] > 0)
    g["device-h"] = g["time_s"] / 3600.0
    g["kWh"] = g["energy_j"] / 3.6e6
    return g[["device type", "dataset", "label", "rows", "nfe/img", "s/img", "J/img", "device-h", "kWh"]]


def _text_table(frame: pd.DataFrame, numeric: set[str]) -> list[str]:
    def text(column: str, v: object) -> str:
        if column in numeric:
            return _num(v)  # type: ignore[arg-type]
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)

    headers = [str(c) for c in frame.columns]
    rows = [[text(c, v) for c, v in zip(frame.columns, r)] for r in frame.itertuples(index=False)]
    return aligned(headers, rows, [c in numeric or c == "rows" for c in frame.columns])


def totals_line(cells: pd.DataFrame) -> str:
    """The sweep's totals in one line."""
    t = totals(cells)
    energy = (f"{t['kwh']:.3g} kWh measured by NVML on {100 * t['energy_share']:.0f}% of rows"
              if not math.isnan(t["kwh"]) else "no NVML energy telemetry (CPU, or not recorded)")
    return (f"sweep totals: {t['rows']:.0f} rows, {t['nfe']:.3g} denoiser evaluations, "
            f"{t['device_h']:.3g} device-hours, {energy} (worst-of rows not counted twice)")


def render_cost_text(summary: pd.DataFrame, cells: pd.DataFrame, device_table: bool = False) -> str:
    """The cost section: per defence and attack, then the sweep's totals (and, with
    ``device_table``, the table by device type)."""
    rows = cost_rows(summary).drop(columns=["threat"])
    numeric = {"nfe/img", "grad/img", "s/img", "J/img", "device-h", "kWh"}
    lines = ["cost per image evaluation (one row: one purification + attack of one image in one run)"]
    lines += _text_table(rows, numeric)
    lines.append(totals_line(cells))
    if device_table:
        lines += ["", "cost by device type"] + _text_table(by_device(cells), numeric)
    return "\n".join(lines) + "\n"
