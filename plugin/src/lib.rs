//! The scheduler plugin core both glues share: what the user asked for ([`JobRequest`], the
//! pyxis-compatible vocabulary) turned into the launcher's [`RunOptions`], one container per
//! node per step ([`instance_key`]), named containers ([`decide_named`]), registry images
//! imported on the nodes ([`Importer`]) and what a step's tasks decide once per node
//! ([`once_per_step`]). The Slurm and OpenLava glue only translate their scheduler's options,
//! environment and ids into these.

mod import;
mod step;

pub use import::{pinned, registry_host, Importer, Stored, PIN_VAR};
pub use step::{once_per_step, record_image, saved_image};

use berth_launcher::{Error, Join, MountSpec, Namespaces, Result, RunOptions};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A job's container request, as the user gave it (flags or environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobRequest {
    /// `--container-image` / Slurm's `--container` (SLURM_CONTAINER).
    pub image: Option<String>,
    /// `--container-mounts=SRC:DST[:FLAGS],...`
    pub mounts: Option<String>,
    pub workdir: Option<String>,
    /// `--container-name`: the instance is shared by every step of the job that names it.
    pub name: Option<String>,
    /// `--container-name=NAME:FLAG`: whether the named container may or must exist or run.
    pub name_flag: NameFlag,
    /// `--container-env=NAME,...`: these host variables win over the image's.
    pub env_names: Option<String>,
    pub writable: bool,
    pub remap_root: bool,
    /// `--no-container-mount-home` turns it off.
    pub mount_home: bool,
    pub entrypoint: bool,
    /// `--container-entrypoint-log`: the entrypoint's own output reaches the task's
    /// stdout/stderr (without it, it is discarded, as pyxis keeps enroot's start log).
    pub entrypoint_log: bool,
    /// `--container-unshare=net,ipc,uts`: namespaces of the container's own (one set per node,
    /// shared by the step's tasks).
    pub unshare: Option<String>,
}

impl JobRequest {
    pub fn wants_container(&self) -> bool {
        self.image.as_deref().is_some_and(|i| !i.is_empty())
    }

    /// The launcher options for a task of this job. `argv` is the task's command (the
    /// scheduler execs it; the launcher only checks and resolves around it). Arguments and
    /// variables are bytes, as the OS gives them.
    pub fn run_options(
        &self,
        key: &str,
        argv: Vec<OsString>,
        env: &[(OsString, OsString)],
        cwd: &Path,
    ) -> Result<RunOptions> {
        let Some(image) = self.image.as_deref().filter(|i| !i.is_empty()) else {
            return usage("no container image given");
        };
        let mut mounts = Vec::new();
        for spec in self
            .mounts
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
        {
            mounts.push(MountSpec::parse(pyxis_mount(spec), cwd)?);
        }
        let mut host_env = Vec::new();
        for name in self
            .env_names
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
        {
            if let Some((k, v)) = env.iter().find(|(k, _)| k == name) {
                host_env.push((k.clone(), v.clone()));
            }
        }
        Ok(RunOptions {
            mounts,
            workdir: self.workdir.as_ref().map(PathBuf::from),
            env: host_env,
            writable: self.writable,
            entrypoint: self.entrypoint,
            remap_root: self.remap_root,
            mount_home: self.mount_home,
            join: Join::Key(key.to_string()),
            // A named container keeps its changes on disk, under its instance key.
            persist: self
                .name
                .as_ref()
                .filter(|n| !n.is_empty())
                .map(|_| key.to_string()),
            unshare: match &self.unshare {
                Some(list) => Namespaces::parse(list)
                    .map_err(|e| Error::Usage(format!("--container-unshare={list}: {e}")))?,
                None => Namespaces::default(),
            },
            ..RunOptions::new(image, argv)
        })
    }
}

fn usage<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Usage(msg.into()))
}

/// pyxis's `--container-name=NAME:FLAG`: how a step treats the named container of its job on
/// a node, which exists once a step created it, and runs while a step of it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NameFlag {
    /// Attach to it if it runs, else start it again from its saved layer, else create it.
    #[default]
    Auto,
    /// It must not exist: create it.
    Create,
    /// It must run: attach to it.
    Exec,
    /// Never attach: start a container of this step's own over its saved layer (or create it).
    NoExec,
}

impl NameFlag {
    pub fn parse(flag: &str) -> Option<NameFlag> {
        Some(match flag {
            "" | "auto" => NameFlag::Auto,
            "create" => NameFlag::Create,
            "exec" => NameFlag::Exec,
            "no_exec" => NameFlag::NoExec,
            _ => return None,
        })
    }
}

/// What a step does with its named container on a node: decided once per step per node (its
/// tasks must agree), from what the node has: `saved` is the image the container was created
/// from when it exists, `running` whether a step of it still runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// Join the running container, whatever this step's options (pyxis ignores them).
    Attach(PathBuf),
    /// Start a container from the saved layer and the image it was created from.
    Reuse(PathBuf),
    /// Create it from this step's image.
    Create,
}

/// pyxis's rules for `--container-name=NAME:FLAG` (its `slurm_spank_user_init`). Errors are
/// one line naming the name and the node.
pub fn decide_named(
    name: &str,
    flag: NameFlag,
    node: &str,
    saved: Option<PathBuf>,
    running: bool,
    has_image: bool,
) -> Result<Named> {
    let running = running && saved.is_some() && flag != NameFlag::NoExec;
    match (flag, saved) {
        (NameFlag::Create, Some(_)) => usage(format!(
            "--container-name={name}:create: a container named '{name}' already exists on {node} in this job; use another name, or {name}:auto to reuse it"
        )),
        (NameFlag::Exec, _) if !running => usage(format!(
            "--container-name={name}:exec: no step of this job runs in a container named '{name}' on {node}"
        )),
        (_, Some(image)) if running => Ok(Named::Attach(image)),
        (_, Some(image)) => Ok(Named::Reuse(image)),
        (_, None) if has_image => Ok(Named::Create),
        (_, None) => usage(format!(
            "--container-name={name}: no container named '{name}' exists on {node} in this job, and no --container-image was given to create it"
        )),
    }
}

/// Whether an image names a registry image (`docker://...`, enroot's `[USER@][REGISTRY#]IMAGE[:TAG]`)
/// rather than a squashfs file or directory: anything not a path that exists here.
pub fn is_reference(image: &str) -> bool {
    image.contains("://")
        || (!image.starts_with('/') && !image.starts_with('.') && !Path::new(image).exists())
}

/// A pyxis mount item in berth's `--mount` form: pyxis joins flags with `+` (its items are
/// comma-separated), and a relative DST is inside the container's root, as enroot has it.
fn pyxis_mount(spec: &str) -> String {
    let mut parts: Vec<String> = spec.split(':').map(String::from).collect();
    if let Some(dst) = parts.get_mut(1) {
        if !dst.is_empty() && !dst.starts_with('/') {
            dst.insert(0, '/');
        }
    }
    if let Some(flags) = parts.get_mut(2) {
        *flags = flags.replace('+', ",");
    }
    parts.join(":")
}

/// A part of an instance key from a user or host name: safe in a file name, at most 40 chars.
pub fn key_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect()
}

/// The name part of a named container's key: the name itself when it is at most 39 of
/// [`key_part`]'s characters, else (exactly 40 characters) its first 15 characters made safe,
/// `-` and 24 hex digits of its SHA-256. The two forms differ in length, so two different
/// names never share a key (a container, its writable layer).
pub fn name_part(name: &str) -> String {
    if name.len() <= 39 && key_part(name) == name {
        return name.to_string();
    }
    use sha2::{Digest, Sha256};
    let hash: String = Sha256::digest(name.as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{:_<15}-{hash}",
        key_part(name).chars().take(15).collect::<String>()
    )
}

/// The per-node instance a task joins: one per step, or one per job for a named container.
/// `scheduler` names the scheduler whose ids these are (`slurm`), so that keys of two
/// schedulers never meet.
pub fn instance_key(
    scheduler: &str,
    job: u32,
    step: u32,
    node: &str,
    name: Option<&str>,
) -> String {
    match name {
        Some(n) if !n.is_empty() => {
            format!("{scheduler}-{job}-{}-{}", name_part(n), key_part(node))
        }
        _ => format!("{scheduler}-{job}.{step}-{}", key_part(node)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_to_options() {
        let r = JobRequest {
            image: Some("/img.sqsh".into()),
            mounts: Some("/data:/data:ro,/etc/hosts:/x".into()),
            env_names: Some("A,MISSING".into()),
            mount_home: true,
            ..Default::default()
        };
        let env: Vec<(OsString, OsString)> = vec![("A".into(), "1".into())];
        let o = r
            .run_options("k", vec!["true".into()], &env, Path::new("/"))
            .unwrap();
        assert_eq!(o.mounts.len(), 2);
        assert!(o.mounts[0].readonly && !o.mounts[1].readonly);
        assert_eq!(o.env, env);
        assert_eq!(o.join, Join::Key("k".into()));
        let bad = JobRequest {
            image: Some("/i".into()),
            mounts: Some("rel:/x:zz".into()),
            ..Default::default()
        };
        assert!(bad.run_options("k", vec![], &[], Path::new("/")).is_err());
        assert!(!JobRequest::default().wants_container());
    }

    #[test]
    fn named_container_flags_as_pyxis() {
        use NameFlag::*;
        let img = || Some(PathBuf::from("/i.sqsh"));
        let d = |flag, saved, running, has_image| {
            decide_named("env", flag, "n1", saved, running, has_image)
        };
        for flag in [Auto, Create, NoExec] {
            assert_eq!(d(flag, None, false, true).unwrap(), Named::Create);
            let e = d(flag, None, false, false).unwrap_err().to_string();
            assert!(
                e.contains("no container named 'env'") && e.contains("n1"),
                "{e}"
            );
        }
        assert_eq!(
            d(Auto, img(), false, false).unwrap(),
            Named::Reuse(img().unwrap())
        );
        assert_eq!(
            d(Auto, img(), true, true).unwrap(),
            Named::Attach(img().unwrap())
        );
        assert_eq!(
            d(Exec, img(), true, false).unwrap(),
            Named::Attach(img().unwrap())
        );
        assert_eq!(
            d(NoExec, img(), true, false).unwrap(),
            Named::Reuse(img().unwrap())
        );
        assert!(d(Create, img(), false, true).is_err());
        assert!(d(Create, img(), true, true).is_err());
        assert!(d(Exec, img(), false, true).is_err());
        assert!(d(Exec, None, false, true).is_err());
        assert_eq!(NameFlag::parse("no_exec"), Some(NoExec));
        assert_eq!(NameFlag::parse("x"), None);
    }

    #[test]
    fn references_and_paths() {
        assert!(is_reference("docker://registry.local/app:1"));
        assert!(is_reference("alice@registry.local#team/app:1"));
        assert!(is_reference("ubuntu:22.04"));
        assert!(!is_reference("/images/app.sqsh"));
        assert!(!is_reference("./app.sqsh"));
    }

    #[test]
    fn keys_per_step_or_per_name() {
        assert_eq!(instance_key("slurm", 7, 0, "n1", None), "slurm-7.0-n1");
        assert_eq!(
            instance_key("slurm", 7, 1, "n1", Some("my env")),
            format!("slurm-7-{}-n1", name_part("my env"))
        );
        assert_eq!(
            instance_key("slurm", 7, 1, "n1", Some("env")),
            "slurm-7-env-n1"
        );
        assert_eq!(pyxis_mount("/a:/b:ro+private"), "/a:/b:ro,private");
        assert_eq!(pyxis_mount("/a:b"), "/a:/b");
        assert_eq!(
            pyxis_mount("tmpfs:t:size=1G+mode=1777"),
            "tmpfs:/t:size=1G,mode=1777"
        );
        assert_eq!(pyxis_mount("umount:/home/u"), "umount:/home/u");
    }

    #[test]
    fn different_names_never_share_a_key() {
        let long = "n".repeat(39);
        let names = [
            "x/y".to_string(),
            "x_y".to_string(),
            "my env".to_string(),
            "my_env".to_string(),
            long.clone(),
            format!("{long}n"),
            format!("{long}nn"),
            "a".repeat(200),
            "a".repeat(201),
        ];
        let keys: std::collections::HashSet<String> = names
            .iter()
            .map(|n| instance_key("slurm", 7, 0, "n1", Some(n)))
            .collect();
        assert_eq!(keys.len(), names.len(), "{keys:?}");
        for k in &keys {
            berth_launcher::check_join_key(k).unwrap();
        }
        assert_eq!(name_part("x_y"), "x_y");
        assert_eq!(name_part("x/y").len(), 40);
    }
}
