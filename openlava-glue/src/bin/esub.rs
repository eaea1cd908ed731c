//! `berth-lava-esub`: OpenLava's submit-time hook, installed as `$LSF_SERVERDIR/esub` or
//! called from the site's own esub. bsub (and bmod) run it as the submitting user, in the
//! submit directory, with `LSB_SUB_PARM_FILE` (the job's parameters; `-a STRING` is
//! `LSB_SUB_ADDITIONAL`) and `LSB_SUB_MODIFY_ENVFILE` (a file to create with `NAME="value"`
//! lines added to the job's environment).
//!
//! `-a 'berth(IMG)'`: the image is checked with the launcher (the site policy, the file is a
//! usable squashfs, or a directory with an executable /bin/sh) and `BERTH_IMAGE="/abs/IMG"`
//! goes into the job's environment. `BERTH_IMAGE` set in the submit environment is checked
//! the same way (bsub passes it on). The job is rejected (exit `LSB_SUB_ABORT_VALUE`, 97,
//! with one line saying why) when the image is bad, when it would not reach the job or the
//! job would run on the host silently: a login-shell job (`-L`, whose environment sbatchd
//! drops), a queue that openlava.toml does not list as having berth's JOB_STARTER, a bmod
//! that changes the image (OpenLava does not apply the env file on modify).
//! `berth(docker://REG/REPO:TAG)`: resolved and imported into the image store at submit (as
//! the user); the job gets `BERTH_IMAGE` = the stored file and `BERTH_IMAGE_PIN` = its digest.
//! No image: nothing to do, exit 0.

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
    // bmod runs the esub with LSB_SUB_MODIFY=Y but does not apply its env file: the job
    // would keep its old image while bjobs shows the new -a.
    if lava::get(&parm, "LSB_SUB_MODIFY") == Some("Y") {
        if from_a.is_some() {
            reject("bmod cannot change a job's image (OpenLava keeps the environment it was submitted with): bkill the job and bsub it again with -a 'berth(IMG)'".into());
        }
        std::process::exit(0);
    }
    let (mut image, mut write) = match (from_a, lava::get(&env, "BERTH_IMAGE")) {
        (Some(image), _) => (image, true),
        (None, Some(image)) => (image.to_string(), false),
        (None, None) => std::process::exit(0),
    };
    // sbatchd starts a login-shell job with almost none of the submit environment: no
    // BERTH_IMAGE, so the job would run on the host.
    if lava::get(&parm, "LSB_SUB_LOGIN_SHELL").is_some() {
        reject("bsub -L starts the job without the submit environment, so it cannot run in an image: submit without -L (a job script can source the login profile itself)".into());
    }
    // Only a queue with berth's JOB_STARTER runs the job in the image; any other runs it on
    // the host, silently.
    let config_path = lava::get_os(&env, "BERTH_LAVA_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(lava::SITE_CONFIG));
    let config = match lava::load_site_config(&config_path) {
        Ok(Some(config)) => config,
        Ok(None) => reject(format!(
            "{} is missing, so no queue is known to start jobs in images: the admin lists them there (starter_queues = [\"QUEUE\"])",
            config_path.display()
        )),
        Err(e) => reject(e),
    };
    let starters = config.starter_queues.join(", ");
    match lava::job_queue(&parm, &env, &config) {
        Some(q) if config.starter_queues.contains(&q) => {}
        Some(q) => reject(format!(
            "queue {q} does not start jobs in images: submit to a queue with berth's job starter (-q {starters})"
        )),
        None => reject(format!(
            "no queue given and the default queue is not known: submit with -q (one of: {starters})"
        )),
    }
    // A registry image is resolved and imported into the image store here, once for the job,
    // as the user: the job gets the stored file and the digest, and its hosts need no
    // registry access.
    let mut pin = None;
    if image.starts_with("docker://") {
        let program = std::env::current_exe()
            .ok()
            .map(|e| e.with_file_name("berth-image"))
            .filter(|p| p.exists())
            .or_else(|| lava::find_on_path(&env, "berth-image"))
            .unwrap_or_else(|| PathBuf::from("berth-image"));
        let program = program.to_string_lossy().into_owned();
        let importer = berth_plugin::Importer {
            program: &program,
            insecure_registries: &[],
        };
        let policy = berth_launcher::Site::default().policy().ok();
        let stored = importer
            .store(&image, &env, None, policy.as_ref())
            .unwrap_or_else(|e| reject(e.to_string()));
        pin = Some(format!("{} {image}", stored.digest));
        image = stored.path.to_string_lossy().into_owned();
        write = true;
    } else if image.contains("://") {
        reject(format!(
            "{image}: only docker:// registry references are supported; import it first (berth-image import {image} -o FILE.sqsh) and give the file"
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
    if Path::new(&image).is_dir() && !lava::rootfs_has_shell(Path::new(&image)) {
        reject(format!(
            "{image} has no executable /bin/sh, so it is not a usable root file system: give the directory that holds the image's bin, etc and usr"
        ));
    }
    if !write {
        std::process::exit(0);
    }
    let mut line =
        lava::env_file_line("BERTH_IMAGE", &image).unwrap_or_else(|m| reject(format!("image {m}")));
    if let Some(pin) = &pin {
        line += &lava::env_file_line(berth_plugin::PIN_VAR, pin)
            .unwrap_or_else(|m| reject(format!("image {m}")));
    }
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
