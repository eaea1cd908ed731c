//! `berth-lava-esub`: OpenLava's submit-time hook, installed as `$LSF_SERVERDIR/esub` or
//! called from the site's own esub. bsub runs it as the submitting user, in the submit
//! directory, with `LSB_SUB_PARM_FILE` (the job's parameters; `-a STRING` is
//! `LSB_SUB_ADDITIONAL`) and `LSB_SUB_MODIFY_ENVFILE` (`NAME="value"` lines added to the job's
//! environment).
//!
//! `-a 'berth(IMG)'`: the image is checked with the launcher (the site policy, the file is a
//! usable squashfs or directory) and `BERTH_IMAGE="/abs/IMG"` goes into the job's environment;
//! a bad image rejects the job (exit `LSB_SUB_ABORT_VALUE`, 97) with one line saying why.
//! `BERTH_IMAGE` set in the submit environment is checked the same way (bsub passes it on).
//! Neither: nothing to do, exit 0.

use berth_openlava as lava;
use std::io::Write;
use std::path::{Path, PathBuf};

fn main() {
    let env = lava::process_env();
    let abort = lava::get(&env, "LSB_SUB_ABORT_VALUE")
        .and_then(|v| v.parse().ok())
        .unwrap_or(lava::ESUB_ABORT);
    let reject = |msg: String| -> ! { lava::fail(format!("berth: job rejected: {msg}"), abort) };
    let parm = match lava::get(&env, "LSB_SUB_PARM_FILE") {
        Some(file) => match std::fs::read_to_string(file) {
            Ok(text) => lava::parse_parm_file(&text),
            Err(e) => reject(format!("cannot read LSB_SUB_PARM_FILE {file}: {e}")),
        },
        None => Vec::new(),
    };
    let additional = lava::get(&parm, "LSB_SUB_ADDITIONAL").unwrap_or("");
    let from_a = lava::image_from_additional(additional).unwrap_or_else(|m| reject(m));
    let (image, write) = match (from_a, lava::get(&env, "BERTH_IMAGE")) {
        (Some(image), _) => (image, true),
        (None, Some(image)) => (image.to_string(), false),
        (None, None) => std::process::exit(0),
    };
    if image.contains("://") {
        reject(format!(
            "{image}: registry references are not supported under OpenLava; import it first (berth-image import {image} -o FILE.sqsh) and give the file"
        ));
    }
    // The job may start elsewhere: name the image by its absolute path.
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let image = cwd.join(&image).to_string_lossy().into_owned();
    let opts = lava::run_options(&image, vec!["true".into()], &env, &cwd, None, None)
        .unwrap_or_else(|e| reject(e.to_string()));
    if let Err(e) = berth_launcher::check(&opts, true) {
        reject(e.to_string());
    }
    if !write {
        std::process::exit(0);
    }
    let line =
        lava::env_file_line("BERTH_IMAGE", &image).unwrap_or_else(|m| reject(format!("image {m}")));
    let Some(envfile) = lava::get(&env, "LSB_SUB_MODIFY_ENVFILE") else {
        reject(
            "LSB_SUB_MODIFY_ENVFILE is not set: berth-lava-esub runs as OpenLava's esub, from bsub"
                .into(),
        );
    };
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(Path::new(envfile))
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        reject(format!("cannot write {envfile}: {e}"));
    }
}
