"""Slurm submission through submitit: the only code that imports submitit or reads SLURM_* variables."""
