//! The site policy: what the admin declares in `/etc/berth/berth.toml` and
//! `/etc/berth/conf.d/*.toml`, merged into one effective [`Policy`] that every `berth run`
//! applies, whichever front end called it.
//!
//! Merge rules (documented in docs/policy.md): files are read in order (the vendor defaults
//! of `defaults.rs`, then the main file, then the rest of conf.d in name order). A later file's scalar replaces an earlier one; a later file's list
//! replaces the earlier list; `[env.set]`-style tables merge key by key; `[[mount]]` entries
//! accumulate, and a later mount with the same target replaces the earlier one.
//!
//! Every error names `file:line`. A broken policy stops berth: it never falls back to none.
//!
//! The parts: `schema` (one file's format), `files` (which files, read safely), `merge` (one
//! file over the policy so far), `defaults` (the vendor defaults: launcher/conf.d, built in), `describe` (for
//! `berth policy check`). This module holds the effective policy and the helpers the plan uses.

mod defaults;
mod describe;
mod files;
mod merge;
mod schema;
#[cfg(test)]
mod tests;

use files::{policy_files, read_policy_file};
pub use schema::{Compatibility, MpiFamily, OnMismatch};

use crate::error::PolicyError;
use crate::options::Mode;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "/etc/berth/berth.toml";

/// Where a rule came from: `file:line`, shown by `--dry-run` and in refusals.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Origin(pub String);

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

// ---- The effective policy ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteMount {
    pub source: String,
    pub target: String,
    pub readonly: bool,
    pub recursive: bool,
    /// `rslave`: mounts made on the host under the source later (a Lustre remount, an
    /// automounted project directory) appear in running containers too.
    pub slave: bool,
    pub optional: bool,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path: String,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserMountRules {
    pub enabled: bool,
    /// None: any source the user can reach.
    pub allowed_sources: Option<Vec<Rule>>,
    pub denied_sources: Vec<Rule>,
    pub denied_targets: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mpi {
    pub enabled: bool,
    pub family: MpiFamily,
    pub version: String,
    pub compatibility: Compatibility,
    pub on_mismatch: OnMismatch,
    pub bind: Vec<Rule>,
    pub libraries: Vec<Rule>,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvRules {
    pub passthrough: Option<Vec<String>>,
    pub set: BTreeMap<String, String>,
    pub unset: Vec<String>,
    pub prepend: BTreeMap<String, String>,
    pub append: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    pub mode: Option<Mode>,
    pub linger: Option<u64>,
    pub cache_dir: Option<PathBuf>,
    /// Mount mode: seconds an image keeper waits for another run before it stops taking runs
    /// (0: every run mounts the image itself). None: the built-in default.
    pub image_idle: Option<u64>,
    /// Mount mode: the image server's cache of decompressed blocks, in MiB.
    pub image_cache_mib: Option<u64>,
    pub mounts: Vec<SiteMount>,
    pub user_mounts: UserMountRules,
    pub device_paths: Vec<Rule>,
    pub device_config: Vec<Rule>,
    pub device_libraries: Vec<Rule>,
    pub gpu_enabled: bool,
    pub gpu_devices: Vec<Rule>,
    pub gpu_libraries: Vec<Rule>,
    pub mpi: Option<Mpi>,
    pub pmix_server_dir: bool,
    pub munge_socket_dir: Option<Rule>,
    pub env: EnvRules,
    /// `[images] store`: the users' image store (`${USER}` is the user's name); None: each
    /// user's default (`~/.local/share/berth/store`).
    pub image_store: Option<String>,
    /// `[images] site_store`: the read-only store admins fill, searched first.
    pub site_store: Option<PathBuf>,
    /// `[images] stage = "node-local"`: a store image is copied into the node's state
    /// directory once per node (verified by its sha256) and used from there, for stores on
    /// filesystems that serve many small random reads badly. False: used in place.
    pub stage_images: bool,
}

impl Policy {
    /// Load the effective policy: the vendor defaults (each from conf.d when installed there,
    /// else built in), then the main file and the other conf.d files in order.
    pub fn load(explicit: Option<&Path>) -> Result<Policy, PolicyError> {
        let (vendor, site): (Vec<PathBuf>, Vec<PathBuf>) = policy_files(explicit)?
            .into_iter()
            .partition(|f| defaults::is_vendor_file(f));
        let mut policy = Policy::vendor_defaults(&vendor)?;
        for path in &site {
            let text = read_policy_file(path)?;
            policy.merge(path, &text)?;
        }
        policy.files = vendor.into_iter().chain(site).collect();
        Ok(policy)
    }
}

/// `4.1.4` -> (4, 1, 4); a missing part is 0.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let v = v.strip_prefix('v').unwrap_or(v);
    let mut parts = v.split('.').map(|p| {
        p.chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
    });
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

/// Replace `${USER}`, `${HOME}`, `${UID}` (and `${TMPDIR}`) in a policy path.
pub fn expand(path: &str, user: &str, home: &Path, uid: u32) -> String {
    path.replace("${USER}", user)
        .replace("${HOME}", &home.to_string_lossy())
        .replace("${UID}", &uid.to_string())
        .replace(
            "${TMPDIR}",
            &std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into()),
        )
}

/// Shell-style `*` / `?` match of a whole variable name against a passthrough pattern.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    glob::Pattern::new(pattern).is_ok_and(|p| p.matches(name))
}
