//! OpenLava glue for berth: `bsub -a 'berth(IMG.sqsh)'` jobs run in the image.
//!
//! Three small programs, none of them privileged:
//! - `berth-lava-esub` runs at submit time as `$LSF_SERVERDIR/esub` (or from the site's esub):
//!   it finds `berth(IMG)` in `LSB_SUB_ADDITIONAL` (bsub's `-a`), checks the image with the
//!   launcher and writes `BERTH_IMAGE` into the job's environment, or rejects the job (97).
//! - `berth-lava-starter` is a queue's `JOB_STARTER`: sbatchd's job shell runs
//!   `berth-lava-starter <user command>`; with `BERTH_IMAGE` set the starter enters the image
//!   through the launcher and becomes the command (no supervisor), else it execs the command.
//! - `berth-lava-mpirun` runs `mpirun -machinefile` built from `LSB_MCPU_HOSTS`, each rank
//!   wrapped by itself (`--rank`): the ranks of a host join one container, keyed by job and host.
//!
//! This library holds what they share: reading OpenLava's files and environment, and the
//! launcher options for a job. The functions are pure (unit-tested below); the binaries are
//! straight-line code around them.

use berth_launcher::{Error, Join, Result, RunOptions};
use berth_plugin::{key_part, JobRequest};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The process environment: bytes, as the OS gives them (values need not be UTF-8).
pub type Env = Vec<(OsString, OsString)>;

/// OpenLava's `LSB_SUB_ABORT_VALUE`: an esub exiting with it rejects the job.
pub const ESUB_ABORT: i32 = 97;

/// The MPI helper's program name: the starter leaves a job whose command is the helper on the
/// host (the helper starts every rank in the image itself).
pub const MPIRUN_HELPER: &str = "berth-lava-mpirun";

/// The value of `name` in `env`, if set, not empty and UTF-8 (ids, host lists, image names).
pub fn get<'a, K: AsRef<OsStr>, V: AsRef<OsStr>>(env: &'a [(K, V)], name: &str) -> Option<&'a str> {
    env.iter()
        .find(|(k, _)| k.as_ref() == name)
        .and_then(|(_, v)| v.as_ref().to_str())
        .filter(|v| !v.is_empty())
}

/// The value of `name` in `env` as bytes, if set and not empty (paths).
pub fn get_os<'a>(env: &'a [(OsString, OsString)], name: &str) -> Option<&'a OsStr> {
    env.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_os_str())
        .filter(|v| !v.is_empty())
}

/// Print one line on stderr and exit.
pub fn fail(msg: impl std::fmt::Display, code: i32) -> ! {
    eprintln!("{}", berth_launcher::one_line(msg));
    std::process::exit(code)
}

/// The process environment as pairs of bytes.
pub fn process_env() -> Env {
    std::env::vars_os().collect()
}

/// `$LSB_SUB_PARM_FILE`: one `NAME=VALUE` a line, as bsub writes it (lsbatch/lib/lsb.sub.c):
/// strings in double quotes with only `"` escaped (`\"`; a backslash is a plain character),
/// `LSB_SUB_ADDITIONAL` (bsub's `-a`) in double quotes with nothing escaped, flags and numbers
/// bare.
pub fn parse_parm_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let (k, v) = line.split_once('=')?;
            let k = k.trim();
            Some((k.to_string(), unquote(v.trim(), k != "LSB_SUB_ADDITIONAL")))
        })
        .collect()
}

fn unquote(v: &str, escaped_quotes: bool) -> String {
    let quoted = |q: char| v.len() >= 2 && v.starts_with(q) && v.ends_with(q);
    if quoted('"') {
        let inner = &v[1..v.len() - 1];
        if escaped_quotes {
            inner.replace("\\\"", "\"")
        } else {
            inner.to_string()
        }
    } else if quoted('\'') {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

/// The image named by `berth(IMG)` in bsub's `-a` string (`LSB_SUB_ADDITIONAL`), which may
/// name other esub applications too (`-a "berth(/img.sqsh) other(x)"`): those are not ours.
pub fn image_from_additional(additional: &str) -> std::result::Result<Option<String>, String> {
    let usage = "give it as -a 'berth(/path/to/image.sqsh)'";
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(pos) = additional[from..].find("berth") {
        let start = from + pos;
        from = start + "berth".len();
        let word_start = additional[..start]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || c == ',');
        if !word_start {
            continue;
        }
        let after = &additional[from..];
        if let Some(inner) = after.strip_prefix('(') {
            let Some(end) = inner.find(')') else {
                return Err(format!("-a berth(...) has no closing parenthesis: {usage}"));
            };
            found.push(inner[..end].trim().to_string());
            from += 1 + end + 1;
        } else if after.is_empty() || after.starts_with(|c: char| c.is_whitespace() || c == ',') {
            return Err(format!("-a berth needs an image: {usage}"));
        }
    }
    match found.as_slice() {
        [] => Ok(None),
        [image] if image.is_empty() => Err(format!("-a berth() names no image: {usage}")),
        [image] => Ok(Some(image.clone())),
        _ => Err("-a names berth(...) more than once: give one image".into()),
    }
}

/// A line for `$LSB_SUB_MODIFY_ENVFILE`. bsub reads the file as a configuration line
/// (lsbatch/lib/lsb.sub.c, modifyJobInformation; lsf/lib/lib.words.c): `"` ends the value,
/// `#` starts a comment, blanks are folded into one space and a backslash before a blank
/// is dropped; so values it would change are refused rather than mangled. Quotes `'`, `$`
/// and backslashes elsewhere reach the job as they are (its environment is set in the
/// process, not by a shell).
pub fn env_file_line(name: &str, value: &str) -> std::result::Result<String, String> {
    let changed = value.contains(['"', '#', '\n', '\r', '\t'])
        || value.contains("  ")
        || value.starts_with(' ')
        || value.ends_with([' ', '\\'])
        || value.contains("\\ ");
    if changed {
        return Err(format!(
            "'{value}' holds a double quote, '#', a tab or newline, a run of spaces or a backslash before a space, which OpenLava's env file cannot carry: rename it"
        ));
    }
    Ok(format!("{name}=\"{value}\"\n"))
}

/// Where the admin says which queues start jobs in images; `BERTH_LAVA_CONFIG` names
/// another file (tests).
pub const SITE_CONFIG: &str = "/etc/berth/openlava.toml";

/// `openlava.toml`: what the esub cannot learn from bsub. OpenLava hands an esub the queue a
/// job names (`-q`), not the queues' JOB_STARTER nor mbatchd's default queue.
#[derive(Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Queues whose `JOB_STARTER` is berth-lava-starter.
    pub starter_queues: Vec<String>,
    /// lsb.params' `DEFAULT_QUEUE`: the queue of a job submitted without `-q`.
    pub default_queue: Option<String>,
}

/// The site configuration from `path`; None if the file does not exist.
pub fn load_site_config(path: &Path) -> std::result::Result<Option<SiteConfig>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| format!("{}: {}", path.display(), e.message()))
}

/// The queue a job goes to: bsub's `-q` (`LSB_SUB_QUEUE`), else the user's
/// `LSB_DEFAULTQUEUE` (bsub applies it after the esub has run), else the site's default.
pub fn job_queue(
    parm: &[(String, String)],
    env: &[(OsString, OsString)],
    config: &SiteConfig,
) -> Option<String> {
    get(parm, "LSB_SUB_QUEUE")
        .or_else(|| get(env, "LSB_DEFAULTQUEUE"))
        .map(|q| q.trim().to_string())
        .or_else(|| config.default_queue.clone())
}

/// Whether a directory given as an image can start a job: it has an executable `/bin/sh`
/// (resolved inside it, as in the container; `bsub < script` and most commands need it).
pub fn rootfs_has_shell(root: &Path) -> bool {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    let Ok(dir) = std::fs::File::open(root) else {
        return false;
    };
    let Ok(fd) = berth_launcher::open_in_root(
        dir.as_raw_fd(),
        std::path::Path::new("bin/sh"),
        libc::O_PATH,
        0,
    ) else {
        return false;
    };
    let file = std::fs::File::from(fd);
    file.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The job's hosts and slots, in order: `LSB_MCPU_HOSTS` (`host n host n ...`), else
/// `LSB_HOSTS` (one word per slot).
pub fn job_hosts(env: &[(OsString, OsString)]) -> std::result::Result<Vec<(String, u32)>, String> {
    let mut hosts: Vec<(String, u32)> = Vec::new();
    let mut add = |host: &str, n: u32| -> std::result::Result<(), String> {
        match hosts.iter_mut().find(|(h, _)| h == host) {
            Some((_, slots)) => {
                *slots = slots
                    .checked_add(n)
                    .ok_or_else(|| format!("host {host} has more slots than can be counted"))?
            }
            None => hosts.push((host.to_string(), n)),
        }
        Ok(())
    };
    if let Some(mcpu) = get(env, "LSB_MCPU_HOSTS") {
        let words: Vec<&str> = mcpu.split_whitespace().collect();
        if words.is_empty() || !words.len().is_multiple_of(2) {
            return Err(format!(
                "LSB_MCPU_HOSTS '{mcpu}' is not of the form 'host n host n ...'"
            ));
        }
        for pair in words.chunks(2) {
            match pair[1].parse::<u32>() {
                Ok(n) if n > 0 => add(pair[0], n)?,
                _ => {
                    return Err(format!(
                        "LSB_MCPU_HOSTS '{mcpu}': '{}' is not a slot count",
                        pair[1]
                    ))
                }
            }
        }
    } else if let Some(list) = get(env, "LSB_HOSTS") {
        for host in list.split_whitespace() {
            add(host, 1)?;
        }
    }
    if hosts.is_empty() {
        return Err(
            "neither LSB_MCPU_HOSTS nor LSB_HOSTS is set: run berth-lava-mpirun inside an OpenLava job (bsub -n N ...)"
                .into(),
        );
    }
    Ok(hosts)
}

/// `name` found as an executable file in `PATH` (as the shell would find it).
pub fn find_on_path(env: &[(OsString, OsString)], name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = get_os(env, "PATH")?;
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The rsh agent mpirun should use: LSF's `blaunch` when it is on `PATH` (it starts the
/// daemons on the job's hosts through LSF, as LSF's own MPI integration does), unless the
/// user chose one (`OMPI_MCA_plm_rsh_agent`, or `--mca plm_rsh_agent` among mpirun's
/// options). None: mpirun's default (ssh).
pub fn launch_agent(env: &[(OsString, OsString)], mpirun_options: &[OsString]) -> Option<PathBuf> {
    let chosen = get_os(env, "OMPI_MCA_plm_rsh_agent").is_some()
        || mpirun_options
            .iter()
            .any(|o| o.as_bytes().ends_with(b"plm_rsh_agent"));
    if chosen {
        return None;
    }
    find_on_path(env, "blaunch")
}

/// An Open MPI machinefile: `host slots=n` a line.
pub fn machinefile(hosts: &[(String, u32)]) -> String {
    hosts
        .iter()
        .map(|(h, n)| format!("{h} slots={n}\n"))
        .collect()
}

/// The job's part of the join key: `lava-<LSB_JOBID>`, with `.<LSB_JOBINDEX>` for an element
/// of a job array (the elements share the job id).
pub fn job_key(env: &[(OsString, OsString)]) -> std::result::Result<String, String> {
    let id = get(env, "LSB_JOBID")
        .ok_or("LSB_JOBID is not set: run berth-lava-mpirun inside an OpenLava job")?;
    Ok(match get(env, "LSB_JOBINDEX").filter(|i| *i != "0") {
        Some(index) => format!("lava-{}.{}", key_part(id), key_part(index)),
        None => format!("lava-{}", key_part(id)),
    })
}

/// The join key of a job's ranks on one host. The host is part of it because the state
/// directory may be shared between hosts (a /tmp on a shared file system; the tests' hosts).
pub fn host_key(job_key: &str, host: &str) -> String {
    format!("{job_key}-{}", key_part(host))
}

/// The scheduler's variables (`LSB_*`, `LS_*`): carried into the container whatever the
/// image or the site's environment rules say.
pub fn scheduler_env(env: &[(OsString, OsString)]) -> Env {
    env.iter()
        .filter(|(k, _)| k.as_bytes().starts_with(b"LSB_") || k.as_bytes().starts_with(b"LS_"))
        .cloned()
        .collect()
}

/// The variables `mpirun -x` forwards to every rank: the scheduler's and berth's own.
pub fn forwarded_names(env: &[(OsString, OsString)]) -> Vec<OsString> {
    env.iter()
        .map(|(k, _)| k)
        .filter(|k| {
            let k = k.as_bytes();
            k.starts_with(b"LSB_") || k.starts_with(b"LS_") || k.starts_with(b"BERTH_")
        })
        .cloned()
        .collect()
}

/// The submit directory (`LS_SUBCWD`; OpenLava gives it relative to the home directory when
/// it lies there).
pub fn submit_cwd(env: &[(OsString, OsString)]) -> Option<PathBuf> {
    let cwd = Path::new(get_os(env, "LS_SUBCWD")?);
    if cwd.is_absolute() {
        Some(cwd.to_path_buf())
    } else {
        get_os(env, "HOME").map(|home| Path::new(home).join(cwd))
    }
}

/// The job's `.lsbatch` directory: where `LSB_JOBFILENAME` (and `$LSB_JOBFILENAME.shell`,
/// the script of `bsub < script`) lives.
pub fn job_file_dir(env: &[(OsString, OsString)]) -> Option<PathBuf> {
    Path::new(get_os(env, "LSB_JOBFILENAME")?)
        .parent()
        .map(Path::to_path_buf)
}

/// Whether the job's command is the MPI helper (by program name).
pub fn is_mpirun_helper(argv0: &OsStr) -> bool {
    Path::new(argv0).file_name().and_then(|n| n.to_str()) == Some(MPIRUN_HELPER)
}

/// The launcher options for a job's command (or an MPI rank) in `image`: the job user's home
/// and the submit directory visible, `LSB_*`/`LS_*` carried in, the image's entrypoint not
/// run (the job's command is what runs), `key` shared by the ranks of a host (None: a
/// container of its own). `job_dir` is the `.lsbatch` directory: the launcher shows it
/// read-only at its own path unless /tmp or the home directory show it already; it is the
/// scheduler's, not a user mount, so the site's user-mount rules do not apply to it.
pub fn run_options(
    image: &str,
    argv: Vec<OsString>,
    env: &[(OsString, OsString)],
    cwd: &Path,
    key: Option<&str>,
    job_dir: Option<&Path>,
) -> Result<RunOptions> {
    let request = JobRequest {
        image: Some(image.to_string()),
        mount_home: true,
        ..Default::default()
    };
    // `berth run`'s variables for --mode and --image-idle, set at submit: honoured as berth
    // run honours them.
    let mode = match get_os(env, "BERTH_MODE") {
        Some(mode) => Some(
            mode.to_str()
                .unwrap_or_default()
                .parse()
                .map_err(|e| Error::Usage(format!("BERTH_MODE: {e}")))?,
        ),
        None => None,
    };
    let idle = match get_os(env, "BERTH_IMAGE_IDLE") {
        Some(idle) => Some(idle.to_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
            Error::Usage(format!(
                "BERTH_IMAGE_IDLE '{}' is not a number of seconds",
                idle.to_string_lossy()
            ))
        })?),
        None => None,
    };
    let opts = request
        .run_options(key.unwrap_or("none"), argv, env, cwd)?
        .with_join(key.map_or(Join::No, |k| Join::Key(k.to_string())), false)
        .with_env(scheduler_env(env))
        .with_mode(mode)
        .with_image_idle_secs(idle);
    let Some(dir) = job_dir else {
        return Ok(opts);
    };
    let real = std::fs::canonicalize(dir).map_err(|e| {
        Error::Usage(format!(
            "the job file directory {} (from LSB_JOBFILENAME) is not there: {e}",
            dir.display()
        ))
    })?;
    opts.with_scheduler_path(real)
        .map_err(|why| Error::Usage(format!("cannot show the job file directory: {why}")))
}

/// The command line of `berth-lava-mpirun`.
#[derive(Debug, PartialEq, Eq)]
pub struct MpirunArgs {
    pub image: Option<String>,
    pub mpirun: String,
    /// Options for mpirun itself (`berth-lava-mpirun [OURS] -OPT... -- COMMAND`).
    pub mpirun_options: Vec<OsString>,
    pub command: Vec<OsString>,
}

pub const MPIRUN_USAGE: &str =
    "usage: berth-lava-mpirun [--image IMG] [--mpirun PATH] [MPIRUN_OPTION... --] COMMAND [ARG...]";

pub fn parse_mpirun_args(args: &[OsString]) -> std::result::Result<MpirunArgs, String> {
    let mut a = MpirunArgs {
        image: None,
        mpirun: "mpirun".into(),
        mpirun_options: Vec::new(),
        command: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        // Our options are UTF-8; anything else starts mpirun's part or the command.
        let word = args[i].to_str().unwrap_or_default();
        let (name, inline) = match word.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (word, None),
        };
        if name != "--image" && name != "--mpirun" {
            break;
        }
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                let value = args
                    .get(i)
                    .ok_or(format!("{name} needs a value; {MPIRUN_USAGE}"))?;
                value
                    .to_str()
                    .ok_or(format!("{name}: the value must be UTF-8"))?
                    .to_string()
            }
        };
        if name == "--image" {
            a.image = Some(value);
        } else {
            a.mpirun = value;
        }
        i += 1;
    }
    let rest = &args[i..];
    match rest.iter().position(|w| w == "--") {
        Some(0) => a.command = rest[1..].to_vec(),
        Some(end) if rest[0].as_bytes().starts_with(b"-") => {
            a.mpirun_options = rest[..end].to_vec();
            a.command = rest[end + 1..].to_vec();
        }
        _ => a.command = rest.to_vec(),
    }
    if a.command.is_empty() {
        return Err(format!("no command given; {MPIRUN_USAGE}"));
    }
    if a.command[0].as_bytes().starts_with(b"-") {
        return Err(format!(
            "'{}' is not a command: put mpirun's options before '--'; {MPIRUN_USAGE}",
            a.command[0].to_string_lossy()
        ));
    }
    Ok(a)
}

/// What each rank runs: `<helper> --rank KEY IMAGE -- COMMAND...`.
pub fn rank_argv(helper: &Path, key: &str, image: &str, command: &[OsString]) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec![
        helper.into(),
        "--rank".into(),
        key.into(),
        image.into(),
        "--".into(),
    ];
    argv.extend(command.iter().cloned());
    argv
}

/// The arguments after `--rank`: `KEY IMAGE -- COMMAND...`.
pub fn parse_rank_args(
    args: &[OsString],
) -> std::result::Result<(String, String, Vec<OsString>), String> {
    match args {
        [key, image, sep, command @ ..] if sep == "--" && !command.is_empty() => {
            match (key.to_str(), image.to_str()) {
                (Some(key), Some(image)) => Ok((key.into(), image.into(), command.to_vec())),
                _ => Err("--rank: the key and image must be UTF-8".into()),
            }
        }
        _ => Err(
            "--rank takes KEY IMAGE -- COMMAND (it is what berth-lava-mpirun gives mpirun)".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    fn strings(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn parm_file_values_are_read_as_bsub_writes_them() {
        // -a as it is; other strings with only '"' escaped; flags and numbers bare.
        let parm = parse_parm_file(
            "LSB_SUB_QUEUE=\"normal\"\nLSB_SUB_ADDITIONAL=\"berth(/img/a\\b c.sqsh) x(\"y\")\"\n\n# c\nLSB_SUB_JOB_NAME=\"say \\\"hi\\\" a\\b\"\nLSB_SUB_MODIFY=Y\nLSB_SUB_NUM_PROCESSORS=4\nnoequals\n",
        );
        assert_eq!(
            parm.iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect::<Env>(),
            env(&[
                ("LSB_SUB_QUEUE", "normal"),
                ("LSB_SUB_ADDITIONAL", "berth(/img/a\\b c.sqsh) x(\"y\")"),
                ("LSB_SUB_JOB_NAME", "say \"hi\" a\\b"),
                ("LSB_SUB_MODIFY", "Y"),
                ("LSB_SUB_NUM_PROCESSORS", "4"),
            ])
        );
    }

    #[test]
    fn berth_in_additional_strings() {
        let ok = |s: &str| image_from_additional(s).unwrap();
        assert_eq!(ok(""), None);
        assert_eq!(ok("docker(ubuntu)"), None);
        assert_eq!(ok("myberth(x)"), None);
        assert_eq!(ok("berth(/i.sqsh)").as_deref(), Some("/i.sqsh"));
        assert_eq!(
            ok(" other(x) berth( /a b.sqsh ) ").as_deref(),
            Some("/a b.sqsh")
        );
        assert_eq!(ok("x,berth(rel.sqsh)").as_deref(), Some("rel.sqsh"));
        for (bad, why) in [
            ("berth()", "names no image"),
            ("berth", "needs an image"),
            ("x berth y", "needs an image"),
            ("berth(/a.sqsh", "no closing"),
            ("berth(/a) berth(/b)", "more than once"),
        ] {
            let err = image_from_additional(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn env_file_lines() {
        assert_eq!(
            env_file_line("BERTH_IMAGE", "/a b/i.sqsh").unwrap(),
            "BERTH_IMAGE=\"/a b/i.sqsh\"\n"
        );
        for good in ["/a'b", "/a$b`", "/a\\b", "/a b"] {
            assert!(env_file_line("BERTH_IMAGE", good).is_ok(), "{good:?}");
        }
        for bad in [
            "/a\"b", "/a#b", "/a\nb", "/a\tb", "/a  b", " /a", "/a\\", "/a\\ b",
        ] {
            assert!(env_file_line("BERTH_IMAGE", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts_from_mcpu_hosts_or_hosts() {
        let h = |pairs: &[(&str, u32)]| {
            pairs
                .iter()
                .map(|(h, n)| (h.to_string(), *n))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            job_hosts(&env(&[
                ("LSB_MCPU_HOSTS", "n1 2 n2 2"),
                ("LSB_HOSTS", "ignored")
            ]))
            .unwrap(),
            h(&[("n1", 2), ("n2", 2)])
        );
        assert_eq!(
            job_hosts(&env(&[("LSB_HOSTS", "n1 n1 n2 n1")])).unwrap(),
            h(&[("n1", 3), ("n2", 1)])
        );
        for bad in ["n1", "n1 2 n2", "n1 zero", "n1 0"] {
            assert!(
                job_hosts(&env(&[("LSB_MCPU_HOSTS", bad)])).is_err(),
                "{bad}"
            );
        }
        assert!(job_hosts(&env(&[])).unwrap_err().contains("LSB_MCPU_HOSTS"));
        assert_eq!(
            machinefile(&h(&[("n1", 2), ("n2", 1)])),
            "n1 slots=2\nn2 slots=1\n"
        );
    }

    #[test]
    fn blaunch_is_the_launch_agent_when_on_path() {
        let dir = std::env::temp_dir().join(format!("berth-blaunch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let blaunch = dir.join("blaunch");
        std::fs::write(&blaunch, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let path = format!("/nonexistent:{}", dir.display());
        std::fs::set_permissions(&blaunch, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            launch_agent(&env(&[("PATH", &path)]), &[]),
            None,
            "not executable"
        );
        std::fs::set_permissions(&blaunch, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            launch_agent(&env(&[("PATH", &path)]), &[]),
            Some(blaunch.clone())
        );
        let own = env(&[("PATH", &path), ("OMPI_MCA_plm_rsh_agent", "ssh")]);
        assert_eq!(launch_agent(&own, &[]), None);
        let opts = strings(&["--mca", "plm_rsh_agent", "rsh"]);
        assert_eq!(launch_agent(&env(&[("PATH", &path)]), &opts), None);
        assert_eq!(launch_agent(&env(&[("PATH", "/nonexistent")]), &[]), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn join_keys_by_job_index_and_host() {
        assert_eq!(
            job_key(&env(&[("LSB_JOBID", "42"), ("LSB_JOBINDEX", "0")])).unwrap(),
            "lava-42"
        );
        assert_eq!(
            job_key(&env(&[("LSB_JOBID", "42"), ("LSB_JOBINDEX", "3")])).unwrap(),
            "lava-42.3"
        );
        assert!(job_key(&env(&[])).is_err());
        let key = host_key("lava-42", "node 1/x");
        assert_eq!(key, "lava-42-node_1_x");
        assert!(berth_launcher::check_join_key(&key).is_ok());
    }

    #[test]
    fn scheduler_variables_and_directories() {
        let e = env(&[
            ("LSB_JOBID", "1"),
            ("LS_SUBCWD", "work/a"),
            ("HOME", "/home/u"),
            ("LSF_ENVDIR", "/etc/lsf"),
            ("BERTH_STATE_DIR", "/s"),
            ("LSB_JOBFILENAME", "/home/u/.lsbatch/1700.1"),
        ]);
        let names: Vec<OsString> = scheduler_env(&e).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            strings(&["LSB_JOBID", "LS_SUBCWD", "LSB_JOBFILENAME"])
        );
        assert_eq!(
            forwarded_names(&e),
            strings(&[
                "LSB_JOBID",
                "LS_SUBCWD",
                "BERTH_STATE_DIR",
                "LSB_JOBFILENAME"
            ])
        );
        assert_eq!(submit_cwd(&e), Some(PathBuf::from("/home/u/work/a")));
        assert_eq!(
            submit_cwd(&env(&[("LS_SUBCWD", "/data")])),
            Some(PathBuf::from("/data"))
        );
        assert_eq!(job_file_dir(&e), Some(PathBuf::from("/home/u/.lsbatch")));
        assert!(is_mpirun_helper(OsStr::new(
            "/opt/berth/bin/berth-lava-mpirun"
        )));
        assert!(!is_mpirun_helper(OsStr::new("mpirun")));
    }

    #[test]
    fn options_carry_the_scheduler_and_show_the_job_directory() {
        let e = env(&[("LSB_JOBID", "7"), ("PATH", "/bin")]);
        let opts = |key: Option<&str>, dir: Option<&str>| {
            run_options(
                "/i.sqsh",
                strings(&["x"]),
                &e,
                Path::new("/"),
                key,
                dir.map(Path::new),
            )
        };
        let o = opts(None, None).unwrap();
        assert_eq!(o.join, Join::No);
        assert_eq!(o.env, env(&[("LSB_JOBID", "7")]));
        assert!(o.mount_home && !o.entrypoint && o.mounts.is_empty());
        assert!(o.scheduler_paths.is_empty());
        assert_eq!(opts(Some("k"), None).unwrap().join, Join::Key("k".into()));
        let o = opts(None, Some("/var/tmp/")).unwrap();
        assert_eq!(o.scheduler_paths, vec![PathBuf::from("/var/tmp")]);
        assert!(o.mounts.is_empty(), "not a user mount");
        let err = opts(None, Some("/nonexistent/.lsbatch"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("LSB_JOBFILENAME"), "{err}");
        let err = opts(None, Some("/proc/self")).unwrap_err().to_string();
        assert!(err.contains("reserved"), "{err}");
    }

    #[test]
    fn mpirun_command_lines() {
        let p = |w: &[&str]| parse_mpirun_args(&strings(w));
        assert_eq!(
            p(&["./app", "-n", "1"]).unwrap(),
            MpirunArgs {
                image: None,
                mpirun: "mpirun".into(),
                mpirun_options: vec![],
                command: strings(&["./app", "-n", "1"])
            }
        );
        let a = p(&[
            "--image",
            "/i.sqsh",
            "--mpirun=/opt/mpi/bin/mpirun",
            "--mca",
            "btl",
            "tcp,self",
            "--",
            "app",
            "--",
            "x",
        ])
        .unwrap();
        assert_eq!(a.image.as_deref(), Some("/i.sqsh"));
        assert_eq!(a.mpirun, "/opt/mpi/bin/mpirun");
        assert_eq!(a.mpirun_options, strings(&["--mca", "btl", "tcp,self"]));
        assert_eq!(a.command, strings(&["app", "--", "x"]));
        assert_eq!(
            p(&["app", "--", "x"]).unwrap().command,
            strings(&["app", "--", "x"])
        );
        assert_eq!(p(&["--", "app"]).unwrap().command, strings(&["app"]));
        assert!(p(&[]).is_err());
        assert!(p(&["--image"]).is_err());
        assert!(p(&["--mca", "btl", "tcp"]).is_err());
        let argv = rank_argv(Path::new("/b/h"), "lava-1", "/i", &strings(&["app", "1"]));
        assert_eq!(
            parse_rank_args(&argv[2..]).unwrap(),
            ("lava-1".into(), "/i".into(), strings(&["app", "1"]))
        );
        assert!(parse_rank_args(&strings(&["k", "/i", "app"])).is_err());
    }
}
