//! `berth doctor` on this machine: the features the test suite relies on are there, and a
//! broken setup is a ✗ row with its fix and a non-zero exit.

use berth_tests::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;

/// The row of `check` in doctor's table.
fn row<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.split_once(' ')
                .is_some_and(|(_, rest)| rest.starts_with(check))
        })
        .unwrap_or_else(|| panic!("no row '{check}' in:\n{out}"))
}

#[test]
fn doctor_passes_on_the_test_machine() {
    let sb = Sandbox::new("doctor-ok");
    let r = run(sb.berth(&["doctor"]));
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    for check in [
        "user namespaces",
        "/dev/fuse",
        "overlayfs",
        "open_tree",
        "mount_setattr",
        "openat2",
        "state directory",
    ] {
        assert!(
            row(&r.stdout, check).starts_with("✓"),
            "{check}:\n{}",
            r.stdout
        );
    }
}

#[test]
fn an_open_state_directory_is_a_failed_check_with_its_fix() {
    let sb = Sandbox::new("doctor-state");
    fs::set_permissions(&sb.state, fs::Permissions::from_mode(0o777)).unwrap();
    let r = run(sb.berth(&["doctor"]));
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    let line = row(&r.stdout, "state directory");
    assert!(line.starts_with("✗"), "{}", r.stdout);
    assert!(line.contains("mode 0777"), "{}", r.stdout);
    let fix = r.stdout.lines().skip_while(|l| *l != line).nth(1).unwrap();
    assert!(
        fix.trim() == format!("fix: chmod 0700 {}", sb.state.display()),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("berth cannot run here: 1 check failed"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_broken_policy_is_a_failed_check_naming_the_line() {
    let sb = Sandbox::new("doctor-policy");
    let policy = sb.user_file("berth.toml", b"[mpi]\nfamily = \"lam\"\n");
    let mut cmd = sb.berth(&["doctor"]);
    cmd.env("BERTH_CONFIG", &policy);
    let r = run(cmd);
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    let line = row(&r.stdout, "site policy");
    assert!(line.starts_with("✗"), "{}", r.stdout);
    assert!(
        line.contains(&format!("{}:2:", policy.display())),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("fix: fix the file named"), "{}", r.stdout);
}

#[test]
fn doctor_names_the_mount_api_and_a_kernel_without_the_new_one_still_passes() {
    let sb = Sandbox::new("doctor-api");
    if std::env::var_os("BERTH_TEST_WRAP").is_none() {
        let r = run(sb.berth(&["doctor"]));
        let line = row(&r.stdout, "mount API");
        assert!(
            line.starts_with("✓") && line.contains("new (open_tree/move_mount/mount_setattr)"),
            "{}",
            r.stdout
        );
    }
    // As on RHEL 8's 4.18: no open_tree, move_mount, mount_setattr or openat2.
    let argv = [
        env!("CARGO_BIN_EXE_enosys").to_string(),
        berth_bin().to_string_lossy().into_owned(),
        "doctor".to_string(),
    ];
    let r = run(sb.as_user(&argv));
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    let line = row(&r.stdout, "mount API");
    assert!(
        line.starts_with("✓") && line.contains("classic mount(2) (kernel lacks open_tree)"),
        "{}",
        r.stdout
    );
    assert!(
        row(&r.stdout, "openat2").contains("component by component"),
        "{}",
        r.stdout
    );
}
