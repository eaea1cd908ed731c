//! The format of one policy file, as serde reads it: every value keeps its place in the text
//! (`Spanned`), so that the merge can name `file:line` in any error.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub(super) runtime: Option<RuntimeSection>,
    #[serde(default)]
    pub(super) mount: Vec<Spanned<MountEntry>>,
    pub(super) user_mounts: Option<UserMountsSection>,
    pub(super) devices: Option<DevicesSection>,
    pub(super) gpu: Option<GpuSection>,
    pub(super) mpi: Option<Spanned<MpiSection>>,
    pub(super) pmix: Option<PmixSection>,
    pub(super) env: Option<EnvSection>,
    pub(super) images: Option<ImagesSection>,
}

/// `[images]`: where registry images are stored (berth-image's image store).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ImagesSection {
    pub(super) store: Option<Spanned<String>>,
    pub(super) site_store: Option<Spanned<String>>,
    /// `"node-local"`: copy a store image to the node once before use; `"in-place"` (the
    /// default): use the store's file where it is.
    pub(super) stage: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuntimeSection {
    pub(super) mode: Option<Spanned<String>>,
    pub(super) linger: Option<u64>,
    pub(super) cache_dir: Option<Spanned<String>>,
    pub(super) image_idle: Option<u64>,
    pub(super) image_cache_mib: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MountEntry {
    pub(super) source: Spanned<String>,
    pub(super) target: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) options: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) optional: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UserMountsSection {
    pub(super) enabled: Option<bool>,
    pub(super) allowed_sources: Option<Vec<Spanned<String>>>,
    pub(super) denied_sources: Option<Vec<Spanned<String>>>,
    pub(super) denied_targets: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DevicesSection {
    pub(super) paths: Option<Vec<Spanned<String>>>,
    pub(super) config: Option<Vec<Spanned<String>>>,
    pub(super) libraries: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GpuSection {
    pub(super) enabled: Option<bool>,
    pub(super) devices: Option<Vec<Spanned<String>>>,
    pub(super) libraries: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MpiFamily {
    Openmpi,
    Mpich,
}

impl std::fmt::Display for MpiFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MpiFamily::Openmpi => "Open MPI",
            MpiFamily::Mpich => "MPICH-ABI",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compatibility {
    /// Same major version.
    Major,
    /// Same major.minor.
    Full,
    /// Identical version.
    Strict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMismatch {
    /// Refuse to run.
    Error,
    /// Run with the image's own MPI and print a warning.
    Image,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MpiSection {
    pub(super) enabled: Option<bool>,
    pub(super) family: MpiFamily,
    pub(super) version: Spanned<String>,
    pub(super) compatibility: Option<Compatibility>,
    pub(super) on_mismatch: Option<OnMismatch>,
    #[serde(default)]
    pub(super) bind: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) libraries: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PmixSection {
    pub(super) server_dir: Option<bool>,
    pub(super) munge_socket_dir: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EnvSection {
    pub(super) passthrough: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) set: BTreeMap<String, String>,
    pub(super) unset: Option<Vec<String>>,
    #[serde(default)]
    pub(super) prepend: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) append: BTreeMap<String, String>,
}
