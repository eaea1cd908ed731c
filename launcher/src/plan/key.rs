//! What makes two containers one: the plan's fingerprint, the join key ranks share a
//! container by, and the job step a keeper serves.

use super::process::get_var;
use super::Plan;
use crate::options::{Join, RunOptions};
use sha2::{Digest, Sha256};
use std::ffi::{OsStr, OsString};

impl Plan {
    /// A digest of what makes two containers interchangeable: ranks may only share a container
    /// built from the same image with the same mounts.
    pub fn fingerprint(&self) -> String {
        let text = format!(
            "{:?}|{}|{:?}|{}|{}|{:?}|{}|{:?}|{:?}|{:?}",
            self.image.path,
            self.image_stamp,
            self.rootfs,
            self.writable,
            self.remap_root,
            self.steps,
            self.user.uid,
            self.mpi,
            self.persist,
            self.unshare
        );
        Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The fingerprint in parts, for a rank that attaches whatever the options (see
    /// `RunOptions::attach`): first what must still match (the user, the named container's
    /// layer), then each option a keeper compares to name what the rank's plan has that the
    /// running container ignores, as `name=hash`.
    pub fn fingerprint_parts(&self) -> (String, Vec<(&'static str, String)>) {
        let hash = |text: String| -> String {
            Sha256::digest(text.as_bytes())
                .iter()
                .take(6)
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let strict = hash(format!("{}|{:?}", self.user.uid, self.persist));
        let parts = vec![
            (
                "image",
                hash(format!(
                    "{:?}|{}|{:?}",
                    self.image.path, self.image_stamp, self.rootfs
                )),
            ),
            ("mounts", hash(format!("{:?}", self.steps))),
            ("writable", hash(self.writable.to_string())),
            ("remap-root", hash(self.remap_root.to_string())),
            ("mpi", hash(format!("{:?}", self.mpi))),
            ("unshare", hash(format!("{:?}", self.unshare))),
        ];
        (strict, parts)
    }
}

/// The key ranks share the container by: the one given, one from the parallel launcher's
/// environment, or for a lingering container one from the fingerprint.
pub(super) fn join_key(
    plan: &Plan,
    opts: &RunOptions,
    env: &[(OsString, OsString)],
) -> Option<String> {
    let fingerprint = plan.fingerprint();
    let key = match &opts.join {
        Join::No => None,
        Join::Key(key) => Some(key.clone()),
        Join::Auto => auto_join_key(env).map(|k| format!("{k}-{}", &fingerprint[..12])),
    };
    // A lingering container is found again by what it is. Never a writable one: its
    // changes would leak into the next, unrelated run.
    if key.is_none() && plan.linger_secs > 0 && !plan.writable && opts.join != Join::No {
        return Some(format!("node-{}", &fingerprint[..16]));
    }
    key
}

/// The job step a run belongs to, if a scheduler started it: Slurm's job and step (`batch` for
/// the batch script), OpenLava's job and array index. The step's processes are killed when it
/// ends, so its image keeper serves only it. A Slurm job with an extern step on this node
/// (`PrologFlags=Contain`) is one scope: the keeper lives as long as that step (the plugin
/// moves it into the step's cgroup), so the job's later steps find the mount warm. It is still
/// the user's alone: its socket is in the user's 0700 state directory, it answers only the
/// user's uid (SO_PEERCRED), and its name holds the job, so no other job reaches it.
pub fn keeper_scope(env: &[(OsString, OsString)]) -> String {
    let get = |k: &str| get_var(env, k).map(|v| v.to_string_lossy().into_owned());
    if let Some(job) = get("SLURM_JOB_ID") {
        if slurm_extern_step(&job).is_some() {
            return format!("slurm-{job}");
        }
        let step = get("SLURM_STEP_ID").unwrap_or_else(|| "batch".into());
        return format!("slurm-{job}.{step}");
    }
    if let Some(job) = get("LSB_JOBID") {
        let index = get("LSB_JOBINDEX").unwrap_or_else(|| "0".into());
        return format!("lsf-{job}.{index}");
    }
    String::new()
}

/// The process that lives as long as the run's job step: Slurm's slurmstepd (the task's parent;
/// the plugin runs berth in the task itself), or for a whole Slurm job the slurmstepd of its
/// extern step; OpenLava's res (the job's process-group leader).
/// An image keeper stops taking runs when it ends, so no keeper outlives its step for its idle
/// time even where the scheduler does not kill what left the step's process tree
/// (proctrack/linuxproc, OpenLava). None outside a scheduler.
pub fn keeper_anchor(scope: &str) -> Option<i32> {
    let parent = nix::unistd::getppid().as_raw();
    if let Some(job_step) = scope.strip_prefix("slurm-") {
        return match job_step.split_once('.') {
            Some(_) => Some(parent),
            None => slurm_extern_step(job_step),
        };
    }
    if scope.starts_with("lsf-") {
        let group = nix::unistd::getpgrp().as_raw();
        let own = nix::unistd::getpid().as_raw();
        return Some(if group != own { group } else { parent });
    }
    None
}

/// This node's slurmstepd of the job's extern step: root's process named `slurmstepd` whose
/// title is `slurmstepd: [JOB.extern]`. Slurm starts it when the job is allocated, with
/// `PrologFlags=Contain`, and ends it with the job. One look through /proc per run (a few
/// microseconds a process), remembered for the plan's other questions. Where nodes share one
/// kernel (the test cluster), any of the job's extern steps: they all end with the job.
fn slurm_extern_step(job: &str) -> Option<i32> {
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;
    static LAST: Mutex<Option<(String, Option<i32>)>> = Mutex::new(None);
    if job.is_empty() || !job.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let title = format!("slurmstepd: [{job}.extern]");
    let is_it = |pid: i32| {
        // The title, then NULs or spaces where the arguments and environment were.
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            c.split(|&b| b == 0).next().map(|t| t.trim_ascii_end()) == Some(title.as_bytes())
        }) && std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == 0)
    };
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    // A job's extern step starts before its other steps: a job without one has none later.
    match last.as_ref() {
        Some((j, None)) if j == job => return None,
        Some((j, Some(pid))) if j == job && is_it(*pid) => return Some(*pid),
        _ => {}
    }
    let found = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&pid| {
            std::fs::read(format!("/proc/{pid}/comm")).is_ok_and(|c| c == b"slurmstepd\n")
                && is_it(pid)
        });
    *last = Some((job.to_string(), found));
    found
}

/// A join key from the environment of a parallel launcher, so that the ranks one launcher
/// starts on a node share one container without a flag.
pub fn auto_join_key(env: &[(OsString, OsString)]) -> Option<String> {
    let get = |k: &str| get_var(env, k).and_then(OsStr::to_str);
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect()
    };
    let many = |k: &str| {
        get(k)
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|n| n > 1)
    };
    if many("OMPI_COMM_WORLD_LOCAL_SIZE") {
        let job = get("PMIX_NAMESPACE").or(get("OMPI_MCA_ess_base_jobid"))?;
        return Some(format!("ompi-{}", clean(job)));
    }
    if let (Some(job), Some(step)) = (get("SLURM_JOB_ID"), get("SLURM_STEP_ID")) {
        if many("SLURM_STEP_NUM_TASKS") {
            return Some(format!("slurm-{}.{}", clean(job), clean(step)));
        }
    }
    None
}
