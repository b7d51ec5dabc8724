"""`harness submit` / `harness status` / slurm/sweep.sh against a real one-node Slurm cluster.

The cluster comes from scripts/test.sh (HARNESS_CLUSTER_DIR, SLURM_CONF). Without it, this
module brings one up with .ci/cluster.sh and stops it afterwards; under CI (env CI set) a
missing cluster is a failure, not a skip. Every wait on a job is bounded.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, TINY_GRID, harness

PROFILES = ROOT / "slurm" / "profiles"
SWEEP_SH = ROOT / "slurm" / "sweep.sh"
GOLDEN = Path(__file__).resolve().parent / "golden"
KEY = ["cell", "example", "eval_run"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT"}

# Three rows of eight single-example batches each (~1.5 s a batch here): long enough to
# interrupt mid-row.
SLOW_GRID = """\
sweep: {sweep}
dataset: digits
classifier: digits-cnn
purifier:
  name: lorid
  params: {{t_s: 0.05, loops: 2, steps: 2}}
attack:
  name: pgd
  params: {{norm: linf, eps: 0.1, steps: 8, step_size: 0.02, eot: 4}}
examples: 24
batch_size: 1
shard_size: 8
eval_runs: 1
"""

# One row, no model work beyond the classifier: the cheapest real job.
CHEAP_GRID = """\
sweep: {sweep}
dataset: digits
classifier: digits-cnn
purifier: none
attack: none
examples: 2
batch_size: 2
shard_size: 2
"""


# ---------------------------------------------------------------- the cluster

@dataclass
class Cluster:
    state: Path
    conf: Path


def _sinfo_ok(conf: Path) -> bool:
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%t"], env={**os.environ, "SLURM_CONF": str(conf)},
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and any(s in r.stdout for s in ("idle", "mix", "alloc"))


@pytest.fixture(scope="module")
def cluster():
    """A reachable Slurm cluster with accounting; brought up here when not already (never under CI)."""
    state = Path(os.environ.get("HARNESS_CLUSTER_DIR") or "/tmp/harness-cluster")
    conf = Path(os.environ.get("SLURM_CONF") or state / "etc" / "slurm.conf")
    started = False
    if not _sinfo_ok(conf):
        if os.environ.get("CI"):
            pytest.fail(f"no Slurm cluster reachable (SLURM_CONF={conf}); under CI the cluster must be up: "
                        "run the suite through scripts/test.sh")
        script = ROOT / ".ci" / "cluster.sh"
        if shutil.which("slurmctld") is None:
            subprocess.run(["bash", str(script), "install"], check=True, timeout=600)
        r = subprocess.run(["bash", str(script), "up", str(state)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"could not bring the test cluster up:\n{r.stderr[-3000:]}"
        conf = state / "etc" / "slurm.conf"
        started = True
        assert _sinfo_ok(conf), "cluster.sh up succeeded but sinfo does not answer"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(conf))
        mp.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")
        mp.setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        mp.setenv("OMP_NUM_THREADS", "1")  # 2 cores shared by every task: no thread oversubscription
        yield Cluster(state, conf)
    if started:
        subprocess.run(["bash", str(ROOT / ".ci" / "cluster.sh"), "down", str(state)], timeout=300)


def logs_dir(tmp_path: Path) -> Path:
    d = tmp_path / "logs"  # sbatch does not create the directory of --output
    d.mkdir(exist_ok=True)
    return d


def run(*cmd: str, cwd: Path | None = None, timeout: float = 60, env: dict | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    if check:
        assert r.returncode == 0, f"{cmd}: rc {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def wait_until(pred: Callable[[], bool], timeout: float, what: str, poll: float = 0.5,
               debug: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{debug()}")


def task_states(job_ids: list[str]) -> dict[str, str]:
    from harness.launch.status import scheduler_states

    states, source = scheduler_states(job_ids)
    assert "sacct" in source, "the test cluster has accounting; sacct must answer"
    return states


def wait_tasks(tasks: list[str], timeout: float, logs: Path | None = None) -> dict[str, str]:
    """Wait until every task id (e.g. '12_3') is in a terminal state; return the states."""
    jobs = sorted({t.split("_")[0] for t in tasks})
    seen: dict[str, str] = {}

    def done() -> bool:
        seen.update(task_states(jobs))
        return all(seen.get(t) in TERMINAL for t in tasks)

    def debug() -> str:
        tail = ""
        if logs is not None:
            for f in sorted(logs.rglob("*.out"))[-3:]:
                tail += f"---- {f}\n{f.read_text()[-1500:]}\n"
        return f"states: {seen}\n{tail}"

    wait_until(done, timeout, f"tasks {tasks}", poll=1.0, debug=debug)
    return {t: seen[t] for t in tasks}


def submitted_tasks(jobs_sweep: Path) -> list[str]:
    from harness.launch.status import read_submissions, shard_tasks

    return sorted(shard_tasks(read_submissions(jobs_sweep)).values())


def result_rows(results_sweep: Path) -> pd.DataFrame:
    files = sorted(results_sweep.rglob("rank-*-part-*.parquet"))
    assert files, f"no part files under {results_sweep}"
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def predictions(results_sweep: Path) -> pd.DataFrame:
    rows = result_rows(results_sweep)
    assert not rows.duplicated(KEY).any(), rows[rows.duplicated(KEY, keep=False)][KEY]
    return rows.set_index(KEY)[["clean_pred", "adv_pred"]].sort_index()


def job_id_from(stdout: str) -> str:
    m = re.findall(r"job (\d+)$", stdout, re.M)
    assert m, stdout
    return m[-1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def status_totals(stdout: str) -> list[int]:
    """The total line of `harness status`: examples, done, running, queued, failed, missing."""
    total = next(line for line in stdout.splitlines() if line.startswith("total")).split()
    return [int(v) for v in total[1:]]


def job_info(task: str) -> dict[str, str]:
    """`scontrol show job -o` as key → value ({} once the job has left the controller, MinJobAge)."""
    r = run("scontrol", "show", "job", "-o", task, check=False)
    return dict(re.findall(r"(\w+)=(\S*)", r.stdout)) if r.returncode == 0 else {}


def sacct_instances(task: str) -> list[str]:
    """Every run of a task in accounting, oldest first (-D: requeued runs too)."""
    r = run("sacct", "-n", "-X", "-D", "-P", "-j", task, "-o", "State", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> pd.DataFrame:
    """`harness run` of the tiny grid in one process: the predictions every launcher must give."""
    d = tmp_path_factory.mktemp("baseline")
    write(d / "tiny.yaml", TINY_GRID)
    r = run(sys.executable, "-m", "harness.cli", "run", "--grid", "tiny.yaml", "--jobs", "jobs",
            "--results", "results", cwd=d, timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    return predictions(d / "results" / "tiny")


# ---------------------------------------------------------------- same predictions, every launcher

def test_submit_array_matches_harness_run(cluster: Cluster, baseline: pd.DataFrame, tmp_path: Path) -> None:
    write(tmp_path / "tiny.yaml", TINY_GRID)
    profile = str(PROFILES / "local.yaml")
    args = ("submit", "--grid", "tiny.yaml", "--profile", profile, "--jobs", "jobs", "--results", "results")
    dry = harness(*args, "--dry-run", cwd=tmp_path, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert not (tmp_path / "jobs").exists(), "a dry run writes nothing"
    script = dry.stdout.split("(max array size", 1)[1].split("\n", 1)[1]

    # Submitted on hold (an sbatch on PATH that adds --hold; Slurm 22.05 has no SBATCH_HOLD): submit
    # returning while no task can have started shows that it does not wait for the jobs, however
    # fast or slow this machine is (no wall-clock bound needed).
    shim = tmp_path / "hold-bin"
    shim.mkdir()
    real_sbatch = shutil.which("sbatch")
    assert real_sbatch, "sbatch not on PATH"
    write(shim / "sbatch", f"#!/bin/sh\nexec {shlex.quote(real_sbatch)} --hold \"$@\"\n").chmod(0o755)
    r = harness(*args, cwd=tmp_path, timeout=120, env={**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    job = job_id_from(r.stdout)
    assert "harness status" in r.stdout
    jobs_sweep = tmp_path / "jobs" / "tiny"
    try:
        held = run("squeue", "-h", "-r", "-j", job, "-o", "%i|%T|%r").stdout.split()
        assert len(held) == 8 and all(line.endswith("|PENDING|JobHeldUser") for line in held), held
        st = harness("status", str(jobs_sweep), cwd=tmp_path)
        assert st.returncode == 0, st.stderr
        assert status_totals(st.stdout) == [48, 0, 0, 48, 0, 0], st.stdout  # all queued while held
    finally:
        run("scontrol", "release", job)
    # What was submitted is exactly what the dry run printed.
    assert (jobs_sweep / "slurm" / f"{job}_submission.sh").read_text() + "\n" == script
    record = json.loads((jobs_sweep / "submissions.jsonl").read_text())
    assert record["job_id"] == job and record["rows"] == list(range(8)) and record["profile_name"] == "local"

    states = wait_tasks(submitted_tasks(jobs_sweep), 420, logs=jobs_sweep / "slurm")
    assert set(states.values()) == {"COMPLETED"}, states
    pd.testing.assert_frame_equal(predictions(tmp_path / "results" / "tiny"), baseline)

    st = harness("status", str(jobs_sweep), cwd=tmp_path)
    assert st.returncode == 0, st.stderr
    assert status_totals(st.stdout) == [48, 48, 0, 0, 0, 0], st.stdout
    st2 = harness("status", str(tmp_path / "results" / "tiny"), cwd=tmp_path)
    assert st2.returncode == 0, st2.stderr
    assert status_totals(st2.stdout) == [48, 48, 0, 0, 0, 0], st2.stdout

    again = harness(*args, cwd=tmp_path, timeout=120)
    assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stdout + again.stderr
    assert len((jobs_sweep / "submissions.jsonl").read_text().splitlines()) == 1


def test_sweep_sh_array_matches_harness_run(cluster: Cluster, baseline: pd.DataFrame, tmp_path: Path) -> None:
    write(tmp_path / "tiny.yaml", TINY_GRID)
    assert harness("plan", "--grid", "tiny.yaml", "--jobs", "jobs", cwd=tmp_path).returncode == 0
    env = {"HARNESS_PYTHON": sys.executable, "HARNESS_RESULTS": str(tmp_path / "results")}
    r = run("sbatch", "--parsable", "--array=0-7%4", "--output", str(logs_dir(tmp_path) / "%A_%a.out"),
            str(SWEEP_SH), "jobs/tiny/plan.parquet", cwd=tmp_path, env=env)
    job = r.stdout.strip().split(";")[0]
    states = wait_tasks([f"{job}_{i}" for i in range(8)], 420, logs=tmp_path / "logs")
    assert set(states.values()) == {"COMPLETED"}, states
    pd.testing.assert_frame_equal(predictions(tmp_path / "results" / "tiny"), baseline)


# ---------------------------------------------------------------- kill, requeue, resume

def _await_requeued_start(task: str, timeout: float = 150) -> bool:
    """After a requeue was asked for (by `scontrol requeue`, or by the job itself on a signal): wait
    until the task's next run has started or already ended, and say whether the task was requeued.

    A signal can also come too late to be acted on (the row had finished, the job had ended): then the
    task ends in a terminal state without a restart, and False is returned. Slurm holds a requeued job
    for ~2 minutes (BeginTime); it is released here once it has been PENDING for 2 s: an update while
    the first run is still ending does not stick, and a launch in the same second as the first run's
    end is refused ("Job credential revoked"). Nothing here depends on how fast the rows run."""
    pending_since: list[float] = []
    requeued: list[bool] = []
    seen: list[dict[str, str]] = []

    def settled() -> bool:
        info = job_info(task)
        seen[:] = [info]
        if not info:  # left the controller (MinJobAge after it ended): accounting knows
            runs = sacct_instances(task)
            if runs and runs[-1] in TERMINAL:
                requeued.append("REQUEUED" in runs)
                return True
            return False
        state, restarts = info.get("JobState", ""), int(info.get("Restarts", "0") or 0)
        if restarts == 0:
            if state in TERMINAL:  # ended before the request could act: not requeued
                requeued.append(False)
                return True
            return False  # still the first run: the signal not yet acted on
        if state == "PENDING":  # requeued and held: this run cannot start until released here
            if not pending_since:
                pending_since.append(time.monotonic())
            elif time.monotonic() - pending_since[0] >= 2:
                run("scontrol", "update", f"jobid={task}", "StartTime=now", check=False)
            return False
        if state == "RUNNING" or state in TERMINAL or (state in RUNNING_STATES and pending_since):
            # restarts >= 1 and not the first run ending (that shows as REQUEUED/PENDING/COMPLETING
            # before the hold): the run that started after the requeue, running or already ended
            requeued.append(True)
            return True
        return False  # REQUEUED, REQUEUE_HOLD, COMPLETING, ...: the first run still ending

    wait_until(settled, timeout, f"{task} requeued and started again, or ended", poll=1.0,
               debug=lambda: f"scontrol: {seen}\nsacct: {sacct_instances(task)}")
    return requeued[-1]


def _row_status(plan_rows: list[dict], results_root: Path) -> dict[int, tuple[bool, int]]:
    """Plan row → (complete the way `harness submit` decides it, examples not yet in part files)."""
    from harness.launch.slurm import row_complete
    from harness.results import done_examples, shard_dir

    out = {}
    for r in plan_rows:
        want = set(range(int(r["start"]), int(r["stop"])))
        have = done_examples(shard_dir(results_root, r["sweep"], r["cell"], int(r["shard"])))
        out[int(r["row"])] = (row_complete(r, results_root), len(want - have))
    return out


def _interrupt(cmd: list[str], row: int, plan_rows: list[dict], results_root: Path) -> bool:
    """Send an interruption; one refused because the task has already ended is fine if its row is complete."""
    r = run(*cmd, check=False)
    if r.returncode != 0:
        assert _row_status(plan_rows, results_root)[row][0], \
            f"{cmd} failed and row {row} is not complete:\n{r.stdout}\n{r.stderr}"
    return r.returncode == 0


def test_cancel_requeue_preempt_then_resume_complete_exactly_once(cluster: Cluster, tmp_path: Path) -> None:
    """Mid-row: task 0 is cancelled, task 1 requeued by `scontrol requeue`, task 2 gets the
    pre-timeout signal (USR2: submitit checkpoints ArrayTask and requeues it). `submit --resume`
    resubmits exactly the rows that are neither complete nor queued/running, which `harness status`
    taken just before shows as failed or missing (row 0, unless it finished before its cancellation
    took effect); every example ends up there once.

    How far each row gets before and after its interruption depends on the machine's speed (a row may
    finish before the signal arrives, during the cancellation's KillWait, or right after its release);
    the test accepts every such state and asserts the outcome and its consistency."""
    from harness.launch.slurm import ranges
    from harness.launch.status import ACTIVE, read_submissions, shard_key, shard_tasks

    sweep = "slow"
    write(tmp_path / "slow.yaml", SLOW_GRID.format(sweep=sweep))
    args = ("submit", "--grid", "slow.yaml", "--profile", str(PROFILES / "local.yaml"), "--jobs", "jobs",
            "--results", "results")
    r = harness(*args, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    job = job_id_from(r.stdout)
    jobs_sweep, results_root = tmp_path / "jobs" / sweep, tmp_path / "results"
    results_sweep = results_root / sweep
    plan_rows = pd.read_parquet(jobs_sweep / "plan.parquet").to_dict("records")
    assert [int(p["row"]) for p in plan_rows] == [0, 1, 2]
    tasks = [f"{job}_{k}" for k in range(3)]
    first_parts = lambda: all(any(results_sweep.glob(f"cell=*/shard={k}/rank-*-part-*.parquet"))  # noqa: E731
                              for k in range(3))
    wait_until(first_parts, 240, "a first batch of every row", debug=lambda: str(task_states([job])))
    # Normally all RUNNING; on a fast machine a row may already have finished.
    states = task_states([job])
    assert all(states.get(t) in {"RUNNING", "COMPLETING", "COMPLETED"} for t in tasks), states

    _interrupt(["scancel", tasks[0]], 0, plan_rows, results_root)
    asked1 = _interrupt(["scontrol", "requeue", tasks[1]], 1, plan_rows, results_root)
    asked2 = _interrupt(["scancel", "--signal=USR2", tasks[2]], 2, plan_rows, results_root)
    # Cancelled: COMPLETING (submitit ignores SIGTERM: it runs on for KillWait, possibly to the end of
    # the row) until it is gone, then CANCELLED; COMPLETED if it had finished before scancel.
    wait_until(lambda: task_states([job]).get(tasks[0]) in {"CANCELLED", "COMPLETED"}, 60, "task 0 ended",
               debug=lambda: str(task_states([job])))
    if task_states([job])[tasks[0]] == "COMPLETED":
        assert _row_status(plan_rows, results_root)[0][0], "task 0 COMPLETED with its row incomplete"
    requeued1 = _await_requeued_start(tasks[1]) if asked1 else False
    assert requeued1 or _row_status(plan_rows, results_root)[1][0], "task 1 neither requeued nor complete"
    requeued2 = _await_requeued_start(tasks[2]) if asked2 else False
    log2 = jobs_sweep / "slurm" / f"{tasks[2]}_0_log.out"
    if requeued2:  # the signal came while submitit's handler was installed: it checkpointed and requeued
        wait_until(lambda: "Requeued job" in log2.read_text(), 30, "submitit to log the requeue of task 2",
                   debug=lambda: log2.read_text()[-3000:])
        assert "Caught signal SIGUSR2" in log2.read_text(), log2.read_text()[-3000:]
    else:  # it came after the task had ended: only a complete row may be left so
        assert _row_status(plan_rows, results_root)[2][0], ("task 2 neither requeued nor complete",
                                                            log2.read_text()[-3000:])

    # One point in time: the rows' tasks' states, then `harness status`, then `submit --resume`.
    # Rows not active now have no process left writing them, so what they lack cannot change.
    states = task_states([job])
    inactive = {k for k in range(3) if states.get(tasks[k]) not in ACTIVE}
    assert 0 in inactive, states
    st = harness("status", str(jobs_sweep), cwd=tmp_path)
    assert st.returncode == 0, st.stderr
    before = _row_status(plan_rows, results_root)
    missing_rows = sorted(k for k in inactive if not before[k][0])
    _, _, _, _, failed, missing = status_totals(st.stdout)
    assert failed + missing == sum(before[k][1] for k in inactive), (states, before, st.stdout)
    n_subs = len((jobs_sweep / "submissions.jsonl").read_text().splitlines())

    again = harness(*args, "--resume", cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr
    after = _row_status(plan_rows, results_root)
    m = re.search(r"^3 rows: (\d+) complete, (\d+) queued or running, (\d+) to submit$", again.stdout, re.M)
    assert m, again.stdout
    n_complete, n_active, n_todo = map(int, m.groups())
    assert n_complete + n_active + n_todo == 3, again.stdout
    assert sum(c for c, _ in before.values()) <= n_complete <= sum(c for c, _ in after.values()), \
        (before, after, again.stdout)
    assert n_active <= 3 - len(inactive), (states, again.stdout)  # an active row only ends, never restarts
    assert n_todo == len(missing_rows), (missing_rows, states, before, again.stdout)
    subs = (jobs_sweep / "submissions.jsonl").read_text().splitlines()
    if missing_rows:
        assert f"plan rows {ranges(missing_rows)} (" in again.stdout, (missing_rows, again.stdout)
        assert len(subs) == n_subs + 1 and json.loads(subs[-1])["rows"] == missing_rows, subs
        st = harness("status", str(jobs_sweep), cwd=tmp_path)
        assert st.returncode == 0, st.stderr
        assert status_totals(st.stdout)[4:] == [0, 0], st.stdout  # nothing failed or missing now
    else:
        assert "nothing to submit" in again.stdout and len(subs) == n_subs, again.stdout
    latest = {k: shard_tasks(read_submissions(jobs_sweep))[shard_key(p)] for k, p in enumerate(plan_rows)}
    states = wait_tasks(sorted(latest.values()), 420, logs=jobs_sweep / "slurm")
    for k, t in latest.items():
        # The latest task of every row completed, unless it is a first-run task that was not requeued
        # and whose row was complete by then: cancelled after finishing its row within KillWait, or
        # killed by a USR2 that came after submitit had removed its handler (FAILED).
        assert states[t] == "COMPLETED" or (t in tasks and k in inactive and before[k][0]), (k, states)

    rows = result_rows(results_sweep)
    assert len(rows) == 24 and not rows.duplicated(KEY).any(), rows[KEY].value_counts()
    assert set(rows["example"]) == set(range(24))
    final = _row_status(plan_rows, results_root)
    assert all(c for c, _ in final.values()), final
    for k, t in latest.items():  # the completion marker: written by every run that completed its row
        if states[t] == "COMPLETED":
            assert next(results_sweep.glob(f"cell=*/shard={k}")).joinpath("_COMPLETE.json").is_file(), k
    st = harness("status", str(jobs_sweep), cwd=tmp_path)
    assert "complete; tables" in st.stdout and status_totals(st.stdout)[:2] == [24, 24], st.stdout
    done = harness(*args, "--resume", cwd=tmp_path, timeout=120)
    assert "nothing to submit" in done.stdout, done.stdout


def test_sweep_sh_requeues_itself_on_the_pre_timeout_signal(cluster: Cluster, tmp_path: Path) -> None:
    """slurm/sweep.sh gets USR1 in its batch shell (what `--signal=B:USR1@300` sends before the time
    limit): it stops the step, requeues the task and exits; the requeued task resumes from the part
    files already written. With HARNESS_MAX_REQUEUES=1 a second signal is not acted on and the task
    runs to completion. Every example of the row is there exactly once.

    A signal that reaches the script after its step has ended still requeues it (the next run finds
    the row complete); one that comes after the task has ended is refused by scancel. Should the row
    finish before the first signal on a fast machine, the outcome is still checked and the test is
    reported as skipped (the requeue path was not exercised)."""
    sweep = "slowsh"
    write(tmp_path / "slow.yaml", SLOW_GRID.format(sweep=sweep))
    assert harness("plan", "--grid", "slow.yaml", "--jobs", "jobs", cwd=tmp_path).returncode == 0
    results_sweep = tmp_path / "results" / sweep
    env = {"HARNESS_PYTHON": sys.executable, "HARNESS_RESULTS": str(tmp_path / "results"),
           "HARNESS_MAX_REQUEUES": "1"}
    r = run("sbatch", "--parsable", "--array=1", "--output", str(logs_dir(tmp_path) / "%A_%a.out"),
            str(SWEEP_SH), f"jobs/{sweep}/plan.parquet", cwd=tmp_path, env=env)
    job = r.stdout.strip().split(";")[0]
    task, log = f"{job}_1", tmp_path / "logs" / f"{job}_1.out"
    parts = lambda: sorted(results_sweep.glob("cell=*/shard=1/rank-*-part-*.parquet"))  # noqa: E731
    log_text = lambda: log.read_text() if log.is_file() else ""  # noqa: E731
    complete = lambda: any(results_sweep.glob("cell=*/shard=1/_COMPLETE.json"))  # noqa: E731

    wait_until(lambda: bool(parts()), 240, "a first part file of row 1",
               debug=lambda: f"{task_states([job])}\n{log_text()[-3000:]}")
    before = {p.name: p.stat().st_mtime_ns for p in parts()}
    sig1 = run("scancel", "--batch", "--signal=USR1", task, check=False)
    assert sig1.returncode == 0 or complete(), (sig1.stderr, log_text()[-3000:])
    requeued = _await_requeued_start(task, 150) if sig1.returncode == 0 else False

    if requeued:
        text = log_text()
        assert "SIGUSR1" in text and f"requeued {task};" in text, text[-3000:]  # --open-mode=append kept it
        wait_until(lambda: "REQUEUED" in sacct_instances(task), 30, f"sacct to record {task} as REQUEUED")
        # The second run: past HARNESS_MAX_REQUEUES, a signal is logged and the task runs on (or, if
        # the run has already ended, the signal is refused or finds no script: nothing to act on).
        wait_until(lambda: "restart 1" in log_text(), 60, "the requeued task's script to start", debug=log_text)
        run("scancel", "--batch", "--signal=USR1", task, check=False)
    else:
        assert "SIGUSR1" not in log_text(), log_text()[-3000:]  # not requeued, so not acted on
    states = wait_tasks([task], 300, logs=tmp_path / "logs")
    assert states == {task: "COMPLETED"}, (states, log_text()[-3000:])
    text = log_text()
    # Never requeued past the limit: one requeue at most, in the log and in accounting.
    assert text.count(f"requeued {task};") == (1 if requeued else 0), text[-3000:]
    assert sacct_instances(task).count("REQUEUED") == (1 if requeued else 0), sacct_instances(task)
    assert job_info(task).get("Restarts", "1" if requeued else "0") == ("1" if requeued else "0")
    signals = [line for line in text.splitlines() if "SIGUSR1" in line]
    assert all("not requeueing, running on" in line for line in signals[1:]), text[-3000:]

    rows = result_rows(results_sweep)
    assert not rows.duplicated(KEY).any(), rows[KEY].value_counts()
    assert sorted(rows["example"]) == list(range(8, 16)), sorted(rows["example"])
    assert complete()
    after = {p.name: p.stat().st_mtime_ns for p in parts()}
    assert all(after.get(name) == t for name, t in before.items()), "a finished part file was rewritten"
    if not requeued:
        pytest.skip("row 1 finished before USR1 reached slurm/sweep.sh: outcome checked, requeue path not "
                    "exercised on this machine")


# ---------------------------------------------------------------- dry run: the golden batch scripts

def _normalise(text: str, tmp: Path) -> str:
    text = text.replace(sys.executable, "<PYTHON>")
    text = text.replace(str(tmp), "<TMP>").replace(str(ROOT), "<REPO>")
    return re.sub(r"\(max array size \d+, [^)]*\)", "(max array size <N>)", text)


@pytest.mark.parametrize("profile", ["local", "gh200", "a100"])
def test_dry_run_matches_golden(profile: str, tmp_path: Path) -> None:
    write(tmp_path / "tiny.yaml", TINY_GRID)
    r = harness("submit", "--grid", "tiny.yaml", "--profile", str(PROFILES / f"{profile}.yaml"),
                "--jobs", "jobs", "--results", "results", "--dry-run", cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    got = _normalise(r.stdout, tmp_path)
    golden = GOLDEN / f"dry-run-{profile}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(got)
    assert golden.is_file(), f"{golden} missing; create it with UPDATE_GOLDEN=1"
    assert got == golden.read_text(), f"dry-run text changed; if intended, regenerate with UPDATE_GOLDEN=1\n{got}"
    assert not (tmp_path / "jobs").exists()


def test_dry_run_chunks_to_max_array_size(tmp_path: Path) -> None:
    write(tmp_path / "tiny.yaml", TINY_GRID)
    prof = (PROFILES / "local.yaml").read_text() + "max_array_size: 3\n"
    write(tmp_path / "p.yaml", prof)
    r = harness("submit", "--grid", "tiny.yaml", "--profile", "p.yaml", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    heads = re.findall(r"^# array job (\d)/(\d): plan rows (\S+)", r.stdout, re.M)
    assert heads == [("1", "3", "0-2"), ("2", "3", "3-5"), ("3", "3", "6-7")], r.stdout
    assert re.findall(r"--array=(\S+)", r.stdout) == ["0-2%3", "0-2%3", "0-1%2"]


# ---------------------------------------------------------------- no injection through values

def test_values_needing_quotes_cannot_inject(cluster: Cluster, tmp_path: Path) -> None:
    """Spaces, $(...), backquotes and ; in the results/jobs paths and profile values stay data."""
    write(tmp_path / "cheap.yaml", CHEAP_GRID.format(sweep="quoted"))
    prof = (PROFILES / "local.yaml").read_text().replace(
        "    OMP_NUM_THREADS", "    HARNESS_NOTE: \"a $(touch pwned-env); `touch pwned-tick` 'b\"\n    OMP_NUM_THREADS")
    write(tmp_path / "p r o f.yaml", prof)
    results = "r $(touch pwned-results); x"
    jobs = "j `touch pwned-jobs`; $HOME k"
    r = harness("submit", "--grid", "cheap.yaml", "--profile", "p r o f.yaml", "--jobs", jobs,
                "--results", results, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    jobs_sweep = tmp_path / jobs / "quoted"
    script = next((jobs_sweep / "slurm").glob("*_submission.sh")).read_text()
    assert "$(touch pwned-results)" in script and "`touch pwned-tick`" in script  # the values did reach it
    states = wait_tasks(submitted_tasks(jobs_sweep), 300, logs=jobs_sweep / "slurm")
    assert set(states.values()) == {"COMPLETED"}, states
    assert len(result_rows(tmp_path / results / "quoted")) == 2

    # The same through slurm/sweep.sh, grid form (planned once by the first task).
    env = {"HARNESS_PYTHON": sys.executable, "HARNESS_RESULTS": str(tmp_path / "s $(touch pwned-sh); y"),
           "HARNESS_JOBS": "jobs2 $(touch pwned-jobs2)"}
    write(tmp_path / "g $(touch pwned-grid).yaml", CHEAP_GRID.format(sweep="quoted2"))
    r = run("sbatch", "--parsable", "--array=0", "--output", str(logs_dir(tmp_path) / "%A_%a.out"), str(SWEEP_SH),
            "g $(touch pwned-grid).yaml", cwd=tmp_path, env=env)
    job = r.stdout.strip().split(";")[0]
    states = wait_tasks([f"{job}_0"], 300, logs=tmp_path / "logs")
    assert states == {f"{job}_0": "COMPLETED"}, (tmp_path / "logs" / f"{job}_0.out").read_text()
    assert len(result_rows(tmp_path / "s $(touch pwned-sh); y" / "quoted2")) == 2
    assert (tmp_path / "jobs2 $(touch pwned-jobs2)" / "quoted2" / "plan.parquet").is_file()

    pwned = sorted(p.name for p in tmp_path.rglob("pwned*"))
    assert pwned == [], f"shell injection: {pwned} created"


# ---------------------------------------------------------------- bad profiles

BAD_PROFILES = {
    "unknown_key": ("partitoin: debug\n", "partitoin", "allowed:"),
    "bad_partition": ("partition: 'debug; touch pwned'\n", "partition", "not allowed"),
    "ranks_not_gpus": ("gpus_per_node: 4\ntasks_per_node: 2\n", "tasks_per_node", "one rank per GPU"),
    "negative_time": ("time_min: -5\n", "time_min", "integer"),
    "signal_after_end": ("time_min: 1\nsignal_delay_s: 60\n", "signal_delay_s", "less than"),
    "bad_module": ("setup: {modules: ['cuda; touch pwned']}\n", "setup.modules", "module name"),
    "setup_unknown": ("setup: {venvv: /x}\n", "setup.venvv", "allowed: modules, venv, env, commands"),
    "env_name": ("setup: {env: {'A B': x}}\n", "setup.env", "environment variable name"),
    "not_mapping": ("- partition\n", "<root>", "not a mapping"),
    "not_yaml": ("partition: [debug\n", "<root>", "not valid YAML"),
    "python_not_list": ("python: /usr/bin/python3 -u\n", "python", "list of non-empty strings"),
    "wrong_arch": (f"arch: {'x86_64' if platform.machine() == 'aarch64' else 'aarch64'}\n", "python", "interpreter"),
}


def _squeue_ids() -> set[str]:
    return set(run("squeue", "-h", "-o", "%A").stdout.split())


@pytest.mark.parametrize("case", sorted(BAD_PROFILES))
def test_bad_profile_is_refused_naming_file_and_key(case: str, tmp_path: Path) -> None:
    from harness.launch.profiles import ProfileError, load_profile

    text, key, message = BAD_PROFILES[case]
    path = write(tmp_path / f"{case}.yaml", text)
    with pytest.raises(ProfileError) as err:
        load_profile(path).check_arch(python_given=False)
    assert err.value.exit_code == 2
    assert str(err.value).startswith(f"{path}: {key}:") and message in str(err.value), str(err.value)


@pytest.mark.parametrize("case", ["unknown_key", "bad_partition", "wrong_arch"])
def test_bad_profile_exits_2_and_submits_nothing(case: str, cluster: Cluster, tmp_path: Path) -> None:
    text, key, message = BAD_PROFILES[case]
    write(tmp_path / "cheap.yaml", CHEAP_GRID.format(sweep="badprofile"))
    write(tmp_path / f"{case}.yaml", text)
    before = _squeue_ids()
    r = harness("submit", "--grid", "cheap.yaml", "--profile", f"{case}.yaml", "--jobs", "jobs", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{case}.yaml: {key}:" in r.stderr and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "jobs").exists()
    assert not (_squeue_ids() - before), "a job was submitted"
    assert not (tmp_path / "pwned").exists()


def test_missing_profile_names_the_choices(tmp_path: Path) -> None:
    write(tmp_path / "cheap.yaml", CHEAP_GRID.format(sweep="noprofile"))
    r = harness("submit", "--grid", "cheap.yaml", "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "no cluster profile" in r.stderr and "local" in r.stderr, r.stderr
    r = harness("submit", "--grid", "cheap.yaml", "--profile", "nonesuch", "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "nonesuch" in r.stderr and "gh200" in r.stderr, r.stderr


def test_every_shipped_profile_validates() -> None:
    from harness.launch.profiles import load_profile

    for p in sorted(PROFILES.glob("*.yaml")):
        prof = load_profile(p)
        assert prof.gpus_per_node == 0 or prof.tasks_per_node == prof.gpus_per_node, p


# ---------------------------------------------------------------- status and resume logic (no jobs)

def test_sacct_parsing() -> None:
    from harness.launch.status import _parse

    out = ["7_0|COMPLETED", "7_0.batch|COMPLETED", "7_1|CANCELLED by 0", "7_[2-4,6%2]|PENDING",
           "7_5|RUNNING", "8|FAILED", "8.extern|COMPLETED"]
    assert _parse(out) == {"7_0": "COMPLETED", "7_1": "CANCELLED", "7_2": "PENDING", "7_3": "PENDING",
                           "7_4": "PENDING", "7_6": "PENDING", "7_5": "RUNNING", "8": "FAILED"}


def _fake_submission(tmp_path: Path) -> Path:
    write(tmp_path / "tiny.yaml", TINY_GRID)
    assert harness("plan", "--grid", "tiny.yaml", "--jobs", "jobs", cwd=tmp_path).returncode == 0
    jobs_sweep = tmp_path / "jobs" / "tiny"
    plan = pd.read_parquet(jobs_sweep / "plan.parquet")
    rec = {"job_id": "99999", "array": True, "rows": list(range(8)), "results": str(tmp_path / "results"),
           "shards": [f"{c}:{s}" for c, s in zip(plan["cell"], plan["shard"])],
           "profile": str(PROFILES / "local.yaml"), "profile_name": "local"}
    write(jobs_sweep / "submissions.jsonl", json.dumps(rec) + "\n")
    return jobs_sweep


def test_status_classifies_by_scheduler_state(tmp_path: Path) -> None:
    from harness.launch.status import sweep_status

    jobs_sweep = _fake_submission(tmp_path)
    states = {"99999_0": "RUNNING", "99999_1": "PENDING", "99999_2": "FAILED", "99999_3": "CANCELLED"}
    st = sweep_status(jobs_sweep, states=states)
    assert st.totals() == {"examples": 48, "done": 0, "running": 6, "queued": 6, "failed": 12, "missing": 24}


def test_status_without_sacct_or_squeue(tmp_path: Path) -> None:
    """No scheduler commands on PATH: status still reports from the files."""
    jobs_sweep = _fake_submission(tmp_path)
    r = subprocess.run([sys.executable, "-m", "harness.cli", "status", str(jobs_sweep)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PATH": str(tmp_path / "empty-bin")})
    assert r.returncode == 0, r.stderr
    total = next(line for line in r.stdout.splitlines() if line.startswith("total")).split()
    assert total[1:] == ["48", "0", "0", "0", "0", "48"], r.stdout
    assert "from none" in r.stdout


def test_resume_refuses_without_flag_and_skips_active_rows(tmp_path: Path) -> None:
    from harness.errors import UsageError
    from harness.launch.slurm import submit

    jobs_sweep = _fake_submission(tmp_path)
    states = {"99999_0": "RUNNING", "99999_1": "PENDING", "99999_2": "FAILED"}
    with pytest.raises(UsageError, match="--resume"):
        submit(tmp_path / "tiny.yaml", jobs=tmp_path / "jobs", dry_run=True, states=states, out=lambda s: None)
    lines: list[str] = []
    submit(tmp_path / "tiny.yaml", jobs=tmp_path / "jobs", dry_run=True, resume=True, states=states,
           out=lines.append)
    text = "\n".join(lines)
    assert "8 rows: 0 complete, 2 queued or running, 6 to submit" in text, text
    assert "plan rows 2-7" in text and "--array=0-5%4" in text, text
    assert "profile: local" in text  # taken from the last submission


def test_checkpoint_resubmits_the_same_call() -> None:
    from harness.launch.slurm import ArrayTask

    task = ArrayTask()
    delayed = task.checkpoint("/p/plan.parquet", 3)
    assert delayed.function is task and delayed.args == ("/p/plan.parquet", 3) and not delayed.kwargs


def test_plan_once_refuses_a_changed_grid(tmp_path: Path) -> None:
    from harness.errors import UsageError
    from harness.launch.slurm import plan_once

    g = write(tmp_path / "cheap.yaml", CHEAP_GRID.format(sweep="once"))
    p1 = plan_once(g, tmp_path / "jobs")
    assert plan_once(g, tmp_path / "jobs") == p1
    write(g, CHEAP_GRID.format(sweep="once").replace("examples: 2", "examples: 4"))
    with pytest.raises(UsageError, match="changed since"):
        plan_once(g, tmp_path / "jobs")
