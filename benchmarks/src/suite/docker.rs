//! The Docker column: the same root filesystem as the bench image (`docker import` of its
//! unpacked tree), run with `docker run --rm --network none` as the benchmark user, beside
//! native and berth, as the 2016 study compared native with Docker. Optional: without a daemon
//! (`docker info` fails) every Docker row says "NOT RUN: no docker daemon" and the rest goes on.
//! benchmarks/run-suite.sh starts a daemon of its own when it can (see there).

use super::exec::Ctx;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

pub struct Docker {
    /// The imported image's tag.
    pub tag: String,
    /// `UID:GID` the containers run as (the benchmark user).
    pub user: String,
    /// The daemon's version, for the report.
    pub version: String,
}

/// The reason every Docker row gives when there is no daemon.
pub const NO_DAEMON: &str = "not run: no docker daemon";

/// `docker` with the suite's environment (DOCKER_HOST passes through, so a test can point it
/// at a socket that does not exist).
pub fn cli() -> Command {
    let mut c = Command::new("docker");
    c.stdin(Stdio::null());
    c
}

/// Find the daemon and import the bench image's tree once (tagged by the tree's size and
/// mtime of the squashfs, so a rebuilt image is imported again). Err: why there is no column.
pub fn prepare(ctx: &Ctx) -> Result<Docker, String> {
    let info = cli()
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    let version = match info {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            return Err(format!("{NO_DAEMON} (`docker version`: {})", last.trim()));
        }
        Err(e) => return Err(format!("{NO_DAEMON} (no docker CLI: {e})")),
    };
    let meta = std::fs::metadata(&ctx.image)
        .map_err(|e| format!("not run: no image for Docker: {}: {e}", ctx.image.display()))?;
    let tag = format!("berth-bench:{}-{}", meta.size(), meta.mtime());
    import_tree(&ctx.rootfs, &tag, &[])?;
    let user = match &ctx.user {
        Some(u) => format!("{}:{}", u.uid, u.gid),
        None => format!(
            "{}:{}",
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw()
        ),
    };
    Ok(Docker { tag, user, version })
}

/// `tar -C tree -c . | docker import - TAG` unless TAG exists; `extra`: more `tar` arguments.
pub fn import_tree(tree: &Path, tag: &str, extra: &[&str]) -> Result<(), String> {
    let have = cli()
        .args(["image", "inspect", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if matches!(have, Ok(s) if s.success()) {
        return Ok(());
    }
    eprintln!(
        "berth-bench suite: docker import {} as {tag}",
        tree.display()
    );
    let script = format!(
        "set -o pipefail; tar -C \"$1\" --exclude ./.complete -cf - . {} | docker import - \"$2\" >/dev/null",
        extra.join(" ")
    );
    let out = Command::new("bash")
        .args(["-c", &script, "import"])
        .arg(tree)
        .arg(tag)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("bash: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker import failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Docker {
    /// `docker run --rm --network none -u UID:GID [--ipc host] -v DIR:DIR... -w CWD TAG cmd...`:
    /// host IPC only where MPI ranks share memory; directories bind-mounted at the same path.
    pub fn run(
        &self,
        ipc_host: bool,
        binds: &[(&Path, &str)],
        cwd: Option<&Path>,
        command: &[OsString],
    ) -> Command {
        self.run_image(&self.tag, ipc_host, binds, cwd, command)
    }

    /// The same, of another image.
    pub fn run_image(
        &self,
        tag: &str,
        ipc_host: bool,
        binds: &[(&Path, &str)],
        cwd: Option<&Path>,
        command: &[OsString],
    ) -> Command {
        let mut c = cli();
        c.args(["run", "--rm", "--network", "none", "-u", &self.user]);
        if ipc_host {
            c.args(["--ipc", "host"]);
        }
        for (host, inside) in binds {
            c.arg("-v").arg(format!("{}:{}", host.display(), inside));
        }
        if let Some(d) = cwd {
            c.arg("-w").arg(d);
        }
        c.args([
            "-e",
            "HOME=/tmp",
            "-e",
            "OMP_NUM_THREADS=1",
            "-e",
            "OPENBLAS_NUM_THREADS=1",
        ]);
        c.arg(tag).args(command);
        c
    }
}
