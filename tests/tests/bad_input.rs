//! Bad input: a non-zero exit, one line naming the problem, and nothing left behind (no files
//! in the state directory beyond its fixed layout, no processes).

use berth_tests::*;

fn refused(sb: &Sandbox, args: &[&str], code: i32, says: &str) {
    let before = sb.state_entries();
    let r = run(sb.berth(args));
    assert_eq!(
        r.code,
        Some(code),
        "{args:?}: stdout={} stderr={}",
        r.stdout,
        r.stderr
    );
    assert_eq!(
        r.stderr.lines().count(),
        1,
        "{args:?}: one line, got: {}",
        r.stderr
    );
    assert!(r.stderr.starts_with("berth: "), "{}", r.stderr);
    assert!(
        r.stderr.contains(says),
        "{args:?}: expected '{says}' in: {}",
        r.stderr
    );
    // A run that failed after its container was built leaves the image keeper it started:
    // it goes after its idle time (the sandbox's is short), with its socket and log.
    let none_left = eventually(std::time::Duration::from_secs(15), || {
        sb.processes().is_empty()
    });
    assert!(none_left, "{args:?} left processes: {:?}", sb.processes());
    let after: Vec<String> = sb
        .state_entries()
        .into_iter()
        .filter(|e| !before.contains(e))
        .collect();
    // Directories and lock files berth keeps by design.
    let allowed = |e: &String| {
        ["mnt", "images", "join", "keepers"].contains(&e.as_str())
            || (e.starts_with("keepers/") && e.ends_with(".lock"))
    };
    assert!(after.iter().all(allowed), "{args:?} left files: {after:?}");
}

#[test]
fn bad_images_are_refused() {
    let sb = Sandbox::new("bad-image");
    let missing = sb.work.join("nope.sqsh");
    let text = sb.user_file("text.sqsh", b"#!/bin/sh\necho this is not an image\n");
    let full = std::fs::read(demo_image()).unwrap();
    let truncated = sb.user_file("truncated.sqsh", &full[..full.len() / 2]);
    for mode in ["mount", "extract"] {
        refused(
            &sb,
            &[
                "run",
                "--mode",
                mode,
                missing.to_str().unwrap(),
                "--",
                "true",
            ],
            125,
            "image not found",
        );
        refused(
            &sb,
            &["run", "--mode", mode, text.to_str().unwrap(), "--", "true"],
            125,
            "not a squashfs image",
        );
        refused(
            &sb,
            &[
                "run",
                "--mode",
                mode,
                truncated.to_str().unwrap(),
                "--",
                "true",
            ],
            125,
            "truncated",
        );
    }
}

#[test]
fn bad_commands_are_refused() {
    let sb = Sandbox::new("bad-cmd");
    let image = demo_image();
    let img = image.to_str().unwrap();
    // Fill the extract cache first: the one-time unpacking notice is not part of the error.
    run(sb.berth(&["run", "--mode", "extract", img, "--", "true"])).expect_ok("warm-up");
    for mode in ["mount", "extract"] {
        // Without the image's entrypoint (a shell script that would report it itself).
        let run = ["run", "--no-entrypoint", "--mode", mode, img, "--"];
        refused(
            &sb,
            &[&run[..], &["no-such-command"]].concat(),
            127,
            "command not found in the container: no-such-command",
        );
        refused(
            &sb,
            &[&run[..], &["/etc/os-release"]].concat(),
            126,
            "cannot execute /etc/os-release",
        );
        // On the host but not in the image.
        refused(
            &sb,
            &[&run[..], &["cargo"]].concat(),
            127,
            "command not found",
        );
    }
}

#[test]
fn bad_mounts_are_refused() {
    let sb = Sandbox::new("bad-mount");
    let image = demo_image();
    let img = image.to_str().unwrap();
    for (option, value, says) in [
        (
            "--mount",
            "/no/such/dir:/data",
            "mount source /no/such/dir does not exist",
        ),
        ("--mount", "/tmp:data", "not an absolute path"),
        ("--mount", "/tmp:/data/../../etc", "contains '.' or '..'"),
        ("--mount", "/tmp:/proc", "reserved"),
        ("--mount", "/tmp:/data:rx", "unknown option 'rx'"),
        ("--env", "1BAD=x", "not a valid variable name"),
        ("--join", "../escape", "bad join key"),
        (
            "--workdir",
            "/no/such/dir",
            "working directory /no/such/dir",
        ),
    ] {
        refused(&sb, &["run", option, value, img, "--", "true"], 125, says);
    }
}

#[test]
fn bad_options_are_refused() {
    let sb = Sandbox::new("bad-opt");
    let image = demo_image();
    refused(
        &sb,
        &["run", "--frobnicate", image.to_str().unwrap(), "--", "true"],
        125,
        "unexpected argument '--frobnicate'",
    );
    refused(
        &sb,
        &[
            "run",
            "--mode",
            "copy",
            image.to_str().unwrap(),
            "--",
            "true",
        ],
        125,
        "unknown mode 'copy'",
    );
    refused(&sb, &["launch"], 125, "unrecognized subcommand 'launch'");
}

#[test]
fn dry_run_prints_the_plan_and_does_nothing() {
    let sb = Sandbox::new("dry-run");
    let image = demo_image();
    let r = run(sb.berth(&[
        "run",
        "--dry-run",
        "--mode",
        "extract",
        "-m",
        "/tmp:/data:ro",
        "-e",
        "A=1",
        image.to_str().unwrap(),
        "--",
        "hostname",
    ]))
    .expect_ok("dry-run");
    for want in [
        "extract mode",
        "/data",
        "<- /tmp (rbind, ro, nosuid)",
        "[--mount]",
        "/proc",
        "/etc/passwd",
        "\"/usr/local/bin/demo-entrypoint\", \"hostname\"",
        "A=1",
        "DEMO_IMAGE=berth-demo",
        &format!("uid {} gid {}", user().uid, user().gid),
    ] {
        assert!(
            r.stdout.contains(want),
            "missing '{want}' in:\n{}",
            r.stdout
        );
    }
    assert!(!sb.state.join("images").exists(), "dry-run must not unpack");
}
