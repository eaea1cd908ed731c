//! Start-up under Slurm: `srun -N1 -n N --container=IMG true` against plain `srun -N1 -n N true`
//! on the local three-node test cluster (tests/slurm/cluster.sh, berth's SPANK plugin), through
//! `berth-bench slurm`'s measurement, which holds the cluster lock while the cluster runs.

use super::exec::Ctx;
use super::{not_run, Args, Metric, Row};
use crate::slurm_steps;

fn metrics() -> Vec<Metric> {
    vec![Metric::new("srun step, `true`", "ms", false)]
}

pub fn rows(a: &Args, ctx: &Ctx) -> (Vec<Row>, Vec<String>) {
    let labels = ["srun -n2 --container", "srun -n8 --container"];
    let fail = |why: String| {
        (
            not_run(
                "start-up under Slurm",
                &metrics(),
                "srun (plain)",
                &labels,
                &why,
            ),
            Vec::new(),
        )
    };
    let Some(plugin) = &a.plugin else {
        return fail(
            "not run: needs --plugin target/release/libspank_berth.so (and root, for the local test cluster)".into(),
        );
    };
    // srun loads the plugin as the user, who may not be able to enter the checkout: a copy.
    let copy = ctx.work.join("spank_berth.so");
    let copied = std::process::Command::new("cp")
        .arg(plugin)
        .arg(&copy)
        .status();
    if !matches!(copied, Ok(s) if s.success()) {
        return fail(format!("cannot copy the plugin {}", plugin.display()));
    }
    let _ = ctx.give(&copy);
    let args = slurm_steps::Args {
        plugin: copy,
        image: ctx.image.clone(),
        user: a.user.clone(),
        runs: a.startup_runs.max(a.reps),
        warmup: 2,
    };
    eprintln!("berth-bench suite: start-up under Slurm: starting the local test cluster");
    let samples = match slurm_steps::measure(&args) {
        Ok(s) => s,
        Err(e) => return fail(format!("the Slurm measurement failed: {e}")),
    };
    let mut rows = Vec::new();
    for (k, label) in labels.iter().enumerate() {
        let (plain, cont) = (2 * k, 2 * k + 1);
        rows.push(Row {
            workload: "start-up under Slurm".into(),
            metric: format!("srun -N1 -n{} step, `true`", slurm_steps::CASES[plain].1),
            unit: "ms".into(),
            higher_is_better: false,
            native_label: format!("srun -n{} (plain)", slurm_steps::CASES[plain].1),
            container_label: label.to_string(),
            native: samples[plain].clone(),
            container: samples[cont].clone(),
            target: None,
            failed: None,
        });
    }
    let note = "start-up under Slurm: the three test nodes share this machine's 2 cores; -n8 oversubscribes one node".to_string();
    (rows, vec![note])
}
