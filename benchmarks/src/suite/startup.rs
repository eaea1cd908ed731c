//! Start-up: what one rank pays to start in the container. `berth run IMG -- true` in both
//! modes against plain `true`, as in `berth-bench startup` (warm extract cache; a fresh FUSE
//! mount per run in mount mode). Each repetition is the median of --startup-runs runs of each
//! side, the sides interleaved run by run.

use super::exec::{self, os, Ctx};
use super::{Args, Metric, Variant, Workload};

pub fn metrics() -> Vec<Metric> {
    vec![Metric::new("start-up, `true`", "ms", false)]
}

fn median_ms(ctx: &Ctx, argv: &[std::ffi::OsString], runs: usize) -> Result<Vec<f64>, String> {
    let mut v = Vec::new();
    for _ in 0..runs.max(1) {
        v.push(exec::run(ctx.command(argv, &ctx.work, None))?.secs * 1e3);
    }
    Ok(vec![crate::stats::median(&v)])
}

/// The launcher issue's targets, against Charliecloud's ch-run on the same image (the baseline
/// side here is ch-run, not the native command): warm extract mode within 1.2x of `ch-run DIR`,
/// mount mode at most half of `ch-run IMG.sqsh` (each run a fresh FUSE mount on both sides).
/// Mount mode kept warm (`--linger`) is not measured here: the suite waits for every process a
/// run leaves (its keeper too) before the next; `berth-bench startup` measures it.
pub fn versus_charliecloud<'a>(a: &'a Args, ctx: &'a Ctx) -> Vec<Workload<'a>> {
    let n = a.startup_runs;
    let no_ep = os(&["--no-join", "--no-entrypoint"]);
    let ch_dir: Vec<std::ffi::OsString> = vec![
        "ch-run".into(),
        ctx.rootfs.clone().into(),
        "--".into(),
        "true".into(),
    ];
    let ch_sqsh: Vec<std::ffi::OsString> = vec![
        "ch-run".into(),
        ctx.image.clone().into(),
        "--".into(),
        "true".into(),
    ];
    let extract = ctx.berth_run("extract", &no_ep, &os(&["true"]));
    let mount = ctx.berth_run("mount", &no_ep, &os(&["true"]));
    let missing = (!std::path::Path::new("/usr/bin/ch-run").exists())
        .then(|| "ch-run is missing (Debian package charliecloud-runtime)".to_string());
    let ch_sqsh2 = ch_sqsh.clone();
    vec![
        Workload {
            name: "start-up vs Charliecloud (directory)",
            detail: format!("`berth run --mode extract IMG -- true` (warm cache) vs `ch-run DIR -- true` on the same tree; each repetition the median of {n} runs"),
            metrics: vec![Metric::new("start-up, `true`", "ms", false).target(1.2, false)],
            native: Variant::new("ch-run DIR", move |_| median_ms(ctx, &ch_dir, n)),
            containers: vec![Variant::new("berth --mode extract", move |_| {
                median_ms(ctx, &extract, n)
            })],
            setup_error: missing.clone(),
            notes: Vec::new(),
        },
        Workload {
            name: "start-up vs Charliecloud (squashfs)",
            detail: format!("`berth run --mode mount IMG -- true` (a fresh FUSE mount per run) vs `ch-run IMG.sqsh -- true` (its own fresh FUSE mount per run); each repetition the median of {n} runs"),
            // Issue 14's target for a first run on a node (a fresh mount); later runs, with the
            // image keeper warm, are `berth-bench mount-mode`'s (<= 0.35).
            metrics: vec![Metric::new("start-up, `true`", "ms", false).target(0.85, false)],
            native: Variant::new("ch-run IMG.sqsh", move |_| median_ms(ctx, &ch_sqsh2, n)),
            containers: vec![Variant::new("berth --mode mount", move |_| {
                median_ms(ctx, &mount, n)
            })],
            setup_error: missing,
            notes: Vec::new(),
        },
    ]
}

pub fn workload<'a>(a: &'a Args, ctx: &'a Ctx) -> Workload<'a> {
    let native = os(&["true"]);
    let extract = ctx.berth_run("extract", &os(&["--no-join"]), &os(&["true"]));
    let mount = ctx.berth_run("mount", &os(&["--no-join"]), &os(&["true"]));
    let n = a.startup_runs;
    Workload {
        name: "start-up",
        detail: format!(
            "`berth run --no-join --mode M IMG -- true` vs `true`, one rank; each repetition the median of {n} runs"
        ),
        metrics: metrics(),
        native: Variant::new("native", move |_| median_ms(ctx, &native, n)),
        containers: vec![
            Variant::new("berth --mode extract", move |_| median_ms(ctx, &extract, n)),
            Variant::new("berth --mode mount", move |_| median_ms(ctx, &mount, n)),
            Variant::new("docker", move |_| {
                let d = ctx.docker()?;
                let mut v = Vec::new();
                for _ in 0..n.max(1) {
                    v.push(exec::run(d.run(false, &[], None, &os(&["true"])))?.secs * 1e3);
                }
                Ok(vec![crate::stats::median(&v)])
            }),
        ],
        setup_error: None,
        notes: vec![
            "times include `setpriv` to the benchmark user on both sides when the suite runs as root".into(),
            "docker: `docker run --rm --network none -u UID:GID IMG true` (the docker CLI runs as root, the container as the user)".into(),
        ],
    }
}
