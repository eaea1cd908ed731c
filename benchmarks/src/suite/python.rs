//! Python start-up and a large image's first start, where the image's file layout costs most.
//!
//! Python imports: `python3 -c "import <stdlib modules>, numpy"` (thousands of stat and open
//! calls), cold (the page cache dropped first, as on a node's first run; mount mode a fresh
//! FUSE mount) and warm (the same again right after), natively, in both modes and in Docker.
//!
//! Large image: the bench image plus `--large-gib` GiB of incompressible data in /opt/large;
//! the first start of `true` on a node (page cache dropped, no extract cache, no mount, Docker
//! without the image's data layer): extract unpacks it all, mount mounts it, Docker loads it
//! from a saved tar (`docker load`, the way an image reaches a node without a registry).

use super::exec::{self, os, Ctx};
use super::{Args, Metric, Variant, Workload};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A few dozen standard modules and numpy: what a typical script pulls in.
const MODULES: &str = "os, sys, re, json, collections, itertools, functools, datetime, decimal, \
    fractions, math, random, statistics, pathlib, subprocess, threading, logging, argparse, csv, \
    sqlite3, email.parser, http.client, urllib.request, xml.etree.ElementTree, hashlib, base64, \
    zlib, gzip, tarfile, zipfile, shutil, tempfile, typing, dataclasses, enum, asyncio, unittest, \
    pickle, struct, socket, ssl, uuid, numpy";

/// Warm runs per repetition (the figure is their median).
const WARM_RUNS: usize = 3;

/// Drop the page cache (root only): the next run reads the image or the files from disk, as
/// the first run on a node does. Returns whether it could.
fn drop_caches() -> bool {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn ms(cmd: std::process::Command) -> Result<f64, String> {
    Ok(exec::run(cmd)?.secs * 1e3)
}

/// Cold (after dropping the page cache) and warm (median of WARM_RUNS) of one side.
fn cold_warm(mut side: impl FnMut() -> std::process::Command) -> Result<Vec<f64>, String> {
    drop_caches();
    let cold = ms(side())?;
    let mut warm = Vec::new();
    for _ in 0..WARM_RUNS {
        warm.push(ms(side())?);
    }
    Ok(vec![cold, crate::stats::median(&warm)])
}

pub fn workload<'a>(_a: &'a Args, ctx: &'a Ctx) -> Workload<'a> {
    // Debian's python3, the same path inside (the host's PATH may put another first).
    let py: Vec<OsString> = vec![
        "/usr/bin/python3".into(),
        "-c".into(),
        format!("import {MODULES}").into(),
    ];
    let native = py.clone();
    let extract = ctx.berth_run("extract", &os(&["--no-join"]), &py);
    let mount = ctx.berth_run("mount", &os(&["--no-join", "--image-idle", "0"]), &py);
    let docker = py.clone();
    let cwd: &Path = &ctx.work;
    let root = nix::unistd::geteuid().is_root();
    let mut setup_error = None;
    if !native_has_numpy() {
        setup_error = Some(
            "python3 with numpy is missing on the host (Debian packages python3, python3-numpy)"
                .to_string(),
        );
    }
    Workload {
        name: "Python imports",
        detail: format!(
            "`/usr/bin/python3 -c \"import {MODULES}\"`; cold: the page cache dropped before the run{} (mount mode: a fresh FUSE mount, `--image-idle 0`); warm: the median of the {WARM_RUNS} runs right after",
            if root { "" } else { " (NOT dropped: not root)" }
        ),
        metrics: vec![
            Metric::new("import stdlib + numpy, cold", "ms", false),
            Metric::new("import stdlib + numpy, warm", "ms", false),
        ],
        native: Variant::new("native", move |_| {
            cold_warm(|| ctx.command(&native, cwd, None))
        }),
        containers: vec![
            Variant::new("berth --mode extract", move |_| {
                cold_warm(|| ctx.command(&extract, cwd, None))
            }),
            Variant::new("berth --mode mount", move |_| {
                cold_warm(|| ctx.command(&mount, cwd, None))
            }),
            Variant::new("docker", move |_| {
                let d = ctx.docker()?;
                cold_warm(|| d.run(false, &[], None, &docker))
            }),
        ],
        setup_error,
        notes: vec![
            "Python imports: dropping the page cache is machine-wide: other work on the machine pays for it too, and the extract cache and Docker's layers are read back from disk, the squashfs image as well".into(),
        ],
    }
}

fn native_has_numpy() -> bool {
    std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn large_paths(ctx: &Ctx) -> (PathBuf, PathBuf) {
    (
        ctx.work.join("large.sqsh"),
        ctx.work.join("large-docker.tar"),
    )
}

fn docker_large_tag(ctx: &Ctx) -> Option<String> {
    ctx.docker().ok().map(|d| format!("{}-large", d.tag))
}

/// Build the large image: squashfs (mksquashfs pseudo files, no copy of the data on disk) and,
/// with a daemon, a Docker image (a layer on the bench image) saved to a tar.
fn build_large(a: &Args, ctx: &Ctx) -> Result<(), String> {
    let (sqsh, tar) = large_paths(ctx);
    let mut m = std::process::Command::new("mksquashfs");
    m.arg(&ctx.rootfs).arg(&sqsh).args([
        "-comp",
        "zstd",
        "-noappend",
        "-quiet",
        "-no-progress",
        "-e",
        ".complete",
        "-p",
        "opt/large d 755 0 0",
    ]);
    for i in 0..a.large_gib {
        m.arg("-p").arg(format!(
            "opt/large/blob{i} f 444 0 0 head -c 1073741824 /dev/urandom"
        ));
    }
    eprintln!(
        "berth-bench suite: large image: {} GiB of random data in /opt/large ({})",
        a.large_gib,
        sqsh.display()
    );
    let out = m.output().map_err(|e| format!("mksquashfs: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mksquashfs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    ctx.give(&sqsh)?;
    if let (Ok(d), Some(tag)) = (ctx.docker(), docker_large_tag(ctx)) {
        let name = format!("berth-bench-large-{}", std::process::id());
        let script = format!(
            "mkdir -p /opt/large && for i in $(seq 0 {}); do head -c 1073741824 /dev/urandom > /opt/large/blob$i; done",
            a.large_gib.saturating_sub(1)
        );
        let steps: Vec<Vec<OsString>> = vec![
            vec![
                "run".into(),
                "--name".into(),
                name.clone().into(),
                "--network".into(),
                "none".into(),
                d.tag.clone().into(),
                "sh".into(),
                "-c".into(),
                script.into(),
            ],
            vec!["commit".into(), name.clone().into(), tag.clone().into()],
            vec!["rm".into(), name.into()],
            vec!["save".into(), "-o".into(), tar.into(), tag.clone().into()],
            vec!["rmi".into(), tag.into()],
        ];
        for s in steps {
            let mut c = super::docker::cli();
            c.args(&s);
            exec::run(c)?;
        }
    }
    Ok(())
}

/// Remove the large image's files and Docker image.
pub fn remove_large_image(ctx: &Ctx) {
    let (sqsh, tar) = large_paths(ctx);
    let _ = std::fs::remove_file(sqsh);
    let _ = std::fs::remove_file(tar);
    if let Some(tag) = docker_large_tag(ctx) {
        let _ = super::docker::cli().args(["rmi", "-f", &tag]).output();
    }
}

pub fn large_image<'a>(a: &'a Args, ctx: &'a Ctx) -> Workload<'a> {
    let setup_error = build_large(a, ctx).err();
    let (sqsh, tar) = large_paths(ctx);
    let cwd: &Path = &ctx.work;
    // A fresh state directory per run: no extract cache, no keeper, nothing from the last run.
    let first = move |mode: &'static str| -> Result<Vec<f64>, String> {
        let state = ctx.dir("large-state")?;
        let mut argv: Vec<OsString> = vec![
            ctx.berth.clone().into(),
            "run".into(),
            "--no-join".into(),
            "--mode".into(),
            mode.into(),
        ];
        if mode == "mount" {
            argv.extend(os(&["--image-idle", "0"]));
        }
        argv.extend([sqsh.clone().into(), "--".into(), "true".into()]);
        drop_caches();
        let mut cmd = ctx.command(&argv, cwd, None);
        cmd.env("BERTH_STATE_DIR", &state);
        let t = ms(cmd);
        let _ = std::process::Command::new("rm")
            .arg("-rf")
            .arg(&state)
            .status();
        Ok(vec![t? / 1e3])
    };
    let first2 = first.clone();
    Workload {
        name: "large image",
        detail: format!(
            "the bench image plus {} GiB of random data in /opt/large; first start of `true` on a node: page cache dropped, a fresh berth state directory (no extract cache, no mount), Docker with the data layer removed and loaded again from `docker save`'s tar (its base layer stays, as it would on a node that has the base image), then `docker run`",
            a.large_gib
        ),
        metrics: vec![Metric::new(
            &format!("first start, {} GiB image", a.large_gib),
            "s",
            false,
        )],
        native: Variant::new("native (true)", move |_| {
            Ok(vec![ms(ctx.command(&os(&["true"]), cwd, None))? / 1e3])
        }),
        containers: vec![
            Variant::new("berth --mode extract", move |_| first("extract")),
            Variant::new("berth --mode mount", move |_| first2("mount")),
            Variant::new("docker (load + run)", move |_| {
                let d = ctx.docker()?;
                let tag = docker_large_tag(ctx).unwrap_or_default();
                let _ = super::docker::cli().args(["rmi", "-f", &tag]).output();
                drop_caches();
                let mut load = super::docker::cli();
                load.arg("load").arg("-q").arg("-i").arg(&tar);
                let t0 = std::time::Instant::now();
                exec::run(load)?;
                let c = d.run_image(&tag, false, &[], None, &os(&["true"]));
                exec::run(c)?;
                Ok(vec![t0.elapsed().as_secs_f64()])
            }),
        ],
        setup_error,
        notes: vec![
            "large image: the native side is plain `true`, a floor; the image files are removed at the end".into(),
        ],
    }
}
