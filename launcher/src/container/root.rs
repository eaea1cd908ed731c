//! The container's root while it is built, and how berth creates and writes in it: resolved
//! inside the root whatever the image's symlinks say, and only on mounts berth made itself.

use super::syscalls::MountOps;
use crate::error::{Context, Error, Result};
use crate::sys;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The container's root while it is built: its fd, and the mounts berth made itself (the
/// overlay root, its tmpfs mounts). berth creates and writes only on those: a host directory
/// bound in (the home, /tmp, a site mount) is never written to, whatever the image's links say.
/// Mount points are made, and mounts attached, through `sys` ([`Kernel`](super::syscalls::Kernel)
/// but in tests).
pub(super) struct Root<'a> {
    pub(super) fd: OwnedFd,
    pub(super) ours: Vec<u64>,
    pub(super) sys: &'a dyn MountOps,
}

impl<'a> Root<'a> {
    pub(super) fn new(fd: OwnedFd, sys: &'a dyn MountOps) -> Result<Root<'a>> {
        let id = sys::mount_id(&fd).ctx(|| "cannot identify the container root's mount")?;
        Ok(Root {
            fd,
            ours: vec![id],
            sys,
        })
    }

    pub(super) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Is `fd`'s object on a mount berth made (rather than a host directory bound in)?
    pub(super) fn is_ours(&self, fd: &OwnedFd) -> bool {
        sys::mount_id(fd).is_ok_and(|id| self.ours.contains(&id))
    }

    /// Where an fd leads, as the container will see it (for messages).
    pub(super) fn shown(&self, fd: &OwnedFd) -> String {
        let root = std::fs::read_link(sys::fd_path(&self.fd)).unwrap_or_default();
        let at = std::fs::read_link(sys::fd_path(fd)).unwrap_or_default();
        match at.strip_prefix(&root) {
            Ok(rel) => Path::new("/").join(rel).display().to_string(),
            Err(_) => at.display().to_string(),
        }
    }
}

/// The error for a path that an image's symlink leads out of the image.
pub(super) fn leaves_image(target: &Path, to: &str) -> Error {
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
pub(super) fn open_target(root: &Root, target: &Path, file: bool) -> Result<OwnedFd> {
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
        if sys::open_in_root(root.raw(), &prefix, libc::O_PATH, 0).is_err() {
            let as_file = file && i + 1 == parts.len();
            make_mount_point(root, &parent, part.as_os_str(), &prefix, target, as_file)?;
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

/// Create the missing `prefix` (a directory, or an empty file when `file`), named `part` in
/// `parent`, on the way to `target`: only where berth's own mounts are.
fn make_mount_point(
    root: &Root,
    parent: &OwnedFd,
    part: &std::ffi::OsStr,
    prefix: &Path,
    target: &Path,
    file: bool,
) -> Result<()> {
    if !root.is_ours(parent) {
        let shown = root.shown(parent);
        if Path::new(&shown) != Path::new("/").join(prefix.parent().unwrap_or(prefix)) {
            return Err(leaves_image(target, &shown));
        }
        return Err(Error::Usage(format!(
            "mount point {} does not exist, and {shown} is a host directory bound into the \
             container (berth creates nothing on the host): create it there first or choose another target",
            target.display()
        )));
    }
    let name = CString::new(part.as_encoded_bytes()).unwrap();
    // A dangling symlink in the image (resolv.conf often is one, or a link to a site path
    // absent here) is replaced, in the container's own layer, by what the mount needs.
    let _ = nix::unistd::unlinkat(
        Some(parent.as_raw_fd()),
        name.as_c_str(),
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    );
    let made = if file {
        root.sys.make_file(parent, &name)
    } else {
        root.sys.make_dir(parent, &name)
    };
    made.map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EOVERFLOW) | Some(libc::EPERM) => {
                " (a directory image must be owned by you; use a squashfs image otherwise)"
            }
            _ => "",
        };
        Error::Sys {
            context: format!(
                "cannot create mount point {} in the container{hint}",
                target.display()
            ),
            source: e,
        }
    })
}

/// A file of the image's that berth reads (never a FIFO, device or socket, which could block
/// or never end), at most `limit` bytes. `fd` is an O_PATH fd of it.
pub(super) fn read_image_file(fd: &OwnedFd, shown: &Path, limit: u64) -> Result<Vec<u8>> {
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

/// passwd and group files are read up to this size.
const ENTRY_FILE_LIMIT: u64 = 16 << 20;

/// Append `line` to a passwd-style file unless an entry of that name is there already. The file
/// is written only where berth made it (the overlay's upper layer): an image whose /etc/passwd
/// links to a host file gets an error, not a write to that file.
pub(super) fn add_entry(root: &Root, target: &Path, line: &str) -> Result<()> {
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
