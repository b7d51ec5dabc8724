"""How many examples a worker evaluates at once, per (cell combination, device type).

Rows do not depend on the batch (harness.rng), so the batch is purely a matter of speed and
memory, found by the worker as it runs:

- It starts from what a task of the sweep already found on this device type (`FitRecord`,
  results/<sweep>/_fit/<device type>.json), else from the grid's `batch_size`, with
  checkpointing off where there is a memory gauge (a GPU: activations kept, as recomputing
  them costs +53 % per PGD step) and on where there is none (CPU).
- Out of memory, it steps back: to the last batch that fitted if it had grown past it;
  otherwise checkpointing on first, then half the batch (`BatchFit.after_oom`).
- On a device with a memory gauge (CUDA), after each full batch it grows: the batch's peak
  memory above what was allocated before it, per example, gives the largest batch that keeps
  the peak under HEADROOM of the device's usable memory (`BatchFit.after_success`). At most
  GROWTH times per step, never to a size that has run out of memory, never past the examples
  it has left, and never past a batch of BATCH_SECONDS_MAX (an in-flight batch is what a
  killed or requeued task loses). On CPU there is no gauge: the grid's batch stays.
- What fitted, and the smallest batch that did not, are merged into the FitRecord so the
  sweep's later tasks on the same device type start there.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, TypeVar

T = TypeVar("T")

HEADROOM = 0.85          # of the device's usable memory a batch's predicted peak may use
GROWTH = 4               # at most this factor per step (the memory model is linear, roughly)
BATCH_SECONDS_MAX = 600  # a batch predicted to take longer is not grown into

#: What a cell's memory, cost and ability to run do not depend on: its seeds and sizes.
_NOT_COMBINATION = ("seed", "data_seed", "eval_runs", "examples")


def combination_key(cell: dict[str, Any]) -> str:
    """The cell as a (data set, classifier, purifier, attack, precision) combination: what
    decides whether a batch fits (the worker's memory fallback) and whether it runs at all
    (the preflight), seeds aside."""
    return json.dumps({k: v for k, v in cell.items() if k not in _NOT_COMBINATION}, sort_keys=True)


def device_type(device: str) -> str:
    """What memory fits are shared by: the GPU's model (torch's name for it) or the torch device type."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index
        return torch.cuda.get_device_name(torch.cuda.current_device() if index is None else index)
    return torch.device(device).type


class MemoryGauge(Protocol):
    """A device's memory as the batch search sees it (bytes)."""

    def start(self) -> int:
        """Reset the peak; return what is allocated now (weights, data: the baseline)."""

    def peak(self) -> int:
        """The peak allocated since start()."""

    def usable(self) -> int:
        """What this process may allocate in all: free memory plus what it holds already."""


class CudaGauge:
    def __init__(self, device: str):
        import torch

        self.torch, self.device = torch, torch.device(device)

    def start(self) -> int:
        self.torch.cuda.reset_peak_memory_stats(self.device)
        return int(self.torch.cuda.memory_allocated(self.device))

    def peak(self) -> int:
        return int(self.torch.cuda.max_memory_allocated(self.device))

    def usable(self) -> int:
        free, _total = self.torch.cuda.mem_get_info(self.device)
        return int(free) + int(self.torch.cuda.memory_reserved(self.device))


def gauge_for(device: str) -> MemoryGauge | None:
    """The memory gauge of a device that has one (CUDA); None: the batch does not grow."""
    return CudaGauge(device) if str(device).startswith("cuda") else None


@dataclass
class BatchFit:
    """The batch search's state for one combination in one process."""

    batch: int
    checkpoint: bool
    fail: int | None = None   # the smallest batch known to run out of memory at this checkpointing
    good: int | None = None   # the largest batch that has fitted at this checkpointing

    def after_oom(self) -> bool:
        """Step back after `batch` ran out of memory; False if there is nothing left to try."""
        self.fail = self.batch if self.fail is None else min(self.fail, self.batch)
        if self.good is not None and self.good < self.batch:
            self.batch = self.good            # grown too far: back to what fitted
        elif not self.checkpoint:
            self.checkpoint = True            # keep no activations; what failed without may fit
            self.fail = self.good = None
        elif self.batch > 1:
            self.batch //= 2
        else:
            return False
        return True

    def after_success(self, done: int, *, baseline: int, peak: int, usable: int, seconds: float,
                      left: int) -> bool:
        """Record a batch of `done` examples that fitted; grow `batch` for the next one from its
        memory per example. Returns whether the batch changed."""
        self.good = max(self.good or 0, done)
        if done < self.batch or left <= self.batch:
            return False  # a short last batch says less; nothing more to grow into
        per_example = max(1, peak - baseline) / done
        target = int((usable * HEADROOM - baseline) / per_example)
        if seconds > 0:
            target = min(target, int(BATCH_SECONDS_MAX / (seconds / done)))
        target = min(target, self.batch * GROWTH, left)
        if self.fail is not None:
            target = min(target, self.fail - 1)
        if target >= 16:
            target -= target % 8  # whole tensor-core tiles
        if target <= self.batch:
            return False
        self.batch = target
        return True


def start_fit(record: "FitRecord", cell: dict[str, Any], batch_size: int, gauge: MemoryGauge | None,
              device: str, cache: dict[str, Any], gradients: bool = True) -> BatchFit:
    """Where a loop's batch search starts: this process's fit for the combination on `device`
    (kept in `cache`), else the record's, else the asked `batch_size` (checkpointing off where
    a gauge can watch memory). Without a gauge, never more than `batch_size`. gradients=False
    (purification alone, under inference_mode): no activations are kept to begin with, so out
    of memory halves at once."""
    key = f"fit:{device}:{combination_key(cell)}"
    fit = cache.get(key) or record.get(cell) or BatchFit(batch_size, gauge is None or not gradients)
    if gauge is None:
        fit.batch = min(fit.batch, batch_size)
    cache[key] = fit
    return fit


def run_batches(todo: Sequence[T], step: Callable[[Sequence[T]], None], fit: BatchFit, *,
                gauge: MemoryGauge | None, record: "FitRecord", cell: dict[str, Any], device: str,
                on_checkpoint: Callable[[bool], None] = lambda on: None) -> None:
    """Call `step` on successive batches of `todo` of fit.batch items until every item is done,
    growing and stepping back as the module says. `step` must leave nothing behind when it
    raises (the evaluation loop writes a batch's rows only once they are all computed)."""
    import torch

    i = 0
    while i < len(todo):
        chunk = todo[i:i + fit.batch]
        baseline = gauge.start() if gauge is not None else 0
        started = time.perf_counter()
        try:
            step(chunk)
        except torch.OutOfMemoryError:
            if not fit.after_oom():
                raise
            retry = True
        else:
            retry = False
        if retry:
            # Outside the except clause the traceback no longer holds the failed batch's frames:
            # its tensors are freed before the cache is emptied and the retry starts.
            on_checkpoint(fit.checkpoint)
            record.put(cell, fit)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            print(f"harness: out of memory on {device} at {len(chunk)} items; retrying with batch {fit.batch}, "
                  f"checkpointing {'on' if fit.checkpoint else 'off'}", file=sys.stderr)
            continue
        i += len(chunk)
        if gauge is None:
            continue
        good, peak = fit.good, gauge.peak()
        grew = fit.after_success(len(chunk), baseline=baseline, peak=peak, usable=gauge.usable(),
                                 seconds=time.perf_counter() - started, left=len(todo) - i)
        if fit.good != good:
            record.put(cell, fit)
        if grew:
            print(f"harness: {len(chunk)} items peaked at {peak / 2**30:.2f} GiB on {device}; "
                  f"batch grows to {fit.batch}", file=sys.stderr)


class FitRecord:
    """What fitted each combination on one device type: <results>/<sweep>/_fit/<device type>.json,
    {key: {batch, checkpoint, fail, combination}}, merged under a lock and replaced atomically
    (tasks of the sweep on other nodes read and extend it)."""

    def __init__(self, sweep_dir: Path, device: str):
        from .fsutil import safe_name

        self.path = sweep_dir / "_fit" / (safe_name(device_type(device)) + ".json")

    @staticmethod
    def _key(cell: dict[str, Any]) -> str:
        return hashlib.sha256(combination_key(cell).encode()).hexdigest()[:16]

    def _read(self) -> dict[str, Any]:
        from .fsutil import read_json

        return read_json(self.path) or {}  # none yet, or unreadable: the search finds the fit again

    def get(self, cell: dict[str, Any]) -> BatchFit | None:
        entry = self._read().get(self._key(cell))
        try:
            batch, checkpoint = int(entry["batch"]), bool(entry["checkpoint"])
            fail = int(entry["fail"]) if entry.get("fail") is not None else None
        except (KeyError, TypeError, ValueError):
            return None
        return BatchFit(batch, checkpoint, fail, batch) if batch >= 1 else None

    def put(self, cell: dict[str, Any], fit: BatchFit) -> None:
        """Merge `fit`: a failure bound lowers the recorded batch below it; a larger batch that
        fitted raises it (at the same checkpointing, or with checkpointing newly off)."""
        from .fsutil import atomic_write, file_lock

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with file_lock(self.path.with_suffix(".lock"), wait=True):
                doc = self._read()
                old = doc.get(self._key(cell)) or {}
                new = _merge(old, fit)
                if new == old:
                    return
                doc[self._key(cell)] = {**new, "combination": json.loads(combination_key(cell))}
                atomic_write(self.path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
        except OSError as exc:  # a record we cannot write costs a search later, never the rows
            print(f"harness: could not record the batch that fits in {self.path}: {exc}", file=sys.stderr)


def _merge(old: dict[str, Any], fit: BatchFit) -> dict[str, Any]:
    """The record after `fit`'s news. Checkpointing on wins over off (some task ran out of memory
    without it even at its smallest batch); at the same checkpointing the smallest failure bound
    holds, and the largest batch below it that fitted."""
    mine = {"batch": fit.good if fit.good is not None else fit.batch, "checkpoint": fit.checkpoint,
            "fail": fit.fail}
    try:
        theirs = {"batch": int(old["batch"]), "checkpoint": bool(old["checkpoint"]),
                  "fail": int(old["fail"]) if old.get("fail") is not None else None}
    except (KeyError, TypeError, ValueError):
        return mine
    if theirs["checkpoint"] != mine["checkpoint"]:
        return mine if mine["checkpoint"] else theirs
    fails = [f for f in (theirs["fail"], mine["fail"]) if f is not None]
    fail = min(fails) if fails else None
    fitted = [b for b in (theirs["batch"], mine["batch"]) if fail is None or b < fail]
    batch = max(fitted) if fitted else max(1, fail // 2)  # type: ignore[operator]
    return {"batch": batch, "checkpoint": mine["checkpoint"], "fail": fail}
