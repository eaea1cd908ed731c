//! The site's configuration: the plugin's arguments in plugstack.conf, parsed strictly (one
//! line naming the argument), and the per-user state directory every context computes the
//! same way.

use crate::args::parse_bool_named;
use berth_launcher::{Error, Mode, Policy, Site};
use berth_plugin::Importer;
use std::path::{Path, PathBuf};

/// plugstack.conf arguments: `policy=FILE`, `runtime_dir=DIR` (the per-user state goes in
/// DIR/berth-<uid>; `%n` is the node name), `mode=mount|extract` (when the policy sets none),
/// `sbatch=BOOL`, `entrypoint=BOOL`, `remap_root=BOOL` and `mount_home=BOOL` (the defaults of
/// `--container-remap-root` and `--container-mount-home`; `container_mount_home=` is the same),
/// `berth_image=PATH` (the importer for registry references; default: `berth-image` on PATH),
/// `insecure_registries=HOST,...` (registries reached over plain http; default: loopback only).
#[derive(Debug, Clone)]
pub struct Config {
    pub policy: Option<String>,
    pub runtime_dir: Option<String>,
    pub mode: Option<Mode>,
    pub sbatch: bool,
    /// Run images' entrypoints unless the user says `--no-container-entrypoint` (pyxis's
    /// `execute_entrypoint`); off by default.
    pub entrypoint: bool,
    /// Off by default, as with pyxis and enroot's default configuration.
    pub remap_root: bool,
    /// On by default, as with pyxis and enroot's default configuration.
    pub mount_home: bool,
    pub berth_image: String,
    pub insecure_registries: Vec<String>,
}

/// The plugstack.conf arguments [`config`] takes, as `NAME=VALUE`: berth-slurm(8) documents
/// each one (a test checks), and any other name is refused.
pub const ARGUMENTS: &[&str] = &[
    "policy",
    "runtime_dir",
    "mode",
    "sbatch",
    "entrypoint",
    "remap_root",
    "mount_home",
    "container_mount_home",
    "berth_image",
    "insecure_registries",
];

pub fn config(av: &[String]) -> Result<Config, Error> {
    let mut c = Config {
        policy: None,
        runtime_dir: None,
        mode: None,
        sbatch: true,
        entrypoint: false,
        remap_root: false,
        mount_home: true,
        berth_image: "berth-image".into(),
        insecure_registries: Vec::new(),
    };
    for a in av {
        let what = |k: &str| format!("plugstack.conf: spank_berth.so {k}");
        let known = a
            .split_once('=')
            .is_some_and(|(k, _)| ARGUMENTS.contains(&k));
        match a.split_once('=').filter(|_| known) {
            Some(("policy", v)) => c.policy = Some(v.into()),
            Some(("runtime_dir", v)) => c.runtime_dir = Some(v.into()),
            Some(("mode", v)) => {
                c.mode = Some(
                    v.parse()
                        .map_err(|e| Error::Usage(format!("{}: {e}", what("mode"))))?,
                )
            }
            Some(("sbatch", v)) => c.sbatch = parse_bool_named(&what("sbatch"), v)?,
            Some(("entrypoint", v)) => c.entrypoint = parse_bool_named(&what("entrypoint"), v)?,
            Some(("remap_root", v)) => c.remap_root = parse_bool_named(&what("remap_root"), v)?,
            Some((k @ ("mount_home" | "container_mount_home"), v)) => {
                c.mount_home = parse_bool_named(&what(k), v)?
            }
            Some(("berth_image", v)) => c.berth_image = v.into(),
            Some(("insecure_registries", v)) => {
                c.insecure_registries = v
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(String::from)
                    .collect()
            }
            _ => {
                return Err(Error::Usage(format!(
                    "plugstack.conf: unknown argument '{a}' for spank_berth.so (use {}=)",
                    ARGUMENTS.join("=, ")
                )))
            }
        }
    }
    Ok(c)
}

/// The user's state directory on a node (named containers, join sockets, imports): the
/// task and the job epilog both use this. `runtime_dir=` (with `%n` the node name) wins, then
/// the policy's `runtime.cache_dir`, then /tmp; the user's own directory is `berth-<uid>` there.
pub fn state_dir(c: &Config, cache_dir: Option<&Path>, node: &str, uid: u32) -> PathBuf {
    let base = match &c.runtime_dir {
        Some(d) => PathBuf::from(d.replace("%n", node)),
        None => cache_dir.unwrap_or(Path::new("/tmp")).to_path_buf(),
    };
    berth_launcher::user_state_dir(&base, uid)
}

/// Create the directory the user's state directory goes in when it is missing (`runtime_dir=/local/%n`
/// on a node that has no `/local/<node>` yet): each missing level as a shared directory with
/// the sticky bit, as /tmp is, so every user of the node makes their own private `berth-<uid>`
/// there (mode 0700, by the launcher) and none can remove another's.
pub fn make_state_base(state: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let Some(base) = state.parent() else {
        return Ok(());
    };
    let missing: Vec<&Path> = base.ancestors().take_while(|d| !d.exists()).collect();
    for dir in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            // Opened to all only once it is there (umask), by its creator.
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)),
            // Another task of the node made it first.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
        .map_err(|e| {
            Error::Usage(format!(
                "cannot create the state directory's parent {} ({e}); create it on the node or change runtime_dir= in plugstack.conf",
                dir.display()
            ))
        })?;
    }
    Ok(())
}

/// The site's configuration as the launcher takes it: the policy named by `policy=` and, in
/// a task, the user's state directory on the node ([`state_dir`]).
pub fn site(c: &Config, state_dir: Option<&Path>) -> Site {
    Site {
        policy: c.policy.as_ref().map(PathBuf::from),
        state_dir: state_dir.map(Path::to_path_buf),
    }
}

/// The site policy named by `policy=` (else the default one).
pub fn policy(c: &Config) -> Result<Policy, Error> {
    site(c, None).policy()
}

/// How registry references are imported on the nodes (`berth_image=`, `insecure_registries=`).
pub fn importer(c: &Config) -> Importer<'_> {
    Importer {
        program: &c.berth_image,
        insecure_registries: &c.insecure_registries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Result<Config, Error> {
        config(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn plugstack_arguments() {
        let c = cfg(&[]).unwrap();
        assert!(c.sbatch && !c.entrypoint && !c.remap_root && c.mount_home);
        assert_eq!(c.mode, None);
        let c = cfg(&[
            "mode=extract",
            "sbatch=false",
            "entrypoint=YES",
            "remap_root=y",
            "container_mount_home=0",
            "insecure_registries=a,,b",
        ])
        .unwrap();
        assert_eq!(c.mode, Some(Mode::Extract));
        assert!(!c.sbatch && c.entrypoint && c.remap_root && !c.mount_home);
        assert_eq!(c.insecure_registries, ["a", "b"]);
        for bad in [
            "sbatch=",
            "sbatch=2",
            "entrypoint=on",
            "mode=fast",
            "nope=1",
            "policy",
        ] {
            let e = cfg(&[bad]).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
            let key = bad.split('=').next().unwrap();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn a_missing_state_base_is_made_shared_and_sticky() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = std::env::temp_dir().join(format!("berth-base-{}", std::process::id()));
        let c = cfg(&[&format!("runtime_dir={}/local/%n", tmp.display())]).unwrap();
        let state = state_dir(&c, None, "n1", 7);
        make_state_base(&state).unwrap();
        make_state_base(&state).unwrap();
        for d in [tmp.join("local"), tmp.join("local/n1")] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, 0o1777, "{}", d.display());
        }
        assert!(!state.exists());
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    /// Every name in [`ARGUMENTS`] is one `config` takes (the man page test reads that list).
    #[test]
    fn every_listed_argument_is_taken() {
        for a in ARGUMENTS {
            let value = match *a {
                "mode" => "mount",
                "policy" | "runtime_dir" | "berth_image" => "/x",
                "insecure_registries" => "r:5000",
                _ => "1",
            };
            cfg(&[&format!("{a}={value}")]).unwrap_or_else(|e| panic!("{a}: {e}"));
        }
        let e = cfg(&["colour=1"]).unwrap_err().to_string();
        assert!(
            e.contains("unknown argument 'colour=1'") && e.contains("(use policy=,"),
            "{e}"
        );
    }

    #[test]
    fn one_state_directory() {
        let c = cfg(&[]).unwrap();
        assert_eq!(state_dir(&c, None, "n1", 7), Path::new("/tmp/berth-7"));
        assert_eq!(
            state_dir(&c, Some(Path::new("/var/cache/b")), "n1", 7),
            Path::new("/var/cache/b/berth-7")
        );
        let c = cfg(&["runtime_dir=/run/%n/x"]).unwrap();
        assert_eq!(
            state_dir(&c, Some(Path::new("/var/cache/b")), "n1", 7),
            Path::new("/run/n1/x/berth-7")
        );
    }
}
