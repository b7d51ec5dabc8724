"""benchmarks/attack_memory.py's measuring function runs and gives sensible numbers (no thresholds
on ratios: that is the benchmark's job, at a size where activations dominate)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "attack_memory.py"


def _bench():
    spec = importlib.util.spec_from_file_location("attack_memory", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_attack_step_memory_is_measured() -> None:
    bench = _bench()
    on = bench.measure(steps=4, loops=1, checkpoint=True, batch=8, eot=2)
    off = bench.measure(steps=4, loops=1, checkpoint=False, batch=8, eot=2)
    for r in (on, off):
        assert r["nfe"] == 4 and r["grad_finite"] and r["peak_mb"] > 0
    # Structural: without checkpointing all 4 steps' UNet activations are alive at once,
    # with it one step's (recomputed) activations are.
    assert off["peak_mb"] > on["peak_mb"]
