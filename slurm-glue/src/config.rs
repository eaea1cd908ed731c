//! The site's configuration: the plugin's arguments in plugstack.conf.

use berth_launcher::error::Error;
use std::path::Path;

/// plugstack.conf arguments: `policy=FILE`, `runtime_dir=DIR` (the per-user state goes in
/// DIR/berth-<uid>; `%n` is the node name), `mode=mount|extract`, `sbatch=0|1`, `entrypoint=0|1`,
/// `berth_image=PATH` (the importer for registry references; default: `berth-image` on PATH),
/// `insecure_registries=HOST,...` (registries reached over plain http; default: loopback only).
pub struct Config {
    pub policy: Option<String>,
    pub runtime_dir: Option<String>,
    pub mode: Option<String>,
    pub sbatch: bool,
    /// Run images' entrypoints unless the user says `--no-container-entrypoint` (pyxis's
    /// `execute_entrypoint`); off by default.
    pub entrypoint: bool,
    pub berth_image: String,
    pub insecure_registries: Vec<String>,
}

pub fn config(av: &[String]) -> Result<Config, Error> {
    let mut c = Config {
        policy: None,
        runtime_dir: None,
        mode: None,
        sbatch: true,
        entrypoint: false,
        berth_image: "berth-image".into(),
        insecure_registries: Vec::new(),
    };
    for a in av {
        match a.split_once('=') {
            Some(("policy", v)) => c.policy = Some(v.into()),
            Some(("runtime_dir", v)) => c.runtime_dir = Some(v.into()),
            Some(("mode", v)) => c.mode = Some(v.into()),
            Some(("sbatch", v)) => c.sbatch = v != "0",
            Some(("entrypoint", v)) => c.entrypoint = v != "0",
            Some(("berth_image", v)) => c.berth_image = v.into(),
            Some(("insecure_registries", v)) => {
                c.insecure_registries = v.split(',').filter(|h| !h.is_empty()).map(String::from).collect()
            }
            _ => {
                return Err(Error::Usage(format!(
                    "plugstack.conf: unknown argument '{a}' for spank_berth.so (use policy=, runtime_dir=, mode=, sbatch=, entrypoint=, berth_image=, insecure_registries=)"
                )))
            }
        }
    }
    Ok(c)
}

pub fn apply_config(c: &Config, node: &str) {
    // The task process is single-threaded (forked by slurmstepd): setting its environment is
    // safe here, and this is the launcher's environment, not the job's.
    if let Some(p) = &c.policy {
        std::env::set_var("BERTH_CONFIG", p);
    }
    if let Some(d) = &c.runtime_dir {
        let uid = unsafe { libc::getuid() };
        std::env::set_var(
            "BERTH_STATE_DIR",
            Path::new(&d.replace("%n", node)).join(format!("berth-{uid}")),
        );
    }
    if let Some(m) = &c.mode {
        std::env::set_var("BERTH_MODE", m);
    }
}
