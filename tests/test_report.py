"""analysis/: loading result part files, statistics, tables and the written report."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.aggregate import (ResultsError, load_results, per_example, summarise,
                                with_worst_over_attacks)
from analysis.report import build_report
from analysis.stats import clustered_interval, mean_accuracy_interval, wilson_interval
from analysis.tables import format_eps, render_csv, render_latex, render_markdown, render_text
from fixtures_results import NONFINITE, SCHEMA, row, write_part
from harness.errors import UsageError

ATTACK = "pgd(exact,eot=4,steps=20)"
LORID = "lorid(t_s=0.1,loops=3,steps=5)"
TUCKER = "tucker(tucker_rank=0.5)"
CELL_A, CELL_B, CELL_C = "a" * 16, "b" * 16, "c" * 16


def cell_meta(cell: str, label: str, *, cell_examples: int, eval_runs: int,
              sweep: str = "s1", classifier: str = "mlp") -> dict:
    return dict(sweep=sweep, cell=cell, label=label, dataset="digits", classifier=classifier,
                purifier=label.split("(")[0], attack="pgd", attack_label=ATTACK, threat="linf",
                eps=0.15, cell_examples=cell_examples, eval_runs=eval_runs)


# Cell A: 4 examples x 3 runs; (y, adv_pred per run) chosen to exercise vote ties.
A_EXAMPLES = [
    (1, [1, 1, 1]),  # mean 1,   vote 1 (ok),                 worst ok
    (2, [2, 2, 0]),  # mean 2/3, vote 2 (ok),                 worst no
    (3, [3, 2, 9]),  # mean 1/3, 3-way tie -> smallest 2 (no), worst no  (first-seen would say ok)
    (0, [5, 0, 2]),  # mean 1/3, 3-way tie -> smallest 0 (ok), worst no  (first-seen would say no)
]


def cell_a_rows() -> list[dict]:
    meta = cell_meta(CELL_A, LORID, cell_examples=4, eval_runs=3)
    out = []
    for ex, (y, preds) in enumerate(A_EXAMPLES):
        for run, p in enumerate(preds):
            wrong_clean = (y + 1) % 10 if (ex, run) == (3, 0) else None  # one clean miss
            out.append(row(meta, ex, run, y, p, clean_pred=wrong_clean))
    return out


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    a = cell_a_rows()
    # Spread cell A over shards, ranks and parts like a real data-parallel run.
    write_part(root, a[0:6], shard=0, rank=0, part=0)                      # examples 0-1
    write_part(root, [r for r in a[6:] if r["eval_run"] < 2], shard=1, rank=0, part=0)
    write_part(root, [r for r in a[6:] if r["eval_run"] == 2], shard=1, rank=1, part=3)
    # Cell B (another sweep): the undefended baseline, 4 examples x 1 run, all broken.
    b = cell_meta(CELL_B, "none", cell_examples=4, eval_runs=1, sweep="s2")
    write_part(root, [row(b, ex, 0, y=ex, adv_pred=ex + 1, nfe=0) for ex in range(4)])
    # Cell C: planned 5 examples x 2 runs, only 3 examples written -> partial.
    c = cell_meta(CELL_C, TUCKER, cell_examples=5, eval_runs=2)
    write_part(root, [row(c, ex, run, y=1, adv_pred=1) for ex in range(3) for run in range(2)])
    return root


# ---------------------------------------------------------------- stats

def test_wilson_known_values() -> None:
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = wilson_interval(0, 4)
    assert lo == 0.0 and hi == pytest.approx(0.9604 / 1.9604, abs=1e-9)
    assert wilson_interval(4, 4)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_mean_interval_normal_and_wilson_fallback() -> None:
    v = [1, 2 / 3, 1 / 3, 1 / 3]  # mean 7/12, sample var 44/432
    half = 1.96 * math.sqrt(44 / 432) / 2
    assert mean_accuracy_interval(v) == pytest.approx((7 / 12 - half, 7 / 12 + half))
    assert mean_accuracy_interval([1, 0, 1, 1, 0, 1, 0, 1, 0, 0]) == wilson_interval(5, 10)
    assert mean_accuracy_interval([0.9, 1.0, 1.0])[1] == 1.0  # clipped
    assert mean_accuracy_interval([0.5]) == (0.0, 1.0)


def test_clustered_interval_is_a_ratio_estimator_over_images() -> None:
    # one value per image: exactly the per-example interval
    v = [1, 2 / 3, 1 / 3, 1 / 3]
    assert clustered_interval(v, [7, 8, 9, 10]) == pytest.approx(mean_accuracy_interval(v))
    # a perfect copy of every image (a second seed that agrees) adds no information
    assert clustered_interval(v + v, [0, 1, 2, 3] * 2) == pytest.approx(mean_accuracy_interval(v))
    # ... whereas counting the copies as independent narrows it by ~sqrt(2) (ddof aside)
    naive_lo, naive_hi = mean_accuracy_interval(v + v)
    lo, hi = clustered_interval(v + v, [0, 1, 2, 3] * 2)
    assert (hi - lo) / (naive_hi - naive_lo) == pytest.approx(math.sqrt(7 / 3), rel=1e-9)  # sqrt(2 * (n-1)/(2n-1))
    # unequal cluster sizes: r = sum T / sum M, var = K/(K-1) sum (T - r M)^2 / (sum M)^2
    vals = [1, 1, 0, 0.5, 0, 1, 1 / 3, 2 / 3, 1, 0]
    ids = ["a", "a", "b", "c", "c", "d", "e", "e", "f", "g"]
    t, m = np.array([2, 0, 0.5, 1, 1, 1, 0]), np.array([2, 1, 2, 1, 2, 1, 1])
    r = t.sum() / m.sum()
    half = 1.96 * math.sqrt(7 / 6 * ((t - r * m) ** 2).sum() / m.sum() ** 2)
    assert 0 < r - half and r + half < 1
    assert clustered_interval(vals, ids) == pytest.approx((r - half, r + half))
    # every image all-robust or all-broken: Wilson on the number of images
    assert clustered_interval([1, 1, 0, 0, 1, 1], [0, 0, 1, 1, 2, 2]) == wilson_interval(2, 3)
    assert all(math.isnan(x) for x in clustered_interval([], []))


# ---------------------------------------------------------------- loading

def test_load_reads_all_parts_and_sweeps(results: Path) -> None:
    df = load_results(results)
    assert len(df) == 12 + 4 + 6
    assert set(df["sweep"]) == {"s1", "s2"}
    assert df["source_file"].nunique() == 5
    assert len(load_results(results / "s2")) == 4  # a single sweep directory works too


def test_load_ignores_report_tmp_and_hidden(results: Path) -> None:
    dup = cell_a_rows()[:3]  # would raise as duplicates if any of these were read
    (results / "_report").mkdir()
    pq.write_table(pa.Table.from_pylist(dup, schema=SCHEMA), results / "_report" / "x.parquet")
    write_part(results, dup, name="rank-0-part-9.parquet.tmp")
    write_part(results, dup, name=".rank-0-part-8.parquet")
    write_part(results, dup, name="_rank-0-part-7.parquet")
    assert len(load_results(results)) == 22


def test_empty_dir_raises(tmp_path: Path) -> None:
    (tmp_path / "_report").mkdir()
    with pytest.raises(ValueError, match="no result files under"):
        load_results(tmp_path)
    with pytest.raises(UsageError, match="no result files under"):
        load_results(tmp_path / "missing")


def test_duplicate_row_raises(results: Path) -> None:
    write_part(results, cell_a_rows()[:2], shard=0, rank=1, part=0)  # ex 0 runs 0-1 again
    with pytest.raises(ResultsError, match=rf"cell {CELL_A}: 2 \(example, eval_run\) key"):
        load_results(results)


def test_inconsistent_cell_raises(results: Path) -> None:
    bad = [dict(r, example=r["example"] + 10, cell_examples=99) for r in cell_a_rows()[:3]]
    write_part(results, bad, shard=5)
    with pytest.raises(ResultsError, match=rf"cell {CELL_A}: rows disagree on cell_examples"):
        load_results(results)


# ---------------------------------------------------------------- summary

def by_label(summary: pd.DataFrame) -> dict[str, pd.Series]:
    return {r["label"]: r for _, r in summary.iterrows()}


def test_summary_numbers(results: Path) -> None:
    s = summarise(load_results(results))
    assert list(s["label"]) == ["none", LORID, TUCKER]  # none first, then by label
    rows = by_label(s)
    a = rows[LORID]
    assert (a["n"], a["cell_examples"], a["runs"], a["rows"], a["cells"]) == (4, 4, 3, 12, 1)
    assert (a["cell_n"], a["nonfinite"], a["grad_nonfinite"]) == (4, 0, 0)
    assert bool(a["complete"])
    assert a["clean"] == pytest.approx((1 + 1 + 1 + 2 / 3) / 4)
    assert a["robust_mean"] == pytest.approx(7 / 12)
    assert a["robust_vote"] == pytest.approx(3 / 4)
    assert a["robust_worst"] == pytest.approx(1 / 4)
    half = 1.96 * math.sqrt(44 / 432) / 2
    assert (a["ci_lo"], a["ci_hi"]) == pytest.approx((7 / 12 - half, 7 / 12 + half))
    assert (a["nfe"], a["time_s"]) == pytest.approx((10.0, 6.0))

    b = rows["none"]
    assert (b["robust_mean"], b["robust_vote"], b["robust_worst"], b["clean"]) == (0, 0, 0, 1)
    assert (b["ci_lo"], b["ci_hi"]) == pytest.approx(wilson_interval(0, 4))
    assert bool(b["complete"]) and b["nfe"] == 0

    c = rows[TUCKER]
    assert (c["n"], c["cell_examples"], bool(c["complete"])) == (3, 5, False)


def test_missing_run_is_partial_and_cells_pooled(tmp_path: Path) -> None:
    a = cell_a_rows()
    write_part(tmp_path, a[:-1])  # all 4 examples present, but example 3 lacks run 2
    other = [dict(r, cell="d" * 16, seed_purify=r["seed_purify"] + 1) for r in a]
    write_part(tmp_path, other)   # a second seed of the same configuration
    (s,) = [r for _, r in summarise(load_results(tmp_path)).iterrows()]
    # n counts the 4 images; cell_n the 8 (cell, example) pairs seen of 8 planned
    assert (s["cells"], s["n"], s["cell_n"], s["cell_examples"], bool(s["complete"])) == (2, 4, 8, 8, False)
    assert "4 (8/8 in 2 cells, partial)" in render_text(summarise(load_results(tmp_path)))


def test_pooled_seeds_are_clustered_by_image(tmp_path: Path) -> None:
    """Two seeds of cell A on the same images: the interval is clustered by image, not by
    (cell, example); by data_index when it is recorded, whatever the example position."""
    a = cell_a_rows()
    write_part(tmp_path, a)
    write_part(tmp_path, [dict(r, cell="d" * 16) for r in a])  # a seed that agrees on every image
    (s,) = [r for _, r in summarise(load_results(tmp_path)).iterrows()]
    half = 1.96 * math.sqrt(44 / 432) / 2
    assert (s["n"], s["cell_n"], s["cells"]) == (4, 8, 2)
    assert (s["ci_lo"], s["ci_hi"]) == pytest.approx((7 / 12 - half, 7 / 12 + half))  # as one seed
    assert "4 (2 cells)" in render_text(summarise(load_results(tmp_path)))
    # a third cell showing the same images in another order: clustered by data_index
    other = tmp_path / "other"
    write_part(other, [dict(r, data_index=10 + r["example"]) for r in a])
    write_part(other, [dict(r, cell="e" * 16, example=3 - r["example"], data_index=10 + r["example"])
                       for r in a])
    (s,) = [r for _, r in summarise(load_results(other)).iterrows()]
    assert s["n"] == 4 and (s["ci_lo"], s["ci_hi"]) == pytest.approx((7 / 12 - half, 7 / 12 + half))


def test_vote_never_counts_a_nonfinite_prediction(tmp_path: Path) -> None:
    meta = cell_meta(CELL_A, LORID, cell_examples=5, eval_runs=3)
    examples = [  # (y, adv_pred per run) -> vote correct?
        (1, [1, 1, NONFINITE]),          # 2 of 3 correct: yes
        (2, [2, NONFINITE, NONFINITE]),  # failures are the majority: no
        (3, [3, NONFINITE, 5]),          # 3-way tie with a failure: no majority for y
        (0, [0, NONFINITE, 7]),          # the same with y = 0, the smallest class: still no
        (4, [NONFINITE, 2, 2]),          # 2 wins: no
    ]
    write_part(tmp_path, [row(meta, ex, run, y, p) for ex, (y, preds) in enumerate(examples)
                          for run, p in enumerate(preds)])
    df = load_results(tmp_path)
    ex = per_example(df)
    assert list(ex["robust_vote"]) == [True, False, False, False, False]
    assert list(ex["nonfinite"]) == [1, 2, 1, 1, 1]
    (s,) = [r for _, r in summarise(df).iterrows()]
    assert s["nonfinite"] == 6 and s["grad_nonfinite"] == 0  # an older file: no grad column, 0
    assert s["robust_mean"] == pytest.approx((2 + 1 + 1 + 1 + 0) / 15)


def test_worst_of_propagates_nonfinite_and_gradients(tmp_path: Path) -> None:
    def cell(c: str, attack: str, preds: list[int], grads: list[int]) -> list[dict]:
        meta = dict(cell_meta(c, LORID, cell_examples=3, eval_runs=2), attack=attack,
                    attack_label=f"{attack}(x)")
        return [row(meta, ex, run, y=1, adv_pred=preds[ex], grad_nonfinite=grads[ex], data_index=ex)
                for ex in range(3) for run in range(2)]
    write_part(tmp_path, cell(CELL_A, "pgd", [1, 0, NONFINITE], [0, 3, 0]))
    write_part(tmp_path, cell(CELL_B, "square", [NONFINITE, 1, 0], [0, 0, 0]))
    s = summarise(with_worst_over_attacks(load_results(tmp_path)))
    rows = {r["attack_label"]: r for _, r in s.iterrows()}
    w = rows["worst-of[pgd(x) | square(x)]"]
    assert (w["nonfinite"], w["grad_nonfinite"], w["grad_nonfinite_examples"]) == (4, 3, 1)
    assert w["robust_mean"] == 0.0
    assert (rows["pgd(x)"]["nonfinite"], rows["square(x)"]["nonfinite"]) == (2, 2)
    text = render_text(s)
    assert "non-finite" in text and "nan-grad" in text
    assert "3 (1)" in render_markdown(s) and "3 (1)" in render_latex(s)
    csv = pd.read_csv(pd.io.common.StringIO(render_csv(s)))
    assert {"nonfinite", "grad_nonfinite", "grad_nonfinite_examples", "cell_n"} <= set(csv.columns)


# ---------------------------------------------------------------- tables and report

def test_tables_mark_partial(results: Path) -> None:
    s = summarise(load_results(results))
    text = render_text(s)
    assert text.splitlines()[0] == f"digits · linf eps=0.15 · {ATTACK}"
    assert "58.3 [27.1, 89.6]" in text  # 7/12 with its normal-approximation CI
    assert "3/5 (partial)" in text and "(partial): not every planned example" in text
    md = render_markdown(s)
    assert f"### digits · linf eps=0.15 · {ATTACK}" in md
    assert "| 3/5 (partial) |" in md and "_(partial):" in md
    csv = render_csv(s)
    assert "complete" in csv.splitlines()[0]


def test_text_columns_align(results: Path) -> None:
    header, rule, *rows = render_text(summarise(load_results(results))).splitlines()[1:6]
    assert len({len(line) for line in [header, rule, *rows]}) == 1  # last column right-aligned
    end = header.index("clean %") + len("clean %")  # numbers right-aligned under their header
    assert all(line[end - 1] != " " and line[end] == " " for line in rows)


def test_format_eps() -> None:
    assert format_eps(0.15) == "0.15"
    assert format_eps(8 / 255) == "8/255"
    assert format_eps(0.5) == "0.5" and format_eps(0.2) == "0.2"


def test_build_report_writes_files(results: Path) -> None:
    text = build_report(results)
    out = results / "_report"
    assert sorted(p.name for p in out.iterdir()) == ["figures", "report.csv", "report.html", "report.md",
                                                     "report.tex"]
    assert "1 PARTIAL" in text and "3/5 (partial)" in text
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| 3/5 (partial) |" in md and md.startswith("# Robustness report")
    csv = pd.read_csv(out / "report.csv")
    assert list(csv["label"]) == ["none", LORID, TUCKER]
    assert list(csv["complete"]) == [True, True, False]
    assert csv.loc[1, "robust_mean"] == 7 / 12  # full precision, and exact: one rounding of the fraction
    tex = (out / "report.tex").read_text(encoding="utf-8")
    assert r"\toprule" in tex and r"clean \%" in tex
    # A second run reads the same rows: its own output under _report/ is ignored.
    assert build_report(results) == text


def test_build_report_custom_out_dir(results: Path, tmp_path: Path) -> None:
    build_report(results / "s1", out_dir=tmp_path / "out")
    assert (tmp_path / "out" / "report.csv").exists()
    assert not (results / "s1" / "_report").exists()


def test_one_plugin_with_two_parameter_values_is_two_configurations(tmp_path: Path) -> None:
    """CelebA-HQ's Eyeglasses and Smiling share the data set plugin: the summary keeps them
    apart by naming the parameter that differs (and only that one: the root is the same)."""
    rows = []
    for cell, attribute, preds in (("e" * 16, "Eyeglasses", [1, 1]), ("f" * 16, "Smiling", [0, 0])):
        config = {"dataset": {"name": "celebahq", "params": {"attribute": attribute, "root": "asset:celebahq"}},
                  "classifier": {"name": "resnet-18-binary", "params": {}}}
        meta = dict(cell_meta(cell, "none", cell_examples=2, eval_runs=1), dataset="celebahq",
                    classifier="resnet-18-binary", cell_json=json.dumps(config))
        rows += [row(meta, ex, 0, y=1, adv_pred=p) for ex, p in enumerate(preds)]
    write_part(tmp_path, rows[:2])
    write_part(tmp_path, rows[2:])
    s = summarise(load_results(tmp_path)).set_index("dataset")
    assert sorted(s.index) == ["celebahq(attribute=Eyeglasses)", "celebahq(attribute=Smiling)"]
    assert s.loc["celebahq(attribute=Eyeglasses)", "robust_mean"] == 1.0
    assert s.loc["celebahq(attribute=Smiling)", "robust_mean"] == 0.0
    assert (s["classifier"] == "resnet-18-binary").all()
