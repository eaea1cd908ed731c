//! The job epilog (job script context, as root, on each node of the job): remove the saved
//! layers of the job's named containers.

use crate::config::config;
use crate::spank::Spank;
use berth_launcher::error::Error;
use std::os::raw::c_char;
use std::path::Path;

pub fn job_epilog(sp: Spank, av: &[String]) -> Result<(), Error> {
    let cfg = config(av)?;
    let job = sp.job_id();
    let uid = sp.job_uid();
    let node = nix_hostname();
    let base = cfg
        .runtime_dir
        .map(|d| d.replace("%n", &node))
        .unwrap_or_else(|| "/tmp".into());
    let named = Path::new(&base).join(format!("berth-{uid}")).join("named");
    let prefix = format!("slurm-{job}-");
    for entry in std::fs::read_dir(&named).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

fn nix_hostname() -> String {
    let mut buf = [0u8; 256];
    if unsafe { libc::gethostname(buf.as_mut_ptr() as *mut c_char, buf.len()) } != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
