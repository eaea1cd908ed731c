//! Property tests of the pyxis vocabulary as the Slurm glue hands it over: `--container-mounts`
//! (comma-separated `SRC:DST[:FLAGS]`, flags joined by `+`), `--container-env` (comma-separated
//! names) and the per-node instance key. No input may panic; accepted input means what pyxis
//! means by it; instance keys are always safe file names.
//!
//! Longer run: `PROPTEST_CASES=20000 cargo test --release -p berth-plugin --test fuzz`.

use berth_launcher::check_join_key;
use berth_plugin::{instance_key, is_reference, key_part, JobRequest};
use proptest::prelude::*;
use std::ffi::OsString;
use std::path::Path;

fn cases(n: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = n;
    }
    config.failure_persistence = None;
    // ChaCha (the default) dominates a debug build's run time; these tests need no crypto.
    config.rng_algorithm = proptest::test_runner::RngAlgorithm::XorShift;
    config
}

fn request(mounts: &str, env_names: &str) -> JobRequest {
    JobRequest {
        image: Some("/img.sqsh".into()),
        mounts: Some(mounts.into()),
        env_names: Some(env_names.into()),
        mount_home: true,
        ..Default::default()
    }
}

/// One `--container-mounts` item, and what berth must make of it: None if it must be refused,
/// else (readonly, recursive).
fn mount_item() -> impl Strategy<Value = (String, Option<(bool, bool)>)> {
    let flag = prop::sample::select(vec![
        "ro",
        "rw",
        "bind",
        "rbind",
        "private",
        "rprivate",
        "rslave",
        "noexec",
        "x-create=dir",
        "bogus",
        "rshared",
        "",
    ]);
    let target = prop::sample::select(vec![
        ("/data", true),
        ("/x/y", true),
        // Relative: inside the container's root, as enroot has it.
        ("rel", true),
        ("/proc/x", false),
        ("/a/../b", false),
        ("/", false),
    ]);
    (
        prop::sample::select(vec!["/src", "rel/src", "/a b"]),
        target,
        proptest::option::of(proptest::collection::vec(flag, 1..4)),
    )
        .prop_map(|(src, (dst, dst_ok), flags)| {
            let mut item = format!("{src}:{dst}");
            let mut ok = dst_ok;
            let (mut ro, mut rec) = (false, true);
            if let Some(flags) = &flags {
                item.push(':');
                item.push_str(&flags.join("+"));
                for f in flags {
                    match *f {
                        "ro" => ro = true,
                        "rw" => ro = false,
                        "bind" => rec = false,
                        "rbind" => rec = true,
                        "private" | "rprivate" | "rslave" | "noexec" | "x-create=dir" | "" => {}
                        _ => ok = false,
                    }
                }
            }
            (item, ok.then_some((ro, rec)))
        })
}

proptest! {
    #![proptest_config(cases(512))]

    /// Well-formed lists: accepted exactly when every item is, each with pyxis's meaning.
    #[test]
    fn fuzz_container_mounts(items in proptest::collection::vec(mount_item(), 0..6)) {
        let list: Vec<&str> = items.iter().map(|(s, _)| s.as_str()).collect();
        let r = request(&list.join(","), "");
        let result = r.run_options("k", vec![], &[], Path::new("/home/u"));
        let want: Option<Vec<(bool, bool)>> = items.iter().map(|(_, w)| *w).collect();
        match (result, want) {
            (Ok(o), Some(want)) => {
                let got: Vec<(bool, bool)> = o.mounts.iter().map(|m| (m.readonly, m.recursive)).collect();
                prop_assert_eq!(got, want);
                for m in &o.mounts {
                    prop_assert!(m.source.is_absolute() && m.target.is_absolute());
                }
            }
            (Err(e), None) => prop_assert_eq!(e.to_string().lines().count(), 1),
            (result, want) => prop_assert!(false, "{:?}: got {:?}, want {:?}", list, result.map(|o| o.mounts), want),
        }
    }

    /// Anything at all: never a panic.
    #[test]
    fn fuzz_container_mounts_any(mounts in "\\PC{0,60}|[/a-z:,+.]{0,60}", env_names in "\\PC{0,30}|[A-Z_,]{0,30}") {
        let env = vec![(OsString::from("A"), OsString::from("1")), (OsString::from("B_2"), OsString::from("x=y"))];
        if let Ok(o) = request(&mounts, &env_names).run_options("k", vec![], &env, Path::new("/")) {
            for m in &o.mounts {
                prop_assert!(m.target.is_absolute() && !m.target.starts_with("/proc"));
            }
            // Only names that were asked for, with the host's values, in the order asked.
            let asked: Vec<&str> = env_names.split(',').collect();
            for (k, v) in &o.env {
                prop_assert!(asked.iter().any(|a| k == a));
                prop_assert!(env.contains(&(k.clone(), v.clone())));
            }
        }
    }

    /// Instance keys name files in the state directory: always a valid join key.
    #[test]
    fn fuzz_instance_key(job in any::<u32>(), step in any::<u32>(), node in "\\PC{0,80}|[./a-z-]{0,80}", name in proptest::option::of("\\PC{0,80}|[./a-z-]{0,10}")) {
        let key = instance_key("slurm", job, step, &node, name.as_deref());
        prop_assert!(check_join_key(&key).is_ok(), "{:?}", key);
        prop_assert!(key_part(&node).chars().count() <= 40);
        let _ = is_reference(&node);
    }
}
