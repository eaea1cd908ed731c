//! Apptainer SIF images: run in place in both modes (the squashfs partition found from the
//! descriptors), imported by `berth-image import`, and damaged ones refused with one line and
//! nothing left behind. The SIFs are built by the harness to the published layout.

use berth_tests::registry::berth_image_bin;
use berth_tests::sif::{write_sif, Damage};
use berth_tests::*;
use std::path::PathBuf;

/// A SIF of the demo image in the sandbox, owned by the test user.
fn demo_sif(sb: &Sandbox, name: &str, damage: Damage) -> (PathBuf, berth_tests::sif::SifLayout) {
    let path = sb.work.join(name);
    let layout = write_sif(&demo_image(), &path, damage);
    if is_root() {
        std::os::unix::fs::chown(&path, Some(user().uid), Some(user().gid)).unwrap();
    }
    (path, layout)
}

#[test]
fn sif_runs_in_mount_and_extract_mode() {
    let sb = Sandbox::new("sif-run");
    let (sif, _) = demo_sif(&sb, "app.sif", Damage::None);
    let demo = demo_image();
    let expected = run(sb.berth(&[
        "run",
        "--mode",
        "extract",
        demo.to_str().unwrap(),
        "--",
        "cat",
        "/etc/os-release",
    ]))
    .expect_ok("the demo .sqsh");
    assert!(expected.stdout.contains("bookworm"), "{}", expected.stdout);
    for mode in ["mount", "extract"] {
        let r = run(sb.berth(&[
            "run",
            "--mode",
            mode,
            sif.to_str().unwrap(),
            "--",
            "cat",
            "/etc/os-release",
        ]))
        .expect_ok(&format!("SIF in {mode} mode"));
        assert_eq!(r.stdout, expected.stdout, "{mode}");
    }
    // --dry-run reads the image config through the partition too.
    let dry = run(sb.berth(&["run", "--dry-run", sif.to_str().unwrap(), "--", "true"]))
        .expect_ok("--dry-run of a SIF");
    assert!(
        dry.stdout.contains("SIF: its squashfs partition at byte"),
        "{}",
        dry.stdout
    );
    assert!(
        eventually(std::time::Duration::from_secs(10), || sb
            .processes()
            .is_empty()),
        "left processes: {:?}",
        sb.processes()
    );
}

#[test]
fn berth_image_import_copies_the_partition_out() {
    let sb = Sandbox::new("sif-import");
    let (sif, layout) = demo_sif(&sb, "app.sif", Damage::None);
    let out = sb.work.join("app.sqsh");
    let argv = [
        berth_image_bin().to_string_lossy().into_owned(),
        "import".into(),
        sif.to_string_lossy().into_owned(),
        "-o".into(),
        out.to_string_lossy().into_owned(),
    ];
    run(sb.as_user(&argv)).expect_ok("berth-image import app.sif");
    let whole = std::fs::read(&sif).unwrap();
    let part = &whole[layout.partition_offset as usize..][..layout.partition_size as usize];
    assert!(std::fs::read(&out).unwrap() == part, "output != partition");
    let r = run(sb.berth(&["run", out.to_str().unwrap(), "--", "cat", "/etc/os-release"]))
        .expect_ok("run the imported image");
    assert!(r.stdout.contains("bookworm"), "{}", r.stdout);
    // A damaged SIF: one line, no output.
    let (bad, _) = demo_sif(&sb, "ext3.sif", Damage::Ext3);
    let out2 = sb.work.join("bad.sqsh");
    let argv = [
        berth_image_bin().to_string_lossy().into_owned(),
        "import".into(),
        bad.to_string_lossy().into_owned(),
        "-o".into(),
        out2.to_string_lossy().into_owned(),
    ];
    let r = run(sb.as_user(&argv));
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("ext3"), "{}", r.stderr);
    assert!(!out2.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&sb.work)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("berth-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn damaged_sifs_are_refused_with_one_line() {
    let sb = Sandbox::new("sif-bad");
    for (damage, says) in [
        (Damage::TruncatedHeader, "truncated"),
        (Damage::BadMagic, "bad SIF_MAGIC"),
        (Damage::OffsetPastEnd, "outside the file"),
        (Damage::NoSystemPartition, "no primary system partition"),
        (Damage::Ext3, "system partition is ext3"),
    ] {
        let (sif, _) = demo_sif(&sb, "bad.sif", damage);
        for mode in ["mount", "extract"] {
            let before = sb.state_entries();
            let r = run(sb.berth(&["run", "--mode", mode, sif.to_str().unwrap(), "--", "true"]));
            let what = format!("{damage:?} in {mode} mode");
            assert_eq!(r.code, Some(125), "{what}: {}", r.stderr);
            assert_eq!(r.stderr.lines().count(), 1, "{what}: {}", r.stderr);
            assert!(r.stderr.starts_with("berth: "), "{what}: {}", r.stderr);
            assert!(r.stderr.contains(says), "{what}: {}", r.stderr);
            let new: Vec<String> = sb
                .state_entries()
                .into_iter()
                .filter(|e| !before.contains(e))
                .filter(|e| e != "mnt" && e != "images" && e != "join")
                .collect();
            assert!(new.is_empty(), "{what} left {new:?}");
            assert!(
                eventually(std::time::Duration::from_secs(10), || sb
                    .processes()
                    .is_empty()),
                "{what} left processes: {:?}",
                sb.processes()
            );
        }
    }
}
