//! The steps every container gets: /proc, /sys, a small /dev, /tmp, the user's home and
//! working directory, the host's name resolution, and the user's entries in /etc.

use super::{bind, Action, Ctx, Step};
use crate::options::{Create, Propagation};
use std::path::Path;

/// Host device nodes every container gets in its own small /dev.
const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Top-level host directories that are never bound as the working directory: binding them
/// would hide the image's own system files.
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin", "sys",
    "usr", "var",
];

/// /proc, /sys, /dev and /tmp.
pub(super) fn base_steps(ctx: &Ctx) -> Vec<Step> {
    let opts = ctx.opts;
    // The host's /sys, unless the container has a network namespace of its own: then a
    // fresh sysfs (its /sys/class/net is that namespace's), with the host's cgroups.
    let sys = if opts.unshare.net {
        Action::Sysfs
    } else {
        Action::Bind {
            source: "/sys".into(),
            recursive: true,
            readonly: true,
            propagation: Propagation::Private,
            noexec: false,
            create: Create::Auto,
        }
    };
    let mut steps = vec![
        bind(Path::new("/proc"), Path::new("/proc"), "default"),
        Step {
            target: "/sys".into(),
            action: sys,
            origin: "default".into(),
        },
        Step {
            target: "/dev".into(),
            action: Action::Tmpfs {
                options: "mode=0755".into(),
                readonly: false,
                noexec: false,
            },
            origin: "default".into(),
        },
    ];
    if opts.unshare.net && ctx.host.exists(Path::new("/sys/fs/cgroup")) {
        steps.push(Step {
            target: "/sys/fs/cgroup".into(),
            action: Action::Bind {
                source: "/sys/fs/cgroup".into(),
                recursive: true,
                readonly: true,
                propagation: Propagation::Private,
                noexec: false,
                create: Create::Auto,
            },
            origin: "default".into(),
        });
    }
    dev_steps(ctx, &mut steps);
    // Recursive, as every bind of a host directory: in a user namespace the kernel refuses a
    // non-recursive copy of a tree with submounts (another user's FUSE mount under /tmp...),
    // and the user expects to see them. The copy of berth's own staging area is detached.
    steps.push(Step {
        target: "/tmp".into(),
        action: Action::Bind {
            source: "/tmp".into(),
            recursive: true,
            readonly: false,
            propagation: Propagation::Private,
            noexec: false,
            create: Create::Auto,
        },
        origin: "default".into(),
    });
    steps
}

/// The container's /dev: the host's harmless nodes, its own ptys, shared memory, the links.
fn dev_steps(ctx: &Ctx, steps: &mut Vec<Step>) {
    for node in DEV_NODES {
        let path = Path::new("/dev").join(node);
        if ctx.host.exists(&path) {
            steps.push(bind(&path, &path, "default"));
        }
    }
    steps.push(Step {
        target: "/dev/pts".into(),
        action: Action::Devpts,
        origin: "default".into(),
    });
    if ctx.host.exists(Path::new("/dev/shm")) {
        steps.push(bind(
            Path::new("/dev/shm"),
            Path::new("/dev/shm"),
            "default",
        ));
    }
    for (link, to) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        steps.push(Step {
            target: link.into(),
            action: Action::Symlink { to: to.into() },
            origin: "default".into(),
        });
    }
}

/// The home, and the working directory unless a bind already shows it or it is a system
/// directory. Returns whether the working directory is visible at the same path inside.
pub(super) fn home_and_cwd(ctx: &Ctx, cwd: &Path, steps: &mut Vec<Step>) -> bool {
    let (opts, user) = (ctx.opts, ctx.user);
    if opts.mount_home && user.home != Path::new("/") && ctx.host.exists(&user.home) {
        // As enroot's home hook: under remap-root the home is root's, where HOME points.
        let target = if opts.remap_root {
            Path::new("/root")
        } else {
            user.home.as_path()
        };
        steps.push(bind(&user.home, target, "home"));
    }
    let covered = |p: &Path| {
        steps.iter().any(|s| {
            matches!(&s.action, Action::Bind { source, .. }
            if source == &s.target && p.starts_with(&s.target))
        })
    };
    let top_is_system = cwd
        .components()
        .nth(1)
        .is_some_and(|c| SYSTEM_DIRS.contains(&c.as_os_str().to_string_lossy().as_ref()));
    if covered(cwd) {
        true
    } else if cwd != Path::new("/") && !top_is_system {
        steps.push(bind(cwd, cwd, "cwd"));
        true
    } else {
        false
    }
}

/// The host's name resolution, and the user's entries in /etc/passwd and /etc/group (under
/// remap-root, apt's drop-in instead).
pub(super) fn etc_steps(ctx: &Ctx, steps: &mut Vec<Step>) {
    let user = ctx.user;
    for file in ["/etc/hosts", "/etc/resolv.conf"] {
        if ctx.host.exists(Path::new(file)) {
            steps.push(bind(Path::new(file), Path::new(file), "default"));
        }
    }
    if !ctx.opts.remap_root {
        let passwd = format!(
            "{}:x:{}:{}:{}:{}:{}",
            user.name,
            user.uid,
            user.gid,
            user.gecos,
            user.home.display(),
            user.shell
        );
        let group = format!("{}:x:{}:", user.primary_group_name(), user.gid);
        steps.push(Step {
            target: "/etc/passwd".into(),
            action: Action::AddEntry { line: passwd },
            origin: "user".into(),
        });
        steps.push(Step {
            target: "/etc/group".into(),
            action: Action::AddEntry { line: group },
            origin: "user".into(),
        });
    } else {
        // apt checks that dropping to `_apt` really changed its ids, which the fake-root
        // filter cannot make true: as enroot does, apt stays root (only the user outside).
        steps.push(Step {
            target: crate::fakeroot::APT_DROP_IN.into(),
            action: Action::AddEntryIfDir {
                line: crate::fakeroot::APT_SANDBOX_ROOT.into(),
            },
            origin: "fake root".into(),
        });
    }
}
