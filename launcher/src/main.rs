//! The `berth` command line.

use berth_launcher::{
    check_join_key, parse_env, Error, Join, Mode, MountSpec, Namespaces, Policy, RunOptions, Site,
};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

// The command gets the signal state berth was started with (see berth_launcher::SignalState).
berth_launcher::record_signals_at_start!();

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    long_version = berth_launcher::long_version!(),
    about = "Run HPC jobs in squashfs container images, without setuid"
)]
struct Cli {
    /// Say what berth does on stderr: -v each phase and decision, -vv each mount too
    /// (or BERTH_LOG=DIRECTIVE, e.g. debug)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a command inside an image as yourself
    Run(Box<RunArgs>),
    /// See and evict the node-local extract cache
    Cache {
        #[command(subcommand)]
        action: CacheCmd,
    },
    /// Check the site policy and print the effective one
    Policy {
        #[command(subcommand)]
        action: PolicyCmd,
    },
    /// Check that berth can run here (user namespaces, FUSE, kernel features, state directory,
    /// policy, Slurm plugin, host MPI): a table of ✓/✗ with the fix for each ✗
    Doctor {
        /// Print the checks as JSON
        #[arg(long)]
        json: bool,
    },
    /// Print berth's completion script for SHELL on stdout (e.g. into
    /// /usr/share/bash-completion/completions/berth)
    Completions {
        shell: berth_launcher::cli_docs::Shell,
    },
    /// Write berth's man pages (berth.1 and one per subcommand) into DIR
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate the policy (FILE and its conf.d, or the installed one) and print the result
    Check { file: Option<PathBuf> },
}

#[derive(Subcommand)]
enum CacheCmd {
    /// List cached images: key, size, in use, source
    List,
    /// Remove cached images no container is using (all, or the keys given), and what killed
    /// runs left that no live process holds (partial unpacks, unused locks, dead join sockets)
    Clean { keys: Vec<String> },
}

#[derive(Args)]
struct RunArgs {
    /// mount: FUSE-mount the squashfs; extract: unpack once per node into the cache
    /// (default: the site policy's, else mount)
    #[arg(long, env = "BERTH_MODE")]
    mode: Option<String>,
    /// Bind SRC at DST (default: same path); OPTS: ro, rw, bind, rbind (repeatable)
    #[arg(short = 'm', long = "mount", value_name = "SRC[:DST[:OPTS]]")]
    mounts: Vec<OsString>,
    /// Working directory inside (default: the current directory when visible inside)
    #[arg(short = 'w', long)]
    workdir: Option<PathBuf>,
    /// Set a variable inside (repeatable); wins over the host and the image
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    env: Vec<OsString>,
    /// Allow writes to the image's files (kept in memory, discarded at exit)
    #[arg(long)]
    writable: bool,
    /// Run the image's entrypoint before the command (the default)
    #[arg(long, overrides_with = "no_entrypoint")]
    entrypoint: bool,
    /// Ignore the image's entrypoint
    #[arg(long)]
    no_entrypoint: bool,
    /// Be uid 0 inside (still your own uid outside)
    #[arg(long)]
    remap_root: bool,
    /// Do not bind your home directory
    #[arg(long)]
    no_home: bool,
    /// Share one container with other `berth run`s using this key on this node
    #[arg(long, value_name = "KEY", env = "BERTH_JOIN")]
    join: Option<String>,
    /// Never join: a container of its own even under mpirun or srun
    #[arg(long, conflicts_with = "join")]
    no_join: bool,
    /// Keep the container, its FUSE mount warm, for SECONDS after its last process, so later
    /// runs of the same image and mounts on this node start in it (never for --writable)
    #[arg(long, value_name = "SECONDS", env = "BERTH_LINGER")]
    linger: Option<u64>,
    /// Mount mode: keep this node's mount of the image for SECONDS after the last run started
    /// on it, so later runs find it warm (0: a mount of this run's own)
    #[arg(long, value_name = "SECONDS", env = "BERTH_IMAGE_IDLE")]
    image_idle: Option<u64>,
    /// Do not inject the host's MPI even if the site policy does: use the image's own
    #[arg(long)]
    no_mpi: bool,
    /// Keep the container's changes on disk under NAME (in the state directory): a later run
    /// with the same NAME starts with them (implies --writable; `berth cache` does not touch it)
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// New namespaces of these kinds for the container: net (only loopback, up), ipc, uts
    /// (the host's hostname to start with); a comma list, repeatable
    #[arg(long, value_name = "net,ipc,uts", env = "BERTH_UNSHARE")]
    unshare: Vec<String>,
    /// Print the plan (mounts, identity, environment, command) and do nothing
    #[arg(long)]
    dry_run: bool,
    /// A squashfs file, a rootfs directory, or docker://REGISTRY/REPO[:TAG|@DIGEST] (imported
    /// into the image store by berth-image first)
    image: PathBuf,
    /// The command and its arguments (default: the image's Cmd)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

fn options(a: RunArgs) -> Result<(RunOptions, bool), Error> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let mode: Option<Mode> = a
        .mode
        .map(|m| m.parse())
        .transpose()
        .map_err(Error::Usage)?;
    let mounts = a
        .mounts
        .iter()
        .map(|m| MountSpec::parse(m, &cwd))
        .collect::<Result<Vec<_>, _>>()?;
    let env = a.env.iter().map(parse_env).collect::<Result<Vec<_>, _>>()?;
    let join = match (a.no_join, a.join) {
        (true, _) => Join::No,
        (false, Some(key)) if key.is_empty() => Join::Auto,
        (false, Some(key)) => {
            check_join_key(&key)?;
            Join::Key(key)
        }
        (false, None) => Join::Auto,
    };
    let mut unshare = Namespaces::default();
    for list in &a.unshare {
        unshare.add(list)?;
    }
    let mut argv = a.command;
    if argv.first().is_some_and(|a| a == "--") {
        argv.remove(0);
    }
    Ok((
        RunOptions {
            mode,
            mounts,
            workdir: a.workdir,
            env,
            writable: a.writable || a.name.is_some(),
            entrypoint: !a.no_entrypoint,
            remap_root: a.remap_root,
            mount_home: !a.no_home,
            join,
            linger_secs: a.linger,
            image_idle_secs: a.image_idle,
            mpi: !a.no_mpi,
            persist: a.name,
            unshare,
            ..RunOptions::new(registry_image(a.image)?, argv)
        },
        a.dry_run,
    ))
}

/// `docker://...`: imported into the image store by berth-image (installed beside berth, else
/// on PATH; nothing is fetched when the store has the image), then run from there, or from
/// this node's copy of it when the policy stages images (`[images] stage = "node-local"`).
fn registry_image(image: PathBuf) -> Result<PathBuf, Error> {
    let Some(reference) = image.to_str().filter(|t| t.starts_with("docker://")) else {
        return Ok(image);
    };
    let program = std::env::current_exe()
        .ok()
        .map(|e| e.with_file_name("berth-image"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "berth-image".into());
    let mut cmd = std::process::Command::new(&program);
    cmd.args(["import", "--json", "--store"]);
    let site = berth_launcher::Site::default();
    let policy = site.policy().ok();
    if let Some(policy) = &policy {
        if let Some(dir) = &policy.image_store {
            let user = std::env::var("USER").unwrap_or_default();
            cmd.arg("--store-dir").arg(dir.replace("${USER}", &user));
        }
        if let Some(dir) = &policy.site_store {
            cmd.arg("--site-store").arg(dir);
        }
    }
    let out = cmd
        .arg(reference)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            Error::Image(format!(
                "cannot run {} to import {reference}: {e}",
                program.display()
            ))
        })?;
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    match summary.get("output").and_then(|o| o.as_str()) {
        Some(path) if out.status.success() => match policy.filter(|p| p.stage_images) {
            Some(policy) => {
                let uid = nix::unistd::getuid().as_raw();
                let state = site.state_dir(&policy, uid);
                let dir = berth_launcher::private_state_subdir(&state, "staged", uid)?;
                berth_launcher::stage_image(std::path::Path::new(path), &dir)
            }
            None => Ok(PathBuf::from(path)),
        },
        _ => {
            let err = String::from_utf8_lossy(&out.stderr);
            let why = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("failed")
                .trim_start_matches("berth-image: ");
            Err(Error::Image(format!("cannot import {reference}: {why}")))
        }
    }
}

fn fail(e: Error) -> ! {
    eprintln!("berth: {}", berth_launcher::one_line(&e));
    std::process::exit(e.exit_code());
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // One line, not clap's page: what is wrong and where to look.
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("bad command line")
                .trim_start_matches("error: ");
            eprintln!(
                "berth: {} (see 'berth --help')",
                berth_launcher::one_line(first)
            );
            std::process::exit(125);
        }
    };
    berth_launcher::init_logging(cli.verbose);
    match cli.command {
        Cmd::Doctor { json } => std::process::exit(berth_launcher::doctor(json)),
        Cmd::Completions { shell } => {
            berth_launcher::cli_docs::print_completions(Cli::command(), shell).unwrap_or_else(
                |e| {
                    fail(Error::Usage(format!(
                        "cannot write the completion script: {e}"
                    )))
                },
            );
        }
        Cmd::GenerateMan { dir } => {
            berth_launcher::cli_docs::write_man_pages(Cli::command(), &dir).unwrap_or_else(|e| {
                fail(Error::Usage(format!(
                    "cannot write man pages into {}: {e}",
                    dir.display()
                )))
            });
        }
        Cmd::Run(args) => {
            let (opts, dry_run) = options(*args).unwrap_or_else(|e| fail(e));
            if let Err(e) = berth_launcher::run(&opts, dry_run) {
                fail(e);
            }
        }
        Cmd::Policy {
            action: PolicyCmd::Check { file },
        } => {
            let policy = Policy::load(file.as_deref()).unwrap_or_else(|e| fail(e.into()));
            print!("{}", policy.describe());
        }
        Cmd::Cache { action } => {
            let uid = nix::unistd::Uid::current().as_raw();
            let policy = Policy::load(None).unwrap_or_else(|e| fail(e.into()));
            let state = Site::default().state_dir(&policy, uid);
            match action {
                CacheCmd::List => {
                    let entries = berth_launcher::list_cache(&state).unwrap_or_else(|e| fail(e));
                    println!("{:<34} {:>10} {:<6} SOURCE", "KEY", "SIZE", "IN USE");
                    for e in entries {
                        println!(
                            "{:<34} {:>9}M {:<6} {}",
                            e.key,
                            e.bytes / (1 << 20),
                            if e.in_use { "yes" } else { "no" },
                            e.source
                        );
                    }
                }
                CacheCmd::Clean { keys } => {
                    let done =
                        berth_launcher::clean_cache(&state, &keys).unwrap_or_else(|e| fail(e));
                    for k in &done.removed {
                        println!("removed {k}");
                    }
                    for k in &done.kept {
                        println!("kept {k} (in use)");
                    }
                    for what in &done.swept {
                        println!("removed {what}");
                    }
                    let missing: Vec<_> = keys
                        .iter()
                        .filter(|k| !done.removed.contains(k) && !done.kept.contains(k))
                        .collect();
                    if !missing.is_empty() {
                        fail(Error::Usage(format!(
                            "no cached image with key {:?} (see 'berth cache list')",
                            missing
                        )));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag of every subcommand has help text and appears in its man page.
    #[test]
    fn every_flag_is_in_its_man_page() {
        let missing = berth_launcher::cli_docs::undocumented_flags(Cli::command()).unwrap();
        assert!(missing.is_empty(), "undocumented flags: {missing:?}");
    }

    /// `berth --version`: "berth VERSION" first (what scripts parse), then the commit and the
    /// cargo features.
    #[test]
    fn version_names_the_commit_and_features() {
        let text = Cli::command().render_long_version();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], concat!("berth ", env!("CARGO_PKG_VERSION")));
        assert!(
            lines[1].starts_with("commit: ") && lines[1].len() > 8,
            "{text}"
        );
        assert!(lines[2].starts_with("features: "), "{text}");
    }

    #[test]
    fn man_pages_for_berth_and_each_subcommand() {
        let wrong = berth_launcher::cli_docs::man_page_mismatches(
            Cli::command(),
            &[
                "berth.1",
                "berth-run.1",
                "berth-policy-check.1",
                "berth-doctor.1",
            ],
            "generate-man",
        )
        .unwrap();
        assert!(wrong.is_empty(), "{wrong:?}");
    }
}
