//! The plan's steps, each performed inside the container's root: binds, tmpfs, devpts and sysfs
//! instances, unmounts, symlinks, passwd entries, host libraries.

use super::root::{add_entry, leaves_image, open_target, Root};
use crate::error::{Context, Error, Result};
use crate::options::{Create, Propagation};
use crate::plan::{Action, Step};
use crate::sys;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tracing::debug;

/// The first submount under `path` in this mount namespace, for the message that suggests rbind.
fn first_submount(path: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    info.split(|b| *b == b'\n').find_map(|line| {
        let field = line.split(|b| *b == b' ').nth(4)?;
        let point = PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_mountinfo(field)));
        (point != path && point.starts_with(path)).then_some(point)
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Clone a host tree for a bind. Without `recursive` the kernel refuses a tree that has
/// submounts (in a user namespace they are locked to it): say which, and suggest rbind.
fn clone_source(source: &Path, recursive: bool, origin: &str) -> Result<OwnedFd> {
    match sys::open_tree_clone(source, recursive) {
        Ok(tree) => Ok(tree),
        Err(e) if !recursive && e.raw_os_error() == Some(libc::EINVAL) => {
            let real = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
            let sub = first_submount(&real)
                .map(|p| format!("{} is mounted under it", p.display()))
                .unwrap_or_else(|| "it has submounts".into());
            Err(Error::Usage(format!(
                "cannot bind {} without its submounts ({sub}) [{origin}]: use rbind instead of bind",
                source.display()
            )))
        }
        Err(e) => Err(e).ctx(|| format!("cannot bind {}", source.display())),
    }
}

pub(super) fn apply_step(root: &mut Root, step: &Step, staging: &Path) -> Result<()> {
    let started = Instant::now();
    let done = apply_action(root, step, staging);
    debug!(
        "step {} {} [{}] in {:.1?}{}",
        step.target.display(),
        step.action.describe(),
        step.origin,
        started.elapsed(),
        if done.is_err() { " (failed)" } else { "" }
    );
    done
}

fn apply_action(root: &mut Root, step: &Step, staging: &Path) -> Result<()> {
    let target = &step.target;
    match &step.action {
        Action::Bind {
            source,
            recursive,
            readonly,
            propagation,
            noexec,
            create,
        } => {
            let meta =
                std::fs::metadata(source).ctx(|| format!("cannot bind {}", source.display()))?;
            let tree = clone_source(source, *recursive, &step.origin)?;
            let mut attrs = sys::MOUNT_ATTR_NOSUID;
            if !target.starts_with("/dev") {
                attrs |= sys::MOUNT_ATTR_NODEV;
            }
            if *readonly {
                attrs |= sys::MOUNT_ATTR_RDONLY;
            }
            if *noexec {
                attrs |= sys::MOUNT_ATTR_NOEXEC;
            }
            sys::mount_setattr(&tree, attrs, *recursive)
                .ctx(|| format!("cannot set options on the mount of {}", source.display()))?;
            // The copy of a host mount stays a slave of it (mounts made there later appear
            // inside) only where the site asked for rslave; otherwise it is cut off.
            let propagation = match propagation {
                Propagation::Private => sys::PROPAGATION_PRIVATE,
                Propagation::Slave => sys::PROPAGATION_SLAVE,
                Propagation::Unbindable => sys::PROPAGATION_UNBINDABLE,
            };
            sys::set_propagation(&tree, propagation, *recursive).ctx(|| {
                format!(
                    "cannot set the propagation of the mount of {}",
                    source.display()
                )
            })?;
            let file = match create {
                Create::Auto => !meta.is_dir(),
                Create::Dir => false,
                Create::File => true,
            };
            let at = open_target(root, target, file)?;
            sys::move_mount(&tree, &at)
                .ctx(|| format!("cannot mount {} on {}", source.display(), target.display()))?;
            // A recursive bind of an ancestor of the staging area (/tmp, /, a home holding
            // BERTH_STATE_DIR) copied the staging mounts too: detach that copy.
            if *recursive {
                if let Ok(rel) = staging.strip_prefix(source) {
                    let inner = target.strip_prefix("/").unwrap_or(target).join(rel);
                    if let Ok(fd) = sys::open_in_root(root.raw(), &inner, libc::O_PATH, 0) {
                        umount2(sys::fd_path(&fd).as_str(), MntFlags::MNT_DETACH).ctx(|| {
                            format!("cannot hide the staging area under {}", target.display())
                        })?;
                    }
                }
            }
        }
        Action::Tmpfs {
            options,
            readonly,
            noexec,
        } => {
            let at = open_target(root, target, false)?;
            let mut flags = MsFlags::MS_NOSUID;
            if !target.starts_with("/dev") {
                flags |= MsFlags::MS_NODEV;
            }
            if *readonly {
                flags |= MsFlags::MS_RDONLY;
            }
            if *noexec {
                flags |= MsFlags::MS_NOEXEC;
            }
            mount(
                Some("tmpfs"),
                sys::fd_path(&at).as_str(),
                Some("tmpfs"),
                flags,
                Some(options.as_str()),
            )
            .ctx(|| format!("cannot mount tmpfs on {}", target.display()))?;
            let fd = open_target(root, target, false)?;
            root.ours.push(
                sys::mount_id(&fd)
                    .ctx(|| format!("cannot identify the tmpfs on {}", target.display()))?,
            );
        }
        Action::Umount => {
            let rel = target.strip_prefix("/").unwrap_or(target);
            let at = sys::open_in_root_no_symlinks(root.raw(), rel, libc::O_PATH, 0).ctx(|| {
                format!(
                    "cannot unmount {}: not found in the container",
                    target.display()
                )
            })?;
            umount2(sys::fd_path(&at).as_str(), MntFlags::MNT_DETACH)
                .ctx(|| format!("cannot unmount {}", target.display()))?;
        }
        Action::Sysfs => {
            // Mountable from here because this user namespace owns the network namespace; it
            // must be as restrictive as the host's /sys (ro, nosuid, nodev, noexec).
            let at = open_target(root, target, false)?;
            mount(
                Some("sysfs"),
                sys::fd_path(&at).as_str(),
                Some("sysfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .ctx(|| format!("cannot mount a sysfs on {}", target.display()))?;
        }
        Action::Devpts => {
            // A devpts of the container's own: ptys opened inside are the user's, and the host's
            // devpts (ptmxmode=000 from a user namespace) is not needed.
            let at = open_target(root, target, false)?;
            mount(
                Some("devpts"),
                sys::fd_path(&at).as_str(),
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620"),
            )
            .ctx(|| format!("cannot mount a devpts instance on {}", target.display()))?;
        }
        Action::Symlink { to } => {
            let parent = target.parent().unwrap_or(Path::new("/"));
            let dir = open_target(root, parent, false)?;
            if !root.is_ours(&dir) {
                return Err(leaves_image(parent, &root.shown(&dir)));
            }
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
        Action::AddEntryIfDir { line } => {
            let dir = target.parent().unwrap_or(Path::new("/"));
            let rel = dir.strip_prefix("/").unwrap_or(dir);
            if sys::open_in_root(root.raw(), rel, libc::O_PATH | libc::O_DIRECTORY, 0).is_ok() {
                add_entry(root, target, line)?
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(br"/tmp/a\040b"), b"/tmp/a b");
        assert_eq!(unescape_mountinfo(br"/x\134y\011"), b"/x\\y\t");
        // Not an escape: kept as is, also at the end.
        assert_eq!(unescape_mountinfo(br"/x\09"), br"/x\09");
        assert_eq!(unescape_mountinfo(br"/x\"), br"/x\");
    }
}
