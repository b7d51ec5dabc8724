"""Figures of a summary (see :func:`analysis.aggregate.summarise`): what a table of numbers hides.

Four kinds, each drawn only where the summary holds what it needs:

``robust_vs_<param>``
    Robust accuracy against each swept defence parameter (a ``purifier.*`` column with two or
    more values among the rows of one dataset, threat, eps, classifier and purifier plugin):
    one line per attack label (and per value of the other swept parameters), with the 95%
    interval as a band. Rows without an attack give the clean accuracy against the parameter.
``acc_vs_eps``
    Robust accuracy against the attack budget, per dataset, threat, classifier and attack
    plugin with two or more eps: one line per defence.
``tradeoff``
    Clean against robust accuracy, one point per defence (with its interval), per dataset,
    threat, eps and attack label with two or more defences.
``cost``
    Robust accuracy against cost per image: denoiser evaluations (``nfe``), seconds
    (``s_per_row``) and, with energy telemetry, joules (``j_per_row``).

A number with validity flags (non-empty ``flags``) is drawn hollow and the caption says so;
a row without a robust number (NaN) is left out and counted in the caption.

The output is reproducible: the same summary gives the same bytes (no dates or software
versions in the files, a fixed SVG hash salt). Only the object-oriented matplotlib API is
used (never pyplot), so the process-wide backend and figure registry stay untouched.

Scale: a sweep with thousands of configurations would make thousands of figures. At most
``limit`` (default :data:`MAX_FIGURES`) are drawn, chosen round-robin over the four kinds in
the summary's order, so every kind is represented; :func:`figure_plan` names what was left
out (``FigurePlan.note`` is one sentence for the report). Lines per figure are capped at
:data:`MAX_LINES` and point labels at :data:`MAX_LABELS`, each cap noted in the caption.
"""
from __future__ import annotations

import functools
import io
import math
import os
import re
import textwrap
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from harness.fsutil import atomic_write

from .parallel import forked_map
from .tables import format_eps

FORMATS: tuple[str, ...] = ("png", "svg")
#: Most figures one report draws (the rest are named in FigurePlan.left_out).
MAX_FIGURES = 60
#: Most lines (series) in one line plot; the rest are named in the caption.
MAX_LINES = 12
#: Most point labels in one scatter panel (beyond it, only the Pareto-optimal points).
MAX_LABELS = 10
DPI = 100
KINDS: tuple[str, ...] = ("param", "eps", "tradeoff", "cost")
FIGURES_DIR = "figures"

_NAME_OK = re.compile(r"^[a-z0-9_-]+$")
_MAX_NAME = 120
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_STYLES = ("-", "--", ":", "-.")
_RC = {
    "svg.hashsalt": "lorid-harness",  # ids from a fixed salt, not a random one: same bytes
    "svg.fonttype": "none",           # text as text: small, searchable, selectable
    "font.size": 8.5,
    "axes.titlesize": 9,
    "axes.labelsize": 8.5,
    "legend.fontsize": 7,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "path.simplify": True,
}
_COST = (("nfe", "denoiser evaluations per image (nfe)"),
         ("s_per_row", "GPU-seconds per image"),
         ("j_per_row", "joules per image"))
_HOLLOW_NOTE = "Hollow markers: numbers with validity flags (⚑; see the validity section)."


@dataclass(frozen=True)
class Figure:
    """One rendered figure: ``name`` is the file stem ([a-z0-9_-]), ``data`` the file's bytes."""
    name: str
    title: str
    fmt: str
    data: bytes
    caption: str


@dataclass(frozen=True, eq=False)
class FigureSpec:
    """What one figure will show: its kind (one of KINDS), the summary rows it draws and, for
    a ``param`` figure, the parameter column on its x axis."""
    kind: str
    name: str
    title: str
    rows: pd.DataFrame
    param: str | None = None
    dropped: int = 0  # rows of the group without a robust number


@dataclass(frozen=True)
class FigurePlan:
    """The figures a summary gets (``specs``, in drawing order) and those left out by the cap."""
    specs: tuple[FigureSpec, ...]
    left_out: tuple[str, ...]
    limit: int

    @property
    def note(self) -> str:
        """One sentence for the report ("" when nothing was left out)."""
        if not self.left_out:
            return ""
        total = len(self.specs) + len(self.left_out)
        return (f"{len(self.left_out)} of {total} possible figures left out (at most {self.limit} "
                f"are drawn, round-robin over {', '.join(KINDS)}): {_listing(list(self.left_out), 8)}")


# ---------------------------------------------------------------- planning

def _slug(value: object) -> str:
    text = re.sub(r"[^a-z0-9_-]+", "-", str(value).lower()).strip("-")
    return text or "x"


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _fmt_value(value: object) -> str:
    if _is_missing(value):
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value)


def _short(param: str) -> str:
    return param.split(".", 1)[1] if "." in param else param


def _clean_mask(df: pd.DataFrame) -> pd.Series:
    """Rows measuring clean accuracy: attack or threat ``none``, or eps 0."""
    mask = (df["threat"].astype(str) == "none") | (df["eps"].fillna(0) == 0)
    if "attack" in df.columns:
        mask |= df["attack"].astype(str) == "none"
    return mask


def _budget(threat: object, eps: object) -> str:
    return "no attack" if str(threat) == "none" else f"{threat} eps={format_eps(float(eps))}"


def _budget_slug(threat: object, eps: object) -> str:
    return "none" if str(threat) == "none" else f"{_slug(threat)}_{_slug(format_eps(float(eps)))}"


def _groups(df: pd.DataFrame, keys: list[str]):
    return df.groupby(keys, sort=False, dropna=False, observed=True)


def _prepared(summary: pd.DataFrame) -> pd.DataFrame:
    df = summary.reset_index(drop=True)
    flags = df["flags"] if "flags" in df.columns else pd.Series("", index=df.index)
    df = df.assign(_flagged=flags.map(lambda f: isinstance(f, str) and f != "").astype(bool),
                   _ok=df["robust_mean"].notna())
    if "s_per_row" not in df.columns and {"time_s", "rows"} <= set(df.columns):
        df["s_per_row"] = df["time_s"] / df["rows"].where(df["rows"] > 0)
    for c in df.columns:  # a list- or dict-valued parameter: compared (and shown) as text
        if c.startswith(("purifier.", "attack.")) and df[c].dtype == object:
            if df[c].map(lambda v: isinstance(v, (list, dict, set, tuple))).any():
                df[c] = df[c].map(lambda v: v if _is_missing(v) else str(v))
    return df


def _param_specs(df: pd.DataFrame, multi_clf: set[str]) -> list[FigureSpec]:
    params = [c for c in df.columns if c.startswith("purifier.")]
    if "purifier" not in df.columns or not params:
        return []
    keys = ["dataset", "threat", "eps", "classifier", "purifier"]
    out = []
    for key, g in _groups(df, keys):
        dataset, threat, eps, classifier, purifier = key
        ok = g[g["_ok"]]
        if len(ok) < 2:
            continue
        spread = ok[params].nunique(dropna=True)
        for p in [p for p in params if spread[p] >= 2]:
            clf = f"_{_slug(classifier)}" if dataset in multi_clf else ""
            name = (f"robust_vs_{_slug(_short(p))}__{_slug(dataset)}_{_budget_slug(threat, eps)}_"
                    f"{_slug(purifier)}{clf}")
            what = "clean accuracy" if str(threat) == "none" else "robust accuracy"
            title = (f"{dataset} · {_budget(threat, eps)} · {classifier} · {purifier}: "
                     f"{what} vs {_short(p)}")
            rows = g[g["_ok"] & g[p].notna()]
            out.append(FigureSpec("param", name, title, rows, p, int((~g["_ok"]).sum())))
    return out


def _eps_specs(df: pd.DataFrame, multi_clf: set[str]) -> list[FigureSpec]:
    attacked = df[~_clean_mask(df) & (df["eps"] > 0)]
    plugin = "attack" if "attack" in df.columns else "attack_label"
    out = []
    for (dataset, threat, classifier, attack), g in _groups(attacked, ["dataset", "threat", "classifier",
                                                                        plugin]):
        rows = g[g["_ok"]]
        if rows.empty or rows.groupby("label", sort=False)["eps"].nunique().max() < 2:
            continue  # no defence measured at two budgets: no line to draw
        clf = f"_{_slug(classifier)}" if dataset in multi_clf else ""
        name = f"acc_vs_eps__{_slug(dataset)}_{_slug(threat)}_{_slug(attack)}{clf}"
        title = f"{dataset} · {threat} · {classifier} · {attack}: robust accuracy vs eps"
        out.append(FigureSpec("eps", name, title, rows, None, int((~g["_ok"]).sum())))
    return out


def _point_specs(df: pd.DataFrame, kind: str) -> list[FigureSpec]:
    """``tradeoff`` (attacked groups) or ``cost`` figures, per (dataset, threat, eps, attack label)."""
    source = df[~_clean_mask(df)] if kind == "tradeoff" else df
    out = []
    for (dataset, threat, eps, attack_label), g in _groups(source, ["dataset", "threat", "eps",
                                                                     "attack_label"]):
        rows = g[g["_ok"]]
        if len(rows) < 2:
            continue
        if kind == "cost" and not any(c in rows.columns and rows[c].notna().sum() >= 2 for c, _ in _COST):
            continue
        budget = _budget_slug(threat, eps)
        attack = "" if str(threat) == "none" and str(attack_label) == "none" else f"_{_slug(attack_label)}"
        name = f"{kind}__{_slug(dataset)}_{budget}{attack}"
        head = " · ".join([str(dataset), _budget(threat, eps)]
                          + ([str(attack_label)] if attack else []))
        what = "clean vs robust accuracy" if kind == "tradeoff" else "accuracy vs cost per image"
        out.append(FigureSpec(kind, name, f"{head}: {what}", rows, None, int((~g["_ok"]).sum())))
    return out


def _unique_names(specs: list[FigureSpec]) -> list[FigureSpec]:
    """Names short enough for any file system and unique (a numbered suffix on a repeat)."""
    seen: set[str] = set()
    out = []
    for s in specs:
        name = s.name
        if len(name) > _MAX_NAME:
            name = f"{name[:_MAX_NAME - 9]}-{zlib.crc32(name.encode()):08x}"
        base, k = name, 2
        while name in seen:
            name, k = f"{base}-{k}", k + 1
        seen.add(name)
        out.append(s if name == s.name else FigureSpec(s.kind, name, s.title, s.rows, s.param, s.dropped))
    return out


def figure_plan(summary: pd.DataFrame, limit: int = MAX_FIGURES) -> FigurePlan:
    """Which figures ``summary`` gets, at most ``limit``, and which it would get beyond the cap.

    Deterministic: candidates come in the summary's row order; the cap takes them round-robin
    over KINDS (so a huge parameter sweep cannot crowd out the eps or cost figures)."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if summary.empty:
        return FigurePlan((), (), limit)
    df = _prepared(summary)
    multi_clf = {d for d, n in df.groupby("dataset", sort=False)["classifier"].nunique().items() if n > 1}
    per_kind = {"param": _param_specs(df, multi_clf), "eps": _eps_specs(df, multi_clf),
                "tradeoff": _point_specs(df, "tradeoff"), "cost": _point_specs(df, "cost")}
    ordered = _unique_names([s for k in KINDS for s in per_kind[k]])
    by_kind = {k: [s for s in ordered if s.kind == k] for k in KINDS}
    chosen: set[str] = set()
    depth = 0
    while len(chosen) < min(limit, len(ordered)):
        for k in KINDS:
            if depth < len(by_kind[k]) and len(chosen) < limit:
                chosen.add(by_kind[k][depth].name)
        depth += 1
    return FigurePlan(tuple(s for s in ordered if s.name in chosen),
                      tuple(s.name for s in ordered if s.name not in chosen), limit)


# ---------------------------------------------------------------- drawing

def _pct(series: pd.Series) -> np.ndarray:
    return 100 * pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)


def _series_keys(rows: pd.DataFrame, x: str, base: list[str], candidates: list[str]) -> list[str]:
    """``base``, extended by the candidates that vary, one at a time, until no series holds
    two points at one x (else a line would zigzag between configurations)."""
    keys = list(base)
    for c in candidates:
        if not rows.duplicated([*keys, x]).any():
            break
        if c in rows.columns and c not in keys and rows[c].nunique(dropna=False) > 1:
            keys.append(c)
    return keys


def _series_label(key: tuple, keys: list[str]) -> str:
    parts = []
    for k, v in zip(keys, key):
        parts.append(_fmt_value(v) if k in ("attack_label", "label") else f"{_short(k)}={_fmt_value(v)}")
    return " · ".join(parts)


def _x_values(rows: pd.DataFrame, x: str) -> tuple[np.ndarray, list[str] | None]:
    """Numeric x values, or category positions and their tick labels (sorted)."""
    col = rows[x]
    if not pd.api.types.is_bool_dtype(col):
        numeric = pd.to_numeric(col, errors="coerce")
        if numeric.notna().all():
            return numeric.to_numpy(dtype=float), None
    text = col.map(_fmt_value)
    cats = sorted(text.unique())
    pos = {c: i for i, c in enumerate(cats)}
    return text.map(pos).to_numpy(dtype=float), cats


def _points(ax, xs: np.ndarray, ys: np.ndarray, flagged: np.ndarray, color: str, marker: str,
            label: str | None = None) -> bool:
    """Filled markers, hollow ones for flagged numbers; whether any hollow one was drawn."""
    finite = np.isfinite(xs) & np.isfinite(ys)
    flagged = flagged & finite
    ok = ~flagged & finite
    if ok.any():
        ax.plot(xs[ok], ys[ok], linestyle="none", marker=marker, color=color, markersize=5, label=label)
        label = None
    if flagged.any():
        ax.plot(xs[flagged], ys[flagged], linestyle="none", marker=marker, markersize=6,
                markerfacecolor="white", markeredgecolor=color, markeredgewidth=1.4, label=label)
    return bool(flagged.any())


def _ylim(ax, values: list[np.ndarray]) -> None:
    allv = np.concatenate([v[np.isfinite(v)] for v in values] or [np.array([])])
    if allv.size:
        lo, hi = float(allv.min()), float(allv.max())
        pad = max(2.0, 0.08 * (hi - lo))
        ax.set_ylim(max(-1.0, lo - pad), min(101.0, hi + pad))


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _clip(text: str, width: int = 36) -> str:
    """At most ``width`` characters; the middle goes (labels differ most at their ends)."""
    if len(text) <= width:
        return text
    head = (width - 1) * 3 // 5
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def _listing(names: list[str], shown: int = 6) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more." if more > 0 else ".")


def _draw_lines(fig: MplFigure, spec: FigureSpec, x: str, base: list[str], candidates: list[str],
                xlabel: str, ylabel: str) -> list[str]:
    """A line plot of robust % with CI bands, one line per series; returns caption sentences.

    A series with one point is no line: when some series have two or more points, the
    single points are left to the tables. Over MAX_LINES series, those with the most points
    are drawn (ties: summary order). The caption names what was not drawn."""
    fixed = [k for k in base if spec.rows[k].nunique(dropna=False) <= 1]
    varying = [k for k in base if k not in fixed] or base[:1]  # a constant says nothing per line
    keys = _series_keys(spec.rows, x, varying, candidates)
    xs_all, cats = _x_values(spec.rows, x)
    rows = spec.rows.assign(_x=xs_all)
    series = list(_groups(rows, keys))  # keys is a list: every group key is a tuple
    points = [s["_x"].nunique() for _, s in series]
    single = [i for i, n in enumerate(points) if n < 2] if max(points) >= 2 else []
    lines = [i for i in range(len(series)) if i not in set(single)]
    order = sorted(lines, key=lambda i: (-points[i], i))
    drawn = sorted(order[:MAX_LINES])
    ax = fig.add_subplot()
    drawn_y: list[np.ndarray] = []
    hollow = False
    for i, j in enumerate(drawn):
        key, s = series[j]
        s = s.sort_values("_x", kind="stable")
        xs = s["_x"].to_numpy(dtype=float)
        y, lo, hi = _pct(s["robust_mean"]), _pct(s["ci_lo"]), _pct(s["ci_hi"])
        color, style = _PALETTE[i % len(_PALETTE)], _STYLES[(i // len(_PALETTE)) % len(_STYLES)]
        if len(xs) > 1 and np.isfinite(lo).any() and np.isfinite(hi).any():
            ax.fill_between(xs, lo, hi, color=color, alpha=0.13, linewidth=0)
        elif np.isfinite(lo).any():
            ax.errorbar(xs, y, yerr=np.vstack([y - lo, hi - y]).clip(min=0), fmt="none", ecolor=color,
                        elinewidth=0.9, alpha=0.6)
        ax.plot(xs, y, color=color, linestyle=style, linewidth=1.4, label=_clip(_series_label(key, keys), 40))
        hollow |= _points(ax, xs, y, s["_flagged"].to_numpy(dtype=bool), color, _MARKERS[i % len(_MARKERS)])
        drawn_y += [y, lo, hi]
    if cats is not None:
        ax.set_xticks(range(len(cats)), [_clip(c, 16) for c in cats])
        ax.set_xlim(-0.5, len(cats) - 0.5)
    else:
        values = np.unique(xs_all)
        positive = values[values > 0]
        if len(positive) == len(values) and positive.max() / positive.min() >= 20:
            ax.set_xscale("log")
        if x == "eps" and len(values) <= 8:
            ax.set_xticks(values, [format_eps(v) for v in values])
            ax.minorticks_off()
    _ylim(ax, drawn_y)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_wrap(spec.title, 95), loc="left")
    what = " · ".join({"label": "defence", "attack_label": "attack"}.get(k, _short(k)) for k in keys)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False,
              title=_clip(what, 30), alignment="left")
    band = "the band is the 95% confidence interval (clustered by image)."
    notes = [f"One line per {what}; {band}" if len(drawn) > 1 else band[0].upper() + band[1:]]
    common = [f"{'defence' if k == 'label' else 'attack' if k == 'attack_label' else _short(k)} "
              f"{_fmt_value(spec.rows[k].iloc[0])}" for k in fixed if k not in keys]
    if common:
        notes.append("All lines: " + ", ".join(common) + ".")
    if len(lines) > MAX_LINES:
        rest = [_series_label(series[j][0], keys) for j in sorted(order[MAX_LINES:])]
        notes.append(f"{len(rest)} more line(s) not drawn (at most {MAX_LINES}, those with the most "
                     "points first): " + _listing(rest))
    if single:
        rest = [_series_label(series[j][0], keys) for j in single]
        notes.append(f"{len(rest)} configuration(s) measured at a single {_short(x)} not drawn (see the "
                     "tables): " + _listing(rest))
    if hollow:
        notes.append(_HOLLOW_NOTE)
    return notes


def _pareto(xs: np.ndarray, ys: np.ndarray, more_x_better: bool) -> list[int]:
    """Indices of the points no other point beats on both axes (higher y; x by direction)."""
    sx = xs if more_x_better else -xs
    front = []
    for i in range(len(xs)):
        if not (np.isfinite(sx[i]) and np.isfinite(ys[i])):
            continue
        beaten = (sx >= sx[i]) & (ys >= ys[i]) & ((sx > sx[i]) | (ys > ys[i]))
        if not beaten.any():
            front.append(i)
    return front


def _family(rows: pd.DataFrame) -> pd.Series:
    return (rows["purifier"] if "purifier" in rows.columns else rows["label"]).map(_fmt_value)


def _point_labels(rows: pd.DataFrame) -> list[str]:
    if rows["classifier"].nunique() > 1:
        return [f"{l} ({c})" for l, c in zip(rows["label"], rows["classifier"])]
    return [str(l) for l in rows["label"]]


def _scatter(ax, rows: pd.DataFrame, x: np.ndarray, more_x_better: bool, families: list[str],
             before_labels: Callable[[], None] | None = None) -> tuple[int, bool]:
    """Points with CI error bars, coloured and shaped by purifier family; labels on up to
    MAX_LABELS points (the Pareto front when there are more), placed once ``before_labels``
    has set the final scale and limits. Returns how many got a label and whether any
    flagged (hollow) point was drawn."""
    y, lo, hi = _pct(rows["robust_mean"]), _pct(rows["ci_lo"]), _pct(rows["ci_hi"])
    err = np.vstack([np.nan_to_num(y - lo, nan=0.0).clip(min=0), np.nan_to_num(hi - y, nan=0.0).clip(min=0)])
    fam = _family(rows).to_numpy()
    flagged = rows["_flagged"].to_numpy(dtype=bool)
    hollow = False
    for i, f in enumerate(families):
        m = fam == f
        if not m.any():
            continue
        color, marker = _PALETTE[i % len(_PALETTE)], _MARKERS[i % len(_MARKERS)]
        ax.errorbar(x[m], y[m], yerr=err[:, m], fmt="none", ecolor=color, elinewidth=0.9, alpha=0.6)
        hollow |= _points(ax, x[m], y[m], flagged[m], color, marker, label=f)
    labels = _point_labels(rows)
    idx = list(range(len(rows)))
    if len(idx) > MAX_LABELS:
        idx = sorted(_pareto(x, y, more_x_better), key=lambda i: (-y[i], labels[i]))[:MAX_LABELS]
    _ylim(ax, [y, lo, hi])
    if before_labels is not None:
        before_labels()
    _annotate(ax, [(x[i], y[i], labels[i]) for i in idx if np.isfinite(x[i]) and np.isfinite(y[i])])
    return len(idx), hollow


def _annotate(ax, points: list[tuple[float, float, str]]) -> None:
    """Label points, highest first; a point whose label would overprint one already placed
    (same spot, or near it on the same line of text) is counted in that label as "(+k)".
    A label extends to the side with room (not off the axes into the legend or the next
    panel), and downwards near the top."""
    ax.get_xlim(), ax.get_ylim()  # autoscaling is lazy: settle the limits before reading them
    to_axes = ax.transData + ax.transAxes.inverted()
    char_w = 0.6 * 6.5 * DPI / 72 / max(ax.bbox.width, 1.0)  # one character, in axes widths
    line_h = 1.3 * 6.5 * DPI / 72 / max(ax.bbox.height, 1.0)
    placed: list[list] = []  # [x0, x1, fy, x, y, text, extra, fx]
    for x, y, text in sorted(points, key=lambda p: (-p[1], p[0], p[2])):
        fx, fy = to_axes.transform((x, y))
        width = (len(_clip(text, 36)) + 5) * char_w
        leftwards = fx + width > 1 and fx > 1 - fx  # the side with room
        x0, x1 = (fx - width, fx) if leftwards else (fx, fx + width)
        near = next((p for p in placed if x0 < p[1] and p[0] < x1 and abs(p[2] - fy) < line_h), None)
        if near is not None:
            near[6] += 1
        else:
            placed.append([x0, x1, fy, x, y, text, 0, leftwards])
    for _, _, fy, x, y, text, extra, right in placed:
        top = fy > 0.92
        label = _clip(text, 36) + (f" (+{extra})" if extra else "")
        ax.annotate(label, (x, y), xytext=(-4 if right else 4, -4 if top else 3),
                    textcoords="offset points", ha="right" if right else "left",
                    va="top" if top else "baseline", fontsize=6.5)


def _draw_tradeoff(fig: MplFigure, spec: FigureSpec) -> list[str]:
    rows = spec.rows
    families = list(dict.fromkeys(_family(rows)))
    ax = fig.add_subplot()
    x = _pct(rows["clean"])
    finite = np.concatenate([x[np.isfinite(x)], _pct(rows["robust_mean"])])
    lo, hi = float(np.nanmin(finite)), float(np.nanmax(finite))

    def diagonal() -> None:
        ax.plot([lo, hi], [lo, hi], color="#999999", linestyle=":", linewidth=1, label="robust = clean")

    n_labels, hollow = _scatter(ax, rows, x, True, families, diagonal)
    ax.set_xlabel("clean accuracy %")
    ax.set_ylabel("robust accuracy % (95% CI)")
    ax.set_title(_wrap(spec.title, 95), loc="left")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False,
              title="purifier", alignment="left")
    notes = ["One point per defence, coloured by purifier plugin; bars are the 95% confidence "
             "interval of the robust accuracy."]
    if n_labels < len(rows):
        notes.append(f"Labels on {n_labels} of {len(rows)} points (the clean/robust Pareto front).")
    return notes + ([_HOLLOW_NOTE] if hollow else [])


def _cost_scale(ax, x: np.ndarray) -> None:
    """Log x when costs span decades (symlog from 0 when the bare classifier costs nothing)."""
    finite = x[np.isfinite(x)]
    positive = finite[finite > 0]
    if positive.size < 2 or positive.max() / positive.min() < 30:
        return
    if positive.size == finite.size:
        ax.set_xscale("log")
    else:
        ax.set_xscale("symlog", linthresh=float(positive.min()), linscale=0.5)
        ax.set_xlim(left=0)


def _draw_cost(fig: MplFigure, spec: FigureSpec) -> list[str]:
    rows = spec.rows
    panels = [(c, label) for c, label in _COST if c in rows.columns and rows[c].notna().any()]
    families = list(dict.fromkeys(_family(rows)))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    notes = []
    hollow = False
    for ax, (col, label) in zip(axes, panels):
        x = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
        n_labels, drew_hollow = _scatter(ax, rows, x, False, families, lambda: _cost_scale(ax, x))
        hollow |= drew_hollow
        ax.set_xlabel(label)
        missing = int(np.isnan(x).sum())
        if missing:
            notes.append(f"{missing} defence(s) without {col} are not in that panel.")
        if n_labels < len(rows):
            notes.append(f"{col}: labels on {n_labels} of {len(rows)} points (the cost/robust Pareto front).")
    axes[0].set_ylabel("robust accuracy % (95% CI)")
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0, frameon=False,
                    title="purifier", alignment="left")
    fig.suptitle(_wrap(spec.title, 150), x=0.01, y=0.99, ha="left", va="top", fontsize=9)
    if "j_per_row" not in [c for c, _ in panels]:
        notes.append("No energy panel: no row has energy telemetry (j_per_row).")
    return ["Cost per evaluated image against robust accuracy, one point per defence; bars are "
            "the 95% confidence interval.", *notes, *([_HOLLOW_NOTE] if hollow else [])]


def _render(spec: FigureSpec, fmt: str) -> Figure:
    # Fixed margins, not constrained layout: one draw per figure instead of two (60 figures
    # of a big sweep are drawn in seconds); titles are wrapped, legends sit right of the axes.
    if spec.kind == "cost":
        panels = sum(1 for c, _ in _COST if c in spec.rows.columns and spec.rows[c].notna().any())
        width = 3.3 * panels + 1.9
        fig = MplFigure(figsize=(width, 3.6), dpi=DPI)
        fig.subplots_adjust(left=0.75 / width, right=1 - 1.7 / width, bottom=0.14, top=0.86, wspace=0.08)
    else:
        fig = MplFigure(figsize=(8.6, 4.2), dpi=DPI)
        fig.subplots_adjust(left=0.075, right=0.7, bottom=0.12, top=0.88)
    FigureCanvasAgg(fig)
    if spec.kind == "param":
        assert spec.param is not None
        others = [c for c in spec.rows.columns if c.startswith("purifier.") and c != spec.param
                  and spec.rows[c].nunique(dropna=True) >= 2]
        extra = [c for c in spec.rows.columns if c.startswith("attack.") and c != "attack.eps"]
        ylabel = ("clean accuracy %" if str(spec.rows["threat"].iloc[0]) == "none"
                  else "robust accuracy % (95% CI band)")
        notes = _draw_lines(fig, spec, spec.param, ["attack_label", *others], [*extra, "label"],
                            f"{_short(spec.param)} ({spec.param.split('.')[0]} parameter)", ylabel)
    elif spec.kind == "eps":
        extra = [c for c in spec.rows.columns if c.startswith("attack.")
                 and c not in ("attack.eps", "attack.step_size")]
        notes = _draw_lines(fig, spec, "eps", ["label"], [*extra, "attack_label"], "eps",
                            "robust accuracy % (95% CI band)")
    elif spec.kind == "tradeoff":
        notes = _draw_tradeoff(fig, spec)
    else:
        notes = _draw_cost(fig, spec)
    if spec.dropped:
        notes.append(f"{spec.dropped} row(s) without a robust number left out.")
    buf = io.BytesIO()
    if fmt == "png":
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    else:
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Title": spec.title})
    return Figure(spec.name, spec.title, fmt, buf.getvalue(), " ".join(notes))


def make_figures(summary: pd.DataFrame, fmt: str = "png", *, limit: int = MAX_FIGURES,
                 plan: FigurePlan | None = None) -> list[Figure]:
    """Render the figures of ``plan`` (default: :func:`figure_plan` of ``summary``, at most
    ``limit``) as ``fmt`` ("png" or "svg"); a caller that also shows the plan's note passes it.

    The same summary always gives the same bytes. Raises ValueError for another ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"figure format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    plan = plan if plan is not None else figure_plan(summary, limit)
    specs = list(plan.specs)
    workers = min(os.cpu_count() or 1, 8, len(specs) // _PER_WORKER)
    if workers >= 2:
        # Matplotlib draws under the GIL (~0.2 s a figure): a big sweep's figures are drawn by
        # forked workers (analysis.parallel). The bytes do not depend on which process drew one.
        drawn = forked_map(functools.partial(_render_all, fmt=fmt), [specs[i::workers] for i in range(workers)],
                           workers)
        if drawn is not None:
            out: list[Figure | None] = [None] * len(specs)
            for i, part in enumerate(drawn):
                out[i::workers] = part
            return [f for f in out if f is not None]
    return _render_all(specs, fmt)


#: A worker process per this many figures (its fork and the pickling cost ~ one figure).
_PER_WORKER = 6


def _render_all(specs: list[FigureSpec], fmt: str) -> list[Figure]:
    with matplotlib.rc_context(_RC):
        return [_render(spec, fmt) for spec in specs]


def write_figures(figures: list[Figure], out_dir: str | Path) -> list[Path]:
    """Write ``<out_dir>/figures/<name>.<fmt>`` atomically and delete the *.png / *.svg left
    there by an earlier report that this one no longer draws (a stale figure would pass for a
    current one). Returns the paths written, in order."""
    folder = Path(out_dir) / FIGURES_DIR
    names = [f"{f.name}.{f.fmt}" for f in figures]
    bad = [f.name for f in figures if not _NAME_OK.match(f.name) or f.fmt not in FORMATS]
    if bad:
        raise ValueError(f"unsafe figure name(s) or format: {', '.join(bad)}")
    if len(set(names)) != len(names):
        raise ValueError("figure names repeat")
    written = [atomic_write(folder / n, f.data) for n, f in zip(names, figures)]
    if folder.is_dir():
        keep = set(names)
        for old in sorted(folder.iterdir()):
            if old.is_file() and old.suffix in (".png", ".svg") and old.name not in keep:
                old.unlink(missing_ok=True)
    return written
