//! Temp files and directories that must not outlive an import, also on SIGINT/SIGTERM/SIGHUP.
//!
//! Normal and error paths remove them through [`TempGuard`]'s drop. On a signal, a watcher
//! thread sets [`cancelled`] (the import loops stop at their next step), kills a running
//! mksquashfs, removes every registered path and exits 128+signal.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

static TEMPS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static CANCELLED: AtomicBool = AtomicBool::new(false);
static CHILD: AtomicI32 = AtomicI32::new(0);

pub fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

pub fn set_child(pid: u32) {
    CHILD.store(pid as i32, Ordering::SeqCst);
}

pub fn clear_child() {
    CHILD.store(0, Ordering::SeqCst);
}

fn remove(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Removes its path when dropped (success paths first move the result out of it).
pub struct TempGuard {
    path: PathBuf,
}

impl TempGuard {
    pub fn new(path: PathBuf) -> TempGuard {
        TEMPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.clone());
        TempGuard { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        remove(&self.path);
        TEMPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| p != &self.path);
    }
}

pub fn install_signal_handlers() -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            CANCELLED.store(true, Ordering::SeqCst);
            let child = CHILD.load(Ordering::SeqCst);
            if child > 0 {
                let child = nix::unistd::Pid::from_raw(child);
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            }
            // The main thread may still be creating files for a moment: a few rounds.
            for _ in 0..20 {
                let paths = TEMPS.lock().unwrap_or_else(|e| e.into_inner()).clone();
                paths.iter().for_each(|p| remove(p));
                if paths.iter().all(|p| std::fs::symlink_metadata(p).is_err()) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            eprintln!("berth-image: interrupted; nothing was written");
            std::process::exit(128 + sig);
        }
    });
    Ok(())
}
