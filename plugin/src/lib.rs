//! Scheduler-neutral job-container lifecycle (request model, per-node instance create / join /
//! release), shared by the Slurm and OpenLava glue. Built with the Slurm issue (5); the
//! launcher's `--join` keeper (launcher/src/join.rs) is the per-node instance it will drive.
