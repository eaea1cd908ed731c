//! MPI: ping-pong latency and bandwidth between 2 ranks on one node (shared memory, Open MPI's
//! vader BTL with CMA) and an allreduce, from a small C program (benchmarks/mpi/pingpong.c)
//! compiled once with the host's mpicc and run as the same binary natively and in the
//! container (bind-mounted at /bench-mpi): with the image's MPI, and with the host's MPI
//! injected by a site policy. Under an allocation of 2 or more Slurm nodes, the same across
//! two hosts (`--map-by node`, Open MPI's choice of interconnect).

use super::exec::{self, Ctx};
use super::{Args, Metric, Variant, Workload};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

const SOURCE: &str = include_str!("../../mpi/pingpong.c");

pub fn metrics() -> Vec<Metric> {
    vec![
        Metric::new("ping-pong latency, 8 B", "us", false).target(1.02, false),
        Metric::new("ping-pong bandwidth, 1 MiB", "MB/s", true).target(0.98, true),
        Metric::new("allreduce, 8 doubles", "us", false),
    ]
}

/// The host Open MPI injected over the image's (docs/policy.md), unless the site gives its own.
fn host_mpi_policy(ctx: &Ctx) -> Result<PathBuf, String> {
    let out = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "libopenmpi3"])
        .output()
        .map_err(|e| format!("dpkg-query: {e}"))?;
    let v = String::from_utf8_lossy(&out.stdout);
    let version = v.split(['-', '+', '~']).next().unwrap_or("").to_string();
    if version.is_empty() {
        return Err("libopenmpi3 is not installed on the host: no host MPI to inject".into());
    }
    let lib = "/usr/lib/x86_64-linux-gnu";
    let text = format!(
        "# berth-bench suite: the host's Open MPI injected over the image's\n[mpi]\nfamily = \"openmpi\"\n\
         version = \"{version}\"\ncompatibility = \"major\"\nbind = [\"{lib}/openmpi\"]\n\
         libraries = [\"{lib}/libmpi.so.40*\", \"{lib}/libopen-rte.so.40*\", \"{lib}/libopen-pal.so.40*\"]\n"
    );
    let p = ctx.work.join("host-mpi-policy.toml");
    std::fs::write(&p, text).map_err(|e| e.to_string())?;
    ctx.give(&p)?;
    Ok(p)
}

fn compile(ctx: &Ctx) -> Result<PathBuf, String> {
    let dir = ctx.dir("mpi")?;
    let src = dir.join("pingpong.c");
    std::fs::write(&src, SOURCE).map_err(|e| e.to_string())?;
    let bin = dir.join("pingpong");
    let out = std::process::Command::new("mpicc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(|e| format!("cannot run mpicc (Debian package libopenmpi-dev): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mpicc failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    ctx.give(&bin)?;
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    Ok(bin)
}

fn parse(out: &str, host_mpi: Option<bool>) -> Result<Vec<f64>, String> {
    let line = out
        .lines()
        .find(|l| l.starts_with("latency_us="))
        .ok_or_else(|| format!("no result line in the output: {}", out.trim()))?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or("")
    };
    if field("check") != "ok" {
        return Err(format!("allreduce gave a wrong sum: {line}"));
    }
    let lib = field("libmpi");
    match host_mpi {
        Some(true) if !lib.starts_with("/.berth/mpi-lib/") => {
            return Err(format!(
                "the host's MPI was not injected: rank 0 maps {lib}"
            ))
        }
        Some(false) if lib.starts_with("/.berth/") => {
            return Err(format!("expected the image's MPI, rank 0 maps {lib}"))
        }
        _ => {}
    }
    ["latency_us", "bandwidth_MBps", "allreduce_us"]
        .iter()
        .map(|k| {
            field(k)
                .parse::<f64>()
                .map_err(|_| format!("bad {k} in: {line}"))
        })
        .collect()
}

/// The compiled benchmark and the policy that injects the host's MPI, or empty paths and why
/// they could not be made (the rows then say so).
fn setup(a: &Args, ctx: &Ctx) -> (PathBuf, PathBuf, Option<String>) {
    let made = compile(ctx).and_then(|b| {
        let p = match &a.mpi_policy {
            Some(p) => p.clone(),
            None => host_mpi_policy(ctx)?,
        };
        Ok((b, p))
    });
    match made {
        Ok((b, p)) => (b, p, None),
        Err(e) => (PathBuf::new(), PathBuf::new(), Some(e)),
    }
}

pub fn workloads<'a>(a: &'a Args, ctx: &'a Ctx) -> Vec<Workload<'a>> {
    let (bin, policy, setup_error) = setup(a, ctx);
    // mpirun started directly, on this node or in the job's allocation (no salloc prefix).
    let on_node = || Launch {
        prefix: Vec::new(),
        slurm_conf: None,
        iters: a.mpi_iters,
    };
    let mut out = vec![one(
        a,
        ctx,
        "MPI, 1 node (shared memory)",
        &["--mca", "btl", "self,vader"],
        &bin,
        &policy,
        setup_error.clone(),
        on_node(),
    )];
    let nodes: u32 = std::env::var("SLURM_JOB_NUM_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    if nodes >= 2 {
        out.push(one(
            a,
            ctx,
            "MPI, 2 hosts",
            &["--map-by", "node"],
            &bin,
            &policy,
            setup_error,
            on_node(),
        ));
    }
    out
}

/// MPI across two nodes of the local test cluster (network namespaces joined by a bridge, so
/// Open MPI's TCP BTL crosses a real veth path, not shared memory): `salloc -N2 mpirun
/// --map-by node` from the cluster's host, with `conf` its slurm.conf.
pub fn over_veth<'a>(a: &'a Args, ctx: &'a Ctx, conf: &Path) -> Workload<'a> {
    let (bin, policy, setup_error) = setup(a, ctx);
    let salloc: Vec<OsString> = ["salloc", "-N2", "-n2", "--ntasks-per-node=1", "--quiet"]
        .map(OsString::from)
        .to_vec();
    let mut w = one(
        a,
        ctx,
        "MPI, 2 hosts (TCP over veth)",
        &[
            "--map-by",
            "node",
            "--bind-to",
            "none",
            "--mca",
            "btl",
            "self,tcp",
            "--mca",
            "btl_tcp_if_include",
            "10.197.0.0/24",
            "--mca",
            "oob_tcp_if_include",
            "10.197.0.0/24",
        ],
        &bin,
        &policy,
        setup_error,
        Launch {
            prefix: salloc,
            slurm_conf: Some(conf.to_path_buf()),
            iters: a.mpi_tcp_iters,
        },
    );
    w.notes.push(
        "TCP over veth: two nodes of the local Slurm test cluster (network namespaces on one bridge, sharing this machine's cores), Open MPI's TCP BTL between them; not InfiniBand. `--sbatch --sbatch-nodes 2` writes the same rows for real nodes".into(),
    );
    w
}

/// How the ranks are started: on this node (no prefix), or under `salloc` on the test cluster.
pub struct Launch {
    pub prefix: Vec<OsString>,
    pub slurm_conf: Option<PathBuf>,
    pub iters: u32,
}

#[allow(clippy::too_many_arguments)]
fn one<'a>(
    a: &'a Args,
    ctx: &'a Ctx,
    name: &'static str,
    mca: &'static [&'static str],
    bin: &Path,
    policy: &Path,
    setup_error: Option<String>,
    launch: Launch,
) -> Workload<'a> {
    let iters = launch.iters.to_string();
    let dir = bin.parent().map(Path::to_path_buf).unwrap_or_default();
    let mount: OsString = format!("{}:/bench-mpi", dir.display()).into();
    let with_prefix =
        |v: Vec<OsString>| -> Vec<OsString> { launch.prefix.iter().cloned().chain(v).collect() };
    let native_argv = with_prefix(ctx.mpirun(mca, vec![bin.into(), iters.clone().into()]));
    let inner: Vec<OsString> = vec!["/bench-mpi/pingpong".into(), iters.into()];
    let docker_side = name.contains("1 node");
    let image_argv = with_prefix(ctx.mpirun(
        mca,
        ctx.berth_run(&ctx.mode, &["--mount".into(), mount.clone()], &inner),
    ));
    let host_argv = image_argv.clone();
    let policy = policy.to_path_buf();
    // Docker: one container, mpirun and both ranks inside, host IPC (shared memory).
    let docker_argv = ctx.mpirun(mca, inner.clone());
    let (d1, d2, d3, d4) = (dir.clone(), dir.clone(), dir.clone(), dir);
    let conf = launch.slurm_conf.clone();
    let cmd = move |argv: &[OsString], cwd: &Path, policy: Option<&Path>| {
        let mut c = ctx.command(argv, cwd, policy);
        if let Some(conf) = &conf {
            c.env("SLURM_CONF", conf);
        }
        c
    };
    let (cmd1, cmd2, cmd3) = (cmd.clone(), cmd.clone(), cmd);
    Workload {
        name,
        detail: format!(
            "benchmarks/mpi/pingpong.c built once by the host's mpicc, {} ranks, {} iterations; {}mpirun {}",
            if launch.prefix.is_empty() { a.ranks } else { 2 },
            launch.iters,
            launch
                .prefix
                .iter()
                .map(|p| format!("{} ", p.to_string_lossy()))
                .collect::<String>(),
            mca.join(" ")
        ),
        metrics: metrics(),
        native: Variant::new("native", move |_| {
            parse(&exec::run(cmd1(&native_argv, &d1, None))?.stdout, None)
        }),
        containers: vec![
            Variant::new(format!("berth --mode {} (image MPI)", ctx.mode), move |_| {
                parse(&exec::run(cmd2(&image_argv, &d2, None))?.stdout, Some(false))
            }),
            Variant::new(format!("berth --mode {} (host MPI injected)", ctx.mode), move |_| {
                parse(&exec::run(cmd3(&host_argv, &d3, Some(&policy)))?.stdout, Some(true))
            }),
        ]
        .into_iter()
        .chain(docker_side.then(|| {
            Variant::new("docker (image MPI)", move |_| {
                let d = ctx.docker()?;
                let cmd = d.run(true, &[(&d4, "/bench-mpi")], None, &docker_argv);
                parse(&exec::run(cmd)?.stdout, Some(false))
            })
        }))
        .collect(),
        setup_error,
        notes: Vec::new(),
    }
}
