//! A job's image keepers outlive the step that started them (remote context,
//! `slurm_spank_task_exit`, as root, after the step's last task on the node has exited).
//!
//! With an extern step on the node (`PrologFlags=Contain`), every step of a job shares one image
//! keeper per image (`berth-imagefs keeper slurm-JOB`, see berth_launcher's `imagekeeper`). A
//! task forks it, so with proctrack/cgroup it is in that step's cgroups, and slurmstepd kills
//! what is left there once its tasks are collected (after this callback). Here it moves into the
//! extern step's cgroups in every cgroup v1 hierarchy: they last as long as the job, and Slurm
//! kills the keeper with them at the job's end. Only processes of the job's user, with that
//! title, that are in this step's cgroups: nothing of another job or user moves. Without cgroups
//! (proctrack/linuxproc) nothing needs moving: the keeper has left the step's process tree.
//! With cgroup v2, or without an extern cgroup, one log line: the next step mounts afresh.

use crate::slurmstepd::SLURM_BATCH_SCRIPT;
use crate::spank::{log, Level, Spank};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU32, Ordering};

/// Slurm's step id of the extern step.
const SLURM_EXTERN_CONT: u32 = 0xffff_fffc;

/// The step's tasks on this node whose exit slurmstepd has collected.
static EXITED: AtomicU32 = AtomicU32::new(0);

/// After each task: the last one of the node moves the job's keepers.
pub fn task_exit(sp: Spank) {
    if EXITED.fetch_add(1, Ordering::SeqCst) + 1 != sp.local_task_count() {
        return;
    }
    let (job, step, uid) = (sp.job_id(), sp.step_id(), sp.job_uid());
    if step == SLURM_EXTERN_CONT {
        return;
    }
    let step_dir = if step == SLURM_BATCH_SCRIPT {
        "step_batch".to_string()
    } else {
        format!("step_{step}")
    };
    let title = format!("berth-imagefs keeper slurm-{job}");
    for pid in keepers(uid, &title) {
        let (level, msg) = match adopt(pid, &format!("job_{job}"), &step_dir) {
            Ok(0) => (
                Level::Verbose,
                format!("image keeper {pid} of job {job}: not in the step's cgroups; left as is"),
            ),
            Ok(n) => (
                Level::Verbose,
                format!(
                    "image keeper {pid} of job {job}: moved into the extern step's cgroups ({n} hierarchies)"
                ),
            ),
            Err(e) => (
                Level::Info,
                format!(
                    "image keeper {pid} of job {job}: {e}; it ends with {step_dir} and the job's next step mounts the image afresh"
                ),
            ),
        };
        log(level, &msg);
    }
}

/// The user's processes named `berth-imagefs` with exactly this title.
fn keepers(uid: u32, title: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == uid)
                && std::fs::read(format!("/proc/{pid}/comm")).is_ok_and(|c| c == b"berth-imagefs\n")
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|&b| b == 0).next() == Some(title.as_bytes()))
        })
        .collect()
}

/// Move `pid` from `.../job_dir/step_dir[/...]` to `.../job_dir/step_extern` in each cgroup v1
/// hierarchy; how many it moved.
fn adopt(pid: i32, job_dir: &str, step_dir: &str) -> Result<usize, String> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("cannot read its cgroups: {e}"))?;
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(|e| format!("cannot read /proc/self/mounts: {e}"))?;
    let mut moved = 0;
    let mut failed = Vec::new();
    for line in cgroups.lines() {
        // "ID:CONTROLLERS:PATH"; cgroup v2 is "0::PATH".
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let comps: Vec<&str> = path.split('/').collect();
        let Some(at) = comps
            .windows(2)
            .position(|w| w[0] == job_dir && w[1] == step_dir)
        else {
            continue;
        };
        if id == "0" {
            return Err("cgroup v2 is not supported yet".into());
        }
        let target = format!("{}/step_extern", comps[..=at].join("/"));
        let Some(root) = hierarchy(&mounts, controllers) else {
            failed.push(format!("no mount of the cgroup hierarchy {controllers}"));
            continue;
        };
        let procs = format!("{root}{target}/cgroup.procs");
        if !std::path::Path::new(&procs).exists() {
            failed.push(format!(
                "the job has no extern step cgroup {root}{target} (is PrologFlags=Contain set?)"
            ));
            continue;
        }
        match std::fs::write(&procs, pid.to_string()) {
            Ok(()) => moved += 1,
            Err(e) => failed.push(format!("cannot move it into {procs}: {e}")),
        }
    }
    if failed.is_empty() {
        Ok(moved)
    } else {
        Err(failed.join("; "))
    }
}

/// Where the cgroup v1 hierarchy of these controllers ("memory", "cpu,cpuacct",
/// "name=systemd") is mounted.
fn hierarchy(mounts: &str, controllers: &str) -> Option<String> {
    mounts.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(&at), Some(&"cgroup"), Some(&opts)) = (f.get(1), f.get(2), f.get(3)) else {
            return None;
        };
        let opts: Vec<&str> = opts.split(',').collect();
        controllers
            .split(',')
            .all(|c| opts.contains(&c))
            .then(|| at.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::{adopt, hierarchy};

    /// A process in a step's freezer cgroup moves to the job's extern step's, as Slurm's
    /// proctrack/cgroup lays them out (needs root and a cgroup v1 freezer; says so otherwise).
    #[test]
    fn moves_a_process_from_its_step_to_the_extern_step() {
        let freezer = std::path::Path::new("/sys/fs/cgroup/freezer");
        if !nix::unistd::geteuid().is_root() || !freezer.join("cgroup.procs").exists() {
            eprintln!("skipped: needs root and a cgroup v1 freezer hierarchy");
            return;
        }
        let base = freezer.join(format!("berth-adopt-test-{}", std::process::id()));
        let (step, ext) = (base.join("job_7/step_3"), base.join("job_7/step_extern"));
        std::fs::create_dir_all(&step).unwrap();
        std::fs::create_dir_all(&ext).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        std::fs::write(step.join("cgroup.procs"), pid.to_string()).unwrap();
        let moved = adopt(pid, "job_7", "step_3");
        let now = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        // Not in a step of this job: nothing to do.
        let other = adopt(pid, "job_8", "step_3");
        let _ = child.kill();
        let _ = child.wait();
        for d in [&step, &ext, &base.join("job_7"), &base] {
            let _ = std::fs::remove_dir(d);
        }
        assert_eq!(moved, Ok(1));
        assert!(now.contains("job_7/step_extern\n"), "{now}");
        assert_eq!(other, Ok(0));
    }

    #[test]
    fn finds_a_v1_hierarchy_by_its_controllers() {
        let mounts = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0\n\
            cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,xattr,name=systemd 0 0\n\
            cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n\
            cgroup /sys/fs/cgroup/freezer cgroup rw,nosuid,freezer 0 0\n";
        assert_eq!(
            hierarchy(mounts, "freezer").as_deref(),
            Some("/sys/fs/cgroup/freezer")
        );
        assert_eq!(
            hierarchy(mounts, "cpu,cpuacct").as_deref(),
            Some("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(
            hierarchy(mounts, "name=systemd").as_deref(),
            Some("/sys/fs/cgroup/systemd")
        );
        assert_eq!(hierarchy(mounts, "memory"), None);
    }
}
