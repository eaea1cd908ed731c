//! Registry images on the nodes: a job that names `docker://...` (or enroot's
//! `[USER@][REGISTRY#]IMAGE[:TAG]`) gets it imported with berth-image into the user's state
//! directory on each node, once per step, as the job's user with the job's credentials.

use berth_launcher::Error;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// How the site imports registry images: the importer and the registries it may reach over
/// plain http (Slurm: plugstack.conf's `berth_image=` and `insecure_registries=`).
#[derive(Debug, Clone, Copy)]
pub struct Importer<'a> {
    /// berth-image, by path or found on PATH.
    pub program: &'a str,
    pub insecure_registries: &'a [String],
}

impl Importer<'_> {
    /// A registry reference is imported with berth-image into the node's state directory, once
    /// per step on the node: the first task imports under a lock and records the result, the
    /// step's other tasks get it (the file, or the same error) without asking the registry
    /// again. Later steps find the file up to date (berth-image checks the manifest and
    /// rebuilds nothing).
    pub fn import(
        &self,
        reference: &str,
        state: &Path,
        env: &[(OsString, OsString)],
        job: u32,
        step: u32,
    ) -> Result<PathBuf, Error> {
        let uid = nix::unistd::getuid().as_raw();
        let dir = berth_launcher::private_state_subdir(state, "imported", uid)?;
        let digest: String = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            reference.hash(&mut h);
            format!("{:016x}", h.finish())
        };
        let out = dir.join(format!("{digest}.sqsh"));
        crate::step::once_per_step(&dir, &digest, job, step, || {
            self.run(reference, env, &out)
                .map(|()| out.display().to_string())
        })
        .map(PathBuf::from)
    }

    /// Run berth-image to import `reference` to `out`; its last line if it fails.
    fn run(&self, reference: &str, env: &[(OsString, OsString)], out: &Path) -> Result<(), Error> {
        use std::io::Read as _;
        let mut cmd = std::process::Command::new(self.program);
        cmd.args(["import", "--quiet", reference, "-o"]).arg(out);
        if self
            .insecure_registries
            .iter()
            .any(|h| registry_host(reference) == h)
        {
            cmd.arg("--insecure");
        }
        // The user's credentials and layer cache come from the job's environment.
        for (k, v) in env {
            let name = k.as_bytes();
            if name == b"HOME"
                || name.starts_with(b"BERTH_REGISTRY_")
                || name == b"BERTH_CREDENTIALS"
                || name == b"BERTH_LAYER_CACHE"
            {
                cmd.env(k, v);
            }
        }
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::Image(format!(
                    "cannot run {} to import {reference}: {e}",
                    self.program
                ))
            })?;
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let status = child.wait().map_err(|e| Error::Image(e.to_string()))?;
        if !status.success() {
            let why = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("failed")
                .trim_start_matches("berth-image: ");
            return Err(Error::Image(format!("cannot import {reference}: {why}")));
        }
        Ok(())
    }
}

/// The registry host of a reference (`docker://HOST[:PORT]/...` or `[USER@]HOST[:PORT]#...`),
/// without its port; empty for Docker Hub short names.
pub fn registry_host(reference: &str) -> &str {
    let rest = reference.strip_prefix("docker://").unwrap_or(reference);
    let rest = rest.split_once('@').map_or(rest, |(_, r)| r);
    let host = if reference.starts_with("docker://") {
        rest.split('/').next().unwrap_or("")
    } else {
        rest.split_once('#').map_or("", |(h, _)| h)
    };
    host.split(':').next().unwrap_or("")
}
