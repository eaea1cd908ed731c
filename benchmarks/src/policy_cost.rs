//! What the site policy costs on the per-rank path: the same warm extract-mode start-up with
//! an empty policy and with a realistic one (site mounts, devices, host MPI injection),
//! interleaved, as a ratio. Target: within 1.1x.

use crate::proc;
use crate::stats::{verdict, Summary};
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[derive(clap::Args)]
pub struct Args {
    /// The berth launcher binary
    #[arg(long)]
    pub berth: PathBuf,
    /// A squashfs image (ideally one with an MPI the policy injects over)
    #[arg(long)]
    pub image: PathBuf,
    /// The site policy to measure (e.g. benchmarks/site-policy.toml)
    #[arg(long)]
    pub policy: PathBuf,
    /// Timed runs of each (medians need at least 20)
    #[arg(long, default_value_t = 30)]
    pub runs: usize,
    /// Untimed warm-up rounds before the timed ones
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
}

const TARGET: f64 = 1.1;

fn berth(a: &Args, policy: &std::path::Path) -> Command {
    let mut cmd = Command::new(&a.berth);
    cmd.args(["run", "--no-entrypoint", "--no-join", "--mode", "extract"])
        .arg(&a.image)
        .args(["--", "true"])
        .env("BERTH_CONFIG", policy)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    proc::force_fork(&mut cmd);
    cmd
}

pub fn run(a: &Args) -> Result<(), String> {
    if nix::unistd::geteuid().is_root() {
        return Err(
            "run as a non-root user, e.g. `runuser -u berthtest -- berth-bench policy ...`".into(),
        );
    }
    let empty = std::env::temp_dir().join(format!("berth-bench-empty-{}.toml", std::process::id()));
    std::fs::write(&empty, "# empty policy\n")
        .map_err(|e| format!("cannot write {}: {e}", empty.display()))?;
    // The policy must be valid, and the run must work with it, before anything is timed.
    let check = Command::new(&a.berth)
        .args(["policy", "check"])
        .arg(&a.policy)
        .output()
        .map_err(|e| e.to_string())?;
    if !check.status.success() {
        return Err(format!(
            "policy check failed: {}",
            String::from_utf8_lossy(&check.stderr).trim()
        ));
    }
    let mut samples = [Vec::new(), Vec::new()];
    for round in 0..a.warmup + a.runs {
        for (i, policy) in [&empty, &a.policy].into_iter().enumerate() {
            let exit = proc::run_timed(&mut berth(a, policy))?;
            proc::reap_orphans(proc::ORPHAN_TIMEOUT);
            if round >= a.warmup {
                samples[i].push(exit.wall.as_secs_f64() * 1e3);
            }
        }
    }
    let _ = std::fs::remove_file(&empty);
    let (e, p) = (Summary::of(&samples[0]), Summary::of(&samples[1]));
    let ratio = p.median / e.median;
    println!("berth-bench policy");
    println!("  image   {}", a.image.display());
    println!("  policy  {}", a.policy.display());
    println!(
        "  {} timed runs each after {} warm-up rounds, interleaved",
        a.runs, a.warmup
    );
    println!();
    println!("berth run --mode extract -- true (ms)   median      p10      p90");
    println!(
        "  empty policy                      {:>9.2} {:>8.2} {:>8.2}",
        e.median, e.p10, e.p90
    );
    println!(
        "  site policy                       {:>9.2} {:>8.2} {:>8.2}",
        p.median, p.p10, p.p90
    );
    println!();
    println!(
        "  site / empty                      {:>9.3}   target <= {TARGET}  {}",
        ratio,
        verdict(ratio <= TARGET)
    );
    Ok(())
}
