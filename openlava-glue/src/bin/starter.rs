//! `berth-lava-starter`: an OpenLava queue's `JOB_STARTER` (lsb.queues: `JOB_STARTER =
//! /usr/local/bin/berth-lava-starter`). sbatchd's job shell runs `berth-lava-starter <command>`
//! as the job user, in the submit directory, in the job's process group.
//!
//! With `BERTH_IMAGE` in the job's environment (written by berth-lava-esub from `bsub -a
//! 'berth(IMG)'`, or set by the user at submit) the starter enters the image through the
//! launcher, in-process, and becomes the command: no supervisor, so bkill's signals reach the
//! command directly, its exit status is the job's, and the container goes with it. Without
//! an image, or when the command is berth-lava-mpirun (which puts each rank in the image
//! itself), the command is executed as it is.

use berth_openlava as lava;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

// The job gets the signal state sbatchd started it with (see berth_launcher::SignalState).
berth_launcher::record_signals_at_start!();

fn main() {
    // Bytes: a job's arguments need not be UTF-8.
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    let env = lava::process_env();
    if argv.is_empty() {
        lava::fail(
            "berth: no job command (berth-lava-starter is a queue's JOB_STARTER: OpenLava runs it with the job's command)",
            125,
        );
    }
    if lava::get_os(&env, "BERTH_IMAGE").is_some() && lava::get(&env, "BERTH_IMAGE").is_none() {
        lava::fail(
            "berth: BERTH_IMAGE is not valid UTF-8: give the image by a UTF-8 path",
            125,
        );
    }
    let image = lava::get(&env, "BERTH_IMAGE").filter(|_| !lava::is_mpirun_helper(&argv[0]));
    let Some(image) = image else {
        // SAFETY: the hook runs between fork and exec and only restores the signal state,
        // which is async-signal-safe (sigaction and sigprocmask, no allocation).
        let err = unsafe {
            std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .pre_exec(|| {
                    berth_launcher::restore_signals_for_exec();
                    Ok(())
                })
                .exec()
        };
        let code = if err.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        };
        lava::fail(
            format!("berth: cannot run {}: {err}", argv[0].to_string_lossy()),
            code,
        );
    };
    // sbatchd started us in the submit directory when it could; LS_SUBCWD says which it is.
    if let Some(dir) = lava::submit_cwd(&env).filter(|d| d.is_dir()) {
        let _ = std::env::set_current_dir(dir);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let job_dir = lava::job_file_dir(&env);
    let opts = lava::run_options(image, argv, &env, &cwd, None, job_dir.as_deref())
        .unwrap_or_else(|e| lava::fail(format!("berth: {e}"), e.exit_code()));
    // Returns only on failure: on success this process is the command.
    if let Err(e) = berth_launcher::run(&opts, false) {
        lava::fail(format!("berth: {e}"), e.exit_code());
    }
}
