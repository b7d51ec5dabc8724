"""analysis/validity.py: each flag fires on results built to trigger it, and a valid set has none."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analysis.aggregate import load_results, summarise
from analysis.report import build_report
from analysis.tables import render_latex, render_markdown, render_text
from analysis.validity import CHECKS, NOT_CHECKED, Tolerances, annotate, check
from conftest import harness
from fixtures_results import NONFINITE, row, write_part
from harness.grid import canonical_json, cell_hash, cell_label
from harness.registry import get

ALL_CODES = [code for code, _ in CHECKS]
TUCKER = ("tucker", {})
LORID = ("lorid", {"t_s": 0.05, "loops": 2, "steps": 2})


def pgd(eps: float = 0.1, **kw) -> tuple[str, dict]:
    return "pgd", {"norm": "linf", "eps": eps, "steps": 10, "step_size": eps / 4, "eot": 1,
                   "random_start": True, "gradient": "exact", **kw}


def square(eps: float = 0.1, **kw) -> tuple[str, dict]:
    return "square", {"norm": "linf", "eps": eps, "queries": 500, **kw}


def autoattack(eps: float = 0.1, **kw) -> tuple[str, dict]:
    return "autoattack", {"version": "standard", "norm": "linf", "eps": eps,
                          "steps": 100, "eot": 0, "queries": 5000, "gradient": "exact", **kw}


def add_cell(root: Path, purifier: tuple[str, dict], attack: tuple[str, dict], robust: int, *,
             n: int = 20, runs: int = 1, pert: float | None = None, clean_varies: bool = False,
             sweep: str = "v", nan_grad: dict[int, int] | None = None,
             nonfinite: tuple[tuple[int, int, str], ...] = (), old_writer: bool = False) -> str:
    """Write one cell: the first ``robust`` of ``n`` examples stay correct in every run.

    Every example's perturbation is ``pert`` (default: eps, an attack that used its budget);
    ``clean_varies`` makes example 0's clean prediction differ between runs (randomness seen).
    ``nan_grad`` maps an example to its attack's non-finite gradient count (else 0);
    ``nonfinite`` lists (example, run, "clean" | "adv") predictions from non-finite logits.
    ``old_writer`` leaves out data_index and grad_nonfinite (results of an older harness).
    """
    def resolved(kind: str, name: str, params: dict) -> dict:
        return {"name": name, "params": get(kind, name).resolve(params, "<test>", kind)}

    cell = {"dataset": {"name": "digits", "params": {}}, "classifier": {"name": "digits-cnn", "params": {}},
            "purifier": resolved("purifier", *purifier), "attack": resolved("attack", *attack),
            "seed": 0, "eval_runs": runs, "data_seed": 0}
    p = cell["attack"]["params"]
    h = cell_hash(cell)
    meta = dict(sweep=sweep, cell=h, label=cell_label(cell), dataset="digits",
                classifier="digits-cnn", purifier=purifier[0], attack=attack[0],
                attack_label=cell_label(cell, "attack"), threat=p.get("norm", "none"),
                eps=float(p.get("eps", 0.0)), cell_examples=n, eval_runs=runs,
                cell_json=canonical_json(cell))
    pert = p.get("eps", 0.0) if pert is None else pert
    rows = []
    for ex in range(n):
        y = ex % 10
        for run in range(runs):
            clean = (y + 1) % 10 if clean_varies and ex == 0 and run == 1 else None
            adv = y if ex < robust else (y + 1) % 10
            clean = NONFINITE if (ex, run, "clean") in nonfinite else clean
            adv = NONFINITE if (ex, run, "adv") in nonfinite else adv
            new = {} if old_writer else {"data_index": 100 + ex,
                                         "grad_nonfinite": (nan_grad or {}).get(ex, 0)}
            rows.append(row(meta, ex, run, y, adv_pred=adv, clean_pred=clean, perturbation=pert,
                            **new))
    write_part(root, rows)
    return h


def valid_set(root: Path) -> Path:
    """Every check has data and none fires."""
    add_cell(root, ("none", {}), ("none", {}), 20)
    add_cell(root, TUCKER, ("none", {}), 19)
    for eps, bare, defended in ((0.1, 0, 10), (0.2, 0, 5), (1.0, 0, 0)):
        add_cell(root, ("none", {}), pgd(eps), bare)
        add_cell(root, TUCKER, pgd(eps), defended)
    add_cell(root, TUCKER, pgd(0.1, steps=40), 10)           # more steps: no lower
    add_cell(root, TUCKER, square(0.1), 11, pert=0.0)        # black box: not below white box
    add_cell(root, LORID, pgd(0.1, eot=4), 12, runs=2)       # random defence, EOT
    return root


def flags_of(root: Path, tol: Tolerances | None = None) -> pd.DataFrame:
    df = load_results(root)
    return check(df, summarise(df), tol)


def fired(flags: pd.DataFrame) -> set[tuple[str, str, float, str]]:
    """(flag, defence label, eps, attack_label) of every flag."""
    return {(r.flag, r.label, r.eps, r.attack_label) for r in flags.itertuples()}


def label(kind: str, name: str, params: dict) -> str:
    return cell_label({kind: {"name": name, "params": get(kind, name).resolve(params, "<t>", kind)}}, kind)


PGD1 = label("attack", *pgd(0.1))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return valid_set(tmp_path / "results")


def test_valid_set_has_no_flags_and_every_check_ran(root: Path) -> None:
    flags = flags_of(root)
    assert flags.empty, flags.to_string()
    assert flags.attrs["checked"] == ALL_CODES
    s = annotate(summarise(load_results(root)), flags)
    assert set(s["flags"]) == {""}
    text = build_report(root)
    assert "⚑" not in text
    assert not any(line.startswith("defence") and line.endswith("flags") for line in text.splitlines())
    assert f"validity: no flags; all {len(CHECKS)} checks ran; 0 check(s) flagged, {len(CHECKS)} passed, 0 not checked" in text
    for code, what in CHECKS:
        assert f"  passed: {code} ({what})" in text
    assert "not checked" not in text.split("validity: ")[1].split("\n", 1)[1]


def test_no_data_no_check(tmp_path: Path) -> None:
    add_cell(tmp_path, TUCKER, ("none", {}), 19)  # clean only: nothing to check but the logits
    flags = flags_of(tmp_path)
    assert flags.empty and flags.attrs["checked"] == ["non-finite"]
    assert set(flags.attrs["not_checked"]) == set(ALL_CODES) - {"non-finite"}
    assert flags.attrs["not_checked"]["gradient-masked"] == "no gradient attack in these results"
    text = build_report(tmp_path)
    assert "validity: no flags from the checks that ran; 0 check(s) flagged, 1 passed, 9 not checked" in text
    assert "validity: no flags;" not in text
    assert f"  not checked: not-converged (more steps/EOT/queries do not lower the number): " \
           f"{NOT_CHECKED['not-converged']}" in text


def test_one_strength_per_cell_says_not_converged_is_not_checked(tmp_path: Path) -> None:
    """A report with one attack strength per defence cannot tell whether the attack converged:
    it must say so, not "no flags"."""
    add_cell(tmp_path, ("none", {}), pgd(0.1), 0)
    add_cell(tmp_path, LORID, pgd(0.1, eot=4), 12, runs=2)
    flags = flags_of(tmp_path)
    assert flags.empty and "not-converged" not in flags.attrs["checked"]
    assert {"attack-weak", "no-eot", "non-finite", "gradient-masked"} <= set(flags.attrs["checked"])
    text = build_report(tmp_path)
    validity = text[text.index("validity: "):]
    assert validity.startswith("validity: no flags from the checks that ran;")
    assert ("  not checked: not-converged (more steps/EOT/queries do not lower the number): no defence "
            "was attacked at two strengths (steps/EOT/queries) of one attack") in validity
    assert "  passed: attack-weak" in validity
    md = (tmp_path / "_report" / "report.md").read_text(encoding="utf-8")
    assert "  - not checked: not-converged" in md
    # a second, stronger rung of the same attack makes it checkable
    add_cell(tmp_path, LORID, pgd(0.1, steps=20, eot=8), 12, runs=2)
    assert "not-converged" in flags_of(tmp_path).attrs["checked"]


def test_results_of_an_older_writer_leave_nonfinite_unchecked(tmp_path: Path) -> None:
    add_cell(tmp_path, TUCKER, pgd(0.1), 10, old_writer=True)
    flags = flags_of(tmp_path)
    assert {"non-finite", "gradient-masked"} <= set(flags.attrs["not_checked"])
    assert "predate" in flags.attrs["not_checked"]["non-finite"]


def test_nonfinite_predictions_are_wrong_counted_and_flagged(tmp_path: Path) -> None:
    add_cell(tmp_path, ("none", {}), pgd(0.1), 0)
    # examples 0-9 robust; NaN logits on example 0 (clean, run 0), 1 (adv, both runs), 2 (adv, run 1)
    bad = ((0, 0, "clean"), (1, 0, "adv"), (1, 1, "adv"), (2, 1, "adv"))
    add_cell(tmp_path, LORID, pgd(0.1, eot=4), 10, runs=2, nonfinite=bad)
    df = load_results(tmp_path)
    s = summarise(df)
    r = s[s["label"].str.startswith("lorid")].iloc[0]
    assert r["nonfinite"] == 4 and r["rows"] == 40
    assert r["robust_mean"] == pytest.approx((10 - 1 - 0.5) / 20)  # a -1 is never correct
    assert r["robust_worst"] == pytest.approx(8 / 20)
    # vote: example 1 (-1, -1) fails; example 2 (y, -1) is a tie with a failure: no majority
    assert r["robust_vote"] == pytest.approx(8 / 20)
    assert r["clean"] == pytest.approx(19.5 / 20)
    flags = check(df, s)
    got = flags[flags["flag"] == "non-finite"]
    assert list(got["label"]) == [r["label"]]
    assert got["message"].iloc[0] == "4 of 40 predictions came from non-finite logits (counted as wrong)"
    text = build_report(tmp_path)
    block = next(b for b in text.split("\n\n") if "eot=4" in b.splitlines()[0])
    header = block.splitlines()[1]
    assert "non-finite" in header and header.endswith("flags")
    lorid_line = next(line for line in block.splitlines() if line.startswith("lorid"))
    assert " 4  non-finite" in lorid_line
    assert "non-finite: rows (example x run) whose clean or adversarial prediction" in block
    csv = pd.read_csv(tmp_path / "_report" / "report.csv", keep_default_na=False)
    assert list(csv["nonfinite"]) == [0, 4] and "non-finite" in csv["flags"].iloc[1]
    assert "  flagged: non-finite (no prediction came from non-finite logits): 1 flag(s)" in text


def test_nonfinite_gradients_flag_gradient_masking(tmp_path: Path) -> None:
    add_cell(tmp_path, ("none", {}), pgd(0.1), 0)
    add_cell(tmp_path, LORID, pgd(0.1, eot=4), 10, runs=3, nan_grad={3: 5, 12: 2})
    add_cell(tmp_path, LORID, square(0.1), 11, runs=3)
    df = load_results(tmp_path)
    s = summarise(df)
    r = s[s["attack_label"].str.startswith("pgd") & s["label"].str.startswith("lorid")].iloc[0]
    assert (r["grad_nonfinite"], r["grad_nonfinite_examples"]) == (7, 2)  # once per example, not per run
    flags = check(df, s)
    got = flags[flags["flag"] == "gradient-masked"]
    assert list(got["attack_label"]) == [r["attack_label"]]
    assert got["message"].iloc[0] == ("the attack's gradient was non-finite in 7 evaluations on 2 "
                                      "examples; those steps were zeroed")
    text = build_report(tmp_path)
    assert "nan-grad" in text and "7 (2)" in text
    md = (tmp_path / "_report" / "report.md").read_text(encoding="utf-8")
    assert "| nan-grad |" in md and "| 7 (2) |" in md
    tex = (tmp_path / "_report" / "report.tex").read_text(encoding="utf-8")
    assert r"& nan-grad & flags \\" in tex
    # the worst-of row over pgd and square carries the same gradients and flag
    worst = s[s["attack_label"].str.startswith("worst-of")] if "worst-of" in set(s["attack_label"]) else None
    assert worst is None  # summarise alone adds no worst-of rows; the report does
    csv = pd.read_csv(tmp_path / "_report" / "report.csv", keep_default_na=False)
    w = csv[csv["attack_label"].str.startswith("worst-of") & csv["label"].str.startswith("lorid")].iloc[0]
    assert w["grad_nonfinite"] == 7 and "gradient-masked" in w["flags"].split(";")


def test_attack_weak_flags_the_whole_group(root: Path) -> None:
    add_cell(root, ("none", {}), pgd(0.1, steps=2), 10)
    add_cell(root, TUCKER, pgd(0.1, steps=2), 12)
    weak = label("attack", *pgd(0.1, steps=2))
    flags = flags_of(root)
    got = {f for f in fired(flags) if f[0] == "attack-weak"}
    assert got == {("attack-weak", "none", 0.1, weak), ("attack-weak", "tucker", 0.1, weak)}
    assert "bare classifier keeps 50.0%" in flags[flags["flag"] == "attack-weak"]["message"].iloc[0]


def test_attack_weak_tolerance_depends_on_n(tmp_path: Path) -> None:
    add_cell(tmp_path, ("none", {}), pgd(0.1), 2, n=20)        # 10% of 20: within the small-n 10%
    assert flags_of(tmp_path).empty
    add_cell(tmp_path, ("none", {}), pgd(0.2), 6, n=100)       # 6% of 100: above 5%
    assert {f[:3] for f in fired(flags_of(tmp_path))} == {("attack-weak", "none", 0.2)}
    assert Tolerances().works(99) == 0.10 and Tolerances().works(100) == 0.05


def test_eps_nonmonotone_and_unbounded(root: Path) -> None:
    add_cell(root, TUCKER, pgd(0.3, step_size=0.01), 15)  # other step size: same family
    add_cell(root, TUCKER, pgd(2.0), 8)                    # anything goes, yet 40% robust
    add_cell(root, ("none", {}), pgd(0.3, step_size=0.01), 0)
    add_cell(root, ("none", {}), pgd(2.0), 0)
    flags = flags_of(root)
    assert {f[:3] for f in fired(flags)} == {
        ("eps-nonmonotone", "tucker", 0.3), ("eps-nonmonotone", "tucker", 2.0),
        ("eps-unbounded", "tucker", 2.0)}
    msg = flags[(flags["flag"] == "eps-nonmonotone") & (flags["eps"] == 0.3)]["message"].iloc[0]
    assert msg == "non-monotone in eps: 75.0% at eps=0.3 above 25.0% at eps=0.2"  # the largest rise


def test_eps_within_tolerance_is_not_flagged(tmp_path: Path) -> None:
    add_cell(tmp_path, TUCKER, pgd(0.1), 10)
    add_cell(tmp_path, TUCKER, pgd(0.2), 11)  # one example of 20 up: within max(3 points, 1/n)
    assert "eps-nonmonotone" not in set(flags_of(tmp_path)["flag"])
    add_cell(tmp_path, TUCKER, pgd(0.3), 12)  # two examples up from eps 0.1: flagged
    assert {f[:3] for f in fired(flags_of(tmp_path))} == {("eps-nonmonotone", "tucker", 0.3)}


def test_black_box_stronger_flags_the_white_box_number(root: Path) -> None:
    add_cell(root, TUCKER, square(0.1, queries=5000), 2, pert=0.0)
    add_cell(root, TUCKER, pgd(0.1, gradient="greybox", steps=11), 15)  # greybox: not white box
    flags = flags_of(root)
    got = {f for f in fired(flags) if f[0] == "bb-stronger"}
    assert got == {("bb-stronger", "tucker", 0.1, PGD1),
                   ("bb-stronger", "tucker", 0.1, label("attack", *pgd(0.1, steps=40)))}
    assert "black-box stronger: likely gradient masking" in flags["message"].iloc[0]
    assert "10.0%" in flags["message"].iloc[0]


def test_random_defence_without_eot(tmp_path: Path) -> None:
    add_cell(tmp_path, LORID, pgd(0.1), 5, runs=2)                        # stochastic plugin, eot 1
    add_cell(tmp_path, TUCKER, pgd(0.1), 5, runs=2, clean_varies=True)    # randomness observed
    add_cell(tmp_path, TUCKER, pgd(0.2), 5, runs=2)                       # deterministic: fine
    add_cell(tmp_path, LORID, pgd(0.2, eot=8), 5, runs=2)                 # EOT: fine
    add_cell(tmp_path, LORID, pgd(0.3, gradient="greybox"), 0, runs=2)   # greybox: EOT moot
    add_cell(tmp_path, LORID, autoattack(0.1), 0, runs=2)                 # standard: eot 1
    add_cell(tmp_path, LORID, autoattack(0.2, version="rand"), 0, runs=2)  # rand: eot 20
    add_cell(tmp_path, LORID, square(0.1), 5, runs=2)                     # query attack
    flags = flags_of(tmp_path)
    got = {(f[0], f[1].split("(")[0], f[2], f[3].split("(")[0]) for f in fired(flags)}
    assert got == {("no-eot", "lorid", 0.1, "pgd"), ("no-eot", "tucker", 0.1, "pgd"),
                   ("no-eot", "lorid", 0.1, "autoattack")}
    msgs = set(flags["message"])
    assert "random defence, attack without EOT (stochastic purifier; eot=1)" in msgs
    assert "random defence, attack without EOT (predictions differ between runs; eot=1)" in msgs


def test_not_converged_flags_the_weaker_setting(root: Path) -> None:
    add_cell(root, TUCKER, pgd(0.1, steps=100, eot=4), 4)
    flags = flags_of(root)
    assert {f for f in fired(flags) if f[0] == "not-converged"} == {
        ("not-converged", "tucker", 0.1, PGD1),
        ("not-converged", "tucker", 0.1, label("attack", *pgd(0.1, steps=40)))}
    assert set(flags["message"]) == {
        "not converged: more steps/EOT lower it to 20.0% (steps=100,eot=4)"}
    # A table with a flagged and an unflagged row: the numbers stay right-aligned.
    text = render_text(annotate(summarise(load_results(root)), flags))
    block = next(b for b in text.split("\n\n") if b.splitlines()[0].endswith(PGD1))
    none, tucker = block.splitlines()[3:5]
    assert none.startswith("none") and tucker.startswith("tucker")
    assert tucker.index("⚑") == none.index("0.0 [0.0, 16.1]") + len("0.0 [0.0, 16.1]") + 1
    assert len(none) + len("not-converged") + 2 == len(tucker)


def test_not_converged_needs_a_stronger_setting_in_every_dimension(tmp_path: Path) -> None:
    add_cell(tmp_path, LORID, pgd(0.1, steps=100, eot=1), 4, runs=2)
    add_cell(tmp_path, LORID, pgd(0.1, steps=10, eot=8), 12, runs=2)  # fewer steps, more EOT
    assert "not-converged" not in set(flags_of(tmp_path)["flag"])


def test_broken_attack_is_flagged_not_reported_robust(root: Path) -> None:
    broken = pgd(0.1, step_size=0.0, random_start=False)
    add_cell(root, ("none", {}), broken, 20, pert=0.0)
    add_cell(root, TUCKER, broken, 19, pert=0.0)
    add_cell(root, TUCKER, pgd(0.1, steps=0, random_start=True), 18, pert=0.09)  # random noise only
    add_cell(root, TUCKER, pgd(0.1, steps=12), 10, pert=0.01)                    # budget unused
    add_cell(root, TUCKER, autoattack(0.1), 9, pert=0.0)  # AutoAttack returns robust points as is
    flags = flags_of(root)
    b = label("attack", *broken)
    # (The square cell at eps 0.1 also flags bb-stronger on the high numbers, and steps=0
    # not-converged against steps=10: right, but not what this test is about.)
    assert {f for f in fired(flags) if f[0] == "attack-weak"} == {
        ("attack-weak", "none", 0.1, b), ("attack-weak", "tucker", 0.1, b)}
    assert {f for f in fired(flags) if f[0] in ("attack-null", "small-perturbation")} == {
        ("attack-null", "none", 0.1, b), ("attack-null", "tucker", 0.1, b),
        ("attack-null", "tucker", 0.1, label("attack", *pgd(0.1, steps=0))),
        ("small-perturbation", "tucker", 0.1, label("attack", *pgd(0.1, steps=12)))}
    flags = flags[flags["label"] == "tucker"]
    msgs = dict(zip(zip(flags["flag"], flags["attack_label"]), flags["message"]))
    assert msgs[("attack-null", b)].startswith("attack did nothing (zero perturbation): step_size=0")
    assert msgs[("attack-null", label("attack", *pgd(0.1, steps=0)))] == (
        "attack did nothing (steps=0: no gradient step, random start only)")
    assert "0.01 vs eps 0.1" in msgs[("small-perturbation", label("attack", *pgd(0.1, steps=12)))]


def test_tables_mark_flags_and_list_messages(root: Path) -> None:
    broken = pgd(0.15, step_size=0.0, random_start=False)  # an eps without a black-box cell
    add_cell(root, ("none", {}), broken, 20, pert=0.0)
    add_cell(root, TUCKER, broken, 19, pert=0.0)
    df = load_results(root)
    s = summarise(df)
    s = annotate(s, check(df, s))
    assert set(s["flags"]) == {"", "attack-weak;attack-null"}
    text = render_text(s)
    block = next(b for b in text.split("\n\n") if "random_start=false" in b.splitlines()[0])
    header, rule, *rest = block.splitlines()[1:]
    assert header.endswith("flags") and len(rest) == 4
    assert rest[0].endswith("100.0 [83.9, 100.0] ⚑   100.0    100.0     1  20  attack-weak;attack-null")
    assert rest[2] == "⚑ attack-weak: bare classifier keeps 100.0% under this attack [none, tucker]"
    assert rest[3].startswith("⚑ attack-null: attack did nothing (zero perturbation)")
    assert "flags" not in text.split("\n\n")[0]  # an unflagged table keeps its columns
    md = render_markdown(s)
    assert "| 95.0 [76.4, 99.1] ⚑ |" in md and "| attack-weak;attack-null |" in md
    assert "- ⚑ attack-weak: bare classifier keeps 100.0% under this attack [none, tucker]" in md
    tex = render_latex(s)
    assert r"95.0 [76.4, 99.1] $^\dagger$ & 95.0" in tex and r"& attack-weak;attack-null \\" in tex


E2E_GRID = """\
sweep: broken
dataset: digits
classifier: digits-cnn
purifier:
  - none
  - tucker
attack:
  - name: pgd
    params: {norm: linf, eps: 0.3, steps: 5, step_size: 0.1, eot: 1}
  - name: pgd
    params: {norm: linf, eps: 0.3, steps: 5, step_size: 0.0, eot: 1, random_start: false}
examples: 8
batch_size: 8
shard_size: 8
eval_runs: 1
"""
BROKEN = "pgd(norm=linf,eps=0.3,steps=5,step_size=0.0,eot=1,random_start=false)"


def test_end_to_end_broken_pgd_is_flagged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pgd cell with step size 0 and no random start leaves every input as it was: the report
    must flag it rather than show the clean accuracy as robust."""
    (tmp_path / "grid.yaml").write_text(E2E_GRID)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    r = harness("run", "--grid", "grid.yaml", "--jobs", "jobs", "--results", "results", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = harness("report", "results/broken", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tables, validity = r.stdout.split("\nvalidity: ")
    broken_table = next(b for b in tables.split("\n\n") if b.splitlines()[0].endswith(BROKEN))
    assert "⚑ attack-null: attack did nothing (zero perturbation)" in broken_table
    assert validity.splitlines()[1 + len(CHECKS)] == f"digits · linf eps=0.3 · {BROKEN}"
    assert "  flagged: attack-null (the attack perturbs its inputs): 2 flag(s)" in validity
    assert "  passed: non-finite" in validity and "  passed: gradient-masked" in validity
    for defence in ("none", "tucker"):
        assert (f"  ⚑ {defence} (digits-cnn): attack-null: attack did nothing (zero perturbation)"
                in validity)
    csv = pd.read_csv(tmp_path / "results/broken/_report/report.csv", keep_default_na=False)
    flagged = csv[csv["attack_label"] == BROKEN]
    assert len(flagged) == 2 and all("attack-null" in f.split(";") for f in flagged["flags"])
    assert all("attack-null" not in f for f in csv[csv["attack_label"] != BROKEN]["flags"])
    assert (flagged["robust_mean"] > 0.5).all()  # the number a broken attack would have reported
    assert list(csv.columns)[-1] == "flags"
