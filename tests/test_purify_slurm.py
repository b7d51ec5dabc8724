"""`harness purify --profile` through the test Slurm cluster: an array purify job interrupted by
`scancel` and `scontrol requeue`, then resumed, yields every item exactly once with the same
bytes as an uninterrupted local run (fixed seed)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from conftest import harness
from test_slurm import (PROFILES, Cluster, cluster, job_id_from, run, submitted_tasks, task_states,  # noqa: F401
                        wait_tasks, wait_until)

# ~60 denoiser evaluations an item, one item a batch: a shard lasts long enough to interrupt.
PURIFY = ("--purifier", "lorid", "--params", '{"t_s": 0.2, "loops": 3, "steps": 20}', "--batch-size", "1",
          "--seed", "7")


def _digits(root: Path, n: int = 60, per_shard: int = 20) -> Path:
    from harness.data.digits import arrays
    from harness.dataset_io import write_dataset

    x, y = arrays("test")
    write_dataset(root, "webdataset", np.round(x[:n, 0] * 255).astype(np.uint8), y[:n], shard_items=per_shard)
    return root


def _files(out: Path) -> dict[str, str]:
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(out.rglob("*")) if f.is_file()}


def _keys(state: Path) -> list[str]:
    return [k for f in sorted((state / "manifests").glob("*.parquet"))
            for k in pq.read_table(f, columns=["key"]).column("key").to_pylist()]


def test_interrupted_array_purify_resumes_to_the_same_bytes(cluster: Cluster, tmp_path: Path) -> None:
    src = _digits(tmp_path / "in")
    local = harness("purify", "--input", str(src), "--output", str(tmp_path / "local"), *PURIFY, "--local",
                    cwd=tmp_path, timeout=600)
    assert local.returncode == 0, local.stderr
    args = ("purify", "--input", str(src), "--output", str(tmp_path / "out"), *PURIFY,
            "--profile", str(PROFILES / "local.yaml"))
    r = harness(*args, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "3 shards: 0 done or active, 3 to submit" in r.stdout, r.stdout
    job = job_id_from(r.stdout)
    tasks = [f"{job}_{k}" for k in range(3)]
    state = tmp_path / "out.purify"
    started = lambda k: (any((state / "staging").glob(f"shard-00000{k}.tar/rank-*-part-*.parquet"))  # noqa: E731
                         or (state / "manifests" / f"shard-00000{k}.tar.parquet").is_file())
    wait_until(lambda: started(0) and started(1), 300, "first items of shards 0 and 1 staged",
               debug=lambda: str(task_states([job])))
    run("scancel", tasks[0], check=False)
    run("scontrol", "requeue", tasks[1], check=False)
    wait_until(lambda: task_states([job]).get(tasks[0]) in {"CANCELLED", "COMPLETED"}, 120, "task 0 ended",
               debug=lambda: str(task_states([job])))
    st = harness("status", str(tmp_path / "out"), cwd=tmp_path)
    assert st.returncode == 0 and "shards:" in st.stdout and "scheduler (sacct" in st.stdout, st.stdout + st.stderr

    again = harness(*args, "--resume", cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "2 done or active, 1 to submit" in again.stdout or "3 done or active, 0 to submit" in again.stdout, \
        again.stdout  # shard 0 (cancelled) again, unless it had finished; shard 1 is requeued, not resubmitted
    wait_tasks(sorted(set(tasks[1:]) | set(submitted_tasks(state))), 600, logs=state / "slurm")
    wait_until(lambda: all((state / "manifests" / f"shard-00000{k}.tar.parquet").is_file() for k in range(3)),
               120, "every shard finished", debug=lambda: str(sorted(p.name for p in state.rglob("*"))))

    keys = _keys(state)
    assert len(keys) == 60 and len(set(keys)) == 60  # every item once
    assert _files(tmp_path / "out") == _files(tmp_path / "local")  # the same bytes, tar by tar
    assert [pq.read_table(f, columns=["output_sha256"]).column(0).to_pylist()
            for f in sorted((state / "manifests").glob("*.parquet"))] == \
        [pq.read_table(f, columns=["output_sha256"]).column(0).to_pylist()
         for f in sorted((tmp_path / "local.purify" / "manifests").glob("*.parquet"))]
    st = harness("status", str(tmp_path / "out"), cwd=tmp_path)
    assert "shards: 3/3 done" in st.stdout, st.stdout
    done = harness(*args, "--resume", cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "0 to submit" in done.stdout, done.stdout
