//! The user's options (pyxis's names and meanings) and how they become a [`JobRequest`]:
//! pure parsing, unit-tested here. Each option can also be given through the environment,
//! `PYXIS_CONTAINER_*` as with pyxis, or `BERTH_CONTAINER_*`; the command line wins, then
//! the `PYXIS_` variable, then the `BERTH_` one.

use crate::config::Config;
use berth_launcher::Error;
use berth_plugin::{JobRequest, NameFlag};

/// The options users get: (name, argument, `--help` text), with pyxis's meanings.
pub const OPTIONS: &[(&str, Option<&str>, &str)] = &[
    (
        "container-image",
        Some("[USER@][REGISTRY#]IMAGE[:TAG]|PATH"),
        "[berth] the image to use for the container filesystem: a squashfs file on the node, or a registry image (imported on the node)",
    ),
    (
        "container-mounts",
        Some("SRC:DST[:FLAGS][,SRC:DST...]"),
        "[berth] bind mount[s] inside the container; mount flags are separated with \"+\", e.g. \"ro+rprivate\"",
    ),
    (
        "container-workdir",
        Some("PATH"),
        "[berth] working directory inside the container",
    ),
    (
        "container-name",
        Some("NAME[:FLAG]"),
        "[berth] name to use for saving and loading the container on the node: the steps of the job that name it share its filesystem (FLAG: auto)",
    ),
    (
        "container-save",
        Some("PATH"),
        "[berth] Save the container state to a squashfs file on the remote host filesystem.",
    ),
    (
        "container-env",
        Some("NAME[,NAME...]"),
        "[berth] names of environment variables to override with the host environment",
    ),
    (
        "container-writable",
        None,
        "[berth] make the container filesystem writable",
    ),
    (
        "container-readonly",
        None,
        "[berth] make the container filesystem read-only",
    ),
    (
        "container-remap-root",
        None,
        "[berth] ask to be remapped to root inside the container; does not grant elevated system permissions, despite appearances",
    ),
    (
        "no-container-remap-root",
        None,
        "[berth] do not remap to root inside the container",
    ),
    (
        "container-mount-home",
        None,
        "[berth] bind mount the user's home directory",
    ),
    (
        "no-container-mount-home",
        None,
        "[berth] do not bind mount the user's home directory",
    ),
    (
        "container-unshare",
        Some("NAMESPACE[,NAMESPACE...]"),
        "[berth] unshare the given namespaces (net, ipc, uts) in the container; the step's tasks on a node share them",
    ),
    (
        "container-entrypoint",
        None,
        "[berth] execute the entrypoint from the container image",
    ),
    (
        "no-container-entrypoint",
        None,
        "[berth] do not execute the entrypoint from the container image",
    ),
    (
        "container-entrypoint-log",
        None,
        "[berth] print the output of the entrypoint script",
    ),
];

/// Names longer than this are refused (pyxis's names become file names).
pub const NAME_MAX: usize = 128;

/// A strict boolean, as pyxis reads them: 1/true/yes/y or 0/false/no/n, any case.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "y" => Some(true),
        "0" | "false" | "no" | "n" => Some(false),
        _ => None,
    }
}

/// A strict boolean, or one line naming the setting.
pub fn parse_bool_named(what: &str, v: &str) -> Result<bool, Error> {
    parse_bool(v).ok_or_else(|| {
        Error::Usage(format!(
            "{what}={v}: not a boolean (use 1, true, yes, y or 0, false, no, n)"
        ))
    })
}

/// `--container-name=NAME[:FLAG]`, pyxis's grammar: a non-empty name without `/`, at most
/// [`NAME_MAX`] bytes; FLAG one of auto (the default), create, exec, no_exec.
pub fn parse_name(v: &str) -> Result<(String, String), Error> {
    let bad = |why: &str| Err(Error::Usage(format!("--container-name={v}: {why}")));
    let (name, flag) = v.split_once(':').unwrap_or((v, ""));
    if name.is_empty() {
        return bad("empty name");
    }
    if name.contains('/') {
        return bad("a name cannot contain '/'");
    }
    if name.len() > NAME_MAX {
        return bad(&format!("the name is longer than {NAME_MAX} bytes"));
    }
    let flag = if flag.is_empty() { "auto" } else { flag };
    if !matches!(flag, "auto" | "create" | "exec" | "no_exec") {
        return bad("the flag must be auto, create, exec or no_exec");
    }
    Ok((name.to_string(), flag.to_string()))
}

/// What the user gave: `given(i)` is option number i of [`OPTIONS`] on the command line (an
/// empty string for a flag), `getenv` reads the environment of the job or of srun.
pub struct Source<'a> {
    pub given: &'a dyn Fn(usize) -> Option<String>,
    pub getenv: &'a dyn Fn(&str) -> Option<String>,
}

impl Source<'_> {
    fn cli(&self, name: &str) -> Option<String> {
        let i = OPTIONS.iter().position(|(n, _, _)| *n == name)?;
        (self.given)(i)
    }

    /// The option's variable, `PYXIS_` then `BERTH_`: (its name, its value).
    fn env(&self, name: &str) -> Option<(String, String)> {
        let var = name.to_uppercase().replace('-', "_");
        ["PYXIS_", "BERTH_"].iter().find_map(|p| {
            let k = format!("{p}{var}");
            (self.getenv)(&k).map(|v| (k, v))
        })
    }

    /// An option with an argument: the command line, else the environment; never empty.
    fn value(&self, name: &str) -> Result<Option<String>, Error> {
        let (what, v) = match (self.cli(name), self.env(name)) {
            (Some(v), _) => (format!("--{name}"), v),
            (None, Some((k, v))) => (k, v),
            (None, None) => return Ok(None),
        };
        if v.is_empty() {
            return Err(Error::Usage(format!("{what}: argument required")));
        }
        Ok(Some(v))
    }

    /// A flag without a `--no-` form: given on the command line, else its variables (strict
    /// booleans).
    fn flag(&self, name: &str) -> Result<bool, Error> {
        if self.cli(name).is_some() {
            return Ok(true);
        }
        match self.env(name) {
            Some((k, v)) => parse_bool_named(&k, &v),
            None => Ok(false),
        }
    }

    /// A pair of flags `--X` / `--no-X` (or `--X` / `--other`): both on the command line is an
    /// error; else one of them; else `X`'s variables (strict booleans; `off`'s as its negation).
    fn switch(&self, on: &str, off: &str) -> Result<Option<bool>, Error> {
        match (self.cli(on).is_some(), self.cli(off).is_some()) {
            (true, true) => {
                return Err(Error::Usage(format!(
                    "both --{on} and --{off} were given: use one"
                )))
            }
            (true, false) => return Ok(Some(true)),
            (false, true) => return Ok(Some(false)),
            (false, false) => {}
        }
        for (name, negate) in [(on, false), (off, true)] {
            if let Some((k, v)) = self.env(name) {
                return Ok(Some(parse_bool_named(&k, &v)? != negate));
            }
        }
        Ok(None)
    }
}

/// `--container-save=PATH` (or its variables): where each node saves the step's container,
/// relative to the submit directory; pyxis refuses a PATH that ends with '/'.
pub fn save_path(src: &Source) -> Result<Option<String>, Error> {
    let save = src.value("container-save")?;
    if let Some(p) = &save {
        if p.ends_with('/') {
            return Err(Error::Usage(format!(
                "--container-save={p}: target is a directory (give a file name)"
            )));
        }
    }
    Ok(save)
}

/// The user's request, or None when no container is asked for. Slurm's own `--container`
/// (SLURM_CONTAINER, when the site has no oci.conf) is the image if no option names one.
/// The site's defaults for the switches come from `site` (plugstack.conf). Errors are one line
/// naming the option or variable.
pub fn request(src: &Source, site: &Config) -> Result<Option<JobRequest>, Error> {
    let image = match src.value("container-image")? {
        Some(i) => Some(i),
        None => (src.getenv)("SLURM_CONTAINER").filter(|s| !s.is_empty()),
    };
    let mounts = src.value("container-mounts")?;
    if let Some(m) = &mounts {
        if m.split(',').any(|s| s.is_empty() || s.starts_with(':')) {
            return Err(Error::Usage(format!(
                "--container-mounts={m}: invalid format (an empty entry or source)"
            )));
        }
    }
    let workdir = src.value("container-workdir")?;
    let (name, name_flag) = match src.value("container-name")? {
        Some(v) => {
            let (name, flag) = parse_name(&v)?;
            (Some(name), NameFlag::parse(&flag).unwrap_or_default())
        }
        None => (None, NameFlag::Auto),
    };
    let env_names = src.value("container-env")?;
    if let Some(e) = &env_names {
        if e.split(',').any(str::is_empty) {
            return Err(Error::Usage(format!(
                "--container-env={e}: invalid format (an empty name)"
            )));
        }
    }
    let unshare = src.value("container-unshare")?;
    if let Some(list) = &unshare {
        berth_launcher::Namespaces::parse(list)
            .map_err(|e| Error::Usage(format!("--container-unshare={list}: {e}")))?;
    }
    let writable = src.switch("container-writable", "container-readonly")?;
    let remap_root = src.switch("container-remap-root", "no-container-remap-root")?;
    let mount_home = src.switch("container-mount-home", "no-container-mount-home")?;
    let entrypoint = src.switch("container-entrypoint", "no-container-entrypoint")?;
    let entrypoint_log = src.flag("container-entrypoint-log")?;
    let save = save_path(src)?;
    // A name without an image re-enters the job's named container on each node (whether the
    // node has it is known only there).
    if image.is_none() && name.is_none() {
        return Ok(None);
    }
    Ok(Some(JobRequest {
        image,
        mounts,
        workdir,
        // A named or saved container is writable (its changes are what it is for) unless told
        // otherwise.
        writable: writable.unwrap_or(name.is_some() || save.is_some()),
        name,
        name_flag,
        env_names,
        remap_root: remap_root.unwrap_or(site.remap_root),
        mount_home: mount_home.unwrap_or(site.mount_home),
        entrypoint: entrypoint.unwrap_or(site.entrypoint),
        entrypoint_log,
        unshare,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn req(cli: &[(&str, &str)], env: &[(&str, &str)]) -> Result<Option<JobRequest>, Error> {
        req_site(cli, env, &[])
    }

    fn req_site(
        cli: &[(&str, &str)],
        env: &[(&str, &str)],
        site: &[&str],
    ) -> Result<Option<JobRequest>, Error> {
        let cli: HashMap<usize, String> = cli
            .iter()
            .map(|(n, v)| {
                let i = OPTIONS.iter().position(|(o, _, _)| o == n).expect(n);
                (i, v.to_string())
            })
            .collect();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let site: Vec<String> = site.iter().map(|s| s.to_string()).collect();
        let given = |i: usize| cli.get(&i).cloned();
        let getenv = |k: &str| env.get(k).cloned();
        let src = Source {
            given: &given,
            getenv: &getenv,
        };
        request(&src, &crate::config::config(&site).unwrap())
    }

    fn err(r: Result<Option<JobRequest>, Error>) -> String {
        let e = r.expect_err("an error").to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        e
    }

    const IMG: (&str, &str) = ("container-image", "/i.sqsh");

    #[test]
    fn strict_booleans() {
        for t in ["1", "true", "YES", "y", "True"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "false", "No", "n", "FALSE"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["", "2", "on", "off", "yess", " 1"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
        let r = req(&[IMG], &[("BERTH_CONTAINER_WRITABLE", "false")]).unwrap();
        assert!(!r.unwrap().writable);
        let e = err(req(&[IMG], &[("PYXIS_CONTAINER_REMAP_ROOT", "maybe")]));
        assert!(e.contains("PYXIS_CONTAINER_REMAP_ROOT=maybe"), "{e}");
    }

    #[test]
    fn empty_and_conflicting_arguments_are_errors() {
        assert!(err(req(&[("container-image", "")], &[])).contains("--container-image"));
        assert!(err(req(&[], &[("PYXIS_CONTAINER_IMAGE", "")])).contains("PYXIS_CONTAINER_IMAGE"));
        for (opt, v) in [
            ("container-env", ""),
            ("container-env", "FOO,"),
            ("container-env", ",FOO"),
            ("container-mounts", ""),
            ("container-mounts", "/a:/b,"),
            ("container-name", ":exec"),
            ("container-name", ""),
            ("container-workdir", ""),
        ] {
            let e = err(req(&[IMG, (opt, v)], &[]));
            assert!(e.contains(opt), "{opt}={v}: {e}");
        }
        let e = err(req(
            &[IMG, ("container-readonly", ""), ("container-writable", "")],
            &[],
        ));
        assert!(e.contains("--container-writable") && e.contains("--container-readonly"));
        err(req(
            &[
                IMG,
                ("container-remap-root", ""),
                ("no-container-remap-root", ""),
            ],
            &[],
        ));
    }

    #[test]
    fn name_grammar() {
        assert_eq!(parse_name("a").unwrap(), ("a".into(), "auto".into()));
        assert_eq!(parse_name("a:").unwrap(), ("a".into(), "auto".into()));
        for f in ["auto", "create", "exec", "no_exec"] {
            assert_eq!(parse_name(&format!("x y:{f}")).unwrap().1, f);
        }
        for bad in ["", ":auto", "a/b", "a:nope", "a:exec:x"] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
        assert!(parse_name(&"n".repeat(NAME_MAX)).is_ok());
        assert!(parse_name(&"n".repeat(NAME_MAX + 1)).is_err());
        let r = req(&[IMG, ("container-name", "a:auto")], &[])
            .unwrap()
            .unwrap();
        assert_eq!(r.name.as_deref(), Some("a"));
        assert_eq!(r.name_flag, NameFlag::Auto);
        assert!(r.writable, "a named container is writable by default");
        let r = req(&[IMG, ("container-name", "a:no_exec")], &[]);
        assert_eq!(r.unwrap().unwrap().name_flag, NameFlag::NoExec);
        // No image: a request to re-enter it (the node knows whether it exists), not the host.
        let r = req(&[("container-name", "a:exec")], &[]).unwrap().unwrap();
        assert_eq!((r.image, r.name_flag), (None, NameFlag::Exec));
    }

    #[test]
    fn container_save_is_a_file_and_makes_the_container_writable() {
        let save = |cli: &[(&str, &str)], env: &[(&str, &str)]| {
            let r = req(&[&[IMG], cli].concat(), env)?.unwrap();
            Ok::<_, Error>(r.writable)
        };
        assert!(save(&[("container-save", "out.sqsh")], &[]).unwrap());
        assert!(save(&[], &[("PYXIS_CONTAINER_SAVE", "out.sqsh")]).unwrap());
        assert!(!save(&[("container-save", "o"), ("container-readonly", "")], &[]).unwrap());
        assert!(!save(&[], &[]).unwrap());
        let e = err(req(&[IMG, ("container-save", "dir/")], &[]));
        assert!(e.contains("--container-save=dir/"), "{e}");
        assert!(err(req(&[IMG], &[("BERTH_CONTAINER_SAVE", "")])).contains("BERTH_CONTAINER_SAVE"));
    }

    #[test]
    fn command_line_wins_then_pyxis_then_berth() {
        let image = |cli: &[(&str, &str)], env: &[(&str, &str)]| {
            req(cli, env).unwrap().and_then(|r| r.image)
        };
        assert_eq!(image(&[], &[]), None);
        assert_eq!(
            image(&[], &[("SLURM_CONTAINER", "/s")]).as_deref(),
            Some("/s")
        );
        assert_eq!(
            image(&[], &[("BERTH_CONTAINER_IMAGE", "/b")]).as_deref(),
            Some("/b")
        );
        let both = [
            ("BERTH_CONTAINER_IMAGE", "/b"),
            ("PYXIS_CONTAINER_IMAGE", "/p"),
        ];
        assert_eq!(image(&[], &both).as_deref(), Some("/p"));
        assert_eq!(image(&[IMG], &both).as_deref(), Some("/i.sqsh"));
        // Switches: the command line over the variables, the variables over the site.
        let r = |cli: &[(&str, &str)], env: &[(&str, &str)]| req(&[&[IMG], cli].concat(), env);
        let w = [("PYXIS_CONTAINER_WRITABLE", "1")];
        assert!(r(&[], &w).unwrap().unwrap().writable);
        assert!(
            !r(&[("container-readonly", "")], &w)
                .unwrap()
                .unwrap()
                .writable
        );
        assert!(
            !r(&[], &[("PYXIS_CONTAINER_READONLY", "yes")])
                .unwrap()
                .unwrap()
                .writable
        );
        let home = [("PYXIS_CONTAINER_MOUNT_HOME", "0")];
        assert!(!r(&[], &home).unwrap().unwrap().mount_home);
        assert!(
            r(&[("container-mount-home", "")], &home)
                .unwrap()
                .unwrap()
                .mount_home
        );
        assert!(
            !r(&[], &[("BERTH_NO_CONTAINER_MOUNT_HOME", "1")])
                .unwrap()
                .unwrap()
                .mount_home
        );
        let site = |cli: &[(&str, &str)], s: &[&str]| {
            req_site(&[&[IMG], cli].concat(), &[], s).unwrap().unwrap()
        };
        assert!(site(&[], &["remap_root=1"]).remap_root);
        assert!(!site(&[("no-container-remap-root", "")], &["remap_root=1"]).remap_root);
        assert!(!site(&[], &[]).remap_root);
        assert!(site(&[], &[]).mount_home);
        assert!(!site(&[], &["mount_home=no"]).mount_home);
        assert!(site(&[("container-mount-home", "")], &["container_mount_home=0"]).mount_home);
        assert!(site(&[], &["entrypoint=1"]).entrypoint);
        assert!(!site(&[("no-container-entrypoint", "")], &["entrypoint=1"]).entrypoint);
    }
}
