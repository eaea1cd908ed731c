//! `--mount` beyond binds, as pyxis's `--container-mounts` has them (through enroot): a tmpfs
//! with its options, `umount:` of a mount the job does not want, and the flags `noexec`,
//! `x-create=` and the propagation types.

use berth_tests::*;
use std::fs;

fn one_line_125(r: &Run, needle: &str) {
    assert_eq!(r.code, Some(125), "stdout {} stderr {}", r.stdout, r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains(needle), "{needle:?} not in {}", r.stderr);
}

#[test]
fn a_tmpfs_mount_has_its_size_and_mode_and_is_the_users() {
    let sb = Sandbox::new("mount-tmpfs");
    let image = demo_image();
    let r = run(sb.berth(&[
        "run",
        "-m",
        "tmpfs:/scratch:size=1M,mode=0700",
        image.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "stat -c '%a %u' /scratch; grep ' /scratch ' /proc/self/mountinfo | cut -d' ' -f9-; \
         head -c 2000000 /dev/zero > /scratch/big 2>/dev/null || echo full; rm /scratch/big; echo ok > /scratch/small && cat /scratch/small",
    ]))
    .expect_ok("tmpfs");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], format!("700 {}", user().uid), "{}", r.stdout);
    assert!(
        lines[1].starts_with("tmpfs ") && lines[1].contains("size=1024k"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("full"),
        "a 1 MiB tmpfs holds no 2 MB: {}",
        r.stdout
    );
    // The big file took the space: the small one fails too or fits; what matters is the limit.
    let bad = run(sb.berth(&[
        "run",
        "-m",
        "tmpfs:/s:size=lots",
        image.to_str().unwrap(),
        "--",
        "true",
    ]));
    one_line_125(&bad, "size=lots is not a size");
}

#[test]
fn umount_removes_the_jobs_own_mounts_but_never_the_sites() {
    let sb = Sandbox::new("mount-umount");
    let image = demo_image();
    let home = user().home.display().to_string();
    let marker = user().home.join(".berth-umount-marker");
    fs::write(&marker, "host home\n").unwrap();
    let _ = std::process::Command::new("chown")
        .arg(format!("{}:{}", user().uid, user().gid))
        .arg(&marker)
        .status();
    let script = format!("cat {} 2>/dev/null || echo no-home", marker.display());
    let with = run(sb.berth(&["run", image.to_str().unwrap(), "--", "sh", "-c", &script]))
        .expect_ok("home");
    assert_eq!(with.stdout, "host home\n");
    let without = run(sb.berth(&[
        "run",
        "-m",
        &format!("umount:{home}"),
        image.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]))
    .expect_ok("umount home");
    assert_eq!(without.stdout, "no-home\n");
    let _ = fs::remove_file(&marker);
    // A site mount stays: one line naming its origin.
    let site = sb.root.join("site");
    fs::create_dir_all(&site).unwrap();
    let policy = policy_file(
        &sb,
        &format!(
            "[[mount]]\nsource = \"{}\"\ntarget = \"/site\"\n",
            site.display()
        ),
    );
    let mut cmd = sb.berth(&[
        "run",
        "-m",
        "umount:/site",
        image.to_str().unwrap(),
        "--",
        "true",
    ]);
    cmd.env("BERTH_CONFIG", &policy);
    one_line_125(&run(cmd), "which a job cannot remove");
    let r = run(sb.berth(&[
        "run",
        "-m",
        "umount:/nothing/here",
        image.to_str().unwrap(),
        "--",
        "true",
    ]));
    one_line_125(&r, "nothing is mounted there");
}

#[test]
fn noexec_and_x_create_are_honoured_and_shown_by_dry_run() {
    let sb = Sandbox::new("mount-flags");
    let image = demo_image();
    let tools = sb.work.join("tools");
    fs::create_dir_all(&tools).unwrap();
    fs::write(tools.join("hello"), "#!/bin/sh\necho hello\n").unwrap();
    let conf = sb.user_file("app.conf", b"key=value\n");
    let _ = std::process::Command::new("chmod")
        .arg("-R")
        .arg("a+rx")
        .arg(&tools)
        .status();
    let exec_mount = format!("{}:/tools", tools.display());
    let noexec_mount = format!("{}:/tools:noexec", tools.display());
    let file_mount = format!("{}:/etc/newdir/app.conf:ro,x-create=file", conf.display());
    let r = run(sb.berth(&[
        "run",
        "-m",
        &exec_mount,
        "-m",
        &file_mount,
        image.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "/tools/hello; cat /etc/newdir/app.conf",
    ]))
    .expect_ok("exec");
    assert_eq!(r.stdout, "hello\nkey=value\n");
    let r = run(sb.berth(&[
        "run",
        "-m",
        &noexec_mount,
        image.to_str().unwrap(),
        "--",
        "/tools/hello",
    ]));
    assert_eq!(r.code, Some(126), "noexec: {} {}", r.stdout, r.stderr);
    let r = run(sb.berth(&[
        "run",
        "--dry-run",
        "-m",
        &noexec_mount,
        "-m",
        "tmpfs:/t:size=8M",
        image.to_str().unwrap(),
        "--",
        "true",
    ]))
    .expect_ok("dry run");
    assert!(r.stdout.contains("noexec"), "{}", r.stdout);
    assert!(r.stdout.contains("tmpfs (size=8M"), "{}", r.stdout);
    one_line_125(
        &run(sb.berth(&[
            "run",
            "-m",
            &format!("{}:/t:rshared", tools.display()),
            image.to_str().unwrap(),
            "--",
            "true",
        ])),
        "never propagate to the host",
    );
}
