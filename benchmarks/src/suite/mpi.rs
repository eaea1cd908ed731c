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

pub fn workloads<'a>(a: &'a Args, ctx: &'a Ctx) -> Vec<Workload<'a>> {
    let mut setup_error = None;
    let mut bin = PathBuf::new();
    let mut policy = PathBuf::new();
    match compile(ctx).and_then(|b| {
        let p = match &a.mpi_policy {
            Some(p) => p.clone(),
            None => host_mpi_policy(ctx)?,
        };
        Ok((b, p))
    }) {
        Ok((b, p)) => {
            bin = b;
            policy = p;
        }
        Err(e) => setup_error = Some(e),
    }
    let mut out = vec![one(
        a,
        ctx,
        "MPI, 1 node (shared memory)",
        &["--mca", "btl", "self,vader"],
        &bin,
        &policy,
        setup_error.clone(),
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
        ));
    }
    out
}

fn one<'a>(
    a: &'a Args,
    ctx: &'a Ctx,
    name: &'static str,
    mca: &'static [&'static str],
    bin: &Path,
    policy: &Path,
    setup_error: Option<String>,
) -> Workload<'a> {
    let iters = a.mpi_iters.to_string();
    let dir = bin.parent().map(Path::to_path_buf).unwrap_or_default();
    let mount: OsString = format!("{}:/bench-mpi", dir.display()).into();
    let native_argv = ctx.mpirun(mca, vec![bin.into(), iters.clone().into()]);
    let inner: Vec<OsString> = vec!["/bench-mpi/pingpong".into(), iters.into()];
    let image_argv = ctx.mpirun(
        mca,
        ctx.berth_run(&ctx.mode, &["--mount".into(), mount.clone()], &inner),
    );
    let host_argv = image_argv.clone();
    let policy = policy.to_path_buf();
    let (d1, d2, d3) = (dir.clone(), dir.clone(), dir);
    Workload {
        name,
        detail: format!(
            "benchmarks/mpi/pingpong.c built once by the host's mpicc, {} ranks, {} iterations; mpirun {}",
            a.ranks,
            a.mpi_iters,
            mca.join(" ")
        ),
        metrics: metrics(),
        native: Variant::new("native", move |_| {
            parse(&exec::run(ctx.command(&native_argv, &d1, None))?.stdout, None)
        }),
        containers: vec![
            Variant::new(format!("berth --mode {} (image MPI)", ctx.mode), move |_| {
                parse(&exec::run(ctx.command(&image_argv, &d2, None))?.stdout, Some(false))
            }),
            Variant::new(format!("berth --mode {} (host MPI injected)", ctx.mode), move |_| {
                parse(&exec::run(ctx.command(&host_argv, &d3, Some(&policy)))?.stdout, Some(true))
            }),
        ],
        setup_error,
        notes: Vec::new(),
    }
}
