//! slurmstepd (remote context): in each task, as the user, just before Slurm execs it, move
//! the task into the node's container for the step. The first task of the step on a node
//! creates it (the launcher's keeper), the others join its namespaces. Slurm then execs the
//! task's command inside, with the task's own Slurm/PMIx environment.

use crate::config::{config, state_dir, Config};
use crate::spank::{log, Level, Spank};
use berth_launcher::{Error, Join, Mode, Process};
use berth_plugin::{decide_named, is_reference, JobRequest, NameFlag, Named};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A launcher log event in Slurm's log: its info at Slurm's verbose level, its debug at debug.
fn slurm_log(level: tracing::Level, msg: &str) {
    let level = if level >= tracing::Level::DEBUG {
        Level::Debug
    } else {
        Level::Verbose
    };
    log(level, msg);
}

/// The per-node instance a task joins ([`berth_plugin::instance_key`]), with Slurm's ids.
pub(crate) fn instance_key(job: u32, step: u32, node: &str, name: Option<&str>) -> String {
    berth_plugin::instance_key("slurm", job, step, node, name)
}

/// In each task, as the user, just before Slurm execs it: enter the node's container.
pub fn task_init(sp: Spank, av: &[String]) -> Result<(), Error> {
    let cfg = config(av)?;
    let given = |i| sp.option(i);
    let getenv = |n: &str| sp.getenv(n, true);
    let src = crate::args::Source {
        given: &given,
        getenv: &getenv,
    };
    let Some(req) = crate::args::request(&src, &cfg)? else {
        return Ok(());
    };
    let (job, step) = (sp.job_id(), sp.step_id());
    let batch = step == SLURM_BATCH_SCRIPT;
    if batch && !cfg.sbatch {
        return Ok(());
    }
    let started = std::time::Instant::now();
    // The launcher's steps and decisions, in slurmd's log at its verbose/debug levels.
    berth_launcher::log_to_sink(slurm_log);
    let env = sp.job_env();
    let node = env
        .iter()
        .find(|(k, _)| k == "SLURMD_NODENAME")
        .map(|(_, v)| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    let uid = nix::unistd::getuid().as_raw();
    let policy = crate::config::policy(&cfg)?;
    let state = state_dir(&cfg, policy.cache_dir.as_deref(), &node, uid);
    crate::config::make_state_base(&state)?;
    let cwd: PathBuf = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let key = instance_key(job, step, &node, req.name.as_deref());
    let argv = sp.job_argv();
    // The host's locale variables stay out unless named, as with pyxis.
    let named = crate::taskenv::named(req.env_names.as_deref());
    let task_env = crate::taskenv::without_locale(&env, &named);
    let (image_path, join_key, attach) = resolve(&req, &cfg, &state, &env, &node, job, step, &key)?;
    // --container-save: the writable layer is kept on disk, for the step's exit to save.
    let save = crate::args::save_path(&src)?.map(|_| crate::save::save_key(job, step, &node));
    let (client_paths, client_libraries) = match batch {
        true => slurm_client(&argv[0], &env),
        false => Default::default(),
    };
    let opts = JobRequest {
        image: Some(image_path.to_string_lossy().into_owned()),
        ..req.clone()
    }
    .run_options(&key, argv.clone(), &task_env, &cwd)?
    .with_image(image_path)
    .with_join(Join::Key(join_key), attach)
    .with_site(crate::config::site(&cfg, Some(&state)))
    .or_persist(save)
    // The policy's mode wins; plugstack's mode= is the site default under it.
    .with_mode(policy.mode.or(cfg.mode))
    .with_scheduler_files(client_paths, client_libraries);
    let image = req
        .image
        .clone()
        .unwrap_or_else(|| opts.image.display().to_string());
    // slurmstepd made this task non-dumpable when it switched to the user; the user
    // namespace maps in /proc/self need it dumpable again (as after any exec).
    let _ = nix::sys::prctl::set_dumpable(true);
    let (mut process, _built) = berth_launcher::enter(&opts, &task_env, &cwd)?;
    log(
        Level::Info,
        &format!(
            "job {job} step {step} on {node}: image {image}, key {key}, mode {}, in the container after {} ms",
            match opts.mode {
                Some(Mode::Extract) => "extract",
                _ => "mount",
            },
            started.elapsed().as_millis()
        ),
    );
    task_env_in_container(sp, &req, &env, &named, &argv, batch, &mut process)?;
    for (k, v) in &process.env {
        sp.setenv(k, v);
    }
    for (k, _) in &env {
        if !process.env.iter().any(|(pk, _)| pk == k) {
            sp.unsetenv(k);
        }
    }
    Ok(())
}

/// The task's start directory, enroot's hook variables and the entrypoint, in the container
/// ([`crate::taskenv`]): the image's `WorkingDir` unless `--container-workdir`, as pyxis. The
/// batch script keeps the submit directory: the steps it starts with srun get its cwd, which
/// their slurmstepd needs on the host.
fn task_env_in_container(
    sp: Spank,
    req: &berth_plugin::JobRequest,
    env: &[(OsString, OsString)],
    named: &[String],
    argv: &[OsString],
    batch: bool,
    process: &mut Process,
) -> Result<(), Error> {
    use crate::taskenv;
    let config = berth_launcher::read_image_config(Path::new("/"))?;
    if req.workdir.is_none() && !batch {
        process.workdir = taskenv::image_workdir(&config)?;
        process.env.retain(|(k, _)| k != "PWD");
        process
            .env
            .push(("PWD".into(), process.workdir.clone().into_os_string()));
    }
    let mut set_inside: Vec<String> = config
        .config
        .env
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
        .collect();
    set_inside.extend(named.iter().cloned());
    taskenv::hook_vars(env, &mut process.env, &set_inside);
    if process.argv.len() > argv.len() && process.argv.ends_with(argv) {
        let entrypoint = &process.argv[..process.argv.len() - argv.len()];
        let ep_env = taskenv::entrypoint_env(&process.env, &set_inside);
        taskenv::run_through_entrypoint(
            sp,
            entrypoint,
            argv,
            &process.env,
            &ep_env,
            named,
            req.entrypoint_log,
        )?;
    }
    Ok(())
}

/// The image file for this task, the join key and whether to attach. A registry reference is
/// imported once per step on the node. A named container's fate is decided once per step on the
/// node, by pyxis's `NAME:FLAG` rules ([`decide_named`]): a container that exists is started
/// again (or attached to, if a step of it runs) from the image it was created from, whatever
/// image this step names; one that does not is created from this step's image.
#[allow(clippy::too_many_arguments)]
pub(crate) fn resolve(
    req: &JobRequest,
    cfg: &Config,
    state: &Path,
    env: &[(OsString, OsString)],
    node: &str,
    job: u32,
    step: u32,
    key: &str,
) -> Result<(PathBuf, String, bool), Error> {
    let given = || -> Result<PathBuf, Error> {
        let image = req.image.as_deref().unwrap_or_default();
        if is_reference(image) {
            log(Level::Verbose, &format!("importing {image} on {node}"));
            let policy = crate::config::policy(cfg).ok();
            crate::config::importer(cfg).import(image, state, env, job, step, policy.as_ref())
        } else {
            Ok(PathBuf::from(image))
        }
    };
    let Some(name) = req.name.as_deref() else {
        return Ok((given()?, key.to_string(), false));
    };
    let uid = nix::unistd::getuid().as_raw();
    let dir = berth_launcher::private_state_subdir(state, "named", uid)?;
    let decided = berth_plugin::once_per_step(&dir, key, job, step, || {
        let saved = berth_plugin::saved_image(state, key);
        let running = berth_launcher::container_running(state, key);
        let has_image = req.image.is_some();
        Ok(
            match decide_named(name, req.name_flag, node, saved, running, has_image)? {
                Named::Attach(image) => format!("attach {}", image.display()),
                Named::Reuse(image) => format!("reuse {}", image.display()),
                Named::Create => {
                    let image = given()?;
                    berth_plugin::record_image(state, key, &image)?;
                    format!("create {}", image.display())
                }
            },
        )
    })?;
    let (how, image) = decided.split_once(' ').unwrap_or((&decided, ""));
    log(
        Level::Verbose,
        &format!("job {job} step {step} on {node}: named container {name}: {how} ({image})"),
    );
    // no_exec: a container of this step's own, over the named container's saved layer.
    let join = match req.name_flag {
        NameFlag::NoExec => instance_key(job, step, node, None),
        _ => key.to_string(),
    };
    Ok((PathBuf::from(image), join, how == "attach"))
}

/// The batch step of `sbatch`: with `sbatch=1` (the default) its script runs in the container,
/// with the node's Slurm client made visible there ([`slurm_client`]); the steps it starts
/// inherit the request and get containers of their own.
pub(crate) const SLURM_BATCH_SCRIPT: u32 = 0xffff_fffb;

/// The Slurm client commands a batch script may call.
const SLURM_COMMANDS: &[&str] = &[
    "srun", "sbatch", "salloc", "scancel", "squeue", "scontrol", "sinfo", "sacct", "sstat",
    "sattach", "sbcast",
];

/// What a batch script needs to run Slurm's commands in the container: the job script's
/// directory, the node's client commands, the directory of libslurmfull and Slurm's plugins
/// (as loaded by this slurmstepd), the configuration directory, this plugin (srun loads it
/// through plugstack.conf), all bound read-only at their host paths; and the libraries those
/// commands link that are not glibc's (an image of the same distribution has them anyway).
fn slurm_client(script: &OsStr, env: &[(OsString, OsString)]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let get = |k: &str| {
        env.iter()
            .find(|(ek, _)| ek == k)
            .map(|(_, v)| v.as_os_str())
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    if let Some(dir) = Path::new(script).parent().filter(|d| d.is_absolute()) {
        paths.push(dir.to_path_buf());
    }
    let search = get("PATH").unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    let mut commands = Vec::new();
    for name in SLURM_COMMANDS {
        if let Some(found) = search
            .as_bytes()
            .split(|b| *b == b':')
            .map(|d| Path::new(OsStr::from_bytes(d)).join(name))
            .find(|p| p.is_file())
        {
            paths.push(found.clone());
            commands.push(found);
        }
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    if let Some(lib) = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("libslurmfull"))
    {
        if let Some(dir) = Path::new(lib).parent() {
            paths.push(dir.to_path_buf());
        }
    }
    let conf = get("SLURM_CONF")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("SLURM_CONF").map(PathBuf::from))
        .unwrap_or_else(|| "/etc/slurm/slurm.conf".into());
    if let Some(dir) = conf.parent() {
        paths.push(dir.to_path_buf());
    }
    if let Some(me) = crate::spank::own_path() {
        paths.push(me);
    }
    paths.sort();
    paths.dedup();
    let glibc = [
        "libc.so",
        "libm.so",
        "libresolv.so",
        "libpthread.so",
        "libdl.so",
        "librt.so",
        "ld-linux",
        "linux-vdso",
    ];
    let mut libraries = Vec::new();
    if let Some(srun) = commands.first() {
        let out = std::process::Command::new("ldd")
            .arg(srun)
            .stderr(std::process::Stdio::null())
            .output();
        for line in out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
        {
            // "libfoo.so.1 => /lib/<multiarch triplet>/libfoo.so.1 (0x...)"
            let Some((name, rest)) = line.trim().split_once(" => ") else {
                continue;
            };
            let lib = rest.split_whitespace().next().unwrap_or("");
            if lib.starts_with('/')
                && !glibc.iter().any(|g| name.starts_with(g))
                && !paths.iter().any(|p| Path::new(lib).starts_with(p))
            {
                libraries.push(PathBuf::from(lib));
            }
        }
    }
    (paths, libraries)
}
