"""analysis.pivot: --where parsing and filtering, pivot layout, ambiguity errors, rendering,
and the grid report section's headline tables, on summary frames built by hand."""
from __future__ import annotations

import io
import math
from typing import Any

import pandas as pd
import pytest

from analysis.pivot import (Pivot, apply_where, filters_from_mapping, headline_tables, parse_where,
                            pivot, pivot_frame, render_pivot_csv, render_pivot_markdown,
                            render_pivot_text)
from harness.errors import UsageError

EPS = 8 / 255
PGD = "pgd(norm=linf,eps=0.03137254901960784,steps=200)"
AA = "autoattack(version=standard,norm=linf,eps=0.03137254901960784)"


def row(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "dataset": "cifar10", "threat": "linf", "eps": EPS, "attack_label": PGD,
        "classifier": "wrn-28-10", "label": "none", "purifier": "none", "attack": "pgd",
        "purifier.t_s": None, "purifier.loops": None, "purifier.tucker": None,
        "attack.steps": 200, "attack.gradient": "exact",
        "cells": 1, "n": 100, "complete": True, "runs": 3, "clean": 0.9, "robust_mean": 0.39,
        "ci_lo": 0.31, "ci_hi": 0.47, "robust_vote": 0.4, "robust_worst": 0.35, "nfe": 30.0,
        "s_per_row": 0.0123, "j_per_row": 4.5, "flags": "",
    }
    base.update(over)
    return base


def lorid(ts: float, loops: int, **over: Any) -> dict[str, Any]:
    return row(label=f"lorid(t_s={ts},loops={loops})", purifier="lorid", **{
        "purifier.t_s": ts, "purifier.loops": loops, "purifier.tucker": "none"}, **over)


def summary() -> pd.DataFrame:
    """A baseline and a t_s x loops LoRID sweep under PGD, one row under another budget."""
    rows = [row(robust_mean=0.0, ci_lo=0.0, ci_hi=0.04)]
    for i, ts in enumerate([0.2, 0.05, 0.1]):  # written out of order on purpose
        for j, loops in enumerate([3, 2]):
            rows.append(lorid(ts, loops, robust_mean=0.30 + 0.01 * (3 * i + j),
                              ci_lo=0.2, ci_hi=0.5))
    rows.append(lorid(0.1, 2, threat="l2", eps=0.5, attack_label="pgd(norm=l2,eps=0.5)"))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- where

def test_eps_as_fraction_matches() -> None:
    df = summary()
    for text in ("eps=8/255", "eps=0.0313725", "eps = 8 / 255", "eps==8/255"):
        got = apply_where(df, parse_where([text], df.columns))
        assert len(got) == 7 and set(got["threat"]) == {"linf"}, text
    assert apply_where(df, parse_where(["eps=0.031"], df.columns)).empty  # not a rounding of it
    assert len(apply_where(df, parse_where(["eps=1/2"], df.columns))) == 1


def test_where_operators() -> None:
    df = summary()
    f = parse_where(["purifier=lorid", "threat!=l2", "purifier.t_s<=0.1", "loops>2"], df.columns)
    got = apply_where(df, f)
    assert sorted(zip(got["purifier.t_s"], got["purifier.loops"])) == [(0.05, 3), (0.1, 3)]
    assert [x.key for x in f] == ["purifier", "threat", "purifier.t_s", "purifier.loops"]  # loops abbreviated
    assert len(apply_where(df, parse_where(["t_s<0.1"], df.columns))) == 2  # 0.1 itself excluded
    assert len(apply_where(df, parse_where(["t_s>=0.1"], df.columns))) == 5
    # any-of, with commas inside a label kept whole
    got = apply_where(df, parse_where(["label=lorid(t_s=0.05,loops=2),none"], df.columns))
    assert sorted(got["label"]) == ["lorid(t_s=0.05,loops=2)", "none"]
    assert len(apply_where(df, parse_where(["purifier!=none,lorid"], df.columns))) == 0


def test_where_strings_exact_and_missing_values() -> None:
    df = summary()
    # "none" is a real value of purifier.tucker; a missing value matches only `null`
    assert len(apply_where(df, parse_where(["purifier.tucker=none"], df.columns))) == 7
    got = apply_where(df, parse_where(["purifier.tucker=null"], df.columns))
    assert list(got["label"]) == ["none"]
    assert apply_where(df, parse_where(["label=LORID"], df.columns)).empty
    # comparisons never match a missing value
    assert "none" not in set(apply_where(df, parse_where(["t_s<1"], df.columns))["label"])


def test_where_unknown_key_names_it_and_lists_allowed() -> None:
    df = summary()
    with pytest.raises(UsageError) as info:
        parse_where(["colour=blue"], df.columns)
    text = str(info.value)
    assert "'colour'" in text and "allowed:" in text
    assert "dataset, threat, eps, attack_label, classifier, label, purifier, attack" in text
    assert "purifier.t_s" in text
    assert info.value.exit_code == 2


def test_where_unknown_key_listing_is_cut() -> None:
    columns = [f"purifier.p{i:03d}" for i in range(500)] + ["dataset"]
    with pytest.raises(UsageError) as info:
        parse_where(["x=1"], columns)
    assert len(str(info.value)) < 1200 and "more)" in str(info.value)


def test_where_ambiguous_abbreviation() -> None:
    with pytest.raises(UsageError, match="ambiguous: purifier.steps, attack.steps"):
        parse_where(["steps=2"], ["purifier.steps", "attack.steps"])


@pytest.mark.parametrize("expr", ["colour", "=3", "t_s=", "t_s<abc", "t_s<=1,2", "label=a,,b", ""])
def test_where_malformed_shows_syntax(expr: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_where([expr], summary().columns)
    assert "KEY=VALUE, KEY!=VALUE, KEY=V1,V2 (any of)" in str(info.value)
    assert "8/255" in str(info.value)


def test_where_number_column_refuses_words() -> None:
    df = summary()
    with pytest.raises(UsageError, match="eps holds numbers; 'big' is not a number"):
        apply_where(df, parse_where(["eps=big"], df.columns))


def test_where_from_mapping() -> None:
    df = summary()
    f = filters_from_mapping({"eps": "8/255", "t_s": [0.05, 0.2], "loops": ">=3"}, df.columns)
    got = apply_where(df, f)
    assert sorted(got["purifier.t_s"]) == [0.05, 0.2] and set(got["purifier.loops"]) == {3}
    with pytest.raises(UsageError, match="'nope' is not a key"):
        filters_from_mapping({"nope": 1}, df.columns)


# ---------------------------------------------------------------- pivot

def linf_lorid() -> pd.DataFrame:
    df = summary()
    return apply_where(df, parse_where(["purifier=lorid", "threat=linf"], df.columns))


def test_pivot_shape_order_and_values() -> None:
    p = pivot(linf_lorid(), ["t_s"], ["loops"])
    assert (p.rows, p.cols, p.value) == (["purifier.t_s"], ["purifier.loops"], "robust_mean")
    assert p.row_keys == [(0.05,), (0.1,), (0.2,)]  # numeric, not as written
    assert p.col_keys == [(2,), (3,)]
    # t_s 0.05 was written second (i=1): loops 3 → 0.33, loops 2 → 0.34
    assert p.cells[0] == ["34.0 [20.0, 50.0]", "33.0 [20.0, 50.0]"]
    assert p.numbers[2][1] == pytest.approx(0.30)
    assert p.notes == []


def test_pivot_missing_keys_sort_last_and_blank_cells() -> None:
    df = summary()
    p = pivot(apply_where(df, parse_where(["threat=linf"], df.columns)), ["t_s"], ["loops"])
    assert p.row_keys[-1] == (None,) and p.col_keys[-1] == (None,)
    assert p.cells[-1] == ["", "", "0.0 [0.0, 4.0]"]
    assert math.isnan(p.numbers[0][2])
    assert render_pivot_text(p, "t").splitlines()[-1].startswith("–")


def test_pivot_marks_flags_and_partial() -> None:
    df = linf_lorid()
    df.loc[0, "flags"] = "attack-weak"
    df.loc[1, "complete"] = False
    df["flag_messages"] = [[("attack-weak", "the attack is weak")] if f else [] for f in df["flags"]]
    p = pivot(df, ["label"], [])
    cells = dict(zip([k[0] for k in p.row_keys], [c[0] for c in p.cells]))
    assert cells[df.loc[0, "label"]] == "30.0 [20.0, 50.0] ⚑"
    assert cells[df.loc[1, "label"]] == "31.0 [20.0, 50.0] (partial)"
    assert any(n.startswith("(partial)") for n in p.notes)
    assert any(n.startswith("⚑ attack-weak: the attack is weak") for n in p.notes)
    clean = pivot(df, ["label"], [], value="clean")
    cells = dict(zip([k[0] for k in clean.row_keys], [c[0] for c in clean.cells]))
    assert cells[df.loc[0, "label"]] == "90.0"  # a flag concerns robust numbers
    assert cells[df.loc[1, "label"]] == "90.0 (partial)"  # partial concerns every number


@pytest.mark.parametrize("value, expected", [("clean", "90.0"), ("robust_vote", "40.0"),
                                             ("robust_worst", "35.0"), ("nfe", "30"),
                                             ("s_per_row", "0.0123"), ("j_per_row", "4.5")])
def test_pivot_value_formats(value: str, expected: str) -> None:
    p = pivot(linf_lorid(), ["t_s"], ["loops"], value=value)
    assert p.cells[0][0] == expected


def test_pivot_ambiguity_names_the_differing_columns() -> None:
    df = linf_lorid()
    df = pd.concat([df, df.assign(attack_label=AA, attack="autoattack", **{"attack.steps": None})],
                   ignore_index=True)
    with pytest.raises(UsageError) as info:
        pivot(df, ["t_s"], ["loops"])
    text = str(info.value)
    # the first clash in the summary's order: t_s 0.2 was written first
    assert text.startswith("2 results for purifier.t_s=0.2 × purifier.loops=3: they differ in "
                           f"attack_label ({PGD}, {AA})")
    assert "attack (pgd, autoattack)" in text
    assert "add one of them to --rows/--cols or filter with --where" in text
    p = pivot(df, ["t_s"], ["loops", "attack"])  # naming it resolves it
    assert len(p.col_keys) == 4


def test_pivot_unknown_keys_and_value() -> None:
    df = linf_lorid()
    with pytest.raises(UsageError, match=r"--rows: 'colour' is not a key .* allowed: dataset, threat"):
        pivot(df, ["colour"], [])
    with pytest.raises(UsageError, match="--cols: 'clean' is not a key"):  # a value, not a key
        pivot(df, ["label"], ["clean"])
    with pytest.raises(UsageError, match="allowed: robust_mean, clean, robust_vote"):
        pivot(df, ["label"], [], value="accuracy")
    with pytest.raises(UsageError, match="in --rows too"):
        pivot(df, ["label"], ["label"])
    with pytest.raises(UsageError, match="at least one"):
        pivot(df, [], ["label"])
    with pytest.raises(UsageError, match="no results"):
        pivot(df.iloc[:0], ["label"], [])


def test_eps_key_prints_as_fraction() -> None:
    df = summary()
    p = pivot(apply_where(df, parse_where(["label=lorid(t_s=0.1,loops=2)"], df.columns)), ["eps"], [])
    assert render_pivot_text(p, "t").splitlines()[3].startswith("8/255")


# ---------------------------------------------------------------- rendering

def test_render_text_aligned() -> None:
    df = linf_lorid()
    df.loc[0, "flags"] = "x"
    p = pivot(df, ["t_s"], ["loops"])
    lines = render_pivot_text(p, "Table 9").splitlines()
    assert lines[0] == "Table 9" and lines[1] == "robust % mean [95% CI] by purifier.loops"
    header, rule, body = lines[2], lines[3], lines[4:7]
    assert header.split() == ["purifier.t_s", "2", "3"]
    assert len(rule) >= max(len(b) for b in body)
    # the closing brackets of one column line up, flagged or not
    ends = {b.index("]", b.index("]") + 1) for b in body}
    assert len(ends) == 1
    assert lines[7].startswith("⚑")


def test_render_markdown_and_csv() -> None:
    p = pivot(linf_lorid(), ["t_s"], ["loops"])
    md = render_pivot_markdown(p, "T | 2").splitlines()
    assert md[0] == "### T \\| 2"
    assert "| purifier.t_s | 2 | 3 |" in md and "| --- | ---: | ---: |" in md
    assert "| 0.05 | 34.0 [20.0, 50.0] | 33.0 [20.0, 50.0] |" in md
    back = pd.read_csv(io.StringIO(render_pivot_csv(p)))
    assert list(back.columns) == ["purifier.t_s", "2", "3"]
    assert back["2"].tolist() == pytest.approx([0.34, 0.37, 0.31])
    assert pivot_frame(p).shape == (3, 3)


# ---------------------------------------------------------------- headline tables

def test_headline_tables_build_and_explain_empty() -> None:
    spec = {"tables": [
        {"title": "ablation", "where": {"purifier": "lorid", "threat": "linf"},
         "rows": ["purifier.t_s"], "cols": ["purifier.loops"], "value": "robust_mean"},
        {"title": "square", "where": {"attack": "square"}, "rows": ["label"], "cols": []},
        {"title": "clash", "where": {"purifier": "lorid"}, "rows": ["purifier.t_s"],
         "cols": ["purifier.loops"]},
        {"title": "clean", "where": {"eps": "8/255"}, "rows": ["label"], "value": "clean"},
        {"title": "later column", "where": {"purifier.tucker_rank": 0.5}, "rows": ["label"]},
    ]}
    out = headline_tables(summary(), spec)
    assert [t for t, _ in out] == ["ablation", "square", "clash", "clean", "later column"]
    ablation = out[0][1]
    assert ablation.empty is None and len(ablation.row_keys) == 3
    square = out[1][1]
    assert square.empty == "no result has attack=square (values here: pgd)"
    assert render_pivot_text(square, "square") == "square\n(no table: no result has attack=square (values here: pgd))\n"
    assert "_no table: no result has attack=square" in render_pivot_markdown(square, "square")
    clash = out[2][1]
    assert "differ in threat (linf, l2)" in clash.empty
    assert "rows/cols or where of this table in the grid's report: section" in clash.empty
    assert out[3][1].empty is None and out[3][1].cells[0] == ["90.0"]
    assert "no column" in out[4][1].empty or "not a key" in out[4][1].empty
    assert headline_tables(summary(), {}) == []
    assert headline_tables(summary(), {"tables": ["x"]})[0][1].empty == "not a table: 'x'"
    assert isinstance(headline_tables(summary().iloc[:0], spec)[0][1], Pivot)
