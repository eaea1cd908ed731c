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
        /// Instead: import an image of about GIB GiB from cached layers, streamed and the old
        /// way, and report MB/s (minutes and GiBs of disk; not for CI)
        #[arg(long, value_name = "GIB")]
        big: Option<u64>,
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
    Suite(Box<SuiteArgs>),
    /// What parsing the site policy costs as it grows: 100 vs 10,000 site mounts, in process
    PolicyParse {
        /// Timed loads of each policy
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Mount mode (berth's FUSE server and image keeper) vs ch-run IMG.sqsh and extract mode
    MountMode {
        /// The berth launcher binary
        #[arg(long, default_value = "target/release/berth")]
        berth: PathBuf,
        /// Charliecloud's ch-run (the start-up peer)
        #[arg(long, default_value = "ch-run")]
        ch_run: PathBuf,
        /// The demo image the test image is made from (plus /bench)
        #[arg(long, default_value = "/var/cache/berth-test/demo.sqsh")]
        demo_image: PathBuf,
        /// Where the test image is built once and kept
        #[arg(long, default_value = "/var/tmp/berth-bench/mount-mode")]
        cache_dir: PathBuf,
        /// Timed start-up rounds (medians need at least 20)
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Untimed start-up warm-up rounds
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Timed I/O rounds (after one untimed round)
        #[arg(long, default_value_t = 5)]
        io_runs: usize,
        /// Runs started at once
        #[arg(long, default_value_t = 16)]
        burst: usize,
        /// The image server's block cache (policy's image_cache_mib), for the memory target
        #[arg(long, default_value_t = 64.0)]
        block_cache_mib: f64,
        /// Print the figures as JSON instead of a table
        #[arg(long)]
        json: bool,
    },
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

#[derive(clap::Args)]
struct SuiteArgs {
    /// The berth launcher binary
    #[arg(long, default_value = "target/release/berth")]
    berth: PathBuf,
    /// The benchmark image (benchmarks/images/build-bench.sh)
    #[arg(long, default_value = "/var/cache/berth-bench/bench.sqsh")]
    image: PathBuf,
    /// The same image unpacked (the native side of the I/O workload reads its files)
    #[arg(long, default_value = "/var/cache/berth-bench/bench-rootfs")]
    rootfs: PathBuf,
    /// Where report.md, report.json and report.svg go
    #[arg(long, default_value = "berth-bench-report")]
    out: PathBuf,
    /// Repetitions (each: native then container)
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Untimed warm-up rounds per workload (small problem sizes for Linpack and FEA)
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Workloads to run, comma-separated: linpack,fea,mpi,startup,io,python,large-image,scaling,slurm (default: all)
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// berth's mode for the container side of Linpack, FEA and MPI (I/O and start-up run both);
    /// `mount,extract`: Linpack and FEA run both, as two container variants (MPI the first)
    #[arg(long, default_value = "mount")]
    mode: String,
    /// MPI ranks on the node (Linpack, MPI)
    #[arg(long, default_value_t = 2)]
    ranks: u32,
    /// The non-root user the commands run as when the suite runs as root
    #[arg(long, default_value = "berthtest")]
    user: String,
    /// The hpcc binary (the same path is run inside the image)
    #[arg(long, default_value = "/usr/bin/hpcc")]
    hpcc: String,
    /// HPL problem size N (memory: 8 N^2 bytes over all ranks; choose ~60% of a node's memory on a real node)
    #[arg(long, default_value_t = 5000)]
    hpl_n: u32,
    /// HPL block size NB
    #[arg(long, default_value_t = 192)]
    hpl_nb: u32,
    /// CalculiX's ccx (the same path is run inside the image)
    #[arg(long, default_value = "/usr/bin/ccx")]
    ccx: String,
    /// The generated deck's mesh: NXxNYxNZ C3D20 elements
    #[arg(long, default_value = "60x10x10", value_parser = parse_mesh)]
    fea_mesh: [u32; 3],
    /// A site's ABAQUS command (with --abaqus-input, used instead of CalculiX)
    #[arg(long, env = "BERTH_BENCH_ABAQUS")]
    abaqus: Option<String>,
    /// The ABAQUS input (e.g. the s4b sample), with --abaqus
    #[arg(long, env = "BERTH_BENCH_ABAQUS_INPUT")]
    abaqus_input: Option<PathBuf>,
    /// Ping-pong and allreduce iterations
    #[arg(long, default_value_t = 200000)]
    mpi_iters: u32,
    /// A site policy that injects the host's MPI (default: one made for the host's Open MPI)
    #[arg(long)]
    mpi_policy: Option<PathBuf>,
    /// Start-up runs per repetition (the repetition's figure is their median); also the Slurm rounds
    #[arg(long, default_value_t = 10)]
    startup_runs: usize,
    /// MiB written to the bind-mounted directory
    #[arg(long, default_value_t = 256)]
    io_write_mib: u32,
    /// The SPANK plugin, for the start-up rows under Slurm (local test cluster; root)
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Write an sbatch script that runs this suite on a real node, and exit
    #[arg(long)]
    sbatch: Option<PathBuf>,
    /// Nodes for --sbatch (2 adds MPI rows across two hosts)
    #[arg(long, default_value_t = 1)]
    sbatch_nodes: u32,
    /// Ping-pong and allreduce iterations across two test-cluster nodes (TCP over veth)
    #[arg(long, default_value_t = 5000)]
    mpi_tcp_iters: u32,
    /// GiB of incompressible data in /opt of the large image (first start, extract vs mount vs Docker)
    #[arg(long, default_value_t = 3)]
    large_gib: u32,
    /// Ranks on one node for start-up scaling (`mpirun -np N`, oversubscribed past the cores)
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    scale_ranks: Vec<u32>,
    /// Test-cluster nodes for start-up scaling (`srun -N N`, one task per node)
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    scale_nodes: Vec<u32>,
    /// Redraw DIR/report.svg from DIR/report.json (no measurement) and exit
    #[arg(long, value_name = "DIR")]
    replot: Option<PathBuf>,
}

fn parse_mesh(s: &str) -> Result<[u32; 3], String> {
    let v: Vec<u32> = s
        .split('x')
        .map(|p| p.parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bad mesh '{s}': expected NXxNYxNZ, e.g. 40x8x8"))?;
    match v[..] {
        [x, y, z] if x > 0 && y > 0 && z > 0 => Ok([x, y, z]),
        _ => Err(format!("bad mesh '{s}': expected NXxNYxNZ, e.g. 40x8x8")),
    }
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
            big,
        } => image_import::run(&image_import::Args {
            berth_image,
            rootfs,
            runs,
            workdir,
            json,
            big_gib: big,
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
        Cmd::MountMode {
            berth,
            ch_run,
            demo_image,
            cache_dir,
            runs,
            warmup,
            io_runs,
            burst,
            block_cache_mib,
            json,
        } => mount_mode::run(&mount_mode::Args {
            berth,
            ch_run,
            demo_image,
            cache_dir,
            runs,
            warmup,
            io_runs,
            burst,
            block_cache_mib,
            json,
        }),
        Cmd::MountModeProbe {
            what,
            path,
            readers,
        } => mount_mode::probe(&what, &path, readers),
        Cmd::PolicyParse { runs } => policy_parse::run(&policy_parse::Args { runs: runs.max(1) }),
        Cmd::Suite(s) => {
            let s = *s;
            suite::run(&suite::Args {
                berth: s.berth,
                image: s.image,
                rootfs: s.rootfs,
                out: s.out,
                reps: s.reps,
                warmup: s.warmup,
                only: s.only,
                mode: s.mode,
                ranks: s.ranks,
                user: s.user,
                hpcc: s.hpcc,
                hpl_n: s.hpl_n,
                hpl_nb: s.hpl_nb,
                ccx: s.ccx,
                fea_mesh: s.fea_mesh,
                abaqus: s.abaqus,
                abaqus_input: s.abaqus_input,
                mpi_iters: s.mpi_iters,
                mpi_policy: s.mpi_policy,
                startup_runs: s.startup_runs,
                io_write_mib: s.io_write_mib,
                plugin: s.plugin,
                sbatch: s.sbatch,
                sbatch_nodes: s.sbatch_nodes,
                mpi_tcp_iters: s.mpi_tcp_iters,
                large_gib: s.large_gib,
                scale_ranks: s.scale_ranks,
                scale_nodes: s.scale_nodes,
                replot: s.replot,
            })
            .map(|_| ())
        }
    };
    if let Err(e) = result {
        eprintln!("berth-bench: {e}");
        std::process::exit(1);
    }
}
