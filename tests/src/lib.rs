//! Test harness for berth's integration tests: real squashfs images, real user namespaces, a
//! real non-root user, real Open MPI.
//!
//! The tests run as root (CI does) and start every `berth` as the unprivileged test user
//! (`berthtest`, or `$BERTH_TEST_USER`) through `setpriv`, with its supplementary groups. When
//! the tests themselves run as a non-root user, berth runs as that user directly.
//!
//! Prerequisites are made by `tests/run` (the README's test command): the test user, the demo
//! image, the `berth` binary. A missing prerequisite fails the test with a message saying so;
//! nothing is skipped silently.

pub mod aptrepo;
pub mod hostile;
pub mod openlava;
pub mod registry;
pub mod sif;
pub mod slurm;

use std::fs;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

fn getent(db: &str, key: &str) -> Option<Vec<String>> {
    let out = Command::new("getent").args([db, key]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(':')
            .map(String::from)
            .collect(),
    )
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The unprivileged user the launcher runs as.
pub fn user() -> &'static TestUser {
    static USER: OnceLock<TestUser> = OnceLock::new();
    USER.get_or_init(|| {
        let name = if is_root() {
            std::env::var("BERTH_TEST_USER").unwrap_or_else(|_| "berthtest".into())
        } else {
            std::env::var("USER").expect("USER is set")
        };
        let pw = getent("passwd", &name).unwrap_or_else(|| {
            panic!("test user {name} does not exist: run tests/run as root (it creates it)")
        });
        TestUser {
            uid: pw[2].parse().unwrap(),
            gid: pw[3].parse().unwrap(),
            home: PathBuf::from(&pw[5]),
            name,
        }
    })
}

/// A supplementary group of the test user that is not its primary group (made by tests/run).
pub const TEST_GROUP: &str = "berthgrp";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A directory `/tmp/<prefix>-<pid>` for this test process's copies of the programs under
/// test, traversable by every user (the checkout may be under /root, which the test user
/// cannot enter). A test binary has no teardown hook, so each one first removes the
/// directories that earlier, finished test processes left under the same prefix.
pub fn per_process_dir(prefix: &str) -> PathBuf {
    let mine = std::process::id();
    if let Ok(entries) = fs::read_dir("/tmp") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .and_then(|rest| rest.strip_prefix('-'))
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != mine && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = PathBuf::from(format!("/tmp/{prefix}-{mine}"));
    let _ = fs::create_dir_all(&dir);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn shared_bin_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| per_process_dir("berth-test-bin"))
}

/// Copy a program for the tests to run. The copy is made by `cp`, not by this process: a write
/// fd of ours would be inherited by every child another test thread forks meanwhile, and exec
/// of the copy would then fail with ETXTBSY ("Text file busy").
pub fn copy_executable(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        st.success(),
        "cannot copy {} to {}",
        from.display(),
        to.display()
    );
}

/// The `berth` binary under test, copied where the test user can run it.
pub fn berth_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let built = match std::env::var_os("BERTH_BIN") {
            Some(p) => PathBuf::from(p),
            None => {
                let target = std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| workspace_root().join("target"));
                target.join("debug/berth")
            }
        };
        assert!(
            built.exists(),
            "{} is missing: run tests/run (it builds berth first)",
            built.display()
        );
        let copy = shared_bin_dir().join("berth");
        crate::copy_executable(&built, &copy);
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
}

/// The demo image: Debian 12 minbase + Open MPI + test programs, built by
/// tests/images/build-demo.sh into `$BERTH_IMAGE_CACHE` (default /var/cache/berth-test).
pub fn demo_image() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("BERTH_DEMO_IMAGE")
            .unwrap_or_else(|_| "/var/cache/berth-test/demo.sqsh".into()),
    );
    assert!(
        p.exists(),
        "demo image {} is missing: run tests/run as root (it builds it)",
        p.display()
    );
    p
}

/// A per-test world: a state directory (BERTH_STATE_DIR) and a work directory owned by the
/// test user, removed at the end.
pub struct Sandbox {
    pub root: PathBuf,
    pub state: PathBuf,
    pub work: PathBuf,
}

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
        let root = PathBuf::from(format!("/tmp/berth-tests/{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let _ = fs::set_permissions("/tmp/berth-tests", fs::Permissions::from_mode(0o1777));
        let u = user();
        let (state, work) = (root.join("state"), root.join("work"));
        for d in [&root, &state, &work] {
            let _ = fs::create_dir_all(d);
            if is_root() {
                chown(d, Some(u.uid), Some(u.gid)).unwrap();
            }
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        Sandbox { root, state, work }
    }

    /// `berth ARGS` as the test user, in the work directory, with a small clean environment.
    pub fn berth(&self, args: &[&str]) -> Command {
        let mut argv = vec![berth_bin().to_string_lossy().into_owned()];
        argv.extend(args.iter().map(|s| s.to_string()));
        self.as_user(&argv)
    }

    /// `berth run FLAGS <demo image> -- COMMAND` as the test user.
    pub fn berth_demo(&self, flags: &[&str], command: &[&str]) -> Command {
        let image = demo_image();
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend([image.to_str().unwrap(), "--"]);
        args.extend_from_slice(command);
        self.berth(&args)
    }

    /// Any command as the test user. With `BERTH_TEST_WRAP` set (a program such as the
    /// `enosys` wrapper), a command that runs berth (or another binary under test, directly,
    /// through mpirun or a shell) runs under it, and so does every berth it starts; host
    /// tools alone (a setuid fusermount3) run as they are.
    pub fn as_user(&self, argv: &[String]) -> Command {
        let u = user();
        let wrapped: Vec<String>;
        let bins = shared_bin_dir().to_string_lossy().into_owned();
        let argv = match std::env::var("BERTH_TEST_WRAP") {
            Ok(wrap) if !wrap.is_empty() && argv.iter().any(|a| a.contains(&bins)) => {
                wrapped = std::iter::once(wrap).chain(argv.iter().cloned()).collect();
                &wrapped[..]
            }
            _ => argv,
        };
        let mut cmd = if is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                &u.name,
                "--regid",
                &u.name,
                "--init-groups",
                "--",
            ]);
            c.args(argv);
            c
        } else {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        };
        cmd.env_clear()
            .env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("BERTH_STATE_DIR", &self.state)
            // Image keepers wait 2 s for the next run (60 by default): long enough for a
            // test's runs in a row to share one, short enough that leftover checks see it go.
            .env("BERTH_IMAGE_IDLE", "2")
            .current_dir(&self.work)
            .stdin(Stdio::null());
        cmd
    }

    /// Write a file the test user owns.
    pub fn user_file(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.work.join(name);
        fs::write(&p, content).unwrap();
        if is_root() {
            chown(&p, Some(user().uid), Some(user().gid)).unwrap();
        }
        p
    }

    /// Live processes started for this sandbox (they inherit its BERTH_STATE_DIR), e.g. a
    /// squashfuse server or a keeper.
    pub fn processes(&self) -> Vec<(i32, String)> {
        let marker = format!("BERTH_STATE_DIR={}", self.state.display());
        live_processes(user().uid)
            .into_iter()
            .filter(|(pid, _)| {
                let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes())
            })
            .collect()
    }

    /// Entries in the state directory other than the ones berth keeps by design.
    pub fn state_entries(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.state, &self.state, &mut out);
        out.sort();
        out
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let rel = e
            .path()
            .strip_prefix(base)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // Do not descend into unpacked images.
        if e.path().is_dir() && !rel.starts_with("images/") {
            walk(base, &e.path(), out);
        }
        out.push(rel);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new("rm").arg("-rf").arg(&self.root).status();
    }
}

pub struct Run {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    /// Panic with everything useful when a run that should work did not.
    pub fn expect_ok(self, what: &str) -> Run {
        assert!(
            self.ok(),
            "{what}: exit {:?} signal {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.signal,
            self.stdout,
            self.stderr
        );
        self
    }
}

pub fn run(mut cmd: Command) -> Run {
    use std::os::unix::process::ExitStatusExt;
    let out: Output = cmd.output().expect("spawn");
    Run {
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Live (non-zombie) processes of `uid`, as (pid, command line).
pub fn live_processes(uid: u32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(meta) = fs::metadata(e.path()) else {
            continue;
        };
        if meta.uid() != uid {
            continue;
        }
        // PID 1 here reaps orphans lazily: a zombie is not a leftover.
        let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        if state == "Z" || state == "X" || state.is_empty() {
            continue;
        }
        let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        out.push((pid, cmdline));
    }
    out
}

/// Wait (bounded) until `cond` holds; returns whether it did. Not a timing assertion: the
/// bound only keeps a broken run from hanging.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// The processes whose command line mentions `marker` (the tests put a unique marker in the
/// commands they start).
pub fn processes_with(marker: &str) -> Vec<(i32, String)> {
    live_processes(user().uid)
        .into_iter()
        .filter(|(_, c)| c.contains(marker))
        .collect()
}

/// mpirun options that force Open MPI's shared-memory transport with its CMA single copy,
/// the path that needs the ranks in one user namespace.
pub const MPI_SHM_CMA: &[&str] = &[
    "--mca",
    "btl",
    "self,vader",
    "--mca",
    "btl_vader_single_copy_mechanism",
    "cma",
];

/// The argument vector of `mpirun -np 2 MPIRUN_ARGS berth run BERTH_ARGS <demo image> --
/// COMMAND`.
pub fn mpirun_argv(mpirun_args: &[&str], berth_args: &[&str], command: &[&str]) -> Vec<String> {
    let mut argv: Vec<String> = ["mpirun", "-np", "2"]
        .iter()
        .chain(mpirun_args)
        .map(|s| s.to_string())
        .collect();
    argv.push(berth_bin().to_string_lossy().into_owned());
    argv.push("run".into());
    argv.extend(berth_args.iter().map(|s| s.to_string()));
    argv.push(demo_image().to_string_lossy().into_owned());
    argv.push("--".into());
    argv.extend(command.iter().map(|s| s.to_string()));
    argv
}

/// The `rank ...` lines of a two-rank run's output; asserts there are two.
pub fn two_ranks(stdout: &str) -> Vec<&str> {
    let ranks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("rank ")).collect();
    assert_eq!(ranks.len(), 2, "{stdout}");
    ranks
}

/// The names in `dir`, sorted; panics when it cannot be read.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Write `text` as the site policy `berth.toml` in the sandbox's `etc-berth` (mode 0755);
/// returns its path, for `BERTH_CONFIG`.
pub fn policy_file(sb: &Sandbox, text: &str) -> PathBuf {
    let dir = sb.root.join("etc-berth");
    fs::create_dir_all(&dir).unwrap();
    let p = dir.join("berth.toml");
    fs::write(&p, text).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    p
}
