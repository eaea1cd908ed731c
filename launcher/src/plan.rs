//! The plan: everything `berth run` will do, computed as data before any namespace exists.
//! `--dry-run` prints it; unit tests check it without privileges; `container::build` performs it.

use crate::error::{usage, Result};
use crate::host::HostUser;
use crate::image::{Image, ImageKind};
use crate::image_config::ImageConfig;
use crate::options::{
    Create, Join, Mode, MountKind, MountSpec, Namespaces, Propagation, RunOptions,
};
use crate::policy::{self, Compatibility, EnvRules, MpiFamily, OnMismatch, Policy, Rule};
use sha2::{Digest, Sha256};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where the container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Rootfs {
    /// berth's own FUSE server (berth-imagefs) serves the squashfs.
    Fuse,
    /// The node-local extract cache holds an unpacked copy (made on first use).
    Extract,
    /// A directory rootfs, used in place.
    Directory,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Bind a host path (file or directory) onto the target.
    Bind {
        source: PathBuf,
        recursive: bool,
        readonly: bool,
        /// Private, or a slave receiving mounts made later under the source on the host
        /// (site mounts' and `--mount`'s `rslave`), or unbindable.
        propagation: Propagation,
        noexec: bool,
        /// What to make at a missing target.
        create: Create,
    },
    /// A fresh tmpfs with these options (`mode=0755`, a user's `size=1G`...).
    Tmpfs {
        options: String,
        readonly: bool,
        noexec: bool,
    },
    /// Detach what an earlier step mounted at the target (`--mount umount:DST`).
    Umount,
    /// A fresh sysfs (read-only): in a new network namespace it shows that namespace's
    /// interfaces, where the host's /sys shows the host's.
    Sysfs,
    /// A new devpts instance (`newinstance,ptmxmode=0666`): the container's own ptys.
    Devpts,
    /// A symlink created in the container's /dev.
    Symlink { to: PathBuf },
    /// Add a line to an image file (/etc/passwd, /etc/group) unless an entry with the same name
    /// already exists.
    AddEntry { line: String },
    /// As `AddEntry`, only if the target's directory exists in the image: a drop-in for a
    /// tool the image may not have (apt's, under `--remap-root`).
    AddEntryIfDir { line: String },
    /// Host libraries, copied once per node into the state directory (named by their SONAME)
    /// and that directory bound read-only: one mount however many libraries a site injects.
    Libraries { files: Vec<PathBuf> },
}

impl Action {
    /// One line for `--dry-run` and the -vv log: what is mounted or written, and how.
    pub fn describe(&self) -> String {
        match self {
            Action::Bind {
                source,
                recursive,
                readonly,
                propagation,
                noexec,
                create,
            } => format!(
                "<- {} ({}{}{}{}, nosuid{})",
                source.display(),
                if *recursive { "rbind" } else { "bind" },
                if *readonly { ", ro" } else { "" },
                match propagation {
                    Propagation::Private => "",
                    Propagation::Slave => ", rslave",
                    Propagation::Unbindable => ", runbindable",
                },
                if *noexec { ", noexec" } else { "" },
                match create {
                    Create::Auto => "",
                    Create::Dir => ", x-create=dir",
                    Create::File => ", x-create=file",
                }
            ),
            Action::Tmpfs {
                options,
                readonly,
                noexec,
            } => format!(
                "tmpfs ({}{}nosuid{})",
                if options.is_empty() {
                    String::new()
                } else {
                    format!("{options}, ")
                },
                if *readonly { "ro, " } else { "" },
                if *noexec { ", noexec" } else { "" }
            ),
            Action::Umount => "unmount what is there".to_string(),
            Action::Sysfs => "sysfs of the container's network namespace (ro)".to_string(),
            Action::Devpts => "devpts, new instance (nosuid, noexec)".to_string(),
            Action::Symlink { to } => format!("symlink -> {}", to.display()),
            Action::AddEntry { line } => format!("add entry '{line}'"),
            Action::AddEntryIfDir { line } => {
                format!("add entry '{line}' (if the directory exists)")
            }
            Action::Libraries { files } => format!("<- host libraries {}", lib_names(files)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Step {
    pub target: PathBuf,
    pub action: Action,
    /// Why this step is there: "default", "home", "cwd", "--mount", or the policy rule's
    /// `file:line`.
    pub origin: String,
}

/// Host MPI injection, applied only if the image's MPI passes the ABI check at build time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpiPlan {
    pub family: MpiFamily,
    pub version: String,
    pub compatibility: Compatibility,
    pub on_mismatch: OnMismatch,
    pub steps: Vec<Step>,
    pub origin: String,
}

/// Host libraries berth injects (MPI, verbs providers, GPU driver) are bound here, and this
/// directory is put first in LD_LIBRARY_PATH.
pub const HOST_LIB_DIR: &str = "/.berth/host-lib";
/// The same for the host's MPI libraries (only when the ABI check passes).
pub const MPI_LIB_DIR: &str = "/.berth/mpi-lib";

/// The container: what is shared by every rank that joins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub image: Image,
    pub rootfs: Rootfs,
    pub writable: bool,
    pub remap_root: bool,
    pub user: HostUser,
    pub steps: Vec<Step>,
    pub state_dir: PathBuf,
    /// The host working directory is visible at the same path inside.
    pub cwd_visible: bool,
    pub join_key: Option<String>,
    /// Seconds the keeper stays after its last rank (see `RunOptions::linger_secs`).
    pub linger_secs: u64,
    /// Mount mode: the image keeper's idle time; 0: the run mounts the image itself.
    pub image_idle_secs: u64,
    /// Mount mode: the image server's block cache, in bytes.
    pub image_cache_bytes: usize,
    /// Whose keeper a run may share: the job step under a scheduler (which kills a step's
    /// processes when it ends), else empty (any run of the user on this node).
    pub keeper_scope: String,
    pub mpi: Option<MpiPlan>,
    /// The site's environment rules.
    pub env_rules: EnvRules,
    /// What the plan left out and why (optional site mounts absent on this node...).
    pub notes: Vec<String>,
    /// The on-disk writable layer of a named container (`<state>/named/<name>`).
    pub persist: Option<PathBuf>,
    /// A squashfs file's identity (device, inode, size, mtime, ctime), taken when the plan is
    /// made on the host: an image replaced or edited in place at the same path is another
    /// container (a lingering keeper must not serve the old one). Empty for a directory image,
    /// which is used live, as it is.
    pub image_stamp: String,
    /// Namespaces of the container's own besides user and mount (`--unshare`).
    pub unshare: Namespaces,
}

/// The process started in the container, resolved once the image config is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Bytes, as the OS gives them: arguments and variables need not be UTF-8.
    pub argv: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub workdir: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// Host device nodes every container gets in its own small /dev.
const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Top-level host directories that are never bound as the working directory: binding them
/// would hide the image's own system files.
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin", "sys",
    "usr", "var",
];

fn bind(source: &Path, target: &Path, origin: &str) -> Step {
    Step {
        target: target.to_path_buf(),
        action: Action::Bind {
            source: source.to_path_buf(),
            recursive: true,
            readonly: false,
            propagation: Propagation::Private,
            noexec: false,
            create: Create::Auto,
        },
        origin: origin.to_string(),
    }
}

impl Plan {
    pub fn build(
        opts: &RunOptions,
        image: Image,
        user: HostUser,
        cwd: &Path,
        state_dir: PathBuf,
        env: &[(OsString, OsString)],
        policy: &Policy,
    ) -> Result<Plan> {
        // Both modes give the user every file of the image (berth-imagefs shows them as the
        // mounting user's), so a fake-root package manager can rewrite any of them in either.
        let mode = opts.mode.or(policy.mode).unwrap_or(Mode::Mount);
        let rootfs = match (&image.kind, mode) {
            (ImageKind::Directory, _) => Rootfs::Directory,
            (ImageKind::Squashfs { .. }, Mode::Mount) => Rootfs::Fuse,
            (ImageKind::Squashfs { .. }, Mode::Extract) => Rootfs::Extract,
        };
        let exists = |p: &Path| p.exists();
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
        if opts.unshare.net && exists(Path::new("/sys/fs/cgroup")) {
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
        for node in DEV_NODES {
            let path = Path::new("/dev").join(node);
            if exists(&path) {
                steps.push(bind(&path, &path, "default"));
            }
        }
        steps.push(Step {
            target: "/dev/pts".into(),
            action: Action::Devpts,
            origin: "default".into(),
        });
        if exists(Path::new("/dev/shm")) {
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
        if opts.mount_home && user.home != Path::new("/") && exists(&user.home) {
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
        let cwd_visible = if covered(cwd) {
            true
        } else if cwd != Path::new("/") && !top_is_system {
            steps.push(bind(cwd, cwd, "cwd"));
            true
        } else {
            false
        };
        for file in ["/etc/hosts", "/etc/resolv.conf"] {
            if exists(Path::new(file)) {
                steps.push(bind(Path::new(file), Path::new(file), "default"));
            }
        }
        if !opts.remap_root {
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
        let mut notes = Vec::new();
        let (user_name, user_home, uid) = (user.name.clone(), user.home.clone(), user.uid);
        let expand = |p: &str| policy::expand(p, &user_name, &user_home, uid);
        for m in &policy.mounts {
            let source = PathBuf::from(expand(&m.source));
            let target = PathBuf::from(expand(&m.target));
            if !exists(&source) {
                if m.optional {
                    notes.push(format!(
                        "site mount {} skipped: {} is absent on this node [{}]",
                        target.display(),
                        source.display(),
                        m.origin
                    ));
                    continue;
                }
                return usage(format!(
                    "site mount source {} does not exist on this node [{}]; the admin can mark it optional = true",
                    source.display(),
                    m.origin
                ));
            }
            steps.push(Step {
                target,
                action: Action::Bind {
                    source,
                    recursive: m.recursive,
                    readonly: m.readonly,
                    propagation: if m.slave {
                        Propagation::Slave
                    } else {
                        Propagation::Private
                    },
                    noexec: false,
                    create: Create::Auto,
                },
                origin: format!("policy {}", m.origin),
            });
        }
        let mut host_libs: Vec<(PathBuf, String)> = Vec::new();
        let mut devices_found = false;
        for rule in &policy.device_paths {
            let pattern = expand(&rule.path);
            for path in glob_paths(&pattern) {
                devices_found = true;
                let target = device_target(&pattern, &path);
                steps.push(Step {
                    target,
                    action: Action::Bind {
                        source: path,
                        recursive: true,
                        readonly: false,
                        propagation: Propagation::Private,
                        noexec: false,
                        create: Create::Auto,
                    },
                    origin: format!("devices {}", rule.origin),
                });
            }
        }
        if devices_found {
            for rule in &policy.device_config {
                let pattern = expand(&rule.path);
                for path in glob_paths(&pattern) {
                    steps.push(Step {
                        target: device_target(&pattern, &path),
                        action: Action::Bind {
                            source: path,
                            recursive: true,
                            readonly: true,
                            propagation: Propagation::Private,
                            noexec: false,
                            create: Create::Auto,
                        },
                        origin: format!("devices {}", rule.origin),
                    });
                }
            }
            for rule in &policy.device_libraries {
                for lib in find_libraries(&expand(&rule.path)) {
                    host_libs.push((lib, format!("devices {}", rule.origin)));
                }
            }
        }
        // Patterns such as /dev/nvidia[0-9]* are only expanded (a listing of /dev on every
        // rank) when a plain GPU device path, the driver's control device, exists.
        let wild = |p: &str| p.contains(['*', '?', '[']);
        let plain: Vec<String> = policy
            .gpu_devices
            .iter()
            .map(|r| expand(&r.path))
            .filter(|p| !wild(p))
            .collect();
        let gpu_present = plain.is_empty() || plain.iter().any(|p| Path::new(p).exists());
        if policy.gpu_enabled && gpu_present {
            let visible = gpu_visible(env);
            let mut gpu_found = false;
            for rule in &policy.gpu_devices {
                for path in glob_paths(&expand(&rule.path)) {
                    if !gpu_device_visible(&path, visible.as_deref()) {
                        continue;
                    }
                    gpu_found = true;
                    steps.push(Step {
                        target: path.clone(),
                        action: Action::Bind {
                            source: path,
                            recursive: false,
                            readonly: false,
                            propagation: Propagation::Private,
                            noexec: false,
                            create: Create::Auto,
                        },
                        origin: format!("gpu {}", rule.origin),
                    });
                }
            }
            if gpu_found {
                for rule in &policy.gpu_libraries {
                    for lib in find_libraries(&expand(&rule.path)) {
                        host_libs.push((lib, format!("gpu {}", rule.origin)));
                    }
                }
            }
        }
        let env_get = |k: &str| get_var(env, k).map(OsStr::to_os_string);
        if policy.pmix_server_dir {
            if let Some(dir) = env_get("PMIX_SERVER_TMPDIR").map(PathBuf::from) {
                if dir.is_absolute() && dir.is_dir() && !covered_by(&steps, &dir) {
                    steps.push(bind(&dir, &dir, "pmix PMIX_SERVER_TMPDIR"));
                }
            }
            // Slurm's PMIx plugin gives each step's clients a directory of their own (PMIx's
            // PMIX_TMPDIR: Open MPI's session directory goes there) under SLURM_PMIX_TMPDIR
            // when the job sets it, else under TmpFS (usually /tmp, shown anyway).
            if let (Some(base), Some(job), Some(step)) = (
                env_get("SLURM_PMIX_TMPDIR"),
                env_get("SLURM_JOB_ID"),
                env_get("SLURM_STEP_ID"),
            ) {
                let name = format!(
                    "spmix_appdir_{}_{}.{}",
                    user.uid,
                    job.to_string_lossy(),
                    step.to_string_lossy()
                );
                let dir = PathBuf::from(base).join(name);
                if dir.is_absolute() && dir.is_dir() && !covered_by(&steps, &dir) {
                    steps.push(bind(&dir, &dir, "pmix SLURM_PMIX_TMPDIR"));
                }
            }
        }
        if let Some(rule) = &policy.munge_socket_dir {
            let dir = PathBuf::from(expand(&rule.path));
            if dir.is_dir() && !covered_by(&steps, &dir) {
                steps.push(bind(&dir, &dir, &format!("pmix munge {}", rule.origin)));
            }
        }
        for path in &opts.scheduler_paths {
            if exists(path) && !covered_by(&steps, path) {
                steps.push(Step {
                    target: path.clone(),
                    action: Action::Bind {
                        source: path.clone(),
                        recursive: true,
                        readonly: true,
                        propagation: Propagation::Private,
                        noexec: false,
                        create: Create::Auto,
                    },
                    origin: "scheduler".into(),
                });
            }
        }
        for lib in &opts.scheduler_libraries {
            host_libs.push((lib.clone(), "scheduler".into()));
        }
        if !host_libs.is_empty() {
            let origin = host_libs
                .iter()
                .map(|(_, o)| o.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            steps.push(Step {
                target: HOST_LIB_DIR.into(),
                action: Action::Libraries {
                    files: host_libs.iter().map(|(l, _)| l.clone()).collect(),
                },
                origin,
            });
        }
        if !opts.mounts.is_empty() && !policy.user_mounts.enabled {
            return usage(
                "user mounts are disabled by the site policy (user_mounts.enabled = false)",
            );
        }
        for m in &opts.mounts {
            check_user_mount(m, policy, &user)?;
        }
        for m in &opts.mounts {
            let action = match m.kind {
                MountKind::Bind => {
                    if !exists(&m.source) {
                        return usage(format!(
                            "mount source {} does not exist (check the path in --mount {}:{})",
                            m.source.display(),
                            m.source.display(),
                            m.target.display()
                        ));
                    }
                    Action::Bind {
                        source: std::fs::canonicalize(&m.source)
                            .unwrap_or_else(|_| m.source.clone()),
                        recursive: m.recursive,
                        readonly: m.readonly,
                        propagation: m.propagation,
                        noexec: m.noexec,
                        create: m.create,
                    }
                }
                MountKind::Tmpfs => Action::Tmpfs {
                    options: m.tmpfs_options.clone(),
                    readonly: m.readonly,
                    noexec: m.noexec,
                },
                MountKind::Umount => {
                    check_umount(&steps, &m.target)?;
                    Action::Umount
                }
            };
            steps.push(Step {
                target: m.target.clone(),
                action,
                origin: "--mount".into(),
            });
        }
        let mut plan = Plan {
            image,
            rootfs,
            writable: opts.writable,
            remap_root: opts.remap_root,
            user,
            steps,
            state_dir,
            cwd_visible,
            join_key: None,
            linger_secs: opts.linger_secs.or(policy.linger).unwrap_or(0),
            image_idle_secs: opts
                .image_idle_secs
                .or(policy.image_idle)
                .unwrap_or(DEFAULT_IMAGE_IDLE_SECS),
            image_cache_bytes: (policy.image_cache_mib.unwrap_or(DEFAULT_IMAGE_CACHE_MIB) as usize)
                << 20,
            keeper_scope: keeper_scope(env),
            mpi: None,
            env_rules: policy.env.clone(),
            notes,
            persist: None,
            image_stamp: String::new(),
            unshare: opts.unshare,
        };
        if matches!(plan.image.kind, ImageKind::Squashfs { .. }) {
            use std::os::unix::fs::MetadataExt;
            if let Ok(m) = std::fs::metadata(&plan.image.path) {
                plan.image_stamp = format!(
                    "{}:{}:{}:{}.{}:{}.{}",
                    m.dev(),
                    m.ino(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec()
                );
            }
        }
        if let Some(name) = &opts.persist {
            crate::options::check_name("container name", name)?;
            plan.persist = Some(plan.state_dir.join("named").join(name));
        }
        if let Some(m) = policy.mpi.as_ref().filter(|m| m.enabled && opts.mpi) {
            let origin = format!("mpi {}", m.origin);
            let mut mpi_steps = Vec::new();
            for rule in &m.bind {
                for path in glob_paths(&expand(&rule.path)) {
                    mpi_steps.push(Step {
                        target: path.clone(),
                        action: Action::Bind {
                            source: path,
                            recursive: true,
                            readonly: true,
                            propagation: Propagation::Private,
                            noexec: false,
                            create: Create::Auto,
                        },
                        origin: format!("mpi {}", rule.origin),
                    });
                }
            }
            let libs: Vec<PathBuf> = m
                .libraries
                .iter()
                .flat_map(|r| find_libraries(&expand(&r.path)))
                .collect();
            if !libs.is_empty() {
                let origins: Vec<String> =
                    m.libraries.iter().map(|r| r.origin.to_string()).collect();
                mpi_steps.push(Step {
                    target: MPI_LIB_DIR.into(),
                    action: Action::Libraries { files: libs },
                    origin: format!("mpi {}", origins.join(", ")),
                });
            }
            plan.mpi = Some(MpiPlan {
                family: m.family,
                version: m.version.clone(),
                compatibility: m.compatibility,
                on_mismatch: m.on_mismatch,
                steps: mpi_steps,
                origin,
            });
        }
        let fingerprint = plan.fingerprint();
        plan.join_key = match &opts.join {
            Join::No => None,
            Join::Key(key) => Some(key.clone()),
            Join::Auto => auto_join_key(env).map(|k| format!("{k}-{}", &fingerprint[..12])),
        };
        // A lingering container is found again by what it is. Never a writable one: its
        // changes would leak into the next, unrelated run.
        if plan.join_key.is_none()
            && plan.linger_secs > 0
            && !plan.writable
            && opts.join != Join::No
        {
            plan.join_key = Some(format!("node-{}", &fingerprint[..16]));
        }
        Ok(plan)
    }

    /// A digest of what makes two containers interchangeable: ranks may only share a container
    /// built from the same image with the same mounts.
    pub fn fingerprint(&self) -> String {
        let text = format!(
            "{:?}|{}|{:?}|{}|{}|{:?}|{}|{:?}|{:?}|{:?}",
            self.image.path,
            self.image_stamp,
            self.rootfs,
            self.writable,
            self.remap_root,
            self.steps,
            self.user.uid,
            self.mpi,
            self.persist,
            self.unshare
        );
        Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The fingerprint in parts, for a rank that attaches whatever the options (see
    /// `RunOptions::attach`): first what must still match (the user, the named container's
    /// layer), then each option a keeper compares to name what the rank's plan has that the
    /// running container ignores, as `name=hash`.
    pub fn fingerprint_parts(&self) -> (String, Vec<(&'static str, String)>) {
        let hash = |text: String| -> String {
            Sha256::digest(text.as_bytes())
                .iter()
                .take(6)
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let strict = hash(format!("{}|{:?}", self.user.uid, self.persist));
        let parts = vec![
            (
                "image",
                hash(format!(
                    "{:?}|{}|{:?}",
                    self.image.path, self.image_stamp, self.rootfs
                )),
            ),
            ("mounts", hash(format!("{:?}", self.steps))),
            ("writable", hash(self.writable.to_string())),
            ("remap-root", hash(self.remap_root.to_string())),
            ("mpi", hash(format!("{:?}", self.mpi))),
            ("unshare", hash(format!("{:?}", self.unshare))),
        ];
        (strict, parts)
    }

    /// The uid and gid the process has inside.
    pub fn inner_ids(&self) -> (u32, u32) {
        if self.remap_root {
            (0, 0)
        } else {
            (self.user.uid, self.user.gid)
        }
    }

    /// Resolve argv, environment and working directory from the options, the image config and
    /// the host environment. Precedence for variables: host < image `Env` < `--env`.
    pub fn process(
        &self,
        opts: &RunOptions,
        config: &ImageConfig,
        host_env: &[(OsString, OsString)],
        cwd: &Path,
        lib_dirs: &[&str],
    ) -> Result<Process> {
        let c = &config.config;
        let mut argv: Vec<OsString> = match (&c.entrypoint, opts.entrypoint) {
            (Some(ep), true) if !ep.is_empty() => ep.iter().map(OsString::from).collect(),
            _ => Vec::new(),
        };
        if !opts.argv.is_empty() {
            argv.extend(opts.argv.iter().cloned());
        } else if let Some(cmd) = &c.cmd {
            argv.extend(cmd.iter().map(OsString::from));
        }
        if argv.is_empty() {
            return usage(
                "no command given and the image has no default command (give one after the image)",
            );
        }
        // Host variables (filtered by the site's passthrough patterns), then the image's Env,
        // then the site's rules, then the user's --env.
        let mut env: Vec<(OsString, OsString)> = match &self.env_rules.passthrough {
            Some(patterns) => host_env
                .iter()
                .filter(|(k, _)| {
                    patterns
                        .iter()
                        .any(|p| policy::name_matches(p, &k.to_string_lossy()))
                })
                .cloned()
                .collect(),
            None => host_env.to_vec(),
        };
        for kv in &c.env {
            if let Some((k, v)) = kv.split_once('=') {
                set_var(&mut env, k, v);
            }
        }
        let rules = &self.env_rules;
        for (k, v) in &rules.set {
            set_var(&mut env, k, v);
        }
        for (k, v) in &rules.prepend {
            let joined = join_paths(v.as_ref(), get_var(&env, k));
            set_var(&mut env, k, &joined);
        }
        for (k, v) in &rules.append {
            let joined = join_paths(get_var(&env, k).unwrap_or_default(), Some(v.as_ref()));
            set_var(&mut env, k, &joined);
        }
        env.retain(|(k, _)| !rules.unset.iter().any(|u| k == u.as_str()));
        for (k, v) in &opts.env {
            set_var(&mut env, k, v);
        }
        let workdir = match (&opts.workdir, self.cwd_visible, &c.working_dir) {
            (Some(w), _, _) if !w.is_absolute() => {
                return usage(format!("--workdir {} is not an absolute path", w.display()))
            }
            (Some(w), _, _) => w.clone(),
            (None, true, _) => cwd.to_path_buf(),
            (None, false, Some(w)) if !w.is_empty() => PathBuf::from(w),
            _ => PathBuf::from("/"),
        };
        set_var(&mut env, "PWD", &workdir);
        // Tells a program (and berth's own Slurm plugin in an srun started here) that it runs
        // in a berth container, and of which image.
        set_var(&mut env, "BERTH_CONTAINER", &self.image.path);
        if !lib_dirs.is_empty() {
            let joined = join_paths(
                lib_dirs.join(":").as_ref(),
                get_var(&env, "LD_LIBRARY_PATH"),
            );
            set_var(&mut env, "LD_LIBRARY_PATH", &joined);
        }
        let (uid, gid) = self.inner_ids();
        if self.remap_root {
            for (k, v) in [("HOME", "/root"), ("USER", "root"), ("LOGNAME", "root")] {
                set_var(&mut env, k, v);
            }
        }
        Ok(Process {
            argv,
            env,
            workdir,
            uid,
            gid,
        })
    }

    /// The plan in words, for `--dry-run`.
    pub fn describe(&self, process: Option<&Process>) -> String {
        let mut out = String::new();
        let kind = match self.rootfs {
            Rootfs::Fuse => "squashfs, mount mode: served by berth-imagefs",
            Rootfs::Extract => "squashfs, extract mode: node-local cache",
            Rootfs::Directory => "directory rootfs",
        };
        let _ = writeln!(out, "image:    {} ({kind})", self.image.path.display());
        if self.image.offset != 0 {
            let at = self.image.offset;
            let _ = writeln!(out, "          SIF: its squashfs partition at byte {at}");
        }
        let _ = writeln!(
            out,
            "root:     overlay on the image, {} (changes discarded at exit)",
            if self.writable {
                "writable"
            } else {
                "read-only"
            }
        );
        let (uid, gid) = self.inner_ids();
        let groups: Vec<String> = self
            .user
            .groups
            .iter()
            .map(|(g, n)| format!("{g}({n})"))
            .collect();
        let _ = writeln!(
            out,
            "identity: uid {uid} gid {gid} inside = {}({}) gid {} on the host; supplementary groups still grant access (unnamed inside): {}",
            self.user.name,
            self.user.uid,
            self.user.gid,
            if groups.is_empty() { "none".to_string() } else { groups.join(" ") }
        );
        let _ = writeln!(
            out,
            "namespaces: user, mount{}",
            self.unshare
                .names()
                .iter()
                .map(|n| match *n {
                    "net" => ", net (only lo, up)",
                    "ipc" => ", ipc",
                    _ => ", uts (the host's hostname)",
                })
                .collect::<String>()
        );
        let _ = writeln!(out, "state:    {}", self.state_dir.display());
        let _ = writeln!(
            out,
            "join:     {}",
            self.join_key
                .as_deref()
                .map_or("no (a container of its own)".to_string(), |k| format!(
                    "key {k}"
                ))
        );
        if self.linger_secs > 0 {
            let _ = writeln!(
                out,
                "linger:   {} s after the last process",
                self.linger_secs
            );
        }
        let _ = writeln!(out, "mounts (in order):");
        for s in &self.steps {
            let what = s.action.describe();
            let _ = writeln!(out, "  {:<20} {what}  [{}]", s.target.display(), s.origin);
        }
        if let Some(mpi) = &self.mpi {
            let _ = writeln!(
                out,
                "host MPI ({} {}, {:?} compatibility) if the image's MPI passes the ABI check, else {} [{}]:",
                mpi.family,
                mpi.version,
                mpi.compatibility,
                match mpi.on_mismatch {
                    OnMismatch::Error => "refuse to run",
                    OnMismatch::Image => "the image's own MPI",
                },
                mpi.origin
            );
            for s in &mpi.steps {
                if let Action::Bind { source, .. } = &s.action {
                    let _ = writeln!(
                        out,
                        "  {:<20} <- {} (ro, nosuid)  [{}]",
                        s.target.display(),
                        source.display(),
                        s.origin
                    );
                }
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note:     {note}");
        }
        if let Some(p) = process {
            let _ = writeln!(out, "process:");
            let _ = writeln!(out, "  argv:    {:?}", p.argv);
            let _ = writeln!(out, "  workdir: {}", p.workdir.display());
            let _ = writeln!(
                out,
                "  uid/gid: {}/{} (no_new_privs set, all mounts nosuid)",
                p.uid, p.gid
            );
            if self.remap_root {
                let _ = writeln!(out, "  {}", crate::fakeroot::DESCRIPTION);
            }
            let _ = writeln!(out, "  env:");
            for (k, v) in &p.env {
                let _ = writeln!(out, "    {}={}", k.to_string_lossy(), v.to_string_lossy());
            }
        }
        out
    }
}

fn lib_names(files: &[PathBuf]) -> String {
    let names: Vec<String> = files
        .iter()
        .map(|f| {
            f.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    format!(
        "{} (copied once into the state directory, bound ro)",
        names.join(" ")
    )
}

fn get_var<'a>(env: &'a [(OsString, OsString)], k: &str) -> Option<&'a OsStr> {
    env.iter()
        .find(|(ek, _)| ek == k)
        .map(|(_, v)| v.as_os_str())
}

fn set_var(env: &mut Vec<(OsString, OsString)>, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) {
    let k = k.as_ref();
    env.retain(|(ek, _)| ek != k);
    env.push((k.to_os_string(), v.as_ref().to_os_string()));
}

/// `first:second`, or just `first` when there is no second.
fn join_paths(first: &OsStr, second: Option<&OsStr>) -> OsString {
    match second.filter(|s| !s.is_empty()) {
        Some(s) if !first.is_empty() => {
            let mut joined = first.to_os_string();
            joined.push(":");
            joined.push(s);
            joined
        }
        Some(s) => s.to_os_string(),
        None => first.to_os_string(),
    }
}

/// Host paths matching a pattern (`*`, `?`, `[..]`); a plain path if it exists.
pub fn glob_paths(pattern: &str) -> Vec<PathBuf> {
    let src = pattern.split_once(':').map_or(pattern, |(s, _)| s);
    let wild = |s: &str| s.contains(['*', '?', '[']);
    let path = Path::new(src);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().map(|n| n.to_string_lossy()))
    else {
        return Vec::new();
    };
    if !wild(src) {
        return if path.exists() {
            vec![path.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    if wild(&dir.to_string_lossy()) {
        return glob::glob(src)
            .map(|paths| paths.flatten().collect())
            .unwrap_or_default();
    }
    // The common case, a pattern in the last part only: one directory listing, no stat per
    // entry (this runs on every rank's start-up).
    let Ok(pat) = glob::Pattern::new(&name) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = list_dir(dir)
        .iter()
        .filter(|n| pat.matches(n))
        .map(|n| dir.join(n))
        .collect();
    found.sort();
    found
}

/// Directory listings, memoised for the life of the process: several library patterns of a
/// policy usually look into the same large directory (/usr/lib/x86_64-linux-gnu).
fn list_dir(dir: &Path) -> Vec<String> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static MEMO: std::sync::OnceLock<Mutex<HashMap<PathBuf, Vec<String>>>> =
        std::sync::OnceLock::new();
    let memo = MEMO.get_or_init(|| Mutex::new(HashMap::new()));
    let mut memo = memo.lock().unwrap_or_else(|e| e.into_inner());
    memo.entry(dir.to_path_buf())
        .or_insert_with(|| {
            std::fs::read_dir(dir)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        })
        .clone()
}

/// Where a device rule `HOST[:CONTAINER]` puts a host path inside.
fn device_target(rule: &str, path: &Path) -> PathBuf {
    match rule.split_once(':') {
        Some((_, dst)) => PathBuf::from(dst),
        None => path.to_path_buf(),
    }
}

/// Host library files for a pattern: a path glob, or a bare name glob looked up in the
/// host's loader cache (`ldconfig -p`), as the host's own programs would find them.
pub fn find_libraries(pattern: &str) -> Vec<PathBuf> {
    if pattern.contains('/') {
        // Libraries are found by SONAME, as the loader does: `libmpi.so.40*` is the file
        // `libmpi.so.40` when it exists, without listing a directory of thousands of files.
        if let Some((literal, _)) = pattern.split_once('*').filter(|(_, rest)| rest.is_empty()) {
            if !literal.contains(['?', '[']) && Path::new(literal).is_file() {
                return vec![PathBuf::from(literal)];
            }
        }
        // Otherwise the pattern may match the SONAME link and the file it points to: a file
        // some matched link already names is left out.
        let matched = glob_paths(pattern);
        let named: Vec<PathBuf> = matched
            .iter()
            .filter_map(|p| {
                std::fs::read_link(p)
                    .ok()
                    .map(|t| p.parent().unwrap_or(Path::new("/")).join(t))
            })
            .collect();
        return matched
            .into_iter()
            .filter(|p| !named.contains(p) && p.exists())
            .collect();
    }
    static CACHE: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    let all = CACHE.get_or_init(|| {
        let out = std::process::Command::new("/sbin/ldconfig")
            .arg("-p")
            .output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("x86-64") || !l.contains('('))
            .filter_map(|l| l.split(" => ").nth(1).map(|p| PathBuf::from(p.trim())))
            .collect()
    });
    let Ok(pat) = glob::Pattern::new(pattern) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = all
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| pat.matches(&n.to_string_lossy()))
        })
        .cloned()
        .collect();
    found.dedup();
    found
}

/// The GPU indices a job may see (`NVIDIA_VISIBLE_DEVICES`, else `CUDA_VISIBLE_DEVICES`);
/// None means all (unset, `all`, or ids berth cannot map to device files such as UUIDs).
pub fn gpu_visible(env: &[(OsString, OsString)]) -> Option<Vec<u32>> {
    let value = get_var(env, "NVIDIA_VISIBLE_DEVICES").or(get_var(env, "CUDA_VISIBLE_DEVICES"))?;
    match value.to_str()?.trim() {
        "all" => None,
        "" | "none" | "void" | "NoDevFiles" => Some(Vec::new()),
        list => list.split(',').map(|i| i.trim().parse().ok()).collect(),
    }
}

/// `/dev/nvidiaN` is carried in only when N is visible; control devices always.
fn gpu_device_visible(path: &Path, visible: Option<&[u32]>) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    match (
        name.strip_prefix("nvidia")
            .and_then(|n| n.parse::<u32>().ok()),
        visible,
    ) {
        (Some(index), Some(list)) => list.contains(&index),
        _ => true,
    }
}

/// A host path already visible inside through an identity rbind.
fn covered_by(steps: &[Step], path: &Path) -> bool {
    steps.iter().any(|s| {
        matches!(&s.action, Action::Bind { source, recursive: true, .. }
            if source == &s.target && path.starts_with(&s.target))
    })
}

/// A user mount must pass the site's rules; a refusal names the rule and where it is written.
pub fn check_user_mount(m: &MountSpec, policy: &Policy, user: &HostUser) -> Result<()> {
    let (source, target) = (m.source.as_path(), m.target.as_path());
    let expand =
        |r: &Rule| PathBuf::from(policy::expand(&r.path, &user.name, &user.home, user.uid));
    let rules = &policy.user_mounts;
    if m.kind != MountKind::Bind {
        // No host source: only the target rules apply.
        return check_target_rules(target, rules, &expand);
    }
    // Judge the real path, so a symlink cannot lead past the rules.
    let real = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
    if let Some(rule) = rules
        .denied_sources
        .iter()
        .find(|r| real.starts_with(expand(r)))
    {
        return usage(format!(
            "mount source {} is denied by the site policy (denied_sources {} at {})",
            source.display(),
            rule.path,
            rule.origin
        ));
    }
    if let Some(allowed) = &rules.allowed_sources {
        if !allowed.iter().any(|r| real.starts_with(expand(r))) {
            let list: Vec<String> = allowed
                .iter()
                .map(|r| expand(r).display().to_string())
                .collect();
            let at = allowed
                .first()
                .map(|r| r.origin.to_string())
                .unwrap_or_default();
            return usage(format!(
                "mount source {} is outside the sources the site allows ({}; allowed_sources at {at})",
                source.display(),
                list.join(", ")
            ));
        }
    }
    check_target_rules(target, rules, &expand)
}

fn check_target_rules(
    target: &Path,
    rules: &policy::UserMountRules,
    expand: &dyn Fn(&Rule) -> PathBuf,
) -> Result<()> {
    if let Some(rule) = rules
        .denied_targets
        .iter()
        .find(|r| target.starts_with(expand(r)))
    {
        return usage(format!(
            "mount target {} is denied by the site policy (denied_targets {} at {})",
            target.display(),
            rule.path,
            rule.origin
        ));
    }
    Ok(())
}

/// `umount:DST` removes a mount the job may do without (its home, its working directory, /tmp,
/// its own --mounts), never one the site requires (site mounts, devices, PMIx, the scheduler's).
fn check_umount(steps: &[Step], target: &Path) -> Result<()> {
    let Some(step) = steps.iter().rev().find(|s| {
        s.target == target
            && matches!(
                s.action,
                Action::Bind { .. } | Action::Tmpfs { .. } | Action::Libraries { .. }
            )
    }) else {
        return usage(format!(
            "bad mount 'umount:{}': nothing is mounted there in the container",
            target.display()
        ));
    };
    let removable = matches!(step.origin.as_str(), "home" | "cwd" | "--mount")
        || (step.origin == "default"
            && matches!(
                target.to_str(),
                Some("/tmp" | "/etc/hosts" | "/etc/resolv.conf")
            ));
    if !removable {
        return usage(format!(
            "bad mount 'umount:{}': it is mounted by {}, which a job cannot remove",
            target.display(),
            step.origin
        ));
    }
    Ok(())
}

/// Mount mode's default image keeper idle time (`[runtime] image_idle`).
pub const DEFAULT_IMAGE_IDLE_SECS: u64 = 60;
/// The image server's default block cache (`[runtime] image_cache_mib`).
pub const DEFAULT_IMAGE_CACHE_MIB: u64 = 64;

/// The job step a run belongs to, if a scheduler started it: Slurm's job and step (`batch` for
/// the batch script), OpenLava's job and array index. The step's processes are killed when it
/// ends, so its image keeper serves only it.
pub fn keeper_scope(env: &[(OsString, OsString)]) -> String {
    let get = |k: &str| get_var(env, k).map(|v| v.to_string_lossy().into_owned());
    if let Some(job) = get("SLURM_JOB_ID") {
        let step = get("SLURM_STEP_ID").unwrap_or_else(|| "batch".into());
        return format!("slurm-{job}.{step}");
    }
    if let Some(job) = get("LSB_JOBID") {
        let index = get("LSB_JOBINDEX").unwrap_or_else(|| "0".into());
        return format!("lsf-{job}.{index}");
    }
    String::new()
}

/// A join key from the environment of a parallel launcher, so that the ranks one launcher
/// starts on a node share one container without a flag.
pub fn auto_join_key(env: &[(OsString, OsString)]) -> Option<String> {
    let get = |k: &str| get_var(env, k).and_then(OsStr::to_str);
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect()
    };
    let many = |k: &str| {
        get(k)
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|n| n > 1)
    };
    if many("OMPI_COMM_WORLD_LOCAL_SIZE") {
        let job = get("PMIX_NAMESPACE").or(get("OMPI_MCA_ess_base_jobid"))?;
        return Some(format!("ompi-{}", clean(job)));
    }
    if let (Some(job), Some(step)) = (get("SLURM_JOB_ID"), get("SLURM_STEP_ID")) {
        if many("SLURM_STEP_NUM_TASKS") {
            return Some(format!("slurm-{}.{}", clean(job), clean(step)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::MountSpec;
    use std::os::unix::ffi::OsStrExt;

    fn user() -> HostUser {
        HostUser {
            uid: 1000,
            gid: 1000,
            name: "alice".into(),
            home: "/tmp".into(),
            shell: "/bin/bash".into(),
            gecos: "".into(),
            groups: vec![(1001, "lab".into())],
        }
    }

    fn opts() -> RunOptions {
        RunOptions {
            mode: Some(Mode::Mount),
            join: Join::No,
            ..RunOptions::new("/img.sqsh", vec!["true".into()])
        }
    }

    fn image() -> Image {
        Image {
            path: "/img.sqsh".into(),
            kind: ImageKind::Squashfs { bytes_used: 4096 },
            offset: 0,
        }
    }

    fn plan(o: &RunOptions, cwd: &str) -> Plan {
        plan_with(o, cwd, &Policy::default()).unwrap()
    }

    fn plan_with(o: &RunOptions, cwd: &str, policy: &Policy) -> Result<Plan> {
        Plan::build(
            o,
            image(),
            user(),
            Path::new(cwd),
            "/tmp/berth-1000".into(),
            &[],
            policy,
        )
    }

    fn policy(text: &str) -> Policy {
        let mut p = Policy::default();
        p.merge(Path::new("site.toml"), text).unwrap();
        p
    }

    #[test]
    fn default_plan_has_system_mounts_in_order() {
        let p = plan(&opts(), "/");
        let targets: Vec<_> = p
            .steps
            .iter()
            .map(|s| s.target.to_string_lossy().into_owned())
            .collect();
        let pos = |t: &str| {
            targets
                .iter()
                .position(|x| x == t)
                .unwrap_or_else(|| panic!("{t} missing"))
        };
        assert!(
            pos("/proc") < pos("/dev")
                && pos("/dev") < pos("/dev/null")
                && pos("/dev/null") < pos("/tmp")
        );
        assert!(pos("/etc/passwd") > pos("/tmp"));
        assert_eq!(p.rootfs, Rootfs::Fuse);
        assert!(!p.cwd_visible, "cwd / is the image's own root");
        let passwd = p
            .steps
            .iter()
            .find(|s| s.target == Path::new("/etc/passwd"))
            .unwrap();
        assert_eq!(
            passwd.action,
            Action::AddEntry {
                line: "alice:x:1000:1000::/tmp:/bin/bash".into()
            }
        );
    }

    #[test]
    fn cwd_is_bound_unless_covered_or_system() {
        let p = plan(&opts(), "/tmp/work");
        assert!(
            p.cwd_visible && !p.steps.iter().any(|s| s.origin == "cwd"),
            "covered by /tmp"
        );
        let p = plan(&opts(), "/etc");
        assert!(!p.cwd_visible && !p.steps.iter().any(|s| s.origin == "cwd"));
        let p = plan(&opts(), "/srv");
        assert!(p.cwd_visible);
        assert!(p
            .steps
            .iter()
            .any(|s| s.origin == "cwd" && s.target == Path::new("/srv")));
    }

    #[test]
    fn user_mounts_come_last_and_missing_sources_are_refused() {
        let mut o = opts();
        o.mounts
            .push(MountSpec::parse("/tmp:/data:ro", Path::new("/")).unwrap());
        let p = plan(&o, "/");
        let last = p.steps.last().unwrap();
        assert_eq!(last.origin, "--mount");
        assert_eq!(
            last.action,
            Action::Bind {
                source: "/tmp".into(),
                recursive: true,
                readonly: true,
                propagation: Propagation::Private,
                noexec: false,
                create: Create::Auto,
            }
        );
        o.mounts
            .push(MountSpec::parse("/does/not/exist:/x", Path::new("/")).unwrap());
        let err = Plan::build(
            &o,
            image(),
            user(),
            Path::new("/"),
            "/s".into(),
            &[],
            &Policy::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("mount source /does/not/exist does not exist"),
            "{err}"
        );
    }

    #[test]
    fn process_precedence_and_entrypoint() {
        let p = plan(&opts(), "/tmp/w");
        let mut cfg = ImageConfig::default();
        cfg.config.env = vec!["PATH=/img/bin".into(), "A=image".into()];
        cfg.config.entrypoint = Some(vec!["/entry".into()]);
        cfg.config.cmd = Some(vec!["default".into()]);
        cfg.config.working_dir = Some("/work".into());
        let host: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), "/host/bin".into()),
            ("B".into(), "host".into()),
            ("LATIN1".into(), OsStr::from_bytes(b"caf\xe9").into()),
        ];
        let mut o = opts();
        o.env = vec![("A".into(), "user".into())];
        let pr = p
            .process(&o, &cfg, &host, Path::new("/tmp/w"), &[])
            .unwrap();
        assert_eq!(pr.argv, vec!["/entry", "true"]);
        let get = |k: &str| get_var(&pr.env, k).and_then(OsStr::to_str);
        assert_eq!(get("PATH"), Some("/img/bin"));
        assert_eq!(get("A"), Some("user"));
        assert_eq!(get("B"), Some("host"));
        // Bytes pass as they are (no U+FFFD).
        assert_eq!(
            get_var(&pr.env, "LATIN1").map(OsStr::as_bytes),
            Some(&b"caf\xe9"[..])
        );
        assert_eq!(pr.workdir, Path::new("/tmp/w"));
        o.entrypoint = false;
        o.argv.clear();
        let pr = p
            .process(&o, &cfg, &host, Path::new("/tmp/w"), &[])
            .unwrap();
        assert_eq!(pr.argv, vec!["default"]);
        cfg.config.cmd = None;
        assert!(p.process(&o, &cfg, &host, Path::new("/"), &[]).is_err());
        let p = plan(&opts(), "/etc");
        cfg.config.cmd = Some(vec!["x".into()]);
        assert_eq!(
            p.process(&o, &cfg, &host, Path::new("/etc"), &[])
                .unwrap()
                .workdir,
            Path::new("/work")
        );
    }

    #[test]
    fn remap_root_maps_to_zero_and_adds_no_entries() {
        let mut o = opts();
        o.remap_root = true;
        let p = plan(&o, "/");
        assert_eq!(p.inner_ids(), (0, 0));
        assert!(!p
            .steps
            .iter()
            .any(|s| matches!(s.action, Action::AddEntry { .. })));
    }

    #[test]
    fn auto_join_keys_from_launchers() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect::<Vec<(OsString, OsString)>>()
        };
        assert_eq!(
            auto_join_key(&env(&[
                ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
                ("PMIX_NAMESPACE", "123@1")
            ]))
            .as_deref(),
            Some("ompi-123_1")
        );
        assert_eq!(
            auto_join_key(&env(&[
                ("OMPI_COMM_WORLD_LOCAL_SIZE", "1"),
                ("PMIX_NAMESPACE", "1")
            ])),
            None
        );
        assert_eq!(
            auto_join_key(&env(&[
                ("SLURM_JOB_ID", "7"),
                ("SLURM_STEP_ID", "0"),
                ("SLURM_STEP_NUM_TASKS", "4")
            ]))
            .as_deref(),
            Some("slurm-7.0")
        );
        assert_eq!(auto_join_key(&env(&[("SLURM_JOB_ID", "7")])), None);
    }

    #[test]
    fn linger_shares_by_fingerprint_but_never_a_writable_root() {
        let mut o = opts();
        o.join = Join::Auto;
        o.linger_secs = Some(30);
        let p = plan(&o, "/");
        assert_eq!(p.join_key, Some(format!("node-{}", &p.fingerprint()[..16])));
        o.writable = true;
        assert_eq!(plan(&o, "/").join_key, None);
        o.writable = false;
        o.join = Join::No;
        assert_eq!(plan(&o, "/").join_key, None);
    }

    #[test]
    fn site_mounts_apply_optional_ones_are_skipped_and_missing_ones_refused() {
        let pol = policy(
            "[[mount]]\nsource = \"/tmp\"\ntarget = \"/lustre\"\noptions = [\"ro\"]\n\
             [[mount]]\nsource = \"/nonexistent/${USER}\"\ntarget = \"/scratch\"\noptional = true\n",
        );
        let p = plan_with(&opts(), "/", &pol).unwrap();
        let lustre = p
            .steps
            .iter()
            .find(|s| s.target == Path::new("/lustre"))
            .unwrap();
        assert_eq!(
            lustre.action,
            Action::Bind {
                source: "/tmp".into(),
                recursive: true,
                readonly: true,
                propagation: Propagation::Private,
                noexec: false,
                create: Create::Auto,
            }
        );
        assert_eq!(lustre.origin, "policy site.toml:1");
        assert!(!p.steps.iter().any(|s| s.target == Path::new("/scratch")));
        assert!(
            p.notes[0].contains("/nonexistent/alice is absent"),
            "{:?}",
            p.notes
        );
        let pol = policy("[[mount]]\nsource = \"/nonexistent\"\n");
        let err = plan_with(&opts(), "/", &pol).unwrap_err().to_string();
        assert!(
            err.contains("site mount source /nonexistent does not exist")
                && err.contains("site.toml:1"),
            "{err}"
        );
    }

    #[test]
    fn user_mounts_are_checked_against_the_site_rules() {
        let pol = policy(
            "[user_mounts]\nallowed_sources = [\"${HOME}\", \"/usr\"]\ndenied_sources = [\"/usr/lib\"]\n\
             denied_targets = [\"/etc\"]\n",
        );
        let with = |spec: &str| {
            let mut o = opts();
            o.mounts
                .push(MountSpec::parse(spec, Path::new("/")).unwrap());
            plan_with(&o, "/", &pol)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert!(with("/usr/share:/data").is_ok());
        let e = with("/var:/data").unwrap_err();
        assert!(
            e.contains("outside the sources the site allows (/tmp, /usr")
                && e.contains("site.toml:2"),
            "{e}"
        );
        let e = with("/usr/lib:/data").unwrap_err();
        assert!(
            e.contains("denied by the site policy (denied_sources /usr/lib at site.toml:3)"),
            "{e}"
        );
        let e = with("/usr/share:/etc/x").unwrap_err();
        assert!(
            e.contains("mount target /etc/x is denied") && e.contains("site.toml:4"),
            "{e}"
        );
        let off = policy("[user_mounts]\nenabled = false\n");
        let mut o = opts();
        o.mounts
            .push(MountSpec::parse("/usr", Path::new("/")).unwrap());
        assert!(plan_with(&o, "/", &off)
            .unwrap_err()
            .to_string()
            .contains("disabled"));
    }

    #[test]
    fn env_rules_sit_between_image_and_user() {
        let pol = policy(
            "[env]\npassthrough = [\"SLURM_*\", \"PATH\"]\nset = { SITE = \"1\", A = \"site\" }\n\
             unset = [\"SLURM_SECRET\"]\nprepend = { PATH = \"/site/bin\" }\nappend = { MANPATH = \"/site/man\" }\n",
        );
        let p = plan_with(&opts(), "/", &pol).unwrap();
        let host: Vec<(OsString, OsString)> = [
            ("PATH", "/host/bin"),
            ("SLURM_JOB_ID", "7"),
            ("SLURM_SECRET", "x"),
            ("OTHER", "y"),
        ]
        .iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let mut cfg = ImageConfig::default();
        cfg.config.env = vec!["A=image".into(), "B=image".into()];
        let mut o = opts();
        o.env = vec![("B".into(), "user".into())];
        let pr = p
            .process(
                &o,
                &cfg,
                &host,
                Path::new("/"),
                &[MPI_LIB_DIR, HOST_LIB_DIR],
            )
            .unwrap();
        let get = |k: &str| {
            get_var(&pr.env, k)
                .and_then(OsStr::to_str)
                .map(String::from)
        };
        assert_eq!(get("OTHER"), None, "not in passthrough");
        assert_eq!(get("SLURM_JOB_ID").as_deref(), Some("7"));
        assert_eq!(get("SLURM_SECRET"), None, "unset");
        assert_eq!(get("A").as_deref(), Some("site"), "policy over image");
        assert_eq!(get("B").as_deref(), Some("user"), "user over image");
        assert_eq!(get("PATH").as_deref(), Some("/site/bin:/host/bin"));
        assert_eq!(get("MANPATH").as_deref(), Some("/site/man"));
        assert_eq!(
            get("LD_LIBRARY_PATH").as_deref(),
            Some("/.berth/mpi-lib:/.berth/host-lib")
        );
    }

    #[test]
    fn gpu_visibility() {
        let env = |v: &str| vec![("CUDA_VISIBLE_DEVICES".into(), v.into())];
        assert_eq!(gpu_visible(&[]), None);
        assert_eq!(gpu_visible(&env("0,2")), Some(vec![0, 2]));
        assert_eq!(gpu_visible(&env("none")), Some(vec![]));
        assert_eq!(gpu_visible(&env("GPU-1234")), None);
        assert!(gpu_device_visible(Path::new("/dev/nvidia2"), Some(&[0, 2])));
        assert!(!gpu_device_visible(
            Path::new("/dev/nvidia1"),
            Some(&[0, 2])
        ));
        assert!(gpu_device_visible(Path::new("/dev/nvidiactl"), Some(&[])));
    }

    #[test]
    fn fingerprint_changes_with_mounts() {
        let a = plan(&opts(), "/");
        let mut o = opts();
        o.mounts
            .push(MountSpec::parse("/tmp:/data", Path::new("/")).unwrap());
        let b = plan(&o, "/");
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), plan(&opts(), "/").fingerprint());
    }

    #[test]
    fn unshared_namespaces_are_another_container_and_net_gets_its_own_sysfs() {
        let a = plan(&opts(), "/");
        let mut o = opts();
        o.unshare = Namespaces::parse("net").unwrap();
        let b = plan(&o, "/");
        o.unshare = Namespaces::parse("ipc").unwrap();
        let c = plan(&o, "/");
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(b.fingerprint(), c.fingerprint());
        let sys = |p: &Plan| {
            p.steps
                .iter()
                .find(|s| s.target == Path::new("/sys"))
                .map(|s| s.action.clone())
                .unwrap()
        };
        assert!(matches!(sys(&a), Action::Bind { .. }));
        assert_eq!(sys(&b), Action::Sysfs);
        assert!(matches!(sys(&c), Action::Bind { .. }));
        assert!(b
            .describe(None)
            .contains("namespaces: user, mount, net (only lo, up)"));
        assert!(a.describe(None).contains("namespaces: user, mount\n"));
    }
}
