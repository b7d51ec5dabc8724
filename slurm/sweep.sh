#!/bin/bash
# slurm/sweep.sh: run the rows of a harness plan as a plain Slurm job array (no submitit).
#
#   harness plan --grid grids/smoke.yaml                     # once; prints the number of shards (rows)
#   sbatch --array=0-<rows-1> slurm/sweep.sh jobs/smoke/plan.parquet
#   harness status jobs/smoke                                # done / missing examples per cell
#
# Array task N runs plan row N:  srun python -m harness.launch.task --plan PLAN --row N
# on every task of the allocation (one rank per task; ranks split the row's examples).
# A task that is killed, requeued or rerun resumes from the files already written, so
# resubmitting the same --array range (or only the failed indices) completes the sweep
# without duplicating a row. `harness submit --dry-run --grid G` prints the row range.
#
# The argument may also be a grid file (*.yaml / *.yml): then each task plans it with
# `python -m harness.launch.slurm --plan-once GRID`; the first task writes jobs/<sweep>/plan.parquet
# under a lock, the others reuse it and refuse to run if the grid file has changed since
# (row numbers would change meaning). Planning once beforehand with `harness plan` is simpler.
#
# The #SBATCH lines below are defaults; anything on the sbatch command line overrides them,
# e.g. sbatch --array=0-99%8 --partition=gpu --gpus-per-node=4 --ntasks-per-node=4 \
#            --time=240 --output='logs/%A_%a.out' slurm/sweep.sh jobs/smoke/plan.parquet
#   --array          which plan rows (required; %N caps how many run at once)
#   --job-name       the name squeue shows
#   --time           minutes per task: one row must fit (see the plan's NFE estimate)
#   --ntasks-per-node, --gpus-per-node   ranks per task: one rank per GPU
#   --cpus-per-task, --mem               per rank / per node
#   --output         log file per array task (%A = array job id, %a = task index); opened with
#                    --open-mode=append, so a requeued task's log keeps its earlier runs
#   --signal         B:USR1@300 by default: Slurm sends USR1 to this script about 300 s (give or
#                    take up to a minute) before the time limit. The script then stops the srun
#                    step (srun kills the ranks; every part file already written is complete, only
#                    the batch in progress is lost), requeues this task with `scontrol requeue` and
#                    exits 0; the requeued task resumes from its files. Make the offset longer than
#                    one batch takes; --signal=B:USR1@600 to change it. Keep the B: (batch shell only).
#   --requeue        on by default, and needed for the above (and for Slurm's own requeue after a
#                    node failure or preemption); with --no-requeue a timed-out task is not requeued
#                    and fails: resubmit its index, it resumes
#   Requeues are bounded: a task restarted HARNESS_MAX_REQUEUES times (SLURM_RESTART_COUNT) is not
#   requeued again; it runs on and may finish, or ends in TIMEOUT. A requeued task waits until
#   Slurm's requeue hold (BeginTime, about 2 minutes here) has passed; `scontrol update
#   JobId=<job>_<task> StartTime=now` releases it at once.
#   SIGTERM while the task is still RUNNING (a preemption grace period, PreemptMode=CANCEL with
#   GraceTime) is handled like USR1. SIGTERM from scancel, the time limit or Slurm's own requeue
#   (the job is already COMPLETING then) is not: the step is stopped and the script exits 143.
#
# Environment (read when the task starts; sbatch passes your environment by default):
#   HARNESS_PYTHON     interpreter with harness installed (default: python3 on PATH, so activate
#                      the venv before sbatch or set this); a single path, never word-split
#   HARNESS_SETUP      a file sourced before anything runs (module loads, venv activation, env);
#                      it is shell code you wrote, run as is
#   HARNESS_RESULTS    results directory (default: results/ beside the plan's jobs/ directory)
#   HARNESS_JOBS       jobs directory for the grid form (default: jobs, relative to the submit dir)
#   HARNESS_ASSETS     asset directory that `asset:<name>` grid values resolve against, for the grid
#                      form (default: the grid's `assets:`, else ./assets); a plan written by
#                      `harness plan --assets DIR` carries its own
#   HARNESS_SRUN_ARGS  extra srun arguments, split on white space only (no globbing, no
#                      expansion), e.g. "--mpi=pmix --cpu-bind=cores"
#   HARNESS_MAX_REQUEUES  how many times the script requeues a task itself before the time limit
#                      (default 5; 0: never); compared with SLURM_RESTART_COUNT, which counts
#                      every requeue of the task
#
#SBATCH --job-name=harness-sweep
#SBATCH --time=60
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --output=slurm-%A_%a.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: sbatch --array=0-N slurm/sweep.sh jobs/<sweep>/plan.parquet | GRID.yaml" >&2
    exit 2
fi
if [[ -z ${SLURM_ARRAY_TASK_ID:-} ]]; then
    echo "sweep.sh: SLURM_ARRAY_TASK_ID is not set; submit with sbatch --array=..." >&2
    exit 2
fi

MAX_REQUEUES=${HARNESS_MAX_REQUEUES:-5}
if [[ ! $MAX_REQUEUES =~ ^[0-9]+$ ]]; then
    echo "sweep.sh: HARNESS_MAX_REQUEUES must be a whole number, not '${MAX_REQUEUES}'" >&2
    exit 2
fi
MAX_REQUEUES=$((10#$MAX_REQUEUES))
RESTARTS=${SLURM_RESTART_COUNT:-0}
if [[ -n ${SLURM_ARRAY_JOB_ID:-} ]]; then
    SELF="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
else
    SELF=${SLURM_JOB_ID:-}
fi

# ---- checkpoint before the time limit: stop the step, requeue this task, exit 0
STEP_PID=""
SIGNALLED=""
HANDLING=""

step_alive() {  # the srun step is running (not gone, not a zombie waiting to be reaped)
    local stat
    [[ -n $STEP_PID ]] || return 1
    stat=$(cat "/proc/${STEP_PID}/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

stop_step() {  # srun answers TERM by killing the ranks (SIGKILL) and exiting; bounded anyway
    local i
    [[ -n $STEP_PID ]] || return 0
    kill -TERM "$STEP_PID" 2>/dev/null || true
    for ((i = 0; i < 120; i++)); do
        step_alive || break
        sleep 0.5
    done
    if step_alive; then
        echo "sweep.sh: srun still running 60 s after SIGTERM; killing it" >&2
        kill -KILL "$STEP_PID" 2>/dev/null || true
    fi
    wait "$STEP_PID" 2>/dev/null || true
    STEP_PID=""
}

job_state() {  # RUNNING, COMPLETING, ... or nothing when scontrol does not answer
    local out
    out=$(scontrol show job -o "$SELF" 2>/dev/null) || return 0
    [[ $out =~ JobState=([A-Z_]+) ]] && echo "${BASH_REMATCH[1]}"
    return 0
}

on_signal() {
    local sig=$1 state
    SIGNALLED=1
    if [[ -n $HANDLING ]]; then
        return 0
    fi
    if [[ $sig == TERM ]]; then
        state=$(job_state)
        if [[ $state != RUNNING ]]; then
            # scancel, the time limit or Slurm's own requeue: Slurm is ending the job already.
            HANDLING=1
            echo "sweep.sh: SIGTERM while the job is ${state:-in an unknown state}; stopping, not requeueing" >&2
            stop_step
            exit 143
        fi
    fi
    if ((RESTARTS >= MAX_REQUEUES)); then
        echo "sweep.sh: SIG${sig} at $(date -u +%FT%TZ), but task ${SELF} has been requeued ${RESTARTS} of" \
             "at most ${MAX_REQUEUES} times (HARNESS_MAX_REQUEUES); not requeueing, running on" >&2
        return 0
    fi
    HANDLING=1
    echo "sweep.sh: SIG${sig} at $(date -u +%FT%TZ): stopping the step and requeueing ${SELF}" \
         "(restart $((RESTARTS + 1)) of at most ${MAX_REQUEUES})" >&2
    stop_step
    if ! scontrol requeue "$SELF"; then
        echo "sweep.sh: scontrol requeue ${SELF} failed; resubmit row ${SLURM_ARRAY_TASK_ID}, it resumes" >&2
        exit 1
    fi
    echo "sweep.sh: requeued ${SELF}; it resumes from the files already written" >&2
    exit 0
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

if [[ -n ${HARNESS_SETUP:-} ]]; then
    # shellcheck disable=SC1090
    source "$HARNESS_SETUP"
fi
PY=${HARNESS_PYTHON:-python3}
SRUN_ARGS=()
if [[ -n ${HARNESS_SRUN_ARGS:-} ]]; then
    read -r -a SRUN_ARGS <<<"$HARNESS_SRUN_ARGS"
fi

PLAN=$1
case $PLAN in
    *.yaml | *.yml)
        PLAN=$("$PY" -m harness.launch.slurm --plan-once "$PLAN" --jobs "${HARNESS_JOBS:-jobs}")
        ;;
esac

TASK_ARGS=(--plan "$PLAN" --row "$SLURM_ARRAY_TASK_ID")
if [[ -n ${HARNESS_RESULTS:-} ]]; then
    TASK_ARGS+=(--results "$HARNESS_RESULTS")
fi

echo "sweep.sh: job ${SELF} on $(hostname): plan ${PLAN} row ${SLURM_ARRAY_TASK_ID}, restart ${RESTARTS}" >&2
# In the background, so that the signal traps run at once rather than after srun returns.
srun ${SRUN_ARGS[@]+"${SRUN_ARGS[@]}"} "$PY" -m harness.launch.task "${TASK_ARGS[@]}" &
STEP_PID=$!
rc=0
wait "$STEP_PID" || rc=$?
# A signal handled without ending the script (requeue limit reached) interrupts wait: wait again.
# 127 then means the first wait had already returned srun's status (the signal came just after).
while [[ -n $SIGNALLED ]]; do
    SIGNALLED=""
    again=0
    wait "$STEP_PID" 2>/dev/null || again=$?
    if ((again == 127)); then
        break
    fi
    rc=$again
done
STEP_PID=""
exit "$rc"
