//! `--container-save=PATH` (remote context, `slurm_spank_task_exit`, as root, once per node
//! after the step's last task there has exited): as pyxis does with `enroot export`, every node of the step
//! writes the container's filesystem (image plus the step's writes) to PATH, relative to the
//! submit directory. The step's writable layer was kept on disk for it ([`save_key`], or the
//! named container's own). The work runs as the job's user, in a forked child that drops root:
//! it builds a container over the image and that layer with none of the job's binds, and
//! `mksquashfs` reads its root through `/proc/PID/root`, leaving out the contents of the
//! mounts berth adds (/proc, /sys, /dev, /tmp, /etc/hosts...). The file is written beside
//! PATH and renamed into place: a failure leaves nothing, and one error line.

use crate::config::{config, state_dir};
use crate::slurmstepd::instance_key;
use crate::spank::{log, Level, Spank};
use berth_launcher::{Error, Join, RunOptions};
use berth_plugin::JobRequest;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// The key of a step's writable layer kept for `--container-save` (not a name a user can
/// give, as names have no '/'; the job epilog removes what a failed save left).
pub fn save_key(job: u32, step: u32, node: &str) -> String {
    instance_key(job, step, node, Some(&format!("save/{step}")))
}

/// The step's tasks on this node whose exit slurmstepd has collected (it calls
/// `slurm_spank_task_exit` in its own process, once per task).
static EXITED: AtomicU32 = AtomicU32::new(0);

/// After each task: the last one of the node saves.
pub fn task_exit(sp: Spank, av: &[String]) -> Result<(), Error> {
    if EXITED.fetch_add(1, Ordering::SeqCst) + 1 != sp.local_task_count() {
        return Ok(());
    }
    // One line in the step's output (srun's stderr) and the slurmd log; the step's exit status
    // stays its tasks', as with pyxis.
    if let Err(e) = step_exit(sp, av) {
        log(Level::Error, &e.to_string());
    }
    Ok(())
}

fn step_exit(sp: Spank, av: &[String]) -> Result<(), Error> {
    let cfg = config(av)?;
    let given = |i| sp.option(i);
    let getenv = |n: &str| sp.getenv(n, true);
    let src = crate::args::Source {
        given: &given,
        getenv: &getenv,
    };
    let Some(path) = crate::args::save_path(&src)? else {
        return Ok(());
    };
    let Some(req) = crate::args::request(&src, &cfg)? else {
        return Ok(());
    };
    let (job, step, uid, gid) = (sp.job_id(), sp.step_id(), sp.job_uid(), sp.job_gid());
    if step == crate::slurmstepd::SLURM_BATCH_SCRIPT && !cfg.sbatch {
        return Ok(());
    }
    let env = sp.job_env();
    let get = |k: &str| {
        env.iter()
            .find(|(ek, _)| ek == k)
            .map(|(_, v)| v.to_string_lossy().into_owned())
    };
    let node = get("SLURMD_NODENAME").unwrap_or_default();
    let target = match get("SLURM_SUBMIT_DIR") {
        _ if path.starts_with('/') => PathBuf::from(&path),
        Some(dir) => Path::new(&dir).join(&path),
        None => {
            return Err(Error::Usage(format!(
                "--container-save={path}: a relative path, but the job has no submit directory"
            )))
        }
    };
    let (mut ours, theirs) = UnixStream::pair().map_err(|e| Error::Sys {
        context: "cannot make a socket pair to save the container".into(),
        source: e,
    })?;
    // SAFETY: slurmstepd has other threads; the child takes none of their locks (it reports
    // through the socket, not Slurm's log), allocates only through glibc's malloc, which fork
    // leaves usable, and ends in _exit.
    match unsafe { libc::fork() } {
        -1 => Err(Error::Sys {
            context: "cannot fork to save the container".into(),
            source: std::io::Error::last_os_error(),
        }),
        0 => {
            drop(ours);
            let result = if crate::epilog::drop_to(uid, gid) {
                save_as_user(&cfg, &req, &env, &node, job, step, &target)
            } else {
                Err(format!("cannot become uid {uid} to save the container"))
            };
            let code = match result {
                Ok(()) => 0,
                Err(e) => {
                    let _ = (&theirs).write_all(e.replace('\n', " ").as_bytes());
                    1
                }
            };
            // SAFETY: _exit runs none of slurmstepd's atexit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        pid => {
            drop(theirs);
            let mut why = String::new();
            let _ = ours.read_to_string(&mut why);
            let mut status = 0;
            // SAFETY: `status` is a live int the kernel writes; `pid` is our child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                log(
                    Level::Info,
                    &format!(
                        "job {job} step {step} on {node}: saved the container to {}",
                        target.display()
                    ),
                );
                return Ok(());
            }
            if why.is_empty() {
                why = format!("cannot save the container to {}", target.display());
            }
            Err(Error::Image(why))
        }
    }
}

/// In the child, as the job's user: build the container over the saved layer, squash its root
/// beside `target`, rename. An error is the line to show.
fn save_as_user(
    cfg: &crate::config::Config,
    req: &JobRequest,
    env: &[(OsString, OsString)],
    node: &str,
    job: u32,
    step: u32,
    target: &Path,
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| {
        format!("cannot save the container to {}: {e}", target.display())
    };
    // /proc/PID/root of the container below needs this process (and so it) dumpable.
    let _ = nix::sys::prctl::set_dumpable(true);
    let uid = nix::unistd::getuid().as_raw();
    let policy = crate::config::policy(cfg).map_err(|e| fail(&e))?;
    let state = state_dir(cfg, policy.cache_dir.as_deref(), node, uid);
    let key = instance_key(job, step, node, req.name.as_deref());
    let persist = match req.name {
        Some(_) => key.clone(),
        None => save_key(job, step, node),
    };
    let layer = state.join("named").join(&persist);
    if !layer.join("upper").is_dir() {
        // The step never made its container on this node: nothing to save.
        return Ok(());
    }
    let parent = target.parent().unwrap_or(Path::new("/"));
    let file = target.file_name().unwrap_or_default().to_string_lossy();
    if !parent.is_dir() {
        return Err(fail(&format!("{} is not a directory", parent.display())));
    }
    // The step's keeper leaves just after its last task: wait for it to let go of the layer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while berth_launcher::container_running(&state, &key) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (image, _, _) = crate::slurmstepd::resolve(req, cfg, &state, env, node, job, step, &key)
        .map_err(|e| fail(&e))?;
    let opts = JobRequest {
        image: Some(image.to_string_lossy().into_owned()),
        mounts: None,
        writable: true,
        remap_root: false,
        mount_home: false,
        entrypoint: false,
        unshare: None,
        ..req.clone()
    }
    .run_options(&persist, vec!["true".into()], env, Path::new("/"))
    .map_err(|e| fail(&e))?
    .with_join(Join::No, false)
    .with_persist(Some(persist))
    .with_mpi(false)
    .with_mode(policy.mode.or(cfg.mode))
    .with_site(crate::config::site(cfg, Some(&state)));
    let tmp = parent.join(format!(".{file}.berth-save-{node}-{}", std::process::id()));
    let result = squash(&opts, env, &tmp).map_err(|e| fail(&e));
    match result.and_then(|()| std::fs::rename(&tmp, target).map_err(|e| fail(&e))) {
        Ok(()) => {
            // An unnamed step's layer was kept only for this.
            if req.name.is_none() {
                berth_launcher::remove_tree(&layer);
            }
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Build the container in a child of ours and write its root to `out` with mksquashfs.
fn squash(opts: &RunOptions, env: &[(OsString, OsString)], out: &Path) -> Result<(), String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    // SAFETY: this process is the single-threaded child forked above, so its own child may
    // run any code; it ends in _exit.
    let pid = match unsafe { libc::fork() } {
        -1 => return Err(std::io::Error::last_os_error().to_string()),
        0 => {
            drop(ours);
            let built = berth_launcher::build(opts, env, Path::new("/"));
            let mut theirs = theirs;
            match built {
                Ok(built) => {
                    let _ = theirs.write_all(b"ok\n");
                    // Stay until the parent is done reading the root (it closes its end).
                    let _ = theirs.read(&mut [0u8; 1]);
                    drop(built);
                    // SAFETY: _exit skips the destructors of the frames it leaves, which
                    // belong to the parent.
                    unsafe { libc::_exit(0) }
                }
                Err(e) => {
                    let _ = writeln!(theirs, "{}", e.to_string().replace('\n', " "));
                    // SAFETY: as above.
                    unsafe { libc::_exit(1) }
                }
            }
        }
        pid => pid,
    };
    drop(theirs);
    let mut line = String::new();
    let _ = BufReader::new(&ours).read_line(&mut line);
    let result = if line.trim() == "ok" {
        run_mksquashfs(pid, out)
    } else if line.trim().is_empty() {
        Err("the container could not be built".into())
    } else {
        Err(line.trim().to_string())
    };
    drop(ours);
    // SAFETY: a null status pointer is allowed; `pid` is our child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    result
}

fn run_mksquashfs(pid: i32, out: &Path) -> Result<(), String> {
    let mut cmd = std::process::Command::new("mksquashfs");
    cmd.arg(format!("/proc/{pid}/root/"))
        .arg(out)
        // enroot export's ownership: every file root's.
        .args([
            "-all-root",
            "-no-xattrs",
            "-noappend",
            "-no-progress",
            "-quiet",
        ]);
    let excludes = mount_excludes(pid);
    if !excludes.is_empty() {
        cmd.args(["-wildcards", "-e"]).args(excludes);
    }
    let output = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run mksquashfs: {e} (install squashfs-tools on the node)"))?;
    if output.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&output.stderr);
    Err(err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("mksquashfs failed")
        .to_string())
}

/// What of the container's tree mksquashfs leaves out: the contents of every mount on top of
/// its root (a directory keeps its entry, empty; a file bound over is left out).
fn mount_excludes(pid: i32) -> Vec<String> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some(point) = line.split(' ').nth(4).map(unescape) else {
            continue;
        };
        let rel = point.trim_start_matches('/');
        if rel.is_empty() {
            continue;
        }
        let glob: String = rel
            .chars()
            .flat_map(|c| match c {
                '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        if Path::new(&format!("/proc/{pid}/root/{rel}")).is_dir() {
            out.push(format!("{glob}/*"));
            out.push(format!("{glob}/.*"));
        } else {
            out.push(glob);
        }
    }
    out
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
