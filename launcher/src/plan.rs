//! The plan: everything `berth run` will do, computed as data before any namespace exists.
//! `--dry-run` prints it; unit tests check it without privileges; `container::build` performs it.

use crate::error::{usage, Result};
use crate::host::HostUser;
use crate::image::{Image, ImageKind};
use crate::image_config::ImageConfig;
use crate::options::{Join, Mode, RunOptions};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where the container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Rootfs {
    /// squashfuse_ll serves the squashfs inside the namespace.
    Fuse,
    /// The node-local extract cache holds an unpacked copy (made on first use).
    Extract,
    /// A directory rootfs, used in place.
    Directory,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Bind a host path (file or directory) onto the target.
    Bind {
        source: PathBuf,
        recursive: bool,
        readonly: bool,
    },
    /// A fresh tmpfs.
    Tmpfs,
    /// A symlink created in the container's /dev.
    Symlink { to: PathBuf },
    /// Add a line to an image file (/etc/passwd, /etc/group) unless an entry with the same name
    /// already exists.
    AddEntry { line: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Step {
    pub target: PathBuf,
    pub action: Action,
    /// Why this step is there: "default", "home", "cwd", "--mount"...
    pub origin: &'static str,
}

/// The container: what is shared by every rank that joins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub image: Image,
    pub rootfs: Rootfs,
    pub writable: bool,
    pub remap_root: bool,
    pub user: HostUser,
    pub steps: Vec<Step>,
    pub state_dir: PathBuf,
    /// The host working directory is visible at the same path inside.
    pub cwd_visible: bool,
    pub join_key: Option<String>,
    /// Seconds the keeper stays after its last rank (see `RunOptions::linger_secs`).
    pub linger_secs: u64,
}

/// The process started in the container, resolved once the image config is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// Host device nodes every container gets in its own small /dev.
const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Top-level host directories that are never bound as the working directory: binding them
/// would hide the image's own system files.
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin", "sys",
    "usr", "var",
];

fn bind(source: &Path, target: &Path, origin: &'static str) -> Step {
    Step {
        target: target.to_path_buf(),
        action: Action::Bind {
            source: source.to_path_buf(),
            recursive: true,
            readonly: false,
        },
        origin,
    }
}

impl Plan {
    pub fn build(
        opts: &RunOptions,
        image: Image,
        user: HostUser,
        cwd: &Path,
        state_dir: PathBuf,
        env: &[(String, String)],
    ) -> Result<Plan> {
        let rootfs = match (&image.kind, opts.mode) {
            (ImageKind::Directory, _) => Rootfs::Directory,
            (ImageKind::Squashfs { .. }, Mode::Mount) => Rootfs::Fuse,
            (ImageKind::Squashfs { .. }, Mode::Extract) => Rootfs::Extract,
        };
        let exists = |p: &Path| p.exists();
        let mut steps = vec![
            bind(Path::new("/proc"), Path::new("/proc"), "default"),
            Step {
                target: "/sys".into(),
                action: Action::Bind {
                    source: "/sys".into(),
                    recursive: true,
                    readonly: true,
                },
                origin: "default",
            },
            Step {
                target: "/dev".into(),
                action: Action::Tmpfs,
                origin: "default",
            },
        ];
        for node in DEV_NODES {
            let path = Path::new("/dev").join(node);
            if exists(&path) {
                steps.push(bind(&path, &path, "default"));
            }
        }
        for dir in ["/dev/pts", "/dev/shm"] {
            if exists(Path::new(dir)) {
                steps.push(bind(Path::new(dir), Path::new(dir), "default"));
            }
        }
        for (link, to) in [
            ("/dev/ptmx", "pts/ptmx"),
            ("/dev/fd", "/proc/self/fd"),
            ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/dev/stderr", "/proc/self/fd/2"),
        ] {
            steps.push(Step {
                target: link.into(),
                action: Action::Symlink { to: to.into() },
                origin: "default",
            });
        }
        steps.push(bind(Path::new("/tmp"), Path::new("/tmp"), "default"));
        if opts.mount_home && user.home != Path::new("/") && exists(&user.home) {
            steps.push(bind(&user.home, &user.home, "home"));
        }
        let covered = |p: &Path| {
            steps.iter().any(|s| {
                matches!(&s.action, Action::Bind { source, recursive: true, .. }
                if source == &s.target && p.starts_with(&s.target))
            })
        };
        let top_is_system = cwd
            .components()
            .nth(1)
            .is_some_and(|c| SYSTEM_DIRS.contains(&c.as_os_str().to_string_lossy().as_ref()));
        let cwd_visible = if covered(cwd) {
            true
        } else if cwd != Path::new("/") && !top_is_system {
            steps.push(bind(cwd, cwd, "cwd"));
            true
        } else {
            false
        };
        for file in ["/etc/hosts", "/etc/resolv.conf"] {
            if exists(Path::new(file)) {
                steps.push(bind(Path::new(file), Path::new(file), "default"));
            }
        }
        if !opts.remap_root {
            let passwd = format!(
                "{}:x:{}:{}:{}:{}:{}",
                user.name,
                user.uid,
                user.gid,
                user.gecos,
                user.home.display(),
                user.shell
            );
            let group = format!("{}:x:{}:", user.primary_group_name(), user.gid);
            steps.push(Step {
                target: "/etc/passwd".into(),
                action: Action::AddEntry { line: passwd },
                origin: "user",
            });
            steps.push(Step {
                target: "/etc/group".into(),
                action: Action::AddEntry { line: group },
                origin: "user",
            });
        }
        for m in &opts.mounts {
            if !exists(&m.source) {
                return usage(format!(
                    "mount source {} does not exist (check the path in --mount {}:{})",
                    m.source.display(),
                    m.source.display(),
                    m.target.display()
                ));
            }
            steps.push(Step {
                target: m.target.clone(),
                action: Action::Bind {
                    source: m.source.clone(),
                    recursive: m.recursive,
                    readonly: m.readonly,
                },
                origin: "--mount",
            });
        }
        let mut plan = Plan {
            image,
            rootfs,
            writable: opts.writable,
            remap_root: opts.remap_root,
            user,
            steps,
            state_dir,
            cwd_visible,
            join_key: None,
            linger_secs: opts.linger_secs,
        };
        let fingerprint = plan.fingerprint();
        plan.join_key = match &opts.join {
            Join::No => None,
            Join::Key(key) => Some(key.clone()),
            Join::Auto => auto_join_key(env).map(|k| format!("{k}-{}", &fingerprint[..12])),
        };
        // A lingering container is found again by what it is. Never a writable one: its
        // changes would leak into the next, unrelated run.
        if plan.join_key.is_none()
            && plan.linger_secs > 0
            && !plan.writable
            && opts.join != Join::No
        {
            plan.join_key = Some(format!("node-{}", &fingerprint[..16]));
        }
        Ok(plan)
    }

    /// A digest of what makes two containers interchangeable: ranks may only share a container
    /// built from the same image with the same mounts.
    pub fn fingerprint(&self) -> String {
        let text = format!(
            "{:?}|{:?}|{}|{}|{:?}|{}",
            self.image.path, self.rootfs, self.writable, self.remap_root, self.steps, self.user.uid
        );
        Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The uid and gid the process has inside.
    pub fn inner_ids(&self) -> (u32, u32) {
        if self.remap_root {
            (0, 0)
        } else {
            (self.user.uid, self.user.gid)
        }
    }

    /// Resolve argv, environment and working directory from the options, the image config and
    /// the host environment. Precedence for variables: host < image `Env` < `--env`.
    pub fn process(
        &self,
        opts: &RunOptions,
        config: &ImageConfig,
        host_env: &[(String, String)],
        cwd: &Path,
    ) -> Result<Process> {
        let c = &config.config;
        let mut argv: Vec<String> = match (&c.entrypoint, opts.entrypoint) {
            (Some(ep), true) if !ep.is_empty() => ep.clone(),
            _ => Vec::new(),
        };
        if !opts.argv.is_empty() {
            argv.extend(opts.argv.iter().cloned());
        } else if let Some(cmd) = &c.cmd {
            argv.extend(cmd.iter().cloned());
        }
        if argv.is_empty() {
            return usage(
                "no command given and the image has no default command (give one after the image)",
            );
        }
        let mut env: Vec<(String, String)> = host_env.to_vec();
        let mut set = |k: &str, v: &str| {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        };
        for kv in &c.env {
            if let Some((k, v)) = kv.split_once('=') {
                set(k, v);
            }
        }
        for (k, v) in &opts.env {
            set(k, v);
        }
        let workdir = match (&opts.workdir, self.cwd_visible, &c.working_dir) {
            (Some(w), _, _) if !w.is_absolute() => {
                return usage(format!("--workdir {} is not an absolute path", w.display()))
            }
            (Some(w), _, _) => w.clone(),
            (None, true, _) => cwd.to_path_buf(),
            (None, false, Some(w)) if !w.is_empty() => PathBuf::from(w),
            _ => PathBuf::from("/"),
        };
        set("PWD", &workdir.to_string_lossy());
        let (uid, gid) = self.inner_ids();
        if self.remap_root {
            set("HOME", "/root");
            set("USER", "root");
            set("LOGNAME", "root");
        }
        Ok(Process {
            argv,
            env,
            workdir,
            uid,
            gid,
        })
    }

    /// The plan in words, for `--dry-run`.
    pub fn describe(&self, process: Option<&Process>) -> String {
        let mut out = String::new();
        let kind = match self.rootfs {
            Rootfs::Fuse => "squashfs, mount mode: squashfuse_ll inside the namespace",
            Rootfs::Extract => "squashfs, extract mode: node-local cache",
            Rootfs::Directory => "directory rootfs",
        };
        let _ = writeln!(out, "image:    {} ({kind})", self.image.path.display());
        let _ = writeln!(
            out,
            "root:     overlay on the image, {} (changes discarded at exit)",
            if self.writable {
                "writable"
            } else {
                "read-only"
            }
        );
        let (uid, gid) = self.inner_ids();
        let groups: Vec<String> = self
            .user
            .groups
            .iter()
            .map(|(g, n)| format!("{g}({n})"))
            .collect();
        let _ = writeln!(
            out,
            "identity: uid {uid} gid {gid} inside = {}({}) gid {} on the host; supplementary groups still grant access (unnamed inside): {}",
            self.user.name,
            self.user.uid,
            self.user.gid,
            if groups.is_empty() { "none".to_string() } else { groups.join(" ") }
        );
        let _ = writeln!(out, "state:    {}", self.state_dir.display());
        let _ = writeln!(
            out,
            "join:     {}",
            self.join_key
                .as_deref()
                .map_or("no (a container of its own)".to_string(), |k| format!(
                    "key {k}"
                ))
        );
        if self.linger_secs > 0 {
            let _ = writeln!(
                out,
                "linger:   {} s after the last process",
                self.linger_secs
            );
        }
        let _ = writeln!(out, "mounts (in order):");
        for s in &self.steps {
            let what = match &s.action {
                Action::Bind {
                    source,
                    recursive,
                    readonly,
                } => format!(
                    "<- {} ({}{}, nosuid)",
                    source.display(),
                    if *recursive { "rbind" } else { "bind" },
                    if *readonly { ", ro" } else { "" }
                ),
                Action::Tmpfs => "tmpfs (nosuid)".to_string(),
                Action::Symlink { to } => format!("symlink -> {}", to.display()),
                Action::AddEntry { line } => format!("add entry '{line}'"),
            };
            let _ = writeln!(out, "  {:<20} {what}  [{}]", s.target.display(), s.origin);
        }
        if let Some(p) = process {
            let _ = writeln!(out, "process:");
            let _ = writeln!(out, "  argv:    {:?}", p.argv);
            let _ = writeln!(out, "  workdir: {}", p.workdir.display());
            let _ = writeln!(
                out,
                "  uid/gid: {}/{} (no_new_privs set, all mounts nosuid)",
                p.uid, p.gid
            );
            let _ = writeln!(out, "  env:");
            for (k, v) in &p.env {
                let _ = writeln!(out, "    {k}={v}");
            }
        }
        out
    }
}

/// A join key from the environment of a parallel launcher, so that the ranks one launcher
/// starts on a node share one container without a flag.
pub fn auto_join_key(env: &[(String, String)]) -> Option<String> {
    let get = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.as_str());
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect()
    };
    let many = |k: &str| {
        get(k)
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|n| n > 1)
    };
    if many("OMPI_COMM_WORLD_LOCAL_SIZE") {
        let job = get("PMIX_NAMESPACE").or(get("OMPI_MCA_ess_base_jobid"))?;
        return Some(format!("ompi-{}", clean(job)));
    }
    if let (Some(job), Some(step)) = (get("SLURM_JOB_ID"), get("SLURM_STEP_ID")) {
        if many("SLURM_STEP_NUM_TASKS") {
            return Some(format!("slurm-{}.{}", clean(job), clean(step)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::MountSpec;

    fn user() -> HostUser {
        HostUser {
            uid: 1000,
            gid: 1000,
            name: "alice".into(),
            home: "/tmp".into(),
            shell: "/bin/bash".into(),
            gecos: "".into(),
            groups: vec![(1001, "lab".into())],
        }
    }

    fn opts() -> RunOptions {
        RunOptions {
            image: "/img.sqsh".into(),
            argv: vec!["true".into()],
            mode: Mode::Mount,
            mounts: vec![],
            workdir: None,
            env: vec![],
            writable: false,
            entrypoint: true,
            remap_root: false,
            mount_home: true,
            join: Join::No,
            linger_secs: 0,
        }
    }

    fn image() -> Image {
        Image {
            path: "/img.sqsh".into(),
            kind: ImageKind::Squashfs { bytes_used: 4096 },
        }
    }

    fn plan(o: &RunOptions, cwd: &str) -> Plan {
        Plan::build(
            o,
            image(),
            user(),
            Path::new(cwd),
            "/tmp/berth-1000".into(),
            &[],
        )
        .unwrap()
    }

    #[test]
    fn default_plan_has_system_mounts_in_order() {
        let p = plan(&opts(), "/");
        let targets: Vec<_> = p
            .steps
            .iter()
            .map(|s| s.target.to_string_lossy().into_owned())
            .collect();
        let pos = |t: &str| {
            targets
                .iter()
                .position(|x| x == t)
                .unwrap_or_else(|| panic!("{t} missing"))
        };
        assert!(
            pos("/proc") < pos("/dev")
                && pos("/dev") < pos("/dev/null")
                && pos("/dev/null") < pos("/tmp")
        );
        assert!(pos("/etc/passwd") > pos("/tmp"));
        assert_eq!(p.rootfs, Rootfs::Fuse);
        assert!(!p.cwd_visible, "cwd / is the image's own root");
        let passwd = p
            .steps
            .iter()
            .find(|s| s.target == Path::new("/etc/passwd"))
            .unwrap();
        assert_eq!(
            passwd.action,
            Action::AddEntry {
                line: "alice:x:1000:1000::/tmp:/bin/bash".into()
            }
        );
    }

    #[test]
    fn cwd_is_bound_unless_covered_or_system() {
        let p = plan(&opts(), "/tmp/work");
        assert!(
            p.cwd_visible && !p.steps.iter().any(|s| s.origin == "cwd"),
            "covered by /tmp"
        );
        let p = plan(&opts(), "/etc");
        assert!(!p.cwd_visible && !p.steps.iter().any(|s| s.origin == "cwd"));
        let p = plan(&opts(), "/srv");
        assert!(p.cwd_visible);
        assert!(p
            .steps
            .iter()
            .any(|s| s.origin == "cwd" && s.target == Path::new("/srv")));
    }

    #[test]
    fn user_mounts_come_last_and_missing_sources_are_refused() {
        let mut o = opts();
        o.mounts
            .push(MountSpec::parse("/tmp:/data:ro", Path::new("/")).unwrap());
        let p = plan(&o, "/");
        let last = p.steps.last().unwrap();
        assert_eq!(last.origin, "--mount");
        assert_eq!(
            last.action,
            Action::Bind {
                source: "/tmp".into(),
                recursive: true,
                readonly: true
            }
        );
        o.mounts
            .push(MountSpec::parse("/does/not/exist:/x", Path::new("/")).unwrap());
        let err = Plan::build(&o, image(), user(), Path::new("/"), "/s".into(), &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("mount source /does/not/exist does not exist"),
            "{err}"
        );
    }

    #[test]
    fn process_precedence_and_entrypoint() {
        let p = plan(&opts(), "/tmp/w");
        let mut cfg = ImageConfig::default();
        cfg.config.env = vec!["PATH=/img/bin".into(), "A=image".into()];
        cfg.config.entrypoint = Some(vec!["/entry".into()]);
        cfg.config.cmd = Some(vec!["default".into()]);
        cfg.config.working_dir = Some("/work".into());
        let host = vec![
            ("PATH".to_string(), "/host/bin".to_string()),
            ("B".into(), "host".into()),
        ];
        let mut o = opts();
        o.env = vec![("A".into(), "user".into())];
        let pr = p.process(&o, &cfg, &host, Path::new("/tmp/w")).unwrap();
        assert_eq!(pr.argv, vec!["/entry", "true"]);
        let get = |k: &str| {
            pr.env
                .iter()
                .find(|(ek, _)| ek == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("PATH").as_deref(), Some("/img/bin"));
        assert_eq!(get("A").as_deref(), Some("user"));
        assert_eq!(get("B").as_deref(), Some("host"));
        assert_eq!(pr.workdir, Path::new("/tmp/w"));
        o.entrypoint = false;
        o.argv.clear();
        let pr = p.process(&o, &cfg, &host, Path::new("/tmp/w")).unwrap();
        assert_eq!(pr.argv, vec!["default"]);
        cfg.config.cmd = None;
        assert!(p.process(&o, &cfg, &host, Path::new("/")).is_err());
        let p = plan(&opts(), "/etc");
        cfg.config.cmd = Some(vec!["x".into()]);
        assert_eq!(
            p.process(&o, &cfg, &host, Path::new("/etc"))
                .unwrap()
                .workdir,
            Path::new("/work")
        );
    }

    #[test]
    fn remap_root_maps_to_zero_and_adds_no_entries() {
        let mut o = opts();
        o.remap_root = true;
        let p = plan(&o, "/");
        assert_eq!(p.inner_ids(), (0, 0));
        assert!(!p
            .steps
            .iter()
            .any(|s| matches!(s.action, Action::AddEntry { .. })));
    }

    #[test]
    fn auto_join_keys_from_launchers() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            auto_join_key(&env(&[
                ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
                ("PMIX_NAMESPACE", "123@1")
            ]))
            .as_deref(),
            Some("ompi-123_1")
        );
        assert_eq!(
            auto_join_key(&env(&[
                ("OMPI_COMM_WORLD_LOCAL_SIZE", "1"),
                ("PMIX_NAMESPACE", "1")
            ])),
            None
        );
        assert_eq!(
            auto_join_key(&env(&[
                ("SLURM_JOB_ID", "7"),
                ("SLURM_STEP_ID", "0"),
                ("SLURM_STEP_NUM_TASKS", "4")
            ]))
            .as_deref(),
            Some("slurm-7.0")
        );
        assert_eq!(auto_join_key(&env(&[("SLURM_JOB_ID", "7")])), None);
    }

    #[test]
    fn linger_shares_by_fingerprint_but_never_a_writable_root() {
        let mut o = opts();
        o.join = Join::Auto;
        o.linger_secs = 30;
        let p = plan(&o, "/");
        assert_eq!(p.join_key, Some(format!("node-{}", &p.fingerprint()[..16])));
        o.writable = true;
        assert_eq!(plan(&o, "/").join_key, None);
        o.writable = false;
        o.join = Join::No;
        assert_eq!(plan(&o, "/").join_key, None);
    }

    #[test]
    fn fingerprint_changes_with_mounts() {
        let a = plan(&opts(), "/");
        let mut o = opts();
        o.mounts
            .push(MountSpec::parse("/tmp:/data", Path::new("/")).unwrap());
        let b = plan(&o, "/");
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), plan(&opts(), "/").fingerprint());
    }
}
