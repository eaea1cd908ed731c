//! Merging one policy file over the policy so far: each section checked (absolute paths,
//! globs that compile, known options) and every error named by `file:line`.

use super::schema::{
    DevicesSection, EnvSection, File, GpuSection, MountEntry, MpiSection, PmixSection,
    RuntimeSection, UserMountsSection,
};
use super::{parse_version, Compatibility, Mpi, OnMismatch, Origin, Policy, Rule, SiteMount};
use crate::error::PolicyError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

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

impl Policy {
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
            self.merge_runtime(&src, rt)?;
        }
        self.merge_mounts(&src, &file.mount)?;
        if let Some(um) = file.user_mounts {
            self.merge_user_mounts(&src, um)?;
        }
        if let Some(d) = file.devices {
            self.merge_devices(&src, d)?;
        }
        if let Some(g) = file.gpu {
            self.merge_gpu(&src, g)?;
        }
        if let Some(section) = file.mpi {
            self.merge_mpi(&src, section)?;
        }
        if let Some(p) = file.pmix {
            self.merge_pmix(&src, p)?;
        }
        if let Some(e) = file.env {
            self.merge_env(&src, e)?;
        }
        if let Some(i) = file.images {
            for dir in i.store.iter().chain(&i.site_store) {
                if !dir.get_ref().starts_with('/') {
                    return Err(src.err(
                        dir,
                        format!("image store '{}' is not an absolute path", dir.get_ref()),
                    ));
                }
            }
            if let Some(s) = i.store {
                self.image_store = Some(s.into_inner());
            }
            if let Some(s) = i.site_store {
                self.site_store = Some(PathBuf::from(s.into_inner()));
            }
            if let Some(stage) = i.stage {
                self.stage_images = match stage.get_ref().as_str() {
                    "node-local" => true,
                    "in-place" => false,
                    other => {
                        return Err(src.err(
                            &stage,
                            format!("images.stage '{other}': use \"node-local\" or \"in-place\""),
                        ))
                    }
                };
            }
        }
        Ok(())
    }

    /// `[runtime]`: each value given replaces the earlier one.
    fn merge_runtime(&mut self, src: &Source, rt: RuntimeSection) -> Result<(), PolicyError> {
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
        Ok(())
    }

    /// `[[mount]]`: checked, then added; a later file's mount replaces an earlier one with the
    /// same target.
    fn merge_mounts(
        &mut self,
        src: &Source,
        entries: &[Spanned<MountEntry>],
    ) -> Result<(), PolicyError> {
        // Targets of this file's mounts, with their line.
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut added = Vec::with_capacity(entries.len());
        for entry in entries {
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
                        src.path.display()
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
        Ok(())
    }

    fn merge_user_mounts(
        &mut self,
        src: &Source,
        um: UserMountsSection,
    ) -> Result<(), PolicyError> {
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
        Ok(())
    }

    fn merge_devices(&mut self, src: &Source, d: DevicesSection) -> Result<(), PolicyError> {
        if let Some(list) = d.paths {
            self.device_paths = src.patterns(&list, true)?;
        }
        if let Some(list) = d.config {
            self.device_config = src.patterns(&list, true)?;
        }
        if let Some(list) = d.libraries {
            self.device_libraries = src.patterns(&list, false)?;
        }
        Ok(())
    }

    fn merge_gpu(&mut self, src: &Source, g: GpuSection) -> Result<(), PolicyError> {
        if let Some(e) = g.enabled {
            self.gpu_enabled = e;
        }
        if let Some(list) = g.devices {
            self.gpu_devices = src.patterns(&list, true)?;
        }
        if let Some(list) = g.libraries {
            self.gpu_libraries = src.patterns(&list, false)?;
        }
        Ok(())
    }

    /// `[mpi]` replaces the earlier section as a whole.
    fn merge_mpi(&mut self, src: &Source, section: Spanned<MpiSection>) -> Result<(), PolicyError> {
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
        Ok(())
    }

    fn merge_pmix(&mut self, src: &Source, p: PmixSection) -> Result<(), PolicyError> {
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
        Ok(())
    }

    /// `[env]`: lists replace, tables merge key by key.
    fn merge_env(&mut self, src: &Source, e: EnvSection) -> Result<(), PolicyError> {
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
        Ok(())
    }
}
