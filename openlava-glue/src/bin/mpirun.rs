//! `berth-lava-mpirun`: MPI across an OpenLava job's hosts, every rank in the image.
//!
//! OpenLava has no blaunch and writes no hostfile: the helper builds Open MPI's machinefile
//! from `LSB_MCPU_HOSTS` (or `LSB_HOSTS`) and execs
//!
//! ```text
//! mpirun -machinefile /dev/fd/N -np SLOTS -x LSB_... [MPIRUN_OPTION...] \
//!     berth-lava-mpirun --rank lava-<job>[.<index>] IMAGE -- COMMAND...
//! ```
//!
//! mpirun starts its daemons on the other hosts with its rsh agent (ssh; LSF's `blaunch` when
//! it is on `PATH` and the user chose no agent) and each rank is this program again, at the
//! same path on every host: with `--rank` it enters the image through the launcher, joining
//! the container of the job's other ranks on its host (join key `lava-<job>-<host>`), and
//! becomes the command. The machinefile lives in a memfd, so nothing is left behind, and the
//! helper is mpirun once it runs (bkill's signals reach it).
//! Without an image (`--image`, else `BERTH_IMAGE`) the ranks run on the hosts as they are.

use berth_openlava as lava;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

// mpirun and the ranks get the signal state the job started with (see berth_launcher::SignalState).
berth_launcher::record_signals_at_start!();

fn main() {
    // Bytes: a command's arguments need not be UTF-8.
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let env = lava::process_env();
    if args.first().is_some_and(|a| a == "--rank") {
        rank(&args[1..], &env);
    }
    let a =
        lava::parse_mpirun_args(&args).unwrap_or_else(|m| lava::fail(format!("berth: {m}"), 125));
    let hosts = lava::job_hosts(&env).unwrap_or_else(|m| lava::fail(format!("berth: {m}"), 125));
    let slots: u32 = hosts.iter().map(|(_, n)| n).sum();
    let fd = machinefile_fd(&lava::machinefile(&hosts))
        .unwrap_or_else(|e| lava::fail(format!("berth: cannot write the machinefile: {e}"), 125));
    let mut cmd = std::process::Command::new(&a.mpirun);
    cmd.arg("-machinefile")
        .arg(format!("/dev/fd/{fd}"))
        .arg("-np")
        .arg(slots.to_string());
    for name in lava::forwarded_names(&env) {
        cmd.arg("-x").arg(name);
    }
    cmd.args(&a.mpirun_options);
    // Under LSF, blaunch starts mpirun's daemons on the job's hosts (as LSF's own MPI
    // integration does) instead of ssh.
    if let Some(blaunch) = lava::launch_agent(&env, &a.mpirun_options) {
        cmd.env("OMPI_MCA_plm_rsh_agent", blaunch);
    }
    let image = a
        .image
        .clone()
        .or_else(|| lava::get(&env, "BERTH_IMAGE").map(String::from));
    match image {
        Some(image) => {
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
            let image = cwd.join(image).to_string_lossy().into_owned();
            // Checked once here rather than failing in every rank.
            let opts = lava::run_options(&image, a.command.clone(), &env, &cwd, None, None)
                .unwrap_or_else(|e| lava::fail(format!("berth: {e}"), e.exit_code()));
            if let Err(e) = berth_launcher::check(&opts, true) {
                lava::fail(format!("berth: {e}"), e.exit_code());
            }
            let key =
                lava::job_key(&env).unwrap_or_else(|m| lava::fail(format!("berth: {m}"), 125));
            let helper = std::env::current_exe().unwrap_or_else(|e| {
                lava::fail(
                    format!("berth: cannot find berth-lava-mpirun's own path: {e}"),
                    125,
                )
            });
            cmd.args(lava::rank_argv(&helper, &key, &image, &a.command));
        }
        None => {
            cmd.args(&a.command);
        }
    }
    // SAFETY: the hook runs between fork and exec and only restores the signal state, which
    // is async-signal-safe (sigaction and sigprocmask, no allocation).
    let err = unsafe {
        cmd.pre_exec(|| {
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
    lava::fail(format!("berth: cannot run {}: {err}", a.mpirun), code);
}

/// The machinefile in an anonymous memory file that mpirun inherits (no close-on-exec) and
/// reads as /dev/fd/N.
fn machinefile_fd(text: &str) -> std::io::Result<i32> {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let fd = memfd_create(c"berth-machinefile", MemFdCreateFlag::empty())?;
    let mut file = std::fs::File::from(fd);
    file.write_all(text.as_bytes())?;
    Ok(file.into_raw_fd())
}

/// One rank: into the container of the job's ranks on this host, then the command.
fn rank(args: &[OsString], env: &[(OsString, OsString)]) -> ! {
    let (key, image, command) =
        lava::parse_rank_args(args).unwrap_or_else(|m| lava::fail(format!("berth: {m}"), 125));
    let key = lava::host_key(&key, &hostname());
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let opts = lava::run_options(&image, command, env, &cwd, Some(&key), None)
        .unwrap_or_else(|e| lava::fail(format!("berth: {e}"), e.exit_code()));
    match berth_launcher::run(&opts, false) {
        Err(e) => lava::fail(format!("berth: {e}"), e.exit_code()),
        Ok(()) => lava::fail("berth: the rank's command did not start", 125),
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}
