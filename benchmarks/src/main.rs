//! berth-bench: berth measured side by side with its peers, in one run, as ratios.

mod image_import;
mod policy_cost;
mod proc;
mod slurm_steps;
mod startup;
mod stats;

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
    Startup {
        /// The berth launcher binary
        #[arg(long)]
        berth: PathBuf,
        /// Charliecloud's ch-run (the peer)
        #[arg(long, default_value = "ch-run")]
        ch_run: PathBuf,
        /// A squashfs image
        #[arg(long)]
        image: PathBuf,
        /// The same image unpacked into a directory (for `ch-run DIR`)
        #[arg(long)]
        rootfs: PathBuf,
        /// Timed runs of each command (medians need at least 20)
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Untimed warm-up rounds before the timed ones
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Repetitions of the read-throughput test per mode
        #[arg(long, default_value_t = 3)]
        read_reps: usize,
        /// Print the figures as JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// `berth-image import` from a local registry vs skopeo copy + umoci unpack + mksquashfs
    Import {
        /// The berth-image binary
        #[arg(long)]
        berth_image: PathBuf,
        /// A rootfs directory to make the image from (e.g. /var/cache/berth-test/demo-rootfs)
        #[arg(long)]
        rootfs: PathBuf,
        /// Timed rounds (each: fresh import, pipeline, re-import, import from cached layers)
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where the layout, caches and outputs go (default: the temp directory)
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// Print the figures as JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// What a container costs per Slurm step, on the local test cluster (run as root)
    Slurm {
        /// The SPANK plugin (target/release/libspank_berth.so)
        #[arg(long)]
        plugin: PathBuf,
        /// A squashfs image readable by the user
        #[arg(long)]
        image: PathBuf,
        /// The non-root user the jobs are submitted as
        #[arg(long, default_value = "berthtest")]
        user: String,
        /// Timed rounds (medians need at least 20)
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Untimed warm-up rounds
        #[arg(long, default_value_t = 2)]
        warmup: usize,
    },
    /// What a site policy costs on the per-rank start-up path (empty vs given policy)
    Policy {
        /// The berth launcher binary
        #[arg(long)]
        berth: PathBuf,
        /// A squashfs image (ideally one with an MPI the policy injects over)
        #[arg(long)]
        image: PathBuf,
        /// The site policy to measure (e.g. benchmarks/site-policy.toml)
        #[arg(long)]
        policy: PathBuf,
        /// Timed runs of each (medians need at least 20)
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Untimed warm-up rounds before the timed ones
        #[arg(long, default_value_t = 3)]
        warmup: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Startup {
            berth,
            ch_run,
            image,
            rootfs,
            runs,
            warmup,
            read_reps,
            json,
        } => startup::run(&startup::Args {
            berth,
            ch_run,
            image,
            rootfs,
            runs,
            warmup,
            read_reps,
            json,
        }),
        Cmd::Import {
            berth_image,
            rootfs,
            runs,
            workdir,
            json,
        } => image_import::run(&image_import::Args {
            berth_image,
            rootfs,
            runs,
            workdir,
            json,
        }),
        Cmd::Slurm {
            plugin,
            image,
            user,
            runs,
            warmup,
        } => slurm_steps::run(&slurm_steps::Args {
            plugin,
            image,
            user,
            runs,
            warmup,
        }),
        Cmd::Policy {
            berth,
            image,
            policy,
            runs,
            warmup,
        } => policy_cost::run(&policy_cost::Args {
            berth,
            image,
            policy,
            runs,
            warmup,
        }),
    };
    if let Err(e) = result {
        eprintln!("berth-bench: {e}");
        std::process::exit(1);
    }
}
