//! Start-up scaling on one node: the time until every rank has run, `mpirun -np N true`
//! against `mpirun -np N berth run IMG -- true` (the ranks join one container), for N in
//! `--scale-ranks` (1, 2, 4, 8, 16: past the machine's cores it is oversubscribed). The same
//! over nodes runs on the test cluster (slurm.rs).

use super::exec::{self, os, Ctx};
use super::{Args, Metric, Variant, Workload};
use std::ffi::OsString;

fn mpirun(n: u32, rest: Vec<OsString>) -> Vec<OsString> {
    let mut v = os(&["mpirun", "--oversubscribe", "--bind-to", "none", "-np"]);
    v.push(n.to_string().into());
    v.extend(rest);
    v
}

pub fn workload<'a>(a: &'a Args, ctx: &'a Ctx) -> Workload<'a> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let ranks = a.scale_ranks.clone();
    let metrics = ranks
        .iter()
        .map(|n| Metric::new(&format!("all of {n} ranks run `true`"), "ms", false))
        .collect();
    let side = move |mode: Option<&str>| -> Result<Vec<f64>, String> {
        ranks
            .iter()
            .map(|&n| {
                let inner = os(&["true"]);
                let rest = match mode {
                    Some(m) => {
                        let extra = if m == "mount" {
                            os(&["--image-idle", "0"])
                        } else {
                            Vec::new()
                        };
                        ctx.berth_run(m, &extra, &inner)
                    }
                    None => inner,
                };
                Ok(exec::run(ctx.command(&mpirun(n, rest), &ctx.work, None))?.secs * 1e3)
            })
            .collect()
    };
    let containers = ctx
        .modes
        .iter()
        .map(|m| {
            let side = side.clone();
            Variant::new(format!("berth --mode {m}"), move |_| side(Some(m)))
        })
        .collect();
    Workload {
        name: "start-up scaling, 1 node",
        detail: format!(
            "`mpirun --oversubscribe --bind-to none -np N [berth run --mode M IMG --] true`, N = {}: from the start of mpirun to its exit; this machine has {cores} cores, so more ranks than that are oversubscribed; mount mode with `--image-idle 0`",
            a.scale_ranks
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        metrics,
        native: Variant::new("native", move |_| side(None)),
        containers,
        setup_error: None,
        notes: Vec::new(),
    }
}
