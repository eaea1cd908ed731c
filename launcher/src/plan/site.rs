//! The site's steps, from the policy and the scheduler: site mounts, devices and GPUs with
//! their libraries, the PMIx and munge directories, the scheduler's paths, the host library
//! directory, and the host MPI injection.

use super::probe::{find_libraries, glob_paths_on};
use super::process::get_var;
use super::{bind, Action, Ctx, MpiPlan, Step, HOST_LIB_DIR, MPI_LIB_DIR};
use crate::error::{usage, Result};
use crate::options::{Create, Propagation};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// Every site step but MPI's, in order; `notes` gets what was left out and why.
pub(super) fn site_steps(ctx: &Ctx, steps: &mut Vec<Step>, notes: &mut Vec<String>) -> Result<()> {
    site_mounts(ctx, steps, notes)?;
    let mut host_libs: Vec<(PathBuf, String)> = Vec::new();
    devices(ctx, steps, &mut host_libs);
    gpus(ctx, steps, &mut host_libs);
    pmix(ctx, steps);
    for path in &ctx.opts.scheduler_paths {
        if ctx.host.exists(path) && !covered_by(steps, path) {
            steps.push(Step {
                target: path.clone(),
                action: Action::Bind {
                    source: path.clone(),
                    recursive: true,
                    readonly: true,
                    propagation: Propagation::Private,
                    noexec: false,
                    create: Create::Auto,
                },
                origin: "scheduler".into(),
            });
        }
    }
    for lib in &ctx.opts.scheduler_libraries {
        host_libs.push((lib.clone(), "scheduler".into()));
    }
    if !host_libs.is_empty() {
        let origin = host_libs
            .iter()
            .map(|(_, o)| o.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        steps.push(Step {
            target: HOST_LIB_DIR.into(),
            action: Action::Libraries {
                files: host_libs.iter().map(|(l, _)| l.clone()).collect(),
            },
            origin,
        });
    }
    Ok(())
}

/// `[[mount]]`: a missing source is refused, or noted when the mount is optional.
fn site_mounts(ctx: &Ctx, steps: &mut Vec<Step>, notes: &mut Vec<String>) -> Result<()> {
    for m in &ctx.policy.mounts {
        let source = PathBuf::from(ctx.expand(&m.source));
        let target = PathBuf::from(ctx.expand(&m.target));
        if !ctx.host.exists(&source) {
            if m.optional {
                notes.push(format!(
                    "site mount {} skipped: {} is absent on this node [{}]",
                    target.display(),
                    source.display(),
                    m.origin
                ));
                continue;
            }
            return usage(format!(
                "site mount source {} does not exist on this node [{}]; the admin can mark it optional = true",
                source.display(),
                m.origin
            ));
        }
        steps.push(Step {
            target,
            action: Action::Bind {
                source,
                recursive: m.recursive,
                readonly: m.readonly,
                propagation: if m.slave {
                    Propagation::Slave
                } else {
                    Propagation::Private
                },
                noexec: false,
                create: Create::Auto,
            },
            origin: format!("policy {}", m.origin),
        });
    }
    Ok(())
}

/// `[devices]`: the device paths present, and only then their configuration and libraries.
fn devices(ctx: &Ctx, steps: &mut Vec<Step>, host_libs: &mut Vec<(PathBuf, String)>) {
    let policy = ctx.policy;
    let mut devices_found = false;
    for rule in &policy.device_paths {
        let pattern = ctx.expand(&rule.path);
        for path in glob_paths_on(ctx.host, &pattern) {
            devices_found = true;
            let target = device_target(&pattern, &path);
            steps.push(Step {
                target,
                action: Action::Bind {
                    source: path,
                    recursive: true,
                    readonly: false,
                    propagation: Propagation::Private,
                    noexec: false,
                    create: Create::Auto,
                },
                origin: format!("devices {}", rule.origin),
            });
        }
    }
    if !devices_found {
        return;
    }
    for rule in &policy.device_config {
        let pattern = ctx.expand(&rule.path);
        for path in glob_paths_on(ctx.host, &pattern) {
            steps.push(Step {
                target: device_target(&pattern, &path),
                action: Action::Bind {
                    source: path,
                    recursive: true,
                    readonly: true,
                    propagation: Propagation::Private,
                    noexec: false,
                    create: Create::Auto,
                },
                origin: format!("devices {}", rule.origin),
            });
        }
    }
    for rule in &policy.device_libraries {
        for lib in find_libraries(ctx.host, &ctx.expand(&rule.path)) {
            host_libs.push((lib, format!("devices {}", rule.origin)));
        }
    }
}

/// `[gpu]`: the GPU devices the job may see, and then the driver's libraries.
fn gpus(ctx: &Ctx, steps: &mut Vec<Step>, host_libs: &mut Vec<(PathBuf, String)>) {
    let policy = ctx.policy;
    // Patterns such as /dev/nvidia[0-9]* are only expanded (a listing of /dev on every
    // rank) when a plain GPU device path, the driver's control device, exists.
    let wild = |p: &str| p.contains(['*', '?', '[']);
    let plain: Vec<String> = policy
        .gpu_devices
        .iter()
        .map(|r| ctx.expand(&r.path))
        .filter(|p| !wild(p))
        .collect();
    let gpu_present = plain.is_empty() || plain.iter().any(|p| ctx.host.exists(Path::new(p)));
    if !(policy.gpu_enabled && gpu_present) {
        return;
    }
    let visible = gpu_visible(ctx.env);
    let mut gpu_found = false;
    for rule in &policy.gpu_devices {
        for path in glob_paths_on(ctx.host, &ctx.expand(&rule.path)) {
            if !gpu_device_visible(&path, visible.as_deref()) {
                continue;
            }
            gpu_found = true;
            steps.push(Step {
                target: path.clone(),
                action: Action::Bind {
                    source: path,
                    recursive: false,
                    readonly: false,
                    propagation: Propagation::Private,
                    noexec: false,
                    create: Create::Auto,
                },
                origin: format!("gpu {}", rule.origin),
            });
        }
    }
    if gpu_found {
        for rule in &policy.gpu_libraries {
            for lib in find_libraries(ctx.host, &ctx.expand(&rule.path)) {
                host_libs.push((lib, format!("gpu {}", rule.origin)));
            }
        }
    }
}

/// The PMIx server's and the step's PMIx directories, and munge's socket directory, when
/// they exist and no bind shows them already.
fn pmix(ctx: &Ctx, steps: &mut Vec<Step>) {
    let env_get = |k: &str| get_var(ctx.env, k).map(OsStr::to_os_string);
    let is_dir = |d: &Path| ctx.host.is_dir(d);
    if ctx.policy.pmix_server_dir {
        if let Some(dir) = env_get("PMIX_SERVER_TMPDIR").map(PathBuf::from) {
            if dir.is_absolute() && is_dir(&dir) && !covered_by(steps, &dir) {
                steps.push(bind(&dir, &dir, "pmix PMIX_SERVER_TMPDIR"));
            }
        }
        // Slurm's PMIx plugin gives each step's clients a directory of their own (PMIx's
        // PMIX_TMPDIR: Open MPI's session directory goes there) under SLURM_PMIX_TMPDIR
        // when the job sets it, else under TmpFS (usually /tmp, shown anyway).
        if let (Some(base), Some(job), Some(step)) = (
            env_get("SLURM_PMIX_TMPDIR"),
            env_get("SLURM_JOB_ID"),
            env_get("SLURM_STEP_ID"),
        ) {
            let name = format!(
                "spmix_appdir_{}_{}.{}",
                ctx.user.uid,
                job.to_string_lossy(),
                step.to_string_lossy()
            );
            let dir = PathBuf::from(base).join(name);
            if dir.is_absolute() && is_dir(&dir) && !covered_by(steps, &dir) {
                steps.push(bind(&dir, &dir, "pmix SLURM_PMIX_TMPDIR"));
            }
        }
    }
    if let Some(rule) = &ctx.policy.munge_socket_dir {
        let dir = PathBuf::from(ctx.expand(&rule.path));
        if is_dir(&dir) && !covered_by(steps, &dir) {
            steps.push(bind(&dir, &dir, &format!("pmix munge {}", rule.origin)));
        }
    }
}

/// `[mpi]`, when enabled and the run wants it: the host MPI's files and libraries, applied
/// only if the image's MPI passes the ABI check at build time.
pub(super) fn mpi_plan(ctx: &Ctx) -> Option<MpiPlan> {
    let m = ctx
        .policy
        .mpi
        .as_ref()
        .filter(|m| m.enabled && ctx.opts.mpi)?;
    let origin = format!("mpi {}", m.origin);
    let mut mpi_steps = Vec::new();
    for rule in &m.bind {
        for path in glob_paths_on(ctx.host, &ctx.expand(&rule.path)) {
            mpi_steps.push(Step {
                target: path.clone(),
                action: Action::Bind {
                    source: path,
                    recursive: true,
                    readonly: true,
                    propagation: Propagation::Private,
                    noexec: false,
                    create: Create::Auto,
                },
                origin: format!("mpi {}", rule.origin),
            });
        }
    }
    let libs: Vec<PathBuf> = m
        .libraries
        .iter()
        .flat_map(|r| find_libraries(ctx.host, &ctx.expand(&r.path)))
        .collect();
    if !libs.is_empty() {
        let origins: Vec<String> = m.libraries.iter().map(|r| r.origin.to_string()).collect();
        mpi_steps.push(Step {
            target: MPI_LIB_DIR.into(),
            action: Action::Libraries { files: libs },
            origin: format!("mpi {}", origins.join(", ")),
        });
    }
    Some(MpiPlan {
        family: m.family,
        version: m.version.clone(),
        compatibility: m.compatibility,
        on_mismatch: m.on_mismatch,
        steps: mpi_steps,
        origin,
    })
}

/// Where a device rule `HOST[:CONTAINER]` puts a host path inside.
fn device_target(rule: &str, path: &Path) -> PathBuf {
    match rule.split_once(':') {
        Some((_, dst)) => PathBuf::from(dst),
        None => path.to_path_buf(),
    }
}

/// The GPU indices a job may see (`NVIDIA_VISIBLE_DEVICES`, else `CUDA_VISIBLE_DEVICES`);
/// None means all (unset, `all`, or ids berth cannot map to device files such as UUIDs).
pub fn gpu_visible(env: &[(OsString, OsString)]) -> Option<Vec<u32>> {
    let value = get_var(env, "NVIDIA_VISIBLE_DEVICES").or(get_var(env, "CUDA_VISIBLE_DEVICES"))?;
    match value.to_str()?.trim() {
        "all" => None,
        "" | "none" | "void" | "NoDevFiles" => Some(Vec::new()),
        list => list.split(',').map(|i| i.trim().parse().ok()).collect(),
    }
}

/// `/dev/nvidiaN` is carried in only when N is visible; control devices always.
pub(super) fn gpu_device_visible(path: &Path, visible: Option<&[u32]>) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    match (
        name.strip_prefix("nvidia")
            .and_then(|n| n.parse::<u32>().ok()),
        visible,
    ) {
        (Some(index), Some(list)) => list.contains(&index),
        _ => true,
    }
}

/// A host path already visible inside through an identity rbind.
fn covered_by(steps: &[Step], path: &Path) -> bool {
    steps.iter().any(|s| {
        matches!(&s.action, Action::Bind { source, recursive: true, .. }
            if source == &s.target && path.starts_with(&s.target))
    })
}
