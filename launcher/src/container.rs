//! Performing a plan: the one place that unshares, mounts, pivots and execs.
//!
//! The sequence, like Charliecloud's ch-run, reads top to bottom in [`build`]:
//! 1. an outer user namespace where the caller is uid 0 (mapped to their own uid: no other uid
//!    is reachable) and a private mount namespace;
//! 2. a tmpfs staging area; the image as the overlay's lower layer (squashfuse_ll serving the
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
use crate::plan::{Action, MpiPlan, Plan, Process, Rootfs, Step};
use crate::policy::{parse_version, Compatibility, MpiFamily, OnMismatch};
use crate::sys;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// What must stay alive as long as the container does.
pub struct Built {
    /// Shared lock on the extract-cache entry (keeps `berth cache clean` away).
    pub cache_lock: Option<File>,
    /// The squashfuse_ll server (mount mode); it dies with its parent (PR_SET_PDEATHSIG).
    pub fuse: Option<Child>,
    /// Things the user should know (an MPI left as the image's own...).
    pub warnings: Vec<String>,
}

fn write_id_maps(
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
    let staging = plan.state_dir.join("mnt");
    crate::host::ensure_private_dir(&plan.state_dir, uid)?;
    crate::host::ensure_private_dir(&staging, uid)?;

    // Everything read from the host as the user happens before the namespaces exist.
    let (cache_lock, lower_dir, image_file) = match plan.rootfs {
        Rootfs::Extract => {
            let entry = cache::ensure_extracted(&plan.image, &plan.state_dir)?;
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

    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
        .ctx(|| "cannot create a user namespace (are unprivileged user namespaces enabled?)")?;
    write_id_maps(0, uid, 0, gid)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .ctx(|| "cannot make mounts private")?;
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

    let mut fuse = None;
    if let Some(image_file) = image_file {
        fuse = Some(start_squashfuse(plan, &image_file)?);
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
    let root = OwnedFd::from(
        File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open("root")
            .ctx(|| "cannot open the container root")?,
    );
    for step in &plan.steps {
        apply_step(&root, step, &staging).map_err(|e| match fuse_failure(&mut fuse) {
            Some(fe) => fe,
            None => e,
        })?;
    }
    let mut warnings = Vec::new();
    if let Some(mpi) = &plan.mpi {
        match mpi_check(&root, mpi, &plan.state_dir) {
            MpiCheck::NoMpi => {}
            MpiCheck::Compatible => {
                for step in &mpi.steps {
                    apply_step(&root, step, &staging)?;
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
                    warnings.push(format!("{why}; running with the image's own MPI"))
                }
            },
        }
    }
    if !plan.writable {
        sys::mount_setattr(
            &root,
            sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
            false,
        )
        .ctx(|| "cannot make the container root read-only")?;
    }
    nix::unistd::fchdir(root.as_raw_fd()).ctx(|| "cannot enter the container root")?;
    sys::pivot_root_here().ctx(|| "pivot_root failed")?;
    umount2(".", MntFlags::MNT_DETACH).ctx(|| "cannot detach the host root")?;
    std::env::set_current_dir("/").ctx(|| "cannot chdir to /")?;
    Ok(Built {
        cache_lock,
        fuse,
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

/// The version string built into an MPI library: the first NUL-delimited `[v]X.Y.Z` string
/// (Open MPI's and MPICH's version constants come first). Scanning a large library takes a
/// while, so the answer is cached in the state directory by the file's identity.
fn image_mpi_version(root: &OwnedFd, path: &Path, state_dir: &Path) -> Option<String> {
    let fd = sys::open_in_root(root.as_raw_fd(), path, libc::O_RDONLY, 0).ok()?;
    let file = File::from(fd);
    let meta = file.metadata().ok()?;
    use std::os::unix::fs::MetadataExt;
    let cache_dir = state_dir.join("mpi-versions");
    let key = cache_dir.join(format!("{}-{}-{}", meta.size(), meta.mtime(), meta.ino()));
    if let Ok(v) = std::fs::read_to_string(&key) {
        return Some(v);
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut bytes).ok()?;
    let version = bytes.split(|b| *b == 0).find_map(|s| {
        let s = std::str::from_utf8(s).ok()?;
        let v = s.strip_prefix('v').unwrap_or(s);
        let parts: Vec<&str> = v.split('.').collect();
        (parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
        .then(|| v.to_string())
    })?;
    let _ = std::fs::create_dir_all(&cache_dir);
    let _ = std::fs::write(&key, &version);
    Some(version)
}

/// If squashfuse_ll has died, say so with its exit status: that is the real cause.
fn fuse_failure(fuse: &mut Option<Child>) -> Option<Error> {
    let child = fuse.as_mut()?;
    match child.try_wait() {
        Ok(Some(status)) => Some(Error::Image(format!(
            "squashfuse_ll could not serve the image ({status}); check the image with unsquashfs -s or use --mode extract"
        ))),
        _ => None,
    }
}

/// Mount the FUSE filesystem ourselves (we hold CAP_SYS_ADMIN in the namespace) and hand the
/// /dev/fuse fd to squashfuse_ll as `/dev/fd/N`, so the server needs no privilege and no
/// fusermount. It dies with its parent.
fn start_squashfuse(plan: &Plan, image: &File) -> Result<Child> {
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
        Some(plan.image.path.as_path()),
        "lower",
        Some("fuse.squashfuse"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .ctx(|| "cannot mount FUSE")?;
    let (dev_fd, image_fd) = (dev.as_raw_fd(), image.as_raw_fd());
    let mut cmd = Command::new("squashfuse_ll");
    cmd.arg("-f")
        .arg(format!("/proc/self/fd/{image_fd}"))
        .arg(format!("/dev/fd/{dev_fd}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            sys::set_pdeathsig(libc::SIGKILL)?;
            // A group of its own: a signal to the command's process group (Ctrl-C, OpenLava's
            // bkill) is for the command, which may handle it and still need its files.
            libc::setpgid(0, 0);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            for fd in [dev_fd, image_fd] {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| {
        Error::Image(format!(
            "cannot start squashfuse_ll ({e}): install squashfuse or use --mode extract"
        ))
    })
}

/// Open the target of a mount inside `root`, creating it (directory, or empty file when `file`)
/// if the image lacks it. Resolution stays inside the root whatever symlinks the image holds.
fn open_target(root: &OwnedFd, target: &Path, file: bool) -> Result<OwnedFd> {
    let rel = target.strip_prefix("/").unwrap_or(target);
    if let Ok(fd) = sys::open_in_root(root.as_raw_fd(), rel, libc::O_PATH, 0) {
        return Ok(fd);
    }
    let parts: Vec<_> = rel.components().collect();
    let mut prefix = PathBuf::new();
    for (i, part) in parts.iter().enumerate() {
        let parent = sys::open_in_root(
            root.as_raw_fd(),
            &prefix,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .ctx(|| format!("cannot open /{} in the container", prefix.display()))?;
        prefix.push(part);
        let last = i + 1 == parts.len();
        if sys::open_in_root(root.as_raw_fd(), &prefix, libc::O_PATH, 0).is_ok() {
            continue;
        }
        let name = CString::new(part.as_os_str().as_encoded_bytes()).unwrap();
        let made = if last && file {
            // A dangling symlink in the image (resolv.conf often is one) is replaced by a file.
            unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), 0) };
            let fd = unsafe {
                libc::openat(
                    parent.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd >= 0 {
                unsafe { libc::close(fd) };
            }
            fd
        } else {
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
    sys::open_in_root(root.as_raw_fd(), rel, libc::O_PATH, 0).ctx(|| {
        format!(
            "cannot open mount point {} in the container",
            target.display()
        )
    })
}

fn apply_step(root: &OwnedFd, step: &Step, staging: &Path) -> Result<()> {
    let target = &step.target;
    match &step.action {
        Action::Bind {
            source,
            recursive,
            readonly,
        } => {
            let meta =
                std::fs::metadata(source).ctx(|| format!("cannot bind {}", source.display()))?;
            let tree = sys::open_tree_clone(source, *recursive)
                .ctx(|| format!("cannot bind {}", source.display()))?;
            let mut attrs = sys::MOUNT_ATTR_NOSUID;
            if !target.starts_with("/dev") {
                attrs |= sys::MOUNT_ATTR_NODEV;
            }
            if *readonly {
                attrs |= sys::MOUNT_ATTR_RDONLY;
            }
            sys::mount_setattr(&tree, attrs, *recursive)
                .ctx(|| format!("cannot set options on the mount of {}", source.display()))?;
            let at = open_target(root, target, !meta.is_dir())?;
            sys::move_mount(&tree, &at)
                .ctx(|| format!("cannot mount {} on {}", source.display(), target.display()))?;
            // A recursive bind of an ancestor of the staging area (/tmp, /, a home holding
            // BERTH_STATE_DIR) copied the staging mounts too: detach that copy.
            if *recursive {
                if let Ok(rel) = staging.strip_prefix(source) {
                    let inner = target.strip_prefix("/").unwrap_or(target).join(rel);
                    if let Ok(fd) = sys::open_in_root(root.as_raw_fd(), &inner, libc::O_PATH, 0) {
                        umount2(sys::fd_path(&fd).as_str(), MntFlags::MNT_DETACH).ctx(|| {
                            format!("cannot hide the staging area under {}", target.display())
                        })?;
                    }
                }
            }
        }
        Action::Tmpfs => {
            let at = open_target(root, target, false)?;
            mount(
                Some("tmpfs"),
                sys::fd_path(&at).as_str(),
                Some("tmpfs"),
                MsFlags::MS_NOSUID,
                Some("mode=0755"),
            )
            .ctx(|| format!("cannot mount tmpfs on {}", target.display()))?;
        }
        Action::Symlink { to } => {
            let parent = target.parent().unwrap_or(Path::new("/"));
            let dir = open_target(root, parent, false)?;
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

/// Append `line` to a passwd-style file unless an entry of that name is there already.
fn add_entry(root: &OwnedFd, target: &Path, line: &str) -> Result<()> {
    let rel = target.strip_prefix("/").unwrap_or(target);
    let name = line.split(':').next().unwrap_or_default();
    let mut content = String::new();
    if let Ok(fd) = sys::open_in_root(root.as_raw_fd(), rel, libc::O_RDONLY, 0) {
        let _ = File::from(fd).read_to_string(&mut content);
    }
    if content.lines().any(|l| l.split(':').next() == Some(name)) {
        return Ok(());
    }
    if !content.is_empty() && !content.ends_with('\n') {
        content.push('\n');
    }
    content.push_str(line);
    content.push('\n');
    let fd = sys::open_in_root(
        root.as_raw_fd(),
        rel,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        0o644,
    )
    .ctx(|| format!("cannot write {} in the container", target.display()))?;
    std::io::Write::write_all(&mut File::from(fd), content.as_bytes())
        .ctx(|| format!("cannot write {} in the container", target.display()))
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
}
