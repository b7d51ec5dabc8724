"""Before an array is spent: every distinct network/purifier/attack combination of a grid run
once on a tiny batch (`harness submit --preflight`), and the rates a GPU of the profile
reaches (`harness calibrate`), both as one short job on one node of the profile.

A combination is what decides whether a task can run at all: (dataset, classifier,
purifier, attack), seeds aside. The preflight runs each through the worker's own code
(harness.worker.Assets, harness.evaluate.evaluate_batch) on two examples with one
evaluation run, writing no result rows, and reports each failure with its cause.

Calibration measures, per denoiser a grid uses, denoiser evaluations per second at the
grid's batch size and precision, and per (denoiser, classifier) the exact-gradient steps
per second through purify → classify; it writes them beside the profile
(`<profile>.calibration.json`), keyed by the device name, for `harness plan` to use.
"""
from __future__ import annotations

import datetime as _dt
import json
import time
import traceback
from pathlib import Path
from typing import Any

def combinations(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One cell per distinct (dataset, classifier, purifier, attack), in grid order
    (harness.batching.combination_key)."""
    from ..batching import combination_key

    seen: dict[str, dict[str, Any]] = {}
    for cell in cells:
        seen.setdefault(combination_key(cell), cell)
    return list(seen.values())


def _label(cell: dict[str, Any]) -> str:
    from ..grid import cell_label

    return f"{cell_label(cell)} × {cell_label(cell, 'attack')} ({cell['dataset']['name']}, {cell['classifier']['name']})"


#: Attack budgets cut for the preflight: it checks that the code path runs (networks load,
#: shapes and devices match, gradients flow), not the attack's strength.
_PREFLIGHT_BUDGET = {"steps": 2, "queries": 20, "eot": 2, "n_restarts": 1}


def _shrunk(params: dict[str, Any]) -> dict[str, Any]:
    return {k: min(v, _PREFLIGHT_BUDGET[k]) if k in _PREFLIGHT_BUDGET and isinstance(v, int) else v
            for k, v in params.items()}


def check_combinations(cells: list[dict[str, Any]], assets_dir: str, pinned: dict[str, Any],
                       examples: int = 2) -> list[str]:
    """Run each cell's first ``examples`` examples once (attack, purify, classify); the
    problems, one line each (empty: every combination ran)."""
    import numpy as np

    from ..data.base import selection
    from ..evaluate import Batch, evaluate_batch
    from ..precision import to_device
    from ..ranks import detect
    from ..registry import get
    from ..worker import Assets

    world = detect(use_mpi=False)
    assets = Assets(device=world.device(), root=Path(assets_dir), pinned=pinned)
    problems = []
    for cell in cells:
        try:
            data = assets.dataset(cell["dataset"])
            idx = selection(len(data), cell["data_seed"])[:examples]
            x, y = data.take(np.asarray(idx))
            batch = Batch(list(range(len(idx))), idx.tolist(), to_device(x, assets.device), to_device(y, assets.device))
            model = assets.defended(cell)
            attack = cell["attack"]
            rows = evaluate_batch(model, batch, cell="preflight", attack_fn=get("attack", attack["name"]).load(),
                                  attack_params=_shrunk(attack["params"]), eval_runs=1, seed=cell["seed"])
            if len(rows) != len(idx):
                problems.append(f"{_label(cell)}: {len(rows)} rows for {len(idx)} examples")
        except Exception as exc:  # noqa: BLE001 (every failure is reported, with its cause)
            last = traceback.extract_tb(exc.__traceback__)[-1]
            problems.append(f"{_label(cell)}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                            f"(at {Path(last.filename).name}:{last.lineno}) on {assets.device}")
    return problems


def measure_rates(cells: list[dict[str, Any]], assets_dir: str, pinned: dict[str, Any], batch: int,
                  repeat: int = 3) -> dict[str, Any]:
    """Denoiser evaluations/s per denoiser and exact-gradient steps/s per (denoiser,
    classifier) of ``cells`` (the grid's combinations), on this node's device at each cell's
    precision; with the device's name."""
    import torch

    from ..ranks import detect
    from ..rng import ExampleNoise
    from ..worker import Assets

    world = detect(use_mpi=False)
    device = world.device()
    assets = Assets(device=device, root=Path(assets_dir), pinned=pinned)
    denoisers: dict[str, float] = {}
    steps: dict[str, float] = {}
    for cell in cells:
        value = cell["purifier"]["params"].get("denoiser")
        if not value:
            continue
        model = assets.defended(cell)
        data = assets.dataset(cell["dataset"])
        x = data.take(list(range(min(batch, len(data)))))[0].to(device)
        while x.shape[0] < batch:  # a data set smaller than the batch: repeat it
            x = torch.cat([x, x])[:batch]
        t = torch.full((batch,), 100, dtype=torch.long, device=device)
        eps = model.purifier.eps_fn
        if value not in denoisers:
            with torch.inference_mode():
                denoisers[value] = batch / best_time(lambda: eps(2 * x - 1, t), device, repeat)
        key = f"{value} | {cell['classifier']['name']}"
        if key not in steps:
            noise = ExampleNoise(list(range(batch)), device)

            def step() -> None:
                v = x.clone().requires_grad_(True)
                model(v, noise).logsumexp(1).sum().backward()

            seconds = best_time(step, device, max(1, repeat - 1))
            # per denoiser evaluation inside the step, so a plan can scale it by its NFE
            steps[key] = batch * max(1, model.purifier.nfe) / seconds
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    return {"device": name, "batch": batch, "measured": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "denoiser_evals_per_s": denoisers, "grad_evals_per_s": steps}


def best_time(fn: Any, device: str, repeat: int) -> float:
    """Best wall seconds of ``repeat`` calls of ``fn`` after one warm-up call (device-synchronised)."""
    import torch

    fn()  # warm-up (cudnn autotuning, lazy init)
    best = float("inf")
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def calibration_path(profile_path: str | Path) -> Path:
    """Where a profile's measured rates live: beside it."""
    p = Path(profile_path)
    return p.with_name(p.stem + ".calibration.json")


def read_calibration(profile_path: str | Path) -> dict[str, Any] | None:
    """The profile's calibration, or None (never measured, or unreadable: rates are assumed)."""
    from ..fsutil import read_json

    return read_json(calibration_path(profile_path))


def write_calibration(profile_path: str | Path, rates: dict[str, Any]) -> Path:
    """Merge ``rates`` (one device's) into the profile's calibration file, atomically."""
    from ..fsutil import atomic_write

    f = calibration_path(profile_path)
    doc = read_calibration(profile_path) or {"devices": {}}
    doc.setdefault("devices", {})[rates["device"]] = rates
    atomic_write(f, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    return f

