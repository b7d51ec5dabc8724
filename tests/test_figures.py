"""analysis.figures: which figures a summary gets, that they are real images, same bytes every time."""
from __future__ import annotations

import io
import math
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis.aggregate import SUMMARY_COLUMNS
from analysis.figures import (FORMATS, MAX_FIGURES, Figure, figure_plan, make_figures,
                              write_figures)

EPS8 = 8 / 255
PLUGINS = {"lorid": "lorid", "diffpure": "diffpure", "none": "none"}  # purifier plugin names


def _row(*, label: str, purifier: str, attack: str, eps: float, robust: float, clean: float,
         t_s: float | None = None, loops: int | None = None, tucker: str | None = None,
         attack_label: str | None = None, steps: int | None = None, flags: str = "",
         messages: list | None = None, dataset: str = "cifar10", classifier: str = "wrn-28-10",
         n: int = 512, nfe: float = 0.0, s_per_row: float = 0.01, j_per_row: float = math.nan,
         complete: bool = True) -> dict:
    clean_row = attack == "none"
    half = 1.96 * math.sqrt(max(robust * (1 - robust), 1e-4) / n)
    return {
        "dataset": dataset, "threat": "none" if clean_row else "linf", "eps": 0.0 if clean_row else eps,
        "attack_label": attack_label or attack, "classifier": classifier, "label": label,
        "cells": 1, "n": n, "cell_n": n if complete else n // 2, "cell_examples": n,
        "complete": complete, "runs": 1, "rows": n if complete else n // 2, "clean": clean,
        "robust_mean": robust, "ci_lo": max(0.0, robust - half), "ci_hi": min(1.0, robust + half),
        "robust_vote": robust, "robust_worst": max(0.0, robust - 0.01), "nonfinite": 0,
        "grad_nonfinite": 0, "grad_nonfinite_examples": 0, "nfe": nfe, "time_s": s_per_row * n,
        "sweeps": "sweep-a",
        "purifier": purifier, "attack": attack,
        "grad_evals": math.nan if clean_row else float((steps or 0) * 2),
        "s_per_row": s_per_row, "energy_j": j_per_row * n, "j_per_row": j_per_row, "devices": "H100",
        "purifier.t_s": t_s, "purifier.loops": loops, "purifier.tucker": tucker,
        "purifier.tucker_rank": None,
        "attack.eps": None if clean_row else eps, "attack.steps": steps,
        "attack.eot": None if clean_row else 1,
        "attack.gradient": None if clean_row else "exact",
        "flags": flags, "flag_messages": messages or [],
    }


def make_summary() -> pd.DataFrame:
    """A realistic annotated summary: LoRID swept over t_s x loops under PGD and AutoAttack at
    8/255, PGD at three eps, a DiffPure row, the bare classifier, clean rows."""
    rows = []
    lorid, diffpure, none = PLUGINS["lorid"], PLUGINS["diffpure"], PLUGINS["none"]
    for attack, base in (("pgd", 0.50), ("autoattack", 0.44)):
        for t_s in (0.05, 0.1, 0.2):
            for loops in (1, 2, 3):
                robust = base + 0.4 * t_s + 0.02 * loops
                rows.append(_row(label=f"lorid t_s={t_s:g} loops={loops}", purifier=lorid, attack=attack,
                                 eps=EPS8, robust=robust, clean=0.92 - 0.3 * t_s, t_s=t_s, loops=loops,
                                 tucker="none", steps=100 if attack == "pgd" else None,
                                 nfe=20.0 * loops * (1 + (attack == "pgd") * 100),
                                 s_per_row=0.05 * loops, j_per_row=12.0 * loops))
    for tucker, robust in (("pre", 0.55), ("post", 0.57)):
        rows.append(_row(label=f"lorid tucker={tucker}", purifier=lorid, attack="pgd", eps=EPS8,
                         robust=robust, clean=0.88, t_s=0.1, loops=1, tucker=tucker, steps=100,
                         nfe=2020.0, s_per_row=0.06, j_per_row=14.0))
    for eps in (2 / 255, 4 / 255):
        rows.append(_row(label="lorid t_s=0.1 loops=2", purifier=lorid, attack="pgd", eps=eps,
                         robust=0.70 if eps < 3 / 255 else 0.62, clean=0.89, t_s=0.1, loops=2,
                         tucker="none", steps=100, nfe=4040.0, s_per_row=0.1, j_per_row=24.0))
        rows.append(_row(label="none", purifier=none, attack="pgd", eps=eps, robust=0.10 if eps < 3 / 255 else 0.02,
                         clean=0.95, steps=100))
    for attack in ("pgd", "autoattack"):
        rows.append(_row(label="diffpure t*=0.1", purifier=diffpure, attack=attack, eps=EPS8,
                         robust=0.62 if attack == "pgd" else 0.58, clean=0.89, steps=100 if attack == "pgd" else None,
                         nfe=100.0 * 101, s_per_row=1.2, j_per_row=300.0,
                         flags="no-eot" if attack == "pgd" else "",
                         messages=[("no-eot", "random defence attacked without EOT")] if attack == "pgd" else []))
        rows.append(_row(label="none", purifier=none, attack=attack, eps=EPS8, robust=0.0, clean=0.95,
                         steps=100 if attack == "pgd" else None))
    rows.append(_row(label="none", purifier=none, attack="none", eps=0, robust=0.95, clean=0.95))
    rows.append(_row(label="diffpure t*=0.1", purifier=diffpure, attack="none", eps=0, robust=0.89,
                     clean=0.89, nfe=100.0, s_per_row=0.5, complete=False))
    for t_s in (0.05, 0.1, 0.2):
        rows.append(_row(label=f"lorid t_s={t_s:g} loops=1", purifier=lorid, attack="none", eps=0,
                         robust=0.92 - 0.3 * t_s, clean=0.92 - 0.3 * t_s, t_s=t_s, loops=1, tucker="none",
                         nfe=20.0, s_per_row=0.05, j_per_row=12.0))
    df = pd.DataFrame(rows)
    df["purifier.loops"] = df["purifier.loops"].astype("Int64")
    df["attack.steps"] = df["attack.steps"].astype("Int64")
    assert set(SUMMARY_COLUMNS) <= set(df.columns)
    return df


def big_summary(n_configs: int = 125) -> pd.DataFrame:
    """5,000 rows: 5 datasets x 4 eps x 2 attacks x 125 LoRID configurations (t_s x loops x steps)."""
    rows = []
    grid = [(t, l, k) for t in (0.02, 0.05, 0.1, 0.2, 0.4) for l in (1, 2, 3, 4, 5) for k in (2, 4, 8, 16, 32)]
    for d in range(5):
        for e in (1, 2, 4, 8):
            for attack in ("pgd", "autoattack"):
                for t_s, loops, steps in grid[:n_configs]:
                    r = _row(label=f"lorid t_s={t_s} loops={loops} steps={steps}", purifier=PLUGINS["lorid"],
                             attack=attack, eps=e / 255, robust=0.3 + t_s + 0.01 * loops - 0.01 * e,
                             clean=0.9 - t_s, t_s=t_s, loops=loops, tucker="none", dataset=f"set{d}",
                             nfe=10.0 * loops * steps, s_per_row=0.01 * loops * steps)
                    r["purifier.steps"] = steps
                    rows.append(r)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    return make_summary()


@pytest.fixture(scope="module")
def pngs(summary: pd.DataFrame) -> list[Figure]:
    return make_figures(summary, "png")


@pytest.fixture(scope="module")
def svgs(summary: pd.DataFrame) -> list[Figure]:
    return make_figures(summary, "svg")


def test_figures_for_the_sweeps_present(pngs: list[Figure]) -> None:
    names = {f.name for f in pngs}
    assert {
        "robust_vs_t_s__cifar10_linf_8-255_lorid",      # t_s swept under pgd and autoattack
        "robust_vs_loops__cifar10_linf_8-255_lorid",
        "robust_vs_tucker__cifar10_linf_8-255_lorid",   # a categorical parameter
        "robust_vs_t_s__cifar10_none_lorid",            # clean accuracy against t_s
        "acc_vs_eps__cifar10_linf_pgd",
        "tradeoff__cifar10_linf_8-255_pgd", "tradeoff__cifar10_linf_8-255_autoattack",
        "cost__cifar10_linf_8-255_pgd", "cost__cifar10_linf_8-255_autoattack",
    } <= names
    # nothing for what was not swept: loops never varies without an attack, tucker_rank is
    # unset everywhere, autoattack ran at one eps, diffpure and the bare classifier have no
    # swept parameter, a clean group has no trade-off.
    assert not {"robust_vs_loops__cifar10_none_lorid", "acc_vs_eps__cifar10_linf_autoattack",
                "tradeoff__cifar10_none"} & names
    assert not [n for n in names if "tucker_rank" in n or n.endswith(("_diffpure", "_none"))
                and n.startswith("robust_vs")]
    assert all(re.fullmatch(r"[a-z0-9_-]+", n) for n in names)
    assert len(names) == len(pngs)
    by_name = {f.name: f for f in pngs}
    assert "vs t_s" in by_name["robust_vs_t_s__cifar10_linf_8-255_lorid"].title
    assert "8/255" in by_name["tradeoff__cifar10_linf_8-255_pgd"].title


def test_png_is_a_real_picture(pngs: list[Figure]) -> None:
    for f in pngs:
        assert f.fmt == "png" and f.data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(f.data) <= 150_000, f"{f.name}: {len(f.data)} bytes"
        im = Image.open(io.BytesIO(f.data))
        im.load()
        assert 400 <= im.width <= 1600 and 250 <= im.height <= 600, (f.name, im.size)
        colours = im.convert("RGB").getcolors(1 << 24)
        assert colours is not None and len(colours) > 50, f"{f.name}: {len(colours or [])} colours"
        white = max(colours)[0] / (im.width * im.height)
        assert white < 0.97, f"{f.name} is almost blank"
        assert f.caption and f.title


def test_svg_parses(svgs: list[Figure], pngs: list[Figure]) -> None:
    assert [f.name for f in svgs] == [f.name for f in pngs]
    for f in svgs:
        root = ET.fromstring(f.data)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert root.find("{http://www.w3.org/2000/svg}title").text == f.title
        assert b"<dc:date>" not in f.data  # no date: same bytes tomorrow


def test_flagged_numbers_are_hollow_and_captioned(pngs: list[Figure]) -> None:
    by_name = {f.name: f for f in pngs}
    assert "Hollow markers" in by_name["tradeoff__cifar10_linf_8-255_pgd"].caption  # diffpure is flagged
    assert "Hollow markers" not in by_name["tradeoff__cifar10_linf_8-255_autoattack"].caption
    # diffpure ran at one eps only: no line in the eps figure, so no hollow marker there either
    eps = by_name["acc_vs_eps__cifar10_linf_pgd"].caption
    assert "Hollow markers" not in eps and "measured at a single eps not drawn" in eps


def test_same_summary_same_bytes(summary: pd.DataFrame, pngs: list[Figure], svgs: list[Figure]) -> None:
    by_key = {(f.name, f.fmt): f for f in pngs + svgs}
    again = make_figures(summary, "png", limit=4) + make_figures(summary, "svg", limit=4)
    assert len(again) == 8 and all(f == by_key[f.name, f.fmt] for f in again)


def test_same_bytes_in_a_fresh_process_without_pyplot(tmp_path: Path, summary: pd.DataFrame,
                                                      svgs: list[Figure], pngs: list[Figure]) -> None:
    """Another process (another hash seed) writes the same files, and never imports pyplot
    (which would pick a global backend for everyone in the process)."""
    import subprocess
    import sys

    summary.to_pickle(tmp_path / "s.pkl")
    code = ("import sys, pandas as pd; from analysis.figures import make_figures, write_figures; "
            f"s = pd.read_pickle({str(tmp_path / 's.pkl')!r}); "
            f"write_figures(make_figures(s, 'svg', limit=2) + make_figures(s, 'png', limit=2), {str(tmp_path)!r}); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "PYTHONHASHSEED": "12345"})
    assert r.returncode == 0, r.stderr[-2000:]
    expected = {f"{f.name}.{f.fmt}": f.data for f in svgs + pngs}
    written = sorted((tmp_path / "figures").iterdir())
    assert len(written) == 4
    for path in written:
        assert path.read_bytes() == expected[path.name], path.name


def test_format_is_checked(summary: pd.DataFrame) -> None:
    for bad in ("jpg", "PNG", ""):
        with pytest.raises(ValueError, match="png, svg"):
            make_figures(summary, bad)
    assert FORMATS == ("png", "svg")


def test_rows_without_a_robust_number_are_left_out(summary: pd.DataFrame) -> None:
    s = summary[summary["attack"].eq("autoattack")].copy()  # few figures: fast
    s.loc[s["label"].eq("diffpure t*=0.1"), "robust_mean"] = np.nan
    figs = {f.name: f for f in make_figures(s, "png")}
    assert "1 row(s) without a robust number left out" in figs["tradeoff__cifar10_linf_8-255_autoattack"].caption
    none_at_all = summary.assign(robust_mean=np.nan)
    assert make_figures(none_at_all) == []
    assert make_figures(summary.iloc[:0]) == []


def test_write_figures_replaces_stale_ones(tmp_path: Path, pngs: list[Figure], svgs: list[Figure]) -> None:
    folder = tmp_path / "figures"
    folder.mkdir()
    (folder / "robust_vs_old__gone.png").write_bytes(b"stale")
    (folder / "notes.txt").write_text("not a figure: kept")
    written = write_figures(svgs, tmp_path)
    assert written == [folder / f"{f.name}.svg" for f in svgs]
    assert not (folder / "robust_vs_old__gone.png").exists()
    assert (folder / "notes.txt").exists()
    written = write_figures(pngs[:2], tmp_path)  # a later run drawing less: the svgs go
    assert sorted(p.name for p in folder.iterdir()) == sorted([*(p.name for p in written), "notes.txt"])
    assert written[0].read_bytes() == pngs[0].data
    assert not list(folder.glob(".*.tmp"))
    with pytest.raises(ValueError, match="unsafe"):
        write_figures([Figure("../escape", "t", "png", b"x", "")], tmp_path)
    with pytest.raises(ValueError, match="repeat"):
        write_figures([pngs[0], pngs[0]], tmp_path)


def test_the_cap_on_a_5000_row_summary() -> None:
    big = big_summary()
    assert len(big) == 5000
    t0 = time.perf_counter()
    plan = figure_plan(big)
    planned = time.perf_counter() - t0
    assert len(plan.specs) == MAX_FIGURES and len(plan.left_out) > 0
    assert {s.kind for s in plan.specs} == {"param", "eps", "tradeoff", "cost"}  # round-robin
    assert f"{len(plan.left_out)} of {MAX_FIGURES + len(plan.left_out)} possible figures left out" in plan.note
    assert figure_plan(big).left_out == plan.left_out  # deterministic
    assert planned < 5, f"planning took {planned:.1f} s"
    t0 = time.perf_counter()
    figs = make_figures(big, "png", limit=6)
    drawn = time.perf_counter() - t0
    assert [f.name for f in figs] == [s.name for s in figure_plan(big, 6).specs]
    assert drawn < 20, f"6 figures of a 5,000-row summary took {drawn:.1f} s"
    lines = [f for f in figs if f.name.startswith("robust_vs_t_s")]
    assert lines and "more line(s) not drawn (at most 12" in lines[0].caption
    with pytest.raises(ValueError):
        figure_plan(big, -1)


def test_a_summary_without_the_plugin_columns(summary: pd.DataFrame) -> None:
    """Only SUMMARY_COLUMNS (no plugin, parameter, cost or flags columns, categorical keys):
    no parameter figures, the rest still drawn; a list-valued parameter does not break it."""
    plain = summary[list(SUMMARY_COLUMNS)].astype({"dataset": "category", "attack_label": "category"})
    names = [s.name for s in figure_plan(plain).specs]
    assert names and not [n for n in names if n.startswith("robust_vs")]
    assert {"acc_vs_eps__cifar10_linf_pgd", "tradeoff__cifar10_linf_8-255_pgd",
            "cost__cifar10_linf_8-255_pgd"} <= set(names)
    listy = summary.assign(**{"attack.norms": [["linf", "l2"]] * len(summary)})
    assert [s.name for s in figure_plan(listy).specs] == [s.name for s in figure_plan(summary).specs]
