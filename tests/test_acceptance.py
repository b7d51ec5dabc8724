"""The smoke sweep's claim, checked as a user would run it: the same exact-gradient
PGD-EOT breaks the bare classifier and leaves LoRID a clear margin; and the exact
gradient is at least as strong as BPDA+EOT."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from conftest import ROOT, harness


def test_lorid_beats_undefended_under_exact_pgd_eot(tmp_path: Path) -> None:
    grid = yaml.safe_load((ROOT / "grids/smoke.yaml").read_text())
    lorid = next(p for p in grid["purifier"] if isinstance(p, dict) and p["name"] == "lorid")
    pgd = next(a for a in grid["attack"] if isinstance(a, dict) and a["name"] == "pgd")
    grid.update(sweep="accept", eval_runs=2, exclude=[],
                purifier=["none", {"name": "lorid", "params": {**lorid["params"], "tucker": "none"}}],
                attack=[{"name": "pgd", "params": {**pgd["params"], "gradient": "exact"}},
                        {"name": "bpda", "params": {k: v for k, v in pgd["params"].items() if k != "gradient"}}])
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    r = harness("run", "--grid", "g.yaml", "--report", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr
    report = pd.read_csv(tmp_path / "results/accept/_report/report.csv")
    assert report.complete.all() and (report.n == grid["examples"]).all()
    s = report[report.attack_label.str.startswith("pgd")]
    none = s[s.label == "none"].iloc[0]
    best = s[s.label.str.startswith("lorid")].iloc[0]
    assert none.robust_mean <= 0.10
    assert best.robust_mean >= none.robust_mean + 0.30
    assert best.clean >= 0.80
    # exact gradients through every denoising step are at least as strong as BPDA's identity backward
    bpda = report[report.attack_label.str.startswith("bpda") & report.label.str.startswith("lorid")].iloc[0]
    assert best.robust_mean <= bpda.robust_mean + 0.03
