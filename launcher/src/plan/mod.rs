//! The plan: everything `berth run` will do, computed as data before any namespace exists.
//! `--dry-run` prints it; unit tests check it without privileges; `container::build` performs it.
//!
//! The parts, in the order the mounts are made: `system` (/proc, /sys, /dev, /tmp, the home,
//! the working directory, the user's entries), `site` (the policy's mounts, devices, GPUs,
//! PMIx, the scheduler's paths, host libraries, MPI), `user` (`--mount`). Then `key` (the
//! fingerprint and join key), `process` (argv and environment, once the image config is known)
//! and `describe` (the words of `--dry-run`). Every question about the host's files goes
//! through `probe::Host`, so a plan is data computed from answers a test can make up.

mod describe;
mod key;
mod probe;
mod process;
mod site;
mod system;
#[cfg(test)]
mod tests;
mod user;

pub use probe::{glob_paths, Host, RealHost};
pub use user::check_user_mount;

use crate::error::Result;
use crate::host::HostUser;
use crate::image::{Image, ImageKind};
use crate::options::{Create, Mode, Namespaces, Propagation, RunOptions};
use crate::policy::{self, Compatibility, EnvRules, MpiFamily, OnMismatch, Policy};
use key::keeper_scope;
use std::ffi::OsString;
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
    /// The process whose end is the end of that job step (see `key::keeper_anchor`).
    pub keeper_anchor: Option<i32>,
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

/// Mount mode's default image keeper idle time (`[runtime] image_idle`).
pub const DEFAULT_IMAGE_IDLE_SECS: u64 = 60;
/// The image server's default block cache (`[runtime] image_cache_mib`).
pub const DEFAULT_IMAGE_CACHE_MIB: u64 = 64;

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

/// What every part of the plan is computed from.
struct Ctx<'a> {
    host: &'a dyn Host,
    opts: &'a RunOptions,
    policy: &'a Policy,
    user: &'a HostUser,
    env: &'a [(OsString, OsString)],
}

impl Ctx<'_> {
    /// A policy path with the user's `${USER}`, `${HOME}`, `${UID}` filled in.
    fn expand(&self, path: &str) -> String {
        policy::expand(path, &self.user.name, &self.user.home, self.user.uid)
    }
}

impl Plan {
    /// The plan for these options on this machine.
    pub fn build(
        opts: &RunOptions,
        image: Image,
        user: HostUser,
        cwd: &Path,
        state_dir: PathBuf,
        env: &[(OsString, OsString)],
        policy: &Policy,
    ) -> Result<Plan> {
        Plan::build_on(&RealHost, opts, image, user, cwd, state_dir, env, policy)
    }

    /// The plan, with every question about the host's files asked of `host`.
    // The inputs of `build` and the host: grouping them in a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn build_on(
        host: &dyn Host,
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
        let ctx = Ctx {
            host,
            opts,
            policy,
            user: &user,
            env,
        };
        let mut steps = system::base_steps(&ctx);
        let cwd_visible = system::home_and_cwd(&ctx, cwd, &mut steps);
        system::etc_steps(&ctx, &mut steps);
        let mut notes = Vec::new();
        site::site_steps(&ctx, &mut steps, &mut notes)?;
        user::user_mount_steps(&ctx, &mut steps)?;
        // A squashfs file's identity: an image replaced at the same path is another container.
        let image_stamp = match image.kind {
            ImageKind::Squashfs { .. } => host.stamp(&image.path).unwrap_or_default(),
            ImageKind::Directory => String::new(),
        };
        let persist = match &opts.persist {
            Some(name) => {
                crate::options::check_name("container name", name)?;
                Some(state_dir.join("named").join(name))
            }
            None => None,
        };
        let mpi = site::mpi_plan(&ctx);
        // Only a FUSE-served image has an image keeper; finding a Slurm job's extern step
        // looks through /proc, which other runs need not pay for.
        let keeper_scope = match rootfs {
            Rootfs::Fuse => keeper_scope(env),
            Rootfs::Extract | Rootfs::Directory => String::new(),
        };
        let keeper_anchor = key::keeper_anchor(&keeper_scope);
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
            keeper_scope,
            keeper_anchor,
            mpi,
            env_rules: policy.env.clone(),
            notes,
            persist,
            image_stamp,
            unshare: opts.unshare,
        };
        plan.join_key = key::join_key(&plan, opts, env);
        Ok(plan)
    }

    /// The uid and gid the process has inside.
    pub fn inner_ids(&self) -> (u32, u32) {
        if self.remap_root {
            (0, 0)
        } else {
            (self.user.uid, self.user.gid)
        }
    }
}
