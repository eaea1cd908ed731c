//! I/O: inside the image, read one large file (256 MiB, incompressible) and walk and read a
//! tree of 10,000 small files (benchmarks/images/build-bench.sh puts both in /bench/io), in
//! mount mode, in extract mode, and natively from the same files in the image's unpacked tree;
//! then write a file with fsync into a bind-mounted host directory standing in for Lustre.
//! Timed inside (`date +%s%N`), so start-up is not counted (the start-up rows have it). The
//! host page cache is warm for every side after the warm-up round.

use super::exec::{self, Ctx};
use super::{Args, Metric, Variant, Workload};
use std::ffi::OsString;
use std::path::Path;

pub fn metrics() -> Vec<Metric> {
    vec![
        Metric::new("read a 256 MiB file", "MB/s", true),
        Metric::new("walk + read 10,000 small files", "s", false),
        Metric::new("write to a bind-mounted dir (fsync)", "MB/s", true),
    ]
}

/// The script, for data under `root` and the output directory `out`; prints the three figures.
fn script(root: &str, out: &str, write_mib: u32) -> String {
    format!(
        "set -e; d={root}/bench/io; o={out}/w.$$; \
         s=$(stat -c %s $d/large.bin); \
         t0=$(date +%s%N); cat $d/large.bin >/dev/null; t1=$(date +%s%N); \
         n=$(find $d/tree -type f -print0 | xargs -0 cat | wc -c); t2=$(date +%s%N); \
         dd if=/dev/zero of=$o bs=1M count={write_mib} conv=fsync 2>/dev/null; t3=$(date +%s%N); rm -f $o; \
         echo io $s $((t1-t0)) $n $((t2-t1)) {bytes} $((t3-t2))",
        bytes = write_mib as u64 * 1024 * 1024
    )
}

/// posix_fadvise(DONTNEED) on a file, or every file under a directory.
fn evict(p: &Path) {
    if p.is_dir() {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            evict(&e.path());
        }
    } else if let Ok(f) = std::fs::File::open(p) {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        use std::os::fd::AsRawFd;
        let _ = posix_fadvise(f.as_raw_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    }
}

fn parse(out: &str) -> Result<Vec<f64>, String> {
    let line = out
        .lines()
        .find(|l| l.starts_with("io "))
        .ok_or_else(|| format!("no result line: {}", out.trim()))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() != 6 || f[1] <= 0.0 || f[3] <= 0.0 || f[5] <= 0.0 {
        return Err(format!("bad result line: {line}"));
    }
    if f[2] == 0.0 {
        return Err(format!("the tree holds no data: {line}"));
    }
    // ns -> MB/s (10^6 bytes/s), s, MB/s
    Ok(vec![f[0] / f[1] * 1e3, f[3] / 1e9, f[4] / f[5] * 1e3])
}

pub fn workload<'a>(a: &'a Args, ctx: &'a Ctx) -> Workload<'a> {
    let mut setup_error = None;
    let lustre = ctx.work.join("lustre");
    if let Err(e) = ctx.dir("lustre") {
        setup_error = Some(e);
    }
    if !ctx.rootfs.join("bench/io/large.bin").exists() {
        setup_error = Some(format!(
            "{}/bench/io/large.bin is missing: the native side reads the image's unpacked tree (--rootfs; benchmarks/images/build-bench.sh makes it)",
            ctx.rootfs.display()
        ));
    }
    // Every side starts from the same page-cache state: the native files and the image are
    // dropped from the cache here and read back by the warm-up round (a file's cached pages
    // from an earlier, different access pattern can read at half the speed of fresh ones).
    if setup_error.is_none() {
        evict(&ctx.rootfs.join("bench/io"));
        evict(&ctx.image);
    }
    let sh = |s: String| -> Vec<OsString> { vec!["sh".into(), "-c".into(), s.into()] };
    let native = sh(script(
        &ctx.rootfs.to_string_lossy(),
        &lustre.to_string_lossy(),
        a.io_write_mib,
    ));
    let inner = sh(script("", "/lustre", a.io_write_mib));
    let mount: Vec<OsString> = vec![
        "--no-join".into(),
        "--mount".into(),
        format!("{}:/lustre", lustre.display()).into(),
    ];
    let in_mount = ctx.berth_run("mount", &mount, &inner);
    let in_extract = ctx.berth_run("extract", &mount, &inner);
    let lustre = lustre.clone();
    let cwd: &Path = &ctx.work;
    Workload {
        name: "I/O",
        detail: format!(
            "large file and small-file tree in the image (native: the same files in {}); {} MiB written with fsync to a host dir bind-mounted at /lustre",
            ctx.rootfs.display(),
            a.io_write_mib
        ),
        metrics: metrics(),
        native: Variant::new("native", move |_| parse(&exec::run(ctx.command(&native, cwd, None))?.stdout)),
        containers: vec![
            Variant::new("berth --mode mount", move |_| parse(&exec::run(ctx.command(&in_mount, cwd, None))?.stdout)),
            Variant::new("berth --mode extract", move |_| {
                parse(&exec::run(ctx.command(&in_extract, cwd, None))?.stdout)
            }),
            Variant::new("docker", move |_| {
                let d = ctx.docker()?;
                parse(&exec::run(d.run(false, &[(&lustre, "/lustre")], None, &inner))?.stdout)
            }),
        ],
        setup_error,
        notes: Vec::new(),
    }
}
