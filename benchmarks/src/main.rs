//! berth-bench: berth measured side by side with its peers, in one run, as ratios.

mod image_import;
mod mount_mode;
mod policy_cost;
mod policy_parse;
mod proc;
mod slurm_steps;
mod startup;
mod stats;
mod suite;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "berth-bench",
    version,
    about = "Benchmarks for berth, side by side with its peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start-up time and peak RSS of `berth run` vs ch-run, and image read throughput
    Startup(startup::Args),
    /// `berth-image import` from a local registry vs skopeo copy + umoci unpack + mksquashfs
    Import(image_import::Args),
    /// What a container costs per Slurm step, on the local test cluster (run as root)
    Slurm(slurm_steps::Args),
    /// `srun -N{1,2,4,8,16} true`, plain vs in a container, on a local test cluster (run as root)
    SrunNodes {
        /// The SPANK plugin (target/release/libspank_berth.so)
        #[arg(long)]
        plugin: PathBuf,
        /// A squashfs image readable by the user
        #[arg(long)]
        image: PathBuf,
        /// The non-root user the jobs are submitted as
        #[arg(long, default_value = "berthtest")]
        user: String,
        /// Node counts; the cluster has the largest
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
        nodes: Vec<u32>,
        /// Timed rounds
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Untimed warm-up rounds
        #[arg(long, default_value_t = 2)]
        warmup: usize,
    },
    /// Every workload natively and in the container, alternately, and a report (Markdown, JSON, SVG)
    Suite(Box<suite::Args>),
    /// What parsing the site policy costs as it grows: 100 vs 10,000 site mounts, in process
    PolicyParse {
        /// Timed loads of each policy
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Mount mode (berth's FUSE server and image keeper) vs ch-run IMG.sqsh and extract mode
    MountMode(mount_mode::Args),
    /// (internal) the timed part of mount-mode's I/O rows, run inside the container
    #[command(hide = true)]
    MountModeProbe {
        /// walk, stat or read
        what: String,
        path: PathBuf,
        #[arg(default_value_t = 1)]
        readers: usize,
    },
    /// What a site policy costs on the per-rank start-up path (empty vs given policy)
    Policy(policy_cost::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Startup(a) => startup::run(&a),
        Cmd::Import(a) => image_import::run(&a),
        Cmd::Slurm(a) => slurm_steps::run(&a),
        Cmd::SrunNodes {
            plugin,
            image,
            user,
            nodes,
            runs,
            warmup,
        } => slurm_steps::run_nodes(
            &slurm_steps::Args {
                plugin,
                image,
                user,
                runs,
                warmup,
            },
            &nodes,
        ),
        Cmd::Policy(a) => policy_cost::run(&a),
        Cmd::MountMode(a) => mount_mode::run(&a),
        Cmd::MountModeProbe {
            what,
            path,
            readers,
        } => mount_mode::probe(&what, &path, readers),
        Cmd::PolicyParse { runs } => policy_parse::run(&policy_parse::Args { runs: runs.max(1) }),
        Cmd::Suite(s) => suite::run(&s).map(|_| ()),
    };
    if let Err(e) = result {
        eprintln!("berth-bench: {e}");
        std::process::exit(1);
    }
}
