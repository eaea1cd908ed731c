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
        ],
        setup_error: None,
        notes: vec![
            "times include `setpriv` to the benchmark user on both sides when the suite runs as root".into(),
        ],
    }
}
