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

use crate::cache;
use crate::error::{Context, Error, Result};
use crate::image_config::{ImageConfig, CONFIG_PATH};
use crate::options::{Create, Propagation};
use crate::plan::{Action, MpiPlan, Plan, Process, Rootfs, Step};
use crate::policy::{parse_version, Compatibility, MpiFamily, OnMismatch};
use crate::sys;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tracing::{debug, info};

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
    let (uid, gid) = (plan.user.uid, plan.user.gid);
    let started = Instant::now();
    let mut phase = Instant::now();
    // Each phase's time, for -v: where a slow start goes.
    let mut done = |what: &str| {
        info!("build: {what} in {:.1?}", phase.elapsed());
        phase = Instant::now();
    };
    let staging = plan.state_dir.join("mnt");
    crate::host::ensure_private_dir(&plan.state_dir, uid)?;
    crate::host::ensure_private_dir(&staging, uid)?;

    // Everything read from the host as the user happens before the namespaces exist.
    let (cache_lock, lower_dir, image_file) = match plan.rootfs {
        Rootfs::Extract => {
            let entry = cache::ensure_extracted(&plan.image, &plan.state_dir)?;
            done(&format!("extract cache {}", entry.rootfs.display()));
            (Some(entry.lock), Some(entry.rootfs), None)
        }
        Rootfs::Directory => (None, Some(plan.image.path.clone()), None),
        Rootfs::Fuse => {
            let f = File::open(&plan.image.path)
                .ctx(|| format!("cannot open image {}", plan.image.path.display()))?;
            (None, None, Some(f))
        }
    };

    let persist = match &plan.persist {
        Some(dir) => {
            for sub in ["upper", "work"] {
                std::fs::create_dir_all(dir.join(sub))
                    .ctx(|| format!("cannot create {}", dir.display()))?;
            }
            Some(dir.clone())
        }
        None => None,
    };

    // Mount mode: a share of this node's mount of the image (its keeper's), or a mount of
    // the run's own (`--image-idle 0`).
    let shared = match &image_file {
        Some(f) if plan.image_idle_secs > 0 => Some(crate::imagekeeper::attach(plan, f)?),
        _ => None,
    };
    if let Some(s) = &shared {
        done(&format!("image keeper {} attached", s.keeper));
    }
    let image_file = if shared.is_some() { None } else { image_file };
    let mut fuse = match &image_file {
        Some(f) => Some(FuseServer::fork(f, plan.image.offset, &plan.image.path)?),
        None => None,
    };
    if let Some(f) = &fuse {
        done(&format!("FUSE server forked (pid {})", f.id()));
    }
    match &shared {
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
            write_id_maps(0, uid, 0, gid)?;
        }
    }
    unshare_more(plan)?;
    done("unshare (user, mount and --unshare namespaces, id maps)");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .ctx(|| "cannot make mounts slaves")?;
    mount(
        Some("berth"),
        &staging,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0700"),
    )
    .ctx(|| format!("cannot mount the staging tmpfs on {}", staging.display()))?;
    std::env::set_current_dir(&staging).ctx(|| "cannot enter the staging area")?;
    for d in ["lower", "upper", "work", "root"] {
        std::fs::create_dir(d).ctx(|| format!("cannot create staging directory {d}"))?;
    }

    if let Some(s) = &shared {
        let target = File::open("lower").ctx(|| "cannot open staging/lower")?;
        sys::move_mount(&s.tree, &OwnedFd::from(target))
            .ctx(|| "cannot attach the image keeper's mount")?;
        done("image attached (the node's shared mount)");
    } else if let Some(server) = fuse.as_mut() {
        server.mount_and_start(&plan.image.path, "lower")?;
        done("FUSE server start (berth-imagefs serving the image)");
    } else if let Some(dir) = lower_dir {
        let tree =
            sys::open_tree_clone(&dir, false).ctx(|| format!("cannot bind {}", dir.display()))?;
        sys::mount_setattr(
            &tree,
            sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
            false,
        )
        .ctx(|| "cannot make the image read-only")?;
        let target = File::open("lower").ctx(|| "cannot open staging/lower")?;
        sys::move_mount(&tree, &OwnedFd::from(target)).ctx(|| "cannot attach the image")?;
    }

    // A named container keeps its writable layer on disk: bind that directory in and put the
    // overlay's upper and work directories there (they must share one mount).
    let layers = match &persist {
        Some(dir) => {
            std::fs::create_dir("persist").ctx(|| "cannot create staging directory persist")?;
            let tree = sys::open_tree_clone(dir, false)
                .ctx(|| format!("cannot bind {}", dir.display()))?;
            let target = File::open("persist").ctx(|| "cannot open staging/persist")?;
            sys::move_mount(&tree, &OwnedFd::from(target))
                .ctx(|| "cannot attach the container's saved layer")?;
            "lowerdir=lower,upperdir=persist/upper,workdir=persist/work,userxattr"
        }
        None => "lowerdir=lower,upperdir=upper,workdir=work,userxattr",
    };
    if let Err(e) = mount(
        Some("berth"),
        "root",
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(layers),
    ) {
        return Err(fuse_failure(&mut fuse).unwrap_or_else(|| Error::Sys {
            context: "cannot mount the overlay root (Linux >= 5.11 is needed)".into(),
            source: e.into(),
        }));
    }
    done(if persist.is_some() {
        "overlay (upper layer on disk)"
    } else {
        "overlay"
    });
    let mut root = Root::new(OwnedFd::from(
        File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open("root")
            .ctx(|| "cannot open the container root")?,
    ))?;
    for step in &plan.steps {
        apply_step(&mut root, step, &staging).map_err(|e| match fuse_failure(&mut fuse) {
            Some(fe) => fe,
            None => e,
        })?;
    }
    done(&format!("{} steps", plan.steps.len()));
    let mut warnings = Vec::new();
    if let Some(mpi) = &plan.mpi {
        match mpi_check(&root.fd, mpi, &plan.state_dir) {
            MpiCheck::NoMpi => info!("mpi: the image has no MPI library; nothing injected"),
            MpiCheck::Compatible => {
                info!(
                    "mpi: the image's MPI passes the ABI check: injecting the host's [{}]",
                    mpi.origin
                );
                for step in &mpi.steps {
                    apply_step(&mut root, step, &staging)?;
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
    }
    if !plan.writable {
        sys::mount_setattr(
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
    done("pivot_root");
    info!("build: container ready in {:.1?}", started.elapsed());
    Ok(Built {
        cache_lock,
        fuse,
        image_keeper: shared.as_ref().map(|s| s.keeper),
        warnings,
    })
}

enum MpiCheck {
    NoMpi,
    Compatible,
    Incompatible(String),
}

/// Where images keep their MPI library.
const LIB_DIRS: &[&str] = &[
    "usr/lib/x86_64-linux-gnu",
    "usr/lib64",
    "usr/lib",
    "usr/local/lib",
    "lib/x86_64-linux-gnu",
    "lib64",
];

/// The ABI check: is the image's MPI (if any) of the host's family and a compatible version?
fn mpi_check(root: &OwnedFd, host: &MpiPlan, state_dir: &Path) -> MpiCheck {
    let Some((path, family)) = find_image_mpi(root) else {
        return MpiCheck::NoMpi;
    };
    let version = image_mpi_version(root, &path, state_dir).unwrap_or_else(|| "unknown".into());
    let host_desc = format!("the host's MPI ({} {})", host.family, host.version);
    let image_desc = format!("the image's MPI ({family} {version}, /{})", path.display());
    if family != host.family {
        return MpiCheck::Incompatible(format!(
            "{image_desc} is not ABI-compatible with {host_desc}: different MPI families"
        ));
    }
    let (Some(i), Some(h)) = (parse_version(&version), parse_version(&host.version)) else {
        return MpiCheck::Incompatible(format!(
            "cannot tell the version of {image_desc} to compare with {host_desc}"
        ));
    };
    let compatible = match host.compatibility {
        Compatibility::Major => i.0 == h.0,
        Compatibility::Full => (i.0, i.1) == (h.0, h.1),
        Compatibility::Strict => i == h,
    };
    if compatible {
        MpiCheck::Compatible
    } else {
        MpiCheck::Incompatible(format!(
            "{image_desc} is not compatible with {host_desc} under the site's '{:?}' rule",
            host.compatibility
        ))
    }
}

/// The image's MPI library: Open MPI's libmpi.so.40, or an MPICH-ABI libmpi.so.12/libmpich.so.12
/// (their SONAME links), probed by name rather than by listing large library directories.
fn find_image_mpi(root: &OwnedFd) -> Option<(PathBuf, MpiFamily)> {
    const NAMES: &[(&str, MpiFamily)] = &[
        ("libmpi.so.40", MpiFamily::Openmpi),
        ("libmpi.so.12", MpiFamily::Mpich),
        ("libmpich.so.12", MpiFamily::Mpich),
    ];
    for dir in LIB_DIRS {
        for (name, family) in NAMES {
            let path = Path::new(dir).join(name);
            if sys::open_in_root(root.as_raw_fd(), &path, libc::O_PATH, 0).is_ok() {
                return Some((path, *family));
            }
        }
    }
    None
}

/// An MPI library is read up to this size for its version string.
const MPI_LIBRARY_LIMIT: u64 = 256 << 20;

/// The version string built into an MPI library: the first NUL-delimited `[v]X.Y.Z` string
/// (Open MPI's and MPICH's version constants come first). Scanning a large library takes a
/// while, so the answer is cached in the state directory by the file's identity.
fn image_mpi_version(root: &OwnedFd, path: &Path, state_dir: &Path) -> Option<String> {
    let fd = sys::open_in_root(root.as_raw_fd(), path, libc::O_PATH, 0).ok()?;
    let meta = File::from(fd.try_clone().ok()?).metadata().ok()?;
    use std::os::unix::fs::MetadataExt;
    let cache_dir = state_dir.join("mpi-versions");
    let key = cache_dir.join(format!("{}-{}-{}", meta.size(), meta.mtime(), meta.ino()));
    if let Ok(v) = std::fs::read_to_string(&key) {
        return Some(v);
    }
    // A FIFO or a link to /dev/zero in the image must not hang or exhaust berth.
    let bytes = read_image_file(&fd, path, MPI_LIBRARY_LIMIT).ok()?;
    let version = mpi_version_in(&bytes)?;
    let _ = std::fs::create_dir_all(&cache_dir);
    let _ = std::fs::write(&key, &version);
    Some(version)
}

/// The first NUL-delimited `[v]X.Y.Z` string of an MPI library (also `berth doctor`'s reading
/// of the host's).
pub(crate) fn mpi_version_in(bytes: &[u8]) -> Option<String> {
    bytes.split(|b| *b == 0).find_map(|s| {
        let s = std::str::from_utf8(s).ok()?;
        let v = s.strip_prefix('v').unwrap_or(s);
        let parts: Vec<&str> = v.split('.').collect();
        (parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
        .then(|| v.to_string())
    })
}

/// If the image server has died, say so with its exit status: that is the real cause.
fn fuse_failure(fuse: &mut Option<FuseServer>) -> Option<Error> {
    let server = fuse.as_mut()?;
    match server.try_wait() {
        Ok(Some(status)) => Some(Error::Image(format!(
            "the image server (berth-imagefs) could not serve the image ({status}); check the image with unsquashfs -s or use --mode extract"
        ))),
        _ => None,
    }
}

/// The image server of a mount-mode container: berth-imagefs ([`crate::imagefs`]), forked.
///
/// It is forked before the namespaces exist, so it lives in the host's namespaces and holds no
/// reference to the container's: it then lives exactly as long as the FUSE mount, which goes
/// with the container's last process (the kernel ends the connection, the server exits). So a
/// killed keeper leaves its ranks their image, and a command's background processes keep
/// theirs. It waits on a socket pair until berth has mounted FUSE and sends it the /dev/fuse fd
/// (berth holds CAP_SYS_ADMIN in the new namespace; no fusermount, no privilege). It runs in a
/// process group of its own and ignores the signals schedulers send to a job's groups: the
/// command may handle them and still need its files.
pub struct FuseServer {
    pid: nix::unistd::Pid,
    status: Option<std::process::ExitStatus>,
    /// Where the /dev/fuse fd is sent once mounted; closed unsent, the server exits.
    channel: Option<UnixStream>,
}

impl FuseServer {
    /// Open the image's squashfs (here, so a corrupt or unsupported image is one line before
    /// anything is mounted) and fork the server that will serve it.
    fn fork(image: &File, offset: u64, path: &Path) -> Result<FuseServer> {
        let file = image
            .try_clone()
            .ctx(|| "cannot duplicate the image's descriptor")?;
        // The server keeps this descriptor, and only this one, of berth's.
        let image_fd = file.as_raw_fd();
        let archive =
            crate::squashfs::Archive::open(file, offset, crate::imagefs::BLOCK_CACHE_BYTES)
                .map_err(|e| {
                    Error::Image(format!(
                        "cannot serve {}: {e}; check it with unsquashfs -s or use --mode extract",
                        path.display()
                    ))
                })?;
        let null = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .ctx(|| "cannot open /dev/null")?;
        let (ours, theirs) = UnixStream::pair().ctx(|| "cannot make a socket pair")?;
        // SAFETY: the caller is single-threaded (see `build`), so the child may allocate and
        // start threads; it ends in _exit, never returning into the caller.
        match unsafe { nix::unistd::fork() }.ctx(|| "cannot fork the FUSE server")? {
            nix::unistd::ForkResult::Child => {
                let me = nix::unistd::Pid::from_raw(0);
                let _ = nix::unistd::setpgid(me, me);
                crate::imagefs::become_server_process();
                drop(ours);
                let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
                let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
                // Nothing else berth had open (a keeper's socket, a scheduler's pipe, the
                // job's other descriptors) may stay open for as long as the mount lives.
                close_other_fds(&[0, 1, 2, theirs.as_raw_fd(), image_fd]);
                // /dev/fuse must be opened in the namespace that mounts it: berth sends it.
                let mut byte = [0u8; 1];
                let mut iov = [std::io::IoSliceMut::new(&mut byte)];
                let mut space = nix::cmsg_space!(RawFd);
                let dev_fd = nix::sys::socket::recvmsg::<()>(
                    theirs.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    nix::sys::socket::MsgFlags::empty(),
                )
                .ok()
                .and_then(|msg| {
                    msg.cmsgs().ok()?.find_map(|c| match c {
                        nix::sys::socket::ControlMessageOwned::ScmRights(fds) => {
                            fds.first().copied()
                        }
                        _ => None,
                    })
                });
                let Some(dev_fd) = dev_fd else {
                    // SAFETY: _exit runs none of the forking berth's destructors or atexit.
                    unsafe { libc::_exit(0) }
                };
                drop(theirs);
                // SAFETY: the fd just received is this process's own.
                let dev = unsafe { OwnedFd::from_raw_fd(dev_fd) };
                let code = match crate::imagefs::serve(archive, dev) {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::warn!("imagefs: the server stopped: {e}");
                        1
                    }
                };
                // SAFETY: as above.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => Ok(FuseServer {
                pid: child,
                status: None,
                channel: Some(ours),
            }),
        }
    }

    /// Mount the image (in the new namespace) on `at` and hand the server its /dev/fuse fd.
    fn mount_and_start(&mut self, image_path: &Path, at: &str) -> Result<()> {
        let dev = File::options().read(true).write(true).open("/dev/fuse").map_err(|e| {
            Error::Image(format!(
                "cannot open /dev/fuse ({e}): mount mode needs /dev/fuse mode 0666 (ask the admin) or use --mode extract"
            ))
        })?;
        let opts = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            dev.as_raw_fd()
        );
        mount(
            Some(image_path),
            at,
            Some("fuse.berth"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RDONLY,
            Some(opts.as_str()),
        )
        .ctx(|| "cannot mount FUSE")?;
        if let Some(channel) = self.channel.take() {
            let fds = [dev.as_raw_fd()];
            nix::sys::socket::sendmsg::<()>(
                channel.as_raw_fd(),
                &[std::io::IoSlice::new(b"g")],
                &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
                nix::sys::socket::MsgFlags::empty(),
                None,
            )
            .ctx(|| "cannot start the FUSE server")?;
        }
        Ok(())
    }

    pub fn id(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.reap(libc::WNOHANG)
    }

    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.reap(0)
            .map(|s| s.unwrap_or(std::os::unix::process::ExitStatusExt::from_raw(0)))
    }

    pub fn kill(&mut self) -> std::io::Result<()> {
        if self.status.is_none() {
            nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL)?;
        }
        Ok(())
    }

    fn reap(&mut self, flags: libc::c_int) -> std::io::Result<Option<std::process::ExitStatus>> {
        if self.status.is_none() {
            let mut raw = 0;
            // SAFETY: `raw` is a live int the kernel writes; `pid` is this server's own child,
            // not yet reaped (`status` is None).
            let got = unsafe { libc::waitpid(self.pid.as_raw(), &mut raw, flags) };
            if got < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if got > 0 {
                self.status = Some(std::os::unix::process::ExitStatusExt::from_raw(raw));
            }
        }
        Ok(self.status)
    }
}

impl Drop for FuseServer {
    /// Not started (the build failed before the mount): the server exits on the closed pipe.
    fn drop(&mut self) {
        if self.channel.take().is_some() {
            let _ = self.wait();
        }
    }
}

/// Close every descriptor but `keep` (in a forked child that does not exec).
pub(crate) fn close_other_fds(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .collect();
    keep.sort_unstable();
    let mut from = 0u32;
    for fd in keep {
        if fd > from {
            // SAFETY: called only in a forked child that never returns to its caller's frames
            // (it ends in _exit), so no object that owned a closed descriptor uses it again.
            unsafe { libc::close_range(from, fd - 1, 0) };
        }
        from = from.max(fd + 1);
    }
    // SAFETY: as above.
    unsafe { libc::close_range(from, u32::MAX, 0) };
}

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

/// The container's root while it is built: its fd, and the mounts berth made itself (the
/// overlay root, its tmpfs mounts). berth creates and writes only on those: a host directory
/// bound in (the home, /tmp, a site mount) is never written to, whatever the image's links say.
struct Root {
    fd: OwnedFd,
    ours: Vec<u64>,
}

impl Root {
    fn new(fd: OwnedFd) -> Result<Root> {
        let id = sys::mount_id(&fd).ctx(|| "cannot identify the container root's mount")?;
        Ok(Root { fd, ours: vec![id] })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Is `fd`'s object on a mount berth made (rather than a host directory bound in)?
    fn is_ours(&self, fd: &OwnedFd) -> bool {
        sys::mount_id(fd).is_ok_and(|id| self.ours.contains(&id))
    }

    /// Where an fd leads, as the container will see it (for messages).
    fn shown(&self, fd: &OwnedFd) -> String {
        let root = std::fs::read_link(sys::fd_path(&self.fd)).unwrap_or_default();
        let at = std::fs::read_link(sys::fd_path(fd)).unwrap_or_default();
        match at.strip_prefix(&root) {
            Ok(rel) => Path::new("/").join(rel).display().to_string(),
            Err(_) => at.display().to_string(),
        }
    }
}

/// The error for a path that an image's symlink leads out of the image.
fn leaves_image(target: &Path, to: &str) -> Error {
    Error::Image(format!(
        "{} in the image leads through a symlink to {to}, outside the image (a host path bound \
         into the container); berth creates and writes nothing there: fix the image's link",
        target.display()
    ))
}

/// Open the target of a mount inside `root`, creating it (directory, or empty file when `file`)
/// if the image lacks it. Resolution stays inside the root whatever symlinks the image holds
/// (openat2 RESOLVE_IN_ROOT), and what berth creates it creates only on its own mounts: a
/// missing mount point under a host directory, or a link that leads into one, is an error
/// rather than a directory made on the host.
fn open_target(root: &Root, target: &Path, file: bool) -> Result<OwnedFd> {
    let rel = target.strip_prefix("/").unwrap_or(target);
    match sys::open_in_root_no_symlinks(root.raw(), rel, libc::O_PATH, 0) {
        // Exactly the path asked for (maybe on a host directory bound in, as a user's mount
        // into their home is).
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            // A symlink of the image's on the way: fine while it stays on berth's mounts.
            if let Ok(fd) = sys::open_in_root(root.raw(), rel, libc::O_PATH, 0) {
                if !root.is_ours(&fd) {
                    return Err(leaves_image(target, &root.shown(&fd)));
                }
                return Ok(fd);
            }
        }
        Err(_) => {}
    }
    let parts: Vec<_> = rel.components().collect();
    let mut prefix = PathBuf::new();
    for (i, part) in parts.iter().enumerate() {
        let parent = sys::open_in_root(root.raw(), &prefix, libc::O_PATH | libc::O_DIRECTORY, 0)
            .ctx(|| format!("cannot open /{} in the container", prefix.display()))?;
        prefix.push(part);
        let last = i + 1 == parts.len();
        if sys::open_in_root(root.raw(), &prefix, libc::O_PATH, 0).is_ok() {
            continue;
        }
        if !root.is_ours(&parent) {
            let shown = root.shown(&parent);
            if Path::new(&shown) != Path::new("/").join(prefix.parent().unwrap_or(&prefix)) {
                return Err(leaves_image(target, &shown));
            }
            return Err(Error::Usage(format!(
                "mount point {} does not exist, and {shown} is a host directory bound into the \
                 container (berth creates nothing on the host): create it there first or choose another target",
                target.display()
            )));
        }
        let name = CString::new(part.as_os_str().as_encoded_bytes()).unwrap();
        // A dangling symlink in the image (resolv.conf often is one, or a link to a site path
        // absent here) is replaced, in the container's own layer, by what the mount needs.
        let _ = nix::unistd::unlinkat(
            Some(parent.as_raw_fd()),
            name.as_c_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        let made = if last && file {
            // SAFETY: `parent` is open and `name` a NUL-terminated name alive for the call.
            let fd = unsafe {
                libc::openat(
                    parent.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_WRONLY
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd >= 0 {
                // SAFETY: `fd` was just opened here and nothing else owns it.
                unsafe { libc::close(fd) };
            }
            fd
        } else {
            // SAFETY: as for openat above.
            unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) }
        };
        if made < 0 {
            let e = std::io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::EACCES) | Some(libc::EOVERFLOW) | Some(libc::EPERM) => {
                    " (a directory image must be owned by you; use a squashfs image otherwise)"
                }
                _ => "",
            };
            return Err(e).ctx(|| {
                format!(
                    "cannot create mount point {} in the container{hint}",
                    target.display()
                )
            });
        }
    }
    let fd = sys::open_in_root(root.raw(), rel, libc::O_PATH, 0).ctx(|| {
        format!(
            "cannot open mount point {} in the container",
            target.display()
        )
    })?;
    // A dangling link of the image's that now leads somewhere berth did not create it.
    if !root.is_ours(&fd)
        && sys::open_in_root_no_symlinks(root.raw(), rel, libc::O_PATH, 0).is_err()
    {
        return Err(leaves_image(target, &root.shown(&fd)));
    }
    Ok(fd)
}

/// A file of the image's that berth reads (never a FIFO, device or socket, which could block
/// or never end), at most `limit` bytes. `fd` is an O_PATH fd of it.
fn read_image_file(fd: &OwnedFd, shown: &Path, limit: u64) -> Result<Vec<u8>> {
    let meta = nix::sys::stat::fstat(fd.as_raw_fd())
        .ctx(|| format!("cannot read {} in the image", shown.display()))?;
    let kind = match meta.st_mode & libc::S_IFMT {
        libc::S_IFREG => None,
        libc::S_IFIFO => Some("a FIFO"),
        libc::S_IFSOCK => Some("a socket"),
        libc::S_IFCHR | libc::S_IFBLK => Some("a device"),
        libc::S_IFDIR => Some("a directory"),
        _ => Some("not a regular file"),
    };
    if let Some(kind) = kind {
        return Err(Error::Image(format!(
            "{} in the image is {kind}, not a regular file",
            shown.display()
        )));
    }
    if meta.st_size as u64 > limit {
        return Err(Error::Image(format!(
            "{} in the image is larger than {} MiB",
            shown.display(),
            limit >> 20
        )));
    }
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(sys::fd_path(fd))
        .ctx(|| format!("cannot read {} in the image", shown.display()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .ctx(|| format!("cannot read {} in the image", shown.display()))?;
    if bytes.len() as u64 > limit {
        return Err(Error::Image(format!(
            "{} in the image is larger than {} MiB",
            shown.display(),
            limit >> 20
        )));
    }
    Ok(bytes)
}

/// The first submount under `path` in this mount namespace, for the message that suggests rbind.
fn first_submount(path: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    info.split(|b| *b == b'\n').find_map(|line| {
        let field = line.split(|b| *b == b' ').nth(4)?;
        let point = PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_mountinfo(field)));
        (point != path && point.starts_with(path)).then_some(point)
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Clone a host tree for a bind. Without `recursive` the kernel refuses a tree that has
/// submounts (in a user namespace they are locked to it): say which, and suggest rbind.
fn clone_source(source: &Path, recursive: bool, origin: &str) -> Result<OwnedFd> {
    match sys::open_tree_clone(source, recursive) {
        Ok(tree) => Ok(tree),
        Err(e) if !recursive && e.raw_os_error() == Some(libc::EINVAL) => {
            let real = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
            let sub = first_submount(&real)
                .map(|p| format!("{} is mounted under it", p.display()))
                .unwrap_or_else(|| "it has submounts".into());
            Err(Error::Usage(format!(
                "cannot bind {} without its submounts ({sub}) [{origin}]: use rbind instead of bind",
                source.display()
            )))
        }
        Err(e) => Err(e).ctx(|| format!("cannot bind {}", source.display())),
    }
}

fn apply_step(root: &mut Root, step: &Step, staging: &Path) -> Result<()> {
    let started = Instant::now();
    let done = apply_action(root, step, staging);
    debug!(
        "step {} {} [{}] in {:.1?}{}",
        step.target.display(),
        step.action.describe(),
        step.origin,
        started.elapsed(),
        if done.is_err() { " (failed)" } else { "" }
    );
    done
}

fn apply_action(root: &mut Root, step: &Step, staging: &Path) -> Result<()> {
    let target = &step.target;
    match &step.action {
        Action::Bind {
            source,
            recursive,
            readonly,
            propagation,
            noexec,
            create,
        } => {
            let meta =
                std::fs::metadata(source).ctx(|| format!("cannot bind {}", source.display()))?;
            let tree = clone_source(source, *recursive, &step.origin)?;
            let mut attrs = sys::MOUNT_ATTR_NOSUID;
            if !target.starts_with("/dev") {
                attrs |= sys::MOUNT_ATTR_NODEV;
            }
            if *readonly {
                attrs |= sys::MOUNT_ATTR_RDONLY;
            }
            if *noexec {
                attrs |= sys::MOUNT_ATTR_NOEXEC;
            }
            sys::mount_setattr(&tree, attrs, *recursive)
                .ctx(|| format!("cannot set options on the mount of {}", source.display()))?;
            // The copy of a host mount stays a slave of it (mounts made there later appear
            // inside) only where the site asked for rslave; otherwise it is cut off.
            let propagation = match propagation {
                Propagation::Private => sys::PROPAGATION_PRIVATE,
                Propagation::Slave => sys::PROPAGATION_SLAVE,
                Propagation::Unbindable => sys::PROPAGATION_UNBINDABLE,
            };
            sys::set_propagation(&tree, propagation, *recursive).ctx(|| {
                format!(
                    "cannot set the propagation of the mount of {}",
                    source.display()
                )
            })?;
            let file = match create {
                Create::Auto => !meta.is_dir(),
                Create::Dir => false,
                Create::File => true,
            };
            let at = open_target(root, target, file)?;
            sys::move_mount(&tree, &at)
                .ctx(|| format!("cannot mount {} on {}", source.display(), target.display()))?;
            // A recursive bind of an ancestor of the staging area (/tmp, /, a home holding
            // BERTH_STATE_DIR) copied the staging mounts too: detach that copy.
            if *recursive {
                if let Ok(rel) = staging.strip_prefix(source) {
                    let inner = target.strip_prefix("/").unwrap_or(target).join(rel);
                    if let Ok(fd) = sys::open_in_root(root.raw(), &inner, libc::O_PATH, 0) {
                        umount2(sys::fd_path(&fd).as_str(), MntFlags::MNT_DETACH).ctx(|| {
                            format!("cannot hide the staging area under {}", target.display())
                        })?;
                    }
                }
            }
        }
        Action::Tmpfs {
            options,
            readonly,
            noexec,
        } => {
            let at = open_target(root, target, false)?;
            let mut flags = MsFlags::MS_NOSUID;
            if !target.starts_with("/dev") {
                flags |= MsFlags::MS_NODEV;
            }
            if *readonly {
                flags |= MsFlags::MS_RDONLY;
            }
            if *noexec {
                flags |= MsFlags::MS_NOEXEC;
            }
            mount(
                Some("tmpfs"),
                sys::fd_path(&at).as_str(),
                Some("tmpfs"),
                flags,
                Some(options.as_str()),
            )
            .ctx(|| format!("cannot mount tmpfs on {}", target.display()))?;
            let fd = open_target(root, target, false)?;
            root.ours.push(
                sys::mount_id(&fd)
                    .ctx(|| format!("cannot identify the tmpfs on {}", target.display()))?,
            );
        }
        Action::Umount => {
            let rel = target.strip_prefix("/").unwrap_or(target);
            let at = sys::open_in_root_no_symlinks(root.raw(), rel, libc::O_PATH, 0).ctx(|| {
                format!(
                    "cannot unmount {}: not found in the container",
                    target.display()
                )
            })?;
            umount2(sys::fd_path(&at).as_str(), MntFlags::MNT_DETACH)
                .ctx(|| format!("cannot unmount {}", target.display()))?;
        }
        Action::Sysfs => {
            // Mountable from here because this user namespace owns the network namespace; it
            // must be as restrictive as the host's /sys (ro, nosuid, nodev, noexec).
            let at = open_target(root, target, false)?;
            mount(
                Some("sysfs"),
                sys::fd_path(&at).as_str(),
                Some("sysfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .ctx(|| format!("cannot mount a sysfs on {}", target.display()))?;
        }
        Action::Devpts => {
            // A devpts of the container's own: ptys opened inside are the user's, and the host's
            // devpts (ptmxmode=000 from a user namespace) is not needed.
            let at = open_target(root, target, false)?;
            mount(
                Some("devpts"),
                sys::fd_path(&at).as_str(),
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620"),
            )
            .ctx(|| format!("cannot mount a devpts instance on {}", target.display()))?;
        }
        Action::Symlink { to } => {
            let parent = target.parent().unwrap_or(Path::new("/"));
            let dir = open_target(root, parent, false)?;
            if !root.is_ours(&dir) {
                return Err(leaves_image(parent, &root.shown(&dir)));
            }
            let name = target.file_name().unwrap_or_default();
            nix::unistd::symlinkat(to.as_path(), Some(dir.as_raw_fd()), name)
                .or_else(|e| {
                    if e == nix::errno::Errno::EEXIST {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .ctx(|| format!("cannot create symlink {}", target.display()))?;
        }
        Action::AddEntry { line } => add_entry(root, target, line)?,
        Action::AddEntryIfDir { line } => {
            let dir = target.parent().unwrap_or(Path::new("/"));
            let rel = dir.strip_prefix("/").unwrap_or(dir);
            if sys::open_in_root(root.raw(), rel, libc::O_PATH | libc::O_DIRECTORY, 0).is_ok() {
                add_entry(root, target, line)?
            }
        }
        Action::Libraries { files } => {
            let state_dir = staging.parent().unwrap_or(Path::new("/"));
            let dir = library_copy(state_dir, files)?;
            let tree = sys::open_tree_clone(&dir, false)
                .ctx(|| format!("cannot bind {}", dir.display()))?;
            sys::mount_setattr(
                &tree,
                sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
                false,
            )
            .ctx(|| "cannot make the host libraries read-only")?;
            let at = open_target(root, target, false)?;
            sys::move_mount(&tree, &at)
                .ctx(|| format!("cannot mount host libraries on {}", target.display()))?;
        }
    }
    Ok(())
}

/// A directory holding copies of `files` under their own (SONAME) names, made once per node
/// and kept in the state directory under a key of the files' identities, so a changed host
/// library gets a new copy.
fn library_copy(state_dir: &Path, files: &[PathBuf]) -> Result<PathBuf> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    for f in files {
        let m = std::fs::metadata(f).ctx(|| format!("cannot read host library {}", f.display()))?;
        h.update(
            format!(
                "{}|{}|{}|{}|{}\n",
                f.display(),
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000
            )
            .as_bytes(),
        );
    }
    let key: String = h
        .finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    let root = state_dir.join("host-libs");
    let dir = root.join(&key);
    if dir.is_dir() {
        return Ok(dir);
    }
    let _ = std::fs::create_dir(&root);
    let tmp = root.join(format!(".tmp-{key}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).ctx(|| format!("cannot create {}", tmp.display()))?;
    for f in files {
        let name = f.file_name().unwrap_or_default();
        if let Err(e) = std::fs::copy(f, tmp.join(name)) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e).ctx(|| format!("cannot copy host library {}", f.display()));
        }
    }
    // Another rank may have made the same copy meanwhile: either is good.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(dir)
}

/// passwd and group files are read up to this size.
const ENTRY_FILE_LIMIT: u64 = 16 << 20;

/// Append `line` to a passwd-style file unless an entry of that name is there already. The file
/// is written only where berth made it (the overlay's upper layer): an image whose /etc/passwd
/// links to a host file gets an error, not a write to that file.
fn add_entry(root: &Root, target: &Path, line: &str) -> Result<()> {
    let rel = target.strip_prefix("/").unwrap_or(target);
    let name = line.split(':').next().unwrap_or_default();
    let (dir_path, file_name) = (
        target.parent().unwrap_or(Path::new("/")),
        target.file_name().unwrap_or_default(),
    );
    let cannot_write = || format!("cannot write {} in the container", target.display());
    let existing = match sys::open_in_root(root.raw(), rel, libc::O_PATH, 0) {
        Ok(fd) => {
            if !root.is_ours(&fd) {
                return Err(leaves_image(target, &root.shown(&fd)));
            }
            Some(fd)
        }
        Err(_) => None,
    };
    let mut content = match &existing {
        Some(fd) => {
            String::from_utf8_lossy(&read_image_file(fd, target, ENTRY_FILE_LIMIT)?).into_owned()
        }
        None => String::new(),
    };
    if content.lines().any(|l| l.split(':').next() == Some(name)) {
        return Ok(());
    }
    if !content.is_empty() && !content.ends_with('\n') {
        content.push('\n');
    }
    content.push_str(line);
    content.push('\n');
    let file = match &existing {
        Some(fd) => File::options()
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(sys::fd_path(fd))
            .ctx(cannot_write)?,
        None => {
            // Missing (or a dangling link of the image's): made fresh in a directory of ours.
            let dir = open_target(root, dir_path, false)?;
            if !root.is_ours(&dir) {
                return Err(leaves_image(dir_path, &root.shown(&dir)));
            }
            let c = CString::new(file_name.as_encoded_bytes()).unwrap_or_default();
            let _ = nix::unistd::unlinkat(
                Some(dir.as_raw_fd()),
                c.as_c_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
            // SAFETY: `dir` is open and `c` a NUL-terminated name alive for the call.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_WRONLY
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).ctx(cannot_write);
            }
            // SAFETY: openat succeeded, so `fd` is a new descriptor that nothing else owns.
            unsafe { File::from_raw_fd(fd) }
        }
    };
    std::io::Write::write_all(&mut &file, content.as_bytes()).ctx(cannot_write)
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

/// Move into the inner user namespace where the caller is their own uid/gid again.
pub fn enter_user(plan: &Plan) -> Result<()> {
    if plan.remap_root {
        return Ok(());
    }
    unshare(CloneFlags::CLONE_NEWUSER).ctx(|| "cannot create the inner user namespace")?;
    write_id_maps(plan.user.uid, 0, plan.user.gid, 0)
}

/// Read the image config from the container root (the current root after [`build`]), or from a
/// directory image (`--dry-run`). Images without one (plain directories, squashfs made by other
/// tools) get the empty config. The file is resolved inside `root`, opened without blocking (a
/// FIFO must hang neither the run nor a keeper) and must be a regular file of at most 1 MiB.
pub fn read_config(root: &Path) -> Result<ImageConfig> {
    use crate::image::{kind_name, read_at_most};
    use crate::image_config::{not_regular, too_large, CONFIG_MAX_BYTES};
    let shown = format!("`/{CONFIG_PATH}` in the image");
    let dir = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(root)
        .ctx(|| format!("cannot open {}", root.display()))?;
    let rel = Path::new(CONFIG_PATH);
    let nonblocking = libc::O_RDONLY | libc::O_NONBLOCK;
    let file = match sys::open_in_root(dir.as_raw_fd(), rel, nonblocking, 0) {
        Ok(fd) => File::from(fd),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
            return Ok(ImageConfig::default())
        }
        // A socket cannot be opened at all: say what is there rather than ENXIO.
        Err(e) => {
            let meta = sys::open_in_root(dir.as_raw_fd(), rel, libc::O_PATH, 0)
                .and_then(|fd| File::from(fd).metadata());
            return Err(match meta {
                Ok(m) if !m.is_file() => Error::Image(not_regular(kind_name(m.file_type()))),
                _ => Error::Image(format!("cannot read {shown}: {e}")),
            });
        }
    };
    let meta = file.metadata().ctx(|| format!("cannot read {shown}"))?;
    if !meta.is_file() {
        return Err(Error::Image(not_regular(kind_name(meta.file_type()))));
    }
    if meta.len() > CONFIG_MAX_BYTES {
        return Err(Error::Image(too_large()));
    }
    let bytes = read_at_most(file, CONFIG_MAX_BYTES)
        .ctx(|| format!("cannot read {shown}"))?
        .ok_or_else(|| Error::Image(too_large()))?;
    ImageConfig::parse_bytes(&bytes).map_err(Error::Image)
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

#[cfg(test)]
mod read_config_tests {
    use super::*;

    fn root_with(name: &str, make: impl FnOnce(&Path)) -> PathBuf {
        let root = std::env::temp_dir().join(format!("berth-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join(".berth")).unwrap();
        make(&root.join(CONFIG_PATH));
        root
    }

    fn config_error(root: &Path) -> String {
        let e = read_config(root).unwrap_err().to_string();
        std::fs::remove_dir_all(root).unwrap();
        e
    }

    #[test]
    fn reads_a_regular_config_and_defaults_when_missing() {
        let root = root_with("ok", |p| {
            std::fs::write(p, r#"{"config":{"Env":["A=b"]}}"#).unwrap()
        });
        assert_eq!(read_config(&root).unwrap().config.env, vec!["A=b"]);
        std::fs::remove_file(root.join(CONFIG_PATH)).unwrap();
        assert_eq!(read_config(&root).unwrap(), ImageConfig::default());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refuses_fifos_sockets_directories_and_huge_files_without_blocking() {
        let fifo = root_with("fifo", |p| {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap()
        });
        assert!(config_error(&fifo).contains("`/.berth/image.json` in the image is a FIFO"));
        let sock = root_with("sock", |p| {
            std::mem::forget(std::os::unix::net::UnixListener::bind(p).unwrap())
        });
        assert!(config_error(&sock).contains("is a socket"));
        let dir = root_with("dir", |p| std::fs::create_dir(p).unwrap());
        assert!(config_error(&dir).contains("is a directory"));
        let huge = root_with("huge", |p| {
            File::create(p).unwrap().set_len(2 << 20).unwrap()
        });
        assert!(config_error(&huge).contains("larger than 1 MiB"));
        // An absolute link is resolved inside the root: here it leads nowhere.
        let link = root_with("link", |p| {
            std::os::unix::fs::symlink("/etc/hostname", p).unwrap()
        });
        assert_eq!(read_config(&link).unwrap(), ImageConfig::default());
        std::fs::remove_dir_all(&link).unwrap();
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(br"/tmp/a\040b"), b"/tmp/a b");
        assert_eq!(unescape_mountinfo(br"/x\134y\011"), b"/x\\y\t");
        // Not an escape: kept as is, also at the end.
        assert_eq!(unescape_mountinfo(br"/x\09"), br"/x\09");
        assert_eq!(unescape_mountinfo(br"/x\"), br"/x\");
    }
}
