"""Launchers: Slurm (submitit or sbatch), local; all run `task.run_task(plan, row)`."""
