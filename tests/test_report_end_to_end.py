"""`harness report` as a user runs it, on the smoke grid's own cells (fewer examples, so it is
quick): headline tables first, the self-contained HTML in a real headless Chromium with every
table, the key numbers and the t_s / loops / eps figures, pivots and filters through the CLI,
cost and energy from NVML telemetry, and bad options refused before anything is written."""
from __future__ import annotations

import html
import io
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from analysis.html import data_key
from browser import dump_dom, screenshot
from conftest import ROOT, harness

EXAMPLES = 10


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke grid at 10 examples and 2 evaluation runs, run and reported by the CLI."""
    cwd = tmp_path_factory.mktemp("smoke")
    grid = yaml.safe_load((ROOT / "grids/smoke.yaml").read_text())
    grid.update(examples=EXAMPLES, batch_size=EXAMPLES, shard_size=EXAMPLES, eval_runs=2)
    (cwd / "smoke.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    r = harness("run", "--grid", "smoke.yaml", "--report", cwd=cwd, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    (cwd / "stdout.txt").write_text(r.stdout)
    return cwd


def _titles(md: str) -> list[str]:
    return [line[4:].replace("\\|", "|") for line in md.splitlines() if line.startswith("### ")]


def test_headline_tables_come_first(smoke: Path) -> None:
    out = (smoke / "stdout.txt").read_text()
    first = out.index("Smoke: robust accuracy, Linf 0.25, by defence and attack")
    assert first < out.index("digits · no attack") < out.index("validity:")
    assert "Smoke: clean accuracy by defence" in out
    assert (smoke / "results/smoke/_report_spec.json").is_file()
    assert "sweep totals:" in out and "device-hours" in out


def test_html_in_chromium_shows_every_table_number_and_figure(smoke: Path, tmp_path: Path) -> None:
    report = smoke / "results/smoke/_report"
    page = report / "report.html"
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", text)  # self-contained
    dom = dump_dom(page)
    for title in _titles((report / "report.md").read_text(encoding="utf-8")):
        assert html.escape(title, quote=False) in dom, title
    csv = pd.read_csv(report / "report.csv")
    cells = dict(re.findall(r'data-key="([^"]*)"[^>]*>([^<]*)<', dom))
    for r in csv.itertuples(index=False):
        key = html.escape(data_key(r.dataset, r.threat, r.eps, r.attack_label, r.classifier, r.label))
        assert key in cells, key
        assert cells[key].startswith(f"{100 * r.robust_mean:.1f} [{100 * r.ci_lo:.1f}, {100 * r.ci_hi:.1f}]")
    figures = sorted(p.name for p in (report / "figures").iterdir())
    for wanted in ("robust_vs_t_s", "robust_vs_loops", "vs_eps"):
        assert any(wanted in f for f in figures), (wanted, figures)
        assert wanted in dom
    png = screenshot(page, tmp_path / "shot.png")
    image = Image.open(io.BytesIO(png.read_bytes())).convert("RGB")
    colours = image.resize((320, 750)).getcolors(maxcolors=1 << 20)
    assert len(colours) > 50  # tables and figures, not a blank page


def test_smoke_numbers_are_the_report_csv(smoke: Path) -> None:
    """The console tables and the CSV are one summary: every robust number printed."""
    out = (smoke / "stdout.txt").read_text()
    csv = pd.read_csv(smoke / "results/smoke/_report/report.csv")
    assert len(csv) == 21 + 2  # 21 cells + worst-of over the exact and greybox PGD on two defences
    for r in csv.itertuples(index=False):
        assert f"{100 * r.robust_mean:.1f} [{100 * r.ci_lo:.1f}, {100 * r.ci_hi:.1f}]" in out


def test_pivot_and_where_through_the_cli(smoke: Path) -> None:
    r = harness("report", "results/smoke", "--rows", "purifier.t_s", "--cols", "purifier.loops",
                "--where", "purifier=lorid", "--where", "purifier.tucker=none",
                "--where", "attack_label=pgd(norm=linf,eps=0.25,steps=10,step_size=0.0625,eot=2)",
                "--plots", "none", cwd=smoke)
    assert r.returncode == 0, r.stderr
    csv = pd.read_csv(smoke / "results/smoke/_report/report.csv")
    assert set(csv["label"]) <= {"lorid(t_s=0.05,loops=3,steps=4)", "lorid(t_s=0.1,loops=3,steps=4)",
                                 "lorid(t_s=0.2,loops=3,steps=4)", "lorid(t_s=0.1,loops=1,steps=4)"}
    assert len(csv) == 4  # --where filters the standard tables too
    pivot = r.stdout[r.stdout.index("pivot: purifier.t_s"):]
    lorid = csv.set_index("label")
    for label, t_s in (("lorid(t_s=0.05,loops=3,steps=4)", "0.05"), ("lorid(t_s=0.2,loops=3,steps=4)", "0.2")):
        line = next(x for x in pivot.splitlines() if x.strip().startswith(t_s + " "))
        assert f"{100 * lorid.loc[label, 'robust_mean']:.1f}" in line
    assert not list((smoke / "results/smoke/_report/figures").glob("*.png"))  # --plots none clears them

    # an ambiguous pivot, an unknown key: exit 2, the report files untouched
    before = (smoke / "results/smoke/_report/report.md").read_bytes()
    for args in (["--rows", "purifier.t_s"], ["--where", "purifier.nope=1"], ["--rows", "bogus"]):
        bad = harness("report", "results/smoke", *args, cwd=smoke)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, (args, bad.stderr)
        assert (smoke / "results/smoke/_report/report.md").read_bytes() == before


def test_cost_and_energy_from_telemetry(smoke: Path, tmp_path: Path) -> None:
    """Joules per image from the tasks' NVML telemetry (written here as a GPU task writes it)."""
    results = tmp_path / "smoke"
    shutil.copytree(smoke / "results/smoke", results, ignore=shutil.ignore_patterns("_report"))
    cell = next(d for d in results.glob("cell=*")
                if json.loads((d / "_cell.json").read_text())["label"] == "none"
                and json.loads((d / "_cell.json").read_text())["attack_label"] == "none")
    telemetry = sorted(cell.glob("shard=*/_telemetry-rank-*.json"))
    assert telemetry  # `harness run` wrote one per shard (on CPU: rows and device, no energy)
    for f in telemetry:
        doc = json.loads(f.read_text())
        assert doc["rows"] == EXAMPLES * 2 and doc["device"] == "cpu" and "energy_j" not in doc
        f.write_text(json.dumps({**doc, "energy_j": 200.0, "gpu": "NVIDIA H200", "nvml": "ok"}))
    r = harness("report", str(results), "--cost", "--plots", "none", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "cost by device type" in r.stdout and "NVIDIA H200" in r.stdout
    assert "kWh measured by NVML" in r.stdout
    device_line = next(x for x in r.stdout.splitlines() if x.startswith("NVIDIA H200"))
    assert " 10 " in device_line  # 200 J over its 20 rows (10 examples x 2 runs): 10 J per image
