//! Mount mode, extract mode and directory images give the same container; the extract cache is
//! filled once, reused, safe under concurrent first runs, listed and cleaned.

use berth_tests::*;
use std::os::unix::fs::MetadataExt;

const PROBE: &str = "cat /etc/os-release; id -u; pwd; ls /usr/local/bin; md5sum /usr/bin/mpirun /etc/debian_version";

#[test]
fn mount_extract_and_directory_give_the_same_results() {
    let sb = Sandbox::new("modes");
    let mount = run(sb.berth_demo(&["--mode", "mount"], &["sh", "-c", PROBE])).expect_ok("mount");
    let extract =
        run(sb.berth_demo(&["--mode", "extract"], &["sh", "-c", PROBE])).expect_ok("extract");
    // A directory image owned by the user: the tree extract mode unpacked.
    let entries = entry_dirs(&sb);
    assert_eq!(entries.len(), 1);
    let rootfs = entries[0].join("rootfs");
    let dir = run(sb.berth(&["run", rootfs.to_str().unwrap(), "--", "sh", "-c", PROBE]))
        .expect_ok("directory");
    assert!(
        mount.stdout.contains("bookworm") && mount.stdout.contains("mpi-hello"),
        "{}",
        mount.stdout
    );
    assert_eq!(mount.stdout, extract.stdout);
    assert_eq!(mount.stdout, dir.stdout);
}

fn entry_dirs(sb: &Sandbox) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(sb.state.join("images"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                // `.ids` (known files) and `.tmp-*` are not entries.
                .filter(|p| {
                    p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.')
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn extract_cache_is_filled_once_and_reused() {
    let sb = Sandbox::new("cache-reuse");
    let image = demo_image();
    let first = run(sb.berth_demo(&["--mode", "extract"], &["true"])).expect_ok("first");
    assert!(
        first.stderr.contains("unpacking"),
        "the first run unpacks: {}",
        first.stderr
    );
    let entries = entry_dirs(&sb);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let ino = std::fs::metadata(entries[0].join("rootfs")).unwrap().ino();
    let second = run(sb.berth_demo(&["--mode", "extract"], &["true"])).expect_ok("second");
    assert!(
        !second.stderr.contains("unpacking"),
        "the second run must not unpack: {}",
        second.stderr
    );
    assert_eq!(
        std::fs::metadata(entries[0].join("rootfs")).unwrap().ino(),
        ino,
        "same cache entry"
    );
    assert_eq!(entry_dirs(&sb), entries);

    let list = run(sb.berth(&["cache", "list"])).expect_ok("cache list");
    let key = entries[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        list.stdout.contains(&key) && list.stdout.contains(image.to_str().unwrap()),
        "{}",
        list.stdout
    );
    let clean = run(sb.berth(&["cache", "clean"])).expect_ok("cache clean");
    assert!(
        clean.stdout.contains(&format!("removed {key}")),
        "{}",
        clean.stdout
    );
    assert!(entry_dirs(&sb).is_empty(), "clean removed the entry");
    let bad = run(sb.berth(&["cache", "clean", "nosuchkey"]));
    assert_eq!(bad.code, Some(125));
    assert!(
        bad.stderr.contains("no cached image with key"),
        "{}",
        bad.stderr
    );
}

#[test]
fn cache_clean_keeps_an_image_in_use() {
    let sb = Sandbox::new("cache-inuse");
    let mut running = sb
        .berth_demo(&["--mode", "extract", "--no-join"], &["sleep", "30"])
        .spawn()
        .unwrap();
    assert!(
        eventually(std::time::Duration::from_secs(60), || entry_dirs(&sb).len()
            == 1),
        "entry appears"
    );
    let busy = eventually(std::time::Duration::from_secs(20), || {
        run(sb.berth(&["cache", "list"])).stdout.contains(" yes ")
    });
    assert!(busy, "the entry shows as in use");
    let clean = run(sb.berth(&["cache", "clean"])).expect_ok("clean");
    assert!(clean.stdout.contains("(in use)"), "{}", clean.stdout);
    assert_eq!(entry_dirs(&sb).len(), 1);
    running.kill().unwrap();
    running.wait().unwrap();
}

#[test]
fn concurrent_first_runs_unpack_once_and_both_work() {
    let sb = Sandbox::new("cache-race");
    let spawn = || {
        sb.berth_demo(
            &["--mode", "extract", "--no-join"],
            &["cat", "/etc/debian_version"],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("12."));
    }
    let unpacks = [&a, &b]
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stderr).contains("unpacking"))
        .count();
    assert_eq!(unpacks, 1, "exactly one of the two unpacked");
    let names = dir_names(&sb.state.join("images"));
    assert_eq!(
        names
            .iter()
            .filter(|n| !n.ends_with(".lock") && *n != ".ids")
            .count(),
        1,
        "one entry, no temporary leftovers: {names:?}"
    );
}
