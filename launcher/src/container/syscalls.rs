//! The mount operations the plan's steps perform, behind a trait (as youki does with its
//! `Syscall` trait): [`Kernel`] makes them, and the tests' `Recorder` writes them down, so the
//! order and flags of a step's mounts are checked without privileges.
//!
//! Only what changes the mount namespace or creates a mount point is here. Lookups inside the
//! root (openat2) and the host reads before a bind stay direct calls: they need no privilege,
//! and the recorder's tests run them for real on a temporary directory.

use crate::sys;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
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

/// The real operations: the new mount API, or on kernels without it (before 5.12) mount(2).
///
/// With mount(2) there is no detached tree, so a "clone" is a bind of the source onto a fresh
/// mount point in `staging` (berth's private tmpfs, in this mount namespace only), set up there
/// (remounted with its options, its propagation set) and then moved onto the target with
/// MS_MOVE: the steps keep their order and the target is never visible half set up. Every
/// call goes through O_PATH fds named by /proc/self/fd, never by a path an image could swap.
pub(super) struct Kernel {
    /// Classic mount(2) only: where binds are made before they are moved into place.
    staging: Option<OwnedFd>,
    /// The number of binds made there (their mount points' names).
    made: Cell<u32>,
}

impl Kernel {
    /// The operations for a build whose staging directory (a private tmpfs of berth's) is
    /// `staging`.
    pub(super) fn new(staging: &Path) -> io::Result<Kernel> {
        let staging = match sys::missing_mount_api() {
            None => None,
            Some(missing) => Some({
                tracing::info!("build: the kernel lacks {missing}: binding with mount(2)");
                std::fs::File::options()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(staging)?
                    .into()
            }),
        };
        Ok(Kernel {
            staging,
            made: Cell::new(0),
        })
    }

    /// mount(2): bind `source` onto a new mount point in the staging directory; the fd of the
    /// new mount's root.
    fn bind_in_staging(
        &self,
        staging: &OwnedFd,
        source: &Path,
        recursive: bool,
    ) -> io::Result<OwnedFd> {
        let src = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(source)?;
        let n = self.made.get() + 1;
        self.made.set(n);
        let name = CString::new(format!("tree-{n}")).expect("no NUL");
        if src.metadata()?.is_dir() {
            self.make_dir(staging, &name)?;
        } else {
            self.make_file(staging, &name)?;
        }
        let open_spot = || -> io::Result<OwnedFd> {
            // SAFETY: `staging` is open and `name` a NUL-terminated name alive for the call.
            let fd = unsafe {
                libc::openat(
                    staging.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: openat succeeded, so `fd` is a new descriptor that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        sys::bind_fds(&src, &open_spot()?, recursive)?;
        // Opened again: now the fd names the new mount, not the mount point it covers.
        open_spot()
    }
}

impl MountOps for Kernel {
    fn clone_tree(&self, source: &Path, recursive: bool) -> io::Result<OwnedFd> {
        match &self.staging {
            None => sys::open_tree_clone(source, recursive),
            Some(staging) => self.bind_in_staging(staging, source, recursive),
        }
    }

    fn set_attrs(&self, tree: &OwnedFd, attrs: u64, recursive: bool) -> io::Result<()> {
        match self.staging {
            None => sys::mount_setattr(tree, attrs, recursive),
            Some(_) => sys::remount_fd(tree, attrs, recursive),
        }
    }

    fn set_propagation(&self, tree: &OwnedFd, propagation: u64, recursive: bool) -> io::Result<()> {
        match self.staging {
            None => sys::set_propagation(tree, propagation, recursive),
            Some(_) => sys::propagation_fd(tree, propagation, recursive),
        }
    }

    fn attach(&self, tree: &OwnedFd, at: &OwnedFd) -> io::Result<()> {
        match self.staging {
            None => sys::move_mount(tree, at),
            Some(_) => sys::move_fd(tree, at),
        }
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
        make_dir_at(dir, name)
    }

    fn make_file(&self, dir: &OwnedFd, name: &CStr) -> io::Result<()> {
        make_file_at(dir, name)
    }
}

fn make_dir_at(dir: &OwnedFd, name: &CStr) -> io::Result<()> {
    // SAFETY: `dir` is open and `name` a NUL-terminated name alive for the call.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn make_file_at(dir: &OwnedFd, name: &CStr) -> io::Result<()> {
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
            super::make_dir_at(dir, name)?;
            self.record(Op::MakeDir {
                at: self.in_dir(dir, name),
            })
        }

        fn make_file(&self, dir: &OwnedFd, name: &CStr) -> io::Result<()> {
            super::make_file_at(dir, name)?;
            self.record(Op::MakeFile {
                at: self.in_dir(dir, name),
            })
        }
    }
}
