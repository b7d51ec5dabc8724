"""Grid files: YAML → validated, fully resolved cells with content hashes.

A grid names alternatives for each plugin kind and parameter; the cartesian product
(less zipped axes and excluded combinations) is the list of cells. Every cell is
resolved against the plugin declarations, so defaults are explicit and hashed:
a changed parameter gives a new hash and never mixes with old results.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from . import catalog, registry  # catalog: installs the asset-reference check into the registry
from .errors import GridError
from .registry import INT64_MAX, KINDS, Param, PluginSpec, shown, shown_key

# Bump when the meaning of a cell changes (e.g. a plugin's semantics): every hash changes.
# v2: non-finite logits are a failed prediction (-1), not class 0; non-finite gradients are counted.
# v3: noise from a counter-based generator (harness.rng); the networks' precision in the cell.
# v4: CPU normals from our own float64 transform (harness.rng_native / _np_box_muller), not ATen's.
HASH_SALT = "lorid-harness/cell/v4"
#: What a grid's `precision:` may ask for (harness.precision runs it; here: no torch at plan time).
PRECISIONS = ("auto", "fp32", "bf16")

ROOT = "<root>"
DEFAULTS: dict[str, Any] = {"batch_size": 64, "shard_size": 256, "seeds": [0], "eval_runs": 1,
                            "data_seed": 0, "precision": "auto"}
TOP_KEYS = ("sweep", *KINDS, "examples", "batch_size", "shard_size", "seeds", "eval_runs",
            "data_seed", "precision", "zip", "exclude", "profile", "assets", "report")
REQUIRED_KEYS = ("sweep", *KINDS, "examples")
ZIP_AXES = (*KINDS, "seeds")
ENTRY_KEYS = ("name", "params", "zip")

# The one rule for a sweep name (it becomes results/<sweep>/ and jobs/<sweep>/): the report
# skips names starting with "." or "_" (its own _report/, temporaries), so a sweep never does.
SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SWEEP_RULE = ("a name of 1 to 64 letters, digits, '_', '.', '-', starting with a letter or "
              "digit, not ending in .tmp (it becomes a directory)")


def is_sweep_name(name: Any) -> bool:
    """True when `name` is a valid sweep name (SWEEP_NAME, and not a temporary's `.tmp`
    suffix); the report reads every directory this accepts (tests/test_grid.py holds it)."""
    return isinstance(name, str) and SWEEP_NAME.fullmatch(name) is not None and not name.endswith(".tmp")


# What a grid file may be: the reader refuses anything beyond these, naming the key path.
MAX_GRID_BYTES = 1 << 20  # 1 MiB of YAML
MAX_DEPTH = 32  # nested mappings/lists
MAX_NODES = 100_000  # values after alias expansion (a YAML alias bomb is refused, not expanded)
MAX_VARIANTS = 100_000  # alternatives one plugin entry's parameter axes cross to
MAX_CELLS = 1_000_000  # cells of one grid before exclusion (as many as plan rows)
MAX_ROWS = 1_000_000  # plan rows: cells x shards
# Bounds of the top-level settings. data_seed seeds numpy's RandomState (harness.data.base
# .selection: 0 <= seed < 2**32); seeds are hashed into per-example seeds (harness.rng) and
# stored in int64 plan/result columns.
LIMITS: dict[str, tuple[int, int]] = {
    "examples": (1, 10_000_000), "batch_size": (1, 100_000), "shard_size": (1, 10_000_000),
    "eval_runs": (1, 1_000), "data_seed": (0, 2 ** 32 - 1), "seeds": (0, INT64_MAX),
}


@dataclass(frozen=True, eq=False)
class CellTable:
    """A grid's cells, factored: each axis's values (a plugin kind's resolved variants, the
    seeds) and, per cell, the index of its value on every axis, in cell order.

    A million cells cost five integer arrays here instead of a million nested dicts; cell
    dicts are made on demand and share their variant dicts, so nothing may modify a cell."""

    values: dict[str, list[Any]]  # axis (KINDS, "seeds") → its values
    index: dict[str, np.ndarray]  # axis → int64 index of each cell's value
    settings: dict[str, Any]  # the grid's validated settings (_cell takes eval_runs, data_seed)

    def __len__(self) -> int:
        return len(self.index["seeds"])

    def cell(self, i: int) -> dict[str, Any]:
        return _cell({a: self.values[a][int(ix[i])] for a, ix in self.index.items()}, self.settings)

    def cells(self, rows: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """The cells (those at `rows`, in that order) as dicts."""
        cols = {a: (ix if rows is None else ix[np.asarray(rows, dtype=np.int64)]).tolist()
                for a, ix in self.index.items()}
        names = list(cols)
        return [_cell({a: self.values[a][j] for a, j in zip(names, js)}, self.settings)
                for js in zip(*cols.values())]

    def first_rows(self) -> np.ndarray:
        """The first cell of every (data set or classifier variant, variant of another kind)
        pair, in cell order: every check of one plugin, or of a pair with the data set or the
        classifier (catalog.check_cells, needs, pins, param_fields, report_names), gives on
        these cells what it gives on all of them, the first failing cell included. A check of
        purifier x attack pairs would need every cell."""
        firsts = [np.unique(self.index[a] * len(self.values[b]) + self.index[b], return_index=True)[1]
                  for i, a in enumerate(KINDS[:2]) for b in KINDS[i + 1:]]
        return np.unique(np.concatenate(firsts))

    def json_pieces(self) -> tuple[list[str], list[str]]:
        """canonical_json of a cell as text pieces around its axes' values: (literals, axes) with
        JSON = literals[0] + value(axes[0]) + literals[1] + ... + literals[-1], the value of an
        axis being value_json(axis)[its index]. The settings (the same in every cell) are in
        the literals. What lets the plan write a million cells' JSON without making the cells
        (tests/test_plan_scale.py holds the text equal to canonical_json)."""
        literals, axes, text = [], [], "{"
        for n, (key, value) in enumerate(sorted(self.cell(0).items())):
            text += ("," if n else "") + json.dumps(key) + ":"
            if key in _CELL_AXES:
                literals.append(text)
                axes.append(_CELL_AXES[key])
                text = ""
            else:
                text += canonical_json(value)
        return [*literals, text + "}"], axes

    def value_json(self, axis: str) -> list[str]:
        """canonical_json of each value of an axis."""
        return [canonical_json(v) for v in self.values[axis]]


@dataclass(frozen=True)
class Grid:
    """A validated grid: its source (kept byte-exact for provenance) and its cells."""

    path: Path
    raw: dict[str, Any]
    source: bytes
    sweep: str
    examples: int
    batch_size: int
    shard_size: int
    seeds: list[int]
    eval_runs: int
    data_seed: int
    profile: str | None
    assets: str | None  # the asset directory `asset:<name>` values resolve against
    table: CellTable = field(repr=False, compare=False)
    # The validated `report:` section as plain JSON-able data ({} when the grid has none):
    # {"tables": [{"title", "where", "rows", "cols", "value"}, ...], "reference": "<abs path>"}.
    report: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def cells(self) -> list[dict[str, Any]]:
        """Every cell, resolved, in grid order (made on first use; read-only, see CellTable)."""
        return self.table.cells()

    @cached_property
    def representative_cells(self) -> list[dict[str, Any]]:
        """The cells CellTable.first_rows names: what the asset, parameter-column and report
        checks need, a few cells where `cells` may be a million."""
        return self.table.cells(self.table.first_rows())


# ---------------------------------------------------------------- loading

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader (safe_load semantics) that rejects duplicate keys (PyYAML keeps the last one
    silently), keys that are not strings, nesting deeper than MAX_DEPTH (PyYAML's composer
    recurses) and integers outside int64. Aliases are allowed; their expansion is counted after
    loading (`_check_size`)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for knode, vnode in node.value:
        if not isinstance(knode, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None, None, "a key that is a mapping or a list; keys must be names", knode.start_mark)
        key = loader.construct_object(knode, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"key {shown(key)} is a {type(key).__name__}; keys must be names "
                            "(quote it to make it a string)", knode.start_mark)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {shown(key)}", knode.start_mark)
        out[key] = loader.construct_object(vnode, deep=True)
    return out


def _construct_int(loader: _StrictLoader, node: yaml.ScalarNode) -> int:
    text = str(node.value)
    if len(text.replace("_", "")) > 40:  # int() of thousands of digits is refused or slow
        raise yaml.constructor.ConstructorError(
            None, None, f"an integer of {len(text)} characters; expected at most 64 bits", node.start_mark)
    value = loader.construct_yaml_int(node)
    if not -(2 ** 63) <= value <= INT64_MAX:
        raise yaml.constructor.ConstructorError(
            None, None, f"integer {shown(value)} is outside 64 bits", node.start_mark)
    return value


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
# YAML 1.1 reads "8e-3" as a string; budgets are often written that way, so read it as a float.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def parse_yaml(source: bytes | str, file: str) -> dict[str, Any]:
    """The top-level mapping of a grid file, or a GridError at <root> (or at the key path of
    a value too large to represent)."""
    if isinstance(source, bytes):
        if len(source) > MAX_GRID_BYTES:
            raise GridError(file, ROOT, f"{len(source)} bytes; a grid file holds at most "
                                        f"{MAX_GRID_BYTES} bytes of YAML")
        try:
            source = source.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise GridError(file, ROOT, f"not UTF-8 text (byte {exc.start}: "
                                        f"{source[exc.start:exc.start + 1]!r}); expected a UTF-8 "
                                        "YAML mapping") from None
    if not source.strip():
        raise GridError(file, ROOT, f"empty file; expected a mapping with keys: {', '.join(TOP_KEYS)}")
    try:
        raw = yaml.load(source, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise GridError(file, ROOT, f"not valid YAML ({shown(_one_line(exc), 300)}); expected a "
                                    f"mapping with keys: {', '.join(TOP_KEYS)}") from None
    except (RecursionError, ValueError, TypeError, OverflowError, MemoryError) as exc:
        # whatever PyYAML's constructors let through (e.g. a sexagesimal or a date out of range)
        raise GridError(file, ROOT, f"not a grid ({type(exc).__name__}: {shown(str(exc), 200)}); "
                                    f"expected a mapping with keys: {', '.join(TOP_KEYS)}") from None
    if not isinstance(raw, dict):
        raise GridError(file, ROOT, f"top level is {type(raw).__name__}, not a mapping; "
                                    f"expected keys: {', '.join(TOP_KEYS)}")
    _check_size(raw, file)
    return raw


def _check_size(raw: Any, file: str) -> None:
    """Refuse a document that expands (through aliases) beyond MAX_NODES values or MAX_DEPTH
    levels: walked with a budget, so an alias bomb or a recursive alias costs MAX_NODES steps."""
    count = 0
    # (value, depth, (parent entry, key or index)): the key path is written only for an error
    stack: list[tuple[Any, int, Any]] = [(raw, 0, None)]
    while stack:
        value, depth, where = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise GridError(file, _path(where), f"the grid expands to more than {MAX_NODES} values "
                                                "(YAML aliases are expanded); write a smaller grid")
        if depth > MAX_DEPTH:
            raise GridError(file, _path(where), f"nested deeper than {MAX_DEPTH} levels (a recursive "
                                                "YAML alias?)")
        if isinstance(value, dict):
            stack.extend((v, depth + 1, (where, k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, depth + 1, (where, i)) for i, v in enumerate(value))


def _path(where: Any) -> str:
    parts = []
    while where is not None:
        where, k = where
        parts.append(f"[{k}]" if isinstance(k, int) else f".{shown_key(k)}")
    text = "".join(reversed(parts)).lstrip(".") or ROOT
    return text if len(text) <= 200 else text[:195] + "[...]"


def load_grid(path: str | Path) -> Grid:
    """Read, validate and expand a grid file; raises GridError on any problem."""
    path = Path(path)
    file = str(path)
    try:
        if path.is_dir():
            raise GridError(file, ROOT, "is a directory; expected a grid YAML file")
        size = path.stat().st_size
        if size > MAX_GRID_BYTES:
            raise GridError(file, ROOT, f"{size} bytes; a grid file holds at most "
                                        f"{MAX_GRID_BYTES} bytes of YAML")
        source = path.read_bytes()
    except OSError as exc:
        raise GridError(file, ROOT, f"cannot read grid file: {exc.strerror}") from None
    raw = parse_yaml(source, file)
    table, report = _expand(raw, file)
    s = table.settings
    shards = -(-s["examples"] // s["shard_size"])
    if len(table) * shards > MAX_ROWS:
        raise GridError(file, "shard_size", f"{len(table)} cells x {shards} shards of {s['shard_size']} "
                                            f"examples is more than {MAX_ROWS} plan rows; raise "
                                            "shard_size or narrow the grid")
    return Grid(path=path, raw=raw, source=source, sweep=s["sweep"], examples=s["examples"],
                batch_size=s["batch_size"], shard_size=s["shard_size"], seeds=s["seeds"],
                eval_runs=s["eval_runs"], data_seed=s["data_seed"], profile=s["profile"],
                assets=s["assets"], table=table, report=report)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


# ---------------------------------------------------------------- top-level settings

def _settings(raw: dict[str, Any], file: str) -> dict[str, Any]:
    """Validated scalar settings with defaults filled."""
    for key in raw:
        if key not in TOP_KEYS:
            raise GridError(file, shown_key(key), f"unknown key; allowed: {', '.join(TOP_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise GridError(file, key, f"required key missing; required: {', '.join(REQUIRED_KEYS)}")
    s = {**DEFAULTS, **raw}
    sweep = s["sweep"]
    if not is_sweep_name(sweep):
        raise GridError(file, "sweep", f"{shown(sweep)} is not allowed; expected {SWEEP_RULE}")
    out = {"sweep": sweep, "profile": s.get("profile"), "assets": s.get("assets")}
    for key in ("examples", "batch_size", "shard_size", "eval_runs", "data_seed"):
        out[key] = _int(s[key], file, key, *LIMITS[key])
    out["seeds"] = _seeds(s["seeds"], file)
    if s["precision"] not in PRECISIONS:
        raise GridError(file, "precision", f"{shown(s['precision'])} is not allowed; expected one of "
                                           f"{', '.join(PRECISIONS)} (auto: bf16 on CUDA, fp32 on CPU)")
    out["precision"] = s["precision"]
    for key in ("profile", "assets"):
        if out[key] is not None and not (isinstance(out[key], str) and out[key]
                                         and len(out[key]) <= 4096 and "\0" not in out[key]):
            raise GridError(file, key, f"{shown(out[key])} is not allowed; expected a string")
    return out


def _int(value: Any, file: str, key: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value > high):
        what = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        raise GridError(file, key, f"{shown(value)} is not allowed; expected {what}")
    return value


def _seeds(value: Any, file: str) -> list[int]:
    low, high = LIMITS["seeds"]
    if not isinstance(value, list):
        return [_int(value, file, "seeds", low, high)]
    if not value:
        raise GridError(file, "seeds", f"empty list; expected an integer >= {low} or a list of them")
    return [_int(v, file, f"seeds[{i}]", low, high) for i, v in enumerate(value)]


# ---------------------------------------------------------------- plugin entries

def _entries(raw: dict[str, Any], kind: str, file: str) -> list[tuple[str, Any]]:
    """(key path, entry) for each alternative of one plugin kind."""
    value = raw[kind]
    if not isinstance(value, list):
        return [(kind, value)]
    if not value:
        raise GridError(file, kind, f"empty list; expected a {kind} name or {{name, params}}; "
                                    f"allowed names: {', '.join(registry.names(kind))}")
    return [(f"{kind}[{i}]", v) for i, v in enumerate(value)]


def _expand_entry(kind: str, entry: Any, file: str, key: str) -> list[dict[str, Any]]:
    """All resolved {name, params} variants of one entry (its params axes crossed/zipped)."""
    if isinstance(entry, str):
        spec = registry.get(kind, entry, file, key)
        return [{"name": spec.name, "params": spec.resolve({}, file, f"{key}.params")}]
    if not isinstance(entry, dict):
        raise GridError(file, key, f"{shown(entry)} is not allowed; expected a {kind} name or a "
                                   f"mapping with keys: {', '.join(ENTRY_KEYS)}")
    for k in entry:
        if k not in ENTRY_KEYS:
            raise GridError(file, f"{key}.{shown_key(k)}", f"unknown key; allowed: {', '.join(ENTRY_KEYS)}")
    if "name" not in entry:
        raise GridError(file, f"{key}.name", f"required; allowed: {', '.join(registry.names(kind))}")
    spec = registry.get(kind, entry["name"], file, f"{key}.name")
    params = entry.get("params", {})
    if not isinstance(params, dict):
        raise GridError(file, f"{key}.params", f"{shown(params)} is not allowed; expected a mapping "
                                               f"of {_allowed_params(spec)}")
    _check_known(spec, params, file, f"{key}.params")
    axes = {p: _param_axis(spec.params[p], v, file, f"{key}.params.{p}") for p, v in params.items()}
    groups = _zip_groups(entry.get("zip", []), list(axes), file, f"{key}.zip")
    variants = []
    for combo in _combine(axes, groups, file, f"{key}.zip"):
        resolved = spec.resolve(combo, file, f"{key}.params")
        try:  # the cell must hash: JSON has no inf
            canonical_json(resolved)
        except ValueError:
            raise GridError(file, f"{key}.params", f"{shown(combo)}: infinite numbers are not "
                                                   f"allowed; expected {_allowed_params(spec)} "
                                                   "with finite values") from None
        variants.append({"name": spec.name, "params": resolved})
    return variants


def _allowed_params(spec: PluginSpec) -> str:
    return ", ".join(sorted(spec.params)) or "(none)"


def _check_known(spec: PluginSpec, params: dict[str, Any], file: str, key: str) -> None:
    # Before axis detection, so a misspelt name is reported as such, not as a bad axis.
    for p in params:
        if p not in spec.params:
            raise GridError(file, f"{key}.{shown_key(p)}", f"unknown parameter of {spec.kind} "
                                                f"{spec.name!r}; allowed: {_allowed_params(spec)}")


def _param_axis(param: Param, value: Any, file: str, key: str) -> list[Any]:
    """The alternatives a parameter value stands for: a list is an axis, except that a
    list-typed parameter takes a flat list as its value and only a list of lists is an axis."""
    if not isinstance(value, list):
        return [value]
    if not value:
        raise GridError(file, key, f"empty list; an axis needs at least one value, "
                                   f"each {param.allowed()}")
    if param.is_list and not all(isinstance(v, list) for v in value):
        return [value]
    return list(value)


def _zip_groups(zips: Any, axes: list[str], file: str, key: str) -> list[list[str]]:
    """Validated zip groups: lists of axis names, each name in at most one group."""
    if not isinstance(zips, list) or not all(isinstance(g, list) and g for g in zips):
        raise GridError(file, key, f"{shown(zips)} is not allowed; expected a list of lists of "
                                   f"names from: {', '.join(axes) or '(none)'}")
    seen: set[str] = set()
    for i, group in enumerate(zips):
        for name in group:
            if not isinstance(name, str) or name not in axes:
                raise GridError(file, f"{key}[{i}]", f"{shown(name)} is not a zippable axis here; "
                                                     f"allowed: {', '.join(axes) or '(none)'}")
            if name in seen:
                raise GridError(file, f"{key}[{i}]", f"{shown(name)} appears in more than one zip group")
            seen.add(name)
    return zips


def _factors(axes: dict[str, list[Any]], groups: list[list[str]], file: str, key: str,
             limit: int, what: str) -> list[list[str]]:
    """The factors of the axes' cartesian product in written order (a zip group, equal lengths
    checked, sits where its first member is; every other axis alone), at most `limit` combinations."""
    factors: list[list[str]] = []
    placed: set[str] = set()
    for name in axes:
        if name in placed:
            continue
        group = next((g for g in groups if name in g), [name])
        lengths = [len(axes[n]) for n in group]
        if len(set(lengths)) > 1:
            i = groups.index(group)
            detail = ", ".join(f"{n} {ln}" for n, ln in zip(group, lengths))
            raise GridError(file, f"{key}[{i}]", f"zip group [{', '.join(group)}] has unequal "
                                                 f"lengths ({detail}); zipped lists must have "
                                                 "equal length")
        factors.append(group)
        placed.update(group)
    total = math.prod(len(axes[f[0]]) for f in factors)
    if total > limit:
        raise GridError(file, key.rsplit(".", 1)[0] if "." in key else ROOT,
                        f"the axes cross to {total} combinations; at most {limit} {what} are "
                        "allowed (zip axes or split the sweep)")
    return factors


def _combine(axes: dict[str, list[Any]], groups: list[list[str]], file: str,
             key: str) -> list[dict[str, Any]]:
    """Cartesian product of one entry's parameter axes, with each zip group varying together."""
    factors = _factors(axes, groups, file, key, MAX_VARIANTS, "variants of one entry")
    return [{n: axes[n][j] for f, j in zip(factors, combo) for n in f}
            for combo in itertools.product(*(range(len(axes[f[0]])) for f in factors))]


def _product_index(axes: dict[str, list[Any]], groups: list[list[str]], file: str) -> dict[str, np.ndarray]:
    """The grid's cartesian product as each axis's value index per combination, in the order
    itertools.product gives (the last factor varies fastest), without a dict per combination."""
    factors = _factors(axes, groups, file, "zip", MAX_CELLS, "cells in one grid")
    digits = np.unravel_index(np.arange(math.prod(len(axes[f[0]]) for f in factors), dtype=np.int64),
                              [len(axes[f[0]]) for f in factors])
    return {n: d.astype(np.int64) for f, d in zip(factors, digits) for n in f}


# ---------------------------------------------------------------- cells

def expand(raw: dict[str, Any], file: str) -> list[dict[str, Any]]:
    """Validate a parsed grid and return its resolved cells (exclusions applied)."""
    return _expand(raw, file)[0].cells()


def _expand(raw: dict[str, Any], file: str) -> tuple[CellTable, dict[str, Any]]:
    """The resolved cells and the validated `report:` section (checked against the cells'
    parameter columns, so it needs them first)."""
    if not isinstance(raw, dict):
        raise GridError(file, ROOT, f"top level is {type(raw).__name__}, not a mapping; "
                                    f"expected keys: {', '.join(TOP_KEYS)}")
    s = _settings(raw, file)
    axes: dict[str, list[Any]] = {}
    for kind in KINDS:
        axes[kind] = [v for key, e in _entries(raw, kind, file)
                      for v in _expand_entry(kind, e, file, key)]
    axes["seeds"] = s["seeds"]
    # A top-level zip pairs the expanded variants of each axis (an entry with a params axis
    # contributes one variant per value), so lengths are counted after entry expansion.
    groups = _zip_groups(raw.get("zip", []), list(ZIP_AXES), file, "zip")
    index = _product_index(axes, groups, file)
    keep = _kept(axes, index, raw.get("exclude", []), s, file)
    table = CellTable(axes, _dedupe(axes, {a: ix[keep] for a, ix in index.items()}), s)
    cells = table.cells(table.first_rows())  # what the checks below need (CellTable.first_rows)
    catalog.check_cells(cells, file)
    _check_examples(cells, s["examples"], file)
    report = check_report(raw["report"], cells, file) if "report" in raw else {}
    return table, report


def _check_examples(cells: list[dict[str, Any]], examples: int, file: str) -> None:
    """`examples` fits in the test split of every data set the grid names (its `size` hook)."""
    for cell in cells:
        ds = cell["dataset"]
        size = registry.get("dataset", ds["name"]).size(ds["params"])
        if size is not None and examples > size:
            raise GridError(file, "examples", f"{examples} is more than dataset {ds['name']!r} holds: "
                                              f"its test split has {size} examples; expected an "
                                              f"integer in [1, {size}]")


#: The keys of a cell that come from an axis of the product (CellTable); the others are settings.
_CELL_AXES = {**{kind: kind for kind in KINDS}, "seed": "seeds"}


def _cell(combo: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    # The variant dicts are shared by every cell that has them (no copy per cell): read-only.
    cell = {kind: combo[kind] for kind in KINDS}
    cell.update(seed=combo["seeds"], eval_runs=s["eval_runs"], data_seed=s["data_seed"],
                precision=s["precision"])
    return cell


def _dedupe(axes: dict[str, list[Any]], index: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The index without repeated cells, the first of each kept. Two spellings of the same cell
    must not become two rows writing the same results; cells are equal exactly when every
    axis's value has the same canonical JSON, so that is compared, not a hash per cell."""
    canon: dict[str, np.ndarray] = {}
    for a, values in axes.items():
        first: dict[str, int] = {}
        canon[a] = np.array([first.setdefault(canonical_json(v), i) for i, v in enumerate(values)],
                            dtype=np.int64)
    if all((c == np.arange(len(c))).all() for c in canon.values()):
        return index  # every value distinct on every axis: so is every combination
    keys = np.stack([canon[a][ix] for a, ix in index.items()], axis=1)
    rows = np.sort(np.unique(keys, axis=0, return_index=True)[1])
    return {a: ix[rows] for a, ix in index.items()}


def _flat(key: str, value: Any) -> dict[str, Any]:
    """One entry of a cell as dotted paths → values."""
    if key in KINDS:
        return {f"{key}.name": value["name"], **{f"{key}.params.{p}": v for p, v in value["params"].items()}}
    return {key: value}


def flatten(cell: dict[str, Any]) -> dict[str, Any]:
    """A cell as dotted paths → values, e.g. {"purifier.params.loops": 3, "seed": 0}."""
    return {path: v for key, value in cell.items() for path, v in _flat(key, value).items()}


def _kept(axes: dict[str, list[Any]], index: dict[str, np.ndarray], rules: Any, s: dict[str, Any],
          file: str) -> np.ndarray:
    """Which combinations no exclude rule matches. A rule matches a cell when each of its paths
    has one of the rule's values there; a path belongs to one axis (or to the settings), so it
    is decided once per value of that axis, not once per cell."""
    if not isinstance(rules, list):
        raise GridError(file, "exclude", f"{shown(rules)} is not allowed; expected a list of mappings "
                                         "from dotted paths to values")
    key_of = {a: k for k, a in _CELL_AXES.items()}
    flats = {a: [_flat(key_of[a], v) for v in values] for a, values in axes.items()}
    sample = _cell({a: values[0] for a, values in axes.items()}, s)
    fixed = flatten({k: v for k, v in sample.items() if k not in _CELL_AXES})  # the same in every cell
    axis_of = {path: a for a, fs in flats.items() for f in fs for path in f}
    known = sorted({*axis_of, *fixed})
    checked = [_check_rule(rule, i, known, axes, file) for i, rule in enumerate(rules)]
    total = len(index["seeds"])
    excluded = np.zeros(total, dtype=bool)
    for rule in checked:
        # Compare as JSON so that a step 1 never matches a fraction 1.0, nor true the integer 1.
        match = np.ones(total, dtype=bool)
        for path, values in rule.items():
            if path in axis_of:
                a = axis_of[path]
                ok = np.array([path in f and canonical_json(f[path]) in values for f in flats[a]])
                match &= ok[index[a]]
            elif canonical_json(fixed[path]) not in values:
                match[:] = False
        excluded |= match
    if excluded.all():
        raise GridError(file, "exclude", f"every cell is excluded ({total} before "
                                         "exclusion); remove or narrow a rule")
    return ~excluded


def _check_rule(rule: Any, i: int, known: list[str], axes: dict[str, list[Any]],
                file: str) -> dict[str, set[str]]:
    """An exclude rule with its paths checked against the grid: path → the canonical JSON of
    the values it matches (a list of values matches any of them)."""
    key = f"exclude[{i}]"
    if not isinstance(rule, dict) or not rule:
        raise GridError(file, key, f"{shown(rule)} is not allowed; expected a mapping from dotted "
                                   f"paths to values; paths: {', '.join(known)}")
    out = {}
    for path, value in rule.items():
        if path not in known:
            raise GridError(file, f"{key}.{shown_key(path)}", f"no cell has this path; allowed: "
                                                   f"{', '.join(known)}")
        alternatives = value if isinstance(value, list) and not _takes_list(path, axes) else [value]
        if isinstance(value, list) and _takes_list(path, axes) and value and all(
                isinstance(v, list) for v in value):
            alternatives = value  # a list-typed parameter: a list of lists is "any of"
        if not alternatives:
            raise GridError(file, f"{key}.{path}", "empty list; expected a value or a list of values")
        out[path] = {canonical_json(_exclude_value(path, v, axes, file, f"{key}.{path}"))
                     for v in alternatives}
    return out


def _takes_list(path: str, axes: dict[str, list[Any]]) -> bool:
    """True when the path names a list-typed plugin parameter (e.g. multistep's schedule)."""
    parts = path.split(".")
    if parts[0] not in KINDS or len(parts) < 3:
        return False
    return any(registry.get(parts[0], v["name"]).params.get(parts[2], Param("int")).is_list
               for v in axes[parts[0]])


def _exclude_value(path: str, value: Any, axes: dict[str, list[Any]], file: str,
                   key: str) -> Any:
    # A value that can never match is a typo: check it like the parameter it names.
    parts = path.split(".")
    if parts[0] not in KINDS:
        return _int(value, file, key, *LIMITS["seeds" if parts[0] == "seed" else parts[0]])
    kind = parts[0]
    if parts[1] == "name":
        return registry.get(kind, value, file, key).name
    specs = [registry.get(kind, v["name"]) for v in axes[kind]]
    params = [s.params[parts[2]] for s in specs if parts[2] in s.params]
    errors = []
    for param in params:
        try:
            return param.check(value, file, key)
        except GridError as exc:
            errors.append(exc)
    raise errors[0]


def canonical_json(obj: Any) -> str:
    """The JSON text that hashes and the plan use: sorted keys, no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def cell_hash(cell: dict[str, Any]) -> str:
    """16 hex chars of sha256 over the salted canonical JSON of the resolved cell."""
    return json_hash(canonical_json(cell))


def json_hash(text: str) -> str:
    """cell_hash of the cell whose canonical_json is `text`."""
    return salted_hashes([(HASH_SALT + text).encode()])[0]


_HEXDIGEST = type(hashlib.sha256()).hexdigest


def salted_hashes(salted: Iterable[bytes]) -> list[str]:
    """json_hash of many cells, each given as HASH_SALT + its canonical JSON in UTF-8: the loop
    runs in C (map), which matters at a million cells."""
    return [h[:16] for h in map(_HEXDIGEST, map(hashlib.sha256, salted))]


def _fmt(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def cell_label(cell: dict[str, Any], kind: str = "purifier") -> str:
    """A short label of one plugin of the cell, e.g. "lorid(steps=5,tucker=pre)":
    the plugin's `label` parameters and those that differ from its declared defaults."""
    entry = cell[kind]
    spec = registry.get(kind, entry["name"])
    diff = [f"{p}={_fmt(v)}" for p, v in entry["params"].items()
            if p in spec.label or spec.params[p].default is registry.REQUIRED or v != spec.params[p].default]
    return f"{entry['name']}({','.join(diff)})" if diff else entry["name"]


# ---------------------------------------------------------------- report section
# `report:` names the paper-style tables `harness report` prints first, and a file of published
# numbers to compare against (analysis.pivot, analysis.reference). It is checked here, at plan
# time, like every other key: a typo in a table must not wait for the results to surface.
# Keys are checked against the names the plan knows (the summary's identity columns and the
# sweep's `<kind>.<param>` parameter columns); values cannot be checked against results that
# do not exist yet, so a filter matching nothing shows as an empty table in the report.

#: Summary columns naming what a result is (analysis.aggregate.GROUP_KEYS, then the plugin
#: names); with the sweep's parameter columns, the keys a report table may use.
REPORT_KEYS: tuple[str, ...] = ("dataset", "threat", "eps", "attack_label", "classifier", "label",
                                "purifier", "attack")
#: What a report table may show in its cells.
REPORT_VALUES: tuple[str, ...] = ("robust_mean", "clean", "robust_vote", "robust_worst", "nfe",
                                  "s_per_row", "j_per_row")
REPORT_SECTION_KEYS = ("tables", "reference")
REPORT_TABLE_KEYS = ("title", "where", "rows", "cols", "value")
MAX_REPORT_TABLES = 50
MAX_TITLE = 200
MAX_TABLE_AXES = 8  # keys in one table's rows or cols
MAX_WHERE_KEYS = 32
MAX_WHERE_VALUES = 100
MAX_WHERE_TEXT = 200
#: Comparison prefixes a `where` string value (and a --where expression) may carry.
COMPARISONS = ("<=", ">=", "<", ">")
NEGATION = "!="
_FRACTION = re.compile(r"\s*([-+]?\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*")
_NUMBER = re.compile(r"\s*[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][-+]?\d+)?\s*")


def parse_number(value: Any) -> float | None:
    """The number a filter value stands for, or None when it is not one: a YAML number, a
    decimal or exponent string, or a fraction ``a/b`` (budgets are written ``8/255``).
    Booleans and non-finite values are not numbers here."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and len(value) <= 100:
        m = _FRACTION.fullmatch(value)
        if m:
            den = float(m.group(2))
            number = float(m.group(1)) / den if den else math.nan
        elif _NUMBER.fullmatch(value):
            number = float(value)
        else:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def split_comparison(text: str) -> tuple[str, str]:
    """("<=", "0.1") for "<=0.1", ("!=", "none") for "!=none", ("=", text) otherwise."""
    for op in (*COMPARISONS, NEGATION):
        if text.startswith(op):
            return op, text[len(op):].strip()
    return "=", text


def report_names(cells: list[dict[str, Any]]) -> list[str]:
    """The keys a report table of these cells may name: REPORT_KEYS, then the parameter
    columns the sweep's results will carry: ``<kind>.<param>`` over every cell, in kind then
    name order, as harness.results.param_fields names them (which imports this module, so the
    names are taken here; tests/test_grid_report.py holds the two equal)."""
    order = {k: i for i, k in enumerate(KINDS)}
    params = {f"{kind}.{p}" for cell in cells for kind in KINDS for p in cell[kind]["params"]}
    return [*REPORT_KEYS, *sorted(params, key=lambda n: (order[n.split(".", 1)[0]], n))]


def resolve_report_key(name: Any, names: list[str]) -> str:
    """`name` as a column of `names`: itself, or the one `<kind>.<name>` parameter column it
    abbreviates (``t_s`` → ``purifier.t_s``). Raises ValueError with the reason otherwise."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{shown(name)} is not a key; allowed: {listing(names)}")
    if name in names:
        return name
    matches = [n for n in names if "." in n and n.split(".", 1)[1] == name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"{shown(name)} is ambiguous: {', '.join(matches)}; write the full name")
    raise ValueError(f"{shown(name)} is not a key of these results; allowed: {listing(names)}")


def listing(names: list[str] | tuple[str, ...], limit: int = 800) -> str:
    """Names for a message, comma-joined and cut to about `limit` characters."""
    out, size = [], 0
    for i, n in enumerate(names):
        n = shown_key(n, 60)
        if size + len(n) + 2 > limit:
            return ", ".join(out) + f" (and {len(names) - i} more)"
        out.append(n)
        size += len(n) + 2
    return ", ".join(out) or "(none)"


def check_report(section: Any, cells: list[dict[str, Any]], file: str) -> dict[str, Any]:
    """The grid's `report:` section, validated and normalised to plain JSON-able data:
    {"tables": [{"title", "where", "rows", "cols", "value"}, ...], "reference": path}.
    Keys are resolved to full column names; `reference` to an absolute path that exists."""
    if not isinstance(section, dict):
        raise GridError(file, "report", f"{shown(section)} is not allowed; expected a mapping with "
                                        f"keys: {', '.join(REPORT_SECTION_KEYS)}")
    for k in section:
        if k not in REPORT_SECTION_KEYS:
            raise GridError(file, f"report.{shown_key(k)}", f"unknown key; allowed: "
                                                           f"{', '.join(REPORT_SECTION_KEYS)}")
    tables = section.get("tables", [])
    table_shape = f"a mapping with keys: {', '.join(REPORT_TABLE_KEYS)} (title and rows required)"
    if not isinstance(tables, list):
        raise GridError(file, "report.tables", f"{shown(tables)} is not allowed; expected a list "
                                               f"of tables, each {table_shape}")
    if len(tables) > MAX_REPORT_TABLES:
        raise GridError(file, "report.tables", f"{len(tables)} tables; at most {MAX_REPORT_TABLES} "
                                               "are allowed")
    names = report_names(cells) if tables else []
    out: dict[str, Any] = {"tables": [_report_table(t, names, file, f"report.tables[{i}]", table_shape)
                                      for i, t in enumerate(tables)]}
    if "reference" in section:
        out["reference"] = _report_reference(section["reference"], file)
    return out


def _report_table(table: Any, names: list[str], file: str, key: str, shape: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise GridError(file, key, f"{shown(table)} is not allowed; expected {shape}")
    for k in table:
        if k not in REPORT_TABLE_KEYS:
            raise GridError(file, f"{key}.{shown_key(k)}", f"unknown key; allowed: "
                                                         f"{', '.join(REPORT_TABLE_KEYS)}")
    for k in ("title", "rows"):
        if k not in table:
            raise GridError(file, f"{key}.{k}", f"required; expected {shape}")
    title = table["title"]
    if not (isinstance(title, str) and title.strip() and len(title) <= MAX_TITLE
            and not any(ord(c) < 32 for c in title)):
        raise GridError(file, f"{key}.title", f"{shown(title)} is not allowed; expected a one-line "
                                              f"string of 1 to {MAX_TITLE} characters")
    rows = _report_axis(table["rows"], names, file, f"{key}.rows", empty_ok=False)
    cols = _report_axis(table.get("cols", []), names, file, f"{key}.cols", empty_ok=True)
    both = [c for c in cols if c in rows]
    if both:
        raise GridError(file, f"{key}.cols", f"{', '.join(both)} is in rows too; a key goes in "
                                             "rows or cols, not both")
    value = table.get("value", REPORT_VALUES[0])
    if not isinstance(value, str) or value not in REPORT_VALUES:
        raise GridError(file, f"{key}.value", f"{shown(value)} is not allowed; allowed: "
                                              f"{', '.join(REPORT_VALUES)}")
    where = _report_where(table.get("where", {}), names, file, f"{key}.where")
    return {"title": title, "where": where, "rows": rows, "cols": cols, "value": value}


def _report_key(name: Any, names: list[str], file: str, key: str) -> str:
    try:
        return resolve_report_key(name, names)
    except ValueError as exc:
        raise GridError(file, key, str(exc)) from None


def _report_axis(value: Any, names: list[str], file: str, key: str, empty_ok: bool) -> list[str]:
    """rows or cols: a key or a list of keys, each a column the results will have."""
    items = [value] if isinstance(value, str) else value
    what = (f"a key or a list of at most {MAX_TABLE_AXES} keys"
            + ("" if empty_ok else " (at least one)") + f"; keys: {listing(names)}")
    if not isinstance(items, list) or len(items) > MAX_TABLE_AXES or (not items and not empty_ok):
        raise GridError(file, key, f"{shown(value)} is not allowed; expected {what}")
    out: list[str] = []
    for i, name in enumerate(items):
        resolved = _report_key(name, names, file, f"{key}[{i}]")
        if resolved in out:
            raise GridError(file, f"{key}[{i}]", f"{resolved} appears twice")
        out.append(resolved)
    return out


def _report_where(where: Any, names: list[str], file: str, key: str) -> dict[str, Any]:
    """A filter: key → value or list of values (any of); a string value may start with a
    comparison (<=, >=, <, > and a number) or != (not this value)."""
    shape = ("a mapping from keys to a value or a list of values (any of); a value may be "
             "written '<=0.1', '>=2', '!=none'; numbers may be fractions such as 8/255")
    if not isinstance(where, dict) or len(where) > MAX_WHERE_KEYS:
        raise GridError(file, key, f"{shown(where)} is not allowed; expected {shape} "
                                   f"(at most {MAX_WHERE_KEYS} keys)")
    out: dict[str, Any] = {}
    for name, value in where.items():
        at = f"{key}.{shown_key(name)}"
        resolved = _report_key(name, names, file, at)
        if resolved in out:
            raise GridError(file, at, f"names column {resolved} a second time")
        if isinstance(value, list):
            if not value or len(value) > MAX_WHERE_VALUES:
                raise GridError(file, at, f"{shown(value)} is not allowed; expected a value or a "
                                          f"list of 1 to {MAX_WHERE_VALUES} values")
            for i, v in enumerate(value):
                if _where_scalar(v, file, f"{at}[{i}]") != "=":
                    raise GridError(file, f"{at}[{i}]", f"{shown(v)}: a comparison cannot be one "
                                                        "of a list of values; write it alone")
        else:
            _where_scalar(value, file, at)
        out[resolved] = value
    return out


def _where_scalar(value: Any, file: str, key: str) -> str:
    """Check one `where` value; return its operator ("=", "!=", "<=", ...)."""
    if isinstance(value, (bool, int)):
        return "="
    if isinstance(value, float):
        if not math.isfinite(value):
            raise GridError(file, key, f"{shown(value)} is not allowed; expected a finite number")
        return "="
    if not (isinstance(value, str) and value.strip() and len(value) <= MAX_WHERE_TEXT
            and not any(ord(c) < 32 for c in value)):
        raise GridError(file, key, f"{shown(value)} is not allowed; expected a number, true/false, "
                                   f"or a one-line string of 1 to {MAX_WHERE_TEXT} characters")
    op, rest = split_comparison(value)
    if op in COMPARISONS and parse_number(rest) is None:
        raise GridError(file, key, f"{shown(value)}: {op} needs a number (e.g. {op}0.1 or {op}8/255)")
    if op == NEGATION and not rest:
        raise GridError(file, key, f"{shown(value)}: != needs a value")
    return op


def _report_reference(value: Any, file: str) -> str:
    """The published-numbers file: a path relative to the working directory or, failing that,
    to the grid file; returned absolute, as it must be found again at report time."""
    if not (isinstance(value, str) and value and len(value) <= 4096 and "\0" not in value):
        raise GridError(file, "report.reference", f"{shown(value)} is not allowed; expected the "
                                                  "path of a references YAML file")
    p = Path(value).expanduser()
    candidates = [p] + ([Path(file).parent / p] if not p.is_absolute() else [])
    for c in candidates:
        try:
            if c.is_file():
                return str(c.resolve())
        except OSError:
            continue
    raise GridError(file, "report.reference", f"{shown(value)}: no such file (looked at "
                                              f"{', '.join(shown(str(c), 200) for c in candidates)}); "
                                              "expected a path relative to the working directory "
                                              "or to the grid file")
