"""harness.batching: the batch grows to what the device's memory holds, steps back when it runs
out, and what it found is kept per device type for the sweep's later tasks.

No GPU here: the device is simulated where only a GPU can answer (its memory gauge and its
out-of-memory error), around the real worker, real attacks and real Parquet rows. The memory a
batch takes is a function of its size that the fake device applies both to what the gauge
reports and to when it runs out."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import harness.evaluate as evaluate
import harness.worker as worker
from analysis.aggregate import load_results
from harness.batching import HEADROOM, BatchFit, FitRecord, _merge
from harness.grid import load_grid
from harness.plan import make_plan
from harness.worker import Assets, run_row

GRID = """\
sweep: grow
dataset: digits
classifier: digits-cnn
purifier:
  - name: lorid
    params: {t_s: 0.05, loops: 1, steps: 2}
attack:
  - name: pgd
    params: {norm: linf, eps: 0.1, steps: 1, step_size: 0.05, eot: 1}
examples: 64
batch_size: 4
shard_size: 64
eval_runs: 1
"""
BASE = 1000  # bytes allocated before a batch (weights, data)


class FakeDevice:
    """A GPU as the worker sees it: a batch of n examples peaks at BASE + cost(n) bytes, and runs
    out of memory above `capacity`; the gauge reports that peak, and `usable` (which a device
    shared with another process may over-state)."""

    def __init__(self, cost, capacity: int, usable: int | None = None):
        self.cost, self.capacity = cost, capacity
        self.reported_usable = usable if usable is not None else capacity
        self.last_peak = BASE
        self.sizes: list[tuple[int, bool]] = []

    # the gauge
    def start(self) -> int:
        self.last_peak = BASE
        return BASE

    def peak(self) -> int:
        return self.last_peak

    def usable(self) -> int:
        return self.reported_usable

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = evaluate.evaluate_batch

        def on_device(model, batch, **kw):
            n, ckpt = len(batch.examples), bool(model.purifier.checkpoint)
            self.sizes.append((n, ckpt))
            need = BASE + self.cost(n) // (3 if ckpt else 1)
            if need > self.capacity:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            self.last_peak = need
            return real(model, batch, **kw)

        monkeypatch.setattr(evaluate, "evaluate_batch", on_device)
        monkeypatch.setattr(worker, "gauge_for", lambda device: self)


@pytest.fixture
def row(tmp_path: Path) -> dict:
    grid = tmp_path / "grow.yaml"
    grid.write_text(GRID)
    plan = make_plan(load_grid(grid))
    assert len(plan) == 1
    return plan.iloc[0].to_dict()


def _rows(path: Path):
    keep = ["cell", "example", "eval_run", "clean_pred", "adv_pred", "perturbation"]
    return load_results(path)[keep].sort_values(["example", "eval_run"]).reset_index(drop=True)


def test_batch_grows_to_what_memory_holds(row: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = run_row(row, tmp_path / "plain", Assets())  # CPU: no gauge, the grid's batch of 4
    dev = FakeDevice(lambda n: 100 * n, capacity=BASE + 100 * 40)
    dev.install(monkeypatch)
    assets = Assets()
    assert run_row(row, tmp_path / "grown", assets) == plain == 64
    sizes = [n for n, _ in dev.sizes]
    # 4 -> x4 -> the largest multiple of 8 whose peak stays under HEADROOM of the memory
    limit = int((dev.capacity * HEADROOM - BASE) / 100)
    assert sizes[:3] == [4, 16, limit - limit % 8] and sum(sizes) == 64, sizes
    assert all(not ckpt for _, ckpt in dev.sizes)  # activations kept throughout: they fit
    assert _rows(tmp_path / "plain").equals(_rows(tmp_path / "grown"))
    # kept for the sweep's later tasks on this device type
    fit = json.loads((tmp_path / "grown" / "grow" / "_fit" / "cpu.json").read_text())
    (entry,) = fit.values()
    assert (entry["batch"], entry["checkpoint"], entry["fail"]) == (sizes[2], False, None)
    again = tmp_path / "again"
    (again / "grow" / "_fit").mkdir(parents=True)
    (again / "grow" / "_fit" / "cpu.json").write_text(json.dumps(fit))
    dev.sizes.clear()
    assert run_row(row, again, Assets()) == 64
    assert dev.sizes[0] == (sizes[2], False)  # starts where the last task got to


def test_out_of_memory_while_growing_steps_back_without_checkpointing(
        row: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gauge over-states the memory (another process holds some): growth overshoots, runs out,
    goes back to the last batch that fitted, and never again tries the size that failed."""
    plain = run_row(row, tmp_path / "plain", Assets())
    dev = FakeDevice(lambda n: 100 * n, capacity=BASE + 100 * 30, usable=BASE + 100 * 200)
    dev.install(monkeypatch)
    assert run_row(row, tmp_path / "oom", Assets()) == plain
    sizes = [n for n, _ in dev.sizes]
    failed = [n for n in sizes if BASE + 100 * n > dev.capacity]
    assert failed and sizes[0] == 4 and max(sizes) == failed[0], sizes
    after = sizes[sizes.index(failed[0]) + 1:]
    assert after and all(n < failed[0] for n in after)
    assert after[0] == sizes[sizes.index(failed[0]) - 1]  # back to what fitted
    assert all(not ckpt for _, ckpt in dev.sizes)
    assert _rows(tmp_path / "plain").equals(_rows(tmp_path / "oom"))
    (entry,) = json.loads((tmp_path / "oom" / "grow" / "_fit" / "cpu.json").read_text()).values()
    assert entry["fail"] == failed[0] and entry["batch"] < failed[0] and not entry["checkpoint"]


def test_no_growth_without_a_gauge(row: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU (no memory gauge) the grid's batch is the most, even where a record says more."""
    seen: list[int] = []
    real = evaluate.evaluate_batch
    monkeypatch.setattr(evaluate, "evaluate_batch", lambda m, b, **kw: seen.append(len(b.examples)) or real(m, b, **kw))
    (tmp_path / "r" / "grow" / "_fit").mkdir(parents=True)
    assets = Assets()
    FitRecord(tmp_path / "r" / "grow", "cpu").put(json.loads(row["cell_json"]), BatchFit(32, True, None, 32))
    assert run_row(row, tmp_path / "r", assets) == 64
    assert set(seen) == {4}


def test_after_success_respects_time_examples_left_and_failures() -> None:
    fit = BatchFit(8, False)
    # memory would allow 10,000 a batch; the batch took 60 s for 8 examples -> 80 fit in 600 s
    assert fit.after_success(8, baseline=0, peak=8, usable=10_000, seconds=60.0, left=1000)
    assert fit.batch == 32  # x4 at most per step
    assert fit.after_success(32, baseline=0, peak=32, usable=10_000, seconds=240.0, left=1000)
    assert fit.batch == 80  # the time cap: 600 s / 7.5 s an example
    fit = BatchFit(8, False, fail=20)
    assert fit.after_success(8, baseline=0, peak=8, usable=10_000, seconds=0.0, left=1000)
    assert fit.batch == 16  # below the failure (19, then whole tiles of 8)
    assert not BatchFit(8, False).after_success(5, baseline=0, peak=5, usable=10_000, seconds=0.0, left=1000)
    assert not BatchFit(8, False).after_success(8, baseline=0, peak=8, usable=10_000, seconds=0.0, left=8)


def test_after_oom_order() -> None:
    fit = BatchFit(64, False, good=16)
    assert fit.after_oom() and (fit.batch, fit.checkpoint, fit.fail) == (16, False, 64)
    fit = BatchFit(16, False)
    assert fit.after_oom() and (fit.batch, fit.checkpoint, fit.fail) == (16, True, None)
    assert fit.after_oom() and (fit.batch, fit.checkpoint, fit.fail) == (8, True, 16)
    fit = BatchFit(1, True)
    assert not fit.after_oom()


def test_record_merge() -> None:
    def rec(batch: int, ckpt: bool, fail: int | None = None) -> dict:
        return {"batch": batch, "checkpoint": ckpt, "fail": fail}

    assert _merge({}, BatchFit(8, False, None, 8)) == rec(8, False)
    assert _merge(rec(8, False), BatchFit(32, False, None, 32)) == rec(32, False)  # a larger fit raises it
    assert _merge(rec(32, False), BatchFit(16, False, 24, 16)) == rec(16, False, 24)  # a failure bounds it
    assert _merge(rec(16, False, 24), BatchFit(64, False, None, 64)) == rec(16, False, 24)
    assert _merge(rec(64, False), BatchFit(8, True, None)) == rec(8, True)  # checkpointing on wins
    assert _merge(rec(8, True), BatchFit(64, False, None, 64)) == rec(8, True)
    assert _merge(rec(4, True, 8), BatchFit(2, True, 4)) == rec(2, True, 4)


def test_purify_job_steps_back_out_of_memory_and_grows_on_a_gauge(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`harness purify`'s shards use the same search: out of memory halves at once (no gradients,
    so no checkpointing to turn on); with a gauge the batch grows; the output bytes are those of
    a run that never ran out."""
    import numpy as np

    import harness.purify_job as pj
    from harness.data.digits import arrays
    from harness.dataset_io import write_dataset

    x, y = arrays("test")
    u8 = np.round(x[:40, 0] * 255).astype(np.uint8)[..., None]
    write_dataset(tmp_path / "in", "folder", u8, y[:40])

    def run(name: str) -> dict[str, bytes]:
        job = pj.make_job({"input": str(tmp_path / "in"), "output": str(tmp_path / name),
                           "purifier": {"name": "lorid", "params": {"t_s": 0.05, "loops": 1, "steps": 2}},
                           "batch_size": 8})
        plan = pj.plan_job(job)
        net = pj.Purifier.load(plan, "cpu")
        for i in range(len(plan["shards"])):
            pj.run_shard(plan, i, net)
        return {str(p.relative_to(tmp_path / name)): p.read_bytes()
                for p in sorted((tmp_path / name).rglob("*")) if p.is_file()}

    plain = run("plain")
    real = pj._purify_group
    seen: list[int] = []

    def tight(net, plan, items):  # holds 3 items at most
        seen.append(len(items))
        if len(items) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(net, plan, items)

    monkeypatch.setattr(pj, "_purify_group", tight)
    monkeypatch.setattr(pj, "_FITS", {})
    assert run("tight") == plain
    assert seen[:3] == [8, 4, 2] and set(seen[3:]) <= {2}, seen  # 8 -> 4 -> 2, then 2 throughout
    (entry,) = json.loads((tmp_path / "tight.purify" / "_fit" / "cpu.json").read_text()).values()
    assert (entry["batch"], entry["fail"]) == (2, 4)

    dev = FakeDevice(lambda n: 100 * n, capacity=BASE + 100 * 1000)
    seen.clear()
    monkeypatch.setattr(pj, "_FITS", {})
    monkeypatch.setattr(pj, "_purify_group", lambda net, plan, items: seen.append(len(items)) or real(net, plan, items))
    monkeypatch.setattr(pj, "gauge_for", lambda device: dev)
    assert run("grown") == plain
    assert seen[:2] == [8, 32], seen  # x4 after the first batch
