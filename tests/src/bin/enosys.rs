//! `enosys COMMAND [ARG...]`: run a command as on a kernel without the new mount API (Linux
//! before 5.2/5.12, RHEL 8's 4.18): a seccomp filter makes open_tree, move_mount,
//! mount_setattr, the fsopen family and openat2 fail with ENOSYS, in the command and in every
//! process it starts. The tests run berth under it (`BERTH_TEST_WRAP`) to check its mount(2)
//! fallback.

use libseccomp::{ScmpAction, ScmpFilterContext, ScmpSyscall};
use std::os::unix::process::CommandExt;
use std::process::{exit, Command};

const MISSING: [&str; 8] = [
    "open_tree",
    "move_mount",
    "mount_setattr",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "openat2",
];

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: enosys COMMAND [ARG...]");
        exit(2);
    };
    let filter = || -> Result<(), libseccomp::error::SeccompError> {
        let mut ctx = ScmpFilterContext::new(ScmpAction::Allow)?;
        for name in MISSING {
            ctx.add_rule(ScmpAction::Errno(libc::ENOSYS), ScmpSyscall::from_name(name)?)?;
        }
        // libseccomp sets no_new_privs first (berth needs no setuid program).
        ctx.load()
    };
    if let Err(e) = filter() {
        eprintln!("enosys: cannot install the seccomp filter: {e}");
        exit(125);
    }
    let e = Command::new(&program).args(args).exec();
    eprintln!("enosys: cannot run {}: {e}", program.to_string_lossy());
    exit(127);
}
