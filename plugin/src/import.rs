//! Registry images: a job that names `docker://...` (or enroot's `[USER@][REGISTRY#]IMAGE[:TAG]`)
//! gets it imported with berth-image into the image store (shared across nodes), as the job's
//! user with the job's credentials: resolved and imported once on the submit side, then used
//! by digest on every node (once per step per node, asking no registry when the store has it).

use berth_launcher::{Error, Policy};
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

/// The variable that carries a job's resolved digest from the submit side (srun, sbatch) to its
/// steps and nodes: `DIGEST REFERENCE`.
pub const PIN_VAR: &str = "BERTH_IMAGE_PIN";

/// A registry image in the image store.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub path: PathBuf,
    /// The digest the reference resolved to.
    pub digest: String,
}

impl Importer<'_> {
    /// A registry reference is imported into the image store, once per step on the node: the
    /// first task asks berth-image and records the result, the step's other tasks get it (the
    /// file, or the same error) without asking again. With the policy's node-local staging,
    /// the file is the node's verified copy of the store's ([`berth_launcher::stage_image`]). The reference is the job's pinned
    /// digest when the submit side resolved it ([`PIN_VAR`] in the job's environment), so
    /// the nodes ask no registry when the store has the image.
    pub fn import(
        &self,
        reference: &str,
        state: &Path,
        env: &[(OsString, OsString)],
        job: u32,
        step: u32,
        policy: Option<&Policy>,
    ) -> Result<PathBuf, Error> {
        let uid = nix::unistd::getuid().as_raw();
        let dir = berth_launcher::private_state_subdir(state, "imported", uid)?;
        let pin = env
            .iter()
            .find(|(k, _)| k == PIN_VAR)
            .and_then(|(_, v)| v.to_str())
            .and_then(|v| v.split_once(' '))
            .filter(|(_, r)| *r == reference)
            .map(|(d, _)| pinned(reference, d));
        let wanted = pin.as_deref().unwrap_or(reference);
        let stem: String = {
            use sha2::Digest as _;
            let h = sha2::Sha256::digest(wanted.as_bytes());
            h.iter().take(8).map(|b| format!("{b:02x}")).collect()
        };
        let job_id = job.to_string();
        // `[images] stage = "node-local"`: the step uses the node's copy of the store's file.
        let staged = match policy.is_some_and(|p| p.stage_images) {
            true => Some(berth_launcher::private_state_subdir(state, "staged", uid)?),
            false => None,
        };
        crate::step::once_per_step(&dir, &stem, job, step, || {
            let stored = self.store(wanted, env, Some(&job_id), policy)?;
            let path = match &staged {
                Some(node_dir) => berth_launcher::stage_image(&stored.path, node_dir)?,
                None => stored.path,
            };
            Ok(path.display().to_string())
        })
        .map(PathBuf::from)
    }

    /// Resolve `reference` and import it into the image store (nothing is fetched when the
    /// store has it; with `job`, every step of the job gets the digest its first one resolved).
    pub fn store(
        &self,
        reference: &str,
        env: &[(OsString, OsString)],
        job: Option<&str>,
        policy: Option<&Policy>,
    ) -> Result<Stored, Error> {
        let mut args: Vec<OsString> = vec!["import".into(), "--json".into(), "--store".into()];
        // The site's policy says where the stores are (`[images]`); else berth-image's default.
        if let Some(p) = policy {
            if let Some(dir) = &p.image_store {
                args.extend(["--store-dir".into(), expand_user(dir).into()]);
            }
            if let Some(dir) = &p.site_store {
                args.extend(["--site-store".into(), dir.into()]);
            }
        }
        if let Some(j) = job {
            args.extend(["--job".into(), j.into()]);
        }
        args.push(reference.into());
        let out = self.run(reference, env, &args)?;
        let summary: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let field = |name: &str| summary.get(name)?.as_str().map(String::from);
        match (field("output"), field("digest")) {
            (Some(path), Some(digest)) => Ok(Stored {
                path: PathBuf::from(path),
                digest,
            }),
            _ => Err(Error::Image(format!(
                "cannot import {reference}: {} printed no image path; is it berth-image of this berth?",
                self.program
            ))),
        }
    }

    /// Run berth-image with `args`; its stdout, or its last line if it fails.
    fn run(
        &self,
        reference: &str,
        env: &[(OsString, OsString)],
        args: &[OsString],
    ) -> Result<String, Error> {
        let mut cmd = std::process::Command::new(self.program);
        cmd.arg("--quiet").args(args);
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
                || name == b"BERTH_STORE"
                || name == b"BERTH_SITE_STORE"
            {
                cmd.env(k, v);
            }
        }
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| {
                Error::Image(format!(
                    "cannot run {} to import {reference}: {e}",
                    self.program
                ))
            })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let why = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("failed")
                .trim_start_matches("berth-image: ");
            return Err(Error::Image(format!("cannot import {reference}: {why}")));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `${USER}` in a policy's store path: the calling user's name (the job's user).
fn expand_user(path: &str) -> String {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name);
    path.replace("${USER}", &name)
}

/// `reference` with its tag replaced by `digest`: the image a job pinned.
pub fn pinned(reference: &str, digest: &str) -> String {
    // Only the last path component carries a tag or digest (a registry's port and a user
    // name are before a '/' or '#').
    let cut = reference.rfind(['/', '#']).map_or(0, |i| i + 1);
    let last = &reference[cut..];
    let name = last.split(['@', ':']).next().unwrap_or(last);
    format!("{}{name}@{digest}", &reference[..cut])
}

/// The registry host of a reference (`docker://HOST[:PORT]/...` or `[USER@]HOST[:PORT]#...`),
/// without its port; empty for Docker Hub short names.
pub fn registry_host(reference: &str) -> &str {
    let rest = reference.strip_prefix("docker://").unwrap_or(reference);
    // A user name is before the host; an `@` after it starts a digest.
    let host = if reference.starts_with("docker://") {
        rest.split('/').next().unwrap_or("")
    } else {
        rest.split_once('#').map_or("", |(h, _)| h)
    };
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    host.split(':').next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_reference_names_the_digest_not_the_tag() {
        let d = "sha256:00ff";
        assert_eq!(
            pinned("docker://reg:5000/app:1", d),
            "docker://reg:5000/app@sha256:00ff"
        );
        assert_eq!(
            pinned("docker://reg:5000/app", d),
            "docker://reg:5000/app@sha256:00ff"
        );
        assert_eq!(
            pinned("docker://reg/app@sha256:aa", d),
            "docker://reg/app@sha256:00ff"
        );
        assert_eq!(
            pinned("alice@reg#team/app:2", d),
            "alice@reg#team/app@sha256:00ff"
        );
        assert_eq!(pinned("ubuntu:22.04", d), "ubuntu@sha256:00ff");
    }

    #[test]
    fn the_registry_host_of_a_pinned_reference() {
        assert_eq!(
            registry_host("docker://10.0.0.1:5000/app@sha256:00ff"),
            "10.0.0.1"
        );
        assert_eq!(registry_host("docker://bob@reg:5000/app:1"), "reg");
        assert_eq!(registry_host("bob@reg#team/app@sha256:00"), "reg");
        assert_eq!(registry_host("team/app@sha256:00"), "");
    }
}
