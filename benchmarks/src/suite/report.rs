//! The report: figures per row (median, min, max of each side; overhead with a bootstrap
//! confidence interval over the paired repetitions), as Markdown and JSON.

use super::{Args, Reference, Row};
use crate::stats::{median, percentile};
use serde_json::{json, Value};
use std::fmt::Write;
use std::path::Path;

pub struct Report<'a> {
    pub args: &'a Args,
    pub machine: Value,
    pub load_after: String,
    pub started: String,
    pub finished: String,
    pub rows: Vec<Row>,
    pub refs: Vec<Reference>,
    pub notes: Vec<String>,
}

/// Bootstrap resamples for the confidence interval.
const RESAMPLES: usize = 10_000;

pub struct Figures {
    pub n: usize,
    pub native: [f64; 3],
    pub container: [f64; 3],
    /// container median / native median
    pub ratio: f64,
    /// How much slower the container is, in %: time ratio - 1 (for rates, native/container - 1).
    pub overhead: f64,
    /// 95% percentile bootstrap interval of `overhead`, resampling the paired repetitions.
    pub ci: Option<(f64, f64)>,
    pub target: Option<bool>,
}

fn spread(v: &[f64]) -> [f64; 3] {
    [median(v), percentile(v, 0.0), percentile(v, 100.0)]
}

fn overhead(native: f64, container: f64, higher_is_better: bool) -> f64 {
    if higher_is_better {
        (native / container - 1.0) * 100.0
    } else {
        (container / native - 1.0) * 100.0
    }
}

/// A small deterministic generator (xorshift64*), so a report is reproducible from its samples.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

pub fn figures(r: &Row) -> Option<Figures> {
    if r.failed.is_some() {
        return None;
    }
    let n = r.native.len().min(r.container.len());
    if n == 0 {
        return None;
    }
    let (nat, con) = (&r.native[..n], &r.container[..n]);
    let (ns, cs) = (spread(nat), spread(con));
    let ci = (n >= 2).then(|| {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut stats = Vec::with_capacity(RESAMPLES);
        let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
        for _ in 0..RESAMPLES {
            for k in 0..n {
                let i = rng.below(n);
                a[k] = nat[i];
                b[k] = con[i];
            }
            stats.push(overhead(median(&a), median(&b), r.higher_is_better));
        }
        (percentile(&stats, 2.5), percentile(&stats, 97.5))
    });
    let ratio = cs[0] / ns[0];
    Some(Figures {
        n,
        native: ns,
        container: cs,
        ratio,
        overhead: overhead(ns[0], cs[0], r.higher_is_better),
        ci,
        target: r.target.map(|t| {
            if t.at_least {
                ratio >= t.ratio
            } else {
                ratio <= t.ratio
            }
        }),
    })
}

fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn side(s: &[f64; 3]) -> String {
    format!("{} [{}–{}]", num(s[0]), num(s[1]), num(s[2]))
}

fn target_text(r: &Row, f: Option<&Figures>) -> String {
    let Some(t) = r.target else {
        return String::new();
    };
    let bound = format!("{} {}", if t.at_least { "≥" } else { "≤" }, t.ratio);
    match f.and_then(|f| f.target) {
        Some(true) => format!("ratio {bound}: PASS"),
        Some(false) => format!("ratio {bound}: **MISS**"),
        None => format!("ratio {bound}: not measured"),
    }
}

/// The overhead table, in Markdown.
pub fn table(rep: &Report) -> String {
    let mut s = String::new();
    s.push_str("| workload | metric | native: median [min–max] | container | container: median [min–max] | ratio c/n | overhead % [95% CI] | n | target |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in &rep.rows {
        let f = figures(r);
        let unit = &r.unit;
        match (&f, &r.failed) {
            (Some(f), _) => {
                // The baseline is the native run unless the row names another (ch-run).
                let native = match r.native_label.as_str() {
                    "native" => side(&f.native),
                    label => format!("{label}: {}", side(&f.native)),
                };
                let ci = match f.ci {
                    Some((lo, hi)) => format!(" [{lo:+.2}, {hi:+.2}]"),
                    None => " [n/a: 1 rep]".to_string(),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} ({unit}) | {} | {} | {} | {:.3} | {:+.2}{ci} | {} | {} |",
                    r.workload,
                    r.metric,
                    native,
                    r.container_label,
                    side(&f.container),
                    f.ratio,
                    f.overhead,
                    f.n,
                    target_text(r, Some(f))
                );
            }
            (None, why) => {
                let why = why
                    .clone()
                    .unwrap_or_else(|| "no samples".into())
                    .replace('|', "\\|");
                let native = if r.native.is_empty() {
                    "—".to_string()
                } else {
                    side(&spread(&r.native))
                };
                let (mark, why) = match why.strip_prefix("not run: ") {
                    Some(rest) => ("NOT RUN", rest.to_string()),
                    None => ("FAILED", why),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} ({unit}) | {native} | {} | — | — | **{mark}**: {why} | {} | {} |",
                    r.workload,
                    r.metric,
                    r.container_label,
                    r.native.len(),
                    target_text(r, None)
                );
            }
        }
    }
    s
}

/// The 2016 study's figure (Gantikow et al., ISC 2016: native vs Docker) for a workload, if any.
fn study_2016(workload: &str, metric: &str) -> &'static str {
    match (workload, metric) {
        ("ABAQUS-style FEA", _) => "ABAQUS s4b: 114 s native, 116.5 s Docker (+2.21%)",
        ("I/O", m) if m.starts_with("write") => "ABAQUS s4b on Lustre: +1.04% in Docker",
        ("start-up", _) => "`docker run` 478 ms",
        ("Linpack", "HPL") => "Felter et al. 2014: ~0% in Docker",
        _ => "",
    }
}

/// The rows whose container side is Docker.
pub fn docker_rows<'a>(rep: &'a Report) -> Vec<&'a Row> {
    rep.rows
        .iter()
        .filter(|r| r.container_label.starts_with("docker"))
        .collect()
}

/// The berth row in `mode` measured beside Docker row `d` (not its host-MPI variant).
pub fn berth_beside<'a>(rep: &'a Report, d: &Row, mode: &str) -> Option<&'a Row> {
    rep.rows.iter().find(|r| {
        r.workload == d.workload
            && r.metric == d.metric
            && r.container_label
                .starts_with(&format!("berth --mode {mode}"))
            && !r.container_label.contains("host MPI")
    })
}

/// Native, Docker and berth in one table: each container side's median and overhead.
fn side_by_side(rep: &Report) -> String {
    let docker_rows = docker_rows(rep);
    if docker_rows.is_empty() {
        return String::new();
    }
    let cell = |r: Option<&Row>| -> String {
        match r {
            None => "—".into(),
            Some(r) => match (figures(r), &r.failed) {
                (Some(f), _) => format!("{} ({:+.1}%)", num(f.container[0]), f.overhead),
                (None, Some(why)) if why.starts_with("not run") => "NOT RUN".into(),
                _ => "FAILED".into(),
            },
        }
    };
    let mut s = String::from(
        "## Native, Docker and berth side by side\n\nMedians, and in brackets the overhead against native as in the table above. The last column is the 2016 study's native-vs-Docker figure (another machine), for reference.\n\n\
         | workload | metric | native | Docker | berth mount | berth extract | 2016 study |\n|---|---|---|---|---|---|---|\n",
    );
    for d in docker_rows {
        let find = |mode: &str| berth_beside(rep, d, mode);
        let native = figures(d)
            .map(|f| num(f.native[0]))
            .or_else(|| (!d.native.is_empty()).then(|| num(spread(&d.native)[0])))
            .unwrap_or_else(|| "—".into());
        let _ = writeln!(
            s,
            "| {} | {} ({}) | {native} | {} | {} | {} | {} |",
            d.workload,
            d.metric,
            d.unit,
            cell(Some(d)),
            cell(find("mount")),
            cell(find("extract")),
            study_2016(&d.workload, &d.metric)
        );
    }
    s.push('\n');
    s
}

pub fn markdown(rep: &Report) -> String {
    let a = rep.args;
    let m = &rep.machine;
    let mut s = String::new();
    let _ = writeln!(s, "# berth benchmark report: native vs container\n");
    let _ = writeln!(
        s,
        "Made by `berth-bench suite` ({} to {}). Regenerate with `sudo benchmarks/run-suite.sh`; \
         how to read it: benchmarks/README.md.\n",
        rep.started, rep.finished
    );
    s.push_str("## Machine\n\n");
    let field = |k: &str| {
        m.get(k)
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string())
            })
            .unwrap_or_default()
    };
    for (label, key) in [
        ("CPU", "cpu"),
        ("cores", "cores"),
        ("memory (GiB)", "memory_gib"),
        ("kernel", "kernel"),
        ("Debian", "debian"),
        ("host", "hostname"),
        ("berth commit", "berth_commit"),
        ("image", "image"),
        ("image sha256", "image_sha256"),
        ("BLAS (host libblas.so.3)", "host_blas"),
        ("commands run as", "run_as"),
        ("load average before", "load_before"),
    ] {
        let _ = writeln!(s, "- {label}: {}", field(key));
    }
    let _ = writeln!(s, "- load average after: {}", rep.load_after);
    s.push_str("- package versions (host / image):\n");
    if let Some(host) = m.get("host_packages").and_then(Value::as_object) {
        for (p, v) in host {
            let img = m
                .get("image_packages")
                .and_then(|i| i.get(p))
                .and_then(Value::as_str)
                .unwrap_or("?");
            let same = if v.as_str() == Some(img) {
                ""
            } else {
                " **(differ)**"
            };
            let _ = writeln!(s, "  - {p}: {} / {img}{same}", v.as_str().unwrap_or("?"));
        }
    }
    s.push_str("\n## Method\n\n");
    let _ = writeln!(
        s,
        "Each workload runs natively and in the container alternately (native, container, native, \
         container, ...; with several container variants, each in turn after the native run): \
         {} warm-up round(s), not counted, then {} repetitions. Container runs are \
         `berth run --mode {}` unless the row says otherwise, with an empty site policy (berth's \
         defaults) except the host-MPI rows. Native and container runs are the same binaries \
         with the same inputs. Per side: median, min and max. **ratio c/n** is container median / native \
         median in the metric's own unit. **overhead %** is how much slower the container is \
         (time: container/native - 1; rates: native/container - 1; negative: faster), with a 95% \
         percentile **bootstrap** interval ({RESAMPLES} resamples of the paired repetitions, \
         the overhead of the resampled medians). With few repetitions the interval is rough; \
         with one there is none. A row that could not be measured says why; no number is \
         filled in for it.\n",
        a.warmup, a.reps, a.mode
    );
    s.push_str("## Results\n\n");
    s.push_str(&table(rep));
    s.push('\n');
    if !rep.refs.is_empty() {
        s.push_str("References (not measured here):\n\n");
        for r in &rep.refs {
            let _ = writeln!(
                s,
                "- {}: {} {} ({})",
                r.workload,
                num(r.value),
                r.unit,
                r.label
            );
        }
        s.push('\n');
    }
    s.push_str(&side_by_side(rep));
    s.push_str(
        "The seed's Docker figures, for comparison: ABAQUS s4b 114 s native vs 116.5 s in Docker \
         (+2.21%) on local disk, 117.3 vs 118.5 s (+1.04%) on Lustre; Felter et al. (IBM, 2014): \
         ~0 overhead for Linpack in containers.\n\n",
    );
    s.push_str("## Workloads, checks and notes\n\n");
    for n in &rep.notes {
        let _ = writeln!(s, "- {n}");
    }
    let missed: Vec<&Row> = rep
        .rows
        .iter()
        .filter(|r| figures(r).and_then(|f| f.target) == Some(false))
        .collect();
    if !missed.is_empty() {
        s.push_str("\n## Targets missed\n\n");
        for r in missed {
            let f = figures(r).unwrap();
            let _ = writeln!(
                s,
                "- {} / {} / {}: ratio {:.3}, overhead {:+.2}% (CI {})",
                r.workload,
                r.metric,
                r.container_label,
                f.ratio,
                f.overhead,
                f.ci.map(|(l, h)| format!("[{l:+.2}, {h:+.2}]"))
                    .unwrap_or_else(|| "n/a".into())
            );
        }
        s.push_str("\nA miss whose interval includes the target is within this machine's noise.\n");
    }
    s.push_str("\n## Plot\n\n![native vs container per workload](report.svg)\n");
    s
}

pub fn json(rep: &Report) -> Value {
    let rows: Vec<Value> = rep
        .rows
        .iter()
        .map(|r| {
            let f = figures(r);
            json!({
                "workload": r.workload,
                "metric": r.metric,
                "unit": r.unit,
                "higher_is_better": r.higher_is_better,
                "native_label": r.native_label,
                "container_label": r.container_label,
                "native_samples": r.native,
                "container_samples": r.container,
                "status": match &r.failed {
                    None => "ok",
                    Some(w) if w.starts_with("not run") => "not run",
                    Some(_) => "failed",
                },
                "why": r.failed,
                "n": f.as_ref().map(|f| f.n),
                "native": f.as_ref().map(|f| json!({"median": f.native[0], "min": f.native[1], "max": f.native[2]})),
                "container": f.as_ref().map(|f| json!({"median": f.container[0], "min": f.container[1], "max": f.container[2]})),
                "ratio": f.as_ref().map(|f| f.ratio),
                "overhead_pct": f.as_ref().map(|f| f.overhead),
                "overhead_ci95_pct": f.as_ref().and_then(|f| f.ci).map(|(l, h)| json!([l, h])),
                "target": r.target.map(|t| json!({"ratio": t.ratio, "at_least": t.at_least})),
                "target_met": f.as_ref().and_then(|f| f.target),
            })
        })
        .collect();
    json!({
        "tool": "berth-bench suite",
        "started": rep.started,
        "finished": rep.finished,
        "machine": rep.machine,
        "load_after": rep.load_after,
        "reps": rep.args.reps,
        "warmup": rep.args.warmup,
        "mode": rep.args.mode,
        "ci_method": format!("95% percentile bootstrap over paired repetitions, {RESAMPLES} resamples"),
        "rows": rows,
        "references": rep.refs.iter().map(|r| json!({"workload": r.workload, "label": r.label, "value": r.value, "unit": r.unit})).collect::<Vec<_>>(),
        "notes": rep.notes,
    })
}

pub fn write(rep: &Report, out: &Path) -> Result<(), String> {
    let w = |name: &str, text: String| {
        std::fs::write(out.join(name), text)
            .map_err(|e| format!("cannot write {}: {e}", out.join(name).display()))
    };
    w("report.md", markdown(rep))?;
    w(
        "report.json",
        serde_json::to_string_pretty(&json(rep)).map_err(|e| e.to_string())? + "\n",
    )
}
