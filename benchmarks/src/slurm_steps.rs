//! What a container costs per Slurm step: `srun -n2 --container=IMG true` against `srun -n2
//! true`, and the same with 8 tasks on one node (oversubscribed on this 2-core machine), on the
//! local test cluster (tests/slurm/cluster.sh), interleaved, as the non-root test user.
//! Targets: the container adds at most 30% to a step; each extra task on a node adds < 1 ms
//! (the node's container is created once, joining is cheap).

use crate::proc;
use crate::stats::Summary;
use nix::fcntl::{Flock, FlockArg};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Args {
    pub plugin: PathBuf,
    pub image: PathBuf,
    pub user: String,
    pub runs: usize,
    pub warmup: usize,
}

fn srun(conf: &Path, user: &str, ntasks: u32, image: Option<&Path>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        user,
        "--regid",
        user,
        "--init-groups",
        "--",
        "srun",
        "-N1",
    ])
    .arg(format!("-n{ntasks}"))
    .args(image.map(|i| format!("--container={}", i.display())))
    .arg("true")
    .env("SLURM_CONF", conf)
    .current_dir("/tmp")
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    proc::force_fork(&mut cmd);
    cmd
}

/// The cases timed, in round order: (label, tasks, in a container).
pub const CASES: [(&str, u32, bool); 4] = [
    ("srun -n2 true", 2, false),
    ("srun -n2 --container true", 2, true),
    ("srun -n8 true", 8, false),
    ("srun -n8 --container true", 8, true),
];

/// Held (flock, exclusive) by whoever runs the test cluster (tests/src/slurm.rs CLUSTER_LOCK):
/// it owns a fixed bridge and ports, so one at a time on the machine.
pub const CLUSTER_LOCK: &str = "/run/berth-test-cluster.lock";

/// Take the cluster lock, waiting for its holder; it is released when the file is dropped.
pub fn lock_cluster() -> Result<Flock<std::fs::File>, String> {
    let lock = std::fs::File::create(CLUSTER_LOCK).map_err(|e| format!("{CLUSTER_LOCK}: {e}"))?;
    eprintln!("berth-bench: waiting for the test cluster lock {CLUSTER_LOCK}");
    Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("flock {CLUSTER_LOCK}: {}", std::io::Error::from(e)))
}

/// Start the cluster (holding the lock until it is stopped), time the cases interleaved, stop
/// it. Returns the samples (ms) per case, in CASES order.
pub fn measure(a: &Args) -> Result<Vec<Vec<f64>>, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(
            "run as root: it starts the local test cluster (tests/slurm/cluster.sh)".into(),
        );
    }
    let _lock = lock_cluster()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/slurm/cluster.sh");
    let dir = PathBuf::from(format!("/tmp/berth-bench-slurm-{}", std::process::id()));
    let started = Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(&dir)
        .arg(&a.plugin)
        .output()
        .map_err(|e| e.to_string())?;
    if !started.status.success() {
        let _ = Command::new("bash")
            .arg(&script)
            .arg("stop")
            .arg(&dir)
            .status();
        return Err(format!(
            "the test cluster did not start: {}",
            String::from_utf8_lossy(&started.stderr)
        ));
    }
    let conf = dir.join("slurm.conf");
    let cases = CASES;
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut failure = None;
    'rounds: for round in 0..a.warmup + a.runs {
        for (i, (label, n, container)) in cases.iter().enumerate() {
            let image = container.then_some(a.image.as_path());
            match proc::run_timed(&mut srun(&conf, &a.user, *n, image)) {
                Ok(exit) if round >= a.warmup => samples[i].push(exit.wall.as_secs_f64() * 1e3),
                Ok(_) => {}
                Err(e) => {
                    failure = Some(format!("{label}: {e}"));
                    break 'rounds;
                }
            }
        }
    }
    let _ = Command::new("bash")
        .arg(&script)
        .arg("stop")
        .arg(&dir)
        .status();
    let _ = std::fs::remove_dir_all(&dir);
    match failure {
        Some(f) => Err(f),
        None => Ok(samples),
    }
}

pub fn run(a: &Args) -> Result<(), String> {
    let samples = measure(a)?;
    let cases = CASES;
    let s: Vec<Summary> = samples.iter().map(|v| Summary::of(v)).collect();
    println!("berth-bench slurm: {} timed rounds after {} warm-up, interleaved, on the local 3-node cluster", a.runs, a.warmup);
    println!("  image {}", a.image.display());
    println!();
    println!("  step wall time (ms)              median      p10      p90");
    for ((label, _, _), x) in cases.iter().zip(&s) {
        println!(
            "  {label:<30} {:>8.1} {:>8.1} {:>8.1}",
            x.median, x.p10, x.p90
        );
    }
    let added2 = s[1].median - s[0].median;
    let added8 = s[3].median - s[2].median;
    let overhead = added2 / s[0].median;
    let per_task = (added8 - added2) / 6.0;
    println!();
    println!(
        "  container added to a 2-task step   {added2:>7.1} ms = {:>5.1}%   target <= 30%   {}",
        overhead * 100.0,
        if overhead <= 0.30 { "PASS" } else { "MISS" }
    );
    println!("  container added to an 8-task step  {added8:>7.1} ms");
    println!(
        "  per extra task on the node         {per_task:>7.2} ms           target < 1 ms   {}",
        if per_task < 1.0 { "PASS" } else { "MISS" }
    );
    Ok(())
}
