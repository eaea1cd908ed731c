//! What a rank sees inside: the image, its own identity, home and cwd; host files keep their
//! host permissions.

use berth_tests::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn sees_the_image_os_release_its_ids_home_and_cwd() {
    let sb = Sandbox::new("identity");
    let u = user();
    let r = run(sb.berth_demo(
        &[],
        &[
            "sh",
            "-c",
            "grep ^PRETTY_NAME /etc/os-release; id -u; id -g; id -un; echo home=$HOME; pwd; test -d \"$HOME\" && echo home-ok",
        ],
    ))
    .expect_ok("berth run");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[0], "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"",
        "{}",
        r.stdout
    );
    assert_eq!(lines[1], u.uid.to_string(), "uid inside");
    assert_eq!(lines[2], u.gid.to_string(), "gid inside");
    assert_eq!(
        lines[3], u.name,
        "the user's passwd entry is visible inside"
    );
    assert_eq!(lines[4], format!("home={}", u.home.display()));
    assert_eq!(lines[5], sb.work.to_str().unwrap(), "cwd is kept");
    assert_eq!(lines[6], "home-ok");
    // The host's name resolution files are the ones inside.
    let r = run(sb.berth_demo(&[], &["cat", "/etc/hosts", "/etc/resolv.conf"])).expect_ok("hosts");
    let host = ["/etc/hosts", "/etc/resolv.conf"]
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect::<String>();
    assert_eq!(r.stdout, host);
}

#[test]
fn host_files_keep_host_permissions_shadow_is_visible_not_readable() {
    let sb = Sandbox::new("shadow");
    let r = run(sb.berth_demo(
        &["--mount", "/etc/shadow:/host-shadow:ro"],
        &[
            "sh",
            "-c",
            "test -e /host-shadow && echo visible; cat /host-shadow >/dev/null 2>&1 && echo READABLE || echo unreadable",
        ],
    ))
    .expect_ok("berth run");
    assert_eq!(r.stdout, "visible\nunreadable\n");
}

#[test]
fn supplementary_groups_still_grant_access() {
    if !is_root() {
        panic!(
            "this test needs to run as root: it makes a file readable only by group {TEST_GROUP}"
        );
    }
    let sb = Sandbox::new("groups");
    let secret = sb.root.join("group-secret");
    std::fs::write(&secret, "for the group\n").unwrap();
    let gid = nix::unistd::Group::from_name(TEST_GROUP)
        .unwrap()
        .expect("group made by tests/run")
        .gid;
    nix::unistd::chown(&secret, Some(nix::unistd::Uid::from_raw(0)), Some(gid)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    let image = demo_image();
    let spec = format!("{}:/secret", secret.display());
    let r = run(sb.berth(&[
        "run",
        "--mount",
        &spec,
        image.to_str().unwrap(),
        "--",
        "cat",
        "/secret",
    ]));
    let r = r.expect_ok("reading a file through a supplementary group");
    assert_eq!(r.stdout, "for the group\n");
}

#[test]
fn remap_root_makes_the_user_uid_zero_inside_only() {
    let sb = Sandbox::new("remap");
    let r = run(sb.berth_demo(
        &["--remap-root"],
        &[
            "sh",
            "-c",
            "id -u; id -g; echo $HOME; cat /proc/self/uid_map",
        ],
    ))
    .expect_ok("remap-root");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(&lines[..3], &["0", "0", "/root"]);
    let map: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(
        map,
        vec!["0", &user().uid.to_string(), "1"],
        "uid 0 inside is the user outside, nothing else is mapped"
    );
}

#[test]
fn environment_entrypoint_and_workdir_follow_the_image_config() {
    let sb = Sandbox::new("config");
    let image = demo_image();
    let img = image.to_str().unwrap();
    let r = run(sb.berth_demo(
        &["--env", "MINE=1"],
        &["sh", "-c", "echo $DEMO_IMAGE $DEMO_ENTRYPOINT $MINE"],
    ))
    .expect_ok("entrypoint");
    assert_eq!(
        r.stdout, "berth-demo ran 1\n",
        "image Env, entrypoint and --env apply"
    );
    let r = run(sb.berth_demo(
        &["--no-entrypoint"],
        &["sh", "-c", "echo ${DEMO_ENTRYPOINT:-none}"],
    ))
    .expect_ok("no-entrypoint");
    assert_eq!(r.stdout, "none\n");
    let r = run(sb.berth(&["run", img])).expect_ok("default command");
    assert!(
        r.stdout.contains("PRETTY_NAME=\"Debian GNU/Linux 12"),
        "image Cmd runs by default: {}",
        r.stdout
    );
    let r = run(sb.berth_demo(&["--workdir", "/usr/share"], &["pwd"])).expect_ok("workdir");
    assert_eq!(r.stdout, "/usr/share\n");
    // From a host directory that is not visible inside, the image's WorkingDir is used.
    let mut cmd = sb.berth_demo(&[], &["pwd"]);
    cmd.current_dir("/etc");
    assert_eq!(run(cmd).expect_ok("image workdir").stdout, "/srv/demo\n");
}

#[test]
fn writable_keeps_changes_in_memory_and_read_only_refuses() {
    let sb = Sandbox::new("writable");
    let r = run(sb.berth_demo(&[], &["sh", "-c", "echo x > /etc/new-file"]));
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("Read-only file system"), "{}", r.stderr);
    let r = run(sb.berth_demo(
        &["--writable"],
        &["sh", "-c", "echo x > /etc/new-file && cat /etc/new-file"],
    ))
    .expect_ok("writable");
    assert_eq!(r.stdout, "x\n");
    let r = run(sb.berth_demo(
        &[],
        &[
            "sh",
            "-c",
            "test -e /etc/new-file && echo kept || echo discarded",
        ],
    ))
    .expect_ok("after");
    assert_eq!(r.stdout, "discarded\n");
}

#[test]
fn user_mounts_ro_and_rw_and_files() {
    let sb = Sandbox::new("mounts");
    let data = sb.work.join("data");
    std::fs::create_dir(&data).unwrap();
    let f = sb.user_file("data/in.txt", b"hello\n");
    if is_root() {
        nix::unistd::chown(&data, Some(nix::unistd::Uid::from_raw(user().uid)), None).unwrap();
    }
    let image = demo_image();
    let ro = format!("{}:/mnt/ro:ro", data.display());
    let rw = format!("{}:/opt/rw", data.display());
    let file = format!("{}:/etc/one-file.txt", f.display());
    let r = run(sb.berth(&[
        "run", "-m", &ro, "-m", &rw, "-m", &file, image.to_str().unwrap(), "--", "sh", "-c",
        "cat /mnt/ro/in.txt; cat /etc/one-file.txt; echo w > /opt/rw/out.txt && echo rw-ok; (echo w > /mnt/ro/x) 2>&1 || true",
    ]))
    .expect_ok("mounts");
    assert!(
        r.stdout.starts_with("hello\nhello\nrw-ok\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Read-only file system"), "{}", r.stdout);
    assert_eq!(
        std::fs::read_to_string(data.join("out.txt")).unwrap(),
        "w\n",
        "rw mount writes reach the host"
    );
}

#[test]
fn a_named_container_keeps_its_changes_for_the_next_run_with_that_name() {
    let sb = Sandbox::new("named");
    run(sb.berth_demo(
        &["--name", "keep"],
        &["sh", "-c", "echo kept > /etc/berth-kept"],
    ))
    .expect_ok("first");
    let r =
        run(sb.berth_demo(&["--name", "keep"], &["cat", "/etc/berth-kept"])).expect_ok("second");
    assert_eq!(r.stdout, "kept\n");
    let r = run(sb.berth_demo(
        &[],
        &[
            "sh",
            "-c",
            "test -e /etc/berth-kept && echo leaked || echo clean",
        ],
    ))
    .expect_ok("unnamed");
    assert_eq!(r.stdout, "clean\n", "an unnamed container does not see it");
    assert!(sb.state.join("named/keep/upper/etc/berth-kept").exists());
    let bad = run(sb.berth_demo(&["--name", "../x"], &["true"]));
    assert_eq!(bad.code, Some(125));
}
