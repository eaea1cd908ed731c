//! berth's launcher: runs a command as the calling user in a container of a squashfs image,
//! with no privilege; the `berth` command and every scheduler front end go through it.
//!
//! Front ends build a [`RunOptions`] and call [`check`] (before a job is queued), [`enter`]
//! (the process becomes the container; the scheduler execs the task) or [`run`] (build, enter
//! and exec). The rest is the launcher's own; see docs/architecture.md for how a request flows.

mod arch;
mod cache;
pub mod cli_docs;
mod container;
mod doctor;
mod error;
mod fakeroot;
mod host;
mod image;
mod image_config;
mod imagefs;
mod imagekeeper;
mod join;
mod log;
mod options;
mod plan;
mod policy;
mod run;
pub mod sif;
mod signals;
mod site;
mod squashfs;
mod stage;
mod sys;

// The request and the three ways to carry it out.
pub use container::Built;
pub use error::{one_line, Error, Result};
pub use options::{check_join_key, parse_env, Join, Mode, MountSpec, Namespaces, RunOptions};
pub use plan::Process;
pub use run::{build, check, enter, run};

// The site's configuration: the policy and the per-user state directory.
pub use policy::Policy;
pub use site::{private_state_subdir, user_state_dir, Site};
/// `[images] stage = "node-local"`: a store image's verified copy on this node.
pub use stage::stage as stage_image;

/// Whether a container runs under join key `key` in the state directory `state_dir`.
pub use join::running as container_running;

// The image config (`/.berth/image.json`): berth-image writes it, front ends read it.
pub use container::read_config as read_image_config;
pub use image::read_superblock as read_squashfs_superblock;
pub use image_config::{ImageConfig, RuntimeConfig, CONFIG_PATH};

/// Opening a path inside a directory tree as if it were `/` (openat2 RESOLVE_IN_ROOT, or the
/// component-wise resolver on kernels without openat2): berth-image's layers, OpenLava's checks.
pub use sys::open_in_root;

// The `berth` command's other subcommands and what every binary that execs needs.
pub use cache::{clean as clean_cache, list as list_cache, remove_tree, Cleaned, Listed};
pub use doctor::run as doctor;
pub use log::{init as init_logging, to_sink as log_to_sink};
#[doc(hidden)]
pub use signals::record_at_start as record_signals;
pub use signals::{restore_for_exec as restore_signals_for_exec, SignalState};
