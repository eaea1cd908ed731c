//! The effective policy in words, for `berth policy check`.

use super::{Policy, Rule};
use std::fmt::Write as _;

impl Policy {
    /// The effective policy in words, for `berth policy check`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        self.describe_runtime(&mut out);
        self.describe_rules(&mut out);
        self.describe_mpi_and_env(&mut out);
        out
    }

    /// The files, `[runtime]` and the site mounts.
    fn describe_runtime(&self, out: &mut String) {
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
        if self.stage_images {
            let _ = writeln!(
                out,
                "image stage:  node-local (store images copied to each node once, verified)"
            );
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
    }

    /// What user mounts, devices and GPUs may come in.
    fn describe_rules(&self, out: &mut String) {
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
    }

    /// `[mpi]`, `[pmix]` and `[env]`.
    fn describe_mpi_and_env(&self, out: &mut String) {
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
    }
}

/// Rules as `path [origin]`, separated by commas.
fn rules(v: &[Rule]) -> String {
    v.iter()
        .map(|r| format!("{} [{}]", r.path, r.origin))
        .collect::<Vec<_>>()
        .join(", ")
}
