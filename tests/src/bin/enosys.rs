//! `enosys COMMAND [ARG...]`: run a command as on a kernel without the new mount API (Linux
//! before 5.2/5.12, RHEL 8's 4.18): a seccomp filter makes open_tree, move_mount,
//! mount_setattr, the fsopen family and openat2 fail with ENOSYS, in the command and in every
//! process it starts. The tests run berth under it (`BERTH_TEST_WRAP`) to check its mount(2)
//! fallback.

use libseccomp::{ScmpAction, ScmpFilterContext, ScmpSyscall};
use std::ffi::CString;
use std::os::unix::ffi::OsStringExt;
use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering};

/// Was SIGPIPE ignored when this process started? Rust's start-up code ignores it, and the
/// command must get the disposition the caller gave (the tests compare them).
static SIGPIPE_IGNORED: AtomicBool = AtomicBool::new(false);

extern "C" fn record_sigpipe() {
    // SAFETY: sigaction is a C struct for which all zeroes is valid; the call only writes it.
    let ignored = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    };
    SIGPIPE_IGNORED.store(ignored, Ordering::Relaxed);
}

/// Run by the C start-up code, before Rust's.
#[used]
#[link_section = ".init_array"]
static RECORD_SIGPIPE: extern "C" fn() = record_sigpipe;

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
            ctx.add_rule(
                ScmpAction::Errno(libc::ENOSYS),
                ScmpSyscall::from_name(name)?,
            )?;
        }
        // libseccomp sets no_new_privs first (berth needs no setuid program).
        ctx.load()
    };
    if let Err(e) = filter() {
        eprintln!("enosys: cannot install the seccomp filter: {e}");
        exit(125);
    }
    if !SIGPIPE_IGNORED.load(Ordering::Relaxed) {
        // SAFETY: restoring the default disposition of one signal; no handler is involved.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // execvp itself, not Command::exec, which would reset SIGPIPE to its default.
    let argv: Vec<CString> = std::iter::once(program.clone())
        .chain(args)
        .map(|a| CString::new(a.into_vec()).expect("arguments have no NUL byte"))
        .collect();
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: `ptrs` is a NULL-terminated array of NUL-terminated strings that outlive the
    // call; execvp returns only on failure.
    unsafe { libc::execvp(ptrs[0], ptrs.as_ptr()) };
    let e = std::io::Error::last_os_error();
    eprintln!("enosys: cannot run {}: {e}", program.to_string_lossy());
    exit(127);
}
