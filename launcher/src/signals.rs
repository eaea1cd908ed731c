//! The signal state a command starts with: the one berth itself was started with.
//!
//! Ignored dispositions and the signal mask survive `execve` (handled signals go back to their
//! default). The Rust runtime ignores SIGPIPE before `main`, so without care every command
//! would start with SIGPIPE ignored (`yes | head -1` then fails with "Broken pipe" instead of
//! dying quietly). Each berth binary records the state before the runtime changes it, with
//! [`record_signals_at_start!`] (an `.init_array` entry, which runs before Rust's start-up
//! code; the approach of uutils' coreutils), and [`restore_for_exec`] puts it back just before
//! the exec. Code that runs inside a process Rust did not start (the Slurm plugin in
//! slurmstepd's task) takes a [`SignalState::current`] on entry and applies it on the way out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Which signals (1..=64, bit `sig - 1`) are ignored and which are blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalState {
    pub ignored: u64,
    pub blocked: u64,
}

const SIGNALS: std::ops::RangeInclusive<i32> = 1..=64;

fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

fn disposition(sig: i32) -> Option<libc::sighandler_t> {
    // SAFETY: sigaction is a C struct of a handler address, a mask and integers: all zeroes
    // is valid.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // Fails (EINVAL) only for numbers that are not signals, or glibc's reserved ones.
    // SAFETY: a null new action only reads the disposition, into the live `old`.
    (unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } == 0).then_some(old.sa_sigaction)
}

fn set_disposition(sig: i32, handler: libc::sighandler_t) {
    // SAFETY: all zeroes is a valid sigaction (see `disposition`).
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = handler;
    // SAFETY: `new` and its mask are live; callers pass only SIG_DFL or SIG_IGN, so no
    // handler code is installed that could run at an unsafe moment.
    unsafe {
        libc::sigemptyset(&mut new.sa_mask);
        libc::sigaction(sig, &new, std::ptr::null_mut());
    }
}

impl SignalState {
    /// The calling thread's state now. Async-signal-safe (no allocation).
    pub fn current() -> SignalState {
        let mut state = SignalState {
            ignored: 0,
            blocked: 0,
        };
        // SAFETY: sigset_t is an array of integers: all zeroes is valid (and the empty set).
        let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: a null new set only reads the thread's mask into the live `mask`.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask) };
        for sig in SIGNALS {
            if disposition(sig) == Some(libc::SIG_IGN) {
                state.ignored |= bit(sig);
            }
            // SAFETY: `mask` is an initialised sigset_t; a bad `sig` only returns -1.
            if unsafe { libc::sigismember(&mask, sig) } == 1 {
                state.blocked |= bit(sig);
            }
        }
        state
    }

    /// Make the calling thread's state this one: each signal ignored here is ignored, each
    /// other ignored one goes back to its default (handlers are left alone: exec resets them),
    /// and the mask is set. Async-signal-safe, so usable in `pre_exec`.
    pub fn apply(&self) {
        for sig in SIGNALS {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let want_ignored = self.ignored & bit(sig) != 0;
            match disposition(sig) {
                Some(libc::SIG_IGN) if !want_ignored => set_disposition(sig, libc::SIG_DFL),
                Some(h) if want_ignored && h != libc::SIG_IGN => {
                    set_disposition(sig, libc::SIG_IGN)
                }
                _ => {}
            }
        }
        // SAFETY: all zeroes is a valid sigset_t, and sigemptyset initialises it anyway.
        let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `mask` is a live, writable sigset_t.
        unsafe { libc::sigemptyset(&mut mask) };
        for sig in SIGNALS {
            if self.blocked & bit(sig) != 0 {
                // SAFETY: as above; a bad `sig` only returns -1.
                unsafe { libc::sigaddset(&mut mask, sig) };
            }
        }
        // SAFETY: `mask` is an initialised set, the old mask is not asked for.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut()) };
    }
}

static RECORDED: AtomicBool = AtomicBool::new(false);
static IGNORED: AtomicU64 = AtomicU64::new(0);
static BLOCKED: AtomicU64 = AtomicU64::new(0);

/// Record the process's signal state; called from `.init_array` by [`record_signals_at_start!`],
/// before the Rust runtime ignores SIGPIPE.
pub extern "C" fn record_at_start() {
    let state = SignalState::current();
    IGNORED.store(state.ignored, Ordering::Relaxed);
    BLOCKED.store(state.blocked, Ordering::Relaxed);
    RECORDED.store(true, Ordering::Release);
}

/// The state recorded at start, if the binary records it.
pub fn at_start() -> Option<SignalState> {
    RECORDED.load(Ordering::Acquire).then(|| SignalState {
        ignored: IGNORED.load(Ordering::Relaxed),
        blocked: BLOCKED.load(Ordering::Relaxed),
    })
}

/// Put back the state berth was started with, just before an exec. Without a record (a
/// binary that does not use [`record_signals_at_start!`]) SIGPIPE goes back to its default,
/// as `std::process::Command` does, and the rest is left as it is. Async-signal-safe.
pub fn restore_for_exec() {
    match at_start() {
        Some(state) => state.apply(),
        None => set_disposition(libc::SIGPIPE, libc::SIG_DFL),
    }
}

/// Record the signal state in an `.init_array` entry of the binary, which the C start-up code
/// runs before Rust's (which ignores SIGPIPE). Use once, in each binary that execs a command.
#[macro_export]
macro_rules! record_signals_at_start {
    () => {
        #[used]
        #[link_section = ".init_array"]
        static RECORD_SIGNALS_AT_START: extern "C" fn() = $crate::record_signals;
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_restores_dispositions_and_mask() {
        // In a child, so the test harness keeps its own state.
        // SAFETY: the harness is multi-threaded, so the child only calls async-signal-safe
        // functions (sigaction, sigprocmask, the bit tests) and leaves by _exit.
        match unsafe { libc::fork() } {
            0 => {
                let saved = SignalState {
                    ignored: bit(libc::SIGINT),
                    blocked: bit(libc::SIGUSR1),
                };
                set_disposition(libc::SIGPIPE, libc::SIG_IGN);
                set_disposition(libc::SIGINT, libc::SIG_DFL);
                saved.apply();
                let now = SignalState::current();
                let ok = now.ignored & (bit(libc::SIGINT) | bit(libc::SIGPIPE))
                    == bit(libc::SIGINT)
                    && now.blocked == bit(libc::SIGUSR1);
                // SAFETY: _exit is async-signal-safe and runs none of the harness's code.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            pid => {
                let mut status = 0;
                // SAFETY: `status` is a live int the kernel writes; `pid` is our child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert_eq!(status, 0);
            }
        }
    }
}
