"""Published numbers beside ours: a references YAML file and the comparison table.

A reproduction is judged against the paper it reproduces, so the report can put the paper's
clean and robust accuracy next to our robust mean and its 95% interval, and say whether the
paper's number lies inside it. The file (e.g. ``references/lorid-aaai2025.yaml``)::

    source: "Author et al., Title, Venue year"
    entries:
      - {dataset: ..., threat: linf, eps: 8/255, attack: ..., classifier: ...,
         purifier: ..., clean: 91.2, robust: 55.0, where: "Table 2", note: ...}

An entry's match keys are summary columns (the group keys, ``purifier``, ``attack``,
``<kind>.<param>`` parameter columns); a key it omits matches anything, and a value may be a
list (any of) or, as in a grid report table, a string starting with <=, >=, <, > or !=.
``clean``/``robust`` are percentages, or null when the number is not filled in. Every entry
comes out of :func:`compare`: matched (one line per summary row it matches), ``no number``,
``no match`` (with the reason) or ``other dataset`` — never silently dropped.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from harness.errors import UsageError
from harness.grid import (COMPARISONS, NEGATION, REPORT_KEYS, listing, parse_number,
                          resolve_report_key, split_comparison)
from harness.registry import KINDS, shown, shown_key

from .pivot import apply_where, cell_text, filters_from_mapping, key_text

TOP_KEYS = ("source", "note", "entries")
NUMBER_KEYS = ("clean", "robust")
TEXT_KEYS = ("where", "note")
MAX_BYTES = 1 << 20
MAX_ENTRIES = 10_000
MAX_TEXT = 2000
_PARAM = re.compile(r"(%s)\.[A-Za-z_]\w*" % "|".join(map(re.escape, KINDS)))
STATUS_COMPARED, STATUS_NO_NUMBER = "compared", "no number"
STATUS_NO_MATCH, STATUS_OTHER = "no match", "other dataset"
COMPARE_COLUMNS = ("entry", "dataset", "setting", "where", "label", "classifier", "attack_label",
                   "paper_clean", "ours_clean", "clean_diff", "paper_robust", "ours_robust",
                   "ci_lo", "ci_hi", "diff", "inside", "complete", "flags", "ours", "status", "note")


class ReferencesError(UsageError):
    """A bad references file, located by file and key path (exit code 2, like a grid error)."""

    def __init__(self, file: str, key: str, message: str):
        self.file, self.key, self.message = file, key, message
        super().__init__(f"{file}: {key}: {message}")


@dataclass(frozen=True)
class Reference:
    """One published number: where it applies (summary column → value or list of values) and
    what the paper reports there, in percent (None: not filled in)."""

    match: dict[str, Any]
    clean: float | None
    robust: float | None
    where: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class References:
    """A loaded references file."""

    path: str
    source: str
    entries: list[Reference]
    note: str | None = None


def _allowed_entry_keys() -> str:
    return (f"match keys {', '.join(REPORT_KEYS)} or <kind>.<param> (kind: {', '.join(KINDS)}); "
            f"numbers {', '.join(NUMBER_KEYS)}; text {', '.join(TEXT_KEYS)}")


def _text(value: Any, file: str, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT or "\0" in value:
        raise ReferencesError(file, key, f"{shown(value)} is not allowed; expected a string of at "
                                         f"most {MAX_TEXT} characters, or null")
    return value


def _percent(value: Any, file: str, key: str) -> float | None:
    if value is None:
        return None
    x = None if isinstance(value, bool) or not isinstance(value, (int, float)) else float(value)
    if x is None or not math.isfinite(x) or not 0 <= x <= 100:
        raise ReferencesError(file, key, f"{shown(value)} is not allowed; expected a percentage "
                                         "in [0, 100] (e.g. 55.3), or null when not filled in")
    return x


def _match_value(name: str, value: Any, file: str, key: str) -> Any:
    """A match value as a grid report table's `where` takes it; eps must be a number (a/b too)."""
    values = value if isinstance(value, list) else [value]
    if not values or len(values) > 100:
        raise ReferencesError(file, key, f"{shown(value)} is not allowed; expected a value or a "
                                         "list of 1 to 100 values")
    for i, v in enumerate(values):
        at = f"{key}[{i}]" if isinstance(value, list) else key
        ok = isinstance(v, (bool, int, float)) or (isinstance(v, str) and v.strip() and len(v) <= 200)
        if not ok or (isinstance(v, float) and not math.isfinite(v)):
            raise ReferencesError(file, at, f"{shown(v)} is not allowed; expected a number, "
                                            "true/false or a string of 1 to 200 characters")
        op, rest = split_comparison(v) if isinstance(v, str) else ("=", v)
        if op != "=" and isinstance(value, list):
            raise ReferencesError(file, at, f"{shown(v)}: a comparison cannot be one of a list")
        if (op in COMPARISONS or name == "eps" and op in ("=", NEGATION)) and parse_number(rest) is None:
            raise ReferencesError(file, at, f"{shown(v)} is not a number; expected e.g. 0.5 or 8/255")
    return value


def _entry(raw: Any, file: str, key: str) -> Reference:
    if not isinstance(raw, dict):
        raise ReferencesError(file, key, f"{shown(raw)} is not allowed; expected a mapping with "
                                         f"{_allowed_entry_keys()}")
    match: dict[str, Any] = {}
    for k, v in raw.items():
        at = f"{key}.{shown_key(k)}"
        if k in NUMBER_KEYS or k in TEXT_KEYS:
            continue
        if not isinstance(k, str) or not (k in REPORT_KEYS or _PARAM.fullmatch(k)):
            raise ReferencesError(file, at, f"unknown key; allowed: {_allowed_entry_keys()}")
        match[k] = _match_value(k, v, file, at)
    if not match:
        raise ReferencesError(file, key, "no match key, so it would match every result; allowed: "
                                         f"{_allowed_entry_keys()}")
    return Reference(match=match, clean=_percent(raw.get("clean"), file, f"{key}.clean"),
                     robust=_percent(raw.get("robust"), file, f"{key}.robust"),
                     where=_text(raw.get("where"), file, f"{key}.where"),
                     note=_text(raw.get("note"), file, f"{key}.note"))


def load_references(path: str | Path) -> References:
    """Read and check a references file; ReferencesError (a UsageError, exit 2) names the file,
    the key and what is allowed."""
    file = str(path)
    try:
        p = Path(path)
        if p.is_dir():
            raise ReferencesError(file, "<root>", "is a directory; expected a references YAML file")
        if p.stat().st_size > MAX_BYTES:
            raise ReferencesError(file, "<root>", f"larger than {MAX_BYTES} bytes")
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReferencesError(file, "<root>", f"cannot read references file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ReferencesError(file, "<root>", "not UTF-8 text; expected a YAML mapping") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ReferencesError(file, "<root>", f"not valid YAML ({shown(' '.join(str(exc).split()), 300)}); "
                                              f"expected a mapping with keys: {', '.join(TOP_KEYS)}") from None
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise ReferencesError(file, "<root>", f"not a references file ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise ReferencesError(file, "<root>", f"{type(raw).__name__}, not a mapping; expected keys: "
                                              f"{', '.join(TOP_KEYS)}")
    for k in raw:
        if k not in TOP_KEYS:
            raise ReferencesError(file, shown_key(k), f"unknown key; allowed: {', '.join(TOP_KEYS)}")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip() or len(source) > MAX_TEXT:
        raise ReferencesError(file, "source", f"{shown(source)} is not allowed; expected the "
                                              "citation of the published numbers (a string)")
    entries = raw.get("entries")
    if not isinstance(entries, list) or not entries or len(entries) > MAX_ENTRIES:
        raise ReferencesError(file, "entries", f"{shown(entries)} is not allowed; expected a list of "
                                               f"1 to {MAX_ENTRIES} entries, each a mapping with "
                                               f"{_allowed_entry_keys()}")
    return References(path=file, source=source.strip(),
                      entries=[_entry(e, file, f"entries[{i}]") for i, e in enumerate(entries)],
                      note=_text(raw.get("note"), file, "note"))


# ---------------------------------------------------------------- comparison

def describe(match: dict[str, Any]) -> str:
    """An entry's setting for display, e.g. ``dataset=x · threat=linf · eps=8/255 · attack=y``."""
    parts = []
    for k, v in match.items():
        values = v if isinstance(v, list) else [v]
        shown_values = "|".join(key_text(k, parse_number(x) if k == "eps" and parse_number(x) is not None
                                         else x) for x in values)
        op = "="
        if isinstance(v, str):
            op, rest = split_comparison(v)
            if op != "=":
                shown_values = rest
        parts.append(f"{k}{op}{shown_values}")
    return " · ".join(parts)


def _resolvable(key: str, columns: Any) -> bool:
    try:
        resolve_report_key(key, [str(c) for c in columns])
    except ValueError:
        return False
    return True


def _pct(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else 100 * float(x)


def compare(summary: pd.DataFrame, refs: References) -> pd.DataFrame:
    """One line per (entry, summary row it matches), in percent: the paper's clean/robust,
    ours (clean, robust mean, its 95% interval), ours − paper in points, and `inside` (the
    paper's robust number within our interval). An entry with no matching row, no number, or
    a dataset these results do not hold gets one line saying so (`status`)."""
    datasets = {str(d) for d in summary["dataset"]} if "dataset" in summary.columns else set()
    records: list[dict[str, Any]] = []
    for i, e in enumerate(refs.entries, 1):
        ds = e.match.get("dataset")
        base = {"entry": i, "dataset": None if ds is None else "|".join(map(str, ds if isinstance(ds, list) else [ds])),
                "setting": describe(e.match), "where": e.where,
                "paper_clean": e.clean, "paper_robust": e.robust, "note": e.note}
        if ds is not None and not any(str(d) in datasets for d in (ds if isinstance(ds, list) else [ds])):
            records.append({**base, "status": STATUS_OTHER})
            continue
        try:
            rows = apply_where(summary, filters_from_mapping(e.match, summary.columns))
        except UsageError as exc:  # e.g. a parameter column these results lack
            lacking = [k for k in e.match if not _resolvable(k, summary.columns)]
            reason = (f"these results have no column {', '.join(lacking)}" if lacking
                      else str(exc).split("; allowed")[0])
            records.append({**base, "status": f"{STATUS_NO_MATCH} ({reason})"})
            continue
        if rows.empty:
            records.append({**base, "status": STATUS_NO_MATCH})
            continue
        numbered = e.robust is not None or e.clean is not None
        for _, r in rows.iterrows():
            ours_clean, ours_robust = _pct(r.get("clean")), _pct(r.get("robust_mean"))
            lo, hi = _pct(r.get("ci_lo")), _pct(r.get("ci_hi"))
            inside = (None if e.robust is None or lo is None or hi is None
                      else lo - 1e-9 <= e.robust <= hi + 1e-9)
            records.append({
                **base, "label": r.get("label"), "classifier": r.get("classifier"),
                "attack_label": r.get("attack_label"), "ours_clean": ours_clean,
                "clean_diff": None if e.clean is None or ours_clean is None else ours_clean - e.clean,
                "ours_robust": ours_robust, "ci_lo": lo, "ci_hi": hi,
                "diff": None if e.robust is None or ours_robust is None else ours_robust - e.robust,
                "inside": inside, "complete": r.get("complete"),
                "flags": r.get("flags", "") if isinstance(r.get("flags", ""), str) else "",
                "ours": cell_text(r, "robust_mean"),
                "status": STATUS_COMPARED if numbered else STATUS_NO_NUMBER})
    df = pd.DataFrame.from_records(records, columns=list(COMPARE_COLUMNS))
    df.attrs["source"] = refs.source
    df.attrs["path"] = refs.path
    return df


def _num(x: Any, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def render_reference_text(df: pd.DataFrame, source: str | None = None) -> str:
    """The comparison as an aligned table (one line per entry and matched row), then each
    entry's setting, table and note, the entries about datasets not in these results (listed,
    not dropped) and the source."""
    source = source or df.attrs.get("source", "")
    headers = ["#", "defence", "attack", "paper clean", "ours clean", "paper robust",
               "ours robust [95% CI]", "diff", "inside", "status"]
    right = {0, 3, 4, 5, 6, 7}
    shown_rows = df[df["status"] != STATUS_OTHER]
    other = df[df["status"] == STATUS_OTHER]

    def text(x: Any) -> str:
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)

    body = []
    for _, r in shown_rows.iterrows():
        inside = r["inside"]
        body.append([f"[{r['entry']}]", text(r["label"]), text(r["attack_label"]),
                     _num(r["paper_clean"]), _num(r["ours_clean"]), _num(r["paper_robust"]),
                     text(r["ours"]), _num(r["diff"], signed=True),
                     "–" if inside is None or (isinstance(inside, float) and math.isnan(inside))
                     else ("yes" if inside else "no"), str(r["status"])])
    widths = [max(len(row[i]) for row in [headers, *body]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = ["Published numbers beside ours"]
    if body:
        out += [line(headers), "  ".join("-" * w for w in widths), *(line(b) for b in body)]
        out.append("diff: ours − paper robust accuracy, in points; inside: the paper's robust "
                   "number lies within our 95% interval; no number: the reference names the "
                   "setting but not the paper's number yet.")
    for _, r in shown_rows.drop_duplicates("entry").iterrows():
        extra = "".join(f" — {x}" for x in (r["where"], r["note"]) if isinstance(x, str) and x)
        out.append(f"[{r['entry']}] {r['setting']}{extra}")
    if not other.empty:
        names = sorted({str(d) for d in other["dataset"]})
        out.append(f"{len(other)} reference entr{'y concerns' if len(other) == 1 else 'ies concern'} "
                   f"datasets not in these results ({listing(names, 200)}): "
                   f"{', '.join(f'[{e}]' for e in other['entry'])}.")
    out.append(f"Source: {source}" + (f" ({df.attrs['path']})" if df.attrs.get("path") else ""))
    return "\n".join(out) + "\n"
