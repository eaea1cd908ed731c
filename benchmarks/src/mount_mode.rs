//! `berth-bench mount-mode`: berth's mount mode (its own FUSE server, `berth-imagefs`, and the
//! image keeper that keeps one mount per user, node and image warm) against its peers, in one
//! interleaved run: start-up against `ch-run IMG.sqsh`, file access against extract mode, 16
//! runs starting at once, and the keeper's memory. Targets as ratios.
//!
//! The first run on a node (a fresh mount, or a keeper that has to start) and later runs (the
//! keeper warm) are separate rows. "Cold" I/O is a fresh mount (`--image-idle 0`): its FUSE page
//! cache and block cache start empty, but the host's page cache holds the .sqsh file, because
//! dropping it needs root.

use crate::proc;
use crate::stats::{median, verdict, Summary};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// The berth launcher binary
    #[arg(long, default_value = "target/release/berth")]
    pub berth: PathBuf,
    /// Charliecloud's ch-run (the start-up peer)
    #[arg(long, default_value = "ch-run")]
    pub ch_run: PathBuf,
    /// The demo image the test image is made from (plus /bench)
    #[arg(long, default_value = "/var/cache/berth-test/demo.sqsh")]
    pub demo_image: PathBuf,
    /// Where the test image is built once and kept
    #[arg(long, default_value = "/var/tmp/berth-bench/mount-mode")]
    pub cache_dir: PathBuf,
    /// Timed start-up rounds (medians need at least 20)
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Untimed start-up warm-up rounds
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed I/O rounds (after one untimed round)
    #[arg(long, default_value_t = 5)]
    pub io_runs: usize,
    /// Runs started at once
    #[arg(long, default_value_t = 16)]
    pub burst: usize,
    /// The image server's block cache (policy's image_cache_mib), for the memory target
    #[arg(long, default_value_t = 64.0)]
    pub block_cache_mib: f64,
    /// Print the figures as JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Only the start-up rows and their targets (no I/O, burst or memory): quick iterations
    #[arg(long)]
    pub startup_only: bool,
}

/// The targets: ratios of medians, and the keeper's memory.
const WARM_VS_CH_RUN_MAX: f64 = 0.35;
const FIRST_VS_CH_RUN_MAX: f64 = 0.85;
const WALK_WARM_MAX: f64 = 1.5;
const WALK_COLD_MAX: f64 = 3.0;
const STAT_WARM_MAX: f64 = 2.0;
const READ_WARM_MIN: f64 = 0.5;
const READ_COLD_MIN: f64 = 0.35;
const KEEPER_RSS_MIB: f64 = 32.0;

/// The keeper's idle time for the warm rows: longer than the whole benchmark.
const IDLE_WARM: &str = "600";
/// How long the concurrent runs may take to be all inside their containers.
const BURST_TIMEOUT: Duration = Duration::from_secs(180);
/// The FUSE server's process name (berth sets it with PR_SET_NAME).
const SERVER_COMM: &str = "berth-imagefs";
/// Where the benchmark binary is bind-mounted in the container, to time the I/O from inside.
const PROBE_AT: &str = "/bench-probe";

// ---------------------------------------------------------------------------------------------
// The test image: the demo image plus /bench, built once into the cache directory.

const SMALL_DIRS: usize = 100;
const SMALL_PER_DIR: usize = 100;
const SMALL_MIN: u64 = 1024;
const SMALL_MAX: u64 = 4096;
const BIG_BYTES: u64 = 256 << 20;
/// Changes whenever the generated content changes, so a stale cached image is rebuilt.
const RECIPE: &str = "v1 small=100x100 1024..=4096 big=256MiB splitmix64(0x6265727468)";

/// A deterministic, incompressible byte stream (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

struct Image {
    path: PathBuf,
    compression: &'static str,
    block_size: u32,
    bytes: u64,
}

fn err<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// The cached image, built if missing or made by another recipe or from another demo image.
fn ensure_image(a: &Args) -> Result<Image, String> {
    let dir = &a.cache_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| {
            format!(
                "cannot create {} ({e}); give --cache-dir a directory you can write",
                dir.display()
            )
        })?;
    let path = dir.join("bench.sqsh");
    let stamp_path = dir.join("bench.stamp");
    let demo = std::fs::metadata(&a.demo_image).map_err(|e| {
        format!(
            "cannot read the demo image {} ({e}); give --demo-image",
            a.demo_image.display()
        )
    })?;
    let stamp = format!(
        "{RECIPE}\n{} {} {}\n",
        a.demo_image.display(),
        demo.size(),
        demo.mtime()
    );
    let fresh =
        path.exists() && std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(&stamp);
    if !fresh {
        build_image(a, &path)?;
        std::fs::write(&stamp_path, &stamp)
            .map_err(err(format!("cannot write {}", stamp_path.display())))?;
    }
    describe_image(&path)
}

fn build_image(a: &Args, out: &Path) -> Result<(), String> {
    eprintln!(
        "berth-bench: building the test image {} (once; about a minute)",
        out.display()
    );
    let pid = std::process::id();
    let tree = a.cache_dir.join(format!("tree.{pid}"));
    let tmp = a.cache_dir.join(format!("bench.sqsh.{pid}"));
    let result = (|| {
        let bench = tree.join("bench");
        let mut rng = Rng(0x62_6572_7468);
        let mut buf = vec![0u8; SMALL_MAX as usize];
        for d in 0..SMALL_DIRS {
            let sub = bench.join("small").join(format!("d{d:02}"));
            std::fs::create_dir_all(&sub)
                .map_err(err(format!("cannot create {}", sub.display())))?;
            for f in 0..SMALL_PER_DIR {
                let len = (SMALL_MIN + rng.next() % (SMALL_MAX - SMALL_MIN + 1)) as usize;
                rng.fill(&mut buf[..len]);
                let p = sub.join(format!("f{f:03}"));
                std::fs::write(&p, &buf[..len])
                    .map_err(err(format!("cannot write {}", p.display())))?;
            }
        }
        let big = bench.join("big");
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(&big).map_err(err(format!("cannot create {}", big.display())))?,
        );
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..BIG_BYTES >> 20 {
            rng.fill(&mut chunk);
            w.write_all(&chunk)
                .map_err(err("cannot write the big file"))?;
        }
        w.flush().map_err(err("cannot write the big file"))?;
        drop(w);
        // Append /bench to a copy of the demo image: no root needed to keep the demo's owners,
        // modes and device files, and the demo's compressor and block size carry over.
        std::fs::copy(&a.demo_image, &tmp)
            .map_err(err(format!("cannot copy {}", a.demo_image.display())))?;
        let made = Command::new("mksquashfs")
            .arg(&bench)
            .arg(&tmp)
            .args([
                "-keep-as-directory",
                "-all-root",
                "-no-xattrs",
                "-no-recovery",
            ])
            .args(["-no-progress", "-quiet"])
            .stdin(Stdio::null())
            .output()
            .map_err(err("cannot run mksquashfs (install squashfs-tools)"))?;
        if !made.status.success() {
            return Err(format!(
                "mksquashfs failed ({}): {}",
                made.status,
                String::from_utf8_lossy(&made.stderr).trim()
            ));
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
            .map_err(err("cannot chmod the image"))?;
        std::fs::rename(&tmp, out).map_err(err("cannot put the image in place"))
    })();
    let _ = std::fs::remove_dir_all(&tree);
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Compressor and block size from the superblock (squashfs 4.0 layout).
fn describe_image(path: &Path) -> Result<Image, String> {
    let mut sb = [0u8; 96];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut sb))
        .map_err(err(format!("cannot read {}", path.display())))?;
    if &sb[..4] != b"hsqs" {
        return Err(format!("{} is not a squashfs image", path.display()));
    }
    let block_size = u32::from_le_bytes(sb[12..16].try_into().expect("4 bytes"));
    let compression = match u16::from_le_bytes([sb[20], sb[21]]) {
        1 => "gzip",
        2 => "lzma",
        3 => "lzo",
        4 => "xz",
        5 => "lz4",
        6 => "zstd",
        _ => "unknown",
    };
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(Image {
        path: path.to_path_buf(),
        compression,
        block_size,
        bytes,
    })
}

// ---------------------------------------------------------------------------------------------
// The probe: the timed part of the I/O rows, run inside the container (this binary,
// bind-mounted), so start-up and teardown are not counted.

/// `berth-bench mount-mode-probe walk|stat|read PATH [READERS]`: prints one line,
/// `probe ns=N bytes=N files=N`.
pub fn probe(what: &str, path: &Path, readers: usize) -> Result<(), String> {
    let t0 = Instant::now();
    let (bytes, files) = match what {
        // Walk the tree and read every file, as `find -type f | xargs cat` does.
        "walk" => walk(path, &mut read_all)?,
        // Walk the tree and lstat every file, as `find -printf %s` does.
        "stat" => walk(path, &mut |p, _| Ok(std::fs::symlink_metadata(p)?.len()))?,
        // READERS threads, each reading the whole file in 1 MiB reads, as `dd bs=1M` does.
        "read" => {
            let threads: Vec<_> = (0..readers.max(1))
                .map(|_| {
                    let path = path.to_path_buf();
                    std::thread::spawn(move || read_all(&path, &mut vec![0u8; 1 << 20]))
                })
                .collect();
            let mut total = 0;
            for t in threads {
                total += t
                    .join()
                    .map_err(|_| "a reader panicked".to_string())?
                    .map_err(err(format!("cannot read {}", path.display())))?;
            }
            (total, readers.max(1) as u64)
        }
        _ => return Err(format!("unknown probe '{what}'")),
    };
    let ns = t0.elapsed().as_nanos();
    println!("probe ns={ns} bytes={bytes} files={files}");
    Ok(())
}

/// Read a file to its end in `buf`-sized reads: the bytes read.
fn read_all(path: &Path, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    loop {
        match f.read(buf)? {
            0 => return Ok(n),
            k => n += k as u64,
        }
    }
}

type Visit<'a> = dyn FnMut(&Path, &mut [u8]) -> std::io::Result<u64> + 'a;

/// Visit every regular file under `root` (types from readdir, as find does): (bytes, files).
fn walk(root: &Path, visit: &mut Visit) -> Result<(u64, u64), String> {
    let mut buf = vec![0u8; 64 << 10];
    let (mut bytes, mut files) = (0, 0);
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(err(format!("cannot list {}", dir.display())))?;
        for e in entries {
            let e = e.map_err(err(format!("cannot list {}", dir.display())))?;
            let t = e.file_type().map_err(err("cannot read an entry's type"))?;
            let p = e.path();
            if t.is_dir() {
                dirs.push(p);
            } else if t.is_file() {
                bytes += visit(&p, &mut buf).map_err(err(format!("{}", p.display())))?;
                files += 1;
            }
        }
    }
    Ok((bytes, files))
}

// ---------------------------------------------------------------------------------------------
// What runs, and where berth keeps its state for it.

/// How a command is run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Native,
    /// `berth run --mode extract`, the extract cache warm.
    Extract,
    /// `--mode mount --image-idle 600`, the keeper started by an untimed run and kept.
    Warm,
    /// `--mode mount --image-idle 0`: a FUSE mount of the run's own, as before the keeper.
    Fresh,
    /// `--mode mount --image-idle 600` with a new keeper each run (killed after it).
    ColdKeeper,
    ChRun,
}

impl Side {
    fn key(self) -> &'static str {
        match self {
            Side::Native => "native",
            Side::Extract => "extract",
            Side::Warm => "mount_warm",
            Side::Fresh => "mount_fresh",
            Side::ColdKeeper => "mount_cold_keeper",
            Side::ChRun => "ch_run_sqsh",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Side::Native => "native true",
            Side::Extract => "berth extract (cache warm)",
            Side::Warm => "berth mount, keeper warm",
            Side::Fresh => "berth mount, fresh mount (idle 0)",
            Side::ColdKeeper => "berth mount, new keeper",
            Side::ChRun => "ch-run IMG.sqsh",
        }
    }
}

/// The benchmark's scratch directory: berth's state directories, an empty policy. Removed at
/// the end, with the keepers it started.
struct Work {
    dir: PathBuf,
    /// Extract cache, fresh mounts and the warm keeper.
    state: PathBuf,
    /// Keepers that start each run.
    state_cold: PathBuf,
    /// The 16 concurrent runs: no keeper there before them.
    state_burst: PathBuf,
    policy: PathBuf,
    /// The warm keeper (not our child: it was started outside our subreaper role).
    warm_keeper: Option<i32>,
}

impl Work {
    fn new() -> Result<Work, String> {
        let dir =
            std::env::temp_dir().join(format!("berth-bench-mount-mode.{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(err(format!("cannot create {}", dir.display())))?;
        let policy = dir.join("empty.toml");
        std::fs::write(
            &policy,
            "# empty: the site policy must not change the comparison\n",
        )
        .map_err(err(format!("cannot write {}", policy.display())))?;
        Ok(Work {
            state: dir.join("state"),
            state_cold: dir.join("state-cold"),
            state_burst: dir.join("state-burst"),
            policy,
            dir,
            warm_keeper: None,
        })
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if let Some(pid) = self.warm_keeper.take() {
            kill_server(pid);
        }
        // Keepers reparented to us (cold, burst) that an error left behind.
        for pid in our_servers() {
            kill_server(pid);
            let _ = proc::reap_orphans(Duration::from_secs(2));
        }
        force_remove(&self.dir);
    }
}

/// Remove a tree even where the extract cache left directories without write permission.
fn force_remove(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
        return;
    }
    fn open_up(p: &Path) {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return;
        };
        if meta.is_dir() {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
            if let Ok(entries) = std::fs::read_dir(p) {
                for e in entries.flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(dir);
    if let Err(e) = std::fs::remove_dir_all(dir) {
        eprintln!("berth-bench: warning: cannot remove {}: {e}", dir.display());
    }
}

struct Bench<'a> {
    a: &'a Args,
    image: &'a Image,
    work: Work,
    probe_exe: PathBuf,
}

impl Bench<'_> {
    fn berth(&self, side: Side, extra: &[&str], command: &[OsString]) -> Command {
        let (mode, idle, state) = match side {
            Side::Extract => ("extract", None, &self.work.state),
            Side::Warm => ("mount", Some(IDLE_WARM), &self.work.state),
            Side::Fresh => ("mount", Some("0"), &self.work.state),
            Side::ColdKeeper => ("mount", Some(IDLE_WARM), &self.work.state_cold),
            Side::Native | Side::ChRun => unreachable!("not a berth run"),
        };
        let mut cmd = Command::new(&self.a.berth);
        cmd.args(["run", "--no-entrypoint", "--no-join", "--mode", mode]);
        if let Some(idle) = idle {
            cmd.args(["--image-idle", idle]);
        }
        cmd.args(extra)
            .arg(&self.image.path)
            .arg("--")
            .args(command)
            .env("BERTH_STATE_DIR", state)
            .env("BERTH_CONFIG", &self.work.policy);
        for var in [
            "BERTH_MODE",
            "BERTH_IMAGE_IDLE",
            "BERTH_JOIN",
            "BERTH_LINGER",
            "BERTH_UNSHARE",
            "BERTH_LOG",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// `true` on one side, for the start-up rows.
    fn start_true(&self, side: Side) -> Command {
        let t = [OsString::from("true")];
        let mut cmd = match side {
            Side::Native => Command::new("true"),
            Side::ChRun => {
                let mut c = Command::new(&self.a.ch_run);
                c.arg(&self.image.path).arg("--").arg("true");
                c
            }
            _ => self.berth(side, &[], &t),
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        proc::force_fork(&mut cmd);
        cmd
    }

    /// After a run with a new keeper: kill that keeper (it is reparented to us) and forget its
    /// socket, so the next run starts one again. Returns its peak RSS in MiB.
    fn stop_cold_keepers(&self) -> Vec<f64> {
        let mut rss = Vec::new();
        for pid in our_servers() {
            if let Some(kib) = kill_child(pid) {
                rss.push(kib as f64 / 1024.0);
            }
        }
        let _ = std::fs::remove_dir_all(self.work.state_cold.join("keepers"));
        rss
    }

    /// One container run of the probe: (seconds, bytes).
    fn probe_once(&self, side: Side, m: Measure) -> Result<(f64, u64), String> {
        let bind = format!("{}:{PROBE_AT}", self.probe_exe.display());
        let mut argv: Vec<OsString> = vec![PROBE_AT.into(), "mount-mode-probe".into()];
        match m {
            Measure::Walk => argv.extend(["walk".into(), "/bench/small".into()]),
            Measure::Stat => argv.extend(["stat".into(), "/bench/small".into()]),
            Measure::Read(n) => {
                argv.extend(["read".into(), "/bench/big".into(), n.to_string().into()])
            }
        }
        let out = self
            .berth(side, &["-m", &bind], &argv)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(err(format!("cannot start {}", self.a.berth.display())))?;
        proc::reap_orphans(proc::ORPHAN_TIMEOUT);
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "{} ({}) failed: {}: {text}",
                m.label(),
                side.label(),
                out.status
            ));
        }
        let field = |name: &str| -> Option<u64> {
            text.lines()
                .find(|l| l.starts_with("probe "))?
                .split_whitespace()
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        };
        match (field("ns"), field("bytes"), field("files")) {
            (Some(ns), Some(bytes), Some(files)) if ns > 0 && files == m.files() => {
                Ok((ns as f64 / 1e9, bytes))
            }
            _ => Err(format!(
                "{} ({}) printed no timing or saw the wrong files: {text}",
                m.label(),
                side.label()
            )),
        }
    }
}

/// Our own berth-imagefs children (keepers reparented to us: we are their subreaper).
fn our_servers() -> Vec<i32> {
    let me = std::process::id() as i32;
    servers()
        .into_iter()
        .filter(|s| s.ppid == me)
        .map(|s| s.pid)
        .collect()
}

/// SIGKILL a child (the keeper ignores SIGTERM: schedulers send it to every process of a job)
/// and reap it: its peak RSS in KiB.
fn kill_child(pid: i32) -> Option<i64> {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let mut status = 0;
    // SAFETY: rusage is a C struct of integers and timevals: all zeroes is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are live and writable; `pid` is our unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Some(usage.ru_maxrss);
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// SIGKILL a server that is not our child, if it still is one, and wait until it is gone.
fn kill_server(pid: i32) {
    if read_comm(pid).as_deref() != Some(SERVER_COMM) {
        return;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        // Our own child stays a zombie until reaped.
        // SAFETY: a null status pointer is allowed; waitpid fails harmlessly for a non-child.
        if unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } == pid {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// A running berth-imagefs process of ours.
struct Server {
    pid: i32,
    ppid: i32,
    /// Files it has open (dev, ino): a server holds its image open.
    files: Vec<(u64, u64)>,
    vm_hwm_kib: u64,
    vm_rss_kib: u64,
}

fn servers() -> Vec<Server> {
    let uid = nix::unistd::getuid().as_raw();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if read_comm(pid).as_deref() != Some(SERVER_COMM) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        if field("Uid:") != Some(uid as u64) {
            continue;
        }
        let mut files = Vec::new();
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                if let Ok(m) = std::fs::metadata(fd.path()) {
                    files.push((m.dev(), m.ino()));
                }
            }
        }
        out.push(Server {
            pid,
            ppid: field("PPid:").unwrap_or(0) as i32,
            files,
            vm_hwm_kib: field("VmHWM:").unwrap_or(0),
            vm_rss_kib: field("VmRSS:").unwrap_or(0),
        });
    }
    out
}

/// The servers of our test image.
fn image_servers(image: &Path) -> Vec<Server> {
    let Ok(m) = std::fs::metadata(image) else {
        return Vec::new();
    };
    servers()
        .into_iter()
        .filter(|s| s.files.contains(&(m.dev(), m.ino())))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The I/O measures.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Measure {
    Walk,
    Stat,
    Read(usize),
}

impl Measure {
    fn key(self) -> String {
        match self {
            Measure::Walk => "walk_read_small".into(),
            Measure::Stat => "stat_small".into(),
            Measure::Read(n) => format!("read_big_{n}"),
        }
    }

    fn label(self) -> String {
        match self {
            Measure::Walk => "walk + read 10,000 files".into(),
            Measure::Stat => "walk + stat 10,000 files".into(),
            Measure::Read(1) => "read 256 MiB, 1 reader".into(),
            Measure::Read(n) => format!("read 256 MiB, {n} readers"),
        }
    }

    fn files(self) -> u64 {
        match self {
            Measure::Read(n) => n as u64,
            _ => (SMALL_DIRS * SMALL_PER_DIR) as u64,
        }
    }

    /// Throughput (MB/s, higher is better) or time (ms, lower is better).
    fn is_rate(self) -> bool {
        matches!(self, Measure::Read(_))
    }

    fn sides(self) -> &'static [Side] {
        match self {
            Measure::Stat => &[Side::Extract, Side::Warm],
            _ => &[Side::Extract, Side::Warm, Side::Fresh],
        }
    }
}

const MEASURES: [Measure; 4] = [
    Measure::Walk,
    Measure::Stat,
    Measure::Read(1),
    Measure::Read(2),
];

/// One series of samples: a start-up row or an I/O row.
struct Series {
    key: String,
    label: String,
    /// "ms" or "MB/s".
    unit: &'static str,
    samples: Vec<f64>,
}

impl Series {
    fn summary(&self) -> Summary {
        Summary::of(&self.samples)
    }
}

/// A ratio of medians against its target.
struct Target {
    key: String,
    label: String,
    value: f64,
    /// Upper bound (times) or lower bound (rates).
    bound: f64,
    at_most: bool,
}

impl Target {
    fn pass(&self) -> bool {
        if self.at_most {
            self.value <= self.bound
        } else {
            self.value >= self.bound
        }
    }
}

/// The 16 runs started at once.
struct Burst {
    runs: usize,
    succeeded: usize,
    attached: usize,
    ready: usize,
    /// From the first spawn until every container was running.
    all_ready_ms: f64,
    /// berth-imagefs processes holding the image while all runs were inside: each serves one
    /// FUSE mount.
    servers: usize,
    /// Of those, the ones no run is the parent of: keepers.
    keepers: usize,
    keeper_hwm_mib: Option<f64>,
}

impl Burst {
    fn pass(&self) -> bool {
        self.succeeded == self.runs
            && self.attached == self.runs
            && self.keepers == 1
            && self.servers == 1
    }
}

struct Memory {
    warm_hwm_mib: f64,
    warm_rss_mib: f64,
    /// ru_maxrss of fresh mounts' servers and of the new keepers killed after each run.
    fresh_server_mib: Vec<f64>,
    cold_keeper_mib: Vec<f64>,
}

pub fn run(a: &Args) -> Result<(), String> {
    if nix::unistd::geteuid().is_root() {
        return Err(
            "run as a non-root user, e.g. `setpriv --reuid berthtest --regid berthtest \
             --init-groups berth-bench mount-mode ...`: berth and ch-run behave differently for root"
                .into(),
        );
    }
    if a.runs == 0 || a.io_runs == 0 || a.burst == 0 {
        return Err("--runs, --io-runs and --burst must be at least 1".into());
    }
    if a.runs < 20 {
        eprintln!(
            "berth-bench: warning: --runs {} is below 20; medians are not reliable",
            a.runs
        );
    }
    crate::startup::ensure_user_env();
    let image = ensure_image(a)?;
    let probe_exe = std::env::current_exe().map_err(err("cannot find this program"))?;
    let work = Work::new()?;
    let mut b = Bench {
        a,
        image: &image,
        work,
        probe_exe,
    };
    proc::become_subreaper().map_err(err("cannot become a child subreaper"))?;

    // Untimed: unpack the image into the extract cache, and start the warm keeper outside our
    // subreaper role (so the rounds do not wait for it; it is killed at the end).
    eprintln!("berth-bench: warming the extract cache and starting the warm keeper");
    proc::run_timed(&mut b.start_true(Side::Extract))?;
    proc::reap_orphans(proc::ORPHAN_TIMEOUT);
    let before: Vec<i32> = image_servers(&image.path).iter().map(|s| s.pid).collect();
    proc::set_subreaper(false).map_err(err("prctl"))?;
    let started = proc::run_timed(&mut b.start_true(Side::Warm));
    proc::set_subreaper(true).map_err(err("prctl"))?;
    started?;
    let warm: Vec<i32> = image_servers(&image.path)
        .iter()
        .map(|s| s.pid)
        .filter(|p| !before.contains(p))
        .collect();
    match warm[..] {
        [pid] => b.work.warm_keeper = Some(pid),
        _ => {
            return Err(format!(
                "expected one new {SERVER_COMM} process after the first --image-idle {IDLE_WARM} run, found {}",
                warm.len()
            ))
        }
    }

    let startup_sides = [
        Side::Native,
        Side::Extract,
        Side::Warm,
        Side::Fresh,
        Side::ColdKeeper,
        Side::ChRun,
    ];
    let mut startup: Vec<Series> = startup_sides
        .iter()
        .map(|s| Series {
            key: s.key().into(),
            label: s.label().into(),
            unit: "ms",
            samples: Vec::new(),
        })
        .collect();
    let mut memory = Memory {
        warm_hwm_mib: 0.0,
        warm_rss_mib: 0.0,
        fresh_server_mib: Vec::new(),
        cold_keeper_mib: Vec::new(),
    };
    eprintln!(
        "berth-bench: start-up: {} warm-up + {} timed rounds of {} commands",
        a.warmup,
        a.runs,
        startup_sides.len()
    );
    for round in 0..a.warmup + a.runs {
        for (i, &side) in startup_sides.iter().enumerate() {
            let exit = proc::run_timed(&mut b.start_true(side))?;
            let keepers = if side == Side::ColdKeeper {
                b.stop_cold_keepers()
            } else {
                Vec::new()
            };
            let left = proc::reap_orphans(proc::ORPHAN_TIMEOUT);
            if round < a.warmup {
                continue;
            }
            startup[i].samples.push(exit.wall.as_secs_f64() * 1e3);
            memory.cold_keeper_mib.extend(keepers);
            memory.fresh_server_mib.extend(
                left.iter()
                    .filter(|o| o.comm == SERVER_COMM)
                    .map(|o| o.maxrss_kib as f64 / 1024.0),
            );
        }
    }

    if a.startup_only {
        print_startup_only(a, &startup);
        return Ok(());
    }
    eprintln!(
        "berth-bench: I/O: 1 warm-up + {} timed rounds of {} container runs",
        a.io_runs,
        MEASURES.iter().map(|m| m.sides().len()).sum::<usize>()
    );
    let mut io: Vec<(Measure, Side, Series)> = Vec::new();
    for m in MEASURES {
        for &side in m.sides() {
            io.push((
                m,
                side,
                Series {
                    key: format!("{}_{}", m.key(), side.key()),
                    label: format!("{}: {}", m.label(), io_side_label(side)),
                    unit: if m.is_rate() { "MB/s" } else { "ms" },
                    samples: Vec::new(),
                },
            ));
        }
    }
    for round in 0..1 + a.io_runs {
        for (m, side, series) in io.iter_mut() {
            let (secs, bytes) = b.probe_once(*side, *m)?;
            if round == 0 {
                continue;
            }
            series.samples.push(if m.is_rate() {
                bytes as f64 / 1e6 / secs
            } else {
                secs * 1e3
            });
        }
    }

    eprintln!("berth-bench: {} runs starting at once", a.burst);
    let burst = burst(&b)?;

    let keeper = b.work.warm_keeper.and_then(|pid| {
        image_servers(&image.path)
            .into_iter()
            .find(|s| s.pid == pid)
    });
    let Some(keeper) = keeper else {
        return Err("the warm keeper is gone before the end of the benchmark".into());
    };
    memory.warm_hwm_mib = keeper.vm_hwm_kib as f64 / 1024.0;
    memory.warm_rss_mib = keeper.vm_rss_kib as f64 / 1024.0;

    let report = Report {
        a,
        image: &image,
        startup: &startup,
        io: &io,
        burst: &burst,
        memory: &memory,
    };
    if a.json {
        let text = serde_json::to_string_pretty(&report.to_json()).expect("JSON of plain values");
        println!("{text}");
    } else {
        report.print();
    }
    Ok(())
}

/// `--startup-only`: the start-up rows and the ratios to ch-run, as a table or JSON.
fn print_startup_only(a: &Args, startup: &[Series]) {
    let median_of = |side: Side| {
        startup
            .iter()
            .find(|s| s.key == side.key())
            .map_or(f64::NAN, |s| s.summary().median)
    };
    let ch = median_of(Side::ChRun);
    let ratios = [
        ("startup_warm_vs_ch_run", Side::Warm, WARM_VS_CH_RUN_MAX),
        ("startup_fresh_vs_ch_run", Side::Fresh, FIRST_VS_CH_RUN_MAX),
        (
            "startup_cold_keeper_vs_ch_run",
            Side::ColdKeeper,
            FIRST_VS_CH_RUN_MAX,
        ),
    ];
    if a.json {
        let mut out = serde_json::Map::new();
        for s in startup {
            let m = s.summary();
            out.insert(
                s.key.clone(),
                json!({"median": m.median, "p10": m.p10, "p90": m.p90, "samples": s.samples}),
            );
        }
        for (key, side, bound) in ratios {
            let value = median_of(side) / ch;
            out.insert(
                key.into(),
                json!({"value": value, "target_max": bound, "pass": value <= bound}),
            );
        }
        let text = serde_json::to_string_pretty(&Value::Object(out)).expect("plain values");
        println!("{text}");
        return;
    }
    println!(
        "berth-bench mount-mode --startup-only ({})",
        a.berth.display()
    );
    println!("Start-up of `true` (ms)                         median      p10      p90");
    for s in startup {
        let m = s.summary();
        println!(
            "  {:<42} {:>8.2} {:>8.2} {:>8.2}",
            s.label, m.median, m.p10, m.p90
        );
    }
    for (key, side, bound) in ratios {
        let value = median_of(side) / ch;
        println!(
            "  {:<42} {:>8.3}   <= {bound}  {}",
            key,
            value,
            verdict(value <= bound)
        );
    }
}

fn io_side_label(side: Side) -> &'static str {
    match side {
        Side::Extract => "extract",
        Side::Warm => "mount warm (keeper)",
        Side::Fresh => "mount cold (fresh mount)",
        _ => side.label(),
    }
}

/// Start `a.burst` runs at once in a state directory with no keeper, all of them first runs:
/// each waits in its container until every one is in, then the servers of the image are
/// counted.
fn burst(b: &Bench) -> Result<Burst, String> {
    let n = b.a.burst;
    let script = [
        OsString::from("sh"),
        "-c".into(),
        "echo ready; read x; exit 0".into(),
    ];
    let t0 = Instant::now();
    let mut children: Vec<Child> = Vec::new();
    for _ in 0..n {
        let mut cmd = b.berth(Side::Warm, &["-v"], &script);
        cmd.env("BERTH_STATE_DIR", &b.work.state_burst)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push(
            cmd.spawn()
                .map_err(err(format!("cannot start {}", b.a.berth.display())))?,
        );
    }
    // One thread per run reads its stdout up to "ready" and its stderr to the end.
    let (tx, rx) = std::sync::mpsc::channel::<bool>();
    let mut stderr_threads = Vec::new();
    for c in children.iter_mut() {
        let out = c.stdout.take().expect("piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let ok = BufReader::new(out).read_line(&mut line).is_ok() && line.trim() == "ready";
            let _ = tx.send(ok);
        });
        let mut e = c.stderr.take().expect("piped");
        stderr_threads.push(std::thread::spawn(move || {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        }));
    }
    drop(tx);
    let mut ready = 0;
    let mut answered = 0;
    while answered < n {
        let left = BURST_TIMEOUT.saturating_sub(t0.elapsed());
        match rx.recv_timeout(left) {
            Ok(ok) => {
                answered += 1;
                ready += ok as usize;
            }
            Err(_) => break,
        }
    }
    let all_ready_ms = t0.elapsed().as_secs_f64() * 1e3;
    let runs: Vec<i32> = children.iter().map(|c| c.id() as i32).collect();
    let servers = image_servers(&b.image.path);
    // These runs' servers: children of a run (a mount of its own) or keepers, reparented to
    // us as their subreaper. Not the warm keeper (reparented elsewhere), nor anyone else's.
    let me = std::process::id() as i32;
    let servers: Vec<&Server> = servers
        .iter()
        .filter(|s| s.ppid == me || runs.contains(&s.ppid))
        .collect();
    let keepers: Vec<&&Server> = servers.iter().filter(|s| !runs.contains(&s.ppid)).collect();
    let keeper_hwm_mib = match keepers[..] {
        [k] => Some(k.vm_hwm_kib as f64 / 1024.0),
        _ => None,
    };
    let (server_count, keeper_count) = (servers.len(), keepers.len());
    // Let them go: `read` sees the end of its input.
    let mut succeeded = 0;
    for c in children.iter_mut() {
        drop(c.stdin.take());
    }
    let mut failures = Vec::new();
    for c in children.iter_mut() {
        match c.wait() {
            Ok(s) if s.success() => succeeded += 1,
            Ok(s) => failures.push(format!("a run ended with {s}")),
            Err(e) => failures.push(format!("cannot wait for a run: {e}")),
        }
    }
    let mut attached = 0;
    for t in stderr_threads {
        let text = t.join().unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("image keeper") && l.contains("attached"))
        {
            attached += 1;
        } else if let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) {
            failures.push(format!("a run did not attach: {last}"));
        }
    }
    failures.dedup();
    for f in failures.iter().take(3) {
        eprintln!("berth-bench: burst: {f}");
    }
    for pid in our_servers() {
        if Some(pid) != b.work.warm_keeper {
            kill_child(pid);
        }
    }
    proc::reap_orphans(proc::ORPHAN_TIMEOUT);
    Ok(Burst {
        runs: n,
        succeeded,
        attached,
        ready,
        all_ready_ms,
        servers: server_count,
        keepers: keeper_count,
        keeper_hwm_mib,
    })
}

// ---------------------------------------------------------------------------------------------
// The report.

struct Report<'a> {
    a: &'a Args,
    image: &'a Image,
    startup: &'a [Series],
    io: &'a [(Measure, Side, Series)],
    burst: &'a Burst,
    memory: &'a Memory,
}

impl Report<'_> {
    fn startup_median(&self, side: Side) -> f64 {
        self.startup
            .iter()
            .find(|s| s.key == side.key())
            .expect("every side is measured")
            .summary()
            .median
    }

    fn io_median(&self, m: Measure, side: Side) -> f64 {
        self.io
            .iter()
            .find(|(mm, s, _)| *mm == m && *s == side)
            .expect("every I/O row is measured")
            .2
            .summary()
            .median
    }

    fn keeper_max_mib(&self) -> f64 {
        KEEPER_RSS_MIB + self.a.block_cache_mib
    }

    fn targets(&self) -> Vec<Target> {
        let ch = self.startup_median(Side::ChRun);
        let mut t = vec![
            Target {
                key: "startup_warm_vs_ch_run".into(),
                label: "start-up, keeper warm / ch-run IMG.sqsh".into(),
                value: self.startup_median(Side::Warm) / ch,
                bound: WARM_VS_CH_RUN_MAX,
                at_most: true,
            },
            Target {
                key: "startup_fresh_vs_ch_run".into(),
                label: "start-up, first run: fresh mount / ch-run".into(),
                value: self.startup_median(Side::Fresh) / ch,
                bound: FIRST_VS_CH_RUN_MAX,
                at_most: true,
            },
            Target {
                key: "startup_cold_keeper_vs_ch_run".into(),
                label: "start-up, first run: new keeper / ch-run".into(),
                value: self.startup_median(Side::ColdKeeper) / ch,
                bound: FIRST_VS_CH_RUN_MAX,
                at_most: true,
            },
        ];
        for m in MEASURES {
            let ext = self.io_median(m, Side::Extract);
            for &side in m.sides().iter().filter(|s| **s != Side::Extract) {
                let warm = side == Side::Warm;
                let (bound, at_most) = match m {
                    Measure::Walk if warm => (WALK_WARM_MAX, true),
                    Measure::Walk => (WALK_COLD_MAX, true),
                    Measure::Stat => (STAT_WARM_MAX, true),
                    Measure::Read(_) if warm => (READ_WARM_MIN, false),
                    Measure::Read(_) => (READ_COLD_MIN, false),
                };
                t.push(Target {
                    key: format!(
                        "{}_{}_vs_extract",
                        m.key(),
                        if warm { "warm" } else { "cold" }
                    ),
                    label: format!(
                        "{}, {} / extract",
                        m.label(),
                        if warm { "warm" } else { "cold" }
                    ),
                    value: self.io_median(m, side) / ext,
                    bound,
                    at_most,
                });
            }
        }
        t
    }

    fn print(&self) {
        let a = self.a;
        let img = self.image;
        println!("berth-bench mount-mode");
        println!(
            "  image   {} ({}, {} KiB blocks, {:.0} MiB): the demo image + /bench/small",
            img.path.display(),
            img.compression,
            img.block_size / 1024,
            img.bytes as f64 / (1 << 20) as f64
        );
        println!("          (10,000 files of 1-4 KiB in 100 directories) + /bench/big (256 MiB, incompressible)");
        println!("  berth   {}", a.berth.display());
        println!(
            "  start-up: {} timed rounds after {} warm-up; I/O: {} timed rounds after 1 warm-up;",
            a.runs, a.warmup, a.io_runs
        );
        println!("  each round runs every row once, in turn (round-robin); figures are medians");
        println!();
        println!("Start-up of `true` (ms)                         median      p10      p90");
        for s in self.startup {
            let m = s.summary();
            println!(
                "  {:<42} {:>8.2} {:>8.2} {:>8.2}",
                s.label, m.median, m.p10, m.p90
            );
        }
        println!(
            "  first run on a node: the fresh mount and new keeper rows; later runs: keeper warm"
        );
        println!();
        println!(
            "I/O inside the container (timed inside)                      median      p10      p90"
        );
        for (_, _, s) in self.io {
            let m = s.summary();
            let label = format!("{} ({})", s.label, s.unit);
            println!(
                "  {:<56} {:>8.1} {:>8.1} {:>8.1}",
                label, m.median, m.p10, m.p90
            );
        }
        println!("  cold = a fresh mount (--image-idle 0): empty FUSE page cache and block cache; the host");
        println!("  page cache still holds the .sqsh file (dropping it needs root). warm = the keeper's mount");
        println!("  after one untimed round. extract = berth's extract cache, its files in the page cache.");
        println!();
        println!(
            "Targets (ratios of medians; reads: throughput)               value    target   result"
        );
        for t in self.targets() {
            println!(
                "  {:<58} {:>6.3}   {} {:<5} {}",
                t.label,
                t.value,
                if t.at_most { "<=" } else { ">=" },
                t.bound,
                verdict(t.pass())
            );
        }
        let b = self.burst;
        println!();
        println!(
            "{} runs starting at once (a state directory with no keeper yet)",
            b.runs
        );
        println!(
            "  inside their containers {}/{} after {:.0} ms; succeeded {}/{}; attached to a keeper {}/{}",
            b.ready, b.runs, b.all_ready_ms, b.succeeded, b.runs, b.attached, b.runs
        );
        println!(
            "  keepers {}, FUSE mounts (berth-imagefs servers of the image) {}   target 1 and 1, all attach   {}",
            b.keepers,
            b.servers,
            verdict(b.pass())
        );
        let m = self.memory;
        println!();
        println!(
            "Image server memory (MiB)                                   value    target   result"
        );
        println!(
            "  {:<58} {:>6.1}   <= {:<5} {}",
            "warm keeper peak RSS (VmHWM, at the end)",
            m.warm_hwm_mib,
            self.keeper_max_mib(),
            verdict(m.warm_hwm_mib <= self.keeper_max_mib())
        );
        println!(
            "  {:<58} {:>6.1}",
            "warm keeper RSS now (VmRSS)", m.warm_rss_mib
        );
        if let Some(h) = b.keeper_hwm_mib {
            println!(
                "  {:<58} {:>6.1}",
                format!("keeper of the {} runs, peak RSS (VmHWM)", b.runs),
                h
            );
        }
        if !m.cold_keeper_mib.is_empty() {
            println!(
                "  {:<58} {:>6.1}",
                "new keeper per run, peak RSS (median ru_maxrss)",
                median(&m.cold_keeper_mib)
            );
        }
        if !m.fresh_server_mib.is_empty() {
            println!(
                "  {:<58} {:>6.1}",
                "fresh mount's server, peak RSS (median ru_maxrss)",
                median(&m.fresh_server_mib)
            );
        }
        println!(
            "  target: {KEEPER_RSS_MIB} MiB plus the block cache ({} MiB, the default; --block-cache-mib)",
            a.block_cache_mib
        );
    }

    fn to_json(&self) -> Value {
        let a = self.a;
        let series = |s: &Series| {
            let m = s.summary();
            json!({
                "label": s.label,
                "unit": s.unit,
                "median": m.median,
                "p10": m.p10,
                "p90": m.p90,
                "samples": s.samples,
            })
        };
        let mut startup = serde_json::Map::new();
        for s in self.startup {
            startup.insert(s.key.clone(), series(s));
        }
        let mut io = serde_json::Map::new();
        for (_, _, s) in self.io {
            io.insert(s.key.clone(), series(s));
        }
        let mut targets = serde_json::Map::new();
        for t in self.targets() {
            targets.insert(
                t.key.clone(),
                json!({
                    "label": t.label,
                    "value": t.value,
                    if t.at_most { "target_max" } else { "target_min" }: t.bound,
                    "pass": t.pass(),
                }),
            );
        }
        let b = self.burst;
        let m = self.memory;
        json!({
            "benchmark": "mount-mode",
            "image": {
                "path": self.image.path,
                "compression": self.image.compression,
                "block_size": self.image.block_size,
                "bytes": self.image.bytes,
            },
            "berth": a.berth,
            "runs": a.runs,
            "warmup": a.warmup,
            "io_runs": a.io_runs,
            "startup_ms": startup,
            "io": io,
            "io_note": "cold = a fresh mount (--image-idle 0): FUSE page cache and block cache empty; the host page cache holds the .sqsh (dropping it needs root)",
            "targets": targets,
            "burst": {
                "runs": b.runs,
                "ready": b.ready,
                "all_ready_ms": b.all_ready_ms,
                "succeeded": b.succeeded,
                "attached": b.attached,
                "keepers": b.keepers,
                "fuse_mounts": b.servers,
                "keeper_vm_hwm_mib": b.keeper_hwm_mib,
                "pass": b.pass(),
            },
            "memory_mib": {
                "warm_keeper_vm_hwm": m.warm_hwm_mib,
                "warm_keeper_vm_rss": m.warm_rss_mib,
                "target_max": self.keeper_max_mib(),
                "pass": m.warm_hwm_mib <= self.keeper_max_mib(),
                "new_keeper_ru_maxrss_median": (!m.cold_keeper_mib.is_empty()).then(|| median(&m.cold_keeper_mib)),
                "fresh_mount_server_ru_maxrss_median": (!m.fresh_server_mib.is_empty()).then(|| median(&m.fresh_server_mib)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_reads_and_stats_every_file_once() {
        let dir =
            std::env::temp_dir().join(format!("berth-bench-walk-test.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("one"), [1u8; 1000]).unwrap();
        std::fs::write(dir.join("a/two"), [2u8; 70_000]).unwrap();
        std::fs::write(dir.join("a/b/three"), b"3").unwrap();
        std::os::unix::fs::symlink("one", dir.join("link")).unwrap();
        let read = walk(&dir, &mut read_all);
        let stat = walk(&dir, &mut |p, _| Ok(std::fs::symlink_metadata(p)?.len()));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read.unwrap(), (71_001, 3));
        assert_eq!(stat.unwrap(), (71_001, 3));
    }

    #[test]
    fn the_generator_is_deterministic() {
        let (mut a, mut b) = (Rng(7), Rng(7));
        let (mut x, mut y) = ([0u8; 13], [0u8; 13]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y);
        assert_ne!(Rng(7).next(), Rng(8).next());
    }
}
