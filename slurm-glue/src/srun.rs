//! srun (local context): check what can be checked before the job step is created, so a
//! missing image, a bad mount spec or a mount the site policy denies fails fast, in srun's
//! output.

use crate::config::{apply_config, config};
use crate::spank::Spank;
use berth_launcher::error::Error;
use berth_plugin::is_reference;
use std::ffi::OsString;

pub fn post_opt(sp: Spank, av: &[String]) -> Result<(), Error> {
    let cfg = config(av)?;
    check(sp, &cfg, false)
}

/// The submit-time check, shared with sbatch and salloc (`allocator`).
pub fn check(sp: Spank, cfg: &crate::config::Config, allocator: bool) -> Result<(), Error> {
    let req = crate::args::request(|i| sp.option(i), |n| sp.getenv(n, false), cfg.entrypoint);
    if !req.wants_container() {
        return Ok(());
    }
    // An srun in a batch script that runs in the container: the request was checked when
    // the job was submitted, and the image's host path is not visible in here.
    if std::env::var_os("BERTH_CONTAINER").is_some() {
        return Ok(());
    }
    if allocator && !cfg.sbatch {
        return Err(Error::Usage(
            "this site does not take --container-* on sbatch or salloc (plugstack sbatch=0); give them to srun".into(),
        ));
    }
    apply_config(cfg, "");
    // vars_os: a non-UTF-8 variable in the submit environment is carried, not a panic.
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let opts = req.run_options("check", vec!["true".into()], &env, &cwd)?;
    let reference = req.image.as_deref().is_some_and(is_reference);
    berth_launcher::run::check(&opts, !reference)
}
