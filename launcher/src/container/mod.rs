//! Performing a plan: the one place that unshares, mounts, pivots and execs.
//!
//! The sequence, like Charliecloud's ch-run, reads top to bottom in [`build`]:
//! 1. an outer user namespace where the caller is uid 0 (mapped to their own uid: no other uid
//!    is reachable) and a private mount namespace;
//! 2. a tmpfs staging area; the image as the overlay's lower layer (berth-imagefs serving the
//!    squashfs, or a bind of the extracted/directory rootfs) under a tmpfs upper layer, so
//!    mount points can be made anywhere without touching the image;
//! 3. the plan's mounts, resolved inside the new root with openat2(RESOLVE_IN_ROOT) so symlinks
//!    and `..` in the image cannot point them elsewhere, and attached with the new mount API;
//! 4. the root made read-only (unless `--writable`), pivot_root, the host root detached.
//!
//! [`enter_user`] then moves the process into an inner user namespace where it is the caller's
//! own uid/gid again (files the image owns appear as theirs, as in extract mode), and [`exec`]
//! sets no_new_privs and executes the command. The mount namespace's owner is the outer
//! namespace, so the process cannot undo any of the mounts.

//!
//! The parts, each in its own file: [`fuse`] the per-run image server, [`root`] the container's
//! root and the safe creation of mount points in it, [`mounts`] the plan's steps, [`syscalls`]
//! the mount operations those steps perform (a trait, so their order and flags are unit-tested
//! without privileges), [`mpi_check`] the host-vs-image MPI ABI check, [`exec`] entering the
//! inner user namespace and executing the command, [`config`] reading the image's config.

mod config;
mod exec;
mod fuse;
mod mounts;
mod mpi_check;
mod root;
mod syscalls;

pub use config::read_config;
pub(crate) use exec::find_in_path;
pub use exec::{enter_user, exec};
pub use fuse::FuseServer;
pub(crate) use fuse::{close_other_fds, mount_fuse};
pub(crate) use mpi_check::mpi_version_in;

use crate::cache;
use crate::error::{Context, Error, Result};
use crate::plan::{Action, Plan, Rootfs};
use crate::policy::OnMismatch;
use crate::sys;
use fuse::fuse_failure;
use mounts::apply_step;
use mpi_check::{mpi_check, MpiCheck};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use root::Root;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use syscalls::{Kernel, MountOps};
use tracing::info;

/// What must stay alive as long as the container does.
pub struct Built {
    /// Shared lock on the extract-cache entry (keeps `berth cache clean` away).
    pub cache_lock: Option<File>,
    /// The image server (mount mode); it ends with the FUSE mount (see [`FuseServer`]).
    pub fuse: Option<FuseServer>,
    /// The image keeper whose mount the container uses (mount mode, shared): its pid.
    pub image_keeper: Option<i32>,
    /// Things the user should know (an MPI left as the image's own...).
    pub warnings: Vec<String>,
}

pub(crate) fn write_id_maps(
    inside_uid: u32,
    outside_uid: u32,
    inside_gid: u32,
    outside_gid: u32,
) -> Result<()> {
    sys::write_file("/proc/self/setgroups", "deny").ctx(|| "cannot write /proc/self/setgroups")?;
    sys::write_file(
        "/proc/self/uid_map",
        &format!("{inside_uid} {outside_uid} 1"),
    )
    .ctx(|| "cannot write the uid map")?;
    sys::write_file(
        "/proc/self/gid_map",
        &format!("{inside_gid} {outside_gid} 1"),
    )
    .ctx(|| "cannot write the gid map")?;
    Ok(())
}

/// Build the container in the calling process (which must be single-threaded). On return the
/// process's root is the container's root and it is uid 0 of the outer user namespace.
pub fn build(plan: &Plan) -> Result<Built> {
    let started = Instant::now();
    let mut clock = Phases(Instant::now());
    let staging = plan.state_dir.join("mnt");
    crate::host::ensure_private_dir(&plan.state_dir, plan.user.uid)?;
    crate::host::ensure_private_dir(&staging, plan.user.uid)?;

    // Everything read from the host as the user happens before the namespaces exist.
    let (cache_lock, lower_dir, image_file) = open_image(plan, &mut clock)?;
    let persist = make_persist_dirs(plan)?;
    // Mount mode: a share of this node's mount of the image (its keeper's), or a mount of
    // the run's own (`--image-idle 0`, or a kernel without open_tree: there is no detached
    // mount to hand over, and a run joining the keeper's mount namespace would see its old
    // copy of the host's mounts).
    let shared = match &image_file {
        Some(f) if plan.image_idle_secs > 0 && sys::missing_mount_api().is_none() => {
            Some(crate::imagekeeper::attach(plan, f)?)
        }
        _ => None,
    };
    if let Some(s) = &shared {
        clock.done(&format!("image keeper {} attached", s.keeper));
    }
    let image_file = if shared.is_some() { None } else { image_file };
    let mut fuse = match &image_file {
        Some(f) => Some(FuseServer::fork(
            f,
            plan.image.offset,
            &plan.image.path,
            read_first(plan),
        )?),
        None => None,
    };
    if let Some(f) = &fuse {
        clock.done(&format!("FUSE server forked (pid {})", f.id()));
    }

    enter_namespaces(plan, shared.as_ref())?;
    clock.done("unshare (user, mount and --unshare namespaces, id maps)");

    make_staging(&staging)?;
    let kernel = Kernel::new(&staging).ctx(|| "cannot open the staging area")?;
    if let Some(s) = &shared {
        let target = File::open("lower").ctx(|| "cannot open staging/lower")?;
        sys::move_mount(&s.tree, &OwnedFd::from(target))
            .ctx(|| "cannot attach the image keeper's mount")?;
        clock.done("image attached (the node's shared mount)");
    } else if let Some(server) = fuse.as_mut() {
        server.mount_and_start(&plan.image.path, "lower")?;
        clock.done("FUSE server start (berth-imagefs serving the image)");
    } else if let Some(dir) = lower_dir {
        attach_lower_dir(&kernel, &dir)?;
    }
    mount_overlay(&kernel, persist.as_deref(), &mut fuse).map_err(|e| match (&shared, e) {
        // A keeper answers before its server has started: one that could not start shows here.
        (Some(s), Error::Sys { source, .. })
            if matches!(
                source.raw_os_error(),
                Some(libc::ENOTCONN | libc::ECONNABORTED)
            ) =>
        {
            Error::Image(format!(
                "the image keeper {} could not serve {} ({source}); see `berth -v`, check the image with unsquashfs -s, or use --image-idle 0",
                s.keeper,
                plan.image.path.display()
            ))
        }
        (_, e) => e,
    })?;
    clock.done(if persist.is_some() {
        "overlay (upper layer on disk)"
    } else {
        "overlay"
    });

    let root_dir = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open("root")
        .ctx(|| "cannot open the container root")?;
    let mut root = Root::new(OwnedFd::from(root_dir), &kernel)?;
    for step in &plan.steps {
        apply_step(&mut root, step, &staging).map_err(|e| match fuse_failure(&mut fuse) {
            Some(fe) => fe,
            None => e,
        })?;
    }
    clock.done(&format!("{} steps", plan.steps.len()));
    let warnings = inject_mpi(plan, &mut root, &staging)?;

    if !plan.writable {
        root.sys
            .set_attrs(
                &root.fd,
                sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
                false,
            )
            .ctx(|| "cannot make the container root read-only")?;
    }
    nix::unistd::fchdir(root.raw()).ctx(|| "cannot enter the container root")?;
    sys::pivot_root_here().ctx(|| "pivot_root failed")?;
    umount2(".", MntFlags::MNT_DETACH).ctx(|| "cannot detach the host root")?;
    std::env::set_current_dir("/").ctx(|| "cannot chdir to /")?;
    clock.done("pivot_root");
    info!("build: container ready in {:.1?}", started.elapsed());
    Ok(Built {
        cache_lock,
        fuse,
        image_keeper: shared.as_ref().map(|s| s.keeper),
        warnings,
    })
}

/// The image files a run reads first: those its steps add entries to, and the image's config.
/// A fresh mount's server decompresses them ahead.
pub(crate) fn read_first(plan: &Plan) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = plan
        .steps
        .iter()
        .filter(|s| {
            matches!(
                s.action,
                Action::AddEntry { .. } | Action::AddEntryIfDir { .. }
            )
        })
        .map(|s| s.target.clone())
        .collect();
    files.push(Path::new("/").join(crate::image_config::CONFIG_PATH));
    files
}

/// Each phase's time, for -v: where a slow start goes.
struct Phases(Instant);

impl Phases {
    fn done(&mut self, what: &str) {
        info!("build: {what} in {:.1?}", self.0.elapsed());
        self.0 = Instant::now();
    }
}

/// The image as the host gives it: the extract-cache entry's lock and rootfs, a directory
/// rootfs, or the squashfs file (mount mode).
fn open_image(
    plan: &Plan,
    clock: &mut Phases,
) -> Result<(Option<File>, Option<PathBuf>, Option<File>)> {
    Ok(match plan.rootfs {
        Rootfs::Extract => {
            let entry = cache::ensure_extracted(&plan.image, &plan.state_dir)?;
            clock.done(&format!("extract cache {}", entry.rootfs.display()));
            (Some(entry.lock), Some(entry.rootfs), None)
        }
        Rootfs::Directory => (None, Some(plan.image.path.clone()), None),
        Rootfs::Fuse => {
            let f = File::open(&plan.image.path)
                .ctx(|| format!("cannot open image {}", plan.image.path.display()))?;
            (None, None, Some(f))
        }
    })
}

/// A named container's writable layer on disk: its upper and work directories.
fn make_persist_dirs(plan: &Plan) -> Result<Option<PathBuf>> {
    let Some(dir) = &plan.persist else {
        return Ok(None);
    };
    for sub in ["upper", "work"] {
        std::fs::create_dir_all(dir.join(sub))
            .ctx(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(Some(dir.clone()))
}

/// The outer user namespace (or the image keeper's) and a private mount namespace, with mounts
/// from the host received but never sent back.
fn enter_namespaces(plan: &Plan, shared: Option<&crate::imagekeeper::Attached>) -> Result<()> {
    match shared {
        // The mount is usable only in the keeper's user namespace (and its children).
        Some(s) => {
            nix::sched::setns(&s.userns, CloneFlags::CLONE_NEWUSER)
                .ctx(|| "cannot join the image keeper's user namespace")?;
            unshare(CloneFlags::CLONE_NEWNS).ctx(|| "cannot create a mount namespace")?;
        }
        None => {
            unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS).ctx(|| {
                "cannot create a user namespace (are unprivileged user namespaces enabled?)"
            })?;
            write_id_maps(0, plan.user.uid, 0, plan.user.gid)?;
        }
    }
    unshare_more(plan)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .ctx(|| "cannot make mounts slaves")
}

/// The staging tmpfs, entered, with the overlay's directories.
fn make_staging(staging: &Path) -> Result<()> {
    mount(
        Some("berth"),
        staging,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0700"),
    )
    .ctx(|| format!("cannot mount the staging tmpfs on {}", staging.display()))?;
    std::env::set_current_dir(staging).ctx(|| "cannot enter the staging area")?;
    for d in ["lower", "upper", "work", "root"] {
        std::fs::create_dir(d).ctx(|| format!("cannot create staging directory {d}"))?;
    }
    Ok(())
}

/// An extracted or directory rootfs, bound read-only as the overlay's lower layer.
fn attach_lower_dir(kernel: &Kernel, dir: &Path) -> Result<()> {
    let tree = kernel
        .clone_tree(dir, false)
        .ctx(|| format!("cannot bind {}", dir.display()))?;
    kernel
        .set_attrs(
            &tree,
            sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
            false,
        )
        .ctx(|| "cannot make the image read-only")?;
    let target = File::open("lower").ctx(|| "cannot open staging/lower")?;
    kernel
        .attach(&tree, &OwnedFd::from(target))
        .ctx(|| "cannot attach the image")
}

/// The overlay root: the image under a tmpfs upper layer, or under a named container's saved
/// layer. A failure because the image server died says so.
fn mount_overlay(
    kernel: &Kernel,
    persist: Option<&Path>,
    fuse: &mut Option<FuseServer>,
) -> Result<()> {
    // A named container keeps its writable layer on disk: bind that directory in and put the
    // overlay's upper and work directories there (they must share one mount).
    let layers = match persist {
        Some(dir) => {
            std::fs::create_dir("persist").ctx(|| "cannot create staging directory persist")?;
            let tree = kernel
                .clone_tree(dir, false)
                .ctx(|| format!("cannot bind {}", dir.display()))?;
            let target = File::open("persist").ctx(|| "cannot open staging/persist")?;
            kernel
                .attach(&tree, &OwnedFd::from(target))
                .ctx(|| "cannot attach the container's saved layer")?;
            "lowerdir=lower,upperdir=persist/upper,workdir=persist/work,userxattr"
        }
        None => "lowerdir=lower,upperdir=upper,workdir=work,userxattr",
    };
    mount(
        Some("berth"),
        "root",
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(layers),
    )
    .map_err(|e| {
        fuse_failure(fuse).unwrap_or_else(|| Error::Sys {
            context: "cannot mount the overlay root (Linux >= 5.11 is needed)".into(),
            source: e.into(),
        })
    })
}

/// The host's MPI, injected if the image's passes the ABI check; the warnings for the user.
fn inject_mpi(plan: &Plan, root: &mut Root, staging: &Path) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let Some(mpi) = &plan.mpi else {
        return Ok(warnings);
    };
    match mpi_check(&root.fd, mpi, &plan.state_dir) {
        MpiCheck::NoMpi => info!("mpi: the image has no MPI library; nothing injected"),
        MpiCheck::Compatible => {
            info!(
                "mpi: the image's MPI passes the ABI check: injecting the host's [{}]",
                mpi.origin
            );
            for step in &mpi.steps {
                apply_step(root, step, staging)?;
            }
        }
        MpiCheck::Incompatible(why) => match mpi.on_mismatch {
            OnMismatch::Error => {
                return Err(Error::Image(format!(
                    "{why}; use --no-mpi to run with the image's own MPI [{}]",
                    mpi.origin
                )))
            }
            OnMismatch::Image => {
                info!("mpi: {why}: not injected [{}]", mpi.origin);
                warnings.push(format!("{why}; running with the image's own MPI"))
            }
        },
    }
    Ok(warnings)
}

/// The namespaces asked for besides user and mount (`--unshare`), made here, in the outer user
/// namespace, so that it owns them: berth (and the keeper) may then configure them and mount a
/// sysfs for the network one, and the inner user namespace cannot undo them. A new UTS
/// namespace starts with the host's hostname, which ranks and MPI expect; it is kept.
fn unshare_more(plan: &Plan) -> Result<()> {
    let ns = plan.unshare;
    let mut flags = CloneFlags::empty();
    flags.set(CloneFlags::CLONE_NEWNET, ns.net);
    flags.set(CloneFlags::CLONE_NEWIPC, ns.ipc);
    flags.set(CloneFlags::CLONE_NEWUTS, ns.uts);
    if flags.is_empty() {
        return Ok(());
    }
    unshare(flags).ctx(|| format!("cannot unshare the {} namespaces", ns.names().join(", ")))?;
    if ns.net {
        // A new network namespace has only lo, and it is down.
        sys::loopback_up().ctx(|| "cannot bring up lo in the container's network namespace")?;
    }
    Ok(())
}
