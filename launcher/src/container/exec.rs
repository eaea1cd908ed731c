//! The last steps, after [`super::build`]: the inner user namespace, no_new_privs, execve.

use crate::error::{Context, Error, Result};
use crate::plan::{Plan, Process};
use crate::sys;
use nix::sched::{unshare, CloneFlags};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// The first `name` on the caller's PATH.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Move into the inner user namespace where the caller is their own uid/gid again.
pub fn enter_user(plan: &Plan) -> Result<()> {
    if plan.remap_root {
        return Ok(());
    }
    unshare(CloneFlags::CLONE_NEWUSER).ctx(|| "cannot create the inner user namespace")?;
    super::write_id_maps(plan.user.uid, 0, plan.user.gid, 0)
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Become the command. Only returns on failure.
pub fn exec(process: &Process) -> Error {
    // Arguments and variables are bytes: non-UTF-8 ones pass as they are.
    use std::os::unix::ffi::OsStrExt;
    // The working directory was entered by `run::enter`.
    if let Err(e) = sys::set_no_new_privs() {
        return Error::Sys {
            context: "cannot set no_new_privs".into(),
            source: e,
        };
    }
    // The OS gives no NUL inside an argument or variable; one from elsewhere ends it there.
    let cstr = |b: &[u8]| {
        CString::new(b.split(|c| *c == 0).next().unwrap_or_default()).unwrap_or_default()
    };
    let argv: Vec<CString> = process.argv.iter().map(|a| cstr(a.as_bytes())).collect();
    let envp: Vec<CString> = process
        .env
        .iter()
        .map(|(k, v)| cstr(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect();
    let cmd = &process.argv[0];
    let candidates: Vec<PathBuf> = if cmd.as_bytes().contains(&b'/') {
        vec![PathBuf::from(cmd)]
    } else {
        let path = process
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH.as_bytes(), |(_, v)| v.as_bytes());
        path.split(|c| *c == b':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(std::ffi::OsStr::from_bytes(d)).join(cmd))
            .collect()
    };
    // The command starts with the signal dispositions and mask berth was started with (not
    // the Rust runtime's ignored SIGPIPE).
    crate::signals::restore_for_exec();
    let mut denied = None;
    for candidate in candidates {
        let Ok(c) = sys::cstr(&candidate) else {
            continue;
        };
        let err = nix::unistd::execve(&c, &argv, &envp).unwrap_err();
        match err {
            nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => continue,
            nix::errno::Errno::EACCES => denied = Some((candidate, err)),
            other => {
                return Error::CommandNotExecutable(candidate.display().to_string(), other.into())
            }
        }
    }
    match denied {
        Some((path, e)) => Error::CommandNotExecutable(path.display().to_string(), e.into()),
        None => Error::CommandNotFound(cmd.to_string_lossy().into_owned()),
    }
}
