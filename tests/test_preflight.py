"""`harness submit --preflight` and `harness calibrate` against the test Slurm cluster (CPU):
each runs as one job on one node of the profile."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import harness
from harness.launch.preflight import combinations
from test_slurm import PROFILES, Cluster, cluster, write  # noqa: F401  (the cluster fixture)

GRID = """\
sweep: {sweep}
dataset: digits
classifier: {classifiers}
purifier:
  - none
  - name: lorid
    params: {{t_s: 0.05, loops: 1, steps: 2}}
attack:
  name: pgd
  params: {{norm: linf, eps: 0.1, steps: 3, step_size: 0.05, eot: 1}}
seeds: [0, 1]
examples: 4
batch_size: 2
shard_size: 4
"""


def _profile(tmp_path: Path) -> Path:
    """The local profile, copied: calibration is written beside it."""
    return Path(shutil.copy(PROFILES / "local.yaml", tmp_path / "local.yaml"))


def test_combinations_ignore_seeds(tmp_path: Path) -> None:
    from harness.grid import load_grid

    g = load_grid(write(tmp_path / "g.yaml", GRID.format(sweep="c", classifiers="digits-cnn")))
    assert len(g.cells) == 4 and len(combinations(g.cells)) == 2


def test_preflight_names_the_broken_combination_and_submits_nothing(cluster: Cluster, tmp_path: Path) -> None:
    bad = write(tmp_path / "garbage.safetensors", "not a checkpoint")
    classifiers = f"[digits-cnn, {{name: digits-cnn, params: {{path: {bad}}}}}]"
    write(tmp_path / "g.yaml", GRID.format(sweep="pre", classifiers=classifiers))
    r = harness("submit", "--grid", "g.yaml", "--profile", str(_profile(tmp_path)), "--preflight",
                cwd=tmp_path, timeout=900)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "preflight: 2 of 4 combination(s) failed" in r.stderr  # both purifiers with the bad file
    assert r.stderr.count("garbage.safetensors") >= 1 and "nothing submitted" in r.stderr
    sweep = tmp_path / "jobs" / "pre"
    assert not (sweep / "plan.parquet").exists() and not list(sweep.glob("submissions*"))


def test_calibrate_writes_rates_beside_the_profile(cluster: Cluster, tmp_path: Path) -> None:
    write(tmp_path / "g.yaml", GRID.format(sweep="cal", classifiers="digits-cnn"))
    profile = _profile(tmp_path)
    r = harness("calibrate", "--grid", "g.yaml", "--profile", str(profile), cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "local.calibration.json").read_text())
    [(device, rates)] = doc["devices"].items()
    assert device.startswith("cpu") and rates["batch"] == 2
    assert rates["denoiser_evals_per_s"]["digits-ddpm"] > 0
    assert rates["grad_evals_per_s"]["digits-ddpm | digits-cnn"] > 0
    assert "denoiser evaluations/s" in r.stdout


def test_plan_uses_measured_rates_and_names_the_unmeasured(tmp_path: Path) -> None:
    import pandas as pd

    from harness.launch.preflight import write_calibration
    from harness.plan import cost_table, load_plan

    write(tmp_path / "g.yaml", GRID.format(sweep="rates", classifiers="digits-cnn"))
    profile = _profile(tmp_path)
    write_calibration(profile, {"device": "NVIDIA H200", "batch": 2, "measured": "2026-12-01T00:00:00+00:00",
                                "torch": "x", "denoiser_evals_per_s": {"digits-ddpm": 1000.0},
                                "grad_evals_per_s": {}})
    r = harness("plan", "--grid", "g.yaml", "--profile", str(profile), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "measured on NVIDIA H200" in r.stdout
    plan = load_plan(tmp_path / "jobs" / "rates" / "plan.parquet")
    lorid = plan[plan["denoiser"] == "digits-ddpm"]
    assert len(lorid) and (plan.loc[plan["purifier"] == "none", "denoiser"] == "").all()
    hours = lorid["nfe_total"].sum() / 1000.0 / 3600
    assert f"{hours:,.2f}" in r.stdout
    other = pd.concat([plan, lorid.assign(denoiser="ddpm-cifar10-32")])
    assert "ddpm-cifar10-32: not measured" in cost_table(other, rates={"digits-ddpm": 1000.0})
