//! Thin wrappers over the Linux syscalls berth needs and that nix does not cover: the new mount
//! API (open_tree, move_mount, mount_setattr), openat2 with RESOLVE_IN_ROOT, pidfd_open, and a
//! few helpers. Each returns `io::Result` so callers can attach context.
//!
//! Minimum kernel: 5.12 (mount_setattr; unprivileged overlayfs needs 5.11).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub const AT_RECURSIVE: libc::c_uint = 0x8000;
pub const OPEN_TREE_CLONE: libc::c_uint = 1;
pub const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
pub const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
pub const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// Propagation types for [`set_propagation`] (mount(2)'s MS_* values, as mount_setattr takes them).
pub const PROPAGATION_PRIVATE: u64 = libc::MS_PRIVATE;
pub const PROPAGATION_SLAVE: u64 = libc::MS_SLAVE;
pub const PROPAGATION_UNBINDABLE: u64 = libc::MS_UNBINDABLE;

pub fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn empty() -> &'static CStr {
    c""
}

/// Clone the mount tree at `path` (resolved on the current root) into a detached mount.
pub fn open_tree_clone(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    let fd =
        check(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Set mount attributes (ro, nosuid, nodev...) on a detached or attached mount fd.
pub fn mount_setattr(fd: &OwnedFd, set: u64, recursive: bool) -> io::Result<()> {
    setattr(
        fd,
        MountAttr {
            attr_set: set,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        },
        recursive,
    )
}

/// Set the propagation type of a mount (and, with `recursive`, of every mount under it).
pub fn set_propagation(fd: &OwnedFd, propagation: u64, recursive: bool) -> io::Result<()> {
    setattr(
        fd,
        MountAttr {
            attr_set: 0,
            attr_clr: 0,
            propagation,
            userns_fd: 0,
        },
        recursive,
    )
}

fn setattr(fd: &OwnedFd, attr: MountAttr, recursive: bool) -> io::Result<()> {
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty().as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// The id of the mount an fd's object lives on (statx STATX_MNT_ID, Linux >= 5.8): tells
/// berth's own mounts (the container root, its tmpfs) from host directories bound in.
pub fn mount_id(fd: &impl AsRawFd) -> io::Result<u64> {
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    check(unsafe {
        libc::statx(
            fd.as_raw_fd(),
            empty().as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    } as libc::c_long)?;
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "statx gives no mount id (Linux >= 5.8 is needed)",
        ));
    }
    Ok(stx.stx_mnt_id)
}

/// Attach the detached mount `from` on top of the object `to` refers to (an O_PATH fd).
pub fn move_mount(from: &OwnedFd, to: &OwnedFd) -> io::Result<()> {
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty().as_ptr(),
            to.as_raw_fd(),
            empty().as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// openat2 with RESOLVE_IN_ROOT: `path` is resolved as if `root` were `/`, so `..` and absolute
/// symlinks in the image cannot lead outside it.
pub fn open_in_root(root: RawFd, path: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    openat2(
        root,
        path,
        flags,
        mode,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    )
}

/// As [`open_in_root`], but fails with ELOOP if any component of `path` is a symlink: tells a
/// path that is what it says from one that an image's link redirects.
pub fn open_in_root_no_symlinks(
    root: RawFd,
    path: &Path,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    openat2(
        root,
        path,
        flags,
        mode,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS,
    )
}

fn openat2(root: RawFd, path: &Path, flags: i32, mode: u32, resolve: u64) -> io::Result<OwnedFd> {
    let c = if path.as_os_str().is_empty() {
        c".".to_owned()
    } else {
        cstr(path)?
    };
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve,
    };
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn pivot_root_here() -> io::Result<()> {
    let dot = c".";
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) })?;
    Ok(())
}

/// The path through /proc that names an fd, for syscalls that only take paths.
pub fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

pub fn write_file(path: &str, data: &str) -> io::Result<()> {
    std::fs::write(path, data)
}

pub fn set_pdeathsig(sig: libc::c_int) -> io::Result<()> {
    check(
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) }
            as libc::c_long,
    )?;
    Ok(())
}

pub fn set_no_new_privs() -> io::Result<()> {
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as libc::c_long)?;
    Ok(())
}

/// flock(2); `op` is libc::LOCK_SH, LOCK_EX, LOCK_UN, optionally | LOCK_NB.
pub fn flock(fd: &impl AsRawFd, op: libc::c_int) -> io::Result<()> {
    loop {
        if unsafe { libc::flock(fd.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Bring the loopback interface of the current network namespace up, as `ip link set lo up`
/// does (SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP), without needing `ip` anywhere.
pub fn loopback_up() -> io::Result<()> {
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in req.ifr_name.iter_mut().zip(b"lo") {
        *to = *from as libc::c_char;
    }
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
