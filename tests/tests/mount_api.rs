//! The two ways berth mounts: the new mount API (open_tree, mount_setattr, move_mount) and,
//! on kernels without it (before 5.12, RHEL 8's 4.18), mount(2) on O_PATH fds. `tests/run`
//! runs this file, and the launcher's other suites, a second time under the `enosys` wrapper
//! (`BERTH_TEST_WRAP`); the checks here hold both ways, and the wrapper is checked to work.

use berth_tests::*;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

/// A tmpfs root mounts on the host for a test, unmounted on drop.
struct HostTmpfs(PathBuf);

impl HostTmpfs {
    fn new(at: PathBuf) -> HostTmpfs {
        fs::create_dir_all(&at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0777", "berth-test"])
            .arg(&at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", at.display());
        HostTmpfs(at)
    }
}

impl Drop for HostTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_read_only_rbind_is_read_only_nosuid_and_nodev_in_every_submount() {
    assert!(is_root(), "needs root to mount the host's submount");
    let sb = Sandbox::new("mount-api-ro");
    let data = sb.root.join("data");
    fs::create_dir_all(&data).unwrap();
    fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let _sub = HostTmpfs::new(data.join("sub"));
    let image = demo_image();
    let script =
        "touch /data/x 2>&1 | grep -c 'Read-only'; touch /data/sub/y 2>&1 | grep -c 'Read-only'; \
                  grep ' /data/sub ' /proc/self/mountinfo | cut -d' ' -f6";
    let ro = format!("{}:/data:ro", data.display());
    let r = run(sb.berth(&[
        "run",
        "-m",
        &ro,
        image.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        script,
    ]))
    .expect_ok("ro rbind");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[..2],
        ["1", "1"],
        "both levels read-only: {}",
        r.stdout
    );
    let opts: Vec<&str> = lines[2].split(',').collect();
    for want in ["ro", "nosuid", "nodev"] {
        assert!(opts.contains(&want), "{want} on the submount: {}", r.stdout);
    }
    // Without `ro` both are writable, and the submount is still nosuid and nodev.
    let rw = format!("{}:/data", data.display());
    let r = run(sb.berth(&[
        "run",
        "-m",
        &rw,
        image.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "touch /data/x /data/sub/y && grep ' /data/sub ' /proc/self/mountinfo | cut -d' ' -f6",
    ]))
    .expect_ok("rw rbind");
    let opts: Vec<&str> = r.stdout.trim().split(',').collect();
    assert!(opts.contains(&"rw"), "{}", r.stdout);
    assert!(
        opts.contains(&"nosuid") && opts.contains(&"nodev"),
        "{}",
        r.stdout
    );
    assert!(data.join("sub/y").exists());
}

#[test]
fn the_enosys_wrapper_makes_berth_bind_with_mount2() {
    let sb = Sandbox::new("mount-api-enosys");
    let image = demo_image();
    let lacks = "the kernel lacks open_tree: binding with mount(2)";
    let argv = [
        env!("CARGO_BIN_EXE_enosys").to_string(),
        berth_bin().to_string_lossy().into_owned(),
        "-v".into(),
        "run".into(),
        image.to_string_lossy().into_owned(),
        "--".into(),
        "cat".into(),
        "/etc/hostname".into(),
    ];
    let r = run(sb.as_user(&argv)).expect_ok("run under enosys");
    assert!(r.stderr.contains(lacks), "{}", r.stderr);
    assert!(!r.stdout.is_empty(), "{}", r.stdout);
    if std::env::var_os("BERTH_TEST_WRAP").is_none() {
        let r =
            run(sb.berth(&["-v", "run", image.to_str().unwrap(), "--", "true"])).expect_ok("run");
        assert!(!r.stderr.contains(lacks), "{}", r.stderr);
    }
}
