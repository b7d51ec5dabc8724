"""The grid's `report:` section: accepted and refused at plan time through the real CLI,
exposed as plain data on Grid.report, and every shipped grid still planning as before with
headline tables that build (unambiguously) from a summary of its own cells."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from conftest import harness
from harness import registry
from harness.errors import GridError
from harness.grid import (REPORT_KEYS, REPORT_VALUES, cell_label, expand, load_grid, report_names)
from harness.results import param_fields, param_values

ROOT = Path(__file__).resolve().parents[1]
GRIDS = sorted((ROOT / "grids").glob("*.yaml"))
SMOKE: dict[str, Any] = yaml.safe_load((ROOT / "grids" / "smoke.yaml").read_text())
# The cells each grid planned before `report:` existed: a report section changes no cell.
CELLS = {"smoke": 21, "cifar10": 339, "cifar100": 246, "celebahq": 402, "imagenet": 183}


def smoke_with(report: Any) -> dict[str, Any]:
    raw = copy.deepcopy(SMOKE)
    raw["report"] = report
    return raw


def table(**over: Any) -> dict[str, Any]:
    return {"title": "T", "rows": ["label"], **over}


# ---------------------------------------------------------------- shipped grids

def test_every_grid_plans_through_the_cli(tmp_path: Path) -> None:
    assert {g.stem for g in GRIDS} == set(CELLS)
    for path in GRIDS:
        r = harness("plan", "--grid", str(path), "--jobs", str(tmp_path / "jobs"), cwd=tmp_path, timeout=120)
        assert r.returncode == 0, (path.name, r.stderr[-2000:])
        assert "Traceback" not in r.stderr
        grid = load_grid(path)
        assert len(grid.cells) == CELLS[path.stem]
        plan = pd.read_parquet(tmp_path / "jobs" / grid.sweep / "plan.parquet")
        assert plan["cell"].nunique() == CELLS[path.stem]


@pytest.mark.parametrize("path", GRIDS, ids=[g.stem for g in GRIDS])
def test_grid_report_is_plain_data(path: Path) -> None:
    grid = load_grid(path)
    report = grid.report
    assert json.loads(json.dumps(report)) == report
    assert 1 <= len(report["tables"]) <= 50
    for t in report["tables"]:
        assert set(t) == {"title", "where", "rows", "cols", "value"}
        assert t["rows"] and t["value"] in REPORT_VALUES
        names = report_names(grid.cells)
        assert all(k in names for k in [*t["rows"], *t["cols"], *t["where"]])
    if path.stem == "smoke":
        assert "reference" not in report
    else:
        assert Path(report["reference"]).is_absolute()
        assert Path(report["reference"]) == (ROOT / "references" / "lorid-aaai2025.yaml").resolve()


def summary_of(cells: list[dict[str, Any]]) -> pd.DataFrame:
    """What analysis.aggregate.summarise would give for these cells (made-up numbers): one row
    per group, the plugin and parameter columns kept where constant over the group."""
    fields = param_fields(cells)
    recs = []
    for c in cells:
        threat, eps = registry.get("attack", c["attack"]["name"]).threat(c["attack"]["params"])
        recs.append({"dataset": c["dataset"]["name"], "threat": threat, "eps": eps,
                     "attack_label": cell_label(c, "attack"), "classifier": c["classifier"]["name"],
                     "label": cell_label(c), "purifier": c["purifier"]["name"],
                     "attack": c["attack"]["name"], **param_values(c, fields)})
    df = pd.DataFrame(recs)
    keys = list(REPORT_KEYS[:6])
    rows = []
    for key, g in df.groupby(keys, sort=False, dropna=False):
        r = dict(zip(keys, key))
        for col in ["purifier", "attack", *(f for f, _ in fields)]:
            r[col] = g[col].iloc[0] if len({repr(v) for v in g[col]}) == 1 else None
        r.update(clean=0.9, robust_mean=0.4, ci_lo=0.3, ci_hi=0.5, robust_vote=0.4,
                 robust_worst=0.3, complete=True, nfe=10.0, s_per_row=0.5, j_per_row=1.0, flags="")
        rows.append(r)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("path", GRIDS, ids=[g.stem for g in GRIDS])
def test_headline_tables_build_from_the_grids_cells(path: Path) -> None:
    from analysis.pivot import headline_tables

    grid = load_grid(path)
    out = headline_tables(summary_of(grid.cells), grid.report)
    assert [t for t, _ in out] == [t["title"] for t in grid.report["tables"]]
    for title, p in out:
        assert p.empty is None, f"{path.name}: {title}: {p.empty}"
        assert p.row_keys and p.col_keys and all(any(c for c in r) for r in p.cells)


def test_report_names_are_the_result_columns() -> None:
    from analysis.aggregate import GROUP_KEYS

    assert REPORT_KEYS[:6] == GROUP_KEYS and REPORT_KEYS[6:] == ("purifier", "attack")
    for path in GRIDS:
        cells = load_grid(path).cells
        assert report_names(cells) == [*REPORT_KEYS, *(n for n, _ in param_fields(cells))]


def test_no_report_section_is_empty(tmp_path: Path) -> None:
    raw = copy.deepcopy(SMOKE)
    del raw["report"]
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(raw))
    assert load_grid(p).report == {}


# ---------------------------------------------------------------- accepted

def test_accepted_report_is_normalised(tmp_path: Path) -> None:
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "r.yaml").write_text("source: s\nentries: [{dataset: digits}]\n")
    (tmp_path / "grids").mkdir()
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    raw = smoke_with({"reference": "refs/r.yaml", "tables": [
        table(title="short names", rows="t_s", cols=["loops"],
              where={"eps": "1/4", "tucker": ["none", "pre"], "attack.steps": ">=10"}),
        table(title="vote", value="robust_vote", where={"purifier": "!=none"}),
    ]})
    p = tmp_path / "grids" / "g.yaml"
    p.write_text(yaml.safe_dump(raw))
    r = harness("plan", "--grid", str(p), "--jobs", "jobs", cwd=cwd, timeout=60)
    assert r.returncode == 2 and "report.reference" in r.stderr and "no such file" in r.stderr
    assert not (cwd / "jobs").exists()
    raw["report"]["reference"] = "../refs/r.yaml"  # relative to the grid file, not to cwd
    p.write_text(yaml.safe_dump(raw))
    r = harness("plan", "--grid", str(p), "--jobs", "jobs", cwd=cwd, timeout=60)
    assert r.returncode == 0, r.stderr
    report = load_grid(p).report
    assert report["reference"] == str((tmp_path / "refs" / "r.yaml").resolve())
    first, second = report["tables"]
    assert first == {"title": "short names", "rows": ["purifier.t_s"], "cols": ["purifier.loops"],
                     "where": {"eps": "1/4", "purifier.tucker": ["none", "pre"], "attack.steps": ">=10"},
                     "value": "robust_mean"}
    assert second["value"] == "robust_vote" and second["cols"] == []


# ---------------------------------------------------------------- refused

REFUSED: list[tuple[str, Any, str, tuple[str, ...]]] = [
    ("not-mapping", "tables", "report", ("expected a mapping with keys: tables, reference",)),
    ("null", None, "report", ("expected a mapping",)),
    ("unknown-key", {"colour": 1}, "report.colour", ("unknown key; allowed: tables, reference",)),
    ("tables-mapping", {"tables": {"a": 1}}, "report.tables", ("expected a list of tables",)),
    ("too-many", {"tables": [table()] * 51}, "report.tables", ("51 tables; at most 50",)),
    ("table-scalar", {"tables": ["x"]}, "report.tables[0]", ("title, where, rows, cols, value",)),
    ("table-key", {"tables": [table(colour=1)]}, "report.tables[0].colour",
     ("unknown key; allowed: title, where, rows, cols, value",)),
    ("no-title", {"tables": [{"rows": ["label"]}]}, "report.tables[0].title", ("required",)),
    ("no-rows", {"tables": [{"title": "T"}]}, "report.tables[0].rows", ("required",)),
    ("long-title", {"tables": [table(title="x" * 201)]}, "report.tables[0].title",
     ("1 to 200 characters",)),
    ("title-newline", {"tables": [table(title="a\nb")]}, "report.tables[0].title", ("one-line",)),
    ("empty-rows", {"tables": [table(rows=[])]}, "report.tables[0].rows", ("(at least one)",)),
    ("rows-int", {"tables": [table(rows=3)]}, "report.tables[0].rows", ("a key or a list",)),
    ("rows-unknown", {"tables": [table(rows=["colour"])]}, "report.tables[0].rows[0]",
     ("'colour' is not a key", "allowed: dataset, threat, eps", "purifier.t_s")),
    ("rows-ambiguous", {"tables": [table(rows=["steps"])]}, "report.tables[0].rows[0]",
     ("ambiguous: purifier.steps, attack.steps",)),
    ("rows-twice", {"tables": [table(rows=["t_s", "purifier.t_s"])]}, "report.tables[0].rows[1]",
     ("appears twice",)),
    ("rows-cols", {"tables": [table(cols=["label"])]}, "report.tables[0].cols", ("in rows too",)),
    ("value", {"tables": [table(value="accuracy")]}, "report.tables[0].value",
     ("allowed: robust_mean, clean, robust_vote, robust_worst, nfe, s_per_row, j_per_row",)),
    ("where-list", {"tables": [table(where=["threat"])]}, "report.tables[0].where", ("a mapping",)),
    ("where-key", {"tables": [table(where={"colour": 1})]}, "report.tables[0].where.colour",
     ("'colour' is not a key",)),
    ("where-empty-list", {"tables": [table(where={"threat": []})]}, "report.tables[0].where.threat",
     ("list of 1 to 100 values",)),
    ("where-nested", {"tables": [table(where={"threat": [["linf"]]})]},
     "report.tables[0].where.threat[0]", ("expected a number",)),
    ("where-null", {"tables": [table(where={"threat": None})]}, "report.tables[0].where.threat",
     ("expected a number",)),
    ("where-comparison", {"tables": [table(where={"t_s": "<=small"})]}, "report.tables[0].where.t_s",
     ("<= needs a number",)),
    ("where-comparison-in-list", {"tables": [table(where={"t_s": [0.1, "<=0.2"]})]},
     "report.tables[0].where.t_s[1]", ("cannot be one of a list",)),
    ("reference-missing", {"reference": "nope/refs.yaml"}, "report.reference", ("no such file",)),
    ("reference-int", {"reference": 3}, "report.reference", ("expected the path",)),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_report_refused_through_the_cli(case: tuple[str, Any, str, tuple[str, ...]],
                                        tmp_path: Path) -> None:
    _, report, key, fragments = case
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(smoke_with(report), sort_keys=False))
    r = harness("plan", "--grid", str(p), "--jobs", "jobs", cwd=tmp_path, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) <= 20
    assert f"{p}: {key}: " in r.stderr, r.stderr
    for fragment in fragments:
        assert fragment in r.stderr, (fragment, r.stderr)
    assert not (tmp_path / "jobs").exists()


def test_junk_in_the_report_is_a_grid_error() -> None:
    """Any value anywhere in the smoke grid's report section is accepted or refused with a
    GridError (what the fuzz test demands of a refused grid), never another exception."""
    rng = random.Random(3)
    junk = [None, -1, 0, 10 ** 18, -0.5, 1e300, float("nan"), "", "x" * 500, [], {}, [[[]]], True,
            {"a": 1}, ["label", 3], "<=", "!="]

    def paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
        out = [prefix] if prefix else []
        if isinstance(obj, dict):
            for k, v in obj.items():
                out += paths(v, prefix + (k,))
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                out += paths(v, prefix + (i,))
        return out

    targets = [p for p in paths(SMOKE) if p[0] == "report"]
    assert len(targets) > 10
    refused = 0
    for _ in range(300):
        raw = copy.deepcopy(SMOKE)
        path = rng.choice(targets)
        obj = raw
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = rng.choice(junk)
        try:
            expand(raw, "m.yaml")
        except GridError as exc:
            refused += 1
            assert len(str(exc)) < 2000
    assert refused > 100
