//! Thin wrappers over the Linux syscalls berth needs and that nix does not cover (the new mount
//! API: open_tree, move_mount, mount_setattr; pidfd_open, statx's mount id, flock with berth's
//! lock semantics), and the few that nix does (openat2 with RESOLVE_IN_ROOT, pivot_root, the
//! prctls). Each returns `io::Result` so callers can attach context.
//!
//! Kernels without the new mount API (before 5.12: RHEL 8's 4.18 lacks open_tree, move_mount,
//! mount_setattr and openat2) get the classic mount(2) calls on O_PATH fds instead
//! ([`missing_mount_api`], [`bind_fds`], [`remount_fd`], [`move_fd`]), and a component-wise
//! resolver that keeps paths inside a root as RESOLVE_IN_ROOT does ([`resolve_in_root`]).
//! Which path a process takes is probed once and cached.

use std::collections::VecDeque;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

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
        // Before Linux 5.8: the same id is in the fd's /proc entry (since 3.15).
        return mount_id_from_fdinfo(fd.as_raw_fd());
    }
    Ok(stx.stx_mnt_id)
}

fn mount_id_from_fdinfo(fd: RawFd) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "no mnt_id in /proc fdinfo"))
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
/// symlinks in the image cannot lead outside it. Without openat2, [`resolve_in_root`].
pub fn open_in_root(root: RawFd, path: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    if !has_openat2() {
        return resolve_in_root(root, path, flags, mode, Links::Follow);
    }
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
    if !has_openat2() {
        return resolve_in_root(root, path, flags, mode, Links::Refuse);
    }
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

/// Does a call exist in this kernel? Asked with arguments every version refuses before doing
/// anything (a bad fd, a NULL path, a zero size): ENOSYS means the kernel lacks it (or a
/// seccomp filter says so, as the tests' does).
fn lacks(nr: libc::c_long) -> bool {
    // SAFETY: the arguments are -1 and zeroes (NULL pointers, zero sizes and flags): each of
    // these calls fails with EBADF, EFAULT or EINVAL without reading or writing memory.
    let ret = unsafe { libc::syscall(nr, -1 as libc::c_long, 0usize, 0usize, 0usize, 0usize) };
    ret < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
}

/// `None` when the kernel has the new mount API (open_tree, move_mount, mount_setattr: 5.12),
/// else the first of them it lacks: berth then uses mount(2). Probed once per process, so no
/// mount is ever tried both ways.
pub fn missing_mount_api() -> Option<&'static str> {
    static MISSING: OnceLock<Option<&'static str>> = OnceLock::new();
    *MISSING.get_or_init(|| {
        [
            ("open_tree", libc::SYS_open_tree),
            ("move_mount", libc::SYS_move_mount),
            ("mount_setattr", libc::SYS_mount_setattr),
        ]
        .into_iter()
        .find(|(_, nr)| lacks(*nr))
        .map(|(name, _)| name)
    })
}

/// Has the kernel openat2 (5.6)? Probed once per process; without it [`open_in_root`] resolves
/// component by component.
pub fn has_openat2() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| !lacks(libc::SYS_openat2))
}

/// What [`resolve_in_root`] does with a symlink on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Follow it, inside the root (RESOLVE_IN_ROOT).
    Follow,
    /// Fail with ELOOP (RESOLVE_NO_SYMLINKS).
    Refuse,
}

/// The kernel's limit on symlinks followed in one lookup (MAXSYMLINKS).
const MAX_LINKS: usize = 40;

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn open_at(dir: &OwnedFd, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `dir` is open and `name` a NUL-terminated string alive for the call.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat succeeded, so `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat_mode(fd: &OwnedFd) -> io::Result<libc::mode_t> {
    Ok(nix::sys::stat::fstat(fd.as_raw_fd())?.st_mode & libc::S_IFMT)
}

/// The target of the symlink `link` (an O_PATH, O_NOFOLLOW fd of it): read from the fd, so the
/// link read is the one that was checked.
fn read_link_fd(link: &OwnedFd) -> io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `link` is open, the path is the static empty string (an O_PATH symlink fd is read
    // itself), and `buf` is writable for the length passed.
    let n = unsafe {
        libc::readlinkat(
            link.as_raw_fd(),
            empty().as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from_vec(buf))
}

/// The names in `path` to walk, in order: `.` and a leading `/` dropped, `..` kept.
fn names(path: &Path) -> impl DoubleEndedIterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// Open `path` as if `root` were `/`, one component at a time, for kernels without openat2:
/// each name is opened with O_PATH | O_NOFOLLOW relative to the directory fd reached so far, so
/// no symlink is ever followed by the kernel. A symlink is read and its target walked here, from
/// the root when absolute (at most 40 in one lookup, else ELOOP); `..` goes back to the
/// directory it came from and never above the root. The result is what openat2 with
/// RESOLVE_IN_ROOT gives (RESOLVE_NO_SYMLINKS with [`Links::Refuse`]); a link of /proc's is
/// only text here, walked inside the root like any other.
pub fn resolve_in_root(
    root: RawFd,
    path: &Path,
    flags: i32,
    mode: u32,
    links: Links,
) -> io::Result<OwnedFd> {
    // SAFETY: the caller's fd is borrowed for this call only, to open the root's own O_PATH fd.
    let root = unsafe { std::os::fd::BorrowedFd::borrow_raw(root) };
    let root = root.try_clone_to_owned()?;
    // The directories walked, the root first: `..` pops one, an absolute link keeps the root.
    let mut dirs = vec![root];
    let mut todo: VecDeque<OsString> = names(path).collect();
    let mut followed = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            if dirs.len() > 1 {
                dirs.pop();
            }
            continue;
        }
        let last = todo.is_empty();
        let dir = dirs.last().expect("the root is never popped");
        let c = CString::new(name.into_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
        let at = open_at(dir, &c, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let kind = fstat_mode(&at)?;
        if kind == libc::S_IFLNK {
            if last && flags & libc::O_NOFOLLOW != 0 {
                return if flags & libc::O_PATH != 0 {
                    Ok(at)
                } else {
                    Err(errno(libc::ELOOP))
                };
            }
            followed += 1;
            if links == Links::Refuse || followed > MAX_LINKS {
                return Err(errno(libc::ELOOP));
            }
            let target = PathBuf::from(read_link_fd(&at)?);
            if target.is_absolute() {
                dirs.truncate(1);
            }
            for n in names(&target).rev() {
                todo.push_front(n);
            }
            continue;
        }
        if last {
            // Only O_PATH (maybe O_DIRECTORY): the fd just checked is the answer.
            if flags & !(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) == 0
                && flags & libc::O_PATH != 0
            {
                if flags & libc::O_DIRECTORY != 0 && kind != libc::S_IFDIR {
                    return Err(errno(libc::ENOTDIR));
                }
                return Ok(at);
            }
            // Opened again for reading: O_NOFOLLOW, so a link put there since is ELOOP.
            return open_at(dir, &c, flags | libc::O_NOFOLLOW, mode);
        }
        if kind != libc::S_IFDIR {
            return Err(errno(libc::ENOTDIR));
        }
        dirs.push(at);
    }
    // The path ends at a directory reached by `..`, `.` or a link: open it again as asked.
    let dir = dirs.last().expect("the root is never popped");
    open_at(dir, c".", flags, mode)
}

/// One line of /proc/self/mountinfo: the mount's id, its parent's, where it is mounted and
/// its per-mount flags as MS_* values.
struct MountEntry {
    id: u64,
    parent: u64,
    point: PathBuf,
    flags: libc::c_ulong,
}

/// This mount namespace's mounts. The flags come from here, not from statfs, which another
/// user's FUSE mount refuses (EACCES) while a remount of it works.
fn mount_table() -> io::Result<Vec<MountEntry>> {
    let info = std::fs::read("/proc/self/mountinfo")?;
    Ok(info
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let mut f = line.split(|b| *b == b' ');
            let id = std::str::from_utf8(f.next()?).ok()?.parse().ok()?;
            let parent = std::str::from_utf8(f.next()?).ok()?.parse().ok()?;
            let point = f.nth(2)?;
            let options = f.next()?;
            Some(MountEntry {
                id,
                parent,
                point: PathBuf::from(OsStr::from_bytes(&unescape(point))),
                flags: kept_flags(options),
            })
        })
        .collect())
}

/// The MS_* flags of a mount's options (mountinfo's sixth field) that a bind remount must
/// keep: in a user namespace the kernel refuses to clear ro, nosuid, nodev, noexec or change
/// the atime mode of a mount that came from a more privileged namespace, and MS_REMOUNT sets
/// all of them at once.
fn kept_flags(options: &[u8]) -> libc::c_ulong {
    let mut flags = 0;
    for opt in options.split(|b| *b == b',') {
        flags |= match opt {
            b"ro" => libc::MS_RDONLY,
            b"nosuid" => libc::MS_NOSUID,
            b"nodev" => libc::MS_NODEV,
            b"noexec" => libc::MS_NOEXEC,
            b"noatime" => libc::MS_NOATIME,
            b"nodiratime" => libc::MS_NODIRATIME,
            b"relatime" => libc::MS_RELATIME,
            _ => 0,
        };
    }
    // Neither shown: strictatime, which a remount must ask for (it defaults to relatime).
    if flags & (libc::MS_NOATIME | libc::MS_RELATIME) == 0 {
        flags |= libc::MS_STRICTATIME;
    }
    flags
}

fn mount_call(source: Option<&str>, target: &str, flags: libc::c_ulong) -> io::Result<()> {
    nix::mount::mount(
        source,
        target,
        None::<&str>,
        nix::mount::MsFlags::from_bits_retain(flags),
        None::<&str>,
    )?;
    Ok(())
}

/// mount(2) MS_BIND (| MS_REC) of the object `source` holds onto the one `target` holds, both
/// O_PATH fds named through /proc/self/fd: the kernel binds exactly those objects, which no
/// rename or symlink put in place meanwhile can swap.
pub fn bind_fds(source: &impl AsRawFd, target: &impl AsRawFd, recursive: bool) -> io::Result<()> {
    let mut flags = libc::MS_BIND;
    if recursive {
        flags |= libc::MS_REC;
    }
    let from = format!("/proc/self/fd/{}", source.as_raw_fd());
    let to = format!("/proc/self/fd/{}", target.as_raw_fd());
    mount_call(Some(&from), &to, flags)
}

fn remount_one(fd: &impl AsRawFd, kept: libc::c_ulong, attrs: u64) -> io::Result<()> {
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND | kept;
    for (attr, ms) in [
        (MOUNT_ATTR_RDONLY, libc::MS_RDONLY),
        (MOUNT_ATTR_NOSUID, libc::MS_NOSUID),
        (MOUNT_ATTR_NODEV, libc::MS_NODEV),
        (MOUNT_ATTR_NOEXEC, libc::MS_NOEXEC),
    ] {
        if attrs & attr != 0 {
            flags |= ms;
        }
    }
    mount_call(None, &format!("/proc/self/fd/{}", fd.as_raw_fd()), flags)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let oct = field.get(i + 1..i + 4);
        if field[i] == b'\\' && oct.is_some_and(|o| o.iter().all(|c| (b'0'..=b'7').contains(c))) {
            let o = oct.expect("checked");
            out.push((o[0] - b'0') * 64 + (o[1] - b'0') * 8 + (o[2] - b'0'));
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// Add `attrs` (`MOUNT_ATTR_*`) to the mount `fd` is the root of (an O_PATH fd opened after
/// the mount, so it names the mount and not what it covers) with MS_REMOUNT | MS_BIND, keeping
/// its locked flags; with `recursive`, to every mount under it too (mount(2) has no recursive
/// remount: each is found in mountinfo, opened by its path, and remounted only if the fd is on
/// that very mount; a mount hidden under another is out of reach anyway). Mount ids come from
/// /proc's fdinfo, which needs no access to the mount's files.
pub fn remount_fd(fd: &impl AsRawFd, attrs: u64, recursive: bool) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let table = mount_table()?;
    let top = mount_id_from_fdinfo(fd.as_raw_fd())?;
    let kept = |id: u64| table.iter().find(|m| m.id == id).map_or(0, |m| m.flags);
    remount_one(fd, kept(top), attrs)?;
    if !recursive {
        return Ok(());
    }
    // The mounts under `top`, theirs, and so on.
    let mut under = vec![top];
    let mut i = 0;
    while i < under.len() {
        let p = under[i];
        under.extend(
            table
                .iter()
                .filter(|m| m.parent == p && m.id != p)
                .map(|m| m.id),
        );
        i += 1;
    }
    for m in table
        .iter()
        .filter(|m| m.id != top && under.contains(&m.id))
    {
        let Ok(sub) = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&m.point)
        else {
            continue;
        };
        if mount_id_from_fdinfo(sub.as_raw_fd())? == m.id {
            remount_one(&sub, m.flags, attrs)?;
        }
    }
    Ok(())
}

/// The propagation (`PROPAGATION_*`) of the mount `fd` is the root of (and of those under it).
pub fn propagation_fd(fd: &impl AsRawFd, propagation: u64, recursive: bool) -> io::Result<()> {
    let mut flags = propagation as libc::c_ulong;
    if recursive {
        flags |= libc::MS_REC;
    }
    mount_call(None, &format!("/proc/self/fd/{}", fd.as_raw_fd()), flags)
}

/// MS_MOVE of the mount `from` is the root of onto the object `to` holds: mount(2)'s
/// move_mount.
pub fn move_fd(from: &impl AsRawFd, to: &impl AsRawFd) -> io::Result<()> {
    let src = format!("/proc/self/fd/{}", from.as_raw_fd());
    let dst = format!("/proc/self/fd/{}", to.as_raw_fd());
    mount_call(Some(&src), &dst, libc::MS_MOVE)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};

    /// A scratch root: `etc/passwd`, `usr/lib/libc.so`, and links of every kind an image may
    /// hold. A file `secret` lies next to it, outside. Removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Tree {
            let top =
                std::env::temp_dir().join(format!("berth-resolve-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&top);
            let r = top.join("root");
            std::fs::create_dir_all(r.join("etc")).unwrap();
            std::fs::create_dir_all(r.join("usr/lib")).unwrap();
            std::fs::write(r.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
            std::fs::write(r.join("usr/lib/libc.so"), "").unwrap();
            std::fs::write(top.join("secret"), "host\n").unwrap();
            symlink("usr/lib", r.join("lib")).unwrap();
            symlink("/etc", r.join("abs")).unwrap();
            symlink("../../../../etc", r.join("usr/lib/up")).unwrap();
            symlink("/../../secret", r.join("escape")).unwrap();
            symlink("../secret", r.join("dotdot")).unwrap();
            symlink(top.join("secret"), r.join("host")).unwrap();
            symlink("loop2", r.join("loop1")).unwrap();
            symlink("loop1", r.join("loop2")).unwrap();
            symlink("/proc/self/root", r.join("magic")).unwrap();
            Tree(top)
        }

        fn root(&self) -> OwnedFd {
            std::fs::File::options()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                .open(self.0.join("root"))
                .unwrap()
                .into()
        }

        fn ino(&self, rel: &str) -> u64 {
            std::fs::metadata(self.0.join("root").join(rel))
                .unwrap()
                .ino()
        }

        fn resolve(&self, path: &str, flags: i32, links: Links) -> io::Result<u64> {
            let fd = resolve_in_root(self.root().as_raw_fd(), Path::new(path), flags, 0, links)?;
            Ok(nix::sys::stat::fstat(fd.as_raw_fd()).unwrap().st_ino)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    use std::os::unix::fs::OpenOptionsExt;

    fn errno_of<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
        r.unwrap_err().raw_os_error().unwrap()
    }

    #[test]
    fn links_inside_the_root_are_followed_inside_it() {
        let t = Tree::new("follow");
        let passwd = t.ino("etc/passwd");
        for path in [
            "etc/passwd",
            "/etc/passwd",
            "abs/passwd",
            "./etc/../etc/passwd",
        ] {
            assert_eq!(
                t.resolve(path, libc::O_PATH, Links::Follow).unwrap(),
                passwd,
                "{path}"
            );
        }
        assert_eq!(
            t.resolve("lib/libc.so", libc::O_RDONLY, Links::Follow)
                .unwrap(),
            t.ino("usr/lib/libc.so")
        );
        // A trailing link to a directory, opened as one.
        assert_eq!(
            t.resolve("abs", libc::O_PATH | libc::O_DIRECTORY, Links::Follow)
                .unwrap(),
            t.ino("etc")
        );
        assert_eq!(
            t.resolve("", libc::O_PATH, Links::Follow).unwrap(),
            t.ino("")
        );
    }

    #[test]
    fn dotdot_and_escaping_links_stop_at_the_root() {
        let t = Tree::new("escape");
        // `..` above the root is the root, as RESOLVE_IN_ROOT has it.
        assert_eq!(
            t.resolve("../../etc/passwd", libc::O_PATH, Links::Follow)
                .unwrap(),
            t.ino("etc/passwd")
        );
        assert_eq!(
            t.resolve("usr/lib/up/passwd", libc::O_PATH, Links::Follow)
                .unwrap(),
            t.ino("etc/passwd")
        );
        // Links that lead to the file beside the root find nothing inside it.
        for path in ["escape", "dotdot", "host", "../secret"] {
            assert_eq!(
                errno_of(t.resolve(path, libc::O_RDONLY, Links::Follow)),
                libc::ENOENT,
                "{path}"
            );
        }
        // /proc's magic links are only text: "/proc/self/root" is looked for inside the root.
        assert_eq!(
            errno_of(t.resolve("magic", libc::O_PATH, Links::Follow)),
            libc::ENOENT
        );
    }

    #[test]
    fn loops_are_eloop_and_refused_links_too() {
        let t = Tree::new("loop");
        assert_eq!(
            errno_of(t.resolve("loop1", libc::O_PATH, Links::Follow)),
            libc::ELOOP
        );
        assert_eq!(
            errno_of(t.resolve("loop1/x", libc::O_PATH, Links::Follow)),
            libc::ELOOP
        );
        assert_eq!(
            errno_of(t.resolve("abs/passwd", libc::O_PATH, Links::Refuse)),
            libc::ELOOP
        );
        assert_eq!(
            errno_of(t.resolve("lib", libc::O_PATH, Links::Refuse)),
            libc::ELOOP
        );
        assert_eq!(
            t.resolve("etc/passwd", libc::O_PATH, Links::Refuse)
                .unwrap(),
            t.ino("etc/passwd")
        );
        // A file is no directory.
        assert_eq!(
            errno_of(t.resolve("etc/passwd/x", libc::O_PATH, Links::Follow)),
            libc::ENOTDIR
        );
        assert_eq!(
            errno_of(t.resolve(
                "etc/passwd",
                libc::O_PATH | libc::O_DIRECTORY,
                Links::Follow
            )),
            libc::ENOTDIR
        );
    }

    #[test]
    fn a_remount_keeps_the_flags_a_user_namespace_may_not_clear() {
        let kept = kept_flags(b"ro,nosuid,nodev,noexec,relatime");
        assert_eq!(
            kept,
            libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC
                | libc::MS_RELATIME
        );
        // No atime flag shown is strictatime, which MS_REMOUNT must be told.
        assert_eq!(kept_flags(b"rw"), libc::MS_STRICTATIME);
        assert_eq!(kept_flags(b"rw,noatime"), libc::MS_NOATIME);
        assert_eq!(unescape(br"/a\040b\134c"), b"/a b\\c");
    }

    /// Where the kernel has openat2, both resolvers agree on every path of the tree.
    #[test]
    fn the_fallback_agrees_with_openat2() {
        if !has_openat2() {
            return;
        }
        let t = Tree::new("agree");
        let paths = [
            "etc/passwd",
            "abs/passwd",
            "lib/libc.so",
            "usr/lib/up/passwd",
            "../../etc",
            "escape",
            "dotdot",
            "host",
            "loop1",
            "etc/passwd/x",
            "missing",
            "abs",
            "",
        ];
        let ino = |r: io::Result<OwnedFd>| {
            r.map(|fd| nix::sys::stat::fstat(fd.as_raw_fd()).unwrap().st_ino)
                .map_err(|e| e.raw_os_error())
        };
        for path in paths {
            for refuse in [false, true] {
                let root = t.root();
                let (kernel, ours) = if refuse {
                    (
                        open_in_root_no_symlinks(
                            root.as_raw_fd(),
                            Path::new(path),
                            libc::O_PATH,
                            0,
                        ),
                        resolve_in_root(
                            root.as_raw_fd(),
                            Path::new(path),
                            libc::O_PATH,
                            0,
                            Links::Refuse,
                        ),
                    )
                } else {
                    (
                        open_in_root(root.as_raw_fd(), Path::new(path), libc::O_PATH, 0),
                        resolve_in_root(
                            root.as_raw_fd(),
                            Path::new(path),
                            libc::O_PATH,
                            0,
                            Links::Follow,
                        ),
                    )
                };
                assert_eq!(ino(kernel), ino(ours), "{path} (no symlinks: {refuse})");
            }
        }
    }
}
