//! The user's options (pyxis's names) and how they become a [`JobRequest`].

use berth_plugin::JobRequest;

/// The options users get, pyxis's names. Each can also be set through the environment
/// variable `BERTH_` + the name in capitals with `_` (e.g. `BERTH_CONTAINER_IMAGE`).
pub const OPTIONS: &[(&str, Option<&str>, &str)] = &[
    (
        "container-image",
        Some("IMAGE"),
        "[berth] run the tasks in this squashfs image",
    ),
    (
        "container-mounts",
        Some("SRC:DST[:FLAGS],..."),
        "[berth] bind these host paths (FLAGS: ro, rw, bind, rbind)",
    ),
    (
        "container-workdir",
        Some("DIR"),
        "[berth] working directory inside the container",
    ),
    (
        "container-name",
        Some("NAME"),
        "[berth] share one container between the steps of the job that name it",
    ),
    (
        "container-env",
        Some("NAME,..."),
        "[berth] these host variables win over the image's",
    ),
    (
        "container-writable",
        None,
        "[berth] make the image writable (changes are discarded)",
    ),
    (
        "container-readonly",
        None,
        "[berth] keep the image read-only (the default)",
    ),
    (
        "container-remap-root",
        None,
        "[berth] be uid 0 inside the container",
    ),
    (
        "container-mount-home",
        None,
        "[berth] bind the home directory (the default)",
    ),
    (
        "no-container-mount-home",
        None,
        "[berth] do not bind the home directory",
    ),
    (
        "container-entrypoint",
        None,
        "[berth] run the image's entrypoint before the command (needs /bin/sh in the image)",
    ),
    (
        "no-container-entrypoint",
        None,
        "[berth] do not run the image's entrypoint (the default unless the site says entrypoint=1)",
    ),
];

/// The user's request: the options given (`opt`: the value of option number i of
/// [`OPTIONS`], if given), else the environment (`BERTH_CONTAINER_*`, through `getenv`), and
/// Slurm's own `--container` (SLURM_CONTAINER, when the site has no oci.conf).
/// `entrypoint`: the site's default for `--container-entrypoint` (plugstack `entrypoint=`).
pub fn request(
    given: impl Fn(usize) -> Option<String>,
    getenv: impl Fn(&str) -> Option<String>,
    entrypoint: bool,
) -> JobRequest {
    let opt = |name: &str| -> Option<String> {
        let i = OPTIONS.iter().position(|(n, _, _)| *n == name)?;
        if let Some(v) = given(i) {
            return Some(v);
        }
        getenv(&format!("BERTH_{}", name.to_uppercase().replace('-', "_")))
    };
    let flag = |name: &str| opt(name).is_some_and(|v| v != "0");
    JobRequest {
        image: opt("container-image")
            .or_else(|| getenv("SLURM_CONTAINER"))
            .filter(|s| !s.is_empty()),
        mounts: opt("container-mounts"),
        workdir: opt("container-workdir"),
        name: opt("container-name"),
        env_names: opt("container-env"),
        // A named container is writable (its changes are what it is for) unless told otherwise.
        writable: (flag("container-writable") || opt("container-name").is_some())
            && !flag("container-readonly"),
        remap_root: flag("container-remap-root"),
        mount_home: !flag("no-container-mount-home"),
        entrypoint: (flag("container-entrypoint") || entrypoint)
            && !flag("no-container-entrypoint"),
    }
}
