//! The mount operations the plan's steps perform, behind a trait (as youki does with its
//! `Syscall` trait): [`Kernel`] makes them, and the tests' `Recorder` writes them down, so the
//! order and flags of a step's mounts are checked without privileges.
//!
//! Only what changes the mount namespace or creates a mount point is here. Lookups inside the
//! root (openat2) and the host reads before a bind stay direct calls: they need no privilege,
//! and the recorder's tests run them for real on a temporary directory.

use crate::sys;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

pub(super) trait MountOps {
    /// open_tree(OPEN_TREE_CLONE): a detached copy of the host tree at `source`.
    fn clone_tree(&self, source: &Path, recursive: bool) -> io::Result<OwnedFd>;
    /// mount_setattr: set `attrs` (`sys::MOUNT_ATTR_*`) on a detached tree.
    fn set_attrs(&self, tree: &OwnedFd, attrs: u64, recursive: bool) -> io::Result<()>;
    /// mount_setattr: the propagation (`sys::PROPAGATION_*`) of a detached tree.
    fn set_propagation(&self, tree: &OwnedFd, propagation: u64, recursive: bool) -> io::Result<()>;
    /// move_mount: attach a detached tree on the object `at` (an O_PATH fd) refers to.
    fn attach(&self, tree: &OwnedFd, at: &OwnedFd) -> io::Result<()>;
    /// mount(2) a new instance of `fstype` (also its source name) on the object `at` refers to.
    fn mount_fs(
        &self,
        fstype: &str,
        at: &OwnedFd,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// umount2(MNT_DETACH) of the mount at `at`.
    fn detach(&self, at: &OwnedFd) -> io::Result<()>;
    /// mkdirat(0755): a directory mount point `name` in `dir`.
    fn make_dir(&self, dir: &OwnedFd, name: &CStr) -> io::Result<()>;
    /// openat(O_CREAT | O_EXCL | O_NOFOLLOW, 0644): an empty file mount point `name` in `dir`.
    fn make_file(&self, dir: &OwnedFd, name: &CStr) -> io::Result<()>;
}

/// The real operations.
pub(super) struct Kernel;

impl MountOps for Kernel {
    fn clone_tree(&self, source: &Path, recursive: bool) -> io::Result<OwnedFd> {
        sys::open_tree_clone(source, recursive)
    }

    fn set_attrs(&self, tree: &OwnedFd, attrs: u64, recursive: bool) -> io::Result<()> {
        sys::mount_setattr(tree, attrs, recursive)
    }

    fn set_propagation(&self, tree: &OwnedFd, propagation: u64, recursive: bool) -> io::Result<()> {
        sys::set_propagation(tree, propagation, recursive)
    }

    fn attach(&self, tree: &OwnedFd, at: &OwnedFd) -> io::Result<()> {
        sys::move_mount(tree, at)
    }

    fn mount_fs(
        &self,
        fstype: &str,
        at: &OwnedFd,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        mount(
            Some(fstype),
            sys::fd_path(at).as_str(),
            Some(fstype),
            flags,
            data,
        )?;
        Ok(())
    }

    fn detach(&self, at: &OwnedFd) -> io::Result<()> {
        umount2(sys::fd_path(at).as_str(), MntFlags::MNT_DETACH)?;
        Ok(())
    }

    fn make_dir(&self, dir: &OwnedFd, name: &CStr) -> io::Result<()> {
        // SAFETY: `dir` is open and `name` a NUL-terminated name alive for the call.
        if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn make_file(&self, dir: &OwnedFd, name: &CStr) -> io::Result<()> {
        // SAFETY: as for mkdirat above.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat succeeded, so `fd` is a new descriptor that nothing else owns; it is
        // closed on drop.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(())
    }
}

/// A test double that records each operation, with paths as the container would see them.
/// Mount points are really created (in a temporary directory standing for the root); nothing
/// is mounted: a cloned tree is an O_PATH fd of its source.
#[cfg(test)]
pub(super) mod recording {
    use super::MountOps;
    use nix::mount::MsFlags;
    use std::cell::RefCell;
    use std::ffi::CStr;
    use std::io;
    use std::os::fd::OwnedFd;
    use std::path::{Path, PathBuf};

    #[derive(Debug, PartialEq, Eq)]
    pub enum Op {
        Clone {
            source: PathBuf,
            recursive: bool,
        },
        SetAttrs {
            tree: PathBuf,
            attrs: u64,
            recursive: bool,
        },
        Propagation {
            tree: PathBuf,
            propagation: u64,
            recursive: bool,
        },
        Attach {
            tree: PathBuf,
            at: PathBuf,
        },
        Mount {
            fstype: String,
            at: PathBuf,
            flags: MsFlags,
            data: Option<String>,
        },
        Detach {
            at: PathBuf,
        },
        MakeDir {
            at: PathBuf,
        },
        MakeFile {
            at: PathBuf,
        },
    }

    pub struct Recorder {
        /// The directory that stands for the container's root.
        pub root: PathBuf,
        pub ops: RefCell<Vec<Op>>,
    }

    impl Recorder {
        pub fn new(root: &Path) -> Recorder {
            Recorder {
                root: root.to_path_buf(),
                ops: RefCell::new(Vec::new()),
            }
        }

        pub fn take(&self) -> Vec<Op> {
            self.ops.take()
        }

        /// Where `fd` leads: inside the root as the container sees it, else the host path.
        fn shown(&self, fd: &OwnedFd) -> PathBuf {
            let at = std::fs::read_link(crate::sys::fd_path(fd)).unwrap();
            match at.strip_prefix(&self.root) {
                Ok(rel) => Path::new("/").join(rel),
                Err(_) => at,
            }
        }

        fn in_dir(&self, dir: &OwnedFd, name: &CStr) -> PathBuf {
            use std::os::unix::ffi::OsStrExt;
            self.shown(dir)
                .join(std::ffi::OsStr::from_bytes(name.to_bytes()))
        }

        fn record(&self, op: Op) -> io::Result<()> {
            self.ops.borrow_mut().push(op);
            Ok(())
        }
    }

    impl MountOps for Recorder {
        fn clone_tree(&self, source: &Path, recursive: bool) -> io::Result<OwnedFd> {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::File::options()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
                .open(source)?;
            self.record(Op::Clone {
                source: source.to_path_buf(),
                recursive,
            })?;
            Ok(file.into())
        }

        fn set_attrs(&self, tree: &OwnedFd, attrs: u64, recursive: bool) -> io::Result<()> {
            self.record(Op::SetAttrs {
                tree: self.shown(tree),
                attrs,
                recursive,
            })
        }

        fn set_propagation(
            &self,
            tree: &OwnedFd,
            propagation: u64,
            recursive: bool,
        ) -> io::Result<()> {
            self.record(Op::Propagation {
                tree: self.shown(tree),
                propagation,
                recursive,
            })
        }

        fn attach(&self, tree: &OwnedFd, at: &OwnedFd) -> io::Result<()> {
            self.record(Op::Attach {
                tree: self.shown(tree),
                at: self.shown(at),
            })
        }

        fn mount_fs(
            &self,
            fstype: &str,
            at: &OwnedFd,
            flags: MsFlags,
            data: Option<&str>,
        ) -> io::Result<()> {
            self.record(Op::Mount {
                fstype: fstype.into(),
                at: self.shown(at),
                flags,
                data: data.map(Into::into),
            })
        }

        fn detach(&self, at: &OwnedFd) -> io::Result<()> {
            self.record(Op::Detach { at: self.shown(at) })
        }

        fn make_dir(&self, dir: &OwnedFd, name: &CStr) -> io::Result<()> {
            super::Kernel.make_dir(dir, name)?;
            self.record(Op::MakeDir {
                at: self.in_dir(dir, name),
            })
        }

        fn make_file(&self, dir: &OwnedFd, name: &CStr) -> io::Result<()> {
            super::Kernel.make_file(dir, name)?;
            self.record(Op::MakeFile {
                at: self.in_dir(dir, name),
            })
        }
    }
}
