//! `berth-bench startup`: berth's start-up time, peak RSS and image read throughput, measured
//! side by side with the native command and Charliecloud's ch-run in one run.
//!
//! Start-up runs are interleaved round-robin (one run of each command per round) so that
//! machine noise hits every command alike; warm-up rounds are not counted. Speed is reported
//! as ratios of medians against the named peer, never as absolute pass/fail on time alone.

use crate::proc::{self, Exit};
use crate::stats::{median, verdict, Summary};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[derive(clap::Args)]
pub struct Args {
    /// The berth launcher binary
    #[arg(long)]
    pub berth: PathBuf,
    /// Charliecloud's ch-run (the peer)
    #[arg(long, default_value = "ch-run")]
    pub ch_run: PathBuf,
    /// A squashfs image
    #[arg(long)]
    pub image: PathBuf,
    /// The same image unpacked into a directory (for `ch-run DIR`)
    #[arg(long)]
    pub rootfs: PathBuf,
    /// Timed runs of each command (medians need at least 20)
    #[arg(long, default_value_t = 30)]
    pub runs: usize,
    /// Untimed warm-up rounds before the timed ones
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Repetitions of the read-throughput test per mode
    #[arg(long, default_value_t = 3)]
    pub read_reps: usize,
    /// Print the figures as JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Targets: berth extract mode within 1.2x of ch-run on a directory, mount mode at most half
/// of ch-run's own squashfs mount, and the launcher under 5 MiB peak RSS.
const EXTRACT_VS_CH_RUN_DIR_MAX: f64 = 1.2;
const MOUNT_VS_CH_RUN_SQSH_MAX: f64 = 0.5;
const RSS_MAX_MIB: f64 = 5.0;

/// The image's own content: every other top-level directory is empty in the image or replaced
/// by a host mount (/proc, /sys, /dev, /tmp, the home directory).
const READ_DIRS: &str = "/usr /etc /var /opt";
const READERS: usize = 2;

/// One command under test.
struct Subject {
    key: &'static str,
    label: &'static str,
    argv: Vec<OsString>,
    /// Collect peak RSS against the target (berth's own runs).
    rss_target: bool,
    wall_ms: Vec<f64>,
    rss_mib: Vec<f64>,
    /// Peak RSS of helpers the command left behind (the image server in mount mode).
    helper_rss_mib: Vec<(String, f64)>,
}

impl Subject {
    fn new(key: &'static str, label: &'static str, argv: Vec<OsString>, rss_target: bool) -> Self {
        Subject {
            key,
            label,
            argv,
            rss_target,
            wall_ms: Vec::new(),
            rss_mib: Vec::new(),
            helper_rss_mib: Vec::new(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        proc::force_fork(&mut cmd);
        cmd
    }

    fn summary(&self) -> Summary {
        Summary::of(&self.wall_ms)
    }
}

fn os(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_os_string()).collect()
}

/// Mount mode with a lingering container: the first run leaves the container (and its FUSE
/// mount, warm) for LINGER_SECS, later runs of the same image start in it.
const LINGER_SECS: &str = "30";

fn berth_linger_argv(a: &Args, command: &[&str]) -> Vec<OsString> {
    let mut v = os(&[
        &a.berth,
        &"run",
        &"--no-entrypoint",
        &"--mode",
        &"mount",
        &"--linger",
        &LINGER_SECS,
        &a.image,
        &"--",
    ]);
    v.extend(command.iter().map(OsString::from));
    v
}

fn berth_argv(a: &Args, mode: &str, command: &[&str]) -> Vec<OsString> {
    let mut v = os(&[
        &a.berth,
        &"run",
        // Same work as ch-run: exec the command, not the image's entrypoint script first.
        &"--no-entrypoint",
        &"--no-join",
        &"--mode",
        &mode,
        &a.image,
        &"--",
    ]);
    v.extend(command.iter().map(OsString::from));
    v
}

fn kib_to_mib(kib: i64) -> f64 {
    kib as f64 / 1024.0
}

pub fn run(a: &Args) -> Result<(), String> {
    if nix::unistd::geteuid().is_root() {
        return Err(
            "run as a non-root user, e.g. `runuser -u berthtest -- berth-bench startup ...`: \
             berth and ch-run behave differently for root"
                .into(),
        );
    }
    if a.runs == 0 || a.read_reps == 0 {
        return Err("--runs and --read-reps must be at least 1".into());
    }
    if a.runs < 20 {
        eprintln!(
            "berth-bench: warning: --runs {} is below 20; medians are not reliable",
            a.runs
        );
    }
    ensure_user_env();
    proc::become_subreaper().map_err(|e| format!("cannot become a child subreaper: {e}"))?;

    let mut subjects = vec![
        Subject::new("native", "native true", os(&[&"true"]), false),
        Subject::new(
            "berth_extract",
            "berth --mode extract",
            berth_argv(a, "extract", &["true"]),
            true,
        ),
        Subject::new(
            "berth_mount",
            "berth --mode mount",
            berth_argv(a, "mount", &["true"]),
            true,
        ),
        Subject::new(
            "berth_mount_linger",
            "berth --mode mount --linger",
            berth_linger_argv(a, &["true"]),
            true,
        ),
        Subject::new(
            "ch_run_dir",
            "ch-run DIR",
            os(&[&a.ch_run, &a.rootfs, &"--", &"true"]),
            false,
        ),
        Subject::new(
            "ch_run_sqsh",
            "ch-run IMG.sqsh",
            os(&[&a.ch_run, &a.image, &"--", &"true"]),
            false,
        ),
    ];

    // Unpack the image into the extract cache now, so every extract run below is warm.
    eprintln!("berth-bench: warming the extract cache");
    proc::run_timed(&mut subjects[1].command())?;
    proc::reap_orphans(proc::ORPHAN_TIMEOUT);
    // Start the lingering container outside our subreaper role, so its keeper is not one of
    // the leftovers each round waits for; it exits by itself LINGER_SECS after the last run.
    proc::set_subreaper(false).map_err(|e| format!("prctl: {e}"))?;
    proc::run_timed(&mut subjects[3].command())?;
    proc::set_subreaper(true).map_err(|e| format!("prctl: {e}"))?;

    eprintln!(
        "berth-bench: start-up: {} warm-up + {} timed rounds of {} commands",
        a.warmup,
        a.runs,
        subjects.len()
    );
    for round in 0..a.warmup + a.runs {
        for s in subjects.iter_mut() {
            let Exit { wall, maxrss_kib } = proc::run_timed(&mut s.command())?;
            let helpers = proc::reap_orphans(proc::ORPHAN_TIMEOUT);
            if round < a.warmup {
                continue;
            }
            s.wall_ms.push(wall.as_secs_f64() * 1e3);
            s.rss_mib.push(kib_to_mib(maxrss_kib));
            for h in helpers {
                s.helper_rss_mib.push((h.comm, kib_to_mib(h.maxrss_kib)));
            }
        }
    }

    eprintln!(
        "berth-bench: read throughput: {} repetitions per mode, {READERS} readers",
        a.read_reps
    );
    let read = read_benchmark(a)?;

    let report = Report {
        args: a,
        subjects: &subjects,
        read: &read,
    };
    if a.json {
        let text = serde_json::to_string_pretty(&report.to_json()).expect("JSON of plain values");
        println!("{text}");
    } else {
        report.print();
    }
    Ok(())
}

/// ch-run refuses to start without $USER; fill it in from the passwd entry if unset.
pub(crate) fn ensure_user_env() {
    if std::env::var_os("USER").is_some() {
        return;
    }
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::getuid()) else {
        return;
    };
    let name = user.name;
    // Single-threaded at this point, so changing the environment is safe.
    std::env::set_var("USER", name);
}

/// Read throughput of one mode: MB/s of each repetition and the bytes one reader reads.
struct ReadResult {
    mode: &'static str,
    tree_bytes: u64,
    mb_s: Vec<f64>,
}

/// The shell run in the container: READERS readers in parallel, each reading every readable
/// regular file of the image once; the time is taken inside, so container start-up and
/// teardown are not counted. The sizes are listed afterwards (outside the timing) so the bytes
/// read are known exactly as the container sees them.
fn read_script() -> String {
    let mut s = format!(
        "d='{READ_DIRS}'\n\
         r() {{ find $d -type f -readable -print0 | xargs -0 cat >/dev/null; }}\n\
         t0=$(date +%s%N)\n"
    );
    for _ in 0..READERS {
        s.push_str("r &\n");
    }
    s.push_str(
        "wait\n\
         t1=$(date +%s%N)\n\
         echo time $t0 $t1\n\
         find $d -type f -readable -printf 'size %s\\n'\n",
    );
    s
}

/// One container run of the read script: (seconds, bytes one reader read).
fn read_once(a: &Args, mode: &str) -> Result<(f64, u64), String> {
    let script = read_script();
    let argv = berth_argv(a, mode, &["sh", "-c", &script]);
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start {}: {e}", a.berth.display()))?;
    proc::reap_orphans(proc::ORPHAN_TIMEOUT);
    if !out.status.success() {
        return Err(format!(
            "read benchmark in {mode} mode failed ({})",
            out.status
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut t, mut bytes) = (None, 0u64);
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("time") => {
                let t0: u128 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                let t1: u128 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                t = Some(t1.saturating_sub(t0) as f64 / 1e9);
            }
            Some("size") => bytes += f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0),
            _ => {}
        }
    }
    match t {
        Some(secs) if secs > 0.0 && bytes > 0 => Ok((secs, bytes)),
        _ => Err(format!(
            "read benchmark in {mode} mode printed no timing:\n{text}"
        )),
    }
}

fn read_benchmark(a: &Args) -> Result<Vec<ReadResult>, String> {
    let mut results = vec![
        ReadResult {
            mode: "mount",
            tree_bytes: 0,
            mb_s: Vec::new(),
        },
        ReadResult {
            mode: "extract",
            tree_bytes: 0,
            mb_s: Vec::new(),
        },
    ];
    // One untimed pass per mode first: both modes then start from a warm host page cache
    // (the .sqsh file, the extracted files). Which is all we can offer: dropping the page cache
    // needs root. Each mount-mode run is a fresh FUSE mount, so its own cache starts empty.
    for r in &results {
        read_once(a, r.mode)?;
    }
    for _ in 0..a.read_reps {
        for r in results.iter_mut() {
            let (secs, bytes) = read_once(a, r.mode)?;
            r.tree_bytes = bytes;
            r.mb_s.push((READERS as u64 * bytes) as f64 / 1e6 / secs);
        }
    }
    Ok(results)
}

struct Report<'a> {
    args: &'a Args,
    subjects: &'a [Subject],
    read: &'a [ReadResult],
}

impl Report<'_> {
    fn subject(&self, key: &str) -> &Subject {
        self.subjects
            .iter()
            .find(|s| s.key == key)
            .expect("known subject")
    }

    fn ratio(&self, num: &str, den: &str) -> f64 {
        self.subject(num).summary().median / self.subject(den).summary().median
    }

    /// (key, label, value, target) for each start-up ratio.
    fn ratios(&self) -> [(&'static str, &'static str, f64, f64); 3] {
        [
            (
                "extract_vs_ch_run_dir",
                "berth extract / ch-run DIR",
                self.ratio("berth_extract", "ch_run_dir"),
                EXTRACT_VS_CH_RUN_DIR_MAX,
            ),
            (
                "mount_vs_ch_run_sqsh",
                "berth mount / ch-run IMG.sqsh",
                self.ratio("berth_mount", "ch_run_sqsh"),
                MOUNT_VS_CH_RUN_SQSH_MAX,
            ),
            (
                "mount_linger_vs_ch_run_sqsh",
                "berth mount --linger / ch-run sqsh",
                self.ratio("berth_mount_linger", "ch_run_sqsh"),
                MOUNT_VS_CH_RUN_SQSH_MAX,
            ),
        ]
    }

    /// Median peak RSS of each helper process name seen (berth-imagefs), per subject.
    fn helpers(&self) -> Vec<(&'static str, String, f64)> {
        let mut out = Vec::new();
        for s in self.subjects {
            let mut names: Vec<&String> = s.helper_rss_mib.iter().map(|(n, _)| n).collect();
            names.sort();
            names.dedup();
            for name in names {
                let v: Vec<f64> = s
                    .helper_rss_mib
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, m)| *m)
                    .collect();
                out.push((s.label, name.clone(), median(&v)));
            }
        }
        out
    }

    fn read_ratio(&self) -> f64 {
        median(&self.read[0].mb_s) / median(&self.read[1].mb_s)
    }

    fn print(&self) {
        let a = self.args;
        println!("berth-bench startup");
        println!("  image   {}", a.image.display());
        println!("  rootfs  {}", a.rootfs.display());
        println!(
            "  {} timed runs per command after {} warm-up rounds, interleaved round-robin",
            a.runs, a.warmup
        );
        println!();
        println!("Commands");
        for s in self.subjects {
            let argv: Vec<_> = s.argv.iter().map(|p| p.to_string_lossy()).collect();
            println!("  {:<22} {}", s.label, argv.join(" "));
        }
        println!();
        println!("Start-up wall time of `true` (ms)     median      p10      p90");
        for s in self.subjects {
            let m = s.summary();
            println!(
                "  {:<34} {:>8.2} {:>8.2} {:>8.2}",
                s.label, m.median, m.p10, m.p90
            );
        }
        println!();
        println!("Ratios of medians                      value   target   result");
        for (_, label, value, target) in self.ratios() {
            println!(
                "  {:<34} {:>6.3}   <= {:<4} {}",
                label,
                value,
                target,
                verdict(value <= target)
            );
        }
        println!();
        println!("Peak RSS (MiB, median ru_maxrss from wait4)  median   target   result");
        for s in self.subjects.iter().filter(|s| s.rss_target) {
            let m = median(&s.rss_mib);
            println!(
                "  {:<42} {:>6.2}   < {:<5} {}",
                s.label,
                m,
                RSS_MAX_MIB,
                verdict(m < RSS_MAX_MIB)
            );
        }
        let native = median(&self.subject("native").rss_mib);
        println!("  {:<42} {:>6.2}   (reference)", "native true", native);
        for (label, name, m) in self.helpers() {
            let what = format!("{name} (left by {label})");
            println!("  {what:<42} {m:>6.2}   (not in the target)");
        }
        println!("  note: berth execs the command, so its ru_maxrss is the peak of berth and");
        println!("  `true` together; `true` alone is the native line.");
        println!();
        println!(
            "Read throughput: {READERS} parallel readers, each reading every regular file under {READ_DIRS}"
        );
        println!(
            "  {} repetitions, median; time taken inside the container",
            a.read_reps
        );
        println!("                                     bytes/reader     MB/s");
        for r in self.read {
            println!(
                "  berth --mode {:<22} {:>14} {:>8.1}",
                r.mode,
                r.tree_bytes,
                median(&r.mb_s)
            );
        }
        println!("  {:<35} {:>23.2}", "mount / extract", self.read_ratio());
        println!("  note: host page cache is warm for both modes (dropping it needs root); each");
        println!("  mount-mode run is a fresh FUSE mount, so FUSE's own cache starts cold.");
    }

    fn to_json(&self) -> Value {
        let a = self.args;
        let mut startup = serde_json::Map::new();
        for s in self.subjects {
            let m = s.summary();
            startup.insert(
                s.key.into(),
                json!({
                    "command": s.argv.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>(),
                    "median_ms": m.median,
                    "p10_ms": m.p10,
                    "p90_ms": m.p90,
                }),
            );
        }
        let mut ratios = serde_json::Map::new();
        for (key, _, value, target) in self.ratios() {
            ratios.insert(
                key.into(),
                json!({ "value": value, "target_max": target, "pass": value <= target }),
            );
        }
        let mut rss = serde_json::Map::new();
        rss.insert(
            "note".into(),
            json!("ru_maxrss from wait4; berth execs the command, so it covers berth and `true`"),
        );
        rss.insert("target_max_mib".into(), json!(RSS_MAX_MIB));
        for s in self.subjects.iter().filter(|s| s.rss_target) {
            let m = median(&s.rss_mib);
            rss.insert(
                s.key.into(),
                json!({ "median_mib": m, "pass": m < RSS_MAX_MIB }),
            );
        }
        rss.insert(
            "native".into(),
            json!({ "median_mib": median(&self.subject("native").rss_mib) }),
        );
        let helpers: Vec<Value> = self
            .helpers()
            .into_iter()
            .map(|(label, name, m)| json!({ "process": name, "left_by": label, "median_mib": m }))
            .collect();
        rss.insert("helpers".into(), json!(helpers));
        let mut read = serde_json::Map::new();
        read.insert("readers".into(), json!(READERS));
        read.insert(
            "dirs".into(),
            json!(READ_DIRS.split(' ').collect::<Vec<_>>()),
        );
        read.insert("repetitions".into(), json!(a.read_reps));
        for r in self.read {
            read.insert(
                format!("berth_{}", r.mode),
                json!({
                    "bytes_per_reader": r.tree_bytes,
                    "median_mb_s": median(&r.mb_s),
                    "mb_s": r.mb_s,
                }),
            );
        }
        read.insert("mount_vs_extract".into(), json!(self.read_ratio()));
        json!({
            "benchmark": "startup",
            "image": a.image,
            "rootfs": a.rootfs,
            "runs": a.runs,
            "warmup": a.warmup,
            "startup": startup,
            "ratios": ratios,
            "peak_rss": rss,
            "read_throughput": read,
        })
    }
}
