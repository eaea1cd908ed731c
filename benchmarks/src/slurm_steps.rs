//! What a container costs per Slurm step: `srun -n2 --container=IMG true` against `srun -n2
//! true`, and the same with 8 tasks on one node (oversubscribed on this 2-core machine), on the
//! local test cluster (tests/slurm/cluster.sh), interleaved, as the non-root test user.
//! Targets: the container adds at most 30% to a step; each extra task on a node adds < 1 ms
//! (the node's container is created once, joining is cheap).

use crate::proc;
use crate::stats::{verdict, Summary};
use nix::fcntl::{Flock, FlockArg};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `slurm` command's options (its defaults); srun-nodes and the suite fill it in.
#[derive(clap::Args)]
pub struct Args {
    /// The SPANK plugin (target/release/libspank_berth.so)
    #[arg(long)]
    pub plugin: PathBuf,
    /// A squashfs image readable by the user
    #[arg(long)]
    pub image: PathBuf,
    /// The non-root user the jobs are submitted as
    #[arg(long, default_value = "berthtest")]
    pub user: String,
    /// Timed rounds (medians need at least 20)
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Untimed warm-up rounds
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
}

/// `srun -N NODES -n TASKS [--container=IMG] true` as the user.
fn srun(conf: &Path, user: &str, case: &Case, image: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        user,
        "--regid",
        user,
        "--init-groups",
        "--",
        "srun",
    ])
    .arg(format!("-N{}", case.nodes))
    .arg(format!("-n{}", case.tasks))
    .args(
        case.container
            .then(|| format!("--container={}", image.display())),
    )
    .arg("true")
    .env("SLURM_CONF", conf)
    .current_dir("/tmp")
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    proc::force_fork(&mut cmd);
    cmd
}

/// One kind of step timed: nodes, tasks, in a container or not.
#[derive(Clone, Copy)]
pub struct Case {
    pub nodes: u32,
    pub tasks: u32,
    pub container: bool,
}

impl Case {
    pub fn label(&self) -> String {
        format!(
            "srun -N{} -n{}{} true",
            self.nodes,
            self.tasks,
            if self.container { " --container" } else { "" }
        )
    }
}

/// The cases timed, in round order: 2 and 8 tasks on one node, plain and in a container.
pub const CASES: [Case; 4] = [
    Case {
        nodes: 1,
        tasks: 2,
        container: false,
    },
    Case {
        nodes: 1,
        tasks: 2,
        container: true,
    },
    Case {
        nodes: 1,
        tasks: 8,
        container: false,
    },
    Case {
        nodes: 1,
        tasks: 8,
        container: true,
    },
];

/// For each node count n, `srun -Nn -nn true` plain then in a container: one task per node.
pub fn node_cases(nodes: &[u32]) -> Vec<Case> {
    nodes
        .iter()
        .flat_map(|&n| {
            [false, true].map(|container| Case {
                nodes: n,
                tasks: n,
                container,
            })
        })
        .collect()
}

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

/// Start the local test cluster of `nodes` nodes (holding the lock), run `f` with its
/// slurm.conf, stop it whatever `f` returned.
pub fn with_cluster<T>(
    plugin: &Path,
    nodes: u32,
    f: impl FnOnce(&Path) -> Result<T, String>,
) -> Result<T, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(
            "run as root: it starts the local test cluster (tests/slurm/cluster.sh)".into(),
        );
    }
    // slurmd and srun load the plugin from their own working directories.
    let plugin = &std::fs::canonicalize(plugin)
        .map_err(|e| format!("the plugin {}: {e}", plugin.display()))?;
    let _lock = lock_cluster()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/slurm/cluster.sh");
    let dir = PathBuf::from(format!("/tmp/berth-bench-slurm-{}", std::process::id()));
    let stop = || {
        let _ = Command::new("bash")
            .arg(&script)
            .arg("stop")
            .arg(&dir)
            .status();
        let _ = std::fs::remove_dir_all(&dir);
    };
    // The cluster's daemons must not become our children (the suite is a subreaper and waits
    // for every child a run leaves): off while starting them, back on after.
    let was = proc::is_subreaper();
    let _ = proc::set_subreaper(false);
    let started = Command::new("bash")
        .arg(&script)
        .args(["start", "-n", &nodes.to_string()])
        .arg(&dir)
        .arg(plugin)
        .output();
    let _ = proc::set_subreaper(was);
    let started = started.map_err(|e| e.to_string())?;
    if !started.status.success() {
        stop();
        return Err(format!(
            "the test cluster did not start: {}",
            String::from_utf8_lossy(&started.stderr)
        ));
    }
    let result = f(&dir.join("slurm.conf"));
    stop();
    result
}

/// Time `cases` interleaved on a running cluster: samples (ms) per case, in order.
pub fn time_cases(a: &Args, conf: &Path, cases: &[Case]) -> Result<Vec<Vec<f64>>, String> {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..a.warmup + a.runs {
        for (i, case) in cases.iter().enumerate() {
            let exit = proc::run_timed(&mut srun(conf, &a.user, case, &a.image))
                .map_err(|e| format!("{}: {e}", case.label()))?;
            if round >= a.warmup {
                samples[i].push(exit.wall.as_secs_f64() * 1e3);
            }
        }
    }
    Ok(samples)
}

/// Start the three-node cluster, time CASES interleaved, stop it.
pub fn measure(a: &Args) -> Result<Vec<Vec<f64>>, String> {
    with_cluster(&a.plugin, 3, |conf| time_cases(a, conf, &CASES))
}

/// `berth-bench srun-nodes`: `srun -N{n} true`, plain and in a container, for each node count,
/// on a test cluster of the largest count; one task per node.
pub fn run_nodes(a: &Args, nodes: &[u32]) -> Result<(), String> {
    let max = nodes
        .iter()
        .copied()
        .max()
        .ok_or("--nodes: give at least one count")?;
    let cases = node_cases(nodes);
    let samples = with_cluster(&a.plugin, max, |conf| time_cases(a, conf, &cases))?;
    let s: Vec<Summary> = samples.iter().map(|v| Summary::of(v)).collect();
    println!(
        "berth-bench srun-nodes: {} timed rounds after {} warm-up, interleaved, on a local {max}-node test cluster",
        a.runs, a.warmup
    );
    println!("  image {}", a.image.display());
    println!("  the nodes are network namespaces sharing this machine's {} cores: {max} nodes oversubscribe it", num_cpus());
    println!();
    println!("  step wall time (ms), median [p10-p90]   plain              container          ratio   added/node");
    for (k, n) in nodes.iter().enumerate() {
        let (p, c) = (&s[2 * k], &s[2 * k + 1]);
        println!(
            "  srun -N{n:<3} true                     {:>6.1} [{:.0}-{:.0}]   {:>6.1} [{:.0}-{:.0}]   {:>5.2}   {:>6.1} ms",
            p.median,
            p.p10,
            p.p90,
            c.median,
            c.p10,
            c.p90,
            c.median / p.median,
            (c.median - p.median) / *n as f64
        );
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub fn run(a: &Args) -> Result<(), String> {
    let samples = measure(a)?;
    let cases = CASES;
    let s: Vec<Summary> = samples.iter().map(|v| Summary::of(v)).collect();
    println!("berth-bench slurm: {} timed rounds after {} warm-up, interleaved, on the local 3-node cluster", a.runs, a.warmup);
    println!("  image {}", a.image.display());
    println!();
    println!("  step wall time (ms)              median      p10      p90");
    for (case, x) in cases.iter().zip(&s) {
        println!(
            "  {:<30} {:>8.1} {:>8.1} {:>8.1}",
            case.label(),
            x.median,
            x.p10,
            x.p90
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
        verdict(overhead <= 0.30)
    );
    println!("  container added to an 8-task step  {added8:>7.1} ms");
    println!(
        "  per extra task on the node         {per_task:>7.2} ms           target < 1 ms   {}",
        verdict(per_task < 1.0)
    );
    Ok(())
}
