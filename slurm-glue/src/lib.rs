//! `spank_berth.so`: berth's Slurm SPANK plugin, which runs a job's tasks in berth containers.
//!
//! Slurm calls the same callbacks in every process that loads the plugin; each callback here
//! dispatches on the SPANK context to the module for that process, as pyxis does:
//! - [`srun`] (local context) and [`alloc`] (sbatch, salloc): the pyxis-style `--container-*`
//!   options ([`args`]) are registered and a request is checked before the job is submitted;
//! - [`slurmstepd`] (remote context): each task enters the node's container for its step;
//! - [`save`] (remote context, as root, after the step's last task): `--container-save`;
//! - [`adopt`] (the same, after it): the job's image keepers move into its extern step;
//! - [`epilog`] (job script context, as root): the job's named containers are removed.
//!
//! [`config`] reads the plugstack.conf arguments and [`spank`] holds every call into Slurm.
//! Every callback runs inside `guard`: a panic never crosses into srun or slurmstepd. The
//! callbacks are `unsafe extern "C"`: Slurm calls them with its own `spank_t` handle and
//! argument vector, which they trust.

#![allow(non_upper_case_globals)]

pub mod adopt;
pub mod alloc;
pub mod args;
pub mod config;
pub mod epilog;
pub mod save;
pub mod slurmstepd;
pub mod spank;
pub mod srun;
pub mod taskenv;

use berth_launcher::Error;
use spank::{ffi, Context, Spank};
use std::os::raw::{c_char, c_int};

#[no_mangle]
pub static plugin_name: [u8; 6] = *b"berth\0";
#[no_mangle]
pub static plugin_type: [u8; 6] = *b"spank\0";
#[no_mangle]
pub static plugin_version: u32 = ffi::SLURM_VERSION_NUMBER;

/// Run a callback body; errors and panics become a message on stderr and a failed callback.
fn guard(what: &str, body: impl FnOnce() -> Result<(), Error> + std::panic::UnwindSafe) -> c_int {
    match std::panic::catch_unwind(body) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("berth: {e}");
            -1
        }
        Err(_) => {
            eprintln!("berth: internal error in {what} (please report it)");
            -1
        }
    }
}

/// # Safety
/// Called by Slurm with its handle and `ac` valid C strings in `av`.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_init(
    sp: ffi::spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    // SAFETY: Slurm passes `ac` C strings in `av` (this function's # Safety).
    let (sp, av) = (Spank(sp), unsafe { spank::args(ac, av) });
    guard("slurm_spank_init", move || {
        config::config(&av)?;
        if matches!(
            spank::context(),
            Context::Local | Context::Remote | Context::Allocator
        ) {
            sp.register_options();
        }
        Ok(())
    })
}

/// In srun/sbatch/salloc: check what can be checked before the job is queued.
///
/// # Safety
/// Called by Slurm with its handle and `ac` valid C strings in `av`.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_init_post_opt(
    sp: ffi::spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    // SAFETY: Slurm passes `ac` C strings in `av` (this function's # Safety).
    let (sp, av) = (Spank(sp), unsafe { spank::args(ac, av) });
    guard("slurm_spank_init_post_opt", move || {
        match spank::context() {
            Context::Local => srun::post_opt(sp, &av),
            Context::Allocator => alloc::post_opt(sp, &av),
            _ => Ok(()),
        }
    })
}

/// In srun, once the job step's allocation exists: say what the option check found (`-v`).
///
/// # Safety
/// Called by Slurm with its handle and `ac` valid C strings in `av`.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_local_user_init(
    _sp: ffi::spank_t,
    _ac: c_int,
    _av: *mut *mut c_char,
) -> c_int {
    guard("slurm_spank_local_user_init", || match spank::context() {
        Context::Local => srun::local_user_init(),
        _ => Ok(()),
    })
}

/// In each task, as the user, just before Slurm execs it: enter the node's container.
///
/// # Safety
/// Called by Slurm with its handle and `ac` valid C strings in `av`.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_task_init(
    sp: ffi::spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    // SAFETY: Slurm passes `ac` C strings in `av` (this function's # Safety).
    let (sp, av) = (Spank(sp), unsafe { spank::args(ac, av) });
    // Slurm execs the task next: it must get the dispositions and mask it had before berth's
    // code ran, whatever that code did.
    let signals = berth_launcher::SignalState::current();
    let rc = guard("slurm_spank_task_init", move || {
        slurmstepd::task_init(sp, &av)
    });
    signals.apply();
    rc
}

/// In slurmstepd, as root, as each task's exit is collected: after the step's last task on the
/// node, `--container-save` (before the step's end reaches srun, as with pyxis).
///
/// # Safety
/// Called by Slurm with its handle and `ac` valid C strings in `av`.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_task_exit(
    sp: ffi::spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    // SAFETY: Slurm passes `ac` C strings in `av` (this function's # Safety).
    let (sp, av) = (Spank(sp), unsafe { spank::args(ac, av) });
    guard("slurm_spank_task_exit", move || match spank::context() {
        Context::Remote => {
            let saved = save::task_exit(sp, &av);
            // After the save, which may have started a keeper of its own.
            adopt::task_exit(sp);
            saved
        }
        _ => Ok(()),
    })
}

/// At the end of a job, on each of its nodes (as root): remove the saved layers of the job's
/// named containers.
///
/// # Safety
/// Called by Slurm with its handle and `ac` valid C strings in `av`.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_job_epilog(
    sp: ffi::spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    // SAFETY: Slurm passes `ac` C strings in `av` (this function's # Safety).
    let (sp, av) = (Spank(sp), unsafe { spank::args(ac, av) });
    guard("slurm_spank_job_epilog", move || {
        epilog::job_epilog(sp, &av)
    })
}
