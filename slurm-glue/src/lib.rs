//! Slurm SPANK plugin `spank_berth.so` (issue 5): `srun --container=IMG.sqsh` and the
//! pyxis-compatible `--container-*` flags, one container per node per step.
