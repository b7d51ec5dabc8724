"""Shards sized to a profile's time limit: the profile's limit, its calibration (or its assumed
GPU rate) and the sweep's earlier plan make a harness.plan.ShardSizing.

A task may fill MARGIN of what the limit leaves after the pre-timeout signal, so that an
estimate that is off by a little still ends before the signal; a task that overruns anyway is
checkpointed and requeued (the profile's max_requeues) and loses nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..plan import ShardSizing, planned_shard_sizes
from .preflight import read_calibration
from .profiles import Profile

MARGIN = 0.8


def calibrated_rates(profile_path: str | Path) -> tuple[str, dict[str, float]] | None:
    """The profile's calibration (`harness calibrate`), newest device first: (device, rates)."""
    doc = read_calibration(profile_path) or {}
    devices = sorted((doc.get("devices") or {}).values(), key=lambda d: str(d.get("measured")), reverse=True)
    if not devices:
        return None
    rates = {str(k): float(v) for k, v in dict(devices[0].get("denoiser_evals_per_s") or {}).items()
             if isinstance(v, (int, float)) and v > 0}
    return str(devices[0].get("device", "?")), rates


def task_budget_s(profile: Profile) -> float:
    """Seconds one array task may plan to run under the profile."""
    return max(0.0, profile.time_min * 60 - profile.signal_delay_s) * MARGIN


def sizing_for(profile: Profile | None, jobs_dir: str | Path | None = None,
               sweep: str | None = None) -> tuple[ShardSizing | None, str]:
    """(the sizing for plans under `profile`, one line saying what it rests on); (None, why)
    where nothing gives a rate."""
    if profile is None:
        return None, "shards: the grid's shard_size (no profile, so no time limit to size them to)"
    measured = calibrated_rates(profile.path)
    rates: dict[str, Any] = measured[1] if measured else {}
    if not rates and not profile.gpu_tflops:
        return None, (f"shards: the grid's shard_size (profile {profile.name!r} has no calibration "
                      "and no gpu_tflops to estimate task times)")
    keep = planned_shard_sizes(jobs_dir, sweep) if jobs_dir is not None and sweep else {}
    budget = task_budget_s(profile)
    basis = " and ".join(x for x in (
        f"rates measured on {measured[0]}" if rates else "",
        f"{profile.gpu_tflops:g} TFLOP/s assumed" if profile.gpu_tflops else "") if x)
    line = (f"shards: sized so a task ends within {budget / 60:,.0f} min ({MARGIN:.0%} of time_min "
            f"{profile.time_min} less the {profile.signal_delay_s} s signal), from {basis}, "
            f"{profile.tasks_per_node} rank(s) a task" + (f"; {len(keep)} planned cells keep their size" if keep else ""))
    return ShardSizing(budget_s=budget, ranks=profile.tasks_per_node, rates=rates, tflops=profile.gpu_tflops,
                       where=f"profile {profile.name!r}", keep=keep), line
