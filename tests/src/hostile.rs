//! Hostile images: a minimal busybox root with one twist (a symlink that leads out of the
//! image, a FIFO, a link to `/dev/zero`), and decoys on the host that must be left exactly as
//! they were by any run of such an image.
//!
//! Needs root (the tests build images and decoys as root) and `busybox-static`, `mksquashfs`.

use crate::{is_root, user, Run};
use nix::fcntl::{Flock, FlockArg};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The statically linked busybox (package busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets the images provide, as symlinks to /bin/busybox.
const APPLETS: &[&str] = &["sh", "cat", "echo", "true", "ls", "id", "sleep"];

/// A valid image config, so a run that works shows it read the image's own.
pub const IMAGE_JSON: &str = r#"{"schemaVersion":1,"config":{"Env":["HOSTILE_IMAGE=own"]}}"#;

/// Write a minimal root at `dir`: busybox, /etc with root's passwd and group entries, the
/// image config, and the directories berth mounts on.
pub fn minimal_root(dir: &Path) {
    let _ = fs::remove_dir_all(dir);
    for d in [
        "bin", "etc", "tmp", "home", "dev", "proc", "sys", "root", ".berth",
    ] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: run scripts/install-deps.sh (busybox-static)"
    );
    crate::copy_executable(Path::new(BUSYBOX), &dir.join("bin/busybox"));
    for a in APPLETS {
        symlink("busybox", dir.join("bin").join(a)).unwrap();
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
    fs::write(dir.join(".berth/image.json"), IMAGE_JSON).unwrap();
}

/// Replace whatever is at `rel` in the root `dir` by a symlink to `to`.
pub fn link(dir: &Path, rel: &str, to: &str) {
    let p = dir.join(rel);
    remove(&p);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    symlink(to, &p).unwrap();
}

/// Replace whatever is at `rel` in the root `dir` by a FIFO.
pub fn fifo(dir: &Path, rel: &str) {
    let p = dir.join(rel);
    remove(&p);
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

fn remove(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).unwrap(),
        Ok(_) => fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
}

/// Make a squashfs image of `dir` at `out`, readable by the test user.
pub fn squash(dir: &Path, out: &Path) {
    let _ = fs::remove_file(out);
    let st = Command::new("mksquashfs")
        .arg(dir)
        .arg(out)
        .args(["-noappend", "-all-root", "-quiet", "-no-progress"])
        .stdout(Stdio::null())
        .status()
        .expect("run mksquashfs");
    assert!(st.success(), "mksquashfs {} failed", dir.display());
    fs::set_permissions(out, fs::Permissions::from_mode(0o644)).unwrap();
}

/// One entry of a snapshot: kind, mode, mtime and content (file bytes, link target).
type Snapshot = BTreeMap<PathBuf, String>;

/// Names, types, modes, mtimes and contents of everything under `dir` (the directory itself
/// included), without following symlinks.
pub fn snapshot(dir: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    snap(dir, &mut out);
    out
}

fn snap(p: &Path, out: &mut Snapshot) {
    let Ok(m) = fs::symlink_metadata(p) else {
        return;
    };
    let kind = m.file_type();
    let what = if kind.is_symlink() {
        format!("link {:?}", fs::read_link(p).unwrap_or_default())
    } else if kind.is_file() {
        let data = fs::read(p).unwrap_or_default();
        format!("file {} {:?}", data.len(), String::from_utf8_lossy(&data))
    } else if kind.is_dir() {
        "dir".to_string()
    } else {
        format!("special {:o}", m.mode())
    };
    out.insert(
        p.to_path_buf(),
        format!(
            "{what} mode {:o} uid {} mtime {}.{}",
            m.mode(),
            m.uid(),
            m.mtime(),
            m.mtime_nsec()
        ),
    );
    if kind.is_dir() {
        let mut names: Vec<_> = fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        for n in names {
            snap(&n, out);
        }
    }
}

/// What differs between two snapshots, one short line per path.
pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (p, b) in before {
        match after.get(p) {
            None => out.push(format!("removed {}", p.display())),
            Some(a) if a != b => out.push(format!("changed {}", p.display())),
            _ => {}
        }
    }
    for p in after.keys() {
        if !before.contains_key(p) {
            out.push(format!("created {}", p.display()));
        }
    }
    out
}

/// Names in the host's /tmp that a link such as `/etc -> /tmp` or `/dev -> /tmp` would make
/// berth create there. Only these are watched: the rest of /tmp belongs to other tests.
const TMP_WATCHED: &[&str] = &[
    "passwd",
    "group",
    "hosts",
    "resolv.conf",
    "berthtest",
    "null",
    "zero",
    "full",
    "random",
    "urandom",
    "tty",
    "pts",
    "shm",
    "ptmx",
    "fd",
    "stdin",
    "stdout",
    "stderr",
    "data",
    "work",
];

/// The places a hostile image aims at: the test user's real home (with a marker tree and
/// `results.dat`), a decoy directory in /tmp, and the watched names in /tmp itself.
pub struct Decoys {
    pub home: PathBuf,
    pub tmp: PathBuf,
    baseline: Snapshot,
    /// Held while the decoys are in use: the home is shared with other test processes.
    _lock: Flock<fs::File>,
}

pub const DECOY_CONTENT: &str = "decoy results: berth must not touch this\n";

impl Decoys {
    pub fn set_up() -> Decoys {
        assert!(is_root(), "the hostile-image tests need root (tests/run)");
        let u = user();
        let tmp = PathBuf::from(format!("/tmp/berth-hostile-decoy-{}", std::process::id()));
        // One test process at a time plants and watches the home (the wait is bounded too):
        // another's decoys would show up as changes.
        let mut file = fs::File::create("/tmp/berth-hostile-decoys.lock").unwrap();
        let start = Instant::now();
        let lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => break lock,
                Err((again, _)) => file = again,
            }
            assert!(
                start.elapsed() < Duration::from_secs(1800),
                "another test process holds the hostile-image decoys"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut d = Decoys {
            home: u.home.clone(),
            tmp,
            baseline: Snapshot::new(),
            _lock: lock,
        };
        d.plant();
        d.baseline = d.snapshot();
        d
    }

    /// The marker trees, owned by the test user (so a write through a link would succeed).
    fn plant(&self) {
        let u = user();
        let _ = fs::create_dir_all(&self.tmp);
        for base in [&self.home, &self.tmp] {
            let files = [
                (base.join("results.dat"), DECOY_CONTENT),
                (base.join("decoy/notes.txt"), "notes\n"),
                (base.join("decoy/deeper/more.txt"), "more\n"),
            ];
            for (p, content) in files {
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                if fs::read_to_string(&p).ok().as_deref() != Some(content) {
                    fs::write(&p, content).unwrap();
                }
            }
            for p in [
                base.to_path_buf(),
                base.join("results.dat"),
                base.join("decoy"),
                base.join("decoy/notes.txt"),
                base.join("decoy/deeper"),
                base.join("decoy/deeper/more.txt"),
            ] {
                chown(&p, Some(u.uid), Some(u.gid)).unwrap();
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut s = snapshot(&self.home);
        s.extend(snapshot(&self.tmp));
        for name in TMP_WATCHED {
            snap(&Path::new("/tmp").join(name), &mut s);
        }
        s
    }

    /// What changed since the baseline. When anything did, put the decoys back (remove what
    /// was created, rewrite the markers) and take a new baseline, so one escape is reported
    /// once and does not spill into the next case.
    pub fn changes(&mut self) -> Vec<String> {
        let now = self.snapshot();
        let d = diff(&self.baseline, &now);
        if !d.is_empty() {
            for p in now.keys().rev() {
                if !self.baseline.contains_key(p) {
                    remove(p);
                }
            }
            self.plant();
            self.baseline = self.snapshot();
        }
        d
    }
}

impl Drop for Decoys {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.tmp);
        for p in ["results.dat", "decoy"] {
            remove(&self.home.join(p));
        }
    }
}

/// The bound on one run: not a timing assertion, only what keeps a hang from hanging the
/// suite. A run that needs it has failed.
pub const BOUND: Duration = Duration::from_secs(60);

/// Run `cmd` with its output in files (no pipe can fill), killing it after `limit`. Returns
/// the run and whether it had to be killed.
pub fn run_bounded(mut cmd: Command, out_dir: &Path, limit: Duration) -> (Run, bool) {
    use std::os::unix::process::ExitStatusExt;
    let (out_path, err_path) = (out_dir.join("run.stdout"), out_dir.join("run.stderr"));
    cmd.stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap());
    let mut child = cmd.spawn().expect("spawn");
    let start = Instant::now();
    let mut killed = false;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > limit {
            killed = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    (
        Run {
            code: status.code(),
            signal: status.signal(),
            stdout: read(&out_path),
            stderr: read(&err_path),
        },
        killed,
    )
}
