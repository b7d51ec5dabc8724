"""The plan: shard ranges, cost estimate, atomic write, reuse and refusal."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import registry
from harness.errors import UsageError
from harness.grid import Grid, load_grid
from harness.plan import (COLUMNS, T, human, load_plan, make_plan, nfe_per_purification, summary,
                          write_plan)

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "grids" / "smoke.yaml"


def make_grid(tmp_path: Path, name: str = "g.yaml", **over: Any) -> Grid:
    raw = {"sweep": "t", "dataset": "digits", "classifier": "digits-cnn",
           "purifier": ["none", "lorid"], "attack": "none", "examples": 100, "shard_size": 30}
    raw.update(over)
    path = tmp_path / name
    path.write_text("# provenance keeps comments\n" + yaml.safe_dump(raw))
    return load_grid(path)


def pur(name: str, **params: Any) -> dict[str, Any]:
    return {"name": name, "params": params}


# ---------------------------------------------------------------- rows

def test_shard_ranges(tmp_path: Path) -> None:
    df = make_plan(make_grid(tmp_path))
    assert list(df.columns) == list(COLUMNS)
    assert list(df["row"]) == list(range(8))
    one = df[df["purifier"] == "none"]
    assert list(zip(one["shard"], one["start"], one["stop"])) == \
        [(0, 0, 30), (1, 30, 60), (2, 60, 90), (3, 90, 100)]
    assert df["cell"].nunique() == 2 and set(df["sweep"]) == {"t"}


def test_smoke_plan() -> None:
    df = make_plan(load_grid(SMOKE))
    assert len(df) == 21  # 21 cells, 100 examples in one shard of 100
    assert summary(df).startswith("21 cells × 100 examples = 2100 cell-examples in 21 shards")


def test_row_carries_cell(tmp_path: Path) -> None:
    import json

    g = make_grid(tmp_path)
    df = make_plan(g)
    assert json.loads(df["cell_json"][0]) == g.cells[0]
    assert df["label"].tolist()[-1] == "lorid(t_s=0.1,loops=3)" and df["batch_size"][0] == 64


# ---------------------------------------------------------------- cost estimate

@pytest.mark.parametrize("purifier, nfe", [
    (pur("none"), 0),
    (pur("tucker", tucker_rank=0.5), 0),
    (pur("lorid", t_s=0.1, loops=3, steps=0), 300),   # 0.1 × T = 100 steps per round
    (pur("lorid", t_s=0.1, loops=3, steps=5), 15),
    (pur("lorid", t_s=30, loops=2, steps=50), 60),    # respacing never adds steps
    (pur("diffpure", t_s=0.3, steps=0), 300),
    (pur("diffpure", t_s=100, steps=10), 10),
    (pur("multistep", schedule=[30, 0.05], steps=0), 80),
    (pur("multistep", schedule=[30, 0.05], steps=10), 20),
])
def test_nfe_per_purification(purifier: dict[str, Any], nfe: int) -> None:
    assert T == 1000
    assert nfe_per_purification(purifier) == nfe


def test_nfe_total(tmp_path: Path) -> None:
    g = make_grid(tmp_path, purifier={"name": "lorid", "params": {"steps": 5}}, eval_runs=3,
                  attack=[{"name": "pgd", "params": {"eps": 0.1, "step_size": 0.01, "steps": 20,
                                                     "eot": 4, "gradient": g}}
                          for g in ("exact", "greybox")] + ["none"])
    df = make_plan(g)
    last = df[df["shard"] == 3].set_index("attack_label")["nfe_total"]  # 10 examples
    # 15 NFE/example × 10 examples × (3 runs × 2 + 20 steps × 4 EOT × 2 for exact gradients)
    assert last["pgd(norm=linf,eps=0.1,steps=20,step_size=0.01,eot=4)"] == 15 * 10 * (6 + 160)
    assert last["pgd(norm=linf,eps=0.1,steps=20,step_size=0.01,eot=4,gradient=greybox)"] == 15 * 10 * 6
    assert last["none"] == 15 * 10 * 6


def test_human() -> None:
    assert (human(999), human(1234), human(1_234_567), human(2.5e9), human(0.0434), human(0), human(99.96)) == \
        ("999", "1.2 k", "1.2 M", "2.5 G", "0.0434", "0", "100")


# ---------------------------------------------------------------- write

def test_write_plan(tmp_path: Path) -> None:
    g = make_grid(tmp_path)
    path = write_plan(g, tmp_path / "jobs")
    assert path == tmp_path / "jobs" / "t" / "plan.parquet"
    assert (path.parent / "grid.yaml").read_bytes() == (tmp_path / "g.yaml").read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.yaml", "plan.parquet"]
    assert load_plan(path).equals(make_plan(g))


def test_identical_plan_reused(tmp_path: Path) -> None:
    path = write_plan(make_grid(tmp_path), tmp_path / "jobs")
    before = path.stat()
    again = write_plan(make_grid(tmp_path), tmp_path / "jobs")
    after = again.stat()
    assert again == path and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_more_examples_same_cells_replaces(tmp_path: Path) -> None:
    path = write_plan(make_grid(tmp_path), tmp_path / "jobs")
    write_plan(make_grid(tmp_path, examples=200), tmp_path / "jobs")
    assert load_plan(path)["stop"].max() == 200


def test_different_grid_refused(tmp_path: Path) -> None:
    path = write_plan(make_grid(tmp_path), tmp_path / "jobs")
    old = path.read_bytes()
    other = make_grid(tmp_path, name="other.yaml", purifier="tucker")
    with pytest.raises(UsageError, match="taken by a different grid.*overwrite=True"):
        write_plan(other, tmp_path / "jobs")
    assert path.read_bytes() == old
    write_plan(other, tmp_path / "jobs", overwrite=True)
    assert set(load_plan(path)["purifier"]) == {"tucker"}
    assert (path.parent / "grid.yaml").read_bytes() == (tmp_path / "other.yaml").read_bytes()


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_plan(make_grid(tmp_path), tmp_path / "jobs")
    old = path.read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_plan(make_grid(tmp_path, examples=200), tmp_path / "jobs")
    assert path.read_bytes() == old
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.yaml", "plan.parquet"]


def test_load_plan_missing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no plan"):
        load_plan(tmp_path / "plan.parquet")


def test_no_torch_import() -> None:
    code = "import sys, harness.plan; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_attack_passes_per_attack_family() -> None:
    from harness.plan import attack_passes

    def a(name: str, **p) -> dict:
        return {"name": name, "params": registry.get("attack", name).resolve(p, "g", "attack")}

    assert attack_passes(a("pgd", eps=0.1, step_size=0.01, steps=10, eot=4)) == 80
    assert attack_passes(a("pgd", eps=0.1, step_size=0.01, steps=10, eot=4, gradient="greybox")) == 0
    assert attack_passes(a("bpda", eps=0.1, step_size=0.01, steps=10, eot=4)) == 40
    assert attack_passes(a("square", eps=0.1, queries=500)) == 500
    rand = a("autoattack", version="rand", eps=0.1, steps=10)
    assert attack_passes(rand) == 10 * 20 * 2 * 2
    assert attack_passes(a("autoattack", version="custom", attacks=["apgd-ce"], eps=0.1, steps=10, eot=2)) == 40
