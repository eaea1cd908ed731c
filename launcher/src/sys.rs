//! Thin wrappers over the Linux syscalls berth needs and that nix does not cover (the new mount
//! API: open_tree, move_mount, mount_setattr; pidfd_open, statx's mount id, flock with berth's
//! lock semantics), and the few that nix does (openat2 with RESOLVE_IN_ROOT, pivot_root, the
//! prctls). Each returns `io::Result` so callers can attach context.
//!
//! Minimum kernel: 5.12 (mount_setattr; unprivileged overlayfs needs 5.11).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

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
    // SAFETY: `c` is a NUL-terminated path that lives across the call, the only pointer passed.
    let fd =
        check(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) })?;
    // SAFETY: open_tree succeeded, so `fd` is a new descriptor that nothing else owns.
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
    // SAFETY: `fd` is borrowed, so open for the call; the path is a static empty C string
    // (AT_EMPTY_PATH); `attr` has the kernel's struct mount_attr layout (version 0, 32 bytes)
    // and its size is passed with it; the kernel only reads it.
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
    // SAFETY: statx is a C struct of integers, for which all zeroes is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is borrowed, so open; the path is a static empty C string (AT_EMPTY_PATH);
    // `stx` is a live, writable statx that the kernel fills.
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
    // SAFETY: both fds are borrowed, so open for the call; both paths are the static empty C
    // string (the *_EMPTY_PATH flags), the only pointers passed.
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
        ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS,
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
        ResolveFlag::RESOLVE_IN_ROOT
            | ResolveFlag::RESOLVE_NO_MAGICLINKS
            | ResolveFlag::RESOLVE_NO_SYMLINKS,
    )
}

fn openat2(
    root: RawFd,
    path: &Path,
    flags: i32,
    mode: u32,
    resolve: ResolveFlag,
) -> io::Result<OwnedFd> {
    let c = if path.as_os_str().is_empty() {
        c".".to_owned()
    } else {
        cstr(path)?
    };
    let how = OpenHow::new()
        .flags(OFlag::from_bits_retain(flags | libc::O_CLOEXEC))
        .mode(Mode::from_bits_retain(mode))
        .resolve(resolve);
    let fd = nix::fcntl::openat2(root, c.as_c_str(), how)?;
    // SAFETY: openat2 succeeded, so `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes no pointers; a bad pid is an error, not undefined behaviour.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: pidfd_open succeeded, so `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn pivot_root_here() -> io::Result<()> {
    nix::unistd::pivot_root(".", ".")?;
    Ok(())
}

/// The path through /proc that names an fd, for syscalls that only take paths.
pub fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

pub fn write_file(path: &str, data: &str) -> io::Result<()> {
    std::fs::write(path, data)
}

pub fn set_no_new_privs() -> io::Result<()> {
    nix::sys::prctl::set_no_new_privs()?;
    Ok(())
}

/// flock(2); `op` is libc::LOCK_SH, LOCK_EX, LOCK_UN, optionally | LOCK_NB.
///
/// Not nix's `Flock`: it owns the file and unlocks on drop, while berth's locks live as long
/// as their open file, which keepers and exec'd commands share (closing one copy must not
/// unlock the others), and nix's plain `flock` is deprecated.
pub fn flock(fd: &impl AsRawFd, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock takes no pointers; `fd` is borrowed, so open for the call.
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
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is a C struct of byte arrays and integer unions: all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in req.ifr_name.iter_mut().zip(b"lo") {
        *to = *from as libc::c_char;
    }
    // SAFETY: `sock` is open; SIOCGIFFLAGS writes the flags into `req`, a live ifreq whose
    // name is NUL-terminated (zeroed past "lo").
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS just set `ifru_flags`, the union member read and written here.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
