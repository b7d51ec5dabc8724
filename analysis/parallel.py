"""Work that holds the GIL (parsing footers into Python objects, drawing figures) spread over
forked worker processes.

Forked, not spawned: a spawned child re-runs the caller's main script (a user's analysis
script without a ``__main__`` guard would recurse), and pays every import again. The children
only run pure functions of their arguments (pyarrow footer parsing, matplotlib drawing):
glibc's malloc and Arrow's pools are reset after fork, and an open DuckDB's threads are never
touched in a child.
"""
from __future__ import annotations

from typing import Any, Callable


def forked_map(fn: Callable[[Any], Any], parts: list[Any], workers: int) -> list[Any] | None:
    """``[fn(p) for p in parts]`` computed by ``workers`` forked processes, in order; None where
    no process pool can be had here (no fork on this platform, a sandbox, no /dev/shm): the
    caller then does the work itself."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(fn, parts))
    except (OSError, BrokenProcessPool, ValueError):
        return None
