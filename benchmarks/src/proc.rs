//! Running a command and collecting what the kernel knows about it once it is gone: wall
//! time, exit status and peak RSS (`ru_maxrss` from wait4).
//!
//! The benchmark makes itself a child subreaper, so helpers a command leaves behind (berth's
//! squashfuse_ll server outlives the command by a moment) are reparented to us. They are reaped
//! after each timed run, outside the timing, so no run overlaps the previous one's teardown and
//! their peak RSS can be reported too.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// How one timed run ended.
pub struct Exit {
    pub wall: Duration,
    /// Peak resident set size in KiB (Linux reports `ru_maxrss` in kilobytes).
    pub maxrss_kib: i64,
}

/// A process left behind by a command, reaped after it.
pub struct Orphan {
    pub comm: String,
    pub maxrss_kib: i64,
}

pub fn become_subreaper() -> io::Result<()> {
    set_subreaper(true)
}

/// Whether this process is a child subreaper now.
pub fn is_subreaper() -> bool {
    nix::sys::prctl::get_child_subreaper().unwrap_or(false)
}

/// Turn the subreaper role on or off (off while starting a process that must outlive the
/// rounds, such as a lingering berth keeper).
pub fn set_subreaper(on: bool) -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(on)?;
    Ok(())
}

/// Make `cmd` spawn with fork() rather than posix_spawn's vfork-style clone, for an honest
/// ru_maxrss. A child execs out of a memory image it started with: after vfork that image is
/// ours, and its whole high-water mark (our binary's pages included) is charged to the child;
/// after fork only our anonymous pages are (file mappings are not copied at fork), which is
/// negligible. A pre_exec hook is what makes std use fork.
pub fn force_fork(cmd: &mut Command) {
    // SAFETY: the hook does nothing, so it cannot break the forked child before its exec.
    unsafe { cmd.pre_exec(|| Ok(())) };
}

/// Spawn `cmd`, wait for it with wait4 and time it from just before the spawn to the moment its
/// exit status is available. A non-zero exit is an error: a failed run is no measurement.
pub fn run_timed(cmd: &mut Command) -> Result<Exit, String> {
    let t0 = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let (status, usage) = wait4(child.id() as libc::pid_t).map_err(|e| format!("wait4: {e}"))?;
    let wall = t0.elapsed();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(format!("{cmd:?} failed ({})", describe_status(status)));
    }
    Ok(Exit {
        wall,
        maxrss_kib: usage.ru_maxrss,
    })
}

fn describe_status(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status:#x}")
    }
}

fn wait4(pid: libc::pid_t) -> io::Result<(libc::c_int, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is a C struct of integers and timevals: all zeroes is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are live and writable; `pid` is our unreaped child.
        if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } == pid {
            return Ok((status, usage));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// How long a helper left behind by a command may take to exit before we stop waiting.
pub const ORPHAN_TIMEOUT: Duration = Duration::from_secs(10);

/// Reap every process reparented to us, waiting up to `timeout` for them to exit.
pub fn reap_orphans(timeout: Duration) -> Vec<Orphan> {
    let deadline = Instant::now() + timeout;
    let mut reaped = Vec::new();
    loop {
        // Peek first (WNOWAIT) so the zombie's name can still be read from /proc.
        // SAFETY: siginfo_t is a C struct of integers and unions of them: all zeroes is valid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        // SAFETY: `info` is a live, writable siginfo_t.
        if unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break; // ECHILD: nothing left
        }
        // SAFETY: `info` is initialised (zeroed, or filled by waitid in its SIGCHLD layout,
        // which si_pid reads; 0 when no child was waiting).
        let pid = unsafe { info.si_pid() };
        if pid == 0 {
            if Instant::now() >= deadline {
                eprintln!("berth-bench: warning: a leftover process has not exited; going on");
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if let Ok((_, usage)) = wait4(pid) {
            reaped.push(Orphan {
                comm: comm.trim().to_string(),
                maxrss_kib: usage.ru_maxrss,
            });
        }
    }
    reaped
}
