//! The site policy: what the admin declares in `/etc/berth/berth.toml` and
//! `/etc/berth/conf.d/*.toml`, merged into one effective [`Policy`] that every `berth run`
//! applies, whichever front end called it.
//!
//! Merge rules (documented in docs/policy.md): files are read in order (the main file, then
//! conf.d in name order). A later file's scalar replaces an earlier one; a later file's list
//! replaces the earlier list; `[env.set]`-style tables merge key by key; `[[mount]]` entries
//! accumulate, and a later mount with the same target replaces the earlier one.
//!
//! Every error names `file:line`. A broken policy stops berth: it never falls back to none.

use crate::error::PolicyError;
use crate::options::Mode;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use toml::Spanned;

pub const DEFAULT_CONFIG: &str = "/etc/berth/berth.toml";

/// Where a rule came from: `file:line`, shown by `--dry-run` and in refusals.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Origin(pub String);

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

// ---- The file format (one file) ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    runtime: Option<RuntimeSection>,
    #[serde(default)]
    mount: Vec<Spanned<MountEntry>>,
    user_mounts: Option<UserMountsSection>,
    devices: Option<DevicesSection>,
    gpu: Option<GpuSection>,
    mpi: Option<Spanned<MpiSection>>,
    pmix: Option<PmixSection>,
    env: Option<EnvSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeSection {
    mode: Option<Spanned<String>>,
    linger: Option<u64>,
    cache_dir: Option<Spanned<String>>,
    image_idle: Option<u64>,
    image_cache_mib: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MountEntry {
    source: Spanned<String>,
    target: Option<Spanned<String>>,
    #[serde(default)]
    options: Vec<Spanned<String>>,
    #[serde(default)]
    optional: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserMountsSection {
    enabled: Option<bool>,
    allowed_sources: Option<Vec<Spanned<String>>>,
    denied_sources: Option<Vec<Spanned<String>>>,
    denied_targets: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesSection {
    paths: Option<Vec<Spanned<String>>>,
    config: Option<Vec<Spanned<String>>>,
    libraries: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuSection {
    enabled: Option<bool>,
    devices: Option<Vec<Spanned<String>>>,
    libraries: Option<Vec<Spanned<String>>>,
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
struct MpiSection {
    enabled: Option<bool>,
    family: MpiFamily,
    version: Spanned<String>,
    compatibility: Option<Compatibility>,
    on_mismatch: Option<OnMismatch>,
    #[serde(default)]
    bind: Vec<Spanned<String>>,
    #[serde(default)]
    libraries: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PmixSection {
    server_dir: Option<bool>,
    munge_socket_dir: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvSection {
    passthrough: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    unset: Option<Vec<String>>,
    #[serde(default)]
    prepend: BTreeMap<String, String>,
    #[serde(default)]
    append: BTreeMap<String, String>,
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
}

fn builtin(paths: &[&str]) -> Vec<Rule> {
    paths
        .iter()
        .map(|p| Rule {
            path: p.to_string(),
            origin: Origin("built-in default".into()),
        })
        .collect()
}

impl Default for Policy {
    /// What applies without any policy file: devices carried in when present, user mounts
    /// unrestricted, no site mounts, no MPI injection.
    fn default() -> Self {
        Policy {
            files: Vec::new(),
            mode: None,
            linger: None,
            cache_dir: None,
            image_idle: None,
            image_cache_mib: None,
            mounts: Vec::new(),
            user_mounts: UserMountRules {
                enabled: true,
                ..Default::default()
            },
            device_paths: builtin(&["/dev/infiniband"]),
            device_config: builtin(&["/etc/libibverbs.d", "/etc/rdma"]),
            device_libraries: Vec::new(),
            gpu_enabled: true,
            gpu_devices: builtin(&[
                "/dev/nvidiactl",
                "/dev/nvidia-uvm",
                "/dev/nvidia-uvm-tools",
                "/dev/nvidia-modeset",
                "/dev/nvidia[0-9]*",
            ]),
            gpu_libraries: builtin(&[
                "libcuda.so*",
                "libnvidia-ml.so*",
                "libnvidia-ptxjitcompiler.so*",
                "libnvidia-nvvm.so*",
                "libnvidia-fatbinaryloader.so*",
                "libnvidia-opencl.so*",
            ]),
            mpi: None,
            pmix_server_dir: true,
            munge_socket_dir: Some(Rule {
                path: "/run/munge".into(),
                origin: Origin("built-in default".into()),
            }),
            env: EnvRules::default(),
        }
    }
}

struct Source<'a> {
    path: &'a Path,
    /// Offsets of the text's newlines, so a span's line is a binary search: counting from
    /// the start for every span made a policy of 10,000 mounts take seconds.
    newlines: Vec<usize>,
}

impl<'a> Source<'a> {
    fn new(path: &'a Path, text: &str) -> Self {
        let newlines = text.match_indices('\n').map(|(i, _)| i).collect();
        Source { path, newlines }
    }
    fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < offset) + 1
    }
    fn at<T>(&self, s: &Spanned<T>) -> Origin {
        Origin(format!(
            "{}:{}",
            self.path.display(),
            self.line(s.span().start)
        ))
    }
    fn err<T>(&self, s: &Spanned<T>, msg: impl std::fmt::Display) -> PolicyError {
        PolicyError(format!("{}: {msg}", self.at(s)))
    }
    /// A pattern berth expands with the `glob` crate must compile: a typo such as
    /// `/dev/nvidia[0-9*` would otherwise match nothing, silently.
    fn check_glob(&self, at: &Spanned<String>, pattern: &str) -> Result<(), PolicyError> {
        glob::Pattern::new(pattern)
            .map(|_| ())
            .map_err(|e| self.err(at, format!("invalid glob pattern '{pattern}': {e}")))
    }
    fn rules(&self, list: &[Spanned<String>], absolute: bool) -> Result<Vec<Rule>, PolicyError> {
        list.iter()
            .map(|s| {
                if absolute && !is_absolute_pattern(s.get_ref()) {
                    return Err(self.err(s, format!("'{}' is not an absolute path", s.get_ref())));
                }
                Ok(Rule {
                    path: s.get_ref().clone(),
                    origin: self.at(s),
                })
            })
            .collect()
    }
    /// Rules that berth expands as globs (`HOST[:CONTAINER]`: the HOST part).
    fn patterns(&self, list: &[Spanned<String>], absolute: bool) -> Result<Vec<Rule>, PolicyError> {
        for s in list {
            let host = s
                .get_ref()
                .split_once(':')
                .map_or(s.get_ref().as_str(), |(h, _)| h);
            self.check_glob(s, host)?;
        }
        self.rules(list, absolute)
    }
}

/// Absolute, or starting with a `${VAR}` that expands to an absolute path.
fn is_absolute_pattern(p: &str) -> bool {
    p.starts_with('/') || p.starts_with("${HOME}") || p.starts_with("${TMPDIR}")
}

/// The files of the policy: the main file, then `conf.d/*.toml` next to it, in name order.
/// `BERTH_CONFIG` names another main file (tests, a site's own layout); it must exist.
pub fn policy_files(explicit: Option<&Path>) -> Result<Vec<PathBuf>, PolicyError> {
    let (main, required) = match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => match std::env::var_os("BERTH_CONFIG") {
            Some(p) if !p.is_empty() => (PathBuf::from(p), true),
            _ => (PathBuf::from(DEFAULT_CONFIG), false),
        },
    };
    let mut files = Vec::new();
    if main.exists() {
        files.push(main.clone());
    } else if required {
        return Err(PolicyError(format!("{}: no such file", main.display())));
    }
    if let Some(dir) = main.parent().map(|d| d.join("conf.d")) {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut extra: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            extra.sort();
            files.extend(extra);
        }
    }
    Ok(files)
}

/// A policy file larger than this is refused: policies are a few KiB of text, and every rank
/// reads them.
pub const MAX_POLICY_BYTES: u64 = 4 << 20;

/// Read one policy file: a regular file of at most [`MAX_POLICY_BYTES`] of UTF-8 text. A FIFO,
/// socket or device (in conf.d, or as `BERTH_CONFIG`) is refused before it can hang berth or
/// feed it without end; a byte that is not UTF-8 is reported at its line.
pub fn read_policy_file(path: &Path) -> Result<String, PolicyError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let fail = |what: String| PolicyError(format!("{}: {what}", path.display()));
    let kind = |t: std::fs::FileType| {
        if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        }
    };
    // Non-blocking: opening a FIFO must not wait for a writer (a socket cannot be opened at
    // all, so on failure its type is looked up by name).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match std::fs::metadata(path) {
            Ok(m) if !m.is_file() => {
                fail(format!("is {}, not a regular file", kind(m.file_type())))
            }
            _ => fail(format!("cannot read: {e}")),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(fail(format!(
            "is {}, not a regular file",
            kind(meta.file_type())
        )));
    }
    let too_big = || {
        fail(format!(
            "is larger than {} MiB, too large for a policy file",
            MAX_POLICY_BYTES >> 20
        ))
    };
    if meta.len() > MAX_POLICY_BYTES {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let bad = e.utf8_error().valid_up_to();
        let line_start = bytes[..bad]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line = bytes[..bad].iter().filter(|&&b| b == b'\n').count() + 1;
        PolicyError(format!(
            "{}:{line}: byte 0x{:02x} at column {} is not UTF-8 (policy files are UTF-8 text)",
            path.display(),
            bytes[bad],
            bad - line_start + 1
        ))
    })
}

impl Policy {
    /// Load the effective policy from the files `policy_files` names.
    pub fn load(explicit: Option<&Path>) -> Result<Policy, PolicyError> {
        let files = policy_files(explicit)?;
        let mut policy = Policy::default();
        for path in &files {
            let text = read_policy_file(path)?;
            policy.merge(path, &text)?;
        }
        policy.files = files;
        Ok(policy)
    }

    /// Merge one file's text over this policy.
    pub fn merge(&mut self, path: &Path, text: &str) -> Result<(), PolicyError> {
        let src = Source::new(path, text);
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| src.line(s.start)).unwrap_or(1);
            PolicyError(format!(
                "{}:{line}: {}",
                path.display(),
                e.message().replace('\n', " ")
            ))
        })?;
        if let Some(rt) = file.runtime {
            if let Some(mode) = rt.mode {
                self.mode = Some(
                    mode.get_ref()
                        .parse()
                        .map_err(|e: String| src.err(&mode, e))?,
                );
            }
            if let Some(l) = rt.linger {
                self.linger = Some(l);
            }
            if let Some(i) = rt.image_idle {
                self.image_idle = Some(i);
            }
            if let Some(m) = rt.image_cache_mib {
                if !(1..=65536).contains(m.get_ref()) {
                    return Err(src.err(
                        &m,
                        format!("image_cache_mib {} is not between 1 and 65536", m.get_ref()),
                    ));
                }
                self.image_cache_mib = Some(*m.get_ref());
            }
            if let Some(dir) = rt.cache_dir {
                if !dir.get_ref().starts_with('/') {
                    return Err(src.err(
                        &dir,
                        format!("cache_dir '{}' is not an absolute path", dir.get_ref()),
                    ));
                }
                self.cache_dir = Some(PathBuf::from(dir.get_ref()));
            }
        }
        // Targets of this file's mounts, with their line.
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut added = Vec::with_capacity(file.mount.len());
        for entry in &file.mount {
            let m = entry.get_ref();
            let source = m.source.get_ref().clone();
            let target = m
                .target
                .as_ref()
                .map(|t| t.get_ref().clone())
                .unwrap_or_else(|| source.clone());
            let at = m.target.as_ref().unwrap_or(&m.source);
            if !is_absolute_pattern(&source) {
                return Err(src.err(
                    &m.source,
                    format!("mount source '{source}' is not an absolute path"),
                ));
            }
            crate::options::check_target(Path::new(&target))
                .map_err(|why| src.err(at, format!("mount {why}")))?;
            if let Some(first) = seen.get(&target) {
                return Err(src.err(
                    at,
                    format!(
                        "duplicate mount target {target} (also at {}:{first})",
                        path.display()
                    ),
                ));
            }
            seen.insert(target.clone(), src.line(entry.span().start));
            let mut mount = SiteMount {
                source,
                target: target.clone(),
                readonly: false,
                recursive: true,
                slave: false,
                optional: m.optional,
                origin: src.at(entry),
            };
            for opt in &m.options {
                match opt.get_ref().as_str() {
                    "ro" => mount.readonly = true,
                    "rw" => mount.readonly = false,
                    "rbind" => mount.recursive = true,
                    "bind" => mount.recursive = false,
                    "rslave" | "slave" => mount.slave = true,
                    "rprivate" | "private" => mount.slave = false,
                    // Always so: device nodes only come in through [devices], setuid never works.
                    "nodev" | "nosuid" => {}
                    other => {
                        return Err(src.err(
                            opt,
                            format!("unknown mount option '{other}' (use ro, rw, rbind, bind, nodev, nosuid, rprivate, rslave)"),
                        ))
                    }
                }
            }
            added.push(mount);
        }
        // A later file's mount replaces an earlier one with the same target: one pass over
        // the earlier mounts (a retain per new mount was quadratic).
        if !added.is_empty() {
            self.mounts.retain(|old| !seen.contains_key(&old.target));
            self.mounts.extend(added);
        }
        if let Some(um) = file.user_mounts {
            if let Some(e) = um.enabled {
                self.user_mounts.enabled = e;
            }
            if let Some(list) = um.allowed_sources {
                self.user_mounts.allowed_sources = Some(src.rules(&list, true)?);
            }
            if let Some(list) = um.denied_sources {
                self.user_mounts.denied_sources = src.rules(&list, true)?;
            }
            if let Some(list) = um.denied_targets {
                self.user_mounts.denied_targets = src.rules(&list, true)?;
            }
        }
        if let Some(d) = file.devices {
            if let Some(list) = d.paths {
                self.device_paths = src.patterns(&list, true)?;
            }
            if let Some(list) = d.config {
                self.device_config = src.patterns(&list, true)?;
            }
            if let Some(list) = d.libraries {
                self.device_libraries = src.patterns(&list, false)?;
            }
        }
        if let Some(g) = file.gpu {
            if let Some(e) = g.enabled {
                self.gpu_enabled = e;
            }
            if let Some(list) = g.devices {
                self.gpu_devices = src.patterns(&list, true)?;
            }
            if let Some(list) = g.libraries {
                self.gpu_libraries = src.patterns(&list, false)?;
            }
        }
        if let Some(section) = file.mpi {
            let origin = src.at(&section);
            let m = section.into_inner();
            let version = m.version.get_ref().clone();
            if parse_version(&version).is_none() {
                return Err(src.err(
                    &m.version,
                    format!("mpi version '{version}' is not like 4.1.4"),
                ));
            }
            self.mpi = Some(Mpi {
                enabled: m.enabled.unwrap_or(true),
                family: m.family,
                version,
                compatibility: m.compatibility.unwrap_or(Compatibility::Major),
                on_mismatch: m.on_mismatch.unwrap_or(OnMismatch::Error),
                bind: src.patterns(&m.bind, true)?,
                libraries: src.patterns(&m.libraries, true)?,
                origin,
            });
        }
        if let Some(p) = file.pmix {
            if let Some(b) = p.server_dir {
                self.pmix_server_dir = b;
            }
            if let Some(dir) = p.munge_socket_dir {
                let rules = src.rules(std::slice::from_ref(&dir), true)?;
                self.munge_socket_dir = if dir.get_ref().is_empty() {
                    None
                } else {
                    rules.into_iter().next()
                };
            }
        }
        if let Some(e) = file.env {
            if let Some(list) = e.passthrough {
                for p in &list {
                    src.check_glob(p, p.get_ref())?;
                }
                self.env.passthrough = Some(list.into_iter().map(Spanned::into_inner).collect());
            }
            self.env.set.extend(e.set);
            if let Some(list) = e.unset {
                self.env.unset = list;
            }
            self.env.prepend.extend(e.prepend);
            self.env.append.extend(e.append);
        }
        Ok(())
    }

    /// The effective policy in words, for `berth policy check`.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let files: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        let _ = writeln!(
            out,
            "files:        {}",
            if files.is_empty() {
                "none (built-in defaults)".into()
            } else {
                files.join(", ")
            }
        );
        let _ = writeln!(
            out,
            "mode:         {}",
            self.mode
                .map_or("mount (default)".into(), |m| format!("{m:?}")
                    .to_lowercase())
        );
        let _ = writeln!(out, "linger:       {} s", self.linger.unwrap_or(0));
        let _ = writeln!(
            out,
            "image_idle:   {} s",
            self.image_idle
                .unwrap_or(crate::plan::DEFAULT_IMAGE_IDLE_SECS)
        );
        let _ = writeln!(
            out,
            "image_cache:  {} MiB",
            self.image_cache_mib
                .unwrap_or(crate::plan::DEFAULT_IMAGE_CACHE_MIB)
        );
        if let Some(d) = &self.cache_dir {
            let _ = writeln!(out, "cache_dir:    {}", d.display());
        }
        let _ = writeln!(out, "site mounts:");
        for m in &self.mounts {
            let _ = writeln!(
                out,
                "  {} <- {} ({}{}{}, nosuid, nodev{})  [{}]",
                m.target,
                m.source,
                if m.recursive { "rbind" } else { "bind" },
                if m.readonly { ", ro" } else { ", rw" },
                if m.slave { ", rslave" } else { "" },
                if m.optional { ", optional" } else { "" },
                m.origin
            );
        }
        let rules = |v: &[Rule]| {
            v.iter()
                .map(|r| format!("{} [{}]", r.path, r.origin))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let um = &self.user_mounts;
        let _ = writeln!(
            out,
            "user mounts:  {}",
            if um.enabled { "allowed" } else { "disabled" }
        );
        let _ = writeln!(
            out,
            "  allowed sources: {}",
            um.allowed_sources
                .as_ref()
                .map_or("any".into(), |v| rules(v))
        );
        let _ = writeln!(out, "  denied sources:  {}", rules(&um.denied_sources));
        let _ = writeln!(out, "  denied targets:  {}", rules(&um.denied_targets));
        let _ = writeln!(out, "devices:      {}", rules(&self.device_paths));
        let _ = writeln!(out, "  config:      {}", rules(&self.device_config));
        let _ = writeln!(out, "  libraries:   {}", rules(&self.device_libraries));
        let _ = writeln!(
            out,
            "gpu:          {} {}",
            if self.gpu_enabled {
                "when present:"
            } else {
                "disabled"
            },
            rules(&self.gpu_devices)
        );
        let _ = writeln!(out, "  libraries:   {}", rules(&self.gpu_libraries));
        match &self.mpi {
            Some(m) => {
                let _ = writeln!(
                    out,
                    "mpi:          {} host {} {} (compatibility {:?}, on mismatch {:?})  [{}]",
                    if m.enabled { "inject" } else { "disabled:" },
                    m.family,
                    m.version,
                    m.compatibility,
                    m.on_mismatch,
                    m.origin
                );
                let _ = writeln!(out, "  bind:        {}", rules(&m.bind));
                let _ = writeln!(out, "  libraries:   {}", rules(&m.libraries));
            }
            None => {
                let _ = writeln!(out, "mpi:          no injection (the image's own MPI)");
            }
        }
        let _ = writeln!(
            out,
            "pmix:         server dir {}; munge socket dir {}",
            if self.pmix_server_dir {
                "mounted"
            } else {
                "not mounted"
            },
            self.munge_socket_dir
                .as_ref()
                .map_or("none".into(), |r| r.path.clone())
        );
        let e = &self.env;
        let _ = writeln!(
            out,
            "env:          passthrough {}",
            e.passthrough.as_ref().map_or("all".into(), |p| p.join(" "))
        );
        for (k, v) in &e.set {
            let _ = writeln!(out, "  set     {k}={v}");
        }
        for k in &e.unset {
            let _ = writeln!(out, "  unset   {k}");
        }
        for (k, v) in &e.prepend {
            let _ = writeln!(out, "  prepend {k}={v}");
        }
        for (k, v) in &e.append {
            let _ = writeln!(out, "  append  {k}={v}");
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(files: &[(&str, &str)]) -> Result<Policy, PolicyError> {
        let mut p = Policy::default();
        for (name, text) in files {
            p.merge(Path::new(name), text)?;
        }
        Ok(p)
    }

    #[test]
    fn a_full_policy_parses() {
        let p = merged(&[(
            "berth.toml",
            r#"
[runtime]
mode = "extract"
linger = 30

[[mount]]
source = "/lustre"
options = ["ro", "rbind"]

[[mount]]
source = "/scratch/${USER}"
target = "/scratch"
optional = true

[user_mounts]
allowed_sources = ["${HOME}", "/scratch", "/tmp"]
denied_targets = ["/usr", "/etc"]

[mpi]
family = "openmpi"
version = "4.1.4"
compatibility = "full"
libraries = ["/usr/lib/x86_64-linux-gnu/libmpi.so.40*"]

[env]
passthrough = ["SLURM_*", "PMIX_*"]
set = { SITE = "x" }
prepend = { PATH = "/opt/site/bin" }
"#,
        )])
        .unwrap();
        assert_eq!(p.mode, Some(Mode::Extract));
        assert_eq!(p.mounts.len(), 2);
        assert!(p.mounts[0].readonly && p.mounts[0].target == "/lustre");
        assert_eq!(p.mounts[0].origin.0, "berth.toml:6");
        assert!(p.mounts[1].optional && p.mounts[1].target == "/scratch");
        assert_eq!(p.user_mounts.allowed_sources.as_ref().unwrap().len(), 3);
        let mpi = p.mpi.unwrap();
        assert_eq!(
            (mpi.family, mpi.compatibility, mpi.on_mismatch),
            (MpiFamily::Openmpi, Compatibility::Full, OnMismatch::Error)
        );
        assert_eq!(p.env.passthrough.unwrap(), vec!["SLURM_*", "PMIX_*"]);
    }

    #[test]
    fn later_files_override_and_mounts_replace_by_target() {
        let p = merged(&[
            ("a.toml", "[runtime]\nmode = \"mount\"\n[[mount]]\nsource = \"/apps\"\n[env]\nset = { A = \"1\", B = \"1\" }\n"),
            ("b.toml", "[runtime]\nmode = \"extract\"\n[[mount]]\nsource = \"/apps\"\noptions = [\"ro\"]\n[env]\nset = { B = \"2\" }\n"),
        ])
        .unwrap();
        assert_eq!(p.mode, Some(Mode::Extract));
        assert_eq!(p.mounts.len(), 1);
        assert!(p.mounts[0].readonly);
        assert_eq!(p.mounts[0].origin.0, "b.toml:3");
        assert_eq!(p.env.set.get("A").map(String::as_str), Some("1"));
        assert_eq!(p.env.set.get("B").map(String::as_str), Some("2"));
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            ("[runtime\nmode = 1\n", "bad.toml:1:"),
            ("[runtime]\nmdoe = \"mount\"\n", "bad.toml:2: unknown field `mdoe`"),
            ("\n[runtime]\nlinger = \"long\"\n", "bad.toml:3:"),
            ("[[mount]]\nsource = \"lustre\"\n", "bad.toml:2: mount source 'lustre' is not an absolute path"),
            ("[[mount]]\nsource = \"/a\"\ntarget = \"/x\"\n[[mount]]\nsource = \"/b\"\ntarget = \"/x\"\n", "bad.toml:6: duplicate mount target /x (also at bad.toml:1)"),
            ("[[mount]]\nsource = \"/a\"\ntarget = \"/proc\"\n", "bad.toml:3: mount target /proc is reserved"),
            ("[[mount]]\nsource = \"/a\"\noptions = [\"rx\"]\n", "bad.toml:3: unknown mount option 'rx'"),
            ("[user_mounts]\nallowed_sources = [\"home\"]\n", "bad.toml:2: 'home' is not an absolute path"),
            ("[mpi]\nfamily = \"lam\"\nversion = \"1\"\n", "bad.toml:2:"),
            ("[mpi]\nfamily = \"mpich\"\nversion = \"four\"\n", "bad.toml:3: mpi version 'four'"),
            ("[runtime]\nmode = \"copy\"\n", "bad.toml:2: unknown mode 'copy'"),
            ("[[mount]]\nsource = \"a\\nb\"\n", "bad.toml:2: mount source 'a\\nb' is not an absolute path"),
        ];
        for (text, want) in cases {
            let err = merged(&[("bad.toml", text)]).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn invalid_globs_name_file_and_line() {
        let cases = [
            ("[gpu]\ndevices = [\n  \"/dev/nvidiactl\",\n  \"/dev/nvidia[0-9*\",\n]\n", "bad.toml:4: invalid glob pattern '/dev/nvidia[0-9*'"),
            ("[devices]\npaths = [\"/dev/in***band:/dev/x\"]\n", "bad.toml:2: invalid glob pattern '/dev/in***band'"),
            ("[gpu]\nlibraries = [\"libcuda[.so\"]\n", "bad.toml:2: invalid glob pattern"),
            ("[mpi]\nfamily = \"mpich\"\nversion = \"4\"\nlibraries = [\"/usr/lib/**a/libmpi.so\"]\n", "bad.toml:4: invalid glob pattern"),
            ("\n[env]\npassthrough = [\"SLURM_*\", \"[PMIX\"]\n", "bad.toml:3: invalid glob pattern '[PMIX'"),
        ];
        for (text, want) in cases {
            let err = merged(&[("bad.toml", text)]).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        // Device rules map HOST:CONTAINER; only the host part is a pattern.
        assert!(merged(&[(
            "ok.toml",
            "[devices]\npaths = [\"/dev/nvidia[0-9]*:/dev/x\"]\n"
        )])
        .is_ok());
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-policy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        dir
    }

    #[test]
    fn non_utf8_is_refused_at_its_line() {
        let dir = scratch("utf8");
        let main = dir.join("berth.toml");
        std::fs::write(&main, b"[runtime]\nmode = \"mount\"\n# caf\xe9\n").unwrap();
        let err = Policy::load(Some(&main)).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "{}:3: byte 0xe9 at column 6 is not UTF-8",
                main.display()
            )),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fifos_sockets_devices_and_huge_files_are_refused() {
        let dir = scratch("kinds");
        let main = dir.join("berth.toml");
        std::fs::write(&main, "# site\n").unwrap();
        let conf = dir.join("conf.d");
        let fifo = conf.join("10-fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = Policy::load(Some(&main)).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "{}: is a FIFO, not a regular file",
                fifo.display()
            )),
            "{err}"
        );
        std::fs::remove_file(&fifo).unwrap();

        let sock = conf.join("20-sock.toml");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = Policy::load(Some(&main)).unwrap_err().to_string();
        assert!(
            err.contains("20-sock.toml: is a socket, not a regular file"),
            "{err}"
        );
        std::fs::remove_file(&sock).unwrap();

        std::os::unix::fs::symlink("/dev/zero", conf.join("30-zero.toml")).unwrap();
        let err = Policy::load(Some(&main)).unwrap_err().to_string();
        assert!(
            err.contains("30-zero.toml: is a device, not a regular file"),
            "{err}"
        );
        std::fs::remove_file(conf.join("30-zero.toml")).unwrap();

        std::fs::create_dir(conf.join("40-dir.toml")).unwrap();
        let err = Policy::load(Some(&main)).unwrap_err().to_string();
        assert!(
            err.contains("40-dir.toml: is a directory, not a regular file"),
            "{err}"
        );
        std::fs::remove_dir(conf.join("40-dir.toml")).unwrap();

        let huge = std::fs::File::create(conf.join("50-huge.toml")).unwrap();
        huge.set_len(MAX_POLICY_BYTES + 1).unwrap();
        let err = Policy::load(Some(&main)).unwrap_err().to_string();
        assert!(err.contains("50-huge.toml: is larger than 4 MiB"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn many_mounts_merge_in_order_with_later_files_replacing() {
        let many = |n: usize, opts: &str| -> String {
            (0..n)
                .map(|i| format!("[[mount]]\nsource = \"/site/{i}\"\n{opts}\n"))
                .collect()
        };
        let p = merged(&[
            ("a.toml", &many(2000, "")),
            (
                "b.toml",
                &format!(
                    "{}[[mount]]\nsource = \"/new\"\n",
                    many(10, "options = [\"ro\"]")
                ),
            ),
        ])
        .unwrap();
        assert_eq!(p.mounts.len(), 2001);
        // The earlier file's survivors keep their order, then the later file's mounts.
        assert_eq!(p.mounts[0].target, "/site/10");
        assert_eq!(p.mounts[1989].target, "/site/1999");
        assert_eq!(p.mounts[1990].target, "/site/0");
        assert!(p.mounts[1990].readonly);
        assert_eq!(p.mounts[1990].origin.0, "b.toml:1");
        assert_eq!(p.mounts[2000].target, "/new");
        assert_eq!(p.mounts[1999].origin.0, "b.toml:28");
        assert_eq!(p.mounts[1989].origin.0, "a.toml:5998");
    }

    #[test]
    fn versions_and_expansion() {
        assert_eq!(parse_version("4.1.4"), Some((4, 1, 4)));
        assert_eq!(parse_version("v5.0"), Some((5, 0, 0)));
        assert_eq!(parse_version("4.0.2rc1"), Some((4, 0, 2)));
        assert_eq!(parse_version("x"), None);
        assert_eq!(
            expand("/scratch/${USER}/${UID}", "al", Path::new("/h/al"), 7),
            "/scratch/al/7"
        );
        assert!(name_matches("SLURM_*", "SLURM_JOB_ID") && !name_matches("SLURM_*", "PMIX_X"));
    }
}
