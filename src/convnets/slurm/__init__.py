"""Slurm: submitit launcher, job arrays, sbatch templates, job status. The only code that imports
submitit or reads SLURM_* variables; it builds `convnets fit` command lines and needs no trainer internals."""
