"""analysis.reference: the references file format, the comparison with a summary, and the
shipped LoRID file (which must list settings and invent no number)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from analysis.reference import (STATUS_COMPARED, STATUS_NO_MATCH, STATUS_NO_NUMBER, STATUS_OTHER,
                                ReferencesError, compare, load_references, render_reference_text)
from harness.errors import UsageError
from harness.grid import load_grid

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "references" / "lorid-aaai2025.yaml"
EPS = 8 / 255


def row(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "dataset": "cifar10", "threat": "linf", "eps": EPS, "attack_label": "aa(standard)",
        "classifier": "wrn-28-10", "label": "lorid(t_s=0.05)", "purifier": "lorid",
        "attack": "autoattack", "attack.version": "standard", "purifier.t_s": 0.05,
        "complete": True, "clean": 0.9, "robust_mean": 0.39, "ci_lo": 0.31, "ci_hi": 0.47,
        "flags": "",
    }
    base.update(over)
    return base


def summary() -> pd.DataFrame:
    return pd.DataFrame([
        row(),
        row(attack_label="aa(rand)", **{"attack.version": "rand"}, robust_mean=0.5, ci_lo=0.45,
            ci_hi=0.55, complete=False, flags="attack-weak"),
        row(label="none", purifier="none", **{"purifier.t_s": None}, robust_mean=0.0, ci_lo=0.0,
            ci_hi=0.02),
    ])


def write(tmp_path: Path, doc: Any, name: str = "refs.yaml") -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return p


AA = {"dataset": "cifar10", "threat": "linf", "eps": "8/255", "attack": "autoattack",
      "classifier": "wrn-28-10", "purifier": "lorid"}


def refs_doc() -> dict[str, Any]:
    return {"source": "Someone et al. 2025", "entries": [
        {**AA, "attack.version": "standard", "clean": 91.0, "robust": 40.0, "where": "Table 2"},  # inside
        {**AA, "attack.version": "rand", "clean": None, "robust": 60.0, "note": "rand"},  # outside
        {**AA, "classifier": "wrn-70-16", "clean": 88.0, "robust": 50.0},  # no match
        {**AA, "purifier.t_s": 0.05, "clean": None, "robust": None},  # no number
        {"dataset": "imagenet", "eps": "4/255", "robust": 40.0},  # another data set
        {**AA, "purifier.tucker": "pre", "robust": 41.0},  # a column these results lack
    ]}


def test_compare_every_case(tmp_path: Path) -> None:
    refs = load_references(write(tmp_path, refs_doc()))
    assert refs.entries[0].match["eps"] == "8/255" and refs.entries[0].robust == 40.0
    df = compare(summary(), refs)
    by_entry = {e: g for e, g in df.groupby("entry")}
    assert sorted(by_entry) == [1, 2, 3, 4, 5, 6]  # every entry is there

    inside = by_entry[1].iloc[0]
    assert inside["status"] == STATUS_COMPARED and inside["label"] == "lorid(t_s=0.05)"
    assert inside["ours_robust"] == pytest.approx(39.0)
    assert (inside["ci_lo"], inside["ci_hi"]) == (pytest.approx(31.0), pytest.approx(47.0))
    assert inside["diff"] == pytest.approx(-1.0) and inside["inside"] is True
    assert inside["clean_diff"] == pytest.approx(-1.0) and inside["where"] == "Table 2"

    outside = by_entry[2].iloc[0]
    assert outside["inside"] is False and outside["diff"] == pytest.approx(-10.0)
    assert outside["ours"] == "50.0 [45.0, 55.0] ⚑ (partial)"
    assert outside["clean_diff"] is None or math.isnan(outside["clean_diff"])

    assert by_entry[3].iloc[0]["status"] == STATUS_NO_MATCH
    assert pd.isna(by_entry[3].iloc[0]["ours_robust"])
    no_number = by_entry[4]
    assert len(no_number) == 2 and set(no_number["status"]) == {STATUS_NO_NUMBER}  # both versions
    assert no_number["inside"].isna().all() and no_number["ours_robust"].notna().all()
    assert by_entry[5].iloc[0]["status"] == STATUS_OTHER
    lacking = by_entry[6].iloc[0]["status"]
    assert lacking == "no match (these results have no column purifier.tucker)"


def test_render_reference_text(tmp_path: Path) -> None:
    refs = load_references(write(tmp_path, refs_doc()))
    text = render_reference_text(compare(summary(), refs))
    lines = text.splitlines()
    assert lines[0] == "Published numbers beside ours"
    first = next(ln for ln in lines if ln.startswith("[1] ") and "lorid" in ln)
    assert "40.0" in first and "39.0 [31.0, 47.0]" in first and "-1.0" in first and "yes" in first
    second = next(ln for ln in lines if ln.startswith("[2] ") and "lorid" in ln)
    assert " no " in second and "-10.0" in second
    assert any(ln.startswith("[1] dataset=cifar10 · threat=linf · eps=8/255") and "Table 2" in ln
               for ln in lines)
    assert "1 reference entry concerns datasets not in these results (imagenet): [5]." in text
    assert lines[-1].startswith("Source: Someone et al. 2025")
    assert "no number" in text and "no match" in text


BAD = [
    ("top-list", "- a\n", "<root>", "not a mapping"),
    ("yaml", "source: [\n", "<root>", "not valid YAML"),
    ("unknown-top", {"source": "s", "entries": [AA], "colour": 1}, "colour", "allowed: source, note, entries"),
    ("no-source", {"entries": [AA]}, "source", "citation"),
    ("no-entries", {"source": "s", "entries": []}, "entries", "list of 1 to"),
    ("entry-scalar", {"source": "s", "entries": [3]}, "entries[0]", "expected a mapping"),
    ("entry-key", {"source": "s", "entries": [{**AA, "colour": 1}]}, "entries[0].colour",
     "allowed: match keys dataset"),
    ("entry-no-match", {"source": "s", "entries": [{"robust": 3.0}]}, "entries[0]", "no match key"),
    ("robust-range", {"source": "s", "entries": [{**AA, "robust": 150}]}, "entries[0].robust",
     "percentage in [0, 100]"),
    ("robust-bool", {"source": "s", "entries": [{**AA, "clean": True}]}, "entries[0].clean", "percentage"),
    ("robust-text", {"source": "s", "entries": [{**AA, "robust": "55%"}]}, "entries[0].robust", "percentage"),
    ("eps-text", {"source": "s", "entries": [{**AA, "eps": "eight"}]}, "entries[0].eps", "not a number"),
    ("value-map", {"source": "s", "entries": [{**AA, "label": {"a": 1}}]}, "entries[0].label", "expected a number"),
]


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_reference_file(case: tuple[str, Any, str, str], tmp_path: Path) -> None:
    _, doc, key, fragment = case
    p = write(tmp_path, doc)
    with pytest.raises(ReferencesError) as info:
        load_references(p)
    err = info.value
    assert isinstance(err, UsageError) and err.exit_code == 2
    assert err.file == str(p) and err.key == key
    assert str(err).startswith(f"{p}: {key}: ") and fragment in str(err)


def test_missing_reference_file(tmp_path: Path) -> None:
    with pytest.raises(ReferencesError, match="cannot read references file"):
        load_references(tmp_path / "nope.yaml")
    with pytest.raises(ReferencesError, match="is a directory"):
        load_references(tmp_path)


# ---------------------------------------------------------------- the shipped file

def test_shipped_file_loads_and_invents_no_number() -> None:
    refs = load_references(SHIPPED)
    assert "LoRID" in refs.source and "AAAI" in refs.source
    assert refs.entries and all(e.clean is None and e.robust is None for e in refs.entries)
    assert all("fill in from the paper" in (e.note or "") for e in refs.entries)
    raw = yaml.safe_load(SHIPPED.read_text())
    assert all(e["clean"] is None and e["robust"] is None for e in raw["entries"])  # written as null
    header = SHIPPED.read_text().split("source:")[0]
    assert "NO NUMBER IN THIS FILE HAS BEEN FILLED IN" in header


def test_shipped_file_covers_the_paper_grids() -> None:
    refs = load_references(SHIPPED)
    settings = {(e.match["dataset"], e.match["threat"], str(e.match["eps"])) for e in refs.entries}
    assert {("cifar10", "linf", "8/255"), ("cifar10", "l2", "0.5"), ("cifar100", "linf", "8/255"),
            ("celebahq", "linf", "16/255"), ("imagenet", "linf", "4/255")} <= settings
    for name in ("cifar10", "cifar100", "celebahq", "imagenet"):
        grid = load_grid(ROOT / "grids" / f"{name}.yaml")
        assert Path(grid.report["reference"]) == SHIPPED.resolve()
        # each entry for this grid's data set names a budget the grid actually runs
        from harness import registry
        threats = {registry.get("attack", c["attack"]["name"]).threat(c["attack"]["params"])
                   for c in grid.cells}
        for e in refs.entries:
            if e.match["dataset"] == name:
                num, den = (str(e.match["eps"]).split("/") + ["1"])[:2]
                assert any(t == e.match["threat"] and math.isclose(eps, float(num) / float(den))
                           for t, eps in threats), (name, e.match)


def test_shipped_file_compares_as_no_number() -> None:
    df = compare(pd.DataFrame([row()]), load_references(SHIPPED))
    statuses = set(df["status"])
    assert STATUS_NO_NUMBER in statuses and STATUS_OTHER in statuses
    assert all(s in (STATUS_NO_NUMBER, STATUS_OTHER) or s.startswith(STATUS_NO_MATCH) for s in statuses)
    # the grey-box entry names a column this one-row summary lacks: said, not dropped
    assert "no match (these results have no column attack.gradient)" in statuses
    assert df["paper_robust"].isna().all() and df["diff"].isna().all()
