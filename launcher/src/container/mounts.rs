//! The plan's steps, each performed inside the container's root: binds, tmpfs, devpts and sysfs
//! instances, unmounts, symlinks, passwd entries, host libraries.

use super::root::{add_entry, leaves_image, open_target, Root};
use crate::error::{Context, Error, Result};
use crate::options::{Create, Propagation};
use crate::plan::{Action, Step};
use crate::sys;
use nix::mount::MsFlags;
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
fn clone_source(root: &Root, source: &Path, recursive: bool, origin: &str) -> Result<OwnedFd> {
    match root.sys.clone_tree(source, recursive) {
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
        Action::Bind { .. } => bind(root, step, staging),
        Action::Tmpfs {
            options,
            readonly,
            noexec,
        } => tmpfs(root, target, options, *readonly, *noexec),
        Action::Umount => {
            let rel = target.strip_prefix("/").unwrap_or(target);
            let at = sys::open_in_root_no_symlinks(root.raw(), rel, libc::O_PATH, 0).ctx(|| {
                format!(
                    "cannot unmount {}: not found in the container",
                    target.display()
                )
            })?;
            root.sys
                .detach(&at)
                .ctx(|| format!("cannot unmount {}", target.display()))
        }
        Action::Sysfs => {
            // Mountable from here because this user namespace owns the network namespace; it
            // must be as restrictive as the host's /sys (ro, nosuid, nodev, noexec).
            let at = open_target(root, target, false)?;
            let flags =
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            root.sys
                .mount_fs("sysfs", &at, flags, None)
                .ctx(|| format!("cannot mount a sysfs on {}", target.display()))
        }
        Action::Devpts => {
            // A devpts of the container's own: ptys opened inside are the user's, and the host's
            // devpts (ptmxmode=000 from a user namespace) is not needed.
            let at = open_target(root, target, false)?;
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
            let options = "newinstance,ptmxmode=0666,mode=0620";
            root.sys
                .mount_fs("devpts", &at, flags, Some(options))
                .ctx(|| format!("cannot mount a devpts instance on {}", target.display()))
        }
        Action::Symlink { to } => symlink(root, target, to),
        Action::AddEntry { line } => add_entry(root, target, line),
        Action::AddEntryIfDir { line } => {
            let dir = target.parent().unwrap_or(Path::new("/"));
            let rel = dir.strip_prefix("/").unwrap_or(dir);
            if sys::open_in_root(root.raw(), rel, libc::O_PATH | libc::O_DIRECTORY, 0).is_ok() {
                add_entry(root, target, line)?
            }
            Ok(())
        }
        Action::Libraries { files } => {
            let state_dir = staging.parent().unwrap_or(Path::new("/"));
            let dir = library_copy(state_dir, files)?;
            let tree = root
                .sys
                .clone_tree(&dir, false)
                .ctx(|| format!("cannot bind {}", dir.display()))?;
            root.sys
                .set_attrs(
                    &tree,
                    sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
                    false,
                )
                .ctx(|| "cannot make the host libraries read-only")?;
            let at = open_target(root, target, false)?;
            root.sys
                .attach(&tree, &at)
                .ctx(|| format!("cannot mount host libraries on {}", target.display()))
        }
    }
}

/// A bind of a host path: cloned, its options and propagation set while it is detached, then
/// attached on the target.
fn bind(root: &mut Root, step: &Step, staging: &Path) -> Result<()> {
    let Action::Bind {
        source,
        recursive,
        readonly,
        propagation,
        noexec,
        create,
    } = &step.action
    else {
        unreachable!("bind() is called for binds only")
    };
    let target = &step.target;
    let meta = std::fs::metadata(source).ctx(|| format!("cannot bind {}", source.display()))?;
    let tree = clone_source(root, source, *recursive, &step.origin)?;
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
    root.sys
        .set_attrs(&tree, attrs, *recursive)
        .ctx(|| format!("cannot set options on the mount of {}", source.display()))?;
    // The copy of a host mount stays a slave of it (mounts made there later appear
    // inside) only where the site asked for rslave; otherwise it is cut off.
    let propagation = match propagation {
        Propagation::Private => sys::PROPAGATION_PRIVATE,
        Propagation::Slave => sys::PROPAGATION_SLAVE,
        Propagation::Unbindable => sys::PROPAGATION_UNBINDABLE,
    };
    root.sys
        .set_propagation(&tree, propagation, *recursive)
        .ctx(|| {
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
    root.sys
        .attach(&tree, &at)
        .ctx(|| format!("cannot mount {} on {}", source.display(), target.display()))?;
    // A recursive bind of an ancestor of the staging area (/tmp, /, a home holding
    // BERTH_STATE_DIR) copied the staging mounts too: detach that copy.
    if *recursive {
        if let Ok(rel) = staging.strip_prefix(source) {
            let inner = target.strip_prefix("/").unwrap_or(target).join(rel);
            if let Ok(fd) = sys::open_in_root(root.raw(), &inner, libc::O_PATH, 0) {
                root.sys
                    .detach(&fd)
                    .ctx(|| format!("cannot hide the staging area under {}", target.display()))?;
            }
        }
    }
    Ok(())
}

/// A fresh tmpfs, which becomes one of berth's own mounts (mount points may be made in it).
fn tmpfs(
    root: &mut Root,
    target: &Path,
    options: &str,
    readonly: bool,
    noexec: bool,
) -> Result<()> {
    let at = open_target(root, target, false)?;
    let mut flags = MsFlags::MS_NOSUID;
    if !target.starts_with("/dev") {
        flags |= MsFlags::MS_NODEV;
    }
    if readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    if noexec {
        flags |= MsFlags::MS_NOEXEC;
    }
    root.sys
        .mount_fs("tmpfs", &at, flags, Some(options))
        .ctx(|| format!("cannot mount tmpfs on {}", target.display()))?;
    let fd = open_target(root, target, false)?;
    let id =
        sys::mount_id(&fd).ctx(|| format!("cannot identify the tmpfs on {}", target.display()))?;
    root.ours.push(id);
    Ok(())
}

/// A symlink made in the container's own layer (never in a host directory bound in).
fn symlink(root: &Root, target: &Path, to: &Path) -> Result<()> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    let dir = open_target(root, parent, false)?;
    if !root.is_ours(&dir) {
        return Err(leaves_image(parent, &root.shown(&dir)));
    }
    let name = target.file_name().unwrap_or_default();
    match nix::unistd::symlinkat(to, Some(dir.as_raw_fd()), name) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(e).ctx(|| format!("cannot create symlink {}", target.display())),
    }
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
    use crate::container::syscalls::recording::{Op, Recorder};
    use std::fs::File;
    use std::os::unix::fs::OpenOptionsExt;

    /// A scratch directory: `root/` stands for the container's root, `host/` for host paths
    /// (`host/data` a directory, `host/file` a file). Removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("berth-mounts-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("root")).unwrap();
            std::fs::create_dir_all(dir.join("host/data")).unwrap();
            std::fs::write(dir.join("host/file"), "x").unwrap();
            Scratch(std::fs::canonicalize(&dir).unwrap())
        }

        fn host(&self, rel: &str) -> PathBuf {
            self.0.join("host").join(rel)
        }

        /// Apply `steps` to the root with the recorder; what it recorded, and the result.
        fn apply(&self, steps: &[Step]) -> (Vec<Op>, Result<()>) {
            let recorder = Recorder::new(&self.0.join("root"));
            let fd = File::options()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(self.0.join("root"))
                .unwrap();
            let mut root = Root::new(fd.into(), &recorder).unwrap();
            let staging = self.host("state/mnt");
            let done = steps
                .iter()
                .try_for_each(|step| apply_step(&mut root, step, &staging));
            (recorder.take(), done)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn step(target: &str, action: Action) -> Step {
        Step {
            target: PathBuf::from(target),
            action,
            origin: "test".into(),
        }
    }

    fn bind(source: PathBuf, recursive: bool, readonly: bool, noexec: bool) -> Action {
        Action::Bind {
            source,
            recursive,
            readonly,
            propagation: Propagation::Private,
            noexec,
            create: Create::Auto,
        }
    }

    fn tmpfs(options: &str, readonly: bool, noexec: bool) -> Action {
        Action::Tmpfs {
            options: options.into(),
            readonly,
            noexec,
        }
    }

    fn dir(at: &str) -> Op {
        Op::MakeDir { at: at.into() }
    }

    #[test]
    fn a_readonly_bind_is_cloned_restricted_then_attached_on_a_new_mount_point() {
        let s = Scratch::new("bind");
        let data = s.host("data");
        let (ops, done) = s.apply(&[step("/opt/data", bind(data.clone(), false, true, false))]);
        done.unwrap();
        let attrs = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_RDONLY;
        assert_eq!(
            ops,
            [
                Op::Clone {
                    source: data.clone(),
                    recursive: false
                },
                Op::SetAttrs {
                    tree: data.clone(),
                    attrs,
                    recursive: false
                },
                Op::Propagation {
                    tree: data.clone(),
                    propagation: sys::PROPAGATION_PRIVATE,
                    recursive: false
                },
                dir("/opt"),
                dir("/opt/data"),
                Op::Attach {
                    tree: data,
                    at: "/opt/data".into()
                },
            ]
        );
    }

    #[test]
    fn a_file_bind_gets_a_file_mount_point_and_dev_binds_keep_devices() {
        let s = Scratch::new("file");
        let file = s.host("file");
        let rslave = Action::Bind {
            source: s.host("data"),
            recursive: true,
            readonly: false,
            propagation: Propagation::Slave,
            noexec: true,
            create: Create::Auto,
        };
        let (ops, done) = s.apply(&[
            step("/etc/extra", bind(file.clone(), false, false, false)),
            step("/dev/data", rslave),
        ]);
        done.unwrap();
        assert_eq!(ops[3], dir("/etc"));
        assert_eq!(
            ops[4],
            Op::MakeFile {
                at: "/etc/extra".into()
            }
        );
        // Under /dev no nodev; noexec and the slave propagation apply to the whole tree.
        assert_eq!(
            ops[7],
            Op::SetAttrs {
                tree: s.host("data"),
                attrs: sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
                recursive: true
            }
        );
        assert_eq!(
            ops[8],
            Op::Propagation {
                tree: s.host("data"),
                propagation: sys::PROPAGATION_SLAVE,
                recursive: true
            }
        );
        assert_eq!(ops.len(), 12);
    }

    #[test]
    fn an_rbind_of_the_staging_areas_ancestor_hides_its_copy_of_the_staging_area() {
        let s = Scratch::new("rbind");
        // The copy of the staging area the rbind brought in.
        std::fs::create_dir_all(s.0.join("root/h/state/mnt")).unwrap();
        let (ops, done) = s.apply(&[step("/h", bind(s.0.join("host"), true, false, false))]);
        done.unwrap();
        assert_eq!(
            &ops[3..],
            [
                Op::Attach {
                    tree: s.0.join("host"),
                    at: "/h".into()
                },
                Op::Detach {
                    at: "/h/state/mnt".into()
                },
            ]
        );
    }

    #[test]
    fn tmpfs_flags_follow_the_options_and_the_dev_exception() {
        let s = Scratch::new("tmpfs");
        let (ops, done) = s.apply(&[
            step("/dev/shm", tmpfs("size=64m,mode=1777", false, false)),
            step("/scratch", tmpfs("mode=0755", true, true)),
        ]);
        done.unwrap();
        let mount = |at: &str, flags, data: &str| Op::Mount {
            fstype: "tmpfs".into(),
            at: at.into(),
            flags,
            data: Some(data.into()),
        };
        assert_eq!(
            ops,
            [
                dir("/dev"),
                dir("/dev/shm"),
                mount("/dev/shm", MsFlags::MS_NOSUID, "size=64m,mode=1777"),
                dir("/scratch"),
                mount(
                    "/scratch",
                    MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_RDONLY
                        | MsFlags::MS_NOEXEC,
                    "mode=0755"
                ),
            ]
        );
    }

    #[test]
    fn devpts_and_sysfs_are_new_instances_with_fixed_flags() {
        let s = Scratch::new("devpts");
        let (ops, done) = s.apply(&[
            step("/dev/pts", Action::Devpts),
            step("/sys", Action::Sysfs),
        ]);
        done.unwrap();
        assert_eq!(
            ops,
            [
                dir("/dev"),
                dir("/dev/pts"),
                Op::Mount {
                    fstype: "devpts".into(),
                    at: "/dev/pts".into(),
                    flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                    data: Some("newinstance,ptmxmode=0666,mode=0620".into()),
                },
                dir("/sys"),
                Op::Mount {
                    fstype: "sysfs".into(),
                    at: "/sys".into(),
                    flags: MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC,
                    data: None,
                },
            ]
        );
    }

    #[test]
    fn umount_detaches_an_existing_target_and_refuses_a_missing_one() {
        let s = Scratch::new("umount");
        let (ops, done) = s.apply(&[
            step("/mnt/x", tmpfs("mode=0755", false, false)),
            step("/mnt/x", Action::Umount),
        ]);
        done.unwrap();
        assert_eq!(
            ops.last(),
            Some(&Op::Detach {
                at: "/mnt/x".into()
            })
        );
        assert_eq!(ops.len(), 4);
        let (ops, done) = s.apply(&[step("/nowhere", Action::Umount)]);
        assert!(done
            .unwrap_err()
            .to_string()
            .contains("cannot unmount /nowhere: not found in the container"));
        assert!(ops.is_empty());
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(br"/tmp/a\040b"), b"/tmp/a b");
        assert_eq!(unescape_mountinfo(br"/x\134y\011"), b"/x\\y\t");
        // Not an escape: kept as is, also at the end.
        assert_eq!(unescape_mountinfo(br"/x\09"), br"/x\09");
        assert_eq!(unescape_mountinfo(br"/x\"), br"/x\");
    }
}
