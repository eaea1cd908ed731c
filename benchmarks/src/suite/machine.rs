//! The machine the report was measured on: CPU, cores, memory, kernel, Debian, the versions of
//! the packages the workloads run (host and image), the BLAS in use, berth's git commit, dates.

use super::exec::Ctx;
use super::Args;
use serde_json::{json, Value};
use std::process::Command;

/// The packages whose versions matter, host and image.
const PACKAGES: [&str; 8] = [
    "openmpi-bin",
    "libopenmpi3",
    "hpcc",
    "calculix-ccx",
    "libopenblas0-serial",
    "libblas3",
    "squashfuse",
    "squashfs-tools",
];

fn sh(argv: &[&str]) -> String {
    Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub fn now() -> String {
    sh(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"])
}

pub fn load() -> String {
    read("/proc/loadavg")
}

fn versions(admindir: Option<&str>) -> Value {
    let mut m = serde_json::Map::new();
    for p in PACKAGES {
        let mut argv = vec!["dpkg-query"];
        let dir;
        if let Some(d) = admindir {
            dir = format!("--admindir={d}");
            argv.push(&dir);
        }
        argv.extend(["-W", "-f=${Version}", p]);
        let v = sh(&argv);
        m.insert(
            p.to_string(),
            json!(if v.is_empty() {
                "not installed".to_string()
            } else {
                v
            }),
        );
    }
    Value::Object(m)
}

pub fn describe(a: &Args, ctx: &Ctx) -> Value {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let repo = repo.to_string_lossy();
    let commit = sh(&["git", "-C", &repo, "rev-parse", "HEAD"]);
    let dirty = !sh(&[
        "git",
        "-C",
        &repo,
        "status",
        "--porcelain",
        "--untracked-files=no",
    ])
    .is_empty();
    let image_db = ctx.rootfs.join("var/lib/dpkg");
    let blas = "/usr/lib/x86_64-linux-gnu/libblas.so.3";
    let image_sha = sh(&["sha256sum", &ctx.image.to_string_lossy()]);
    json!({
        "date": now(),
        "hostname": read("/proc/sys/kernel/hostname"),
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": read("/proc/sys/kernel/osrelease"),
        "debian": read("/etc/debian_version"),
        "load_before": load(),
        "berth_commit": if dirty { format!("{commit} (with uncommitted changes)") } else { commit },
        "berth_version": env!("CARGO_PKG_VERSION"),
        "image": ctx.image.display().to_string(),
        "image_sha256": image_sha.split_whitespace().next().unwrap_or("").to_string(),
        "image_tree": ctx.rootfs.display().to_string(),
        "container_mode": a.mode,
        "host_packages": versions(None),
        "image_packages": if image_db.exists() { versions(Some(&image_db.to_string_lossy())) } else { json!("image tree not found") },
        "host_blas": sh(&["readlink", "-f", blas]),
        "run_as": ctx.user.as_ref().map(|u| u.name.clone()).unwrap_or_else(|| sh(&["id", "-un"])),
    })
}
