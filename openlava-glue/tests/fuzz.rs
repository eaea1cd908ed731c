//! Property tests of what the OpenLava glue parses: bsub's `-a` string, the esub parameter
//! file, the env file lines it writes, and the job's host list. No input may panic.
//!
//! Longer run: `PROPTEST_CASES=20000 cargo test --release -p berth-openlava --test fuzz`.

use berth_openlava::{env_file_line, image_from_additional, job_hosts, parse_parm_file};
use proptest::prelude::*;
use std::ffi::OsString;

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

fn words() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("berth".to_string()),
            Just("berth(".to_string()),
            Just("berth(/img.sqsh)".to_string()),
            Just(")".to_string()),
            Just(" ".to_string()),
            Just(",".to_string()),
            Just("other(x)".to_string()),
            Just("é".to_string()),
            "\\PC{0,6}",
        ],
        0..8,
    )
    .prop_map(|w| w.concat())
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn fuzz_additional(a in words()) {
        if let Ok(Some(image)) = image_from_additional(&a) {
            prop_assert!(!image.is_empty() && a.contains(&image), "{:?} -> {:?}", a, image);
        }
    }

    #[test]
    fn fuzz_parm_file(text in "(\\PC|\n|=|\"|'|\\\\){0,120}") {
        for (k, _) in parse_parm_file(&text) {
            prop_assert!(!k.contains('\n'));
        }
    }

    /// What the esub writes is one line that bsub's reader of the env file carries as it is:
    /// nothing it would end, cut, fold or drop (a quote, '#', a line break or tab, a run of
    /// blanks, a blank at either end, a backslash before a blank or at the end).
    #[test]
    fn fuzz_env_file_line(value in "\\PC{0,30}|[a-z\"'$`#\t \\\\\n/]{0,10}") {
        if let Ok(line) = env_file_line("BERTH_IMAGE", &value) {
            prop_assert_eq!(line, format!("BERTH_IMAGE=\"{value}\"\n"));
            prop_assert!(!value.contains(['"', '#', '\n', '\r', '\t']));
            prop_assert!(!value.contains("  ") && !value.contains("\\ "));
            prop_assert!(!value.starts_with(' ') && !value.ends_with([' ', '\\']));
        }
    }

    /// Hosts and slot counts, as OpenLava sets them or as a job script may overwrite them.
    #[test]
    fn fuzz_job_hosts(mcpu in proptest::option::of("([a-z]{1,3} [0-9]{1,3} ?){0,6}|\\PC{0,20}"), hosts in proptest::option::of("([a-z]{1,3} ?){0,6}")) {
        let mut env = Vec::new();
        if let Some(m) = &mcpu {
            env.push((OsString::from("LSB_MCPU_HOSTS"), OsString::from(m)));
        }
        if let Some(h) = &hosts {
            env.push((OsString::from("LSB_HOSTS"), OsString::from(h)));
        }
        if let Ok(list) = job_hosts(&env) {
            prop_assert!(!list.is_empty());
            prop_assert!(list.iter().all(|(h, n)| !h.is_empty() && *n > 0));
        }
    }
}

#[test]
fn fuzz_job_hosts_slot_overflow() {
    let env = vec![(
        OsString::from("LSB_MCPU_HOSTS"),
        OsString::from("a 4294967295 a 1"),
    )];
    assert!(job_hosts(&env).is_err());
}
