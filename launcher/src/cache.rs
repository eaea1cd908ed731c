//! The node-local extract cache: each squashfs image is unpacked once per node into
//! `<state>/images/<identity>/rootfs` and reused by later runs and by every rank.
//!
//! Concurrency: a per-entry lock file. A run that finds the entry takes a shared lock and keeps
//! it for the container's life (so `berth cache clean` skips images in use). The first run takes
//! the exclusive lock, unpacks into a temporary directory and renames it into place, so a
//! reader never sees a half-filled entry and two first runs do not both unpack.

use crate::error::{Context, Error, Result};
use crate::image::Image;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
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
    let key = image.identity()?;
    let entry = root.join(&key);
    let lock_path = root.join(format!("{key}.lock"));
    let lock_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&lock_path)
        .ctx(|| format!("cannot open cache lock {}", lock_path.display()))?;
    let rootfs = entry.join("rootfs");
    // Fast path: already unpacked. The shared lock waits out a concurrent eviction.
    lock(&lock_file, libc::LOCK_SH).ctx(|| "cannot lock the cache entry")?;
    if rootfs.is_dir() {
        let _ = filetime_touch(&entry);
        return Ok(Entry {
            rootfs,
            lock: lock_file,
        });
    }
    lock(&lock_file, libc::LOCK_EX).ctx(|| "cannot lock the cache entry")?;
    if !rootfs.is_dir() {
        extract(image, &root, &key)?;
    }
    lock(&lock_file, libc::LOCK_SH).ctx(|| "cannot lock the cache entry")?;
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
fn extract(image: &Image, root: &Path, key: &str) -> Result<()> {
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
    let result = Command::new("unsquashfs")
        .args(["-no-xattrs", "-quiet", "-no-progress", "-d"])
        .arg(tmp.join("rootfs"))
        .arg(&image.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let output = match result {
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
    let meta = format!(
        "{{\"source\":{:?},\"key\":\"{key}\"}}\n",
        image.path.to_string_lossy()
    );
    if let Err(e) = fs::write(tmp.join("source.json"), meta) {
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
    let Ok(f) = File::open(root.join(format!("{key}.lock"))) else {
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

/// Remove entries (all, or those named) that no container is using; returns what was removed
/// and what was skipped because it is in use.
pub fn clean(state_dir: &Path, only: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    let root = cache_root(state_dir);
    let (mut removed, mut skipped) = (Vec::new(), Vec::new());
    for entry in list(state_dir)? {
        if !only.is_empty() && !only.contains(&entry.key) {
            continue;
        }
        let lock_path = root.join(format!("{}.lock", entry.key));
        let Ok(f) = File::open(&lock_path) else {
            continue;
        };
        if lock(&f, libc::LOCK_EX | libc::LOCK_NB).is_err() {
            skipped.push(entry.key);
            continue;
        }
        // Rename first so a reader never sees a half-removed tree.
        let doomed = root.join(format!(".tmp-{}-clean", entry.key));
        if fs::rename(root.join(&entry.key), &doomed).is_ok() {
            remove_tree(&doomed);
        }
        removed.push(entry.key);
    }
    if only.is_empty() {
        // Leftovers of killed unpacks, unless an unpack of that image is running now.
        for e in fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_prefix(".tmp-").and_then(|r| r.split('-').next()) else {
                continue;
            };
            let Ok(f) = File::open(root.join(format!("{key}.lock"))) else {
                continue;
            };
            if lock(&f, libc::LOCK_EX | libc::LOCK_NB).is_ok() {
                remove_tree(&e.path());
            }
        }
    }
    Ok((removed, skipped))
}
