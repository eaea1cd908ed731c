//! A task's environment, working directory and entrypoint in the container, as pyxis and
//! enroot make them: the host's locale variables stay out unless `--container-env` names them;
//! the task starts in the image's `WorkingDir` (or `/`); enroot's Slurm hooks' variables
//! (`PMIX_MCA_*`, PyTorch's `MASTER_ADDR`...); the entrypoint runs with only the container's
//! environment and its output hidden unless `--container-entrypoint-log`.

use crate::spank::Spank;
use berth_launcher::{Error, ImageConfig};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub type Env = Vec<(OsString, OsString)>;

/// pyxis unsets these in the task unless `--container-env` names them (its
/// `container_deny_env`): the host's locale is often not installed in the image.
const LOCALE: [&str; 3] = ["LANG", "LANGUAGE", "LC_ALL"];

/// The names `--container-env` gives.
pub fn named(env_names: Option<&str>) -> Vec<String> {
    env_names
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// The job's environment without the host's locale variables that `--container-env` does not
/// name.
pub fn without_locale(env: &[(OsString, OsString)], named: &[String]) -> Env {
    env.iter()
        .filter(|(k, _)| !LOCALE.iter().any(|l| k == l) || named.iter().any(|n| k == n.as_str()))
        .cloned()
        .collect()
}

fn get<'a>(env: &'a [(OsString, OsString)], k: &str) -> Option<&'a OsStr> {
    env.iter()
        .find(|(ek, _)| ek == k)
        .map(|(_, v)| v.as_os_str())
}

fn set(env: &mut Env, k: &str, v: impl AsRef<OsStr>) {
    env.retain(|(ek, _)| ek != k);
    env.push((k.into(), v.as_ref().to_os_string()));
}

/// The variables enroot's Slurm hooks add (`50-slurm-pmi.sh`, `50-slurm-pytorch.sh`) and
/// pyxis's per-task PyTorch ones, unless the container's environment (`set_inside`: the
/// image's and the named ones) already has them. `host` is the job's environment.
pub fn hook_vars(host: &[(OsString, OsString)], env: &mut Env, set_inside: &[String]) {
    let inside = |k: &str| set_inside.iter().any(|s| s == k);
    let host_get = |k: &str| get(host, k).filter(|v| !v.is_empty());
    let mpi = host_get("SLURM_MPI_TYPE");
    let pmix = mpi.is_none_or(|m| m.as_bytes().starts_with(b"pmix"))
        && host.iter().any(|(k, _)| k.as_bytes().starts_with(b"PMIX_"));
    if pmix {
        for (from, to) in [
            ("PMIX_PTL_MODULE", "PMIX_MCA_ptl"),
            ("PMIX_SECURITY_MODE", "PMIX_MCA_psec"),
            ("PMIX_GDS_MODULE", "PMIX_MCA_gds"),
        ] {
            if let Some(v) = host_get(from) {
                if get(host, to).is_none() && !inside(to) {
                    set(env, to, v);
                }
            }
        }
    }
    // pyxis sets these two in each task when the task has PYTORCH_VERSION (the job's or the
    // container's), whatever the image says.
    if get(env, "PYTORCH_VERSION").is_some() {
        for (from, to) in [("SLURM_PROCID", "RANK"), ("SLURM_LOCALID", "LOCAL_RANK")] {
            if let Some(v) = host_get(from) {
                set(env, to, v);
            }
        }
    }
    // enroot's hook, when the container's environment has it (the image's or a named one).
    if !inside("PYTORCH_VERSION") {
        return;
    }
    let num = |k: &str| -> Option<u64> { host_get(k)?.to_str()?.parse().ok() };
    if !inside("MASTER_ADDR") {
        if let Some(first) = host_get("SLURM_STEP_NODELIST")
            .and_then(|l| l.to_str())
            .and_then(first_host)
        {
            set(env, "MASTER_ADDR", first);
        }
    }
    if !inside("MASTER_PORT") {
        if let Some(job) = num("SLURM_JOB_ID") {
            set(env, "MASTER_PORT", (job % 4536 + 61000).to_string());
        }
    }
    if !inside("WORLD_SIZE") {
        if let Some(n) = host_get("SLURM_NTASKS") {
            set(env, "WORLD_SIZE", n);
        }
    }
    // As torch.distributed.run does, when a node runs more than one task.
    let (tasks, nodes) = (
        num("SLURM_STEP_NUM_TASKS").unwrap_or(1),
        num("SLURM_STEP_NUM_NODES").unwrap_or(1),
    );
    if tasks > nodes && !inside("OMP_NUM_THREADS") {
        set(env, "OMP_NUM_THREADS", "1");
    }
}

/// The first host of a Slurm host list (`node[01-03,7],gpu1` gives `node01`), as `scontrol
/// show hostname LIST | head -n1` does.
pub fn first_host(list: &str) -> Option<String> {
    let first = match (list.find(','), list.find('[')) {
        (Some(c), Some(b)) if c < b => &list[..c],
        (Some(c), None) => &list[..c],
        _ => list,
    };
    let Some((prefix, rest)) = first.split_once('[') else {
        return Some(first.to_string()).filter(|s| !s.is_empty());
    };
    let (range, suffix) = rest.split_once(']')?;
    let low = range.split([',', '-']).next()?;
    if low.is_empty() || !low.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // What follows is the next host, or more of this one (`a[1-2]b[3-4]`: its first too).
    let suffix = if suffix.starts_with(',') {
        String::new()
    } else {
        first_host(suffix).unwrap_or_default()
    };
    Some(format!("{prefix}{low}{suffix}"))
}

/// pyxis starts the task where enroot's `/etc/rc` went: the image's `WorkingDir`, else `/`
/// (the host's cwd plays no part). Returns the directory, after chdir to it; an image whose
/// `WorkingDir` is missing starts in `/`, with a warning.
pub fn image_workdir(config: &ImageConfig) -> Result<PathBuf, Error> {
    let wd = config
        .config
        .working_dir
        .as_deref()
        .filter(|w| w.starts_with('/'))
        .unwrap_or("/");
    if std::env::set_current_dir(wd).is_ok() {
        return Ok(PathBuf::from(wd));
    }
    eprintln!("berth: warning: the image's WorkingDir {wd} is not in the container; starting in /");
    std::env::set_current_dir("/").map_err(|e| Error::Sys {
        context: "cannot chdir to /".into(),
        source: e,
    })?;
    Ok(PathBuf::from("/"))
}

/// The environment the entrypoint starts with, as enroot gives it to `/etc/rc`: the image's
/// variables, the `--container-env` ones, what enroot's hooks add (Slurm's `SLURM_*`, `PMIX_*`
/// and `PMI_*`, `HOME`...) and the container's own (`PATH`, `PWD`...), all as the task has
/// them. Everything else of the host stays out.
pub fn entrypoint_env(task: &[(OsString, OsString)], set_inside: &[String]) -> Env {
    const OWN: &[&str] = &[
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "TERM",
        "PATH",
        "PWD",
        "LD_LIBRARY_PATH",
        "BERTH_CONTAINER",
        "MASTER_ADDR",
        "MASTER_PORT",
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "OMP_NUM_THREADS",
    ];
    task.iter()
        .filter(|(k, _)| {
            let b = k.as_bytes();
            b.starts_with(b"SLURM_")
                || b.starts_with(b"PMIX_")
                || b.starts_with(b"PMI_")
                || OWN.iter().any(|o| k == o)
                || set_inside.iter().any(|s| k == s.as_str())
        })
        .cloned()
        .collect()
}

/// Single quotes around the bytes, each ' as '\'' (sh passes any byte but NUL through).
fn quote(s: &OsStr) -> Vec<u8> {
    let mut q = b"'".to_vec();
    for b in s.as_bytes() {
        match b {
            b'\'' => q.extend_from_slice(b"'\\''"),
            b => q.push(*b),
        }
    }
    q.push(b'\'');
    q
}

fn is_name(k: &OsStr) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// The two shell scripts that run the entrypoint in front of the task's command, since Slurm
/// execs the task's own argv and SPANK cannot give it a longer one.
///
/// `start` (in place of the task's argv[0]) runs `env -i ENTRYPOINT_ENV... ENTRYPOINT...
/// /proc/self/fd/RESUME ARGV...`, the entrypoint's output sent to /dev/null unless `log`
/// (the task's stdout and stderr kept on the spare fds `save`). The entrypoint ends with
/// `exec "$@"`, which runs `resume`: it puts stdout and stderr back, then gives the command
/// the task's environment: the variables the entrypoint set win, as with pyxis (the task takes
/// the container's environment over the job's), except the ones `--container-env` names; a
/// host variable the entrypoint did not set is set as the task had it.
pub struct Scripts {
    pub start: Vec<u8>,
    pub resume: Vec<u8>,
}

pub fn entrypoint_scripts(
    entrypoint: &[OsString],
    argv: &[OsString],
    task: &[(OsString, OsString)],
    ep_env: &[(OsString, OsString)],
    named: &[String],
    resume_fd: i32,
    save: Option<(i32, i32)>,
) -> Scripts {
    let mut start = b"#!/bin/sh\nexec env -i --".to_vec();
    for (k, v) in ep_env {
        let mut kv = k.clone();
        kv.push("=");
        kv.push(v);
        start.push(b' ');
        start.extend(quote(&kv));
    }
    for w in entrypoint {
        start.push(b' ');
        start.extend(quote(w));
    }
    start.extend(format!(" /proc/self/fd/{resume_fd}").as_bytes());
    for w in argv {
        start.push(b' ');
        start.extend(quote(w));
    }
    let mut resume = b"#!/bin/sh\n".to_vec();
    if let Some((out, err)) = save {
        start.extend(format!(" {out}>&1 {err}>&2 >/dev/null 2>&1").as_bytes());
        resume.extend(format!("exec >&{out} 2>&{err} {out}>&- {err}>&-\n").as_bytes());
    }
    start.push(b'\n');
    let mut odd: Vec<&(OsString, OsString)> = Vec::new();
    for kv in task {
        let (k, v) = kv;
        let in_ep = ep_env.iter().any(|(ek, _)| ek == k);
        let is_named = named.iter().any(|n| k == n.as_str());
        if in_ep && !is_named {
            continue;
        }
        if !is_name(k) {
            odd.push(kv);
            continue;
        }
        let (k, v) = (k.as_bytes(), quote(v));
        if !is_named {
            resume.extend(b"[ -n \"${");
            resume.extend(k);
            resume.extend(b"+x}\" ] || ");
        }
        resume.extend(b"export ");
        resume.extend(k);
        resume.push(b'=');
        resume.extend(v);
        resume.push(b'\n');
    }
    if odd.is_empty() {
        resume.extend(b"exec \"$@\"\n");
    } else {
        // Names sh cannot set (Slurm's SPANK option variables have '-').
        resume.extend(b"exec env --");
        for (k, v) in odd {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            resume.push(b' ');
            resume.extend(quote(&kv));
        }
        resume.extend(b" \"$@\"\n");
    }
    Scripts { start, resume }
}

/// A memfd holding `data`, left open across the exec (the script runs from
/// /proc/self/fd/N); its number.
fn memfd(name: &std::ffi::CStr, data: &[u8]) -> Result<i32, Error> {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    use std::io::Write as _;
    use std::os::fd::IntoRawFd as _;
    let fd = memfd_create(name, MemFdCreateFlag::empty()).map_err(|e| Error::Sys {
        context: "cannot create the entrypoint script".into(),
        source: e.into(),
    })?;
    let mut file = std::fs::File::from(fd);
    file.write_all(data).map_err(|e| Error::Sys {
        context: "cannot write the entrypoint script".into(),
        source: e,
    })?;
    Ok(file.into_raw_fd())
}

/// Two fds from 3 to 9 (the ones sh can name) that will be free after the exec (closed now, or
/// close-on-exec), to keep the task's stdout and stderr while the entrypoint's output is hidden.
fn spare_fds() -> Option<(i32, i32)> {
    let free: Vec<i32> = (3..=9)
        .filter(|fd| {
            let flags = nix::fcntl::fcntl(*fd, nix::fcntl::FcntlArg::F_GETFD);
            !matches!(flags, Ok(f) if f & libc::FD_CLOEXEC == 0)
        })
        .collect();
    Some((*free.first()?, *free.get(1)?))
}

/// Run the image's entrypoint in front of the task's command ([`entrypoint_scripts`]).
#[allow(clippy::too_many_arguments)]
pub fn run_through_entrypoint(
    sp: Spank,
    entrypoint: &[OsString],
    argv: &[OsString],
    task: &[(OsString, OsString)],
    ep_env: &[(OsString, OsString)],
    named: &[String],
    log: bool,
) -> Result<(), Error> {
    if !Path::new("/bin/sh").exists() {
        return Err(Error::Usage(
            "--container-entrypoint needs /bin/sh in the image; run the entrypoint as the command instead".into(),
        ));
    }
    if !["/usr/bin/env", "/bin/env"]
        .iter()
        .any(|p| Path::new(p).exists())
    {
        return Err(Error::Usage(
            "--container-entrypoint needs env (/usr/bin/env) in the image; run the entrypoint as the command instead".into(),
        ));
    }
    // Both fds first: the resume script's number goes in the start script, and the spare
    // fds must be others.
    let resume_fd = memfd(c"berth-entrypoint-resume", b"")?;
    let start_fd = memfd(c"berth-entrypoint", b"")?;
    let save = if log { None } else { spare_fds() };
    let scripts = entrypoint_scripts(entrypoint, argv, task, ep_env, named, resume_fd, save);
    for (fd, data) in [(resume_fd, &scripts.resume), (start_fd, &scripts.start)] {
        // SAFETY: `fd` is a memfd made above and still open; `data` is a live buffer of the
        // length passed.
        let written = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), 0) };
        if written != data.len() as isize {
            return Err(Error::Sys {
                context: "cannot write the entrypoint script".into(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    if !sp.set_argv0(&format!("/proc/self/fd/{start_fd}")) {
        return Err(Error::Usage(
            "--container-entrypoint: the task has no command to run".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(kv: &[(&str, &str)]) -> Env {
        kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn locale_stays_out_unless_named() {
        let e = env(&[
            ("LANG", "x"),
            ("LC_ALL", "y"),
            ("LC_CTYPE", "z"),
            ("A", "1"),
        ]);
        let keys = |e: &Env| e.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&without_locale(&e, &[])), ["LC_CTYPE", "A"]);
        assert_eq!(
            keys(&without_locale(&e, &named(Some("LANG,B")))),
            ["LANG", "LC_CTYPE", "A"]
        );
    }

    #[test]
    fn first_hosts() {
        assert_eq!(first_host("n1").as_deref(), Some("n1"));
        assert_eq!(first_host("n1,n2").as_deref(), Some("n1"));
        assert_eq!(first_host("node[01-03,7],gpu1").as_deref(), Some("node01"));
        assert_eq!(first_host("a[3,1]").as_deref(), Some("a3"));
        assert_eq!(first_host("r[2-3]n[05-06]").as_deref(), Some("r2n05"));
        assert_eq!(first_host("x[]"), None);
        assert_eq!(first_host("a[1-2]z,b").as_deref(), Some("a1z"));
    }

    #[test]
    fn hook_variables() {
        let host = env(&[
            ("PMIX_SECURITY_MODE", "native"),
            ("PMIX_GDS_MODULE", "hash"),
            ("SLURM_MPI_TYPE", "pmix"),
            ("SLURM_STEP_NODELIST", "c[2-3]"),
            ("SLURM_JOB_ID", "100"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_PROCID", "3"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_STEP_NUM_TASKS", "4"),
            ("SLURM_STEP_NUM_NODES", "2"),
        ]);
        let mut e = env(&[("MASTER_PORT", "1")]);
        hook_vars(&host, &mut e, &[]);
        assert_eq!(get(&e, "PMIX_MCA_psec").unwrap(), "native");
        assert_eq!(get(&e, "PMIX_MCA_gds").unwrap(), "hash");
        assert!(get(&e, "RANK").is_none(), "no PYTORCH_VERSION");
        // The host's PYTORCH_VERSION alone: pyxis's per-task two, not enroot's hook.
        let mut e = env(&[("PYTORCH_VERSION", "2")]);
        hook_vars(&host, &mut e, &[]);
        assert_eq!(get(&e, "RANK").unwrap(), "3");
        assert!(get(&e, "MASTER_ADDR").is_none());
        let mut e = env(&[("PYTORCH_VERSION", "2"), ("MASTER_PORT", "1")]);
        let inside = ["PYTORCH_VERSION", "MASTER_PORT", "PMIX_MCA_gds"].map(String::from);
        hook_vars(&host, &mut e, &inside);
        assert!(get(&e, "PMIX_MCA_gds").is_none());
        assert_eq!(get(&e, "MASTER_ADDR").unwrap(), "c2");
        assert_eq!(get(&e, "MASTER_PORT").unwrap(), "1");
        assert_eq!(get(&e, "WORLD_SIZE").unwrap(), "4");
        assert_eq!(get(&e, "RANK").unwrap(), "3");
        assert_eq!(get(&e, "LOCAL_RANK").unwrap(), "1");
        assert_eq!(get(&e, "OMP_NUM_THREADS").unwrap(), "1");
        let mut e = env(&[]);
        let mut other = host.clone();
        other[2].1 = "pmi2".into();
        hook_vars(&other, &mut e, &[]);
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn scripts_quote_bytes_and_resume_the_task_environment() {
        let task = env(&[
            ("PATH", "/bin"),
            ("HOSTONLY", "it's"),
            ("NAMED", "n"),
            ("ODD-NAME", "1"),
        ]);
        let ep = entrypoint_env(&task, &["NAMED".into()]);
        assert_eq!(ep, env(&[("PATH", "/bin"), ("NAMED", "n")]));
        let argv: Vec<OsString> = vec!["a b".into(), OsStr::from_bytes(b"\xff").into()];
        let s = entrypoint_scripts(
            &["/ep".into()],
            &argv,
            &task,
            &ep,
            &["NAMED".into()],
            5,
            Some((7, 8)),
        );
        assert_eq!(
            s.start,
            b"#!/bin/sh\nexec env -i -- 'PATH=/bin' 'NAMED=n' '/ep' /proc/self/fd/5 'a b' '\xff' 7>&1 8>&2 >/dev/null 2>&1\n"
        );
        assert_eq!(
            String::from_utf8(s.resume).unwrap(),
            "#!/bin/sh\nexec >&7 2>&8 7>&- 8>&-\n[ -n \"${HOSTONLY+x}\" ] || export HOSTONLY='it'\\''s'\nexport NAMED='n'\nexec env -- 'ODD-NAME=1' \"$@\"\n"
        );
    }
}
