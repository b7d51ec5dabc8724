"""Ad-hoc tables from a summary (:func:`analysis.aggregate.summarise`): filter, then pivot.

A paper table is a slice of the summary (``--where``) laid out by some of its identity
columns (``--rows``/``--cols``): e.g. robust accuracy by defence × classifier at one attack,
or by ``purifier.t_s`` × ``purifier.loops``. Each pivot cell must hold exactly one summary
row; when two land in one cell the table would silently hide one, so :func:`pivot` refuses
and names the columns that tell them apart.

The grid's ``report:`` section (``harness.grid.check_report``) names headline tables the
same way; :func:`headline_tables` builds them, showing a table that matches nothing (results
may be partial) as an explained empty table rather than failing the report.

Filters compare type-aware: numbers numerically within a relative 1e-5 (so ``eps=8/255``
matches 0.0313725..., as does the 6-digit ``0.0313725``), strings exactly, booleans as
``true``/``false``, a missing value (None/NaN) only as ``null``.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from harness.errors import UsageError
from harness.grid import (COMPARISONS, NEGATION, REPORT_KEYS, REPORT_VALUES, listing, parse_number,
                          resolve_report_key, split_comparison)
from harness.registry import shown

from .tables import FLAG, PARTIAL_NOTE, _md, _pct, flag_notes, format_eps

WHERE_SYNTAX = ("expected KEY=VALUE, KEY!=VALUE, KEY=V1,V2 (any of), or KEY<=X, KEY>=X, KEY<X, "
                "KEY>X with X a number; numbers may be fractions such as eps=8/255")
#: Relative tolerance of numeric equality: a 6-significant-digit copy of a value matches it.
REL_TOL = 1e-5
ABS_TOL = 1e-12
PERCENT_VALUES = ("robust_mean", "clean", "robust_vote", "robust_worst")
ROBUST_VALUES = ("robust_mean", "robust_vote", "robust_worst")  # the numbers a validity flag concerns
VALUE_HEADINGS = {"robust_mean": "robust % mean [95% CI]", "clean": "clean %",
                  "robust_vote": "robust % (majority vote)", "robust_worst": "robust % (worst run)",
                  "nfe": "denoiser evaluations per row", "s_per_row": "seconds per row",
                  "j_per_row": "joules per row"}
PARTIAL_MARK = "(partial)"
MISSING = "–"
_EXPR = re.compile(r"\s*([A-Za-z_][\w.]*)\s*(!=|<=|>=|==|=|<|>)(.*)", re.DOTALL)
_OPEN, _CLOSE = "([{", ")]}"


class _Words(NamedTuple):
    """How messages name the inputs: CLI flags, or the keys of a grid's report table."""

    rows: str
    cols: str
    where: str
    hint: str


_CLI = _Words("--rows", "--cols", "--where", "add it to --rows/--cols or filter with --where")
_SPEC = _Words("rows", "cols", "where",
               "add it to rows/cols or where of this table in the grid's report: section")


# ---------------------------------------------------------------- values

def _plain(v: Any) -> Any:
    """A cell value as plain Python: numpy scalars unwrapped, NaN/NA as None, arrays as lists."""
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def _equal(v: Any, text: str) -> bool:
    """Whether plain cell value `v` is the value written as `text` (see the module docstring)."""
    if v is None:
        return text.strip().lower() == "null"
    if isinstance(v, bool):
        return text.strip().lower() == ("true" if v else "false")
    if _is_number(v):
        x = parse_number(text)
        return x is not None and _close(float(v), x)
    if isinstance(v, list):
        try:
            written = json.loads(text)
        except ValueError:
            return False
        return isinstance(written, list) and len(written) == len(v) and all(
            _equal(a, b if isinstance(b, str) else json.dumps(b)) for a, b in zip(v, written))
    return str(v) == text


def _text(value: Any) -> str:
    """A YAML/JSON scalar written as filter text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _split_values(text: str) -> list[str]:
    """``a,b`` → [a, b], leaving commas inside brackets alone: labels such as
    ``lorid(t_s=0.1,loops=3)`` stay whole."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            out.append(text[start:i].strip())
            start = i + 1
    out.append(text[start:].strip())
    return out


# ---------------------------------------------------------------- filters

@dataclass(frozen=True)
class Filter:
    """One condition on a summary column: ``=`` (any of `values`), ``!=`` (none of them), or a
    numeric comparison with the single value."""

    key: str
    op: str
    values: tuple[str, ...]
    text: str  # as written, for messages

    def matches(self, value: Any) -> bool:
        """Whether a cell value passes this filter."""
        v = _plain(value)
        if self.op == "=":
            return any(_equal(v, t) for t in self.values)
        if self.op == NEGATION:
            return not any(_equal(v, t) for t in self.values)
        x = parse_number(self.values[0])
        if not _is_number(v) or x is None:
            return False
        close = _close(float(v), x)
        return {"<": v < x and not close, "<=": v <= x or close,
                ">": v > x and not close, ">=": v >= x or close}[self.op]

    def __str__(self) -> str:
        return self.text


def identity_columns(columns: Iterable[str]) -> list[str]:
    """The columns that say what a summary row is: the group keys and plugin names
    (harness.grid.REPORT_KEYS), then the ``<kind>.<param>`` parameter columns."""
    cols = [str(c) for c in columns]
    return [k for k in REPORT_KEYS if k in cols] + [c for c in cols if "." in c and c not in REPORT_KEYS]


def _where_names(columns: Iterable[str]) -> list[str]:
    cols = [str(c) for c in columns]
    ident = identity_columns(cols)
    return ident + [c for c in cols if c not in ident]


def _resolve(key: Any, names: list[str], what: str) -> str:
    try:
        return resolve_report_key(key, names)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


def parse_where(exprs: Sequence[str], columns: Iterable[str]) -> list[Filter]:
    """Parse ``--where`` expressions against the summary's columns (a key may abbreviate a
    parameter column: ``t_s`` for ``purifier.t_s``). Raises UsageError naming the expression
    and the allowed syntax or keys."""
    names = _where_names(columns)
    out = []
    for expr in exprs:
        m = _EXPR.fullmatch(expr) if isinstance(expr, str) else None
        if m is None:
            raise UsageError(f"--where {shown(expr)}: not a filter; {WHERE_SYNTAX}")
        key, op, rest = m.group(1), m.group(2), m.group(3).strip()
        op = "=" if op == "==" else op
        what = f"--where {shown(expr)}"
        if not rest:
            raise UsageError(f"{what}: no value after {op}; {WHERE_SYNTAX}")
        column = _resolve(key, names, what)
        if op in COMPARISONS:
            if parse_number(rest) is None:
                raise UsageError(f"{what}: {op} needs one number; {WHERE_SYNTAX}")
            values: tuple[str, ...] = (rest,)
        else:
            values = tuple(_split_values(rest))
            if not all(values):
                raise UsageError(f"{what}: an empty value in the list; {WHERE_SYNTAX}")
        out.append(Filter(column, op, values, expr.strip()))
    return out


def filters_from_mapping(where: Mapping[str, Any], columns: Iterable[str]) -> list[Filter]:
    """Filters from a ``where`` mapping (a grid report table, a reference entry): key → value
    (a string may start with <=, >=, <, > or !=) or list of values (any of)."""
    names = _where_names(columns)
    out = []
    for key, value in where.items():
        column = _resolve(key, names, f"where {shown(key)}")
        if isinstance(value, list):
            values, op = tuple(_text(v) for v in value), "="
            text = f"{key}={','.join(values)}"
        elif isinstance(value, str):
            op, rest = split_comparison(value)
            values = (rest,)
            text = f"{key}{op}{rest}"
        else:
            values, op = (_text(value),), "="
            text = f"{key}={values[0]}"
        out.append(Filter(column, op, values, text))
    return out


def apply_where(summary: pd.DataFrame, filters: Sequence[Filter]) -> pd.DataFrame:
    """The summary rows passing every filter (in their order, index reset). A number filter on
    a numeric column whose value is not a number is refused rather than matching nothing."""
    mask = pd.Series(True, index=summary.index)
    for f in filters:
        if f.key not in summary.columns:
            raise UsageError(f"where {f.text}: these results have no column {f.key!r}; allowed: "
                             f"{listing(_where_names(summary.columns))}")
        col = summary[f.key]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            bad = [v for v in f.values if v.strip().lower() != "null" and parse_number(v) is None]
            if bad:
                raise UsageError(f"where {f.text}: {f.key} holds numbers; {shown(bad[0])} is not "
                                 "a number (fractions such as 8/255 are)")
        mask &= col.map(f.matches).astype(bool)
    return summary.loc[mask].reset_index(drop=True)


# ---------------------------------------------------------------- pivot

@dataclass
class Pivot:
    """A pivot table: row and column keys (tuples of plain values of `rows`/`cols`), display
    strings and the underlying numbers (NaN where no result falls), and footnotes. `empty`
    says why a headline table has nothing to show (then the grids are empty)."""

    rows: list[str]
    cols: list[str]
    value: str
    row_keys: list[tuple[Any, ...]] = field(default_factory=list)
    col_keys: list[tuple[Any, ...]] = field(default_factory=list)
    cells: list[list[str]] = field(default_factory=list)
    numbers: list[list[float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    empty: str | None = None

    @property
    def heading(self) -> str:
        """What the cells hold, and what the columns are."""
        what = VALUE_HEADINGS.get(self.value, self.value)
        return f"{what} by {' · '.join(self.cols)}" if self.cols else what

    def col_headers(self) -> list[str]:
        """One header per value column (the single column of a pivot without cols is the value)."""
        if not self.cols:
            return [VALUE_HEADINGS.get(self.value, self.value)]
        return [" · ".join(key_text(c, v) for c, v in zip(self.cols, k)) for k in self.col_keys]


def key_text(column: str, value: Any) -> str:
    """A key value for display: budgets as fractions (8/255), floats short, missing as –."""
    v = _plain(value)
    if v is None:
        return MISSING
    if isinstance(v, bool):
        return "true" if v else "false"
    if _is_number(v):
        if column == "eps" or column.endswith(".eps"):
            return format_eps(float(v))
        return f"{v:g}" if isinstance(v, float) else str(v)
    if isinstance(v, list):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _hashable(v: Any) -> Any:
    v = _plain(v)
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


def _num(x: Any) -> str:
    x = _plain(x)
    if x is None or not _is_number(x):
        return MISSING
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _flags(row: pd.Series) -> str:
    value = row.get("flags", "")
    return value if isinstance(value, str) else ""


def _partial(row: pd.Series) -> bool:
    value = _plain(row.get("complete", True))
    return value is not None and not bool(value)


def cell_text(row: pd.Series, value: str) -> str:
    """The display of one summary row's `value`: robust_mean with its interval, ⚑ when a robust
    number is flagged, (partial) when the row is not complete."""
    x = _plain(row.get(value))
    if value == "robust_mean":
        text = f"{_pct(x)} [{_pct(_plain(row.get('ci_lo')))}, {_pct(_plain(row.get('ci_hi')))}]"
    elif value in PERCENT_VALUES:
        text = _pct(x)
    else:
        text = _num(x)
    if value in ROBUST_VALUES and _flags(row):
        text += f" {FLAG}"
    if _partial(row):
        text += f" {PARTIAL_MARK}"
    return text


def _order(keys: list[tuple[Any, ...]], first_seen: list[dict[Any, int]]) -> list[tuple[Any, ...]]:
    """Numbers ascending, then other values in the summary's order, missing values last."""
    def rank(key: tuple[Any, ...]) -> tuple[Any, ...]:
        out: list[Any] = []
        for i, v in enumerate(key):
            if v is None:
                out.append((2, 0.0, 0))
            elif _is_number(v):
                out.append((0, float(v), 0))
            else:
                out.append((1, 0.0, first_seen[i][v]))
        return tuple(out)
    return sorted(keys, key=rank)


def _axis(keys: Sequence[str], ident: list[str], what: str) -> list[str]:
    if isinstance(keys, str):
        keys = [keys]
    out = []
    for k in keys:
        column = _resolve(k, ident, what)
        if column in out:
            raise UsageError(f"{what}: {column} appears twice")
        out.append(column)
    return out


def _ambiguity(summary: pd.DataFrame, positions: list[int], rows: list[str], cols: list[str],
               key: tuple[Any, ...], hint: str) -> UsageError:
    """The error for several summary rows in one pivot cell, naming the columns that differ."""
    where = " × ".join(f"{c}={key_text(c, v)}" for c, v in zip([*rows, *cols], key)) or "the table"
    group = summary.iloc[positions]
    differ = []
    for c in identity_columns(summary.columns):
        if c in rows or c in cols:
            continue
        seen: list[str] = []
        for v in group[c]:
            t = key_text(c, v)
            if t not in seen:
                seen.append(t)
        if len(seen) > 1:
            shown_values = ", ".join(shown(t, 120).strip("'\"") for t in seen[:3])
            differ.append(f"{c} ({shown_values}{', ...' if len(seen) > 3 else ''})")
    if not differ:  # identical identity columns: rows from two sources of the same group
        return UsageError(f"{len(positions)} results for {where} that no identity column tells "
                          "apart; the summary has duplicate rows")
    more = f", and {len(differ) - 3} more columns" if len(differ) > 3 else ""
    it = "it" if len(differ) == 1 else "one of them"
    return UsageError(f"{len(positions)} results for {where}: they differ in "
                      f"{', '.join(differ[:3])}{more} — {hint.replace('add it', f'add {it}')}")


def pivot(summary: pd.DataFrame, rows: Sequence[str], cols: Sequence[str],
          value: str = "robust_mean") -> Pivot:
    """Lay the summary out with `rows` × `cols` keys (identity columns; a parameter may be
    abbreviated) and `value` in the cells. Raises UsageError on unknown keys or value, an empty
    summary, or two summary rows in one cell (naming the columns that differ)."""
    return _pivot(summary, rows, cols, value, _CLI)


def _pivot(summary: pd.DataFrame, rows: Sequence[str], cols: Sequence[str], value: str,
           words: _Words) -> Pivot:
    ident = identity_columns(summary.columns)
    row_cols = _axis(rows, ident, words.rows)
    col_cols = _axis(cols, ident, words.cols)
    if not row_cols:
        raise UsageError(f"{words.rows}: give at least one key; allowed: {listing(ident)}")
    both = [c for c in col_cols if c in row_cols]
    if both:
        raise UsageError(f"{words.cols}: {', '.join(both)} is in {words.rows} too; a key goes in one")
    numeric_extra = [c for c in summary.columns if c not in REPORT_VALUES and c not in ident
                     and pd.api.types.is_numeric_dtype(summary[c])
                     and not pd.api.types.is_bool_dtype(summary[c])]
    if value not in REPORT_VALUES and value not in numeric_extra:
        raise UsageError(f"value {shown(value)} is not allowed; allowed: {', '.join(REPORT_VALUES)}")
    if value not in summary.columns:
        raise UsageError(f"value {value}: these results have no column {value!r}")
    if summary.empty:
        raise UsageError(f"no results to tabulate (did {words.where} match nothing?)")

    keys = [*row_cols, *col_cols]
    first_seen: list[dict[Any, int]] = [{} for _ in keys]
    at: dict[tuple[Any, ...], list[int]] = {}
    for pos, record in enumerate(summary[keys].itertuples(index=False, name=None)):
        key = tuple(_hashable(v) for v in record)
        for i, v in enumerate(key):
            first_seen[i].setdefault(v, len(first_seen[i]))
        at.setdefault(key, []).append(pos)
    for key, positions in at.items():
        if len(positions) > 1:
            raise _ambiguity(summary, positions, row_cols, col_cols, key, words.hint)

    n = len(row_cols)
    row_keys = _order(list(dict.fromkeys(k[:n] for k in at)), first_seen[:n])
    col_keys = _order(list(dict.fromkeys(k[n:] for k in at)), first_seen[n:])
    cells = [["" for _ in col_keys] for _ in row_keys]
    numbers = [[math.nan for _ in col_keys] for _ in row_keys]
    r_index = {k: i for i, k in enumerate(row_keys)}
    c_index = {k: j for j, k in enumerate(col_keys)}
    used = []
    for key, [pos] in at.items():
        row = summary.iloc[pos]
        i, j = r_index[key[:n]], c_index[key[n:]]
        cells[i][j] = cell_text(row, value)
        x = _plain(row[value])
        numbers[i][j] = float(x) if _is_number(x) else math.nan
        used.append(pos)
    return Pivot(row_cols, col_cols, value, row_keys, col_keys, cells, numbers,
                 _notes(summary.iloc[sorted(used)], value))


def _notes(rows: pd.DataFrame, value: str) -> list[str]:
    notes = []
    if "complete" in rows.columns and any(_partial(r) for _, r in rows.iterrows()):
        notes.append(PARTIAL_NOTE)
    if value in ROBUST_VALUES and "flags" in rows.columns:
        flagged = rows[[bool(_flags(r)) for _, r in rows.iterrows()]]
        if not flagged.empty:
            messages = (flag_notes(flagged) if {"flag_messages", "label", "classifier"} <= set(rows.columns)
                        else [])
            if not messages:
                codes = sorted({c for f in flagged["flags"] for c in str(f).split(";") if c})
                messages = [f"{FLAG}: flagged by the validity checks ({', '.join(codes)})"]
            notes += messages
    return notes


# ---------------------------------------------------------------- headline tables

def _empty(rows: Any, cols: Any, value: Any, why: str) -> Pivot:
    as_list = (lambda v: [str(v)] if isinstance(v, str) else [str(x) for x in v or []])
    return Pivot(as_list(rows), as_list(cols), str(value or REPORT_VALUES[0]), empty=why)


def _why_empty(summary: pd.DataFrame, filters: Sequence[Filter]) -> str:
    if summary.empty:
        return "no results yet"
    described = ", ".join(f.text for f in filters)
    for f in filters:
        col = summary[f.key]
        if not col.map(f.matches).any():
            present = list(dict.fromkeys(key_text(f.key, v) for v in col))
            values = ", ".join(shown(v, 60).strip("'") for v in present[:8])
            more = ", ..." if len(present) > 8 else ""
            return f"no result has {f.text} (values here: {values}{more})"
    return f"no result matches all of {described} at once"


def headline_tables(summary: pd.DataFrame, spec: Mapping[str, Any]) -> list[tuple[str, Pivot]]:
    """The grid report section's tables (`spec` as in ``Grid.report``), in order. A table that
    cannot be built from these results (its filter matches nothing, a column is missing, two
    rows share a cell) comes back as an empty Pivot whose `empty` says why: results may be
    partial, and one table must not sink the report."""
    out = []
    for t in (spec or {}).get("tables", []) or []:
        if not isinstance(t, Mapping):
            out.append(("(unreadable table)", _empty([], [], None, f"not a table: {shown(t)}")))
            continue
        title = str(t.get("title", ""))
        rows, cols = t.get("rows", []), t.get("cols", []) or []
        value = t.get("value") or REPORT_VALUES[0]
        try:
            filters = filters_from_mapping(t.get("where") or {}, summary.columns)
            sub = apply_where(summary, filters)
            p = (_empty(rows, cols, value, _why_empty(summary, filters)) if sub.empty
                 else _pivot(sub, rows, cols, value, _SPEC))
        except UsageError as exc:
            p = _empty(rows, cols, value, str(exc))
        out.append((title, p))
    return out


# ---------------------------------------------------------------- rendering

def _split_mark(text: str) -> tuple[str, str]:
    """("39.0 [31.0, 47.0]", " ⚑ (partial)"): the number and its marks, aligned apart."""
    cut = len(text)
    for mark in (f" {FLAG}", f" {PARTIAL_MARK}"):
        i = text.find(mark)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut], text[cut:]


def _table(p: Pivot) -> tuple[list[str], list[list[str]]]:
    headers = [*p.rows, *p.col_headers()]
    body = [[*(key_text(c, v) for c, v in zip(p.rows, rk)), *cells]
            for rk, cells in zip(p.row_keys, p.cells)]
    return headers, body


def render_pivot_text(p: Pivot, title: str) -> str:
    """An aligned plain-text table (keys left, numbers right, marks in their own lane)."""
    if p.empty is not None:
        return f"{title}\n(no table: {p.empty})\n"
    headers, body = _table(p)
    n = len(p.rows)
    columns = []
    for i, h in enumerate(headers):
        values = [r[i] for r in body]
        if i < n:
            w = max(len(h), *(len(v) for v in values))
            columns.append([h.ljust(w)] + [v.ljust(w) for v in values])
            continue
        parts = [_split_mark(v) for v in values]
        cw = max(len(c) for c, _ in parts)
        mw = max(len(m) for _, m in parts)
        cells = [c.rjust(cw) + m.ljust(mw) for c, m in parts]
        w = max(len(h), cw + mw)
        columns.append([h.rjust(w)] + [c.rjust(w) for c in cells])
    lines = ["  ".join(col[k] for col in columns).rstrip() for k in range(len(body) + 1)]
    rule = "  ".join("-" * len(col[0]) for col in columns)
    heading = [p.heading] if p.cols else []  # without cols, the one header already says it
    return "\n".join([title, *heading, lines[0], rule, *lines[1:], *p.notes]) + "\n"


def render_pivot_markdown(p: Pivot, title: str) -> str:
    """A GitHub pipe table under a ``###`` heading."""
    if p.empty is not None:
        return f"### {_md(title)}\n\n_no table: {_md(p.empty)}_\n"
    headers, body = _table(p)
    align = ["---"] * len(p.rows) + ["---:"] * (len(headers) - len(p.rows))
    out = [f"### {_md(title)}", ""] + ([f"_{_md(p.heading)}_", ""] if p.cols else [])
    out += ["| " + " | ".join(_md(c) for c in r) + " |" for r in [headers, align, *body]]
    if p.notes:
        out += [""] + [f"- {_md(n)}" if n.startswith(FLAG) else f"_{_md(n)}_" for n in p.notes]
    return "\n".join(out) + "\n"


def pivot_frame(p: Pivot) -> pd.DataFrame:
    """The pivot as a DataFrame: key columns with their plain values, then one column per
    column key holding the numbers at full precision (fractions for accuracies)."""
    headers = p.col_headers()
    records = [{**dict(zip(p.rows, (list(v) if isinstance(v, tuple) else v for v in rk))),
                **dict(zip(headers, nums))} for rk, nums in zip(p.row_keys, p.numbers)]
    return pd.DataFrame.from_records(records, columns=[*p.rows, *headers])


def render_pivot_csv(p: Pivot) -> str:
    """The numbers of :func:`pivot_frame` as CSV."""
    return pivot_frame(p).to_csv(index=False, lineterminator="\n")
