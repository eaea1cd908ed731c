//! The node-local extract cache: each squashfs image is unpacked once per node into
//! `<state>/images/<key>/rootfs` and reused by later runs and by every rank.
//!
//! Keys: an entry is named by the sha256 of the whole image file (its content key), so an image
//! edited in place never reuses another content's tree, and copies of one image share one
//! entry. Hashing the file costs a read of it, so `.ids/<identity>` (a symlink to the content
//! key, where the identity is the file's device, inode, size, mtime and ctime) remembers the
//! answer: a known file costs one fstat and one readlink.
//!
//! Concurrency: a per-entry lock file. A run that finds the entry takes a shared lock and keeps
//! it for the container's life (so `berth cache clean` skips images in use). The first run takes
//! the exclusive lock, unpacks into `.tmp-<key>-<pid>` and renames it into place, so a reader
//! never sees a half-filled entry and two first runs do not both unpack.
//!
//! Leftovers: a temporary directory whose entry lock nobody holds is a killed unpack (or clean),
//! and a lock file with neither entry nor temporary directory is unused; every run and `berth
//! cache clean` sweeps both. A lock file is only unlinked under its exclusive lock, and every
//! locker checks afterwards that the path still names the file it locked (else it starts over),
//! so unlinking never lets two processes hold "the" lock.

use crate::error::{Context, Error, Result};
use crate::image::{Identity, Image};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn cache_root(state_dir: &Path) -> PathBuf {
    state_dir.join("images")
}

/// An entry in use: its rootfs directory and the lock that keeps it from being evicted.
pub struct Entry {
    pub rootfs: PathBuf,
    pub lock: File,
}

fn lock(file: &File, how: libc::c_int) -> std::io::Result<()> {
    crate::sys::flock(file, how)
}

fn lock_path(root: &Path, key: &str) -> PathBuf {
    root.join(format!("{key}.lock"))
}

/// Content keys are 32 hex digits; anything else in a link or a name is not ours.
fn is_key(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The path still names the file `f` (a sweep may have unlinked it before we locked it).
fn same_file(f: &File, path: &Path) -> bool {
    match (f.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Open (creating it) and lock the lock file of `key`.
fn open_locked(root: &Path, key: &str, how: libc::c_int) -> std::io::Result<File> {
    let path = lock_path(root, key);
    loop {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)?;
        lock(&f, how)?;
        if same_file(&f, &path) {
            return Ok(f);
        }
    }
}

/// Change the lock held on `f` (flock converts by unlocking first, so check the file again).
fn relock(f: File, root: &Path, key: &str, how: libc::c_int) -> std::io::Result<File> {
    lock(&f, how)?;
    if same_file(&f, &lock_path(root, key)) {
        return Ok(f);
    }
    open_locked(root, key, how)
}

/// The lock of `key` taken exclusively without waiting, or `None` when someone holds it.
fn try_exclusive(root: &Path, key: &str) -> Option<File> {
    let path = lock_path(root, key);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&path)
        .ok()?;
    lock(&f, libc::LOCK_EX | libc::LOCK_NB).ok()?;
    same_file(&f, &path).then_some(f)
}

/// Find or make the unpacked copy of `image`.
pub fn ensure_extracted(image: &Image, state_dir: &Path) -> Result<Entry> {
    let root = cache_root(state_dir);
    match fs::create_dir(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).ctx(|| format!("cannot create cache directory {}", root.display()))
        }
    }
    let id = image.identity()?;
    sweep(&root);
    let ids = root.join(".ids");
    // A file seen before: its content key is known without reading it.
    if let Ok(target) = fs::read_link(ids.join(&id.key)) {
        if let Some(key) = target.to_str().filter(|k| is_key(k)) {
            return entry(image, &id, &root, key);
        }
    }
    let key = id.content_key()?;
    let found = entry(image, &id, &root, &key)?;
    if id.settled && id.unchanged() {
        remember(&ids, &id.key, &key);
    }
    Ok(found)
}

/// `.ids/<identity>` -> `<key>`, replaced atomically. Only a hint: losing it costs a hash.
fn remember(ids: &Path, identity: &str, key: &str) {
    let _ = fs::create_dir(ids);
    let tmp = ids.join(format!(".new-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    if std::os::unix::fs::symlink(key, &tmp).is_ok()
        && fs::rename(&tmp, ids.join(identity)).is_err()
    {
        let _ = fs::remove_file(&tmp);
    }
}

/// The entry `key`, unpacked from `id` when missing, with its shared lock held.
fn entry(image: &Image, id: &Identity, root: &Path, key: &str) -> Result<Entry> {
    let rootfs = root.join(key).join("rootfs");
    // Fast path: already unpacked. The shared lock waits out a concurrent eviction.
    let lock_file = open_locked(root, key, libc::LOCK_SH).ctx(|| "cannot lock the cache entry")?;
    if rootfs.is_dir() {
        let _ = filetime_touch(&root.join(key));
        return Ok(Entry {
            rootfs,
            lock: lock_file,
        });
    }
    let lock_file =
        relock(lock_file, root, key, libc::LOCK_EX).ctx(|| "cannot lock the cache entry")?;
    if !rootfs.is_dir() {
        extract(image, id, root, key)?;
    }
    let lock_file =
        relock(lock_file, root, key, libc::LOCK_SH).ctx(|| "cannot lock the cache entry")?;
    Ok(Entry {
        rootfs,
        lock: lock_file,
    })
}

fn filetime_touch(path: &Path) -> std::io::Result<()> {
    nix::sys::stat::utimensat(
        None,
        path,
        &nix::sys::time::TimeSpec::UTIME_NOW,
        &nix::sys::time::TimeSpec::UTIME_NOW,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(std::io::Error::from)
}

/// Unpack into `<root>/.tmp-<key>-<pid>` and rename into place. Called with the exclusive lock
/// held, so any leftover temporary directory of this key is from a killed run.
fn extract(image: &Image, id: &Identity, root: &Path, key: &str) -> Result<()> {
    for stale in fs::read_dir(root)
        .ctx(|| format!("cannot list {}", root.display()))?
        .flatten()
    {
        if stale
            .file_name()
            .to_string_lossy()
            .starts_with(&format!(".tmp-{key}-"))
        {
            remove_tree(&stale.path());
        }
    }
    let tmp = root.join(format!(".tmp-{key}-{}", std::process::id()));
    fs::create_dir(&tmp).ctx(|| format!("cannot create {}", tmp.display()))?;
    eprintln!(
        "berth: unpacking {} into the node cache (once per node)",
        image.path.display()
    );
    // unsquashfs reads the file we hashed (not the path again), and dies with us: a killed
    // berth must not leave it writing into a directory that a sweep is removing.
    let fd = id.file.as_raw_fd();
    let parent = std::process::id() as libc::pid_t;
    let mut cmd = Command::new("unsquashfs");
    cmd.args(["-no-xattrs", "-quiet", "-no-progress", "-o"])
        .arg(image.offset.to_string())
        .arg("-d")
        .arg(tmp.join("rootfs"))
        .arg(format!("/proc/self/fd/{fd}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs between fork and exec, so it calls only async-signal-safe
    // functions (fcntl, prctl, getppid, _exit) and allocates nothing (an Errno converts to an
    // io::Error without allocating).
    unsafe {
        cmd.pre_exec(move || {
            let no_cloexec = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty());
            nix::fcntl::fcntl(fd, no_cloexec)?;
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            if nix::unistd::getppid().as_raw() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            remove_tree(&tmp);
            return Err(Error::Image(format!(
                "cannot run unsquashfs ({e}): install squashfs-tools or use --mode mount"
            )));
        }
    };
    // unsquashfs exits 2 for non-fatal errors, such as device nodes a user cannot create:
    // those entries are skipped, as in any unprivileged unpack.
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => {}
        Some(2) => {
            for line in stderr.lines().filter(|l| !l.trim().is_empty()).take(3) {
                eprintln!("berth: warning: unpacking {}: {line}", image.path.display());
            }
        }
        _ => {
            remove_tree(&tmp);
            let why = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("failed");
            return Err(Error::Image(format!(
                "cannot unpack {} into the cache: {why}",
                image.path.display()
            )));
        }
    }
    if !id.unchanged() {
        remove_tree(&tmp);
        return Err(Error::Image(format!(
            "image {} changed while it was being unpacked; run again once it is complete",
            image.path.display()
        )));
    }
    let meta = serde_json::json!({ "source": image.path.to_string_lossy(), "key": key });
    if let Err(e) = fs::write(tmp.join("source.json"), format!("{meta}\n")) {
        remove_tree(&tmp);
        return Err(e).ctx(|| "cannot write the cache entry");
    }
    let entry = root.join(key);
    if let Err(e) = fs::rename(&tmp, &entry) {
        remove_tree(&tmp);
        return Err(e).ctx(|| format!("cannot move the unpacked image into {}", entry.display()));
    }
    Ok(())
}

/// Remove a tree even where the image made directories read-only.
pub fn remove_tree(path: &Path) {
    if fs::remove_dir_all(path).is_ok() {
        return;
    }
    fn open_up(p: &Path) {
        if let Ok(meta) = fs::symlink_metadata(p) {
            if meta.is_dir() {
                let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
                if let Ok(rd) = fs::read_dir(p) {
                    for e in rd.flatten() {
                        open_up(&e.path());
                    }
                }
            }
        }
    }
    open_up(path);
    let _ = fs::remove_dir_all(path);
}

/// The key of a temporary directory `.tmp-<key>-<pid>` (or `-clean`).
fn tmp_key(name: &str) -> Option<&str> {
    name.strip_prefix(".tmp-")
        .and_then(|r| r.split('-').next())
        .filter(|k| is_key(k))
}

/// Remove what killed runs left behind and nobody holds: temporary directories whose entry
/// lock is free (a killed unpack or clean: the unpacker and the cleaner hold it exclusively,
/// a user of the entry shared), and lock files with neither entry nor temporary directory.
/// Costs one directory listing when there is nothing to do. Returns what went.
fn sweep(root: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut gone = Vec::new();
    names.retain(|name| {
        let Some(key) = tmp_key(name) else {
            return true;
        };
        let Some(_held) = try_exclusive(root, key) else {
            return true;
        };
        remove_tree(&root.join(name));
        gone.push(format!("partial unpack {name}"));
        false
    });
    for name in &names {
        let Some(key) = name.strip_suffix(".lock").filter(|k| is_key(k)) else {
            continue;
        };
        if names.iter().any(|n| n == key || tmp_key(n) == Some(key)) {
            continue;
        }
        let Some(held) = try_exclusive(root, key) else {
            continue;
        };
        // Unlinked only under its exclusive lock, and only while nothing is there to protect.
        if fs::symlink_metadata(root.join(key)).is_err() {
            let _ = fs::remove_file(lock_path(root, key));
            gone.push(format!("unused lock {name}"));
        }
        drop(held);
    }
    gone
}

/// Drop `.ids` links to entries that are gone (harmless, but they accumulate).
fn forget_missing(root: &Path) {
    let ids = root.join(".ids");
    for e in fs::read_dir(&ids).into_iter().flatten().flatten() {
        let dangling = fs::read_link(e.path())
            .map(|t| fs::symlink_metadata(root.join(t)).is_err())
            .unwrap_or(true);
        if dangling {
            let _ = fs::remove_file(e.path());
        }
    }
}

pub struct Listed {
    pub key: String,
    pub source: String,
    pub bytes: u64,
    pub in_use: bool,
}

fn tree_size(p: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(p) else {
        return 0;
    };
    if meta.is_dir() {
        fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| tree_size(&e.path())).sum())
            .unwrap_or(0)
            + meta.blocks() * 512
    } else {
        meta.blocks() * 512
    }
}

fn in_use(root: &Path, key: &str) -> bool {
    let Ok(f) = File::open(lock_path(root, key)) else {
        return false;
    };
    if lock(&f, libc::LOCK_EX | libc::LOCK_NB).is_ok() {
        let _ = lock(&f, libc::LOCK_UN);
        false
    } else {
        true
    }
}

pub fn list(state_dir: &Path) -> Result<Vec<Listed>> {
    let root = cache_root(state_dir);
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(&root) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let key = e.file_name().to_string_lossy().into_owned();
        if key.starts_with('.') || key.ends_with(".lock") || !e.path().is_dir() {
            continue;
        }
        let source = fs::read_to_string(e.path().join("source.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["source"].as_str().map(String::from))
            .unwrap_or_default();
        out.push(Listed {
            bytes: tree_size(&e.path()),
            in_use: in_use(&root, &key),
            key,
            source,
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// What `berth cache clean` did.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub removed: Vec<String>,
    /// Entries in use by a container, left alone.
    pub kept: Vec<String>,
    /// Leftovers of killed runs: partial unpacks, unused locks, dead join sockets.
    pub swept: Vec<String>,
}

/// Remove entries (all, or those named) that no container is using, and every leftover of a
/// killed run that no live process holds.
pub fn clean(state_dir: &Path, only: &[String]) -> Result<Cleaned> {
    let root = cache_root(state_dir);
    let mut out = Cleaned::default();
    for entry in list(state_dir)? {
        if !only.is_empty() && !only.contains(&entry.key) {
            continue;
        }
        let Some(held) = try_exclusive(&root, &entry.key) else {
            out.kept.push(entry.key);
            continue;
        };
        // Rename first so a reader never sees a half-removed tree.
        let doomed = root.join(format!(".tmp-{}-clean", entry.key));
        remove_tree(&doomed);
        if fs::rename(root.join(&entry.key), &doomed).is_ok() {
            remove_tree(&doomed);
        }
        let _ = fs::remove_file(lock_path(&root, &entry.key));
        drop(held);
        out.removed.push(entry.key);
    }
    forget_missing(&root);
    out.swept = sweep(&root);
    out.swept.extend(crate::join::sweep(state_dir, true));
    out.swept.extend(crate::imagekeeper::sweep(state_dir, true));
    Ok(out)
}
