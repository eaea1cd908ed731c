//! The process started in the container: argv, environment and working directory, from
//! the options, the image config, the site's environment rules and the host environment.

use super::{Plan, Process};
use crate::error::{usage, Result};
use crate::image_config::ImageConfig;
use crate::options::RunOptions;
use crate::policy;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

impl Plan {
    /// Resolve argv, environment and working directory from the options, the image config and
    /// the host environment. Precedence for variables: host < image `Env` < `--env`.
    pub fn process(
        &self,
        opts: &RunOptions,
        config: &ImageConfig,
        host_env: &[(OsString, OsString)],
        cwd: &Path,
        lib_dirs: &[&str],
    ) -> Result<Process> {
        let c = &config.config;
        let mut argv: Vec<OsString> = match (&c.entrypoint, opts.entrypoint) {
            (Some(ep), true) if !ep.is_empty() => ep.iter().map(OsString::from).collect(),
            _ => Vec::new(),
        };
        if !opts.argv.is_empty() {
            argv.extend(opts.argv.iter().cloned());
        } else if let Some(cmd) = &c.cmd {
            argv.extend(cmd.iter().map(OsString::from));
        }
        if argv.is_empty() {
            return usage(
                "no command given and the image has no default command (give one after the image)",
            );
        }
        let mut env = self.environment(&opts.env, &c.env, host_env);
        let workdir = match (&opts.workdir, self.cwd_visible, &c.working_dir) {
            (Some(w), _, _) if !w.is_absolute() => {
                return usage(format!("--workdir {} is not an absolute path", w.display()))
            }
            (Some(w), _, _) => w.clone(),
            (None, true, _) => cwd.to_path_buf(),
            (None, false, Some(w)) if !w.is_empty() => PathBuf::from(w),
            _ => PathBuf::from("/"),
        };
        set_var(&mut env, "PWD", &workdir);
        // Tells a program (and berth's own Slurm plugin in an srun started here) that it runs
        // in a berth container, and of which image.
        set_var(&mut env, "BERTH_CONTAINER", &self.image.path);
        if !lib_dirs.is_empty() {
            let joined = join_paths(
                lib_dirs.join(":").as_ref(),
                get_var(&env, "LD_LIBRARY_PATH"),
            );
            set_var(&mut env, "LD_LIBRARY_PATH", &joined);
        }
        let (uid, gid) = self.inner_ids();
        if self.remap_root {
            for (k, v) in [("HOME", "/root"), ("USER", "root"), ("LOGNAME", "root")] {
                set_var(&mut env, k, v);
            }
        }
        Ok(Process {
            argv,
            env,
            workdir,
            uid,
            gid,
        })
    }

    /// The variables before berth's own: host variables (filtered by the site's passthrough
    /// patterns), then the image's `Env`, then the site's rules, then the user's `--env`.
    fn environment(
        &self,
        user_env: &[(OsString, OsString)],
        image_env: &[String],
        host_env: &[(OsString, OsString)],
    ) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = match &self.env_rules.passthrough {
            Some(patterns) => host_env
                .iter()
                .filter(|(k, _)| {
                    patterns
                        .iter()
                        .any(|p| policy::name_matches(p, &k.to_string_lossy()))
                })
                .cloned()
                .collect(),
            None => host_env.to_vec(),
        };
        for kv in image_env {
            if let Some((k, v)) = kv.split_once('=') {
                set_var(&mut env, k, v);
            }
        }
        let rules = &self.env_rules;
        for (k, v) in &rules.set {
            set_var(&mut env, k, v);
        }
        for (k, v) in &rules.prepend {
            let joined = join_paths(v.as_ref(), get_var(&env, k));
            set_var(&mut env, k, &joined);
        }
        for (k, v) in &rules.append {
            let joined = join_paths(get_var(&env, k).unwrap_or_default(), Some(v.as_ref()));
            set_var(&mut env, k, &joined);
        }
        env.retain(|(k, _)| !rules.unset.iter().any(|u| k == u.as_str()));
        for (k, v) in user_env {
            set_var(&mut env, k, v);
        }
        env
    }
}

pub(super) fn get_var<'a>(env: &'a [(OsString, OsString)], k: &str) -> Option<&'a OsStr> {
    env.iter()
        .find(|(ek, _)| ek == k)
        .map(|(_, v)| v.as_os_str())
}

fn set_var(env: &mut Vec<(OsString, OsString)>, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) {
    let k = k.as_ref();
    env.retain(|(ek, _)| ek != k);
    env.push((k.to_os_string(), v.as_ref().to_os_string()));
}

/// `first:second`, or just `first` when there is no second.
fn join_paths(first: &OsStr, second: Option<&OsStr>) -> OsString {
    match second.filter(|s| !s.is_empty()) {
        Some(s) if !first.is_empty() => {
            let mut joined = first.to_os_string();
            joined.push(":");
            joined.push(s);
            joined
        }
        Some(s) => s.to_os_string(),
        None => first.to_os_string(),
    }
}
