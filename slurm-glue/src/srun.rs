//! srun (local context): check what can be checked before the job step is created, so a
//! missing or empty image, a bad name, conflicting flags, a bad mount spec or a mount the site
//! policy denies fails fast, in one line of srun's output.

use crate::config::{config, Config};
use crate::spank::{log, Level, Spank};
use berth_launcher::Error;
use berth_plugin::is_reference;
use std::ffi::OsString;

pub fn post_opt(sp: Spank, av: &[String]) -> Result<(), Error> {
    let cfg = config(av)?;
    check(sp, &cfg, false)
}

/// The submit-time check, shared with sbatch and salloc (`allocator`).
pub fn check(sp: Spank, cfg: &Config, allocator: bool) -> Result<(), Error> {
    // An srun in a batch script that runs in the container: the request was checked when
    // the job was submitted, and the image's host path is not visible in here.
    if std::env::var_os("BERTH_CONTAINER").is_some() {
        return Ok(());
    }
    let given = |i| sp.option(i);
    let getenv = |n: &str| sp.getenv(n, false);
    let src = crate::args::Source {
        given: &given,
        getenv: &getenv,
    };
    let Some(req) = crate::args::request(&src, cfg)? else {
        return Ok(());
    };
    if allocator && !cfg.sbatch {
        return Err(Error::Usage(
            "this site does not take --container-* on sbatch or salloc (plugstack sbatch=0); give them to srun".into(),
        ));
    }
    // A name without an image: only the node knows whether it has that container.
    if req.image.is_none() {
        let _ = CHECKED.set(format!(
            "no image: the named container {} of this job is re-entered on each node",
            req.name.as_deref().unwrap_or_default()
        ));
        return Ok(());
    }
    // vars_os: a non-UTF-8 variable in the submit environment is carried, not a panic.
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let mut opts = req.run_options("check", vec!["true".into()], &env, &cwd)?;
    opts.site = crate::config::site(cfg, None);
    let image = req.image.as_deref().unwrap_or_default();
    let reference = is_reference(image);
    berth_launcher::check(&opts, !reference)?;
    let _ = CHECKED.set(format!(
        "image {image} ({}), {} mount(s), {}{}{}checked before submitting",
        if reference {
            "a registry image, imported on the nodes"
        } else {
            "a file"
        },
        opts.mounts.len(),
        if opts.writable { "writable, " } else { "" },
        if opts.remap_root {
            "remapped to root, "
        } else {
            ""
        },
        req.name
            .as_deref()
            .map(|n| format!("named {n}, "))
            .unwrap_or_default(),
    ));
    Ok(())
}

/// What the submit-time check found, said at `srun -v` once srun's log level is set (it is
/// not yet when the options are checked).
static CHECKED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// srun, after the allocation, before the step is launched.
pub fn local_user_init() -> Result<(), Error> {
    if let Some(line) = CHECKED.get() {
        log(Level::Verbose, line);
    }
    Ok(())
}
