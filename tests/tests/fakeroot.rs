//! Fake root for package managers: under `--remap-root` a seccomp filter makes the chown and
//! set*id calls report success without effect, so `apt-get install` works in a `--writable`
//! container, from a local repository on loopback; the host's files keep their owners.

use berth_tests::aptrepo::{self, AptRepo};
use berth_tests::*;
use std::os::unix::fs::MetadataExt;

/// Point apt at the local repository, install the package, run its program and show what
/// the install did.
fn install_script(repo: &AptRepo) -> String {
    format!(
        "{}; apt-get update -qq && apt-get install -qq -y {pkg} >/dev/null && {pkg} && \
         stat -c 'owned=%u state=%u' /usr/share/berth-hello/owned /usr/share/berth-hello/state \
         && getent passwd {user}",
        repo.sources_line(),
        pkg = aptrepo::PACKAGE,
        user = aptrepo::SYSTEM_USER,
    )
}

/// `berth run FLAGS --writable <demo image> -- sh -c SCRIPT`.
fn writable_sh(sb: &Sandbox, flags: &[&str], script: &str) -> Run {
    let image = demo_image();
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend([
        "--writable",
        image.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        script,
    ]);
    run(sb.berth(&args))
}

#[test]
fn apt_get_install_works_under_remap_root() {
    let sb = Sandbox::new("fakeroot-apt");
    let repo = AptRepo::serve(&sb.root.join("apt"));
    // Extract mode: the image's files are the user's, so apt and adduser can rewrite the
    // ones (/etc/gshadow) that the image gives a group the user namespace does not map.
    let r = writable_sh(
        &sb,
        &["--mode", "extract", "--remap-root"],
        &install_script(&repo),
    )
    .expect_ok("apt-get install under --remap-root");
    assert!(r.stdout.contains(aptrepo::GREETING), "{}", r.stdout);
    // The chowns (dpkg's of the 4242 file, the postinst's) reported success without effect:
    // the files are root's inside, i.e. the user's outside.
    assert!(r.stdout.contains("owned=0"), "{}", r.stdout);
    assert!(r.stdout.contains("state=0"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!("{}:x:", aptrepo::SYSTEM_USER)),
        "{}",
        r.stdout
    );
}

#[test]
fn apt_get_install_works_under_remap_root_in_mount_mode() {
    let sb = Sandbox::new("fakeroot-mount");
    let repo = AptRepo::serve(&sb.root.join("apt"));
    let image = demo_image();
    // Mount mode: berth-imagefs shows every file as the user's, so the overlay can copy up
    // and adduser can rewrite /etc/gshadow (group shadow in the image, which no user
    // namespace of the user's maps).
    let r = writable_sh(
        &sb,
        &["--mode", "mount", "--remap-root"],
        &format!("stat -c %U:%G /etc/gshadow; {}", install_script(&repo)),
    )
    .expect_ok("apt-get install under --remap-root in mount mode");
    assert!(r.stdout.starts_with("root:root\n"), "{}", r.stdout);
    assert!(r.stdout.contains(aptrepo::GREETING), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!("{}:x:", aptrepo::SYSTEM_USER)),
        "{}",
        r.stdout
    );
    // No mode is switched behind the user's back any more.
    let dry = run(sb.berth(&[
        "run",
        "--dry-run",
        "--remap-root",
        "--writable",
        image.to_str().unwrap(),
        "--",
        "true",
    ]))
    .expect_ok("dry run")
    .stdout;
    assert!(dry.contains("mount mode"), "{dry}");
}

#[test]
fn without_remap_root_apt_get_fails_as_the_user() {
    let sb = Sandbox::new("fakeroot-user");
    let repo = AptRepo::serve(&sb.root.join("apt"));
    // The same request without --remap-root.
    let script = format!("id -u; {}", install_script(&repo));
    let r = writable_sh(&sb, &["--mode", "extract"], &script);
    assert!(!r.ok(), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.starts_with(&format!("{}\n", user().uid)),
        "{}",
        r.stdout
    );
    // Extract mode gives the user the image's files, so apt gets as far as dpkg, which
    // wants a superuser.
    assert!(
        r.stderr.contains("/usr/bin/dpkg returned an error code"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains(aptrepo::GREETING), "{}", r.stdout);
}

#[test]
fn the_filter_shows_in_proc_status_only_under_remap_root() {
    let sb = Sandbox::new("fakeroot-status");
    let image = demo_image();
    let status = |remap: bool| {
        let mut args = vec!["run"];
        if remap {
            args.push("--remap-root");
        }
        args.extend([
            image.to_str().unwrap(),
            "--",
            "grep",
            "^Seccomp:",
            "/proc/self/status",
        ]);
        run(sb.berth(&args)).expect_ok("grep").stdout
    };
    assert_eq!(status(true).split_whitespace().nth(1), Some("2"));
    assert_eq!(status(false).split_whitespace().nth(1), Some("0"));
    // --dry-run says so.
    let dry = run(sb.berth(&[
        "run",
        "--remap-root",
        "--dry-run",
        image.to_str().unwrap(),
        "--",
        "true",
    ]))
    .expect_ok("dry run");
    assert!(dry.stdout.contains("fake root (seccomp)"), "{}", dry.stdout);
    assert!(dry.stdout.contains("APT::Sandbox::User"), "{}", dry.stdout);
}

#[test]
fn a_faked_chown_leaves_the_host_file_alone() {
    let sb = Sandbox::new("fakeroot-host");
    let image = demo_image();
    let file = sb.user_file("mine", b"mine\n");
    let inside = file.to_str().unwrap();
    let r = run(sb.berth(&[
        "run",
        "--remap-root",
        "--mount",
        &format!("{inside}:/mnt/mine"),
        image.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "chown 4242:4242 /mnt/mine && echo chown=ok; stat -c %u /mnt/mine",
    ]))
    .expect_ok("chown");
    assert!(r.stdout.contains("chown=ok"), "{}\n{}", r.stdout, r.stderr);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user().uid, user().gid));
}
