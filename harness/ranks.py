"""The data-parallel world of one array task: MPI when launched by MPI, the Slurm step
environment under `srun`, else a single process. Each rank takes a disjoint slice of its
shard; per-example seeding makes the rows independent of the number of ranks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

_MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "MPI_LOCALNRANKS")


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = "single"  # single | slurm | mpi
    comm: Any = None

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def sum(self, value: int) -> int:
        """Sum over ranks (MPI); without a communicator, this rank's value."""
        if self.comm is None:
            return value
        return int(self.comm.allreduce(value))

    def configure_threads(self) -> int:
        """CPU threads for this rank (configure_threads, the cores shared by this world's ranks)."""
        return configure_threads(self.size)

    def device(self) -> str:
        """One GPU per rank by local id; CPU where there is none."""
        try:
            import torch

            if torch.cuda.is_available():
                return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        except ImportError:  # pragma: no cover
            pass
        return "cpu"


def owned_cores(ranks: int = 1) -> int:
    """The cores this process may use: the Slurm allocation per task where one is set, else the
    CPUs of its affinity mask (what taskset, cgroups' cpusets and srun's binding leave it; not
    the machine's count), shared evenly by `ranks` processes."""
    cpus = _env_int("SLURM_CPUS_PER_TASK")
    if cpus:
        return cpus
    try:
        mask = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (macOS has no affinity masks)
        mask = os.cpu_count() or 1
    return max(1, mask // max(1, ranks))


def configure_threads(ranks: int = 1) -> int:
    """Set torch's and the BLAS/OpenMP libraries' thread counts to owned_cores(ranks), unless
    OMP_NUM_THREADS says otherwise (they read it themselves); return torch's count. Serves
    `harness run` and every array task and rank.

    Without this, torch starts one thread per core of the machine: ranks sharing a node, or a
    process confined to a few cores beside other work, oversubscribe the CPUs and small
    convolutions run ten to a hundred times slower than on the cores they own.
    """
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        cores = owned_cores(ranks)
        torch.set_num_threads(cores)
        try:  # numpy's BLAS too (scikit-learn brings threadpoolctl)
            from threadpoolctl import threadpool_limits

            threadpool_limits(cores)
        except ImportError:  # pragma: no cover
            pass
    return torch.get_num_threads()


def _env_int(*names: str) -> int | None:
    for n in names:
        v = os.environ.get(n)
        if v not in (None, ""):
            return int(v)
    return None


def detect(use_mpi: bool | None = None) -> World:
    """The world this process belongs to. use_mpi=None: MPI if an MPI launcher set up the
    environment (mpirun, or srun --mpi=pmix) and mpi4py imports."""
    if use_mpi is None:
        use_mpi = any(n in os.environ for n in _MPI_ENV)
    if use_mpi:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise RuntimeError("launched under MPI but mpi4py is missing: pip install mpi4py") from exc
        comm = MPI.COMM_WORLD
        local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        return World(comm.Get_rank(), comm.Get_size(), local, "mpi", comm)
    # Under srun each task of the step has SLURM_PROCID; the batch script itself is no step
    # of several tasks, so a sbatch with --ntasks=4 running python directly stays one rank.
    size = _env_int("SLURM_STEP_NUM_TASKS")
    rank = _env_int("SLURM_PROCID")
    if size and size > 1 and rank is not None:
        return World(rank, size, _env_int("SLURM_LOCALID") or 0, "slurm")
    return World()
