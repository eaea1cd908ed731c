//! `berth-bench suite`: every workload natively and in the container, alternately (native,
//! container, native, container, ...), N repetitions, and a report (Markdown, JSON, SVG) with
//! the machine described. A workload that cannot run marks its rows with why; the others go on.

mod docker;
mod exec;
mod fea;
mod io;
mod linpack;
mod machine;
mod mpi;
mod plot;
mod python;
mod report;
mod sbatch;
mod scaling;
mod slurm;
mod startup;

use exec::{Ctx, User};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// The berth launcher binary
    #[arg(long, default_value = "target/release/berth")]
    pub berth: PathBuf,
    /// The benchmark image (benchmarks/images/build-bench.sh)
    #[arg(long, default_value = "/var/cache/berth-bench/bench.sqsh")]
    pub image: PathBuf,
    /// The same image unpacked (the native side of the I/O workload reads its files)
    #[arg(long, default_value = "/var/cache/berth-bench/bench-rootfs")]
    pub rootfs: PathBuf,
    /// Where report.md, report.json and report.svg go
    #[arg(long, default_value = "berth-bench-report")]
    pub out: PathBuf,
    /// Repetitions (each: native then container)
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Untimed warm-up rounds per workload (small problem sizes for Linpack and FEA)
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Workloads to run, comma-separated: linpack,fea,mpi,startup,io,python,large-image,scaling,slurm (default: all)
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// berth's mode for the container side of Linpack, FEA and MPI (I/O and start-up run both);
    /// `mount,extract`: Linpack and FEA run both, as two container variants (MPI the first)
    #[arg(long, default_value = "mount")]
    pub mode: String,
    /// MPI ranks on the node (Linpack, MPI)
    #[arg(long, default_value_t = 2)]
    pub ranks: u32,
    /// The non-root user the commands run as when the suite runs as root
    #[arg(long, default_value = "berthtest")]
    pub user: String,
    /// The hpcc binary (the same path is run inside the image)
    #[arg(long, default_value = "/usr/bin/hpcc")]
    pub hpcc: String,
    /// HPL problem size N (memory: 8 N^2 bytes over all ranks; choose ~60% of a node's memory on a real node)
    #[arg(long, default_value_t = 5000)]
    pub hpl_n: u32,
    /// HPL block size NB
    #[arg(long, default_value_t = 192)]
    pub hpl_nb: u32,
    /// CalculiX's ccx (the same path is run inside the image)
    #[arg(long, default_value = "/usr/bin/ccx")]
    pub ccx: String,
    /// The generated deck's mesh: NXxNYxNZ C3D20 elements
    #[arg(long, default_value = "60x10x10", value_parser = parse_mesh)]
    pub fea_mesh: [u32; 3],
    /// A site's ABAQUS command (with --abaqus-input, used instead of CalculiX)
    #[arg(long, env = "BERTH_BENCH_ABAQUS")]
    pub abaqus: Option<String>,
    /// The ABAQUS input (e.g. the s4b sample), with --abaqus
    #[arg(long, env = "BERTH_BENCH_ABAQUS_INPUT")]
    pub abaqus_input: Option<PathBuf>,
    /// Ping-pong and allreduce iterations
    #[arg(long, default_value_t = 200000)]
    pub mpi_iters: u32,
    /// A site policy that injects the host's MPI (default: one made for the host's Open MPI)
    #[arg(long)]
    pub mpi_policy: Option<PathBuf>,
    /// Start-up runs per repetition (the repetition's figure is their median); also the Slurm rounds
    #[arg(long, default_value_t = 10)]
    pub startup_runs: usize,
    /// MiB written to the bind-mounted directory
    #[arg(long, default_value_t = 256)]
    pub io_write_mib: u32,
    /// The SPANK plugin, for the start-up rows under Slurm (local test cluster; root)
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// Write an sbatch script that runs this suite on a real node, and exit
    #[arg(long)]
    pub sbatch: Option<PathBuf>,
    /// Nodes for --sbatch (2 adds MPI rows across two hosts)
    #[arg(long, default_value_t = 1)]
    pub sbatch_nodes: u32,
    /// Ping-pong and allreduce iterations across two test-cluster nodes (TCP over veth)
    #[arg(long, default_value_t = 5000)]
    pub mpi_tcp_iters: u32,
    /// GiB of incompressible data in /opt of the large image (first start, extract vs mount vs Docker)
    #[arg(long, default_value_t = 3)]
    pub large_gib: u32,
    /// Ranks on one node for start-up scaling (`mpirun -np N`, oversubscribed past the cores)
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub scale_ranks: Vec<u32>,
    /// Test-cluster nodes for start-up scaling (`srun -N N`, one task per node)
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub scale_nodes: Vec<u32>,
    /// Redraw DIR/report.svg from DIR/report.json (no measurement) and exit
    #[arg(long, value_name = "DIR")]
    pub replot: Option<PathBuf>,
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

pub const WORKLOADS: [&str; 9] = [
    "linpack",
    "fea",
    "mpi",
    "startup",
    "io",
    "python",
    "large-image",
    "scaling",
    "slurm",
];

/// The workloads with no Docker column: Docker need not be prepared for them alone.
const NO_DOCKER: [&str; 2] = ["scaling", "slurm"];

/// A figure a workload reports per run.
pub struct Metric {
    pub name: String,
    pub unit: &'static str,
    pub higher_is_better: bool,
    /// The target, as a bound on container/native of this metric.
    pub target: Option<Target>,
}

#[derive(Clone, Copy)]
pub struct Target {
    pub ratio: f64,
    pub at_least: bool,
}

impl Metric {
    pub fn new(name: &str, unit: &'static str, higher_is_better: bool) -> Metric {
        Metric {
            name: name.to_string(),
            unit,
            higher_is_better,
            target: None,
        }
    }
    pub fn target(mut self, ratio: f64, at_least: bool) -> Metric {
        self.target = Some(Target { ratio, at_least });
        self
    }
}

/// One run of one side: the metrics' values, in the workload's metric order. `true`: warm-up.
pub type RunFn<'a> = Box<dyn FnMut(bool) -> Result<Vec<f64>, String> + 'a>;

pub struct Variant<'a> {
    pub label: String,
    pub run: RunFn<'a>,
}

impl<'a> Variant<'a> {
    pub fn new(
        label: impl Into<String>,
        run: impl FnMut(bool) -> Result<Vec<f64>, String> + 'a,
    ) -> Self {
        Variant {
            label: label.into(),
            run: Box::new(run),
        }
    }
}

pub struct Workload<'a> {
    pub name: &'static str,
    /// What runs, for the report (sizes, binaries).
    pub detail: String,
    pub metrics: Vec<Metric>,
    pub native: Variant<'a>,
    pub containers: Vec<Variant<'a>>,
    /// Set when the workload cannot run at all (a missing tool, a failed set-up).
    pub setup_error: Option<String>,
    /// Facts checked along the way (binary checksums, results compared), for the report.
    pub notes: Vec<String>,
}

/// One line of the report: a metric, native against one container variant, paired by repetition.
#[derive(Clone)]
pub struct Row {
    pub workload: String,
    pub metric: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub native_label: String,
    pub container_label: String,
    pub native: Vec<f64>,
    pub container: Vec<f64>,
    pub target: Option<Target>,
    /// Why there is no comparison (the row failed or was not run).
    pub failed: Option<String>,
}

/// A number from elsewhere, shown for reference, never measured here.
pub struct Reference {
    pub workload: String,
    pub label: String,
    pub value: f64,
    pub unit: String,
}

/// Run a workload: `warmup` untimed rounds, then `reps` rounds, each running the native side
/// then every container variant (A B A B ...). A side that fails stops; its rows say why.
pub fn measure(mut w: Workload, reps: usize, warmup: usize) -> (Vec<Row>, Vec<String>) {
    eprintln!("berth-bench suite: {}: {}", w.name, w.detail);
    let n = w.containers.len();
    let m = w.metrics.len();
    let mut native: Vec<Vec<f64>> = vec![Vec::new(); m];
    let mut cont: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); m]; n];
    let mut native_err: Option<String> = w.setup_error.clone();
    let mut cont_err: Vec<Option<String>> = vec![None; n];
    for round in 0..warmup + reps {
        if native_err.is_some() || cont_err.iter().all(|e| e.is_some()) {
            break;
        }
        let warm = round < warmup;
        let tag = if warm {
            format!("warm-up {}/{warmup}", round + 1)
        } else {
            format!("rep {}/{reps}", round - warmup + 1)
        };
        eprintln!("berth-bench suite: {} {tag}: {}", w.name, w.native.label);
        match (w.native.run)(warm) {
            Ok(v) if !warm => push(&mut native, v, m, &mut native_err),
            Ok(_) => {}
            Err(e) => native_err = Some(format!("{}: {e}", w.native.label)),
        }
        if native_err.is_some() {
            break;
        }
        for (i, c) in w.containers.iter_mut().enumerate() {
            if cont_err[i].is_some() {
                continue;
            }
            eprintln!("berth-bench suite: {} {tag}: {}", w.name, c.label);
            match (c.run)(warm) {
                Ok(v) if !warm => push(&mut cont[i], v, m, &mut cont_err[i]),
                Ok(_) => {}
                // A side that cannot run here at all (no docker daemon) says so as it is.
                Err(e) if e.starts_with("not run: ") => cont_err[i] = Some(e),
                Err(e) => cont_err[i] = Some(format!("{}: {e}", c.label)),
            }
        }
    }
    let mut rows = Vec::new();
    for (i, c) in w.containers.iter().enumerate() {
        for (k, metric) in w.metrics.iter().enumerate() {
            let failed = native_err.clone().or_else(|| cont_err[i].clone());
            if let Some(f) = &failed {
                eprintln!(
                    "berth-bench suite: {} / {} / {}: FAILED: {f}",
                    w.name, metric.name, c.label
                );
            }
            rows.push(Row {
                workload: w.name.to_string(),
                metric: metric.name.clone(),
                unit: metric.unit.to_string(),
                higher_is_better: metric.higher_is_better,
                native_label: w.native.label.clone(),
                container_label: c.label.clone(),
                native: native[k].clone(),
                container: if failed.is_some() {
                    Vec::new()
                } else {
                    cont[i][k].clone()
                },
                target: metric.target,
                failed,
            });
        }
    }
    let mut notes = vec![format!("{}: {}", w.name, w.detail)];
    notes.extend(w.notes.iter().map(|n| format!("{}: {n}", w.name)));
    (rows, notes)
}

fn push(into: &mut [Vec<f64>], v: Vec<f64>, m: usize, err: &mut Option<String>) {
    if v.len() != m || v.iter().any(|x| !x.is_finite()) {
        *err = Some(format!("a run reported {v:?}, expected {m} finite figures"));
        return;
    }
    for (s, x) in into.iter_mut().zip(v) {
        s.push(x);
    }
}

/// A container side's label: `berth --mode M`, or `docker`.
pub fn side_label(side: &str) -> String {
    match side {
        "docker" => "docker".to_string(),
        mode => format!("berth --mode {mode}"),
    }
}

/// Rows for a workload that was not run at all.
pub fn not_run(
    workload: &str,
    metrics: &[Metric],
    native: &str,
    containers: &[&str],
    why: &str,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for c in containers {
        for m in metrics {
            rows.push(Row {
                workload: workload.to_string(),
                metric: m.name.clone(),
                unit: m.unit.to_string(),
                higher_is_better: m.higher_is_better,
                native_label: native.to_string(),
                container_label: c.to_string(),
                native: Vec::new(),
                container: Vec::new(),
                target: m.target,
                failed: Some(why.to_string()),
            });
        }
    }
    rows
}

fn lookup_user(name: &str) -> Result<User, String> {
    let out = std::process::Command::new("getent")
        .args(["passwd", name])
        .output()
        .map_err(|e| format!("getent: {e}"))?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let f: Vec<&str> = line.split(':').collect();
    if !out.status.success() || f.len() < 7 {
        return Err(format!(
            "user {name} does not exist (scripts/install-deps.sh creates berthtest)"
        ));
    }
    Ok(User {
        name: name.to_string(),
        uid: f[2].parse().map_err(|_| format!("bad uid for {name}"))?,
        gid: f[3].parse().map_err(|_| format!("bad gid for {name}"))?,
        home: PathBuf::from(f[5]),
    })
}

pub fn run(a: &Args) -> Result<i32, String> {
    for w in &a.only {
        if !WORKLOADS.contains(&w.as_str()) {
            return Err(format!(
                "unknown workload '{w}': choose from {}",
                WORKLOADS.join(",")
            ));
        }
    }
    if a.reps == 0 {
        return Err("--reps must be at least 1".into());
    }
    let modes: Vec<String> = a.mode.split(',').map(String::from).collect();
    if modes.iter().any(|m| m != "mount" && m != "extract") {
        return Err(format!(
            "--mode {}: use mount, extract or mount,extract",
            a.mode
        ));
    }
    if let Some(dir) = &a.replot {
        return replot(a, dir);
    }
    if let Some(path) = &a.sbatch {
        sbatch::write(a, path)?;
        eprintln!(
            "berth-bench suite: wrote {} (submit it with sbatch)",
            path.display()
        );
        return Ok(0);
    }
    let want = |w: &str| a.only.is_empty() || a.only.iter().any(|o| o == w);
    let root = nix::unistd::geteuid().is_root();
    let user = if root {
        Some(lookup_user(&a.user)?)
    } else {
        None
    };
    crate::proc::become_subreaper().map_err(|e| format!("cannot become a child subreaper: {e}"))?;

    std::fs::create_dir_all(&a.out)
        .map_err(|e| format!("cannot create {}: {e}", a.out.display()))?;
    let work = std::env::temp_dir().join(format!("berth-bench-suite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let mut ctx = Ctx {
        user,
        berth: work.join("berth"),
        image: absolute(&a.image),
        rootfs: a.rootfs.clone(),
        state: work.join("state"),
        empty_policy: work.join("empty-policy.toml"),
        work: work.clone(),
        mode: modes[0].clone(),
        modes,
        ranks: a.ranks,
        docker: Err(docker::NO_DAEMON.to_string()),
    };
    ctx.give(&work)?;
    // The user may not be able to enter the checkout: run a copy of berth (cp, see tests/src/lib.rs).
    let st = std::process::Command::new("cp")
        .arg(&a.berth)
        .arg(&ctx.berth)
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    if !st.success() {
        return Err(format!("cannot copy {}", a.berth.display()));
    }
    std::fs::set_permissions(
        &ctx.berth,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&ctx.state).map_err(|e| e.to_string())?;
    ctx.give(&ctx.state)?;
    std::fs::set_permissions(
        &ctx.state,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(&ctx.empty_policy, "# empty: berth's built-in defaults\n")
        .map_err(|e| e.to_string())?;
    ctx.give(&ctx.empty_policy)?;
    if WORKLOADS.iter().any(|w| want(w) && !NO_DOCKER.contains(w)) {
        ctx.docker = docker::prepare(&ctx);
        match &ctx.docker {
            Ok(d) => eprintln!("berth-bench suite: Docker {} ({})", d.version, d.tag),
            Err(e) => eprintln!("berth-bench suite: no Docker column: {e}"),
        }
    }

    let started = machine::now();
    let before = machine::describe(a, &ctx);
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    match &ctx.docker {
        Ok(d) => notes.push(format!(
            "Docker: daemon {} at {}; the image is `docker import` of {} (the bench image's tree) as {}; containers run `docker run --rm --network none -u {}` (`--ipc host` for Linpack and MPI: mpirun and its ranks in one container), the docker CLI as root. benchmarks/run-suite.sh installs Debian's docker.io when missing and starts its own `dockerd --bridge=none --iptables=false --ip6tables=false --data-root /var/lib/berth-bench-docker` on a socket of its own, stopped at the end",
            d.version,
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "the default socket".into()),
            ctx.rootfs.display(),
            d.tag,
            d.user
        )),
        Err(e) => notes.push(format!("Docker: no Docker column: {e}")),
    }
    let mut refs = Vec::new();
    let mut take = |(r, n): (Vec<Row>, Vec<String>)| {
        rows.extend(r);
        notes.extend(n);
    };
    if want("linpack") {
        take(measure(linpack::workload(a, &ctx), a.reps, a.warmup));
    }
    if want("fea") {
        take(measure(fea::workload(a, &ctx), a.reps, a.warmup));
    }
    if want("mpi") {
        for w in mpi::workloads(a, &ctx) {
            take(measure(w, a.reps, a.warmup));
        }
    }
    if want("startup") {
        take(measure(startup::workload(a, &ctx), a.reps, a.warmup));
        for w in startup::versus_charliecloud(a, &ctx) {
            take(measure(w, a.reps, a.warmup));
        }
        refs.push(Reference {
            workload: "start-up".into(),
            label:
                "docker run hello (the seed, 2016, another machine): reference, not measured here"
                    .into(),
            value: 478.0,
            unit: "ms".into(),
        });
    }
    if want("io") {
        take(measure(io::workload(a, &ctx), a.reps, a.warmup));
    }
    if want("python") {
        take(measure(python::workload(a, &ctx), a.reps, a.warmup));
    }
    if want("large-image") {
        take(measure(python::large_image(a, &ctx), a.reps, 0));
        python::remove_large_image(&ctx);
    }
    if want("scaling") {
        take(measure(scaling::workload(a, &ctx), a.reps, a.warmup));
    }
    // On the local test cluster: under an allocation of real nodes, the MPI rows above span them.
    let allocated = std::env::var("SLURM_JOB_NUM_NODES")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(1)
        >= 2;
    let parts = slurm::Parts {
        steps: want("slurm"),
        scaling: want("scaling"),
        mpi: want("mpi") && !allocated,
    };
    if parts.steps || parts.scaling || parts.mpi {
        take(slurm::rows(a, &ctx, &parts));
    }
    let after = machine::load();
    let _ = std::process::Command::new("rm")
        .arg("-rf")
        .arg(&work)
        .status();

    let failed = rows.iter().filter(|r| r.failed.is_some()).count();
    let rep = report::Report {
        args: a,
        machine: before,
        load_after: after,
        started,
        finished: machine::now(),
        rows,
        refs,
        notes,
    };
    report::write(&rep, &a.out)?;
    plot::write(&rep, &a.out.join("report.svg"))?;
    eprintln!(
        "berth-bench suite: wrote {}/report.md, report.json, report.svg ({} rows, {failed} without a comparison)",
        a.out.display(),
        rep.rows.len()
    );
    print!("{}", report::table(&rep));
    Ok(0)
}

/// Redraw DIR/report.svg from DIR/report.json: the rows and their samples as measured.
fn replot(a: &Args, dir: &Path) -> Result<i32, String> {
    let path = dir.join("report.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let j: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let str_of = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let samples = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default()
    };
    let rows = j["rows"]
        .as_array()
        .ok_or("report.json has no rows")?
        .iter()
        .map(|r| Row {
            workload: str_of(&r["workload"]),
            metric: str_of(&r["metric"]),
            unit: str_of(&r["unit"]),
            higher_is_better: r["higher_is_better"].as_bool().unwrap_or(false),
            native_label: str_of(&r["native_label"]),
            container_label: str_of(&r["container_label"]),
            native: samples(&r["native_samples"]),
            container: samples(&r["container_samples"]),
            target: r["target"]["ratio"].as_f64().map(|ratio| Target {
                ratio,
                at_least: r["target"]["at_least"].as_bool().unwrap_or(false),
            }),
            failed: r["why"].as_str().map(String::from),
        })
        .collect();
    let rep = report::Report {
        args: a,
        machine: j["machine"].clone(),
        load_after: str_of(&j["load_after"]),
        started: str_of(&j["started"]),
        finished: str_of(&j["finished"]),
        rows,
        refs: Vec::new(),
        notes: Vec::new(),
    };
    plot::write(&rep, &dir.join("report.svg"))?;
    eprintln!(
        "berth-bench suite: wrote {}",
        dir.join("report.svg").display()
    );
    Ok(0)
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}
