"""A site package adds an attack and a purifier, one file each, through the entry-point group
`lorid_harness.plugins`, without editing this repository: pip installs it, and the grid, the
plan's cost, the run and the report (threat/eps columns, validity flags) all take it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from conftest import harness

FGSM = '''\
"""FGSM (Goodfellow et al. 2015): one signed gradient step of size eps. One file: the
declaration (torch-free) and the implementation (torch imported when it runs)."""
from harness.registry import Param, PluginSpec


def attack(model, x, y, params, noise):
    import torch
    import torch.nn.functional as F

    from harness.attacks import AttackResult
    from harness.attacks.finite import sanitize

    xr = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr, noise), y, reduction="sum"), xr)
    g, bad = sanitize(g)
    x_adv = (x + params["eps"] * g.sign()).clamp(0, 1).detach()
    return AttackResult(x_adv, 1, grad_nonfinite=bad.long().tolist())


SPECS = (PluginSpec(
    "attack", "fgsm", "site_fgsm:attack",
    params={"eps": Param("float", low=0.0, help="Linf budget")},
    capabilities=frozenset({"needs_gradients"}),
    threat=lambda p: ("linf", float(p["eps"])),
    passes=lambda p: 2,  # one forward and one backward through the purifier
    label=("eps",),
    help="FGSM, one step",
),)
'''

ONESHOT = '''\
"""One-shot DDIM purification: diffuse to t_s, one deterministic DDIM step back."""
from harness.registry import Param, PluginSpec

SPECS = (PluginSpec(
    "purifier", "ddim-oneshot", "harness.purify.pipeline:build",
    params={"denoiser": Param("str", "digits-ddpm", choices=("digits-ddpm",), asset="denoiser"),
            "t_s": Param("number", 0.1, low=0.0)},
    capabilities=frozenset({"stochastic"}),
    configure=lambda p: {"rounds": [p["t_s"]], "sampler": "ddim", "steps": 1, "denoiser": p["denoiser"]},
    nfe=lambda p: 1,
    label=("t_s",),
    help="diffuse to t_s, one DDIM step back",
),)
'''

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "site-harness-plugins"
version = "0.1"

[project.entry-points."lorid_harness.plugins"]
fgsm = "site_fgsm:SPECS"
ddim-oneshot = "site_oneshot:SPECS"

[tool.setuptools]
py-modules = ["site_fgsm", "site_oneshot"]
'''

GRID = """\
sweep: site
dataset: digits
classifier: digits-cnn
purifier:
  - none
  - {name: ddim-oneshot, params: {t_s: 0.1}}
attack:
  - none
  - {name: fgsm, params: {eps: 0.3}}
examples: 8
batch_size: 8
shard_size: 8
eval_runs: 2
"""


def _install(tmp_path: Path) -> dict[str, str]:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "site_fgsm.py").write_text(FGSM)
    (pkg / "site_oneshot.py").write_text(ONESHOT)
    (pkg / "pyproject.toml").write_text(PYPROJECT)
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                        "--no-build-isolation", "--disable-pip-version-check", "--target", str(site), str(pkg)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert any(site.glob("site_harness_plugins-0.1.dist-info/entry_points.txt"))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def test_site_package_plugins_plan_run_and_report(tmp_path: Path) -> None:
    env = _install(tmp_path)
    grid = tmp_path / "site.yaml"
    grid.write_text(GRID)
    plan = harness("plan", "--grid", str(grid), "--jobs", "jobs", cwd=tmp_path, env=env)
    assert plan.returncode == 0, plan.stderr
    # the plan's cost comes from the plugins' own hooks: 1 NFE a purification
    cost = [line for line in plan.stdout.splitlines() if line.startswith("ddim-oneshot")]
    assert cost and cost[0].split()[1] == "2", plan.stdout  # 2 cells
    rows = pd.read_parquet(tmp_path / "jobs/site/plan.parquet")
    one = rows[(rows["purifier"] == "ddim-oneshot") & (rows["attack"] == "fgsm")].iloc[0]
    assert one["nfe_per_example"] == 1
    assert one["nfe_total"] == 1 * 8 * (2 * 2 + 2)  # 8 examples × (2 runs × clean/adv + the attack's 2 passes)

    run = harness("run", "--grid", str(grid), "--jobs", "jobs", "--results", "results", cwd=tmp_path, env=env,
                  timeout=600)
    assert run.returncode == 0, run.stderr
    rep = harness("report", "results/site", cwd=tmp_path, env=env)
    assert rep.returncode == 0, rep.stderr
    summary = pd.read_csv(tmp_path / "results/site/_report/report.csv")
    fgsm = summary[summary["attack_label"].str.startswith("fgsm")]
    assert set(fgsm["threat"]) == {"linf"} and set(fgsm["eps"]) == {0.3}
    assert set(fgsm["label"]) == {"none", "ddim-oneshot(t_s=0.1)"}
    # validity ran on the new attack: the bare classifier under FGSM is compared (attack-weak)
    assert "attack-weak" in rep.stdout and "validity:" in rep.stdout

    # without the package installed the same grid is refused at plan time, naming the plugin
    bare = harness("plan", "--grid", str(grid), "--jobs", "jobs2", cwd=tmp_path)
    assert bare.returncode == 2 and "ddim-oneshot" in bare.stderr and "Traceback" not in bare.stderr
