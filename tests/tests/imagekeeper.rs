//! Mount mode's image keeper: one FUSE mount of an image per user and node, shared by the runs
//! that start while it is warm, gone after its idle time once the last container has ended.

use berth_tests::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

/// The sandbox's image servers (keepers and per-run servers name themselves berth-imagefs).
fn servers(sb: &Sandbox) -> Vec<i32> {
    sb.processes()
        .into_iter()
        .filter(|(_, c)| c.starts_with("berth-imagefs"))
        .map(|(pid, _)| pid)
        .collect()
}

fn sockets(sb: &Sandbox) -> Vec<String> {
    sb.state_entries()
        .into_iter()
        .filter(|e| e.starts_with("keepers/") && e.ends_with(".sock"))
        .collect()
}

/// berth's FUSE mounts in the mount namespaces of the sandbox's processes, each namespace
/// counted once (the keeper's mount lives in a namespace of its own).
fn fuse_mounts(sb: &Sandbox) -> usize {
    let mut seen = std::collections::BTreeSet::new();
    let mut n = 0;
    for (pid, _) in sb.processes() {
        let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/mnt")) else {
            continue;
        };
        if !seen.insert(ns) {
            continue;
        }
        let m = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap_or_default();
        n += m.lines().filter(|l| l.contains("fuse.berth")).count();
    }
    n
}

#[test]
fn later_runs_share_the_warm_mount_and_it_goes_after_the_idle_time() {
    let sb = Sandbox::new("keeper-share");
    let image = demo_image();
    let img = image.to_str().unwrap();
    let args = [
        "run",
        "--no-join",
        "--image-idle",
        "4",
        img,
        "--",
        "cat",
        "/etc/os-release",
    ];
    run(sb.berth(&args)).expect_ok("first run");
    let first = servers(&sb);
    assert_eq!(
        first.len(),
        1,
        "one keeper after the first run: {:?}",
        sb.processes()
    );
    assert_eq!(sockets(&sb).len(), 1, "{:?}", sb.state_entries());
    run(sb.berth(&args)).expect_ok("second run");
    assert_eq!(servers(&sb), first, "the second run used the same keeper");
    // Idle: the keeper, its mount and its socket go.
    assert!(
        eventually(Duration::from_secs(30), || sb.processes().is_empty()),
        "the keeper stays after its idle time: {:?}",
        sb.processes()
    );
    assert!(sockets(&sb).is_empty(), "{:?}", sb.state_entries());
    assert!(
        !sb.state_entries().iter().any(|e| e.ends_with(".log")),
        "a clean end leaves no log: {:?}",
        sb.state_entries()
    );
}

#[test]
fn concurrent_first_runs_start_one_keeper() {
    let sb = Sandbox::new("keeper-herd");
    let image = demo_image();
    let img = image.to_str().unwrap();
    let runs: Vec<_> = (0..6)
        .map(|_| {
            sb.berth(&[
                "run",
                "--no-join",
                "--image-idle",
                "30",
                img,
                "--",
                "sh",
                "-c",
                "cat /etc/os-release >/dev/null && echo ok",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for child in runs {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    }
    assert_eq!(servers(&sb).len(), 1, "{:?}", sb.processes());
    assert_eq!(sockets(&sb).len(), 1, "{:?}", sb.state_entries());
    assert_eq!(fuse_mounts(&sb), 1, "one FUSE mount (the keeper's)");
    for (pid, _) in sb.processes() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

#[test]
fn a_container_keeps_its_image_after_the_keeper_stops_taking_runs() {
    let sb = Sandbox::new("keeper-straggler");
    let image = demo_image();
    let img = image.to_str().unwrap();
    // The container reads the image only after the keeper's idle time has passed.
    let mut long = sb
        .berth(&[
            "run",
            "--no-join",
            "--image-idle",
            "1",
            img,
            "--",
            "sh",
            "-c",
            "echo in; read x; cat /etc/os-release | head -1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(long.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "in");
    // Past the idle time the keeper has closed its socket; it still serves this container.
    assert!(
        eventually(Duration::from_secs(20), || sockets(&sb).is_empty()),
        "the keeper did not stop taking runs"
    );
    assert_eq!(servers(&sb).len(), 1, "it serves on: {:?}", sb.processes());
    // A new run now gets a keeper of its own.
    run(sb.berth(&["run", "--no-join", "--image-idle", "1", img, "--", "true"]))
        .expect_ok("a run after the idle time");
    drop(long.stdin.take());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(long.wait().unwrap().success());
    assert!(
        rest.starts_with("PRETTY_NAME="),
        "the straggler read its image: {rest:?}"
    );
    assert!(
        eventually(Duration::from_secs(30), || sb.processes().is_empty()),
        "keepers stay after their last container: {:?}",
        sb.processes()
    );
}

#[test]
fn a_replaced_image_gets_a_new_keeper() {
    let sb = Sandbox::new("keeper-replaced");
    let copy = sb.work.join("img.sqsh");
    std::fs::copy(demo_image(), &copy).unwrap();
    let img = copy.to_str().unwrap();
    let args = ["run", "--no-join", "--image-idle", "30", img, "--", "true"];
    run(sb.berth(&args)).expect_ok("first");
    let first = servers(&sb);
    assert_eq!(first.len(), 1);
    // Same path, other file: the old keeper must not serve it.
    let tmp = sb.work.join("img.new");
    std::fs::copy(demo_image(), &tmp).unwrap();
    std::fs::rename(&tmp, &copy).unwrap();
    run(sb.berth(&args)).expect_ok("second");
    let now = servers(&sb);
    assert_eq!(now.len(), 2, "{:?}", sb.processes());
    for (pid, _) in sb.processes() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

#[test]
fn image_idle_zero_mounts_per_run() {
    let sb = Sandbox::new("keeper-off");
    let image = demo_image();
    let img = image.to_str().unwrap();
    run(sb.berth(&["run", "--no-join", "--image-idle", "0", img, "--", "true"]))
        .expect_ok("per-run mount");
    assert!(
        eventually(Duration::from_secs(10), || sb.processes().is_empty()),
        "{:?}",
        sb.processes()
    );
    assert!(sockets(&sb).is_empty());
}

#[test]
fn a_killed_keeper_s_socket_is_swept_by_the_next_keeper() {
    let sb = Sandbox::new("keeper-sweep");
    let image = demo_image();
    let img = image.to_str().unwrap();
    run(sb.berth(&["run", "--no-join", "--image-idle", "30", img, "--", "true"]))
        .expect_ok("first");
    let killed = servers(&sb);
    assert_eq!(killed.len(), 1);
    // As a scheduler ends a step: SIGKILL, so the keeper cannot remove its socket.
    let _ = kill(Pid::from_raw(killed[0]), Signal::SIGKILL);
    assert!(eventually(Duration::from_secs(10), || servers(&sb).is_empty()));
    let dead = sockets(&sb);
    assert_eq!(
        dead.len(),
        1,
        "the killed keeper's socket stays: {:?}",
        sb.state_entries()
    );
    // Another image (a copy: another identity), so another keeper, which sweeps.
    let copy = sb.work.join("copy.sqsh");
    std::fs::copy(&image, &copy).unwrap();
    run(sb.berth(&[
        "run",
        "--no-join",
        "--image-idle",
        "30",
        copy.to_str().unwrap(),
        "--",
        "true",
    ]))
    .expect_ok("second");
    let now = sockets(&sb);
    assert_eq!(now.len(), 1, "{:?}", sb.state_entries());
    assert_ne!(now, dead, "the dead socket was swept");
    let log = dead[0].replace(".sock", ".log");
    assert!(
        !sb.state_entries().contains(&log),
        "its log went too: {:?}",
        sb.state_entries()
    );
    for (pid, _) in sb.processes() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}
