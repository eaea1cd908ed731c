//! `spank_berth.so`: berth's Slurm SPANK plugin.
//!
//! - In `srun`/`sbatch`/`salloc` (local and allocator contexts) it registers the pyxis-style
//!   `--container-*` options and checks a request before the job is submitted, so a missing
//!   image, a bad mount spec or a mount the site policy denies fails fast, in srun's output.
//! - In each task (remote context, `task_init`, as the user, just before Slurm execs the task)
//!   it moves the task into the node's container for the step: the first task of the step on a
//!   node creates it (the launcher's keeper), the others join its namespaces. Slurm then execs
//!   the task's command inside, with the task's own Slurm/PMIx environment.
//!
//! Every callback runs inside `guard`: a panic never crosses into srun or slurmstepd. The
//! callbacks are `unsafe extern "C"`: Slurm calls them with its own `spank_t` handle and
//! argument vector, which they trust.

#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]

mod ffi {
    include!(concat!(env!("OUT_DIR"), "/spank.rs"));
}

use berth_launcher::error::Error;
use berth_plugin::{instance_key, is_reference, JobRequest};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[no_mangle]
pub static plugin_name: [u8; 6] = *b"berth\0";
#[no_mangle]
pub static plugin_type: [u8; 6] = *b"spank\0";
#[no_mangle]
pub static plugin_version: u32 = ffi::SLURM_VERSION_NUMBER;

/// The options users get, pyxis's names. Each can also be set through the environment
/// variable `BERTH_` + the name in capitals with `_` (e.g. `BERTH_CONTAINER_IMAGE`).
const OPTIONS: &[(&str, Option<&str>, &str)] = &[
    (
        "container-image",
        Some("IMAGE"),
        "[berth] run the tasks in this squashfs image",
    ),
    (
        "container-mounts",
        Some("SRC:DST[:FLAGS],..."),
        "[berth] bind these host paths (FLAGS: ro, rw, bind, rbind)",
    ),
    (
        "container-workdir",
        Some("DIR"),
        "[berth] working directory inside the container",
    ),
    (
        "container-name",
        Some("NAME"),
        "[berth] share one container between the steps of the job that name it",
    ),
    (
        "container-env",
        Some("NAME,..."),
        "[berth] these host variables win over the image's",
    ),
    (
        "container-writable",
        None,
        "[berth] make the image writable (changes are discarded)",
    ),
    (
        "container-readonly",
        None,
        "[berth] keep the image read-only (the default)",
    ),
    (
        "container-remap-root",
        None,
        "[berth] be uid 0 inside the container",
    ),
    (
        "container-mount-home",
        None,
        "[berth] bind the home directory (the default)",
    ),
    (
        "no-container-mount-home",
        None,
        "[berth] do not bind the home directory",
    ),
    (
        "container-entrypoint",
        None,
        "[berth] run the image's entrypoint before the command (needs /bin/sh in the image)",
    ),
    (
        "no-container-entrypoint",
        None,
        "[berth] do not run the image's entrypoint (the default unless the site says entrypoint=1)",
    ),
];

/// The registered option structs, kept for the life of the process (Slurm keeps pointers).
fn options() -> &'static Vec<usize> {
    static OPTS: OnceLock<Vec<usize>> = OnceLock::new();
    OPTS.get_or_init(|| {
        OPTIONS
            .iter()
            .enumerate()
            .map(|(i, (name, arg, usage))| {
                let leak = |s: &str| CString::new(s).unwrap().into_raw();
                let opt = Box::new(ffi::spank_option {
                    name: leak(name),
                    arginfo: arg.map_or(std::ptr::null_mut(), leak),
                    usage: leak(usage),
                    has_arg: arg.is_some() as c_int,
                    val: i as c_int,
                    cb: None,
                });
                Box::into_raw(opt) as usize
            })
            .collect()
    })
}

/// Run a callback body; errors and panics become a message on stderr and a failed callback.
fn guard(what: &str, body: impl FnOnce() -> Result<(), Error> + std::panic::UnwindSafe) -> c_int {
    match std::panic::catch_unwind(body) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("berth: {e}");
            -1
        }
        Err(_) => {
            eprintln!("berth: internal error in {what} (please report it)");
            -1
        }
    }
}

fn args(ac: c_int, av: *mut *mut c_char) -> Vec<String> {
    os_args(ac, av)
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// A C argument vector as bytes (a task's argv need not be UTF-8).
fn os_args(ac: c_int, av: *mut *mut c_char) -> Vec<OsString> {
    (0..ac.max(0) as isize)
        .filter_map(|i| unsafe {
            let p = *av.offset(i);
            (!p.is_null()).then(|| OsString::from_vec(CStr::from_ptr(p).to_bytes().to_vec()))
        })
        .collect()
}

/// plugstack.conf arguments: `policy=FILE`, `runtime_dir=DIR` (the per-user state goes in
/// DIR/berth-<uid>; `%n` is the node name), `mode=mount|extract`, `sbatch=0|1`, `entrypoint=0|1`,
/// `berth_image=PATH` (the importer for registry references; default: `berth-image` on PATH),
/// `insecure_registries=HOST,...` (registries reached over plain http; default: loopback only).
struct Config {
    policy: Option<String>,
    runtime_dir: Option<String>,
    mode: Option<String>,
    sbatch: bool,
    /// Run images' entrypoints unless the user says `--no-container-entrypoint` (pyxis's
    /// `execute_entrypoint`); off by default.
    entrypoint: bool,
    berth_image: String,
    insecure_registries: Vec<String>,
}

fn config(av: &[String]) -> Result<Config, Error> {
    let mut c = Config {
        policy: None,
        runtime_dir: None,
        mode: None,
        sbatch: true,
        entrypoint: false,
        berth_image: "berth-image".into(),
        insecure_registries: Vec::new(),
    };
    for a in av {
        match a.split_once('=') {
            Some(("policy", v)) => c.policy = Some(v.into()),
            Some(("runtime_dir", v)) => c.runtime_dir = Some(v.into()),
            Some(("mode", v)) => c.mode = Some(v.into()),
            Some(("sbatch", v)) => c.sbatch = v != "0",
            Some(("entrypoint", v)) => c.entrypoint = v != "0",
            Some(("berth_image", v)) => c.berth_image = v.into(),
            Some(("insecure_registries", v)) => {
                c.insecure_registries = v.split(',').filter(|h| !h.is_empty()).map(String::from).collect()
            }
            _ => {
                return Err(Error::Usage(format!(
                    "plugstack.conf: unknown argument '{a}' for spank_berth.so (use policy=, runtime_dir=, mode=, sbatch=, entrypoint=, berth_image=, insecure_registries=)"
                )))
            }
        }
    }
    Ok(c)
}

/// # Safety
/// Called by Slurm with its handle and `ac` valid C strings in `av`.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_init(
    sp: ffi::spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    let av = args(ac, av);
    guard("slurm_spank_init", move || {
        config(&av)?;
        let ctx = unsafe { ffi::spank_context() };
        if ctx == ffi::spank_context_S_CTX_LOCAL
            || ctx == ffi::spank_context_S_CTX_REMOTE
            || ctx == ffi::spank_context_S_CTX_ALLOCATOR
        {
            for opt in options() {
                unsafe { ffi::spank_option_register(sp, *opt as *mut ffi::spank_option) };
            }
        }
        Ok(())
    })
}

/// The user's request: the options given, else the environment (`BERTH_CONTAINER_*`), and
/// Slurm's own `--container` (SLURM_CONTAINER, when the site has no oci.conf).
/// `entrypoint`: the site's default for `--container-entrypoint` (plugstack `entrypoint=`).
fn request(sp: ffi::spank_t, remote: bool, entrypoint: bool) -> JobRequest {
    let getenv = |name: &str| -> Option<String> {
        if remote {
            let mut buf = vec![0u8; 4096];
            let cname = CString::new(name).ok()?;
            let rc = unsafe {
                ffi::spank_getenv(
                    sp,
                    cname.as_ptr(),
                    buf.as_mut_ptr() as *mut c_char,
                    buf.len() as c_int,
                )
            };
            ok(rc).then(|| {
                unsafe { CStr::from_ptr(buf.as_ptr() as *const c_char) }
                    .to_string_lossy()
                    .into_owned()
            })
        } else {
            std::env::var(name).ok()
        }
    };
    let opt = |name: &str| -> Option<String> {
        let i = OPTIONS.iter().position(|(n, _, _)| *n == name)?;
        let mut optarg: *mut c_char = std::ptr::null_mut();
        let rc = unsafe {
            ffi::spank_option_getopt(sp, options()[i] as *mut ffi::spank_option, &mut optarg)
        };
        if ok(rc) {
            return Some(if optarg.is_null() {
                String::new()
            } else {
                unsafe { CStr::from_ptr(optarg) }
                    .to_string_lossy()
                    .into_owned()
            });
        }
        getenv(&format!("BERTH_{}", name.to_uppercase().replace('-', "_")))
    };
    let flag = |name: &str| opt(name).is_some_and(|v| v != "0");
    JobRequest {
        image: opt("container-image")
            .or_else(|| getenv("SLURM_CONTAINER"))
            .filter(|s| !s.is_empty()),
        mounts: opt("container-mounts"),
        workdir: opt("container-workdir"),
        name: opt("container-name"),
        env_names: opt("container-env"),
        // A named container is writable (its changes are what it is for) unless told otherwise.
        writable: (flag("container-writable") || opt("container-name").is_some())
            && !flag("container-readonly"),
        remap_root: flag("container-remap-root"),
        mount_home: !flag("no-container-mount-home"),
        entrypoint: (flag("container-entrypoint") || entrypoint)
            && !flag("no-container-entrypoint"),
    }
}

fn apply_config(c: &Config, node: &str) {
    // The task process is single-threaded (forked by slurmstepd): setting its environment is
    // safe here, and this is the launcher's environment, not the job's.
    if let Some(p) = &c.policy {
        std::env::set_var("BERTH_CONFIG", p);
    }
    if let Some(d) = &c.runtime_dir {
        let uid = unsafe { libc::getuid() };
        std::env::set_var(
            "BERTH_STATE_DIR",
            Path::new(&d.replace("%n", node)).join(format!("berth-{uid}")),
        );
    }
    if let Some(m) = &c.mode {
        std::env::set_var("BERTH_MODE", m);
    }
}

/// In srun/sbatch/salloc: check what can be checked before the job is queued.
///
/// # Safety
/// Called by Slurm with its handle and `ac` valid C strings in `av`.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_init_post_opt(
    sp: ffi::spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    let av = args(ac, av);
    guard("slurm_spank_init_post_opt", move || {
        let ctx = unsafe { ffi::spank_context() };
        if ctx != ffi::spank_context_S_CTX_LOCAL && ctx != ffi::spank_context_S_CTX_ALLOCATOR {
            return Ok(());
        }
        let cfg = config(&av)?;
        let req = request(sp, false, cfg.entrypoint);
        if !req.wants_container() {
            return Ok(());
        }
        // An srun in a batch script that runs in the container: the request was checked when
        // the job was submitted, and the image's host path is not visible in here.
        if std::env::var_os("BERTH_CONTAINER").is_some() {
            return Ok(());
        }
        if !cfg.sbatch && ctx == ffi::spank_context_S_CTX_ALLOCATOR {
            return Err(Error::Usage(
                "this site does not take --container-* on sbatch or salloc (plugstack sbatch=0); give them to srun".into(),
            ));
        }
        apply_config(&cfg, "");
        // vars_os: a non-UTF-8 variable in the submit environment is carried, not a panic.
        let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
        let opts = req.run_options("check", vec!["true".into()], &env, &cwd)?;
        let reference = req.image.as_deref().is_some_and(is_reference);
        berth_launcher::run::check(&opts, !reference)
    })
}

/// ESPANK_SUCCESS is 0.
fn ok(rc: ffi::spank_err_t) -> bool {
    rc as i64 == 0
}

fn get_u32(sp: ffi::spank_t, item: ffi::spank_item_t) -> u32 {
    let mut v: u32 = 0;
    unsafe { ffi::spank_get_item(sp, item, &mut v as *mut u32) };
    v
}

/// The job's environment (what Slurm will exec the task with), as pairs of bytes.
fn job_env(sp: ffi::spank_t) -> Vec<(OsString, OsString)> {
    let mut envp: *mut *mut c_char = std::ptr::null_mut();
    let rc = unsafe {
        ffi::spank_get_item(
            sp,
            ffi::spank_item_S_JOB_ENV,
            &mut envp as *mut *mut *mut c_char,
        )
    };
    let mut out = Vec::new();
    if !ok(rc) || envp.is_null() {
        return out;
    }
    let mut i = 0;
    loop {
        let p = unsafe { *envp.offset(i) };
        if p.is_null() {
            break;
        }
        let kv = unsafe { CStr::from_ptr(p) }.to_bytes();
        if let Some(eq) = kv.iter().position(|b| *b == b'=') {
            out.push((
                OsStr::from_bytes(&kv[..eq]).into(),
                OsStr::from_bytes(&kv[eq + 1..]).into(),
            ));
        }
        i += 1;
    }
    out
}

/// Slurm execs the task's own argv after this plugin returns, and SPANK cannot give it a
/// longer one. So the image's entrypoint runs through a shell script in memory (a memfd left
/// open across the exec), put in place of the task's argv[0]: `exec ENTRYPOINT... ARGV...`.
/// The rest of Slurm's argv reaches the script as its arguments and is ignored.
fn run_through_entrypoint(sp: ffi::spank_t, full_argv: &[OsString]) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::fd::{FromRawFd as _, IntoRawFd as _};
    if !Path::new("/bin/sh").exists() {
        return Err(Error::Usage(
            "--container-entrypoint needs /bin/sh in the image; run the entrypoint as the command instead".into(),
        ));
    }
    // Single quotes around the bytes, each ' as '\'' (arguments need not be UTF-8).
    let quote = |s: &OsStr| {
        let mut q = b"'".to_vec();
        for b in s.as_bytes() {
            match b {
                b'\'' => q.extend_from_slice(b"'\\''"),
                b => q.push(*b),
            }
        }
        q.push(b'\'');
        q
    };
    let fd = unsafe { libc::memfd_create(c"berth-entrypoint".as_ptr(), 0) };
    if fd < 0 {
        return Err(Error::Sys {
            context: "cannot create the entrypoint script".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let words: Vec<Vec<u8>> = full_argv.iter().map(|a| quote(a)).collect();
    // The script's own fd stays open in the command (sh can only close fds up to 9).
    let script = [
        b"#!/bin/sh\nexec ".to_vec(),
        words.join(&b' '),
        b"\n".to_vec(),
    ]
    .concat();
    file.write_all(&script).map_err(|e| Error::Sys {
        context: "cannot write the entrypoint script".into(),
        source: e,
    })?;
    let fd = file.into_raw_fd();
    let Some((_, argv)) = raw_job_argv(sp).filter(|(argc, _)| *argc >= 1) else {
        return Err(Error::Usage(
            "--container-entrypoint: the task has no command to run".into(),
        ));
    };
    // Leaked on purpose: Slurm execs with this pointer in its argv.
    let shim = CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default();
    unsafe { *argv = shim.into_raw() };
    Ok(())
}

/// Slurm's own argv array for the task (the one it will exec), with its length.
fn raw_job_argv(sp: ffi::spank_t) -> Option<(c_int, *mut *mut c_char)> {
    let mut argc: c_int = 0;
    let mut argv: *mut *mut c_char = std::ptr::null_mut();
    let rc = unsafe {
        ffi::spank_get_item(
            sp,
            ffi::spank_item_S_JOB_ARGV,
            &mut argc as *mut c_int,
            &mut argv as *mut *mut *mut c_char,
        )
    };
    (ok(rc) && !argv.is_null()).then_some((argc, argv))
}

fn job_argv(sp: ffi::spank_t) -> Vec<OsString> {
    let Some((argc, argv)) = raw_job_argv(sp) else {
        return vec!["true".into()];
    };
    let v = os_args(argc, argv);
    if v.is_empty() {
        vec!["true".into()]
    } else {
        v
    }
}

/// A registry reference is imported with berth-image into the node's state directory, once:
/// tasks of the node wait on a lock while the first imports; later steps find it up to date
/// (berth-image checks the manifest and rebuilds nothing).
fn import(reference: &str, cfg: &Config, env: &[(OsString, OsString)]) -> Result<PathBuf, Error> {
    use std::io::Read as _;
    let uid = unsafe { libc::getuid() };
    let state = berth_launcher::host::state_dir(uid, None);
    berth_launcher::host::ensure_private_dir(&state, uid)?;
    let dir = state.join("imported");
    berth_launcher::host::ensure_private_dir(&dir, uid)?;
    let digest: String = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        reference.hash(&mut h);
        format!("{:016x}", h.finish())
    };
    let out = dir.join(format!("{digest}.sqsh"));
    let lock = std::fs::File::create(dir.join(".lock"))
        .map_err(|e| Error::Image(format!("cannot lock {}: {e}", dir.display())))?;
    berth_launcher::sys::flock(&lock, libc::LOCK_EX)
        .map_err(|e| Error::Image(format!("cannot lock: {e}")))?;
    let mut cmd = std::process::Command::new(&cfg.berth_image);
    cmd.args(["import", "--quiet", reference, "-o"]).arg(&out);
    if cfg
        .insecure_registries
        .iter()
        .any(|h| registry_host(reference) == h)
    {
        cmd.arg("--insecure");
    }
    // The user's credentials and layer cache come from the job's environment.
    for (k, v) in env {
        let name = k.as_bytes();
        if name == b"HOME"
            || name.starts_with(b"BERTH_REGISTRY_")
            || name == b"BERTH_CREDENTIALS"
            || name == b"BERTH_LAYER_CACHE"
        {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::Image(format!(
                "cannot run {} to import {reference}: {e}",
                cfg.berth_image
            ))
        })?;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().map_err(|e| Error::Image(e.to_string()))?;
    if !status.success() {
        let why = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("failed")
            .trim_start_matches("berth-image: ");
        return Err(Error::Image(format!("cannot import {reference}: {why}")));
    }
    Ok(out)
}

/// The registry host of a reference (`docker://HOST[:PORT]/...` or `[USER@]HOST[:PORT]#...`),
/// without its port; empty for Docker Hub short names.
fn registry_host(reference: &str) -> &str {
    let rest = reference.strip_prefix("docker://").unwrap_or(reference);
    let rest = rest.split_once('@').map_or(rest, |(_, r)| r);
    let host = if reference.starts_with("docker://") {
        rest.split('/').next().unwrap_or("")
    } else {
        rest.split_once('#').map_or("", |(h, _)| h)
    };
    host.split(':').next().unwrap_or("")
}

/// The batch step of `sbatch`: with `sbatch=1` (the default) its script runs in the container,
/// with the node's Slurm client made visible there ([`slurm_client`]); the steps it starts
/// inherit the request and get containers of their own.
const SLURM_BATCH_SCRIPT: u32 = 0xffff_fffb;

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
    if let Some(me) = own_path() {
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
            // "libfoo.so.1 => /lib/x86_64-linux-gnu/libfoo.so.1 (0x...)"
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

/// This plugin's file, as the dynamic loader found it.
fn own_path() -> Option<PathBuf> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let addr = slurm_spank_task_init as *const libc::c_void;
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    let name = unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy();
    std::fs::canonicalize(name.as_ref()).ok()
}

/// In each task, as the user, just before Slurm execs it: enter the node's container.
///
/// # Safety
/// Called by Slurm with its handle and `ac` valid C strings in `av`.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_task_init(
    sp: ffi::spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    let av = args(ac, av);
    // Slurm execs the task next: it must get the dispositions and mask it had before berth's
    // code ran, whatever that code did.
    let signals = berth_launcher::signals::SignalState::current();
    let rc = guard("slurm_spank_task_init", move || {
        let cfg = config(&av)?;
        let req = request(sp, true, cfg.entrypoint);
        if !req.wants_container() {
            return Ok(());
        }
        let (job, step) = (
            get_u32(sp, ffi::spank_item_S_JOB_ID),
            get_u32(sp, ffi::spank_item_S_JOB_STEPID),
        );
        let batch = step == SLURM_BATCH_SCRIPT;
        if batch && !cfg.sbatch {
            return Ok(());
        }
        let env = job_env(sp);
        let node = env
            .iter()
            .find(|(k, _)| k == "SLURMD_NODENAME")
            .map(|(_, v)| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        apply_config(&cfg, &node);
        let cwd: PathBuf = std::env::current_dir().unwrap_or_else(|_| "/".into());
        let key = instance_key(job, step, &node, req.name.as_deref());
        let argv = job_argv(sp);
        let mut opts = req.run_options(&key, argv.clone(), &env, &cwd)?;
        if batch {
            (opts.scheduler_paths, opts.scheduler_libraries) = slurm_client(&argv[0], &env);
        }
        if let Some(reference) = req.image.as_deref().filter(|i| is_reference(i)) {
            opts.image = import(reference, &cfg, &env)?;
        }
        // slurmstepd made this task non-dumpable when it switched to the user; the user
        // namespace maps in /proc/self need it dumpable again (as after any exec).
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
        let (process, _built) = berth_launcher::run::enter(&opts, &env, &cwd)?;
        if process.argv != argv {
            run_through_entrypoint(sp, &process.argv)?;
        }
        for (k, v) in &process.env {
            let (k, v) = (CString::new(k.as_bytes()), CString::new(v.as_bytes()));
            if let (Ok(k), Ok(v)) = (k, v) {
                unsafe { ffi::spank_setenv(sp, k.as_ptr(), v.as_ptr(), 1) };
            }
        }
        for (k, _) in &env {
            if !process.env.iter().any(|(pk, _)| pk == k) {
                if let Ok(k) = CString::new(k.as_bytes()) {
                    unsafe { ffi::spank_unsetenv(sp, k.as_ptr()) };
                }
            }
        }
        Ok(())
    });
    signals.apply();
    rc
}

/// At the end of a job, on each of its nodes (as root): remove the saved layers of the job's
/// named containers.
///
/// # Safety
/// Called by Slurm with its handle and `ac` valid C strings in `av`.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_job_epilog(
    sp: ffi::spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    let av = args(ac, av);
    guard("slurm_spank_job_epilog", move || {
        let cfg = config(&av)?;
        let job = get_u32(sp, ffi::spank_item_S_JOB_ID);
        let uid = get_u32(sp, ffi::spank_item_S_JOB_UID);
        let node = nix_hostname();
        let base = cfg
            .runtime_dir
            .map(|d| d.replace("%n", &node))
            .unwrap_or_else(|| "/tmp".into());
        let named = Path::new(&base).join(format!("berth-{uid}")).join("named");
        let prefix = format!("slurm-{job}-");
        for entry in std::fs::read_dir(&named).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    })
}

fn nix_hostname() -> String {
    let mut buf = [0u8; 256];
    if unsafe { libc::gethostname(buf.as_mut_ptr() as *mut c_char, buf.len()) } != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
