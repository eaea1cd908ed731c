//! How the suite runs a command: as the benchmark user (through setpriv when the suite runs as
//! root), in a directory, with a small fixed environment, timed from just before the spawn to
//! its exit; a non-zero exit is an error that says why (the last lines of stderr).

use std::ffi::OsString;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Everything a workload needs to start its runs.
pub struct Ctx {
    /// Some when the suite runs as root: every command runs as this user.
    pub user: Option<User>,
    pub berth: PathBuf,
    pub image: PathBuf,
    pub rootfs: PathBuf,
    /// The suite's scratch directory, owned by the user.
    pub work: PathBuf,
    /// berth's state directory (extract cache), private to this suite run.
    pub state: PathBuf,
    /// An empty site policy: the container runs with berth's defaults, whatever /etc/berth says.
    pub empty_policy: PathBuf,
    /// The first of `modes`: MPI and the checksum checks run in it.
    pub mode: String,
    /// Linpack and FEA run a container variant in each (`--mode mount,extract`).
    pub modes: Vec<String>,
    pub ranks: u32,
    /// The Docker column: the daemon and the imported image, or why there is none.
    pub docker: Result<super::docker::Docker, String>,
}

pub struct Done {
    pub stdout: String,
    pub secs: f64,
}

impl Ctx {
    /// The container sides of Linpack and FEA: berth's modes, then Docker.
    pub fn sides(&self) -> Vec<String> {
        let mut v = self.modes.clone();
        v.push("docker".into());
        v
    }

    /// The Docker daemon and image, or the row's reason ("not run: no docker daemon").
    pub fn docker(&self) -> Result<&super::docker::Docker, String> {
        self.docker.as_ref().map_err(Clone::clone)
    }

    /// `argv` as the benchmark user in `cwd`, BERTH_CONFIG set to `policy` (default: empty).
    pub fn command(&self, argv: &[OsString], cwd: &Path, policy: Option<&Path>) -> Command {
        let mut cmd = match &self.user {
            Some(u) => {
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
                c.env_clear()
                    .env("HOME", &u.home)
                    .env("USER", &u.name)
                    .env("LOGNAME", &u.name)
                    .env("PATH", "/usr/local/bin:/usr/bin:/bin");
                c
            }
            None => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        // Mount mode: a mount of each run's own, as the rows say; a keeper lingering after a
        // run would also be waited for by the suite (a child subreaper) after every command.
        cmd.env("BERTH_IMAGE_IDLE", "0")
            .env("BERTH_STATE_DIR", &self.state)
            .env("BERTH_CONFIG", policy.unwrap_or(&self.empty_policy))
            .env("OMP_NUM_THREADS", "1")
            .env("OPENBLAS_NUM_THREADS", "1")
            .current_dir(cwd)
            .stdin(Stdio::null());
        cmd
    }

    /// `berth run --mode MODE [extra...] IMAGE -- command...`
    pub fn berth_run(&self, mode: &str, extra: &[OsString], command: &[OsString]) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            self.berth.clone().into(),
            "run".into(),
            "--mode".into(),
            mode.into(),
        ];
        v.extend(extra.iter().cloned());
        v.push(self.image.clone().into());
        v.push("--".into());
        v.extend(command.iter().cloned());
        v
    }

    /// `mpirun -np RANKS --mca btl self,vader` (shared memory on one node) followed by `rest`.
    pub fn mpirun(&self, extra: &[&str], rest: Vec<OsString>) -> Vec<OsString> {
        let mut v: Vec<OsString> =
            vec!["mpirun".into(), "-np".into(), self.ranks.to_string().into()];
        v.extend(extra.iter().map(OsString::from));
        v.extend(rest);
        v
    }

    /// A directory in the work area, owned by the user.
    pub fn dir(&self, name: &str) -> Result<PathBuf, String> {
        let d = self.work.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        self.give(&d)?;
        Ok(d)
    }

    /// Hand a file or directory to the user.
    pub fn give(&self, p: &Path) -> Result<(), String> {
        if let Some(u) = &self.user {
            chown(p, Some(u.uid), Some(u.gid))
                .map_err(|e| format!("chown {}: {e}", p.display()))?;
        }
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", p.display()))
    }
}

pub fn os(parts: &[&str]) -> Vec<OsString> {
    parts.iter().map(OsString::from).collect()
}

/// Run to completion, timed; Err(why) when it cannot start or exits non-zero.
pub fn run(mut cmd: Command) -> Result<Done, String> {
    let what = describe(&cmd);
    let t0 = Instant::now();
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let secs = t0.elapsed().as_secs_f64();
    // berth's FUSE server may outlive the command by a moment: reap it outside the timing.
    crate::proc::reap_orphans(crate::proc::ORPHAN_TIMEOUT);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
        let status = match out.status.code() {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_string(),
        };
        return Err(format!("{what}: {status}: {tail}"));
    }
    Ok(Done {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        secs,
    })
}

/// The command as a short string for messages (without the setpriv prefix).
fn describe(cmd: &Command) -> String {
    let mut parts: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if parts[0] == "setpriv" {
        if let Some(i) = parts.iter().position(|p| p == "--") {
            parts.drain(..=i);
        }
    }
    let s = parts.join(" ");
    if s.chars().count() > 160 {
        format!("`{}...`", s.chars().take(160).collect::<String>())
    } else {
        format!("`{s}`")
    }
}
