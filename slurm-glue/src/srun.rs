//! srun (local context): check what can be checked before the job step is created, so a
//! missing or empty image, a bad name, conflicting flags, a bad mount spec or a mount the site
//! policy denies fails fast, in one line of srun's output.

use crate::config::{config, Config};
use crate::spank::{log, Level, Spank};
use berth_launcher::Error;
use berth_plugin::{is_reference, PIN_VAR};
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
    let opts = req
        .run_options("check", vec!["true".into()], &env, &cwd)?
        .with_site(crate::config::site(cfg, None));
    let image = req.image.as_deref().unwrap_or_default();
    let reference = is_reference(image);
    berth_launcher::check(&opts, !reference)?;
    let what = if reference {
        let digest = pin(cfg, image, &env)?;
        format!("a registry image, in the image store as {digest}")
    } else {
        "a file".to_string()
    };
    let _ = CHECKED.set(format!(
        "image {image} ({what}), {} mount(s), {}{}{}checked before submitting",
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

/// Resolve a registry image to a digest and import it into the image store, here, once for the
/// job (as the user, before any task starts): the job's steps and nodes get the digest in
/// the job's environment ([`PIN_VAR`], which srun and sbatch pass on to the tasks) and use the
/// stored image without asking the registry. A step of a job that pinned this reference
/// already (its batch script's srun) keeps the job's digest, even if the tag moved since.
fn pin(cfg: &Config, image: &str, env: &[(OsString, OsString)]) -> Result<String, Error> {
    if let Some((digest, _)) = std::env::var(PIN_VAR)
        .ok()
        .as_deref()
        .and_then(|v| v.split_once(' '))
        .filter(|(_, r)| *r == image)
    {
        return Ok(digest.to_string());
    }
    let job = std::env::var("SLURM_JOB_ID").ok();
    let policy = crate::config::policy(cfg).ok();
    let stored = crate::config::importer(cfg).store(image, env, job.as_deref(), policy.as_ref())?;
    // srun and sbatch are single-threaded while their options are checked; both pass their
    // environment on to the job.
    std::env::set_var(PIN_VAR, format!("{} {image}", stored.digest));
    Ok(stored.digest)
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
