//! `berth run`: the per-rank path, from options to exec. Kept short: it runs once per MPI rank.

use crate::container;
use crate::error::{Error, Result};
use crate::host::HostUser;
use crate::image::Image;
use crate::image_config::{ImageConfig, CONFIG_PATH};
use crate::options::RunOptions;
use crate::plan::{Action, Plan, Process, Rootfs, HOST_LIB_DIR, MPI_LIB_DIR};
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Run the command in the container; returns only on failure (the process becomes the command).
pub fn run(opts: &RunOptions, dry_run: bool) -> Result<()> {
    // Bytes as they are: a non-UTF-8 value reaches the command unchanged.
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    if dry_run {
        return dry(opts, &env, &cwd);
    }
    let (process, built) = enter(opts, &env, &cwd)?;
    // The cache lock stays open in the command so `berth cache clean` leaves a used image alone.
    if let Some(lock) = built.as_ref().and_then(|b| b.cache_lock.as_ref()) {
        let no_cloexec = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty());
        let _ = nix::fcntl::fcntl(lock.as_raw_fd(), no_cloexec);
    }
    let err = container::exec(&process);
    drop(built);
    Err(err)
}

/// What can be checked of a request before its job is queued (on the submit host, by the
/// scheduler glue): the policy is valid, the image opens, the user's mounts exist and pass
/// the site's rules. Site mounts are not checked: a login node may lack them, and neither is an
/// image that is a registry reference (the nodes import it).
pub fn check(opts: &RunOptions, image_is_file: bool) -> Result<()> {
    let policy = opts.site.policy()?;
    let user = HostUser::current()?;
    if image_is_file {
        Image::open(&opts.image)?;
    }
    if !opts.mounts.is_empty() && !policy.user_mounts.enabled {
        return Err(Error::Usage(
            "user mounts are disabled by the site policy (user_mounts.enabled = false)".into(),
        ));
    }
    for m in &opts.mounts {
        if m.kind == crate::options::MountKind::Bind && !m.source.exists() {
            return Err(Error::Usage(format!(
                "mount source {} does not exist",
                m.source.display()
            )));
        }
        crate::plan::check_user_mount(m, &policy, &user)?;
    }
    Ok(())
}

/// Load the policy and build the plan: everything decided before any namespace exists.
pub fn plan(opts: &RunOptions, env: &[(OsString, OsString)], cwd: &Path) -> Result<Plan> {
    // A broken policy stops here: berth never runs without the site's rules.
    let policy = opts.site.policy()?;
    let user = HostUser::current()?;
    let image = Image::open(&opts.image)?;
    let state_dir = opts.site.state_dir(&policy, user.uid);
    Plan::build(opts, image, user, cwd, state_dir, env, &policy)
}

/// Build the container in the calling process without entering it as the user (the Slurm
/// glue's `--container-save` reads its root from outside through /proc): it lasts as long as
/// the process and the returned value.
pub fn build(
    opts: &RunOptions,
    env: &[(OsString, OsString)],
    cwd: &Path,
) -> Result<container::Built> {
    container::build(&plan(opts, env, cwd)?)
}

/// Print the plan and the process it would start.
fn dry(opts: &RunOptions, env: &[(OsString, OsString)], cwd: &Path) -> Result<()> {
    let plan = plan(opts, env, cwd)?;
    {
        let config = config_without_container(&plan)?;
        // As planned: the MPI libraries are injected only if the ABI check passes.
        let mut lib_dirs = Vec::new();
        if plan
            .mpi
            .iter()
            .flat_map(|m| &m.steps)
            .any(|s| matches!(s.action, Action::Libraries { .. }))
        {
            lib_dirs.push(MPI_LIB_DIR);
        }
        if plan
            .steps
            .iter()
            .any(|s| matches!(s.action, Action::Libraries { .. }))
        {
            lib_dirs.push(HOST_LIB_DIR);
        }
        let process = plan.process(opts, &config, env, cwd, &lib_dirs)?;
        print!("{}", plan.describe(Some(&process)));
    }
    Ok(())
}

/// Move the calling process into the container (building it, or joining the one of its join
/// key) and resolve the process to start there. On return the process's root, namespaces,
/// uid/gid and working directory are the container's, and under `--remap-root` the fake-root
/// filter is installed; the caller execs (berth run) or lets its scheduler exec the task (the
/// Slurm plugin).
pub fn enter(
    opts: &RunOptions,
    env: &[(OsString, OsString)],
    cwd: &Path,
) -> Result<(Process, Option<container::Built>)> {
    let plan = plan(opts, env, cwd)?;
    tracing::info!(
        "plan: {} ({:?} root, {}), {} steps, {}",
        plan.image.path.display(),
        plan.rootfs,
        if plan.writable {
            "writable"
        } else {
            "read-only"
        },
        plan.steps.len(),
        plan.join_key
            .as_deref()
            .map_or("a container of its own".to_string(), |k| format!(
                "join key '{k}'"
            ))
    );
    let built = match &plan.join_key {
        Some(key) => {
            let ignored =
                crate::join::join(&plan, key, opts.attach, crate::join::local_ranks(env))?;
            if !ignored.is_empty() {
                eprintln!(
                    "berth: warning: attached to the running container '{key}': ignoring this step's {} (the container keeps its own)",
                    ignored.join(", ")
                );
            }
            None
        }
        None => {
            let built = container::build(&plan)?;
            for w in &built.warnings {
                eprintln!("berth: warning: {w}");
            }
            container::enter_user(&plan)?;
            Some(built)
        }
    };
    let config = container::read_config(Path::new("/"))?;
    // Whatever the keeper or build injected is what is there now.
    let lib_dirs: Vec<&str> = [MPI_LIB_DIR, HOST_LIB_DIR]
        .into_iter()
        .filter(|d| Path::new(d).is_dir())
        .collect();
    let mut process = plan.process(opts, &config, env, cwd, &lib_dirs)?;
    if let Err(e) = std::env::set_current_dir(&process.workdir) {
        if opts.workdir.is_some() {
            return Err(Error::Usage(format!(
                "working directory {} is not available in the container: {e} (use --workdir)",
                process.workdir.display()
            )));
        }
        eprintln!(
            "berth: warning: {} is not in the container; starting in /",
            process.workdir.display()
        );
        process.workdir = "/".into();
        process.env.retain(|(k, _)| k != "PWD");
        process.env.push(("PWD".into(), "/".into()));
        std::env::set_current_dir("/").map_err(|e| Error::Sys {
            context: "cannot chdir to /".into(),
            source: e,
        })?;
    }
    // Last: the filter and no_new_privs stay across the exec that follows, berth's own or the
    // one Slurm does of the task after its plugin returns.
    if opts.remap_root {
        crate::fakeroot::install()?;
    }
    Ok((process, built))
}

/// The image config for `--dry-run`, read without building a container. As in a run, a config
/// that is not a regular file, or is over 1 MiB, is an error.
fn config_without_container(plan: &Plan) -> Result<ImageConfig> {
    use crate::image::read_at_most;
    use crate::image_config::{too_large, CONFIG_MAX_BYTES};
    use std::process::{Command, Stdio};
    match plan.rootfs {
        Rootfs::Directory => container::read_config(&plan.image.path),
        Rootfs::Extract | Rootfs::Fuse => {
            let child = Command::new("unsquashfs")
                .args(["-o", &plan.image.offset.to_string(), "-cat"])
                .arg(&plan.image.path)
                .arg(CONFIG_PATH)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn();
            let Ok(mut child) = child else {
                return Ok(ImageConfig::default());
            };
            // Read no more than the bound, then stop unsquashfs.
            let read = read_at_most(child.stdout.take().expect("piped"), CONFIG_MAX_BYTES);
            if !matches!(read, Ok(Some(_))) {
                let _ = child.kill();
            }
            let done = child.wait().is_ok_and(|st| st.success());
            match read {
                Ok(Some(bytes)) if done => ImageConfig::parse_bytes(&bytes).map_err(Error::Image),
                Ok(None) => Err(Error::Image(too_large())),
                // unsquashfs -cat refuses what is not a regular file: say what is there.
                _ => match squashfs_kind(&plan.image.path, plan.image.offset) {
                    Some(kind) => Err(Error::Image(crate::image_config::not_regular(kind))),
                    None => Ok(ImageConfig::default()),
                },
            }
        }
    }
}

/// What the image's config path is when it is not a regular file or a symlink (`unsquashfs
/// -lls` names it by its mode's first letter), or None.
fn squashfs_kind(image: &Path, offset: u64) -> Option<&'static str> {
    let out = std::process::Command::new("unsquashfs")
        .args(["-o", &offset.to_string(), "-lls", "-d", "R"])
        .arg(image)
        .arg(CONFIG_PATH)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let line = listing
        .lines()
        .find(|l| l.ends_with(&format!(" R/{CONFIG_PATH}")))?;
    match line.chars().next()? {
        'p' => Some("a FIFO"),
        's' => Some("a socket"),
        'c' => Some("a character device"),
        'b' => Some("a block device"),
        'd' => Some("a directory"),
        _ => None,
    }
}
