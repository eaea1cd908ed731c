//! berth's defaults are files: launcher/conf.d, which the package installs in
//! /etc/berth/conf.d and which are compiled in here, the one source of the defaults. They are
//! the base of every policy, merged first (an installed copy, edited or emptied by the admin,
//! in place of the built-in one), so that the main file and other conf.d files override them.

use super::files::read_policy_file;
use super::{EnvRules, Policy, UserMountRules};
use crate::error::PolicyError;
use std::path::{Path, PathBuf};

/// The shipped conf.d files, by name, in merge order.
pub(super) const BUILTIN: &[(&str, &str)] = &[
    (
        "10-defaults.toml",
        include_str!("../../conf.d/10-defaults.toml"),
    ),
    (
        "20-infiniband.toml",
        include_str!("../../conf.d/20-infiniband.toml"),
    ),
    (
        "20-nvidia.toml",
        include_str!("../../conf.d/20-nvidia.toml"),
    ),
];

/// A conf.d file of a built-in's name: the installed (maybe edited) vendor defaults.
pub(super) fn is_vendor_file(path: &Path) -> bool {
    path.parent().is_some_and(|d| d.ends_with("conf.d"))
        && BUILTIN
            .iter()
            .any(|(name, _)| path.file_name().is_some_and(|n| n == *name))
}

impl Policy {
    /// A policy of no files at all: nothing carried in, no user mounts.
    pub(super) fn empty() -> Policy {
        Policy {
            files: Vec::new(),
            mode: None,
            linger: None,
            cache_dir: None,
            image_store: None,
            site_store: None,
            stage_images: false,
            image_idle: None,
            image_cache_mib: None,
            mounts: Vec::new(),
            user_mounts: UserMountRules::default(),
            device_paths: Vec::new(),
            device_config: Vec::new(),
            device_libraries: Vec::new(),
            gpu_enabled: false,
            gpu_devices: Vec::new(),
            gpu_libraries: Vec::new(),
            mpi: None,
            pmix_server_dir: false,
            munge_socket_dir: None,
            env: EnvRules::default(),
        }
    }

    /// The vendor defaults: each built-in file in order, or its installed copy from
    /// `installed` (conf.d files of the built-ins' names) where there is one.
    pub(super) fn vendor_defaults(installed: &[PathBuf]) -> Result<Policy, PolicyError> {
        let mut policy = Policy::empty();
        for (name, text) in BUILTIN {
            match installed
                .iter()
                .find(|f| f.file_name().is_some_and(|n| n == *name))
            {
                Some(path) => policy.merge(path, &read_policy_file(path)?)?,
                None => policy.merge(Path::new(&format!("built-in {name}")), text)?,
            }
        }
        Ok(policy)
    }
}

impl Default for Policy {
    /// What applies without any policy file: devices carried in when present, user mounts
    /// unrestricted, no site mounts, no MPI injection (launcher/conf.d).
    fn default() -> Self {
        // The files are part of berth: the unit tests parse every one of them.
        Policy::vendor_defaults(&[]).expect("the built-in policy files parse")
    }
}
