"""`harness doctor [--profile P] [--grid G]`: would a grid run here, under this profile?

One line per check, `ok`, `warn` (worth knowing, not blocking) or `PROBLEM`; exit 0 only when
there is no problem. Run it on the login node before submitting and inside an allocation
(`srun harness doctor --profile gh200 --grid G`) to check the nodes themselves; `--login`
says the GPU is checked on the nodes, not here.
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Bytes a result row takes on disk (Parquet, zstd; measured ~90-200 on the smoke sweep), with room.
BYTES_PER_ROW = 300


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | PROBLEM
    detail: str

    def line(self) -> str:
        return f"{self.status:<8} {self.name:<10} {self.detail}"


def _ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def _problem(name: str, detail: str) -> Check:
    return Check(name, "PROBLEM", detail)


def _warn(name: str, detail: str) -> Check:
    return Check(name, "warn", detail)


def _python(profile: Any, login: bool) -> Check:
    here = platform.machine()
    detail = f"Python {platform.python_version()} on {here}"
    want = getattr(profile, "arch", None)
    if not want or want == here:
        return _ok("python", detail + (f" (profile arch {want})" if want else ""))
    if login and profile.python:
        return _ok("python", f"{detail}; the nodes are {want} and the profile names their interpreter "
                             f"({' '.join(profile.python)})")
    return _problem("python", f"{detail}, but profile {profile.name!r} is for {want} nodes"
                              + ("" if login else "; run with the nodes' interpreter (the profile's `python`)"))


def _torch_and_gpu(profile: Any, login: bool, nvml: Any) -> list[Check]:
    from .devices import cuda_view, describe

    view = cuda_view(nvml)
    build = f"CUDA {view['torch_cuda']}, cuDNN {view['cudnn']}" if view["torch_cuda"] else "CPU-only build"
    out = [_ok("torch", f"torch {view['torch']} ({build})")]
    needs = getattr(profile, "device", "cpu") if profile is not None else "cpu"
    if needs != "cuda":
        out.append(_ok("gpu", f"not needed (profile device {needs})" if profile else "not needed (no profile)"))
    elif login:
        out.append(_ok("gpu", "checked on the nodes: run `srun harness doctor --profile "
                              f"{profile.name}` inside an allocation"))
        if not view["torch_cuda"]:
            out.append(_warn("torch", "this torch has no CUDA: fine on a login node if the nodes use another "
                                      "environment (the profile's setup or container)"))
    elif view["available"] and view["count"]:
        names = ", ".join(f"{d['name']} ({d['memory_gib']} GiB)" for d in view["devices"])
        out.append(_ok("gpu", f"{view['count']} visible: {names}"))
    else:
        out.append(_problem("gpu", f"profile {profile.name!r} needs CUDA and torch sees none: {describe(view)}"))
    nv = view["nvml"]
    if needs == "cuda" and not login:
        out.append(_ok("nvml", f"driver {nv['driver']}, {len(nv['gpus'])} GPU(s)") if "driver" in nv else
                   _warn("nvml", f"unavailable ({nv['error']}): no energy or utilisation in the telemetry"))
    return out


def _noise(profile: Any, login: bool) -> list[Check]:
    """The CPU noise draw: the native C call (built here on first use), or the slower numpy form."""
    if login or (profile is not None and getattr(profile, "device", "cpu") == "cuda"):
        return []  # the nodes draw on their GPUs (or build their own library on first use)
    from . import rng, rng_native

    lib = rng_native.library(rng.NUMPY_REFERENCE)
    if lib is not None:
        return [_ok("noise", f"native C draw, built for this CPU and checked: {lib._name}")]
    return [_warn("noise", f"numpy draw, the same values ~15x slower: {rng_native.status()}")]


def _mpi(profile: Any) -> list[Check]:
    out = []
    try:
        from mpi4py import MPI

        out.append(_ok("mpi4py", f"{MPI.Get_library_version().splitlines()[0].strip()}"))
    except Exception as exc:  # noqa: BLE001 (ImportError, or the MPI library fails to load)
        out.append(_warn("mpi4py", f"not usable ({type(exc).__name__}: {exc}); ranks run without a final "
                                   "MPI barrier (srun's ranks still split the shards)"))
    launcher = shutil.which("srun") or shutil.which("mpirun")
    out.append(_ok("launcher", launcher) if launcher else _warn("launcher", "neither srun nor mpirun on PATH"))
    return out


def _slurm(profile: Any) -> list[Check]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    try:
        out.append(_ok("submitit", f"submitit {version('submitit')}"))
    except PackageNotFoundError:
        out.append(_problem("submitit", "not installed: pip install submitit"))
    if profile is None:
        return out
    missing = [c for c in ("sbatch", "sacct", "scontrol", "squeue") if shutil.which(c) is None]
    out.append(_problem("slurm", f"not on PATH: {', '.join(missing)}") if missing else
               _ok("slurm", "sbatch, sacct, scontrol, squeue on PATH"))
    if not missing:
        from .launch.slurm import cluster_max_array_size

        limit = cluster_max_array_size()
        out.append(_ok("array", f"MaxArraySize {limit}") if limit else
                   _warn("array", "scontrol did not report MaxArraySize (the default 1001 is assumed)"))
    image = getattr(profile, "container", None)
    if image:
        runtime = shutil.which("apptainer") or shutil.which("singularity")
        if not Path(image).is_file():
            out.append(_problem("container", f"{image}: no such image file"))
        elif runtime is None:
            out.append(_problem("container", "apptainer (or singularity) is not on PATH"))
        else:
            out.append(_ok("container", f"{image} with {runtime}"))
    return out


def _assets(grid: Any, assets: str | None) -> list[Check]:
    if grid is None:
        return [_ok("assets", "no grid given")]
    from .catalog import assets_dir, needs, problems

    root = assets_dir(assets, grid.assets)
    bad = problems(needs(grid.representative_cells), root)
    if not bad:
        return [_ok("assets", f"{root}: every asset the grid names is staged and unchanged")]
    return [_problem("assets", line) for line in bad]


def _writable(name: str, directory: Path, need_bytes: int) -> Check:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".doctor-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        return _problem(name, f"{directory}: not writable ({exc.strerror or exc})")
    free = shutil.disk_usage(directory).free
    if need_bytes and free < need_bytes:
        return _problem(name, f"{directory}: {free / 2 ** 30:,.1f} GiB free, the grid's results need "
                              f"~{need_bytes / 2 ** 30:,.1f} GiB")
    return _ok(name, f"{directory}: writable, {free / 2 ** 30:,.1f} GiB free"
                     + (f" (results need ~{need_bytes / 2 ** 20:,.0f} MiB)" if need_bytes else ""))


def expected_result_bytes(grid: Any) -> int:
    """Rough size of a grid's result files: rows (cells × examples × eval runs) × BYTES_PER_ROW."""
    if grid is None:
        return 0
    return len(grid.table) * grid.examples * int(grid.table.settings["eval_runs"]) * BYTES_PER_ROW


def checks(profile: Any = None, grid: Any = None, results: str | Path = "results", jobs: str | Path = "jobs",
           assets: str | None = None, login: bool = False, nvml: Any = None) -> list[Check]:
    """Every check, in the order printed."""
    out = [_python(profile, login), *_torch_and_gpu(profile, login, nvml), *_noise(profile, login),
           *_mpi(profile), *_slurm(profile),
           *_assets(grid, assets),
           _writable("results", Path(results).absolute(), expected_result_bytes(grid)),
           _writable("jobs", Path(jobs).absolute(), 0)]
    return out


def run(profile: Any = None, grid: Any = None, results: str | Path = "results", jobs: str | Path = "jobs",
        assets: str | None = None, login: bool = False, nvml: Any = None, stream: Any = None) -> int:
    """Print every check; 0 when none is a problem, else 1."""
    stream = stream or sys.stdout
    found = checks(profile, grid, results, jobs, assets, login, nvml)
    for c in found:
        print(c.line(), file=stream)
    bad = [c for c in found if c.status == "PROBLEM"]
    where = f"profile {profile.name!r}" if profile is not None else "no profile"
    what = f", grid {grid.sweep!r}" if grid is not None else ""
    print(f"doctor: {len(bad)} problem(s) ({where}{what})" if bad else
          f"doctor: ready ({where}{what})", file=stream)
    return 1 if bad else 0
