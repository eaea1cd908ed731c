//! The user's request to `berth run`, independent of how it was given (command line, Slurm or
//! OpenLava glue), and the parsing of its small languages (mount specs, env assignments).

use crate::error::{usage, Result};
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: PathBuf,
    pub target: PathBuf,
    pub readonly: bool,
    pub recursive: bool,
}

impl MountSpec {
    /// Parse `SRC[:DST[:OPTS]]`; OPTS is a comma list of `ro`, `rw`, `rbind`, `bind`. A relative
    /// SRC is taken from `cwd`; DST must be absolute and may not contain `.` or `..`. Paths
    /// are bytes (non-UTF-8 names pass).
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
                "bad mount '{spec}': expected SRC[:DST[:ro|rw|bind|rbind,...]]"
            ));
        }
        let source = cwd.join(parts[0]);
        let target = PathBuf::from(parts.get(1).copied().unwrap_or(parts[0]));
        let mut m = MountSpec {
            source,
            target,
            readonly: false,
            recursive: true,
        };
        let opts = parts
            .get(2)
            .map(|o| o.to_string_lossy())
            .unwrap_or_default();
        for opt in opts.split(',') {
            match opt {
                "ro" => m.readonly = true,
                "rw" => m.readonly = false,
                "rbind" => m.recursive = true,
                "bind" => m.recursive = false,
                "" => {}
                _ => {
                    return usage(format!(
                        "bad mount '{spec}': unknown option '{opt}' (use ro, rw, bind, rbind)"
                    ))
                }
            }
        }
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
        let m = MountSpec::parse("rel", cwd).unwrap_err().to_string();
        assert!(m.contains("not an absolute path"), "{m}");
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
        ] {
            let err = MountSpec::parse(spec, cwd).unwrap_err().to_string();
            assert!(err.contains(why), "{spec}: {err}");
        }
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
}
