//! Safe application of image layers onto a root directory.
//!
//! Every path a layer names is resolved with `openat2(RESOLVE_IN_ROOT)` relative to the root,
//! so `..` and symlinks (absolute or relative) planted by an earlier entry cannot lead outside
//! it; the last component is then handled with `*at` calls that never follow it. Entries whose
//! own names escape the root (`..`, absolute paths, hardlink targets likewise) make the layer
//! refused. Device nodes and fifos are skipped with a warning, setuid/setgid bits dropped, and
//! everything is created by (so owned by) the calling user.
//!
//! Files are written sparse (whole blocks of zeros become holes, so a GNU sparse entry or a
//! file of zeros takes no disk), and the sum of the files' sizes is bounded by
//! [`Unpacker::set_max_size`]: a small archive cannot fill the disk or the time.

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstatat, futimens, mkdirat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{linkat, symlinkat, unlinkat, UnlinkatFlags};
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};
use tar::EntryType;

/// What applying one layer did, for the summary and the tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LayerStats {
    pub entries: u64,
    pub skipped: u64,
    pub whiteouts: u64,
}

pub struct Unpacker {
    root: OwnedFd,
    /// Paths (relative to the root) created by the layer being applied: an opaque marker hides
    /// only what lower layers put in its directory.
    this_layer: HashSet<PathBuf>,
    pub warnings: Vec<String>,
    /// Bytes of file content (holes included) written so far, over all layers.
    pub unpacked: u64,
    max_size: u64,
}

/// A layer entry's name, made relative to the root; `None` for the root itself.
pub fn clean_path(raw: &Path) -> Result<Option<PathBuf>, String> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "entry '{}' escapes the image root (..)",
                    raw.display()
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("entry '{}' is an absolute path", raw.display()))
            }
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

fn errno_msg(what: &str, path: &Path, e: Errno) -> String {
    format!("{what} '{}': {}", path.display(), e.desc())
}

impl Unpacker {
    /// `root` must be an empty directory the caller made.
    pub fn new(root: &Path) -> Result<Unpacker, String> {
        let fd = nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno_msg("cannot open", root, e))?;
        Ok(Unpacker {
            // SAFETY: open succeeded, so `fd` is a new descriptor that nothing else owns.
            root: unsafe { OwnedFd::from_raw_fd(fd) },
            this_layer: HashSet::new(),
            warnings: Vec::new(),
            unpacked: 0,
            max_size: u64::MAX,
        })
    }

    /// Refuse layers once the files they write add up to more than `bytes` (apparent sizes,
    /// holes included: what the image will hold, and what mksquashfs will read).
    pub fn set_max_size(&mut self, bytes: u64) {
        self.max_size = bytes;
    }

    /// Open `rel` (relative to the root) as a directory, resolved inside the root.
    fn open_dir(&self, rel: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
        let path: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        // openat2 RESOLVE_IN_ROOT, or berth's component-wise resolver on older kernels.
        let flags = flags | OFlag::O_DIRECTORY;
        berth_launcher::open_in_root(self.root.as_raw_fd(), path, flags.bits(), 0)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    }

    /// The parent directory of an entry, created (0755) where missing: layers may omit parents.
    fn parent_dir(&self, parent: &Path) -> Result<OwnedFd, String> {
        match self.open_dir(parent, OFlag::O_PATH) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(errno_msg("cannot open directory", parent, e)),
        }
        let mut dir = self
            .open_dir(Path::new(""), OFlag::O_PATH)
            .map_err(|e| errno_msg("cannot open", Path::new("/"), e))?;
        let mut so_far = PathBuf::new();
        for c in parent.components() {
            so_far.push(c);
            match self.open_dir(&so_far, OFlag::O_PATH) {
                Ok(fd) => dir = fd,
                Err(Errno::ENOENT) => {
                    let name = c.as_os_str();
                    // A dangling symlink in the way: replace it, as the layer wants a directory.
                    let _ = unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir);
                    mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o755))
                        .map_err(|e| errno_msg("cannot create directory", &so_far, e))?;
                    dir = self
                        .open_dir(&so_far, OFlag::O_PATH)
                        .map_err(|e| errno_msg("cannot open directory", &so_far, e))?;
                }
                Err(e) => return Err(errno_msg("cannot open directory", &so_far, e)),
            }
        }
        Ok(dir)
    }

    /// Apply one layer (an uncompressed tar stream). Stops at the first refused entry.
    pub fn apply(
        &mut self,
        reader: impl Read,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<LayerStats, String> {
        self.this_layer.clear();
        let mut stats = LayerStats::default();
        let mut archive = tar::Archive::new(reader);
        let mut buf = vec![0u8; COPY_BUFFER];
        let entries = archive
            .entries()
            .map_err(|e| format!("not a tar archive: {e}"))?;
        for entry in entries {
            if cancelled() {
                return Err("interrupted".into());
            }
            let mut entry = entry.map_err(|e| format!("broken tar stream: {e}"))?;
            stats.entries += 1;
            let raw = entry
                .path()
                .map_err(|e| format!("bad entry name: {e}"))?
                .into_owned();
            let kind = entry.header().entry_type();
            if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
                continue;
            }
            let Some(rel) = clean_path(&raw)? else {
                continue; // the root itself: its mode is ours to choose
            };
            let name = rel
                .file_name()
                .expect("non-empty path has a name")
                .to_owned();
            let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            let name_str = name.to_string_lossy();
            if let Some(hidden) = name_str.strip_prefix(".wh.") {
                stats.whiteouts += 1;
                if hidden == ".wh..opq" {
                    self.opaque(&parent)?;
                } else if matches!(hidden, "" | "." | "..") {
                    // `.wh..` would remove the directory itself, `.wh...` its parent: outside
                    // what the layer may touch.
                    return Err(format!(
                        "layer entry {} is a whiteout of '{hidden}', which no layer may remove: the image is broken or hostile",
                        raw.display()
                    ));
                } else {
                    let dir = match self.open_dir(&parent, OFlag::O_RDONLY) {
                        Ok(d) => d,
                        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => continue,
                        Err(e) => return Err(errno_msg("cannot open directory", &parent, e)),
                    };
                    remove_at(dir.as_raw_fd(), Path::new(hidden))
                        .map_err(|e| errno_msg("cannot remove", &parent.join(hidden), e))?;
                }
                continue;
            }
            let mode = entry.header().mode().unwrap_or(0o644);
            let mtime = entry.header().mtime().unwrap_or(0);
            let dir = self.parent_dir(&parent)?;
            let dfd = dir.as_raw_fd();
            let existing = fstatat(
                Some(dfd),
                name.as_os_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .ok();
            let existing_is_dir = existing
                .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
                .unwrap_or(false);
            // Replace what is there, except a directory by a directory (keeps its contents).
            if existing.is_some() && !(kind == EntryType::Directory && existing_is_dir) {
                remove_at(dfd, Path::new(&name))
                    .map_err(|e| errno_msg("cannot replace", &rel, e))?;
            }
            match kind {
                EntryType::Directory => {
                    if !existing_is_dir {
                        mkdirat(Some(dfd), name.as_os_str(), Mode::from_bits_truncate(0o700))
                            .map_err(|e| errno_msg("cannot create directory", &rel, e))?;
                    }
                    let d = openat(
                        Some(dfd),
                        name.as_os_str(),
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| errno_msg("cannot open directory", &rel, e))?;
                    // SAFETY: openat succeeded, so `d` is a new descriptor that nothing else owns.
                    let d = unsafe { OwnedFd::from_raw_fd(d) };
                    // No setgid; the owner keeps rwx so later layers and cleanup can write.
                    fchmod(
                        d.as_raw_fd(),
                        Mode::from_bits_truncate((mode & 0o1777) | 0o700),
                    )
                    .map_err(|e| errno_msg("cannot chmod", &rel, e))?;
                }
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    let size = entry.size();
                    if self.unpacked.saturating_add(size) > self.max_size {
                        return Err(format!(
                            "the image unpacks to more than --max-size {} (/{} alone is {}); \
                             give a larger --max-size if it is meant to be that big",
                            human(self.max_size),
                            rel.display(),
                            human(size)
                        ));
                    }
                    self.unpacked += size;
                    let fd = openat(
                        Some(dfd),
                        name.as_os_str(),
                        OFlag::O_WRONLY
                            | OFlag::O_CREAT
                            | OFlag::O_EXCL
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o600),
                    )
                    .map_err(|e| errno_msg("cannot create", &rel, e))?;
                    // SAFETY: openat succeeded, so `fd` is a new descriptor that nothing else owns.
                    let mut file = unsafe { File::from_raw_fd(fd) };
                    copy_sparse(&mut entry, &mut file, &mut buf)
                        .map_err(|e| format!("cannot write '{}': {e}", rel.display()))?;
                    // No setuid/setgid/sticky; the owner can always read (mksquashfs runs as us).
                    fchmod(
                        file.as_raw_fd(),
                        Mode::from_bits_truncate((mode & 0o777) | 0o400),
                    )
                    .map_err(|e| errno_msg("cannot chmod", &rel, e))?;
                    let t = TimeSpec::new(mtime as i64, 0);
                    let _ = futimens(file.as_raw_fd(), &t, &t);
                    if mode & 0o6000 != 0 {
                        self.warnings
                            .push(format!("dropped setuid/setgid bits of /{}", rel.display()));
                    }
                }
                EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(|e| format!("bad symlink target: {e}"))?
                        .ok_or_else(|| format!("symlink '{}' has no target", rel.display()))?;
                    // The target is stored as text only; nothing here ever follows it.
                    symlinkat(target.as_ref(), Some(dfd), name.as_os_str())
                        .map_err(|e| errno_msg("cannot create symlink", &rel, e))?;
                }
                EntryType::Link => {
                    let target = entry
                        .link_name()
                        .map_err(|e| format!("bad hardlink target: {e}"))?
                        .ok_or_else(|| format!("hardlink '{}' has no target", rel.display()))?;
                    let target = clean_path(&target)
                        .map_err(|e| format!("hardlink '{}': target {e}", rel.display()))?
                        .ok_or_else(|| {
                            format!("hardlink '{}' points at the root", rel.display())
                        })?;
                    let tparent = target.parent().unwrap_or(Path::new(""));
                    let tdir = self
                        .open_dir(tparent, OFlag::O_PATH)
                        .map_err(|e| errno_msg("hardlink target not in the image", &target, e))?;
                    let tname = target.file_name().expect("non-empty");
                    linkat(
                        Some(tdir.as_raw_fd()),
                        tname,
                        Some(dfd),
                        name.as_os_str(),
                        nix::fcntl::AtFlags::empty(),
                    )
                    .map_err(|e| {
                        errno_msg(
                            &format!("cannot hardlink '{}' to", rel.display()),
                            &target,
                            e,
                        )
                    })?;
                }
                EntryType::Char | EntryType::Block | EntryType::Fifo => {
                    stats.skipped += 1;
                    self.warnings
                        .push(format!("skipped device node or fifo /{}", rel.display()));
                    continue;
                }
                other => {
                    stats.skipped += 1;
                    self.warnings.push(format!(
                        "skipped /{} of unsupported tar type {other:?}",
                        rel.display()
                    ));
                    continue;
                }
            }
            self.this_layer.insert(rel);
        }
        Ok(stats)
    }

    /// `.wh..wh..opq` in `dir`: hide everything lower layers put there.
    fn opaque(&mut self, dir_rel: &Path) -> Result<(), String> {
        let dir = match self.open_dir(dir_rel, OFlag::O_RDONLY) {
            Ok(d) => d,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(errno_msg("cannot open directory", dir_rel, e)),
        };
        for name in list_dir(dir.as_raw_fd()).map_err(|e| errno_msg("cannot list", dir_rel, e))? {
            if !self.this_layer.contains(&dir_rel.join(&name)) {
                remove_at(dir.as_raw_fd(), Path::new(&name))
                    .map_err(|e| errno_msg("cannot remove", &dir_rel.join(&name), e))?;
            }
        }
        Ok(())
    }

    /// Write a file at `rel` (used for the image config), replacing whatever is there, safely.
    pub fn write_file(&mut self, rel: &Path, content: &[u8]) -> Result<(), String> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name = rel.file_name().ok_or("empty path")?;
        let dir = self.parent_dir(parent)?;
        let _ = remove_at(dir.as_raw_fd(), Path::new(name));
        let fd = openat(
            Some(dir.as_raw_fd()),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|e| errno_msg("cannot create", rel, e))?;
        // SAFETY: openat succeeded, so `fd` is a new descriptor that nothing else owns.
        let mut f = unsafe { File::from_raw_fd(fd) };
        io::Write::write_all(&mut f, content)
            .map_err(|e| format!("cannot write '{}': {e}", rel.display()))
    }
}

/// Bytes read per step when copying file content.
const COPY_BUFFER: usize = 1 << 20;
/// Holes are made of whole blocks of this size (the usual filesystem block).
const HOLE_BLOCK: usize = 4096;

/// A size for people: `64 GiB`, `10.0 MiB`, `512 bytes`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn is_zero(b: &[u8]) -> bool {
    // A slice comparison is one memcmp: fast in every build.
    static ZEROS: [u8; HOLE_BLOCK] = [0; HOLE_BLOCK];
    b == &ZEROS[..b.len()]
}

/// Copy `from` into the new, empty file `to`, seeking over whole blocks of zeros instead of
/// writing them, as `cp --sparse=always` does: the holes of a GNU sparse entry (which the tar
/// reader yields as zeros) and runs of zeros in a plain file take no disk. Returns the size.
fn copy_sparse(from: &mut impl Read, to: &mut File, buf: &mut [u8]) -> io::Result<u64> {
    let mut size = 0u64;
    let mut ends_in_hole = false;
    loop {
        // Fill the buffer whole, so blocks stay aligned to the file's offsets.
        let mut n = 0;
        while n < buf.len() {
            match from.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut at = 0;
        while at < n {
            let zero = is_zero(&buf[at..(at + HOLE_BLOCK).min(n)]);
            let mut end = (at + HOLE_BLOCK).min(n);
            while end < n && is_zero(&buf[end..(end + HOLE_BLOCK).min(n)]) == zero {
                end = (end + HOLE_BLOCK).min(n);
            }
            if zero {
                to.seek(SeekFrom::Current((end - at) as i64))?;
            } else {
                to.write_all(&buf[at..end])?;
            }
            ends_in_hole = zero;
            at = end;
        }
        size += n as u64;
        if n < buf.len() {
            break;
        }
    }
    // A seek past the end does not make the file longer: a final hole needs the length set.
    if ends_in_hole {
        to.set_len(size)?;
    }
    Ok(size)
}

fn list_dir(fd: RawFd) -> Result<Vec<std::ffi::OsString>, Errno> {
    use std::os::unix::ffi::OsStrExt;
    let mut d = Dir::openat(
        Some(fd),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(std::ffi::OsStr::from_bytes(n).to_owned());
        }
    }
    Ok(names)
}

/// Remove `name` in `dir` (recursively for a directory) without following any symlink.
fn remove_at(dir: RawFd, name: &Path) -> Result<(), Errno> {
    match unlinkat(Some(dir), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e),
    }
    let sub = openat(
        Some(dir),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat succeeded, so `sub` is a new descriptor that nothing else owns.
    let sub = unsafe { OwnedFd::from_raw_fd(sub) };
    // Our own directories are always u+rwx, so their contents can go.
    for child in list_dir(sub.as_raw_fd())? {
        remove_at(sub.as_raw_fd(), Path::new(&child))?;
    }
    unlinkat(Some(dir), name, UnlinkatFlags::RemoveDir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("berth-image-unpack-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("root")).unwrap();
        p
    }

    /// A tar with raw names (the tar crate's builder refuses `..`, which is what we test).
    fn tar_of(entries: &[(&str, EntryType, &str, &[u8], u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_size(data.len() as u64);
            if !link.is_empty() {
                h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn apply(root: &Path, tar: &[u8]) -> Result<LayerStats, String> {
        let mut u = Unpacker::new(root)?;
        u.apply(tar, &|| false)
    }

    #[test]
    fn files_dirs_links_and_modes() {
        let t = tmp("basic");
        let root = t.join("root");
        let layer = tar_of(&[
            ("etc/", EntryType::Directory, "", b"", 0o755),
            ("etc/a", EntryType::Regular, "", b"hello", 0o4755),
            ("etc/b", EntryType::Link, "etc/a", b"", 0o644),
            ("etc/c", EntryType::Symlink, "/etc/a", b"", 0o777),
            ("deep/x/y", EntryType::Regular, "", b"y", 0o000),
            ("dev/null", EntryType::Char, "", b"", 0o666),
        ]);
        let stats = apply(&root, &layer).unwrap();
        assert_eq!(stats.skipped, 1);
        assert_eq!(std::fs::read(root.join("etc/b")).unwrap(), b"hello");
        let m = std::fs::metadata(root.join("etc/a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o7777, 0o755, "setuid dropped");
        assert_eq!(
            std::fs::read_link(root.join("etc/c")).unwrap(),
            Path::new("/etc/a")
        );
        assert_eq!(
            std::fs::metadata(root.join("deep/x/y"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o400
        );
        assert!(!root.join("dev/null").exists());
        std::fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn escaping_entries_are_refused() {
        for (what, layer) in [
            (
                "dotdot",
                tar_of(&[("../evil", EntryType::Regular, "", b"x", 0o644)]),
            ),
            (
                "absolute",
                tar_of(&[("/evil", EntryType::Regular, "", b"x", 0o644)]),
            ),
            (
                "hardlink",
                tar_of(&[("pw", EntryType::Link, "../../../../etc/passwd", b"", 0o644)]),
            ),
            (
                "hardlink-abs",
                tar_of(&[("pw", EntryType::Link, "/etc/passwd", b"", 0o644)]),
            ),
        ] {
            let t = tmp(what);
            let err = apply(&t.join("root"), &layer).unwrap_err();
            assert!(
                err.contains("escapes") || err.contains("absolute"),
                "{what}: {err}"
            );
            assert!(!t.join("evil").exists());
            std::fs::remove_dir_all(&t).unwrap();
        }
    }

    #[test]
    fn writes_through_symlinks_stay_inside() {
        let t = tmp("symlink");
        let root = t.join("root");
        let outside = t.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let target = outside.to_string_lossy().into_owned();
        let layer = tar_of(&[
            ("esc", EntryType::Symlink, &target, b"", 0o777),
            ("esc/pwned", EntryType::Regular, "", b"x", 0o644),
            ("rel", EntryType::Symlink, "../../../../../..", b"", 0o777),
            ("rel/pwned2", EntryType::Regular, "", b"x", 0o644),
        ]);
        let _ = apply(&root, &layer);
        assert!(!outside.join("pwned").exists());
        assert!(!t.join("pwned2").exists());
        assert!(!Path::new("/pwned2").exists());
        std::fs::remove_dir_all(&t).unwrap();
    }

    fn octal(field: &mut [u8], v: u64) {
        let text = format!("{v:0w$o}", w = field.len() - 1);
        field[..text.len()].copy_from_slice(text.as_bytes());
    }

    /// A GNU sparse entry of `real` bytes with 4 KiB of data at each end: 8 KiB in the tar.
    fn sparse_tar(name: &str, real: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_size(8192);
        let g = h.as_gnu_mut().unwrap();
        g.name[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut g.sparse[0].offset, 0);
        octal(&mut g.sparse[0].numbytes, 4096);
        octal(&mut g.sparse[1].offset, real - 4096);
        octal(&mut g.sparse[1].numbytes, 4096);
        octal(&mut g.realsize, real);
        h.set_cksum();
        let mut data = vec![b'a'; 4096];
        data.extend(vec![b'z'; 4096]);
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &data[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn sparse_entries_and_zeros_stay_sparse() {
        use std::os::unix::fs::MetadataExt;
        let t = tmp("sparse");
        let root = t.join("root");
        let real = 256 << 20;
        let mut u = Unpacker::new(&root).unwrap();
        u.apply(&sparse_tar("big", real)[..], &|| false).unwrap();
        let zeros = vec![0u8; 8 << 20];
        u.apply(
            &tar_of(&[("zeros", EntryType::Regular, "", &zeros, 0o644)])[..],
            &|| false,
        )
        .unwrap();
        let m = std::fs::metadata(root.join("big")).unwrap();
        assert_eq!(m.len(), real);
        assert!(
            m.blocks() * 512 < 1 << 20,
            "{} bytes on disk",
            m.blocks() * 512
        );
        let data = std::fs::read(root.join("big")).unwrap();
        assert!(data[..4096].iter().all(|&b| b == b'a'));
        assert!(data[4096..real as usize - 4096].iter().all(|&b| b == 0));
        assert!(data[real as usize - 4096..].iter().all(|&b| b == b'z'));
        let z = std::fs::metadata(root.join("zeros")).unwrap();
        assert_eq!((z.len(), z.blocks()), (8 << 20, 0));
        assert_eq!(u.unpacked, real + (8 << 20));
        std::fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn max_size_refuses_before_writing() {
        let t = tmp("maxsize");
        let root = t.join("root");
        let mut u = Unpacker::new(&root).unwrap();
        u.set_max_size(100 << 20);
        let err = u
            .apply(&sparse_tar("big", 1 << 30)[..], &|| false)
            .unwrap_err();
        assert!(
            err.contains("--max-size 100 MiB") && err.contains("/big alone is 1 GiB"),
            "{err}"
        );
        assert!(!root.join("big").exists());
        std::fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human(64 << 30), "64 GiB");
        assert_eq!(human(1536), "1.5 KiB");
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let t = tmp("wh");
        let root = t.join("root");
        let mut u = Unpacker::new(&root).unwrap();
        u.apply(
            &tar_of(&[
                ("a/", EntryType::Directory, "", b"", 0o755),
                ("a/1", EntryType::Regular, "", b"1", 0o644),
                ("a/2", EntryType::Regular, "", b"2", 0o644),
                ("b/", EntryType::Directory, "", b"", 0o755),
                ("b/old", EntryType::Regular, "", b"o", 0o644),
                ("b/sub/", EntryType::Directory, "", b"", 0o755),
            ])[..],
            &|| false,
        )
        .unwrap();
        u.apply(
            &tar_of(&[
                ("a/.wh.1", EntryType::Regular, "", b"", 0o644),
                ("b/new", EntryType::Regular, "", b"n", 0o644),
                ("b/.wh..wh..opq", EntryType::Regular, "", b"", 0o644),
            ])[..],
            &|| false,
        )
        .unwrap();
        assert!(!root.join("a/1").exists());
        assert!(root.join("a/2").exists());
        assert!(!root.join("b/old").exists() && !root.join("b/sub").exists());
        assert!(root.join("b/new").exists());
        assert!(!root.join("b/.wh..wh..opq").exists());
        std::fs::remove_dir_all(&t).unwrap();
    }
}
