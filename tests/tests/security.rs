//! The attacks the seed worried about fail: the host stays as safe as without berth.

use berth_tests::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn host_root_bind_cannot_delete_what_the_user_could_not() {
    assert!(is_root(), "needs root to make a root-owned victim tree");
    let sb = Sandbox::new("rmrf");
    let victim = sb.root.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("precious"), "keep me\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let inside = format!("/host{}", victim.display());
    let r = run(sb.berth_demo(&["--mount", "/:/host"], &["rm", "-rf", &inside]));
    assert_ne!(r.code, Some(0), "rm must fail");
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(victim.join("precious")).unwrap(),
        "keep me\n"
    );
    // The system's own files too.
    let r = run(sb.berth_demo(
        &["--mount", "/:/host"],
        &["rm", "-f", "/host/usr/bin/env", "/host/etc/passwd"],
    ));
    assert_ne!(r.code, Some(0));
    assert!(std::path::Path::new("/usr/bin/env").exists());
    assert!(std::path::Path::new("/etc/passwd").exists());
}

#[test]
fn no_way_to_another_uid() {
    let sb = Sandbox::new("uid");
    // No option switches identity.
    let r = run(sb.berth_demo(&["-u", "0"], &["id"]));
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr.contains("unexpected argument '-u'"),
        "{}",
        r.stderr
    );
    // Inside, only the user's own uid is mapped: setuid to anything else fails.
    let r = run(sb.berth_demo(
        &[],
        &[
            "setpriv",
            "--reuid=0",
            "--regid=0",
            "--clear-groups",
            "id",
            "-u",
        ],
    ));
    // The kernel refuses: uid 0 has no mapping (EINVAL). A bare non-zero exit is not enough,
    // since a shell's 127 for a missing setpriv would pass too.
    assert_ne!(r.code, Some(0), "setuid(0) must fail inside: {}", r.stdout);
    assert!(
        r.stderr
            .contains("setpriv: setresuid failed: Invalid argument"),
        "setuid(0) must fail for want of a mapping: {}",
        r.stderr
    );
    let r = run(sb.berth_demo(&[], &["cat", "/proc/self/uid_map"])).expect_ok("uid_map");
    assert_eq!(
        r.stdout.lines().count(),
        1,
        "exactly one uid mapped: {}",
        r.stdout
    );
}

#[test]
fn setuid_binaries_do_not_raise_privileges() {
    let sb = Sandbox::new("suid");
    let uid = user().uid;
    for mode in ["mount", "extract"] {
        let r = run(sb.berth_demo(
            &["--mode", mode],
            &[
                "sh",
                "-c",
                "ls -l /usr/local/bin/suid-probe | cut -c1-10; /usr/local/bin/suid-probe; grep NoNewPrivs /proc/self/status; awk '$6 !~ /(^|,)nosuid(,|$)/' /proc/self/mountinfo",
            ],
        ))
        .expect_ok(mode);
        let lines: Vec<&str> = r.stdout.lines().collect();
        if mode == "mount" {
            assert_eq!(
                lines[0], "-rwsr-xr-x",
                "the image keeps its setuid bit ({mode})"
            );
        }
        assert_eq!(
            lines[1],
            format!("ruid={uid} euid={uid}"),
            "setuid did not apply ({mode})"
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            vec!["NoNewPrivs:", "1"]
        );
        // awk printed every mount whose own options lack nosuid: there must be none.
        assert_eq!(
            lines.len(),
            3,
            "mounts without nosuid ({mode}):\n{}",
            lines[3..].join("\n")
        );
    }
    // Every mount of the container's own is nosuid.
    let r = run(sb.berth_demo(&[], &["cat", "/proc/self/mountinfo"])).expect_ok("mountinfo");
    let root = r
        .stdout
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("root mount");
    assert!(
        root.contains("nosuid") && root.contains("ro"),
        "root mount: {root}"
    );
    // berth's staging area (under /tmp here) is not visible through the /tmp bind.
    assert!(
        !r.stdout.contains(sb.state.to_str().unwrap()),
        "staging visible inside:\n{}",
        r.stdout
    );
}
