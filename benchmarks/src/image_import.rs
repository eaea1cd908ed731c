//! `berth-bench import`: `berth-image import` from a local registry side by side with the
//! classic pipeline `skopeo copy` + `umoci unpack` + `mksquashfs` (what enroot and Charliecloud
//! do in spirit), on the same image, in one run.
//!
//! The image is built here from a rootfs directory (the demo image's Debian + Open MPI tree),
//! split into three gzip layers, and pushed with skopeo to Debian's docker-registry started on
//! 127.0.0.1 (the integration tests' harness). Rounds are interleaved: each round times
//! (a) a fresh import with an empty layer cache, (b) the pipeline, (c) a re-import of the
//! unchanged image to the same output (all layers cached) and (d) an import to a new output
//! with all layers cached. Targets are printed as PASS/MISS; the exit status is 0 either way.

use crate::proc::{self, Exit};
use crate::stats::{verdict, Summary};
use berth_tests::registry::Registry;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The berth-image binary
    #[arg(long)]
    pub berth_image: PathBuf,
    /// A rootfs directory to make the image from (e.g. /var/cache/berth-test/demo-rootfs)
    #[arg(long)]
    pub rootfs: PathBuf,
    /// Timed rounds (each: fresh import, pipeline, re-import, import from cached layers)
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where the layout, caches and outputs go (default: the temp directory)
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Print the figures as JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Instead: import an image of about GIB GiB from cached layers, streamed and the old
    /// way, and report MB/s (minutes and GiBs of disk; not for CI)
    #[arg(long = "big", value_name = "GIB")]
    pub big_gib: Option<u64>,
    /// Also time (a) and (d) with an earlier berth-image build, interleaved (an A/B of a
    /// change)
    #[arg(long, value_name = "BERTH_IMAGE")]
    pub before: Option<PathBuf>,
}

/// The import targets.
const IMPORT_VS_PIPELINE_MAX: f64 = 0.2;
const REIMPORT_MAX_S: f64 = 1.0;
const RSS_MAX_MIB: f64 = 256.0;
/// The streamed import against the old unpack + mksquashfs path, same image and settings.
const STREAM_VS_UNPACK_FRESH_MAX: f64 = 0.55;
const STREAM_VS_UNPACK_CACHED_MAX: f64 = 0.3;

/// mksquashfs's default zstd level: what the pipeline's `-comp zstd` uses.
const PIPELINE_ZSTD_LEVEL: &str = "15";

/// The rootfs is split into these layers: everything but the two big trees, then each of them.
const SPLIT: [&str; 2] = ["usr/share", "usr/lib"];

/// sha256 of what passes through.
struct HashWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Add `rel` (and, for a directory, everything under it except `skip`) to a layer, in sorted
/// order; symlinks are stored as symlinks.
fn add_tree(
    b: &mut tar::Builder<impl Write>,
    root: &Path,
    rel: &Path,
    skip: &[&Path],
) -> io::Result<()> {
    if skip.contains(&rel) {
        return Ok(());
    }
    let full = root.join(rel);
    if !rel.as_os_str().is_empty() {
        b.append_path_with_name(&full, rel)?;
    }
    if fs::symlink_metadata(&full)?.is_dir() {
        let mut names: Vec<_> = fs::read_dir(&full)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for n in names {
            add_tree(b, root, &rel.join(n), skip)?;
        }
    }
    Ok(())
}

/// One gzip layer blob in the layout: (compressed digest, size, diff_id). With `copy`, the
/// whole root under that name, compressed fast (the big image).
fn write_layer(
    layout: &Path,
    root: &Path,
    tops: &[&Path],
    skip: &[&Path],
    copy: Option<&str>,
) -> Result<(String, u64, String), String> {
    let tmp = layout.join("blobs").join(format!(
        "tmp-layer-{}",
        copy.map_or_else(
            || tops[0].to_string_lossy().replace('/', "-"),
            str::to_string
        )
    ));
    let file = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let compressed = HashWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hash: Sha256::new(),
        len: 0,
    };
    let level = match copy {
        Some(_) => flate2::Compression::fast(),
        None => flate2::Compression::default(),
    };
    let gz = flate2::write::GzEncoder::new(compressed, level);
    let raw = HashWriter {
        inner: gz,
        hash: Sha256::new(),
        len: 0,
    };
    let mut b = tar::Builder::new(raw);
    b.follow_symlinks(false);
    for top in tops {
        add_tree(&mut b, root, top, skip)
            .map_err(|e| format!("reading {}: {e}", root.display()))?;
    }
    if let Some(name) = copy {
        b.append_dir_all(name, root)
            .map_err(|e| format!("reading {}: {e}", root.display()))?;
    }
    let raw = b.into_inner().map_err(|e| e.to_string())?;
    let diff_id = format!("sha256:{:x}", raw.hash.finalize());
    let mut compressed = raw.inner.finish().map_err(|e| e.to_string())?;
    compressed.flush().map_err(|e| e.to_string())?;
    let digest = format!("sha256:{:x}", compressed.hash.finalize());
    let dest = layout.join("blobs/sha256").join(&digest[7..]);
    fs::rename(&tmp, &dest).map_err(|e| e.to_string())?;
    Ok((digest, compressed.len, diff_id))
}

fn write_blob(layout: &Path, bytes: &[u8]) -> Result<String, String> {
    let digest = format!("sha256:{:x}", Sha256::digest(bytes));
    fs::write(layout.join("blobs/sha256").join(&digest[7..]), bytes).map_err(|e| e.to_string())?;
    Ok(digest)
}

/// An OCI layout `DIR:1` of the rootfs in three gzip layers (built in parallel), or with
/// `copies`, of that many copies of it, one layer each.
fn build_layout(layout: &Path, rootfs: &Path, copies: usize) -> Result<u64, String> {
    fs::create_dir_all(layout.join("blobs/sha256")).map_err(|e| e.to_string())?;
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(|e| e.to_string())?;
    let split: Vec<&Path> = SPLIT.iter().map(Path::new).collect();
    let root_rel = Path::new("");
    let mut plans: Vec<(Vec<&Path>, Vec<&Path>, Option<String>)> =
        std::iter::once((vec![root_rel], split.clone(), None))
            .chain(split.iter().map(|p| (vec![*p], vec![], None)))
            .collect();
    if copies > 0 {
        plans = (0..copies)
            .map(|k| (vec![], vec![], Some(format!("copy{k}"))))
            .collect();
    }
    let layers: Vec<Result<(String, u64, String), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .iter()
            .map(|(tops, skip, copy)| {
                s.spawn(move || write_layer(layout, rootfs, tops, skip, copy.as_deref()))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("layer thread panicked".into()))
            })
            .collect()
    });
    let layers = layers.into_iter().collect::<Result<Vec<_>, _>>()?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/bash"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.2).collect::<Vec<_>>()},
    })
    .to_string();
    let config_digest = write_blob(layout, config.as_bytes())?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|(d, size, _)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": size,
        })).collect::<Vec<_>>(),
    })
    .to_string();
    let manifest_digest = write_blob(layout, manifest.as_bytes())?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "1"}}],
    });
    fs::write(layout.join("index.json"), index.to_string()).map_err(|e| e.to_string())?;
    Ok(layers.iter().map(|l| l.1).sum())
}

fn need(tool: &str, package: &str) -> Result<(), String> {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some(())
        .ok_or_else(|| format!("{tool} is missing: install the Debian package {package}"))
}

fn remove(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Time one command; its stderr goes to `log` and is quoted if it fails.
fn timed(argv: &[&dyn AsRef<std::ffi::OsStr>], log: &Path) -> Result<Exit, String> {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).map_err(|e| e.to_string())?);
    proc::force_fork(&mut cmd);
    proc::run_timed(&mut cmd).map_err(|e| {
        let err = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        format!(
            "{e}: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    })
}

/// `timed` of an argument vector built at run time.
fn timed_os(argv: &[std::ffi::OsString], log: &Path) -> Result<Exit, String> {
    timed(&argv.iter().map(|s| s as _).collect::<Vec<_>>(), log)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

fn file_count(img: &Path) -> Result<usize, String> {
    let out = Command::new("unsquashfs")
        .arg("-lc")
        .arg(img)
        .output()
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

pub fn run(a: &Args) -> Result<(), String> {
    if a.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    for (t, p) in [
        ("skopeo", "skopeo"),
        ("umoci", "umoci"),
        ("mksquashfs", "squashfs-tools"),
        ("docker-registry", "docker-registry"),
    ] {
        need(t, p)?;
    }
    if !a.berth_image.is_file() {
        return Err(format!(
            "{} is not the berth-image binary",
            a.berth_image.display()
        ));
    }
    let berth_image = fs::canonicalize(&a.berth_image).map_err(|e| e.to_string())?;
    if !a.rootfs.join("usr").is_dir() {
        return Err(format!("{} is not a rootfs", a.rootfs.display()));
    }
    // Not a subreaper: the registry is our child for the whole run and the commands timed
    // here leave no helpers behind.
    let work = a
        .workdir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("berth-bench-import-{}", std::process::id()));
    remove(&work);
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let result = match a.big_gib {
        Some(gib) => big(a, &berth_image, &work, gib),
        None => bench(a, &berth_image, &work),
    };
    remove(&work);
    result
}

#[derive(Default)]
struct Series {
    wall: Vec<f64>,
    rss_mib: Vec<f64>,
}

impl Series {
    fn push(&mut self, e: &Exit) {
        self.wall.push(secs(e.wall));
        self.rss_mib.push(e.maxrss_kib as f64 / 1024.0);
    }
    fn json(&self) -> serde_json::Value {
        let s = Summary::of(&self.wall);
        json!({"median_s": s.median, "p10_s": s.p10, "p90_s": s.p90, "samples_s": self.wall,
               "peak_rss_mib_max": self.rss_mib.iter().cloned().fold(0.0, f64::max)})
    }
}

fn bench(a: &Args, berth_image: &Path, work: &Path) -> Result<(), String> {
    let layout = work.join("layout");
    eprintln!(
        "berth-bench: building a 3-layer gzip OCI image of {}",
        a.rootfs.display()
    );
    let compressed = build_layout(&layout, &a.rootfs, 0)?;
    let reg = Registry::start("bench-import", None);
    reg.push(&layout, "1", "demo:1", &[]);
    remove(&layout);
    let src = format!("docker://{}/demo:1", reg.addr);
    let log = work.join("stderr.log");
    let out_a = work.join("a.sqsh");
    let out_b = work.join("b.sqsh");
    let out_d = work.join("d.sqsh");
    let cache = work.join("cache");
    let oci = work.join("oci");
    let bundle = work.join("bundle");
    let bi = |out: &Path| -> Vec<std::ffi::OsString> {
        vec![
            berth_image.into(),
            "import".into(),
            src.clone().into(),
            "-o".into(),
            out.into(),
            "--cache".into(),
            cache.clone().into(),
        ]
    };

    let (mut sa, mut sb, mut sc, mut sd, mut se) = (
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
    );
    let (mut sf, mut sg) = (Series::default(), Series::default());
    let (mut sa_before, mut sd_before) = (Series::default(), Series::default());
    let unpack = |out: &Path| -> Vec<std::ffi::OsString> {
        let mut v = bi(out);
        v.extend(["--assemble".into(), "unpack".into()]);
        v
    };
    let (mut skopeo, mut umoci, mut mksq) = (Vec::new(), Vec::new(), Vec::new());
    eprintln!(
        "berth-bench: import: {} rounds of (a) berth-image, (b) skopeo+umoci+mksquashfs, \
         (c) re-import, (d) import from cached layers, (e) (a) at level 15, \
         (f) (a) and (g) (d) the old way (--assemble unpack)",
        a.runs
    );
    for round in 0..a.runs {
        // (a) fresh: empty layer cache, no output.
        remove(&cache);
        remove(&out_a);
        let argv = bi(&out_a);
        let e = timed_os(&argv, &log)?;
        sa.push(&e);

        // (b) the classic pipeline, each step timed, summed.
        remove(&oci);
        remove(&bundle);
        remove(&out_b);
        let s1 = timed(
            &[
                &"skopeo",
                &"--insecure-policy",
                &"copy",
                &"--quiet",
                &"--src-tls-verify=false",
                &src,
                &format!("oci:{}:1", oci.display()),
            ],
            &log,
        )?;
        let s2 = timed(
            &[
                &"umoci",
                &"unpack",
                &"--rootless",
                &"--image",
                &format!("{}:1", oci.display()),
                &bundle,
            ],
            &log,
        )?;
        let s3 = timed(
            &[
                &"mksquashfs",
                &bundle.join("rootfs"),
                &out_b,
                &"-noappend",
                &"-no-progress",
                &"-comp",
                &"zstd",
            ],
            &log,
        )?;
        skopeo.push(secs(s1.wall));
        umoci.push(secs(s2.wall));
        mksq.push(secs(s3.wall));
        sb.wall.push(secs(s1.wall + s2.wall + s3.wall));
        sb.rss_mib.push(
            [s1.maxrss_kib, s2.maxrss_kib, s3.maxrss_kib]
                .into_iter()
                .max()
                .unwrap_or(0) as f64
                / 1024.0,
        );
        remove(&oci);
        remove(&bundle);

        // (c) the same image again, to the same output: all layers cached, output up to date.
        let e = timed_os(&bi(&out_a), &log)?;
        sc.push(&e);

        // (d) to a new output: all layers cached, the squashfs is built again.
        remove(&out_d);
        let e = timed_os(&bi(&out_d), &log)?;
        sd.push(&e);
        // (d) with the build before, on the same cache (it reads what it knows of it).
        if let Some(before) = &a.before {
            remove(&out_d);
            let mut argv = bi(&out_d);
            argv[0] = before.into();
            let e = timed_os(&argv, &log)?;
            sd_before.push(&e);
            // (a) with the build before: last, as what it leaves in the cache is its own.
            remove(&cache);
            remove(&out_d);
            let e = timed_os(&argv, &log)?;
            sa_before.push(&e);
        }

        // (e) as (a), at the pipeline's compression level (mksquashfs's zstd default, 15).
        remove(&cache);
        remove(&out_d);
        let mut argv = bi(&out_d);
        argv.extend(["--level".into(), PIPELINE_ZSTD_LEVEL.into()]);
        let e = timed_os(&argv, &log)?;
        se.push(&e);

        // (f) as (a) and (g) as (d), the old way: a temp rootfs, then mksquashfs.
        remove(&cache);
        remove(&out_d);
        let e = timed_os(&unpack(&out_d), &log)?;
        sf.push(&e);
        remove(&out_d);
        let e = timed_os(&unpack(&out_d), &log)?;
        sg.push(&e);
        remove(&out_d);
        eprintln!(
            "berth-bench: round {}/{}: (a) {:.2} s  (b) {:.2} s  (c) {:.3} s  (d) {:.2} s  \
             (e) {:.2} s  (f) {:.2} s  (g) {:.2} s",
            round + 1,
            a.runs,
            sa.wall[round],
            sb.wall[round],
            sc.wall[round],
            sd.wall[round],
            se.wall[round],
            sf.wall[round],
            sg.wall[round]
        );
    }
    let size = |p: &Path| fs::metadata(p).map(|m| m.size()).unwrap_or(0);
    let (size_a, size_b) = (size(&out_a), size(&out_b));
    let (files_a, files_b) = (file_count(&out_a)?, file_count(&out_b)?);
    drop(reg);

    let (ma, mb) = (Summary::of(&sa.wall), Summary::of(&sb.wall));
    let (mc, md, me) = (
        Summary::of(&sc.wall),
        Summary::of(&sd.wall),
        Summary::of(&se.wall),
    );
    let (mf, mg) = (Summary::of(&sf.wall), Summary::of(&sg.wall));
    let fresh_vs_unpack = ma.median / mf.median;
    let cached_vs_unpack = md.median / mg.median;
    let ratio = ma.median / mb.median;
    let ratio_same_level = me.median / mb.median;
    let rss_a = sa.rss_mib.iter().cloned().fold(0.0, f64::max);
    let rss_all = sa
        .rss_mib
        .iter()
        .chain(&sc.rss_mib)
        .chain(&sd.rss_mib)
        .chain(&se.rss_mib)
        .cloned()
        .fold(0.0, f64::max);
    if a.json {
        let v = json!({
            "image": {"rootfs": a.rootfs, "layers": 3, "compressed_mib": mib(compressed)},
            "berth_image_fresh": sa.json(),
            "pipeline": {"total": sb.json(), "skopeo_median_s": Summary::of(&skopeo).median,
                         "umoci_median_s": Summary::of(&umoci).median,
                         "mksquashfs_median_s": Summary::of(&mksq).median},
            "berth_image_reimport": sc.json(),
            "berth_image_cached_layers": sd.json(),
            "berth_image_fresh_level15": se.json(),
            "berth_image_fresh_unpack": sf.json(),
            "berth_image_cached_layers_unpack": sg.json(),
            "berth_image_fresh_before": a.before.as_ref().map(|_| sa_before.json()),
            "berth_image_cached_layers_before": a.before.as_ref().map(|_| sd_before.json()),
            "stream_vs_unpack": {"fresh": fresh_vs_unpack, "fresh_target_max": STREAM_VS_UNPACK_FRESH_MAX,
                                 "cached_layers": cached_vs_unpack,
                                 "cached_layers_target_max": STREAM_VS_UNPACK_CACHED_MAX},
            "outputs": {"berth_image_mib": mib(size_a), "pipeline_mib": mib(size_b),
                        "berth_image_entries": files_a, "pipeline_entries": files_b},
            "ratios": {"fresh_vs_pipeline": ratio, "fresh_level15_vs_pipeline": ratio_same_level,
                       "target_max": IMPORT_VS_PIPELINE_MAX,
                       "pass": ratio <= IMPORT_VS_PIPELINE_MAX},
            "reimport": {"median_s": mc.median, "target_max_s": REIMPORT_MAX_S,
                         "pass": mc.median < REIMPORT_MAX_S},
            "peak_rss": {"max_mib": rss_all, "target_max_mib": RSS_MAX_MIB,
                         "pass": rss_all < RSS_MAX_MIB},
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(());
    }
    println!(
        "image: {} as 3 gzip layers, {:.1} MiB compressed, from a local docker-registry",
        a.rootfs.display(),
        mib(compressed)
    );
    println!(
        "{} rounds, interleaved; wall time in s: median (p10-p90)\n",
        a.runs
    );
    println!(
        "{:<52} {:>8} {:>17} {:>13}",
        "", "median", "p10-p90", "peak RSS MiB"
    );
    let row = |label: &str, s: &Summary, rss: f64| {
        println!(
            "{label:<52} {:>8.3} {:>17} {:>13.1}",
            s.median,
            format!("{:.3}-{:.3}", s.p10, s.p90),
            rss
        );
    };
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    row("(a) berth-image import, empty layer cache", &ma, rss_a);
    row(
        "(b) skopeo copy + umoci unpack + mksquashfs",
        &mb,
        max(&sb.rss_mib),
    );
    row("      skopeo copy", &Summary::of(&skopeo), f64::NAN);
    row(
        "      umoci unpack --rootless",
        &Summary::of(&umoci),
        f64::NAN,
    );
    row("      mksquashfs -comp zstd", &Summary::of(&mksq), f64::NAN);
    row(
        "(c) berth-image re-import, unchanged image",
        &mc,
        max(&sc.rss_mib),
    );
    row(
        "(d) berth-image import to a new file, layers cached",
        &md,
        max(&sd.rss_mib),
    );
    row(
        "(e) as (a) with --level 15 (the pipeline's level)",
        &me,
        max(&se.rss_mib),
    );
    row(
        "(f) as (a), --assemble unpack (temp rootfs)",
        &mf,
        max(&sf.rss_mib),
    );
    row(
        "(g) as (d), --assemble unpack (temp rootfs)",
        &mg,
        max(&sg.rss_mib),
    );
    if let Some(before) = &a.before {
        row(
            "(a') as (a), with --before",
            &Summary::of(&sa_before.wall),
            max(&sa_before.rss_mib),
        );
        row(
            "(d') as (d), with --before",
            &Summary::of(&sd_before.wall),
            max(&sd_before.rss_mib),
        );
        println!(
            "(a)/(a') = {:.2}, (d)/(d') = {:.2}   (this build vs {})",
            ma.median / Summary::of(&sa_before.wall).median,
            md.median / Summary::of(&sd_before.wall).median,
            before.display()
        );
    }
    println!(
        "\noutputs: berth-image {:.1} MiB, {files_a} entries; pipeline {:.1} MiB, {files_b} entries",
        mib(size_a),
        mib(size_b)
    );
    println!("(berth-image adds /.berth and /.berth/image.json; it compresses with zstd level 3 by default, the pipeline with mksquashfs's default level 15)\n");
    println!(
        "(a)/(b) = {ratio:.2}   target <= {IMPORT_VS_PIPELINE_MAX}   {}",
        verdict(ratio <= IMPORT_VS_PIPELINE_MAX)
    );
    println!(
        "(e)/(b) = {ratio_same_level:.2}   (same compression level as the pipeline; for reference)"
    );
    println!(
        "(a)/(f) = {fresh_vs_unpack:.2}   target <= {STREAM_VS_UNPACK_FRESH_MAX}   {}   (streamed vs unpacked, empty cache)",
        verdict(fresh_vs_unpack <= STREAM_VS_UNPACK_FRESH_MAX)
    );
    println!(
        "(d)/(g) = {cached_vs_unpack:.2}   target <= {STREAM_VS_UNPACK_CACHED_MAX}   {}   (streamed vs unpacked, layers cached)",
        verdict(cached_vs_unpack <= STREAM_VS_UNPACK_CACHED_MAX)
    );
    println!(
        "(c)     = {:.3} s   target < {REIMPORT_MAX_S} s   {}",
        mc.median,
        verdict(mc.median < REIMPORT_MAX_S)
    );
    println!(
        "peak RSS of berth-image (with its tar2sqfs), max over (a)(c)(d)(e) = {rss_all:.1} MiB   \
         target < {RSS_MAX_MIB} MiB   {}",
        verdict(rss_all < RSS_MAX_MIB)
    );
    Ok(())
}

/// Bytes of file content under `dir` (what an image of it holds).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

/// A big image (copies of the rootfs, one gzip layer each, read from an OCI layout as from
/// the layer cache): streamed and the old way, once each, MB/s of image content.
fn big(a: &Args, berth_image: &Path, work: &Path, gib: u64) -> Result<(), String> {
    let one = tree_bytes(&a.rootfs).max(1);
    let copies = ((gib << 30) / one).max(1) as usize;
    let content = one * copies as u64;
    eprintln!(
        "berth-bench: building an OCI image of {copies} copies of {} ({:.0} MiB of files)",
        a.rootfs.display(),
        mib(content)
    );
    let layout = work.join("layout");
    let compressed = build_layout(&layout, &a.rootfs, copies)?;
    let src = format!("oci:{}:1", layout.display());
    let log = work.join("stderr.log");
    let out = work.join("big.sqsh");
    let cores = std::thread::available_parallelism().map_or(1, |p| p.get());
    println!(
        "image: {copies} gzip layers, {:.0} MiB compressed, {:.0} MiB of files; {cores} cores",
        mib(compressed),
        mib(content)
    );
    for how in ["stream", "unpack"] {
        remove(&out);
        let e = timed(
            &[
                &berth_image,
                &"import",
                &src,
                &"-o",
                &out,
                &"--assemble",
                &how,
            ],
            &log,
        )?;
        println!(
            "--assemble {how:<6}  {:>7.1} s  {:>7.1} MB/s of files  peak RSS {:>6.1} MiB  output {:.0} MiB",
            secs(e.wall),
            content as f64 / 1e6 / secs(e.wall),
            e.maxrss_kib as f64 / 1024.0,
            mib(fs::metadata(&out).map(|m| m.size()).unwrap_or(0))
        );
    }
    Ok(())
}
