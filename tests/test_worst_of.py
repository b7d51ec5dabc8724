"""The report's worst case over attacks per example (DiffPure's min over AutoAttack versions)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.aggregate import load_results, summarise, with_worst_over_attacks
from analysis.report import build_report
from fixtures_results import row, write_part
from test_report import cell_meta


def _cell(cell: str, attack_label: str, outcomes: list[list[bool]], attack: str = "pgd") -> list[dict]:
    meta = {**cell_meta(cell, "lorid(t_s=0.1)", cell_examples=len(outcomes), eval_runs=len(outcomes[0])),
            "attack_label": attack_label, "attack": attack}
    return [row(meta, ex, run, y=1, adv_pred=1 if ok else 7)
            for ex, runs in enumerate(outcomes) for run, ok in enumerate(runs)]


def test_worst_of_two_attacks_is_per_example_and_per_run(tmp_path: Path) -> None:
    # example 0: robust to both in both runs; 1: robust to A only; 2: robust to B only;
    # 3: run 0 robust to both, run 1 fooled by A
    a = [[True, True], [True, True], [False, False], [True, False]]
    b = [[True, True], [False, False], [True, True], [True, True]]
    write_part(tmp_path, _cell("a" * 16, "autoattack(standard)", a, "autoattack"))
    write_part(tmp_path, _cell("b" * 16, "autoattack(rand)", b, "autoattack"))
    write_part(tmp_path, _cell("c" * 16, "none", [[True, True]] * 4, "none"))  # clean rows never combine
    df = with_worst_over_attacks(load_results(tmp_path))
    s = summarise(df).set_index("attack_label")
    worst = s.loc["worst-of[autoattack(rand) | autoattack(standard)]"]
    assert worst.robust_mean == (1 + 0 + 0 + 0.5) / 4
    assert worst.robust_worst == 0.25 and worst.complete
    # never above either attack alone
    assert worst.robust_mean <= min(s.loc["autoattack(standard)"].robust_mean, s.loc["autoattack(rand)"].robust_mean)
    text = build_report(tmp_path)
    assert "worst-of[autoattack(rand) | autoattack(standard)]" in text
    csv = pd.read_csv(tmp_path / "_report/report.csv")
    assert (csv.attack_label.str.startswith("worst-of")).sum() == 1


def test_single_attack_adds_nothing(tmp_path: Path) -> None:
    write_part(tmp_path, _cell("a" * 16, "pgd(eps=0.1)", [[True], [False]]))
    df = load_results(tmp_path)
    assert len(with_worst_over_attacks(df)) == len(df)
