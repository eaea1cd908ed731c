//! The user's request to `berth run`, independent of how it was given (command line, Slurm or
//! OpenLava glue), and the parsing of its small languages (mount specs, env assignments).

use crate::error::{usage, Result};
use crate::site::Site;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// FUSE-mount the squashfs inside the namespace (fast start, no disk used).
    Mount,
    /// Unpack the squashfs once per node into the cache and reuse it.
    Extract,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mount" => Ok(Mode::Mount),
            "extract" => Ok(Mode::Extract),
            _ => Err(format!("unknown mode '{s}': use 'mount' or 'extract'")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Join {
    /// A container of its own.
    No,
    /// Join (or create) the container registered under this key on this node.
    Key(String),
    /// Derive a key from the launcher's environment (Open MPI, Slurm), else run alone.
    Auto,
}

/// The namespaces a container gets of its own besides the user and mount ones (`--unshare`,
/// Slurm's `--container-unshare`). Without them the container shares the host's network,
/// System V IPC and hostname, as an HPC job expects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Namespaces {
    /// A network namespace with only `lo` (up).
    pub net: bool,
    /// System V IPC and POSIX message queues of its own.
    pub ipc: bool,
    /// Its own hostname (starting as the host's).
    pub uts: bool,
}

impl Namespaces {
    /// Add the kinds of a comma list (`net,ipc,uts`); an unknown or empty kind is an error.
    pub fn add(&mut self, list: &str) -> Result<()> {
        for kind in list.split(',') {
            match kind {
                "net" => self.net = true,
                "ipc" => self.ipc = true,
                "uts" => self.uts = true,
                _ => {
                    return usage(format!(
                        "cannot unshare '{kind}' (in '{list}'): the kinds are net, ipc and uts, \
                         as a comma list"
                    ))
                }
            }
        }
        Ok(())
    }

    /// Parse a comma list (see [`Namespaces::add`]).
    pub fn parse(list: &str) -> Result<Namespaces> {
        let mut ns = Namespaces::default();
        ns.add(list)?;
        Ok(ns)
    }

    /// The kinds set, in the order they are created and entered.
    pub fn names(&self) -> Vec<&'static str> {
        [(self.net, "net"), (self.ipc, "ipc"), (self.uts, "uts")]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| name)
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    pub image: PathBuf,
    /// Bytes, as the OS gives them: arguments need not be UTF-8.
    pub argv: Vec<OsString>,
    /// None: the site policy's mode, else mount.
    pub mode: Option<Mode>,
    pub mounts: Vec<MountSpec>,
    pub workdir: Option<PathBuf>,
    pub env: Vec<(OsString, OsString)>,
    pub writable: bool,
    /// None: the image's entrypoint is used when it has one.
    pub entrypoint: bool,
    pub remap_root: bool,
    pub mount_home: bool,
    pub join: Join,
    /// Keep the container (and its FUSE mount, warm) this long after its last process, for
    /// later runs of the same image and mounts on this node. 0: gone with the command.
    pub linger_secs: Option<u64>,
    /// Mount mode: how long this node's mount of the image waits for the next run (its image
    /// keeper's idle time). Some(0): a mount of the run's own. None: the site's or the default.
    pub image_idle_secs: Option<u64>,
    /// Inject the host's MPI when the site policy says so (`--no-mpi` turns it off).
    pub mpi: bool,
    /// Keep the container's writable layer on disk under this name in the state directory
    /// (`named/<name>`), so later containers with the same name start with its changes
    /// (Slurm's `--container-name`). None: changes live in memory and go with the container.
    pub persist: Option<String>,
    /// Host files and directories the scheduler glue needs in the container (its client
    /// commands and configuration, the job script's directory), bound read-only at the same
    /// path. The user does not choose them, so the user-mount rules do not apply.
    pub scheduler_paths: Vec<PathBuf>,
    /// Host libraries those commands need that an image may lack (copied to /.berth/host-lib).
    pub scheduler_libraries: Vec<PathBuf>,
    /// Namespaces of its own besides user and mount, one set per container (shared by the
    /// ranks that join it). Default: none.
    pub unshare: Namespaces,
    /// Join the running container of the join key whatever its image and options (a named
    /// container another step still runs in, as pyxis attaches): what differs is ignored, with
    /// a warning. False: a container with other options under the key is an error.
    pub attach: bool,
    /// The site's policy file and state directory, as the front end found them (default:
    /// the `berth` command's, from its environment).
    pub site: Site,
}

impl RunOptions {
    /// `berth run IMAGE -- ARGV` with no other option: the site policy's mode, a read-only
    /// container with the image's entrypoint, the home directory mounted, the host's MPI when
    /// the policy injects it, the join key derived from the launcher's environment, no extra
    /// mounts, environment or namespaces. Front ends set the fields their options change.
    pub fn new(image: impl Into<PathBuf>, argv: Vec<OsString>) -> RunOptions {
        RunOptions {
            image: image.into(),
            argv,
            mode: None,
            mounts: Vec::new(),
            workdir: None,
            env: Vec::new(),
            writable: false,
            entrypoint: true,
            remap_root: false,
            mount_home: true,
            join: Join::Auto,
            linger_secs: None,
            image_idle_secs: None,
            mpi: true,
            persist: None,
            scheduler_paths: Vec::new(),
            scheduler_libraries: Vec::new(),
            unshare: Namespaces::default(),
            attach: false,
            site: Site::default(),
        }
    }

    // What a front end changes after [`RunOptions::new`] (or its job layer's options), one
    // call each, so that the options are built in one expression.

    /// Run this image file instead (a path that need not be UTF-8).
    pub fn with_image(self, image: impl Into<PathBuf>) -> RunOptions {
        RunOptions {
            image: image.into(),
            ..self
        }
    }

    /// Mount or extract; None: the site policy's mode.
    pub fn with_mode(self, mode: Option<Mode>) -> RunOptions {
        RunOptions { mode, ..self }
    }

    /// The environment the container starts with besides the image's.
    pub fn with_env(self, env: Vec<(OsString, OsString)>) -> RunOptions {
        RunOptions { env, ..self }
    }

    /// Which container to join ([`RunOptions::join`]) and whether to attach to it whatever
    /// its options ([`RunOptions::attach`]).
    pub fn with_join(self, join: Join, attach: bool) -> RunOptions {
        RunOptions {
            join,
            attach,
            ..self
        }
    }

    /// Keep the writable layer under this name ([`RunOptions::persist`]).
    pub fn with_persist(self, persist: Option<String>) -> RunOptions {
        RunOptions { persist, ..self }
    }

    /// Keep the writable layer under `name` unless it is kept under a name already.
    pub fn or_persist(self, name: Option<String>) -> RunOptions {
        RunOptions {
            persist: self.persist.or(name),
            ..self
        }
    }

    /// Inject the host's MPI when the policy says so (true) or never (false).
    pub fn with_mpi(self, mpi: bool) -> RunOptions {
        RunOptions { mpi, ..self }
    }

    /// Mount mode's image idle time ([`RunOptions::image_idle_secs`]).
    pub fn with_image_idle_secs(self, image_idle_secs: Option<u64>) -> RunOptions {
        RunOptions {
            image_idle_secs,
            ..self
        }
    }

    /// The scheduler's host paths and libraries ([`RunOptions::scheduler_paths`],
    /// [`RunOptions::scheduler_libraries`]), as the glue found them on this host.
    pub fn with_scheduler_files(self, paths: Vec<PathBuf>, libraries: Vec<PathBuf>) -> RunOptions {
        RunOptions {
            scheduler_paths: paths,
            scheduler_libraries: libraries,
            ..self
        }
    }

    /// Also show a host path of the scheduler's (a job file directory) read-only at the same
    /// path in the container ([`RunOptions::scheduler_paths`]); `path` must be a valid mount
    /// target.
    pub fn with_scheduler_path(mut self, path: PathBuf) -> std::result::Result<RunOptions, String> {
        check_target(&path)?;
        self.scheduler_paths.push(path);
        Ok(self)
    }

    /// The site's policy file and state directory, as the front end found them.
    pub fn with_site(self, site: Site) -> RunOptions {
        RunOptions { site, ..self }
    }
}

/// What a `--mount` puts at its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MountKind {
    /// A bind of a host path (`SRC:DST`).
    Bind,
    /// A fresh tmpfs (`tmpfs:DST[:size=..,mode=..]`), as pyxis and enroot have it.
    Tmpfs,
    /// Unmount what the container has at DST (`umount:DST`): a default mount the job does not
    /// want (its home, its working directory...). Site mounts cannot be removed.
    Umount,
}

/// What to make at a missing target (enroot's `x-create`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Create {
    /// A directory for a directory source, a file for a file.
    Auto,
    Dir,
    File,
}

/// How a mount relates to the host's mount of its source after start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Propagation {
    /// Cut off (berth's default; `private`, `rprivate`).
    Private,
    /// Receives the host's later mounts under the source (`slave`, `rslave`).
    Slave,
    /// Private, and cannot be bound elsewhere (`unbindable`, `runbindable`).
    Unbindable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: MountKind,
    /// The host path of a bind (empty for tmpfs and umount).
    pub source: PathBuf,
    pub target: PathBuf,
    pub readonly: bool,
    pub recursive: bool,
    pub noexec: bool,
    pub propagation: Propagation,
    pub create: Create,
    /// A tmpfs's own options (`size=1G,mode=1777`), checked.
    pub tmpfs_options: String,
}

/// The options a mount spec takes, for the messages.
const MOUNT_OPTIONS: &str = "ro, rw, rbind, bind, noexec, private, rprivate, slave, rslave, \
     unbindable, runbindable, x-create=dir|file|auto; for tmpfs also size=, mode=, nr_inodes=, huge=";

impl MountSpec {
    /// Parse `SRC[:DST[:OPTS]]`, `tmpfs:DST[:OPTS]` or `umount:DST`; OPTS is a comma list (see
    /// [`MOUNT_OPTIONS`]; pyxis's `+` separator is the glue's to translate). A relative SRC is
    /// taken from `cwd` (a directory named `tmpfs` or `umount` is `./tmpfs`); DST must be
    /// absolute and may not contain `.` or `..`; without DST a bind's target is the source's
    /// own path. Paths are bytes (non-UTF-8 names pass).
    pub fn parse(spec: impl AsRef<OsStr>, cwd: &Path) -> Result<MountSpec> {
        let raw = spec.as_ref();
        let spec = raw.to_string_lossy();
        let parts: Vec<&OsStr> = raw
            .as_bytes()
            .split(|b| *b == b':')
            .map(OsStr::from_bytes)
            .collect();
        if parts.len() > 3 || parts.iter().take(2).any(|p| p.is_empty()) {
            return usage(format!(
                "bad mount '{spec}': expected SRC[:DST[:OPTS]], tmpfs:DST[:OPTS] or umount:DST"
            ));
        }
        let kind = match parts[0].as_bytes() {
            b"tmpfs" => MountKind::Tmpfs,
            b"umount" => MountKind::Umount,
            _ => MountKind::Bind,
        };
        let (source, target) = match (kind, parts.get(1)) {
            (MountKind::Bind, Some(dst)) => (cwd.join(parts[0]), PathBuf::from(dst)),
            (MountKind::Bind, None) => (cwd.join(parts[0]), cwd.join(parts[0])),
            (_, Some(dst)) => (PathBuf::new(), PathBuf::from(dst)),
            (_, None) => {
                return usage(format!(
                    "bad mount '{spec}': {} needs a target ({}:/path)",
                    parts[0].to_string_lossy(),
                    parts[0].to_string_lossy()
                ))
            }
        };
        let mut m = MountSpec {
            kind,
            source,
            target,
            readonly: false,
            recursive: true,
            noexec: false,
            propagation: Propagation::Private,
            create: if kind == MountKind::Tmpfs {
                Create::Dir
            } else {
                Create::Auto
            },
            tmpfs_options: String::new(),
        };
        let opts = parts
            .get(2)
            .map(|o| o.to_string_lossy())
            .unwrap_or_default();
        let mut tmpfs = Vec::new();
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            let (name, value) = opt.split_once('=').unwrap_or((opt, ""));
            let fits = match (kind, name) {
                (MountKind::Umount, "x-detach") => true,
                (MountKind::Umount, _) => false,
                (_, "ro") => {
                    m.readonly = true;
                    true
                }
                (_, "rw") => {
                    m.readonly = false;
                    true
                }
                (_, "noexec") => {
                    m.noexec = true;
                    true
                }
                (_, "exec" | "nosuid" | "nodev") => true, // nosuid and nodev always hold
                (MountKind::Bind, "rbind") => {
                    m.recursive = true;
                    true
                }
                (MountKind::Bind, "bind") => {
                    m.recursive = false;
                    true
                }
                (MountKind::Bind, "private" | "rprivate") => {
                    m.propagation = Propagation::Private;
                    true
                }
                (MountKind::Bind, "slave" | "rslave") => {
                    m.propagation = Propagation::Slave;
                    true
                }
                (MountKind::Bind, "unbindable" | "runbindable") => {
                    m.propagation = Propagation::Unbindable;
                    true
                }
                (MountKind::Bind, "shared" | "rshared") => {
                    return usage(format!(
                        "bad mount '{spec}': '{opt}' is not possible: a container's mounts never propagate to the host (use slave or private)"
                    ))
                }
                (_, "x-create") => {
                    m.create = match value {
                        "dir" => Create::Dir,
                        "file" if kind == MountKind::Bind => Create::File,
                        "auto" if kind == MountKind::Bind => Create::Auto,
                        _ => {
                            return usage(format!(
                                "bad mount '{spec}': x-create={value}: use dir, file or auto (dir for tmpfs)"
                            ))
                        }
                    };
                    true
                }
                (MountKind::Tmpfs, "size" | "nr_inodes" | "nr_blocks") => {
                    let digits = value.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', '%']);
                    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                        return usage(format!(
                            "bad mount '{spec}': {name}={value} is not a size (e.g. {name}=1G)"
                        ));
                    }
                    tmpfs.push(opt.to_string());
                    true
                }
                (MountKind::Tmpfs, "mode") => {
                    if value.is_empty()
                        || value.len() > 4
                        || !value.bytes().all(|b| (b'0'..=b'7').contains(&b))
                    {
                        return usage(format!(
                            "bad mount '{spec}': mode={value} is not an octal mode (e.g. mode=1777)"
                        ));
                    }
                    tmpfs.push(opt.to_string());
                    true
                }
                (MountKind::Tmpfs, "huge") => {
                    if !matches!(value, "never" | "always" | "within_size" | "advise") {
                        return usage(format!(
                            "bad mount '{spec}': huge={value}: use never, always, within_size or advise"
                        ));
                    }
                    tmpfs.push(opt.to_string());
                    true
                }
                _ => false,
            };
            if !fits {
                let allowed = match kind {
                    MountKind::Umount => "umount takes no options",
                    _ => MOUNT_OPTIONS,
                };
                return usage(format!(
                    "bad mount '{spec}': unknown option '{opt}' ({allowed})"
                ));
            }
        }
        m.tmpfs_options = tmpfs.join(",");
        check_target(&m.target)
            .map_err(|why| crate::error::Error::Usage(format!("bad mount '{spec}': {why}")))?;
        Ok(m)
    }
}

/// A mount target must be absolute and normalized, and not one of the places berth provides.
pub fn check_target(target: &Path) -> std::result::Result<(), String> {
    if !target.is_absolute() {
        return Err(format!(
            "target {} is not an absolute path",
            target.display()
        ));
    }
    if target
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || target.to_string_lossy().contains("/./")
    {
        return Err(format!("target {} contains '.' or '..'", target.display()));
    }
    if target == Path::new("/") {
        return Err("target / would hide the image".into());
    }
    for reserved in ["/proc", "/sys", "/dev"] {
        if target.starts_with(reserved) {
            return Err(format!(
                "target {} is reserved: berth provides /proc, /sys and /dev itself",
                target.display()
            ));
        }
    }
    Ok(())
}

/// Parse `K=V`; K must be a valid variable name, V is any bytes.
pub fn parse_env(spec: impl AsRef<OsStr>) -> Result<(OsString, OsString)> {
    let bytes = spec.as_ref().as_bytes();
    let shown = spec.as_ref().to_string_lossy();
    let Some(eq) = bytes.iter().position(|b| *b == b'=') else {
        return usage(format!("bad --env '{shown}': expected NAME=VALUE"));
    };
    let (k, v) = (&bytes[..eq], &bytes[eq + 1..]);
    let valid = !k.is_empty()
        && !k[0].is_ascii_digit()
        && k.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
    if !valid {
        return usage(format!(
            "bad --env '{shown}': '{}' is not a valid variable name",
            String::from_utf8_lossy(k)
        ));
    }
    Ok((OsStr::from_bytes(k).into(), OsStr::from_bytes(v).into()))
}

/// Join keys name files in the state directory: keep them to a safe alphabet.
pub fn check_join_key(key: &str) -> Result<()> {
    check_name("join key", key)
}

/// Names that become file names in the state directory (join keys, container names).
pub fn check_name(what: &str, key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 100
        && !key.starts_with('.')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        return usage(format!(
            "bad {what} '{key}': use 1-100 letters, digits, '.', '_' or '-', not starting with '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mount_specs() {
        let cwd = Path::new("/home/u");
        let m = MountSpec::parse("/data:/mnt/data:ro", cwd).unwrap();
        assert_eq!(
            (m.source.as_path(), m.target.as_path(), m.readonly),
            (Path::new("/data"), Path::new("/mnt/data"), true)
        );
        // Without a target, the source's own path.
        let m = MountSpec::parse("rel", cwd).unwrap();
        assert_eq!(m.target, Path::new("/home/u/rel"));
        let m = MountSpec::parse("rel:/x:bind", cwd).unwrap();
        assert_eq!(m.source, Path::new("/home/u/rel"));
        assert!(!m.recursive);
        assert_eq!(
            MountSpec::parse("/scratch", cwd).unwrap().target,
            Path::new("/scratch")
        );
    }

    #[test]
    fn refuses_bad_mount_specs() {
        let cwd = Path::new("/");
        for (spec, why) in [
            ("/a:b", "not an absolute path"),
            ("/a:/x/../etc", "'..'"),
            ("/a:/x/./y", "'.'"),
            ("/a:/proc", "reserved"),
            ("/a:/proc/sys", "reserved"),
            ("/a:/dev/shm", "reserved"),
            ("/a:/", "hide the image"),
            ("/a:/b:rx", "unknown option 'rx'"),
            ("/a:/b:ro:x", "expected SRC"),
            (":/b", "expected SRC"),
            ("/a:/b:rshared", "never propagate to the host"),
            ("/a:/b:x-create=pipe", "x-create=pipe"),
            ("tmpfs", "needs a target"),
            ("tmpfs:/t:size=lots", "not a size"),
            ("tmpfs:/t:mode=999", "not an octal mode"),
            ("tmpfs:/t:huge=yes", "huge=yes"),
            ("tmpfs:/t:bind", "unknown option 'bind'"),
            ("tmpfs:/t:x-create=file", "x-create=file"),
            ("umount:/t:ro", "umount takes no options"),
            ("umount:/proc", "reserved"),
        ] {
            let err = MountSpec::parse(spec, cwd).unwrap_err().to_string();
            assert!(err.contains(why), "{spec}: {err}");
        }
    }

    #[test]
    fn parses_tmpfs_umount_and_flags() {
        let cwd = Path::new("/w");
        let m = MountSpec::parse("tmpfs:/scratch:size=1G,mode=1777,noexec", cwd).unwrap();
        assert_eq!(m.kind, MountKind::Tmpfs);
        assert_eq!(m.target, Path::new("/scratch"));
        assert_eq!(m.tmpfs_options, "size=1G,mode=1777");
        assert!(m.noexec && m.create == Create::Dir);
        let m = MountSpec::parse("umount:/home/u:x-detach", cwd).unwrap();
        assert_eq!(
            (m.kind, m.target.as_path()),
            (MountKind::Umount, Path::new("/home/u"))
        );
        let m = MountSpec::parse("/a:/b:ro,rslave,x-create=file", cwd).unwrap();
        assert!(m.readonly);
        assert_eq!(
            (m.propagation, m.create),
            (Propagation::Slave, Create::File)
        );
        let m = MountSpec::parse("./tmpfs:/b", cwd).unwrap();
        assert_eq!(
            (m.kind, m.source.as_path()),
            (MountKind::Bind, Path::new("/w/./tmpfs"))
        );
    }

    #[test]
    fn parses_env_and_keys() {
        assert_eq!(parse_env("A_1=x=y").unwrap(), ("A_1".into(), "x=y".into()));
        assert!(parse_env("noequals").is_err());
        assert!(parse_env("1A=x").is_err());
        assert!(parse_env("A-B=x").is_err());
        let latin1 = OsStr::from_bytes(b"V=caf\xe9");
        assert_eq!(
            parse_env(latin1).unwrap(),
            ("V".into(), OsStr::from_bytes(b"caf\xe9").into())
        );
        let m = MountSpec::parse(OsStr::from_bytes(b"/d\xe9:/x:ro"), Path::new("/")).unwrap();
        assert_eq!(m.source.as_os_str().as_bytes(), b"/d\xe9");
        assert!(check_join_key("job.12_3-a").is_ok());
        for bad in ["", "../x", ".hidden", "a/b", "a b"] {
            assert!(check_join_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_namespace_lists() {
        let ns = Namespaces::parse("net,uts").unwrap();
        assert_eq!((ns.net, ns.ipc, ns.uts), (true, false, true));
        assert_eq!(ns.names(), ["net", "uts"]);
        let mut ns = Namespaces::default();
        ns.add("ipc").unwrap();
        ns.add("net,ipc").unwrap();
        assert_eq!(ns.names(), ["net", "ipc"]);
        for bad in ["bogus", "net,", "", "net,,ipc", "NET", "user", "mnt"] {
            let err = Namespaces::parse(bad).unwrap_err().to_string();
            assert!(err.contains("net, ipc and uts"), "{bad}: {err}");
        }
    }
}
