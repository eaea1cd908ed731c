//! Diagnostics: `berth -v`/`-vv`/`BERTH_LOG` on stderr, nothing extra by default, and the join
//! keeper's log file.

use berth_tests::*;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

/// The keeper logs in the state directory's join folder.
fn keeper_logs(sb: &Sandbox) -> Vec<PathBuf> {
    std::fs::read_dir(sb.state.join("join"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect()
}

fn read_log(sb: &Sandbox) -> String {
    keeper_logs(sb)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

/// A first rank that holds the container `key` until its stdin closes.
fn holder(sb: &Sandbox, img: &str, key: &str) -> Child {
    sb.berth(&[
        "run",
        "--join",
        key,
        img,
        "--",
        "sh",
        "-c",
        "read x || true",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

#[test]
fn very_verbose_run_shows_each_mount_with_its_origin_and_the_timings() {
    let sb = Sandbox::new("logs-vv");
    let image = demo_image();
    let img = image.to_str().unwrap();
    let data = format!("{}:/data", sb.work.display());
    for (args, env) in [
        (
            vec!["-vv", "run", "--no-join", "-m", &data, img, "true"],
            None,
        ),
        (
            vec!["run", "--no-join", "-m", &data, img, "true"],
            Some("debug"),
        ),
    ] {
        let mut cmd = sb.berth(&args);
        if let Some(directive) = env {
            cmd.env("BERTH_LOG", directive);
        }
        let out = run(cmd).expect_ok("verbose run");
        let err = &out.stderr;
        let step = |target: &str, origin: &str| {
            err.lines().any(|l| {
                l.contains(&format!("step {target} "))
                    && l.contains(&format!("[{origin}]"))
                    && l.contains(" in ")
            })
        };
        assert!(step("/proc", "default"), "{err}");
        assert!(step("/home/berthtest", "home"), "{err}");
        assert!(step("/data", "--mount"), "{err}");
        for phase in [
            // The sandbox's runs share the node's mount of the image (its image keeper).
            "build: image keeper",
            "build: image attached",
            "build: unshare",
            "build: overlay in",
            "steps in",
            "build: pivot_root in",
            "container ready in",
        ] {
            assert!(err.contains(phase), "no '{phase}' in:\n{err}");
        }
    }
    // -v: the phases, not each mount.
    let out = run(sb.berth(&["-v", "run", "--no-join", img, "true"])).expect_ok("-v run");
    assert!(out.stderr.contains("build: overlay in"), "{}", out.stderr);
    assert!(!out.stderr.contains("step /proc"), "{}", out.stderr);
}

#[test]
fn a_default_run_prints_nothing_extra() {
    let sb = Sandbox::new("logs-quiet");
    let image = demo_image();
    let img = image.to_str().unwrap();
    let out = run(sb.berth(&["run", "--no-join", img, "sh", "-c", "echo own >&2"]))
        .expect_ok("quiet run");
    assert_eq!(out.stderr, "own\n");
    let out = run(sb.berth(&["run", "--join", "quiet", img, "true"])).expect_ok("joined run");
    assert_eq!(out.stderr, "");
}

#[test]
fn a_keeper_logs_the_ranks_joining_and_removes_its_log_at_a_clean_end() {
    let sb = Sandbox::new("logs-keeper");
    let image = demo_image();
    let img = image.to_str().unwrap();
    let mut first = holder(&sb, img, "logged");
    assert!(
        eventually(Duration::from_secs(30), || read_log(&sb).contains("joined")),
        "no keeper log with a joined rank: {:?} {}",
        keeper_logs(&sb),
        read_log(&sb)
    );
    let second = run(sb.berth(&["run", "--join", "logged", img, "true"])).expect_ok("second");
    assert_eq!(second.stderr, "");
    let log = read_log(&sb);
    assert_eq!(keeper_logs(&sb).len(), 1, "{:?}", keeper_logs(&sb));
    assert!(log.contains("keeper: ready"), "{log}");
    assert_eq!(log.matches("joined").count(), 2, "{log}");
    // setpriv execs berth, which registers under its own pid.
    assert!(
        log.contains(&format!("rank {} joined", first.id())),
        "{log}"
    );
    drop(first.stdin.take());
    assert!(first.wait().unwrap().success());
    // A clean end leaves no log behind.
    assert!(
        eventually(Duration::from_secs(10), || keeper_logs(&sb).is_empty()),
        "{:?}",
        keeper_logs(&sb)
    );
}

#[test]
fn a_keeper_whose_image_server_dies_keeps_its_log_until_cache_clean() {
    let sb = Sandbox::new("logs-fuse-dies");
    let image = demo_image();
    let img = image.to_str().unwrap();
    let mut first = holder(&sb, img, "dies");
    assert!(
        eventually(Duration::from_secs(30), || read_log(&sb).contains("joined")),
        "{}",
        read_log(&sb)
    );
    let servers: Vec<i32> = sb
        .processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.starts_with("berth-imagefs"))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(servers.len(), 1, "{:?}", sb.processes());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(servers[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || read_log(&sb)
            .contains("the image server (berth-imagefs) died")),
        "{}",
        read_log(&sb)
    );
    let _ = first.stdin.take().unwrap().write_all(b"\n");
    drop(first.stdin.take());
    let _ = first.wait().unwrap();
    // The keeper has gone (its socket with it); its log stays for the user to read.
    assert!(
        eventually(Duration::from_secs(10), || !sb
            .processes()
            .iter()
            .any(|(_, c)| c.contains("--join dies"))),
        "{:?}",
        sb.processes()
    );
    let logs = keeper_logs(&sb);
    assert_eq!(logs.len(), 1, "{logs:?}");
    let clean = run(sb.berth(&["cache", "clean"])).expect_ok("cache clean");
    assert!(clean.stdout.contains("keeper log"), "{}", clean.stdout);
    assert!(keeper_logs(&sb).is_empty(), "{:?}", keeper_logs(&sb));
}
