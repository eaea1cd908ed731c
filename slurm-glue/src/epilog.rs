//! The job epilog (job script context, as root, on each node of the job): remove the saved
//! layers of the job's named containers. They live in the user's state directory, which the
//! user owns: the removal runs as the job's user (in a child process that drops root), so a
//! symlink or mount the user left there cannot make root delete anything else.

use crate::config::{config, state_dir};
use crate::spank::{log, Level, Spank};
use berth_launcher::Error;
use std::path::Path;

pub fn job_epilog(sp: Spank, av: &[String]) -> Result<(), Error> {
    let cfg = config(av)?;
    let (job, uid, gid) = (sp.job_id(), sp.job_uid(), sp.job_gid());
    // The node name as the task saw it (SLURMD_NODENAME is in the epilog's environment).
    let node = std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| hostname());
    let policy = crate::config::policy(&cfg)?;
    let named = state_dir(&cfg, policy.cache_dir.as_deref(), &node, uid).join("named");
    if !named.is_dir() {
        return Ok(());
    }
    let prefix = format!("slurm-{job}-");
    // SAFETY: the child only drops to the user and removes files: it takes no lock that
    // another thread of this Slurm process could hold (it logs nothing) and allocates only
    // through glibc's malloc, which fork leaves usable; it ends in _exit.
    match unsafe { libc::fork() } {
        -1 => Err(Error::Sys {
            context: "cannot fork to remove the job's named containers".into(),
            source: std::io::Error::last_os_error(),
        }),
        0 => {
            let code = if drop_to(uid, gid) {
                remove_named(&named, &prefix)
            } else {
                2
            };
            // SAFETY: _exit runs none of the Slurm process's atexit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        pid => {
            let mut status = 0;
            // SAFETY: `status` is a live int the kernel writes; `pid` is our child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                log(
                    Level::Error,
                    &format!(
                        "job {job}: could not remove all of its named containers in {} as uid {uid}",
                        named.display()
                    ),
                );
            } else {
                log(
                    Level::Debug,
                    &format!(
                        "job {job}: removed its named containers in {}",
                        named.display()
                    ),
                );
            }
            Ok(())
        }
    }
}

/// In the forked child: become the job's user, with no supplementary groups.
pub(crate) fn drop_to(uid: u32, gid: u32) -> bool {
    use nix::unistd::{getuid, setgid, setgroups, setuid, Gid, Uid};
    setgroups(&[]).is_ok()
        && setgid(Gid::from_raw(gid)).is_ok()
        && setuid(Uid::from_raw(uid)).is_ok()
        && getuid().as_raw() == uid
}

/// Remove the job's entries (`slurm-JOB-*`); 0 if all went, 1 otherwise.
fn remove_named(named: &Path, prefix: &str) -> i32 {
    let mut code = 0;
    for entry in std::fs::read_dir(named).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            // The writable layer has directories without permissions (overlayfs's work
            // directory, the image's read-only ones): the user opens them up first. Beside
            // it are the step records of the container (`KEY.lock`, `KEY.step`), files.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                berth_launcher::remove_tree(&entry.path());
            } else {
                let _ = std::fs::remove_file(entry.path());
            }
            if std::fs::symlink_metadata(entry.path()).is_ok() {
                code = 1;
            }
        }
    }
    code
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}
