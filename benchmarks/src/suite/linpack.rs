//! Linpack: Debian's `hpcc` (HPL, DGEMM, STREAM, ... in one MPI binary), the same binary and
//! the same `hpccinf.txt` natively and in the container: `mpirun -np R hpcc` against
//! `mpirun -np R berth run IMG -- hpcc`. Reported: HPL GFLOP/s, and DGEMM and STREAM Triad
//! (per process, "Star" runs) as extra rows.

use super::exec::{self, os, Ctx};
use super::{Args, Metric, Variant, Workload};
use std::ffi::OsString;
use std::path::Path;

pub fn metrics() -> Vec<Metric> {
    vec![
        Metric::new("HPL", "GFLOP/s", true).target(0.99, true),
        Metric::new("DGEMM (per process)", "GFLOP/s", true),
        Metric::new("STREAM Triad (per process)", "GB/s", true),
    ]
}

/// hpccinf.txt for an N x N problem with block size NB on a 1 x R process grid.
fn input(n: u32, nb: u32, ranks: u32) -> String {
    let (p, q) = grid(ranks);
    format!(
        "HPLinpack benchmark input file (berth-bench suite)\n\
         Innovative Computing Laboratory, University of Tennessee\n\
         HPL.out      output file name (if any)\n\
         8            device out (6=stdout,7=stderr,file)\n\
         1            # of problems sizes (N)\n\
         {n}         Ns\n\
         1            # of NBs\n\
         {nb}          NBs\n\
         0            PMAP process mapping (0=Row-,1=Column-major)\n\
         1            # of process grids (P x Q)\n\
         {p}            Ps\n\
         {q}            Qs\n\
         16.0         threshold\n\
         1            # of panel fact\n\
         2            PFACTs (0=left, 1=Crout, 2=Right)\n\
         1            # of recursive stopping criterium\n\
         4            NBMINs (>= 1)\n\
         1            # of panels in recursion\n\
         2            NDIVs\n\
         1            # of recursive panel fact.\n\
         1            RFACTs (0=left, 1=Crout, 2=Right)\n\
         1            # of broadcast\n\
         1            BCASTs (0=1rg,1=1rM,2=2rg,3=2rM,4=Lng,5=LnM)\n\
         1            # of lookahead depth\n\
         1            DEPTHs (>=0)\n\
         2            SWAP (0=bin-exch,1=long,2=mix)\n\
         64           swapping threshold\n\
         0            L1 in (0=transposed,1=no-transposed) form\n\
         0            U  in (0=transposed,1=no-transposed) form\n\
         1            Equilibration (0=no,1=yes)\n\
         8            memory alignment in double (> 0)\n\
         ##### This line (no. 32) is ignored (it serves as a separator). ######\n\
         0                      \t\tNumber of additional problem sizes for PTRANS\n\
         1200 10000 30000        \tvalues of N\n\
         0                       \tnumber of additional blocking sizes for PTRANS\n\
         40 9 8 13 13 20 16 32 64       \tvalues of NB\n"
    )
}

/// The squarest P x Q grid with P <= Q.
fn grid(ranks: u32) -> (u32, u32) {
    let mut p = (ranks as f64).sqrt() as u32;
    while p > 1 && (ranks / p) * p != ranks {
        p -= 1;
    }
    (p.max(1), ranks / p.max(1))
}

/// HPL GFLOP/s, StarDGEMM GFLOP/s and StarSTREAM Triad GB/s from hpccoutf.txt.
fn parse(dir: &Path) -> Result<Vec<f64>, String> {
    let text = std::fs::read_to_string(dir.join("hpccoutf.txt"))
        .map_err(|e| format!("no hpccoutf.txt: {e}"))?;
    let get = |key: &str| -> Result<f64, String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .next_back()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or_else(|| format!("hpccoutf.txt has no {key}"))
    };
    Ok(vec![
        get("HPL_Tflops")? * 1000.0,
        get("StarDGEMM_Gflops")?,
        get("StarSTREAM_Triad")?,
    ])
}

pub fn workload<'a>(a: &'a Args, ctx: &'a Ctx) -> Workload<'a> {
    let (dirs, notes, setup_error) = match prepare(a, ctx) {
        Ok((d, n)) => (Some(d), n, None),
        Err(e) => (None, Vec::new(), Some(e)),
    };
    let hpcc = a.hpcc.clone();
    // `mode`: None natively, else berth's mode.
    let side = move |mode: Option<&str>, warm: bool| -> Result<Vec<f64>, String> {
        let (run_dir, warm_dir) = dirs.clone().ok_or("not set up")?;
        let dir = if warm { warm_dir } else { run_dir };
        let _ = std::fs::remove_file(dir.join("hpccoutf.txt"));
        let prog: Vec<OsString> = vec![hpcc.clone().into()];
        let btl = ["--mca", "btl", "self,vader"];
        let cmd = match mode {
            // Docker's way: one container, mpirun and its ranks inside, host IPC.
            Some("docker") => ctx.docker()?.run(
                true,
                &[(&dir, &dir.to_string_lossy())],
                Some(&dir),
                &ctx.mpirun(&btl, prog),
            ),
            Some(mode) => ctx.command(
                &ctx.mpirun(&btl, ctx.berth_run(mode, &[], &prog)),
                &dir,
                None,
            ),
            None => ctx.command(&ctx.mpirun(&btl, prog), &dir, None),
        };
        exec::run(cmd)?;
        parse(&dir)
    };
    let containers = ctx
        .sides()
        .into_iter()
        .map(|mode| {
            let side = side.clone();
            Variant::new(super::side_label(&mode), move |w| side(Some(&mode), w))
        })
        .collect();
    Workload {
        name: "Linpack",
        detail: format!(
            "`{}` (HPC Challenge), N={} NB={}, {} MPI ranks on one node, same hpccinf.txt both sides",
            a.hpcc, a.hpl_n, a.hpl_nb, a.ranks
        ),
        metrics: metrics(),
        native: Variant::new("native", move |w| side(None, w)),
        containers,
        setup_error,
        notes,
    }
}

/// The run directories (timed, and a small warm-up problem) and the checksum check: the same
/// hpcc and BLAS inside and outside.
fn prepare(
    a: &Args,
    ctx: &Ctx,
) -> Result<((std::path::PathBuf, std::path::PathBuf), Vec<String>), String> {
    if !Path::new(&a.hpcc).exists() {
        return Err(format!(
            "{} is missing on the host (Debian package hpcc: scripts/install-deps.sh)",
            a.hpcc
        ));
    }
    let run_dir = ctx.dir("linpack")?;
    let warm_dir = ctx.dir("linpack-warm")?;
    for (d, n) in [(&run_dir, a.hpl_n), (&warm_dir, a.hpl_n.min(1000))] {
        let f = d.join("hpccinf.txt");
        std::fs::write(&f, input(n, a.hpl_nb, a.ranks)).map_err(|e| e.to_string())?;
        ctx.give(&f)?;
    }
    let notes = vec![checksums(
        ctx,
        &[&a.hpcc, "/usr/lib/x86_64-linux-gnu/libblas.so.3"],
    )];
    Ok(((run_dir, warm_dir), notes))
}

/// sha256 of the same paths natively and in the container, as a note for the report.
pub fn checksums(ctx: &Ctx, paths: &[&str]) -> String {
    let mut argv = os(&["sha256sum"]);
    argv.extend(paths.iter().map(OsString::from));
    let native = exec::run(ctx.command(&argv, &ctx.work, None));
    let inside = exec::run(ctx.command(&ctx.berth_run(&ctx.mode, &[], &argv), &ctx.work, None));
    match (native, inside) {
        (Ok(n), Ok(i)) => {
            let parse = |s: &str| -> Vec<(String, String)> {
                s.lines()
                    .filter_map(|l| l.split_once("  "))
                    .map(|(h, p)| (p.to_string(), h.to_string()))
                    .collect()
            };
            let (n, i) = (parse(&n.stdout), parse(&i.stdout));
            n.iter()
                .map(|(p, h)| {
                    let other = i
                        .iter()
                        .find(|(q, _)| q == p)
                        .map(|(_, g)| g.as_str())
                        .unwrap_or("?");
                    if other == h {
                        format!("`{p}` sha256 {} identical inside and outside", &h[..16])
                    } else {
                        format!("`{p}` DIFFERS: outside sha256 {h}, inside {other}")
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        }
        (Err(e), _) => format!("checksums not compared: native sha256sum failed: {e}"),
        (_, Err(e)) => format!("checksums not compared: sha256sum in the container failed: {e}"),
    }
}
