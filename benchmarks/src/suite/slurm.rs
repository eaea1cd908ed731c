//! Everything on the local test cluster (tests/slurm/cluster.sh, berth's SPANK plugin), started
//! once, holding the cluster lock: start-up under Slurm (`srun -N1 -n N --container=IMG true`
//! against plain `srun`), start-up scaling over nodes (`srun -N{1,2,3}`), and MPI across two of
//! its nodes (TCP over veth).

use super::exec::Ctx;
use super::{measure, not_run, Args, Metric, Row};
use crate::slurm_steps::{self, Case};

fn metrics() -> Vec<Metric> {
    vec![Metric::new("srun step, `true`", "ms", false)]
}

/// Which parts run: (start-up under Slurm, node scaling, MPI across two hosts).
pub struct Parts {
    pub steps: bool,
    pub scaling: bool,
    pub mpi: bool,
}

const STEPS: &str = "start-up under Slurm";
const SCALING: &str = "start-up scaling, nodes";
const MPI: &str = "MPI, 2 hosts (TCP over veth)";

/// The NOT RUN rows of every part asked for, all with `why`.
fn not_run_all(p: &Parts, why: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    if p.steps {
        rows.extend(not_run(
            STEPS,
            &metrics(),
            "srun (plain)",
            &["srun -n2 --container", "srun -n8 --container"],
            why,
        ));
    }
    if p.scaling {
        rows.extend(not_run(
            SCALING,
            &metrics(),
            "srun (plain)",
            &["srun --container"],
            why,
        ));
    }
    if p.mpi {
        rows.extend(not_run(
            MPI,
            &super::mpi::metrics(),
            "native",
            &["berth (image MPI)", "berth (host MPI injected)"],
            why,
        ));
    }
    rows
}

/// Rows of plain/container case pairs: cases 2k and 2k+1.
fn step_rows(workload: &str, cases: &[Case], samples: &[Vec<f64>]) -> Vec<Row> {
    (0..cases.len() / 2)
        .map(|k| {
            let plain = &cases[2 * k];
            let shape = format!("-N{} -n{}", plain.nodes, plain.tasks);
            Row {
                workload: workload.into(),
                metric: format!("srun {shape} step, `true`"),
                unit: "ms".into(),
                higher_is_better: false,
                native_label: format!("srun {shape} (plain)"),
                container_label: format!("srun {shape} --container"),
                native: samples[2 * k].clone(),
                container: samples[2 * k + 1].clone(),
                target: None,
                failed: None,
            }
        })
        .collect()
}

pub fn rows(a: &Args, ctx: &Ctx, p: &Parts) -> (Vec<Row>, Vec<String>) {
    let Some(plugin) = &a.plugin else {
        return (
            not_run_all(
                p,
                "not run: needs --plugin target/release/libspank_berth.so (and root, for the local test cluster)",
            ),
            Vec::new(),
        );
    };
    // srun loads the plugin as the user, who may not be able to enter the checkout: a copy.
    let copy = ctx.work.join("spank_berth.so");
    let copied = std::process::Command::new("cp")
        .arg(plugin)
        .arg(&copy)
        .status();
    if !matches!(copied, Ok(s) if s.success()) {
        let why = format!("cannot copy the plugin {}", plugin.display());
        return (not_run_all(p, &why), Vec::new());
    }
    let _ = ctx.give(&copy);
    let args = slurm_steps::Args {
        plugin: copy,
        image: ctx.image.clone(),
        user: a.user.clone(),
        runs: a.startup_runs.max(a.reps),
        warmup: 2,
    };
    let nodes = a.scale_nodes.iter().copied().max().unwrap_or(1).max(3);
    let scale_cases = slurm_steps::node_cases(&a.scale_nodes);
    eprintln!("berth-bench suite: starting the local test cluster ({nodes} nodes)");
    let result = slurm_steps::with_cluster(&args.plugin, nodes, |conf| {
        let mut rows = Vec::new();
        let mut notes = Vec::new();
        // One part's rows: its cases timed, or NOT RUN (`only` is that part) with why.
        let timed = |name: &str, cases: &[Case], only: Parts| {
            eprintln!("berth-bench suite: {name}");
            match slurm_steps::time_cases(&args, conf, cases) {
                Ok(s) => step_rows(name, cases, &s),
                Err(e) => not_run_all(&only, &format!("the Slurm measurement failed: {e}")),
            }
        };
        if p.steps {
            rows.extend(timed(
                STEPS,
                &slurm_steps::CASES,
                Parts {
                    steps: true,
                    scaling: false,
                    mpi: false,
                },
            ));
            notes.push(format!(
                "{STEPS}: the test nodes share this machine's cores; -n8 oversubscribes one node"
            ));
        }
        if p.scaling {
            rows.extend(timed(
                SCALING,
                &scale_cases,
                Parts {
                    steps: false,
                    scaling: true,
                    mpi: false,
                },
            ));
            notes.push(format!("{SCALING}: one task per node, time until every task has run `true` and the step ended; the nodes are network namespaces sharing this machine's cores (`berth-bench srun-nodes` runs 1-16 nodes)"));
        }
        if p.mpi {
            let (r, n) = measure(super::mpi::over_veth(a, ctx, conf), a.reps, a.warmup);
            rows.extend(r);
            notes.extend(n);
        }
        Ok((rows, notes))
    });
    match result {
        Ok(x) => x,
        Err(e) => (
            not_run_all(p, &format!("the test cluster failed: {e}")),
            Vec::new(),
        ),
    }
}
