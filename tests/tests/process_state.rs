//! The command's process state is the caller's: signal dispositions and mask as berth was
//! started with (not the Rust runtime's ignored SIGPIPE), and arguments and variables as
//! bytes (non-UTF-8 ones pass unchanged).

use berth_tests::*;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// `berth run IMAGE ARGS...` as the test user, with arguments as bytes.
fn berth_run(sb: &Sandbox, args: &[&OsStr]) -> Command {
    let image = demo_image();
    let mut argv: Vec<&OsStr> = vec![OsStr::new("run"), image.as_os_str()];
    argv.extend_from_slice(args);
    let mut cmd = sb.berth(&[]);
    cmd.args(argv);
    cmd
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn a_closed_pipe_kills_the_writer_with_sigpipe() {
    let sb = Sandbox::new("sigpipe");
    // Exit status 141 (128 + SIGPIPE) for yes, as on the host; not "Broken pipe" and 1.
    let r = run(berth_run(
        &sb,
        &[
            os("--"),
            os("bash"),
            os("-c"),
            os("yes | head -1 >/dev/null; echo ${PIPESTATUS[0]}"),
        ],
    ))
    .expect_ok("yes | head in the container");
    assert_eq!(r.stdout.trim(), "141", "stderr: {}", r.stderr);
    assert!(!r.stderr.contains("Broken pipe"), "{}", r.stderr);
}

/// `SigIgn` and `SigBlk` of a process, from /proc/PID/status.
fn ignored_and_blocked(status: &str) -> (String, String) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
            .trim()
            .to_string()
    };
    (field("SigIgn:"), field("SigBlk:"))
}

/// Start `cmd` with SIGINT (and SIGPIPE if `pipe`) ignored and SIGUSR1 blocked, as a
/// `nohup`-like caller or a batch system would.
fn with_signal_state(cmd: &mut Command, pipe: bool) {
    // SAFETY: the hook runs between fork and exec and calls only async-signal-safe functions
    // (signal with SIG_IGN, the sigset calls on a local set, sigprocmask); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            if pipe {
                libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

#[test]
fn the_command_gets_the_callers_dispositions_and_mask() {
    let sb = Sandbox::new("sigstate");
    for (caller_changes, pipe) in [(false, false), (true, false), (true, true)] {
        // What the command sees without berth: the reference.
        let mut host = sb.as_user(&["cat".into(), "/proc/self/status".into()]);
        if caller_changes {
            with_signal_state(&mut host, pipe);
        }
        let host = run(host).expect_ok("cat on the host");
        let expected = ignored_and_blocked(&host.stdout);
        for join in [&["--no-join"][..], &["--join", "sigstate"][..]] {
            let mut args: Vec<&OsStr> = join.iter().map(|a| os(a)).collect();
            args.extend([os("--"), os("cat"), os("/proc/self/status")]);
            let mut cmd = berth_run(&sb, &args);
            if caller_changes {
                with_signal_state(&mut cmd, pipe);
            }
            let r = run(cmd).expect_ok("cat in the container");
            assert_eq!(
                ignored_and_blocked(&r.stdout),
                expected,
                "(SigIgn, SigBlk) with {join:?}, caller ignores SIGINT: {caller_changes}, SIGPIPE: {pipe}"
            );
        }
    }
}

#[test]
fn non_utf8_arguments_and_variables_arrive_byte_for_byte() {
    let sb = Sandbox::new("latin1");
    // A Latin-1 file name ("fé.txt") and value ("café"), as an old file server has them.
    let name = OsStr::from_bytes(b"f\xe9.txt");
    let value = OsStr::from_bytes(b"caf\xe9");
    let file = sb.work.join(name);
    std::fs::write(&file, b"latin-1 content\n").unwrap();
    let dir = sb.work.join(OsStr::from_bytes(b"r\xe9sultats"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("x"), b"").unwrap();
    if is_root() {
        for p in [&file, &dir] {
            std::os::unix::fs::chown(p, Some(user().uid), Some(user().gid)).unwrap();
        }
    }
    let mut env_arg = OsString::from("W=");
    env_arg.push(value);
    let mut cmd = berth_run(
        &sb,
        &[
            os("--env"),
            &env_arg,
            os("--"),
            os("sh"),
            os("-c"),
            os("printf '%s|%s|%s|' \"$1\" \"$V\" \"$W\"; cat \"$1\""),
            os("sh"),
            name,
        ],
    );
    cmd.env("V", value);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout,
        b"f\xe9.txt|caf\xe9|caf\xe9|latin-1 content\n".to_vec(),
        "as text: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A Latin-1 mount source too.
    let mut mount = OsString::from(dir.as_os_str());
    mount.push(":/data:ro");
    let r = run(berth_run(
        &sb,
        &[os("--mount"), &mount, os("--"), os("ls"), os("/data")],
    ))
    .expect_ok("ls of a mount");
    assert_eq!(r.stdout, "x\n");
}
