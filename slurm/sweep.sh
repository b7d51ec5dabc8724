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
#   --output         log file per array task (%A = array job id, %a = task index)
#   --requeue        let Slurm requeue a task after a node failure or preemption (on by default);
#                    a task that hits its time limit is not requeued: resubmit its index, it resumes
#
# Environment (read when the task starts; sbatch passes your environment by default):
#   HARNESS_PYTHON     interpreter with harness installed (default: python3 on PATH, so activate
#                      the venv before sbatch or set this); a single path, never word-split
#   HARNESS_SETUP      a file sourced before anything runs (module loads, venv activation, env);
#                      it is shell code you wrote, run as is
#   HARNESS_RESULTS    results directory (default: results/ beside the plan's jobs/ directory)
#   HARNESS_JOBS       jobs directory for the grid form (default: jobs, relative to the submit dir)
#   HARNESS_SRUN_ARGS  extra srun arguments, split on white space only (no globbing, no
#                      expansion), e.g. "--mpi=pmix --cpu-bind=cores"
#
#SBATCH --job-name=harness-sweep
#SBATCH --time=60
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --output=slurm-%A_%a.out
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

echo "sweep.sh: job ${SLURM_ARRAY_JOB_ID:-?}_${SLURM_ARRAY_TASK_ID} on $(hostname): plan ${PLAN} row ${SLURM_ARRAY_TASK_ID}" >&2
srun ${SRUN_ARGS[@]+"${SRUN_ARGS[@]}"} "$PY" -m harness.launch.task "${TASK_ARGS[@]}"
