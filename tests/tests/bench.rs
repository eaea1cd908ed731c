//! `berth-bench suite`: the native-vs-container report, run with tiny sizes and few repetitions
//! (no timing is asserted, only that the figures are there, paired, and honest), and bad
//! inputs: a missing binary, a run that fails, a wrong or missing image mark their rows with
//! why, no number is invented for them, and the other workloads still run.

use berth_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn bench_bin() -> PathBuf {
    let p = target_dir().join("debug/berth-bench");
    assert!(
        p.exists(),
        "{} is missing: cargo build --workspace",
        p.display()
    );
    p
}

/// The benchmark image (Debian 12 + Open MPI + hpcc + CalculiX + the I/O data), built once and
/// cached like the demo image.
fn bench_image() -> &'static (PathBuf, PathBuf) {
    static IMAGE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let cache = PathBuf::from(
            std::env::var("BERTH_BENCH_CACHE").unwrap_or_else(|_| "/var/cache/berth-bench".into()),
        );
        let (image, rootfs) = (cache.join("bench.sqsh"), cache.join("bench-rootfs"));
        if !image.exists() {
            assert!(
                is_root(),
                "{} is missing: run benchmarks/run-suite.sh as root",
                image.display()
            );
            let st = Command::new(workspace_root().join("benchmarks/images/build-bench.sh"))
                .arg(&image)
                .status()
                .unwrap();
            assert!(st.success(), "build-bench.sh failed");
        }
        for tool in ["/usr/bin/hpcc", "/usr/bin/ccx"] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: run scripts/install-deps.sh"
            );
        }
        (image, rootfs)
    })
}

struct Suite {
    out: PathBuf,
    run: Run,
    json: Value,
    md: String,
}

/// Run the suite as root (it runs every command as the test user) into a fresh directory.
fn suite(name: &str, args: &[&str]) -> Suite {
    let (image, rootfs) = bench_image();
    let out = PathBuf::from(format!(
        "/tmp/berth-tests/bench-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let mut cmd = Command::new(bench_bin());
    // No Docker daemon: the Docker rows say so and the rest goes on (a socket that never exists).
    cmd.env(
        "DOCKER_HOST",
        "unix:///nonexistent/berth-tests-no-docker.sock",
    );
    cmd.args(["suite", "--berth"])
        .arg(target_dir().join("debug/berth"));
    if !args.contains(&"--image") {
        cmd.arg("--image").arg(image);
    }
    cmd.arg("--rootfs")
        .arg(rootfs)
        .arg("--out")
        .arg(&out)
        .arg("--user")
        .arg(&user().name)
        .args(args);
    let run = run(cmd);
    let json = std::fs::read_to_string(out.join("report.json"))
        .map(|t| serde_json::from_str(&t).expect("report.json is JSON"))
        .unwrap_or(Value::Null);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap_or_default();
    Suite { out, run, json, md }
}

impl Drop for Suite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.out);
    }
}

fn rows<'a>(s: &'a Suite, workload: &str) -> Vec<&'a Value> {
    s.json["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["workload"].as_str().unwrap().starts_with(workload))
        .collect()
}

fn samples(r: &Value, side: &str) -> Vec<f64> {
    r[side]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// A measured row: both sides paired with `reps` positive figures, the statistics computed.
fn measured(r: &Value, reps: usize) {
    assert_eq!(r["status"], "ok", "{r}");
    for side in ["native_samples", "container_samples"] {
        let v = samples(r, side);
        assert_eq!(v.len(), reps, "{side}: {r}");
        assert!(v.iter().all(|x| x.is_finite() && *x > 0.0), "{r}");
    }
    assert!(r["ratio"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["overhead_pct"].as_f64().is_some(), "{r}");
    let ci = r["overhead_ci95_pct"]
        .as_array()
        .expect("a bootstrap interval for 2 reps");
    assert!(ci[0].as_f64().unwrap() <= ci[1].as_f64().unwrap(), "{r}");
}

/// Split rows into berth's and Docker's.
fn berth_and_docker(v: Vec<&Value>) -> (Vec<&Value>, Vec<&Value>) {
    v.into_iter()
        .partition(|r| !r["container_label"].as_str().unwrap().starts_with("docker"))
}

/// A Docker row without a daemon: said so, no number.
fn no_docker(r: &Value) {
    assert_eq!(r["status"], "not run", "{r}");
    assert!(
        r["why"].as_str().unwrap().contains("no docker daemon"),
        "{r}"
    );
    assert!(samples(r, "container_samples").is_empty(), "{r}");
    assert!(r["ratio"].is_null(), "{r}");
}

/// No number stands in for a row that could not be measured.
fn marked(r: &Value, why: &str) {
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        r["why"].as_str().unwrap().contains(why),
        "expected '{why}' in {r}"
    );
    assert!(samples(r, "container_samples").is_empty(), "{r}");
    for k in [
        "ratio",
        "overhead_pct",
        "overhead_ci95_pct",
        "container",
        "target_met",
    ] {
        assert!(r[k].is_null(), "{k} must be null: {r}");
    }
}

#[test]
fn suite_compares_every_workload_side_by_side_and_reports_it() {
    let s = suite(
        "full",
        &[
            "--only",
            "linpack,fea,mpi,io",
            "--reps",
            "2",
            "--warmup",
            "0",
            "--hpl-n",
            "600",
            "--hpl-nb",
            "64",
            "--fea-mesh",
            "4x2x2",
            "--mpi-iters",
            "300",
            "--io-write-mib",
            "4",
        ],
    )
    .run_ok();
    let (linpack, linpack_docker) = berth_and_docker(rows(&s, "Linpack"));
    assert_eq!(linpack.len(), 3, "HPL, DGEMM, STREAM");
    assert_eq!(linpack[0]["metric"], "HPL");
    assert_eq!(linpack[0]["unit"], "GFLOP/s");
    for r in &linpack {
        measured(r, 2);
    }
    let (fea, fea_docker) = berth_and_docker(rows(&s, "ABAQUS-style FEA"));
    assert_eq!(fea.len(), 1);
    measured(fea[0], 2);
    assert_eq!(fea[0]["unit"], "s");
    // Image MPI and host MPI injected (the suite checks which libmpi rank 0 maps).
    let (mpi, mpi_docker) = berth_and_docker(rows(&s, "MPI, 1 node"));
    assert_eq!(mpi.len(), 6);
    for r in &mpi {
        measured(r, 2);
    }
    // No daemon: the Docker side of each is marked, the native side still measured.
    for r in linpack_docker.iter().chain(&fea_docker).chain(&mpi_docker) {
        no_docker(r);
        assert_eq!(samples(r, "native_samples").len(), 2, "{r}");
    }
    assert_eq!(
        linpack_docker.len() + fea_docker.len() + mpi_docker.len(),
        7
    );
    assert!(mpi.iter().any(|r| r["container_label"]
        .as_str()
        .unwrap()
        .contains("host MPI injected")));
    // Across two hosts needs an allocation: said so, not measured.
    for r in rows(&s, "MPI, 2 hosts") {
        assert_eq!(r["status"], "not run", "{r}");
    }
    let (io, io_docker) = berth_and_docker(rows(&s, "I/O"));
    assert_eq!(io.len(), 6, "3 figures x (mount, extract)");
    for r in &io {
        measured(r, 2);
    }
    assert_eq!(io_docker.len(), 3);
    io_docker.iter().for_each(|r| no_docker(r));
    // The same binaries inside and outside, and the machine described.
    let notes: Vec<&str> = s.json["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("/usr/bin/hpcc` sha256") && n.contains("identical")),
        "{notes:?}"
    );
    assert!(notes
        .iter()
        .any(|n| n.contains("/usr/bin/ccx` sha256") && n.contains("identical")));
    let m = &s.json["machine"];
    for k in [
        "cpu",
        "kernel",
        "debian",
        "berth_commit",
        "date",
        "image_sha256",
    ] {
        assert!(!m[k].as_str().unwrap_or("").is_empty(), "machine.{k}: {m}");
    }
    assert!(m["cores"].as_u64().unwrap() >= 1);
    assert_eq!(m["host_packages"]["hpcc"], m["image_packages"]["hpcc"]);
    // Markdown: the machine, the table with every row, the CI method; the plot.
    for want in [
        "## Machine",
        "| workload | metric |",
        "bootstrap",
        "Linpack | HPL (GFLOP/s)",
        "report.svg",
    ] {
        assert!(s.md.contains(want), "report.md lacks {want}:\n{}", s.md);
    }
    assert!(!s.md.contains("FAILED"), "{}", s.md);
    assert!(s.md.contains("**NOT RUN**: no docker daemon"), "{}", s.md);
    assert!(s.md.contains("## Native, Docker and berth side by side"));
    let svg = std::fs::read_to_string(s.out.join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("Linpack: HPL") && svg.contains("I/O: read a 256 MiB file"));
}

impl Suite {
    fn run_ok(self) -> Suite {
        assert!(
            self.run.ok(),
            "berth-bench suite failed: {:?}\n{}\n{}",
            self.run.code,
            self.run.stdout,
            self.run.stderr
        );
        assert!(self.json.is_object(), "no report.json: {}", self.run.stderr);
        self
    }
}

#[test]
fn bad_inputs_mark_their_rows_and_the_other_workloads_go_on() {
    // A missing hpcc; a wrong image (the demo image has no ccx: the container run fails); MPI
    // still works in that image (the program is bind-mounted, the image has Open MPI).
    let demo = demo_image();
    let s = suite(
        "bad",
        &[
            "--only",
            "linpack,fea,mpi",
            "--reps",
            "1",
            "--warmup",
            "0",
            "--hpcc",
            "/nonexistent/hpcc",
            "--fea-mesh",
            "2x1x1",
            "--mpi-iters",
            "100",
            "--image",
            demo.to_str().unwrap(),
        ],
    )
    .run_ok();
    for r in rows(&s, "Linpack") {
        marked(r, "/nonexistent/hpcc is missing");
        assert!(samples(r, "native_samples").is_empty());
    }
    let fea = rows(&s, "ABAQUS-style FEA");
    // The native run worked and is kept; the container side failed, and says how.
    marked(fea[0], "berth --mode mount: `");
    assert!(
        fea[0]["why"].as_str().unwrap().contains("exit status"),
        "{}",
        fea[0]
    );
    assert_eq!(samples(fea[0], "native_samples").len(), 1);
    let (mpi, mpi_docker) = berth_and_docker(rows(&s, "MPI, 1 node"));
    for r in mpi {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(samples(r, "container_samples").len(), 1);
    }
    mpi_docker.iter().for_each(|r| no_docker(r));
    assert!(
        s.md.contains("**FAILED**: /nonexistent/hpcc is missing"),
        "{}",
        s.md
    );
    assert!(s.run.stderr.contains("FAILED"), "{}", s.run.stderr);
}

#[test]
fn a_missing_image_fails_the_container_rows_and_says_which() {
    let s = suite(
        "noimage",
        &[
            "--only",
            "mpi,startup",
            "--reps",
            "1",
            "--warmup",
            "0",
            "--mpi-iters",
            "100",
            "--startup-runs",
            "1",
            "--image",
            "/nonexistent/img.sqsh",
        ],
    )
    .run_ok();
    let all: Vec<&Value> = rows(&s, "MPI, 1 node")
        .into_iter()
        .chain(rows(&s, "start-up"))
        .filter(|r| !r["workload"].as_str().unwrap().contains("Charliecloud"))
        .filter(|r| !r["container_label"].as_str().unwrap().starts_with("docker"))
        .collect();
    assert_eq!(all.len(), 8);
    for r in all {
        marked(r, "/nonexistent/img.sqsh");
        assert_eq!(
            samples(r, "native_samples").len(),
            1,
            "the native side ran: {r}"
        );
    }
    // Against Charliecloud the baseline is ch-run on the same image: on the squashfs it fails
    // too, and every one of those rows is marked, not measured.
    let versus = rows(&s, "start-up vs Charliecloud");
    assert_eq!(versus.len(), 2);
    for r in versus {
        assert_eq!(r["status"], "failed", "{r}");
        assert!(r["ratio"].is_null(), "{r}");
    }
}

#[test]
fn sbatch_writes_a_script_that_runs_the_same_suite_on_real_nodes() {
    let dir = PathBuf::from(format!(
        "/tmp/berth-tests/bench-sbatch-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("bench.sh");
    let r = run({
        let mut c = Command::new(bench_bin());
        c.args(["suite", "--sbatch"]).arg(&script).args([
            "--only",
            "linpack,mpi,slurm",
            "--reps",
            "7",
            "--hpl-n",
            "40000",
            "--sbatch-nodes",
            "2",
        ]);
        c
    })
    .expect_ok("suite --sbatch");
    let text = std::fs::read_to_string(&script).unwrap();
    for want in [
        "#!/bin/bash",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=2",
        " suite ",
        "--reps 7",
        "--hpl-n 40000",
        "--only linpack,mpi",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
    assert!(
        !text.contains("--plugin"),
        "the local-cluster rows stay out: {text}"
    );
    assert!(r.stderr.contains("sbatch"));
    let st = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success(), "bash -n {}", script.display());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn python_large_image_and_scaling_rows_run_without_a_docker_daemon() {
    let s = suite(
        "newrows",
        &[
            "--only",
            "startup,python,large-image,scaling",
            "--mode",
            "mount,extract",
            "--reps",
            "2",
            "--warmup",
            "0",
            "--startup-runs",
            "1",
            "--large-gib",
            "0",
            "--scale-ranks",
            "1,2",
        ],
    )
    .run_ok();
    let (python, python_docker) = berth_and_docker(rows(&s, "Python imports"));
    assert_eq!(python.len(), 4, "cold and warm x (extract, mount)");
    for r in &python {
        measured(r, 2);
    }
    assert!(python
        .iter()
        .any(|r| r["metric"].as_str().unwrap().ends_with("cold")));
    let (large, large_docker) = berth_and_docker(rows(&s, "large image"));
    assert_eq!(large.len(), 2, "first start, extract and mount");
    for r in &large {
        measured(r, 2);
    }
    let (scaling, scaling_docker) = berth_and_docker(rows(&s, "start-up scaling, 1 node"));
    assert_eq!(scaling.len(), 4, "1 and 2 ranks x (mount, extract)");
    for r in &scaling {
        measured(r, 2);
    }
    assert!(scaling_docker.is_empty());
    let (_, startup_docker) = berth_and_docker(rows(&s, "start-up"));
    assert_eq!(
        python_docker.len() + large_docker.len() + startup_docker.len(),
        4
    );
    for r in python_docker
        .iter()
        .chain(&large_docker)
        .chain(&startup_docker)
    {
        no_docker(r);
    }
    // Without --plugin the test-cluster rows say what they need; the image file is gone.
    for r in rows(&s, "start-up scaling, nodes") {
        assert_eq!(r["status"], "not run", "{r}");
    }
    assert!(!s.md.contains("FAILED"), "{}", s.md);
    let left: Vec<_> = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("berth-bench-suite-")
        })
        .filter(|e| e.path().join("large.sqsh").exists())
        .collect();
    assert!(left.is_empty(), "large image left behind: {left:?}");
}

/// The release plugin, copied where srun (as the test user) can load it.
fn plugin_copy() -> (PathBuf, PathBuf) {
    let built = target_dir().join("release/libspank_berth.so");
    assert!(
        built.exists(),
        "{} is missing: cargo build --release -p berth-slurm",
        built.display()
    );
    let dir = per_process_dir("berth-bench-plugin");
    let copy = dir.join("spank_berth.so");
    copy_executable(&built, &copy);
    (dir, copy)
}

#[test]
fn test_cluster_rows_mpi_over_veth_and_nodes_are_measured() {
    let (_dir, plugin) = plugin_copy();
    let s = suite(
        "cluster",
        &[
            "--only",
            "mpi,scaling",
            "--reps",
            "2",
            "--warmup",
            "0",
            "--mpi-iters",
            "100",
            "--mpi-tcp-iters",
            "100",
            "--startup-runs",
            "2",
            "--scale-ranks",
            "1",
            "--scale-nodes",
            "1,2",
            "--plugin",
            plugin.to_str().unwrap(),
        ],
    )
    .run_ok();
    let veth = rows(&s, "MPI, 2 hosts (TCP over veth)");
    assert_eq!(veth.len(), 6, "3 figures x (image MPI, host MPI injected)");
    for r in &veth {
        measured(r, 2);
    }
    let nodes = rows(&s, "start-up scaling, nodes");
    assert_eq!(nodes.len(), 2);
    for r in &nodes {
        measured(r, 2);
    }
    assert_eq!(nodes[1]["metric"], "srun -N2 -n2 step, `true`");
    assert!(s.md.contains("TCP over veth"), "{}", s.md);
}

#[test]
fn srun_nodes_prints_plain_and_container_per_node_count() {
    let (image, _) = bench_image();
    let (_dir, plugin) = plugin_copy();
    let r = run({
        let mut c = Command::new(bench_bin());
        c.args(["srun-nodes", "--plugin"])
            .arg(&plugin)
            .arg("--image")
            .arg(image)
            .args([
                "--user",
                &user().name,
                "--nodes",
                "1,2",
                "--runs",
                "1",
                "--warmup",
                "0",
            ]);
        c
    })
    .expect_ok("berth-bench srun-nodes");
    for want in [
        "srun -N1 ",
        "srun -N2 ",
        "plain",
        "container",
        "ratio",
        "oversubscribe",
    ] {
        assert!(r.stdout.contains(want), "{want} not in:\n{}", r.stdout);
    }
}
