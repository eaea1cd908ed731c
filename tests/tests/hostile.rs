//! Hostile images: an image from a stranger cannot make berth write or create anything on the
//! host (the user's home and /tmp are byte-identical before and after), cannot make it hang
//! (every run ends within a bound), and gets either a working container with its own content
//! or one line `berth: ...` with exit 125. With `--join`, a failed build leaves no keeper and
//! the next joined run works.

use berth_tests::hostile::*;
use berth_tests::*;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// The tests share the test user's real home as a decoy: one at a time.
static HOME: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Exit 0 and the command's output.
    Works,
    /// Exit 125 with one line `berth: ...` containing this.
    Refused(&'static str),
    /// Either of those: what matters is that nothing on the host changed.
    Either,
}

/// Where the twists point.
struct Ctx {
    home: String,
    tmp: String,
    /// Top-level directory of the host working directory used by the cwd cases.
    cwd_top: String,
}

/// What makes an image hostile: a change to its minimal root.
type Twist = Box<dyn Fn(&Path, &Ctx)>;

struct Case {
    name: String,
    twist: Twist,
    expect: Expect,
    /// The outcome with `--remap-root` when it differs (berth writes no passwd/group then).
    remap_root: Option<Expect>,
    /// Also run with --join, --no-home and --remap-root.
    key: bool,
    /// Also run with --dry-run (it reads the image config).
    dry_run: bool,
    /// Extra options (user mounts).
    args: Vec<String>,
    /// Run in this host directory instead of the sandbox's work directory.
    cwd: Option<PathBuf>,
}

fn case(name: &str, expect: Expect, twist: impl Fn(&Path, &Ctx) + 'static) -> Case {
    Case {
        name: name.to_string(),
        twist: Box::new(twist),
        expect,
        remap_root: None,
        key: false,
        dry_run: false,
        args: Vec::new(),
        cwd: None,
    }
}

impl Case {
    fn key(mut self) -> Case {
        self.key = true;
        self
    }
    fn dry_run(mut self) -> Case {
        self.dry_run = true;
        self
    }
    fn remap_root(mut self, e: Expect) -> Case {
        self.remap_root = Some(e);
        self
    }
    fn args(mut self, a: &[String]) -> Case {
        self.args = a.to_vec();
        self
    }
    fn cwd(mut self, d: &Path) -> Case {
        self.cwd = Some(d.to_path_buf());
        self
    }
}

const COMMAND: &[&str] = &["/bin/sh", "-c", "echo hostile-ran $HOSTILE_IMAGE"];

/// What is wrong with a run, if anything.
fn judge(r: &Run, killed: bool, expect: Expect, dry: bool) -> Option<String> {
    if killed {
        return Some(format!("did not end within {} s (killed)", BOUND.as_secs()));
    }
    let worked = r.code == Some(0) && (dry || r.stdout.contains("hostile-ran"));
    // Extract mode's first run says that it unpacks: a notice, not part of the error.
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| !l.starts_with("berth: unpacking "))
        .collect();
    let refused = |says: &str| {
        r.code == Some(125)
            && lines.len() == 1
            && lines[0].starts_with("berth: ")
            && lines[0].contains(says)
    };
    let ok = match expect {
        Expect::Works => worked,
        Expect::Refused(says) => refused(says),
        Expect::Either => worked || refused(""),
    };
    (!ok).then(|| format!("expected {expect:?}"))
}

fn run_cases(name: &str, cases: Vec<Case>) {
    let _one = HOME.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new(&format!("hostile-{name}"));
    let mut decoys = Decoys::set_up();
    let ctx = Ctx {
        home: decoys.home.display().to_string(),
        tmp: decoys.tmp.display().to_string(),
        cwd_top: format!("berth-hostile-cwd-{}", std::process::id()),
    };
    // A plain image for the run after each --join case.
    let plain = sb.root.join("plain.sqsh");
    minimal_root(&sb.root.join("tree"));
    squash(&sb.root.join("tree"), &plain);

    let mut failures = Vec::new();
    let mut passed = Vec::new();
    for c in &cases {
        let tree = sb.root.join("tree");
        minimal_root(&tree);
        (c.twist)(&tree, &ctx);
        let image = sb.root.join(format!("{}.sqsh", c.name));
        squash(&tree, &image);
        let img = image.to_str().unwrap();

        let join_key = format!("hostile-{}", c.name);
        let mut variants: Vec<(&str, Vec<&str>)> = vec![
            ("mount", vec!["--mode", "mount"]),
            ("extract", vec!["--mode", "extract"]),
        ];
        if c.key {
            variants.push(("join", vec!["--join", &join_key]));
            variants.push(("no-home", vec!["--no-home"]));
            variants.push(("remap-root", vec!["--remap-root"]));
        }
        if c.dry_run {
            variants.push(("dry-run", vec!["--dry-run"]));
        }
        for (variant, flags) in variants {
            let mut argv = vec!["run"];
            argv.extend(&flags);
            argv.extend(c.args.iter().map(String::as_str));
            argv.push(img);
            argv.push("--");
            argv.extend(COMMAND);
            let mut cmd = sb.berth(&argv);
            if let Some(dir) = &c.cwd {
                cmd.current_dir(dir);
            }
            let (r, killed) = run_bounded(cmd, &sb.root, BOUND);
            let expect = match (variant, c.remap_root) {
                ("remap-root", Some(e)) => e,
                _ => c.expect,
            };
            let mut problems: Vec<String> = judge(&r, killed, expect, variant == "dry-run")
                .into_iter()
                .collect();
            let left_over = !eventually(Duration::from_secs(10), || sb.processes().is_empty());
            if left_over {
                let procs = sb.processes();
                problems.push(format!("left processes {procs:?}"));
                // Ours to end, by pid: they would spoil the next case.
                for (pid, _) in procs {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let changed = decoys.changes();
            if !changed.is_empty() {
                problems.push(format!("changed the host: {}", changed.join("; ")));
            }
            if variant == "join" {
                let next = run(sb.berth(&[
                    "run",
                    "--join",
                    "hostile-next",
                    plain.to_str().unwrap(),
                    "--",
                    "/bin/sh",
                    "-c",
                    "echo hostile-ran",
                ]));
                if !next.ok() {
                    problems.push(format!(
                        "the next --join run failed: exit {:?}: {}",
                        next.code,
                        next.stderr.trim()
                    ));
                }
            }
            let what = format!("{} [{variant}]", c.name);
            if problems.is_empty() {
                // How it passed: the reader of the output sees which cases are refused.
                let how = match r.code {
                    Some(0) => "ran".to_string(),
                    _ => r.stderr.lines().last().unwrap_or_default().to_string(),
                };
                passed.push(format!("{what}: {how}"));
            } else {
                failures.push(format!(
                    "{what}: {}\n    exit {:?} signal {:?}, stderr: {}",
                    problems.join("; "),
                    r.code,
                    r.signal,
                    r.stderr.trim().replace('\n', "\n      | ")
                ));
            }
        }
    }
    println!("passed:\n  {}", passed.join("\n  "));
    assert!(
        failures.is_empty(),
        "{} of {} runs failed:\n{}",
        failures.len(),
        failures.len() + passed.len(),
        failures.join("\n")
    );
}

#[test]
fn symlinked_etc() {
    run_cases(
        "etc",
        vec![
            case("etc-to-tmp", Expect::Either, |t, _| link(t, "etc", "/tmp")).key(),
            case("etc-to-tmp-rel", Expect::Either, |t, _| {
                link(t, "etc", "../../tmp")
            }),
            case("etc-to-tmp-decoy", Expect::Either, |t, c| {
                link(t, "etc", &c.tmp)
            }),
            case("etc-to-home", Expect::Either, |t, c| {
                link(t, "etc", &c.home)
            })
            .key(),
            case("etc-to-home-rel", Expect::Either, |t, c| {
                link(t, "etc", &c.home[1..])
            }),
        ],
    );
}

#[test]
fn etc_files_through_links() {
    let mut cases = Vec::new();
    for file in ["passwd", "group", "hosts", "resolv.conf"] {
        let rel = format!("etc/{file}");
        let (r1, r2, r3) = (rel.clone(), rel.clone(), rel.clone());
        let key = file == "passwd";
        let c = case(&format!("{file}-to-home"), Expect::Either, move |t, c| {
            link(t, &r1, &format!("{}/results.dat", c.home))
        });
        cases.push(if key { c.key() } else { c });
        cases.push(case(
            &format!("{file}-to-home-rel"),
            Expect::Either,
            move |t, c| link(t, &r2, &format!("..{}/results.dat", c.home)),
        ));
        let name = file.to_string();
        let c = case(&format!("{file}-to-tmp"), Expect::Either, move |t, c| {
            link(t, &r3, &format!("{}/{name}", c.tmp))
        });
        cases.push(if key { c.key() } else { c });
    }
    run_cases("etc-files", cases);
}

#[test]
fn links_to_dev_zero() {
    run_cases(
        "dev-zero",
        vec![
            case("passwd-to-dev-zero", Expect::Refused(""), |t, _| {
                link(t, "etc/passwd", "/dev/zero")
            })
            .remap_root(Expect::Works)
            .key(),
            case("passwd-to-dev-zero-rel", Expect::Refused(""), |t, _| {
                link(t, "etc/passwd", "../dev/zero")
            }),
            case("group-to-dev-zero", Expect::Refused(""), |t, _| {
                link(t, "etc/group", "/dev/zero")
            }),
            case(
                "image-json-to-dev-zero",
                Expect::Refused("character device"),
                |t, _| link(t, ".berth/image.json", "/dev/zero"),
            )
            .key(),
            case(
                "image-json-to-dev-zero-rel",
                Expect::Refused("character device"),
                |t, _| link(t, ".berth/image.json", "../dev/zero"),
            ),
        ],
    );
}

#[test]
fn fifos_where_berth_reads() {
    run_cases(
        "fifo",
        vec![
            case("passwd-fifo", Expect::Refused("FIFO"), |t, _| {
                fifo(t, "etc/passwd")
            })
            .remap_root(Expect::Works)
            .key(),
            case("group-fifo", Expect::Refused("FIFO"), |t, _| {
                fifo(t, "etc/group")
            })
            .remap_root(Expect::Works)
            .key(),
            case(
                "image-json-fifo",
                Expect::Refused("`/.berth/image.json` in the image is a FIFO"),
                |t, _| fifo(t, ".berth/image.json"),
            )
            .key()
            .dry_run(),
        ],
    );
}

#[test]
fn system_dirs_through_links() {
    run_cases(
        "dirs",
        vec![
            case("tmp-elsewhere", Expect::Either, |t, _| {
                std::fs::create_dir_all(t.join("var/elsewhere")).unwrap();
                link(t, "tmp", "/var/elsewhere")
            })
            .key(),
            case("tmp-to-home-rel", Expect::Either, |t, c| {
                link(t, "tmp", &c.home[1..])
            }),
            case("dev-to-home", Expect::Either, |t, c| {
                link(t, "dev", &c.home)
            })
            .key(),
            case("dev-to-tmp-rel", Expect::Either, |t, _| {
                link(t, "dev", "tmp")
            }),
            case("dev-shm-to-home", Expect::Either, |t, c| {
                link(t, "dev/shm", &c.home)
            }),
            case("home-to-tmp-decoy", Expect::Either, |t, c| {
                link(t, "home", &c.tmp)
            })
            .key(),
            case("home-to-tmp-rel", Expect::Either, |t, _| {
                link(t, "home", "tmp")
            }),
        ],
    );
}

/// A host working directory outside /tmp and the home, removed at the end.
struct HostDir(PathBuf);

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn cwd_path_through_link() {
    let top = HostDir(PathBuf::from(format!(
        "/berth-hostile-cwd-{}",
        std::process::id()
    )));
    let cwd = top.0.join("work");
    std::fs::create_dir_all(&cwd).unwrap();
    std::os::unix::fs::chown(&cwd, Some(user().uid), Some(user().gid)).unwrap();
    run_cases(
        "cwd",
        vec![
            case("cwd-top-to-home", Expect::Either, |t, c| {
                link(t, &c.cwd_top, &c.home)
            })
            .cwd(&cwd)
            .key(),
            case("cwd-top-to-home-rel", Expect::Either, |t, c| {
                link(t, &c.cwd_top, &c.home[1..])
            })
            .cwd(&cwd),
            case("cwd-top-to-tmp-decoy", Expect::Either, |t, c| {
                link(t, &c.cwd_top, &c.tmp)
            })
            .cwd(&cwd),
        ],
    );
}

#[test]
fn mount_targets_through_links() {
    // The sources live in a directory of their own, readable by the test user.
    let src = PathBuf::from(format!("/tmp/berth-hostile-src-{}", std::process::id()));
    let _src = HostDir(src.clone());
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::write(src.join("file.txt"), "mounted\n").unwrap();
    let dir_mount = [
        "-m".to_string(),
        format!("{}:/data", src.join("dir").display()),
    ];
    let deep_mount = [
        "-m".to_string(),
        format!("{}:/data/sub", src.join("dir").display()),
    ];
    let file_mount = [
        "-m".to_string(),
        format!("{}:/data.txt", src.join("file.txt").display()),
    ];
    run_cases(
        "mounts",
        vec![
            case("data-to-home-x", Expect::Either, |t, c| {
                link(t, "data", &format!("{}/x", c.home))
            })
            .args(&dir_mount)
            .key(),
            case("data-to-home-decoy-rel", Expect::Either, |t, c| {
                link(t, "data", &format!("..{}/decoy", c.home))
            })
            .args(&deep_mount),
            case("data-to-tmp-decoy", Expect::Either, |t, c| {
                link(t, "data", &format!("{}/x", c.tmp))
            })
            .args(&dir_mount),
            case("data-file-to-home", Expect::Either, |t, c| {
                link(t, "data.txt", &format!("{}/y.txt", c.home))
            })
            .args(&file_mount)
            .key(),
        ],
    );
}

#[test]
fn berth_dir_through_link() {
    run_cases(
        "dot-berth",
        vec![
            case("dot-berth-to-home", Expect::Works, |t, c| {
                link(t, ".berth", &format!("{}/decoy", c.home))
            })
            .key()
            .dry_run(),
            case("dot-berth-to-tmp-rel", Expect::Works, |t, c| {
                link(t, ".berth", &format!("..{}", c.tmp))
            })
            .dry_run(),
        ],
    );
}

/// The image path itself: a FIFO, a socket or a device is refused at once, with one line, in
/// a run, in --dry-run and in OpenLava's submit check (Slurm's calls the same `run::check`).
#[test]
fn image_path_that_is_not_a_file() {
    let _one = HOME.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new("hostile-image-path");
    let fifo_path = sb.work.join("fifo.sqsh");
    nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    let sock_path = sb.work.join("socket.sqsh");
    let _sock = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let mut failures = Vec::new();
    for (path, says) in [
        (fifo_path.to_str().unwrap(), "is a FIFO"),
        (sock_path.to_str().unwrap(), "is a socket"),
        ("/dev/zero", "is a character device"),
        ("/dev/null", "is a character device"),
    ] {
        for flags in [
            vec!["--mode", "mount"],
            vec!["--mode", "extract"],
            vec!["--dry-run"],
        ] {
            let mut argv = vec!["run"];
            argv.extend(&flags);
            argv.extend([path, "--", "true"]);
            let (r, killed) = run_bounded(sb.berth(&argv), &sb.root, BOUND);
            if let Some(why) = judge(&r, killed, Expect::Refused(says), false) {
                failures.push(format!(
                    "{path} {flags:?}: {why}: exit {:?}: {}",
                    r.code,
                    r.stderr.trim()
                ));
            }
        }
    }
    // OpenLava's submit check (the esub) says the same and rejects the job.
    let esub = berth_tests::openlava::lava_bin("berth-lava-esub");
    // A site whose default queue has the starter, so the esub goes on to look at the image.
    let config = sb.root.join("openlava.toml");
    std::fs::write(
        &config,
        "starter_queues = [\"normal\"]\ndefault_queue = \"normal\"\n",
    )
    .unwrap();
    let mut cmd = sb.as_user(&[esub.to_string_lossy().into_owned()]);
    cmd.env("BERTH_IMAGE", &fifo_path)
        .env("BERTH_LAVA_CONFIG", &config)
        .env("LSB_SUB_ABORT_VALUE", "97");
    let (r, killed) = run_bounded(cmd, &sb.root, BOUND);
    if killed
        || r.code != Some(97)
        || r.stderr.lines().count() != 1
        || !r.stderr.contains("is a FIFO")
    {
        failures.push(format!(
            "esub with BERTH_IMAGE={}: killed {killed}, exit {:?}: {}",
            fifo_path.display(),
            r.code,
            r.stderr.trim()
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
