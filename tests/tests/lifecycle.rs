//! Exit status and signals pass through; nothing of the container outlives it, also when berth
//! is killed with SIGKILL.

use berth_tests::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn exit_codes_pass_through() {
    let sb = Sandbox::new("exit");
    let image = demo_image();
    for mode in ["mount", "extract"] {
        for code in [0, 1, 42] {
            let r = run(sb.berth_demo(&["--mode", mode], &["sh", "-c", &format!("exit {code}")]));
            assert_eq!(r.code, Some(code), "{mode}: {}", r.stderr);
        }
        // A command killed by a signal: berth *is* the command, so the shell sees 128+signal.
        let r = run(sb.berth_demo(&["--mode", mode], &["sh", "-c", "kill -USR1 $$"]));
        assert_eq!(
            r.signal,
            Some(libc::SIGUSR1),
            "{mode}: {:?} {}",
            r.code,
            r.stderr
        );
        let shell = run(sb.as_user(&[
            "sh".into(),
            "-c".into(),
            format!(
                "{} run --mode {mode} {} -- sh -c 'kill -TERM $$'; echo status=$?",
                berth_bin().display(),
                image.display()
            ),
        ]));
        assert_eq!(
            shell.stdout.trim(),
            "status=143",
            "{mode}: {}",
            shell.stderr
        );
    }
}

#[test]
fn sigterm_to_berth_reaches_the_command() {
    let sb = Sandbox::new("sigterm");
    let image = demo_image();
    let mut child = sb
        .berth(&[
            "run",
            image.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "trap 'echo got-TERM; exit 42' TERM; echo ready; while :; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    // setpriv execs berth, so the child's pid is berth's.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "got-TERM\n");
    assert_eq!(status.code(), Some(42));
}

#[test]
fn sigkill_of_berth_leaves_no_mount_and_no_helper() {
    let sb = Sandbox::new("sigkill");
    let image = demo_image();
    for join in [vec!["--no-join"], vec!["--join", "killed"]] {
        let mut args = vec!["run", "--mode", "mount"];
        args.extend(join.iter().copied());
        let img = image.to_str().unwrap().to_string();
        args.push(&img);
        args.extend(["--", "sleep", "300"]);
        let mut child = sb.berth(&args).spawn().unwrap();
        let pid = child.id() as i32;
        // Wait for the container to be up: the command is `sleep` and berth-imagefs serves it.
        let up = eventually(Duration::from_secs(20), || {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == "sleep")
                .unwrap_or(false)
        });
        assert!(up, "container did not start ({join:?})");
        // The image server: the image keeper, detached, which must go once the container is
        // gone and its idle time (the sandbox's: 2 s) has passed.
        let helpers: Vec<i32> = if join[0] == "--no-join" {
            sb.processes()
                .into_iter()
                .filter(|(_, c)| c.starts_with("berth-imagefs"))
                .map(|(p, _)| p)
                .collect()
        } else {
            // The join keeper (named for its key in ps) and the image server.
            sb.processes()
                .into_iter()
                .filter(|(p, c)| {
                    *p != pid
                        && (c.starts_with("berth-keeper killed") || c.starts_with("berth-imagefs"))
                })
                .map(|(p, _)| p)
                .collect()
        };
        assert!(
            !helpers.is_empty(),
            "a helper process exists while running ({join:?})"
        );
        // The container's mounts (FUSE, overlay, binds) live as long as its mount namespace:
        // while some process is in it or holds it open. The probe must see the running one.
        let mnt_ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
        assert!(
            !namespace_holders(&mnt_ns).is_empty(),
            "the probe finds the running container ({join:?})"
        );
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        let gone = eventually(Duration::from_secs(20), || {
            helpers
                .iter()
                .all(|h| !live_processes(user().uid).iter().any(|(p, _)| p == h))
        });
        assert!(
            gone,
            "helpers left after SIGKILL ({join:?}): {:?}",
            live_processes(user().uid)
        );
        assert!(
            eventually(Duration::from_secs(20), || sb.processes().is_empty()),
            "processes of the sandbox left ({join:?}): {:?}",
            sb.processes()
        );
        assert!(
            eventually(Duration::from_secs(20), || namespace_holders(&mnt_ns)
                .is_empty()),
            "the container's mount namespace is still held ({join:?}): {:?}",
            namespace_holders(&mnt_ns)
        );
    }
}

/// The live processes (any user) that are in the mount namespace `ns` (a `/proc/PID/ns/mnt`
/// link such as `mnt:[4026532301]`) or hold an open descriptor to it.
fn namespace_holders(ns: &std::path::Path) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let inside = std::fs::read_link(e.path().join("ns/mnt")).ok().as_deref() == Some(ns);
        let holds = std::fs::read_dir(e.path().join("fd"))
            .map(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).ok().as_deref() == Some(ns))
            })
            .unwrap_or(false);
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = matches!(
            stat.rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next(),
            Some("Z" | "X") | None
        );
        if (inside || holds) && !zombie {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            out.push((p, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    out
}
