//! Property tests of everything the launcher parses from outside: the site policy (bytes,
//! text and structured TOML), mount specs, `--env`, join keys and `/.berth/image.json`.
//! No input may panic; errors are one line, and policy errors name `file:line`.
//!
//! The default case counts keep this under a few seconds in debug; for a longer run:
//! `PROPTEST_CASES=20000 cargo test --release -p berth-launcher --test fuzz` (docs/testing.md).

use berth_launcher::{check_join_key, parse_env, ImageConfig, MountSpec, Policy};
use proptest::prelude::*;
use std::path::{Component, Path, PathBuf};

/// `n` cases unless `PROPTEST_CASES` asks for more (or fewer).
fn cases(n: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = n;
    }
    // Failures print their minimal input; nothing is written into the source tree.
    config.failure_persistence = None;
    // ChaCha (the default) dominates a debug build's run time; these tests need no crypto.
    config.rng_algorithm = proptest::test_runner::RngAlgorithm::XorShift;
    config
}

/// A fresh directory for one case (several proptest cases run in one process).
fn scratch() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "berth-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `file:LINE:` a policy error names, if it names one for `file`.
fn error_line(err: &str, file: &str) -> Option<usize> {
    let rest = err.split_once(&format!("{file}:"))?.1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn check_one_line(err: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(err.lines().count(), 1, "not one line: {:?}", err);
    Ok(())
}

// ---- Policy: raw bytes and text ----

/// Bytes that look like a policy now and then: TOML fragments, stray bytes, newlines.
fn policy_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"[[mount]]\n".to_vec()),
        Just(b"source = \"/lustre\"\n".to_vec()),
        Just(b"target = \"/x\"\n".to_vec()),
        Just(b"options = [\"ro\", \"bind\"]\n".to_vec()),
        Just(b"[runtime]\nmode = \"extract\"\n".to_vec()),
        Just(b"[env]\npassthrough = [\"SLURM_*\"]\n".to_vec()),
        Just(b"[gpu]\ndevices = [\"/dev/nvidia[0-9]*\"]\n".to_vec()),
        Just(b"# caf\xe9\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"[".to_vec()),
        Just(b"\xf0\x9f\x98".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(cases(256))]

    /// Through the file reader: never a panic; a non-UTF-8 file is refused at the line of its
    /// first invalid byte, found here independently, line by line.
    #[test]
    fn fuzz_policy_file_bytes(bytes in policy_bytes()) {
        let dir = scratch();
        let main = dir.join("berth.toml");
        std::fs::write(&main, &bytes).unwrap();
        let result = Policy::load(Some(&main));
        std::fs::remove_dir_all(&dir).unwrap();
        let bad_line = bytes
            .split(|&b| b == b'\n')
            .position(|l| std::str::from_utf8(l).is_err())
            .map(|i| i + 1);
        let Err(e) = result else {
            prop_assert!(bad_line.is_none(), "non-UTF-8 accepted");
            return Ok(());
        };
        let e = e.to_string();
        check_one_line(&e)?;
        let file = main.display().to_string();
        let line = error_line(&e, &file);
        prop_assert!(line.is_some(), "no {}:LINE in {:?}", file, e);
        match bad_line {
            Some(l) => {
                prop_assert_eq!(line, Some(l), "{:?}", e);
                prop_assert!(e.contains("is not UTF-8"), "{:?}", e);
            }
            None => {
                let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
                prop_assert!((1..=lines).contains(&line.unwrap()), "line out of range: {:?}", e);
            }
        }
    }

    /// Any text: never a panic, errors are `file:line` with a line inside the text.
    #[test]
    fn fuzz_policy_text(text in "(\\PC|\n|\\[|\\]|=|\"|'|\\{|\\}|,){0,200}") {
        let mut p = Policy::default();
        if let Err(e) = p.merge(Path::new("any.toml"), &text) {
            let e = e.to_string();
            check_one_line(&e)?;
            let line = error_line(&e, "any.toml");
            prop_assert!(line.is_some_and(|l| l >= 1 && l <= text.lines().count().max(1) + 1), "{:?}", e);
        }
    }
}

// ---- Policy: structured documents with one planted error ----

/// A valid item of a policy document (lines of TOML; `mount` items take their index).
#[derive(Debug, Clone)]
enum Good {
    Mount { opts: &'static str, target: bool },
    Blank,
    Comment,
}

/// A broken item, and the line (from its first) that the error must name.
#[derive(Debug, Clone, Copy)]
enum Bad {
    RelativeSource,
    RelativeTarget,
    ReservedTarget,
    DotDotTarget,
    UnknownOption,
    UnknownKey,
    GlobDevice,
    GlobLibrary,
    GlobPassthrough,
    UnknownMode,
    WrongType,
    RelativeAllowed,
    MpiVersion,
}

impl Bad {
    fn lines(self) -> (Vec<String>, usize) {
        let v = |l: &[&str], at: usize| (l.iter().map(|s| s.to_string()).collect(), at);
        match self {
            Bad::RelativeSource => v(&["[[mount]]", "source = \"lustre\""], 1),
            Bad::RelativeTarget => v(&["[[mount]]", "source = \"/a\"", "target = \"b\""], 2),
            Bad::ReservedTarget => v(&["[[mount]]", "source = \"/a\"", "target = \"/sys/x\""], 2),
            Bad::DotDotTarget => v(&["[[mount]]", "source = \"/a\"", "target = \"/x/../y\""], 2),
            Bad::UnknownOption => v(
                &[
                    "[[mount]]",
                    "source = \"/zz\"",
                    "options = [\"ro\", \"rx\"]",
                ],
                2,
            ),
            Bad::UnknownKey => v(&["[[mount]]", "source = \"/zz\"", "sourec = \"/y\""], 2),
            Bad::GlobDevice => v(
                &[
                    "[gpu]",
                    "devices = [\"/dev/nvidiactl\", \"/dev/nvidia[0-9\"]",
                ],
                1,
            ),
            Bad::GlobLibrary => v(
                &[
                    "[devices]",
                    "libraries = [",
                    "  \"libmlx5.so\",",
                    "  \"lib***.so\",",
                    "]",
                ],
                3,
            ),
            Bad::GlobPassthrough => v(&["[env]", "passthrough = [\"[SLURM\"]"], 1),
            Bad::UnknownMode => v(&["[runtime]", "linger = 3", "mode = \"copy\""], 2),
            Bad::WrongType => v(&["[runtime]", "linger = \"long\""], 1),
            Bad::RelativeAllowed => v(
                &["[user_mounts]", "allowed_sources = [\"/ok\", \"home\"]"],
                1,
            ),
            Bad::MpiVersion => v(&["[mpi]", "family = \"openmpi\"", "version = \"four\""], 2),
        }
    }
}

fn good() -> impl Strategy<Value = Good> {
    prop_oneof![
        4 => (prop::sample::select(vec!["", "options = [\"ro\"]", "options = [\"bind\", \"rw\"]", "optional = true"]), any::<bool>())
            .prop_map(|(opts, target)| Good::Mount { opts, target }),
        1 => Just(Good::Blank),
        1 => Just(Good::Comment),
    ]
}

fn bad() -> impl Strategy<Value = Bad> {
    prop::sample::select(vec![
        Bad::RelativeSource,
        Bad::RelativeTarget,
        Bad::ReservedTarget,
        Bad::DotDotTarget,
        Bad::UnknownOption,
        Bad::UnknownKey,
        Bad::GlobDevice,
        Bad::GlobLibrary,
        Bad::GlobPassthrough,
        Bad::UnknownMode,
        Bad::WrongType,
        Bad::RelativeAllowed,
        Bad::MpiVersion,
    ])
}

/// The document, and for each mount its target and header line.
fn render(items: &[Good]) -> (Vec<String>, Vec<(String, usize)>) {
    let mut lines = Vec::new();
    let mut mounts = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Good::Mount { opts, target } => {
                let t = format!("/site/m{i}");
                mounts.push((t.clone(), lines.len() + 1));
                lines.push("[[mount]]".to_string());
                if *target {
                    lines.push(format!("source = \"/src/{i}\""));
                    lines.push(format!("target = \"{t}\""));
                } else {
                    lines.push(format!("source = \"{t}\""));
                }
                if !opts.is_empty() {
                    lines.push(opts.to_string());
                }
            }
            Good::Blank => lines.push(String::new()),
            Good::Comment => lines.push("# a comment [[mount]] = \"x\"".to_string()),
        }
    }
    (lines, mounts)
}

proptest! {
    #![proptest_config(cases(256))]

    /// Valid documents parse, mounts in order with their header lines; one planted error
    /// anywhere is reported at exactly its line.
    #[test]
    fn fuzz_policy_structured(items in proptest::collection::vec(good(), 0..30), planted in proptest::option::of((bad(), any::<prop::sample::Index>()))) {
        let (mut lines, mounts) = render(&items);
        let mut p = Policy::default();
        let Some((bad, at)) = planted else {
            p.merge(Path::new("site.toml"), &lines.join("\n")).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got: Vec<(String, String)> = p.mounts.iter().map(|m| (m.target.clone(), m.origin.0.clone())).collect();
            let want: Vec<(String, String)> = mounts.iter().map(|(t, l)| (t.clone(), format!("site.toml:{l}"))).collect();
            prop_assert_eq!(got, want);
            return Ok(());
        };
        // Insert only between items: at a line that starts an item (or the end).
        let mut starts: Vec<usize> = vec![lines.len()];
        starts.extend(mounts.iter().map(|(_, l)| l - 1));
        let pos = starts[at.index(starts.len())];
        let (bad_lines, offset) = bad.lines();
        let want = pos + offset + 1;
        lines.splice(pos..pos, bad_lines);
        // A section header ends the section above it: mounts after it stay mounts.
        let text = lines.join("\n");
        let e = p.merge(Path::new("site.toml"), &text).expect_err("planted error accepted").to_string();
        check_one_line(&e)?;
        prop_assert_eq!(error_line(&e, "site.toml"), Some(want), "{:?}: {}\n{}", bad, e, text);
    }
}

/// What merging did before it was made linear: each mount removes any earlier one with its
/// target, then goes last.
fn merge_model(files: &[Vec<(String, usize)>]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (f, mounts) in files.iter().enumerate() {
        for (target, line) in mounts {
            out.retain(|(t, _)| t != target);
            out.push((target.clone(), format!("f{f}.toml:{line}")));
        }
    }
    out
}

proptest! {
    #![proptest_config(cases(128))]

    /// Several files with overlapping targets merge as the quadratic model did.
    #[test]
    fn fuzz_policy_merge_replaces_by_target(files in proptest::collection::vec(proptest::collection::btree_set(0u8..40, 0..25), 1..5), order in any::<u64>()) {
        let mut p = Policy::default();
        let mut placed = Vec::new();
        for (f, targets) in files.iter().enumerate() {
            // Each file lists its (distinct) targets in a scrambled order.
            let mut targets: Vec<u8> = targets.iter().copied().collect();
            targets.sort_by_key(|t| ((u64::from(*t) * 2654435761) ^ order) % 1009);
            let mut text = String::new();
            let mut mounts = Vec::new();
            for (i, t) in targets.iter().enumerate() {
                mounts.push((format!("/t/{t}"), 2 * i + 1));
                text.push_str(&format!("[[mount]]\nsource = \"/t/{t}\"\n"));
            }
            p.merge(Path::new(&format!("f{f}.toml")), &text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            placed.push(mounts);
        }
        let got: Vec<(String, String)> = p.mounts.iter().map(|m| (m.target.clone(), m.origin.0.clone())).collect();
        prop_assert_eq!(got, merge_model(&placed));
    }
}

// ---- Mount specs, --env, keys ----

fn parse_mount(spec: &str, cwd: &Path) -> Result<MountSpec, String> {
    MountSpec::parse(spec, cwd).map_err(|e| e.to_string())
}

/// options.rs echoes a bad spec as given, so a spec holding a newline gives a two-line error
/// (e.g. `--mount $'\n'`); until it escapes them, only inputs without control characters
/// are held to one line here.
fn check_one_line_unless_control(input: &[u8], err: &str) -> Result<(), TestCaseError> {
    if input.iter().any(u8::is_ascii_control) {
        return Ok(());
    }
    check_one_line(err)
}

fn spec_part() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("/data".to_string()),
        Just("rel/dir".to_string()),
        Just("/x/../etc".to_string()),
        Just("/a/./b".to_string()),
        Just("/proc".to_string()),
        Just("/dev/shm".to_string()),
        Just("/".to_string()),
        Just("ro".to_string()),
        Just("ro,bind".to_string()),
        Just("rw,,rbind".to_string()),
        Just("nosuid".to_string()),
        "\\PC{0,12}",
        "[/a-z.]{0,12}",
    ]
}

proptest! {
    #![proptest_config(cases(512))]

    /// Any spec: never a panic; an accepted one has a safe target and came from its parts.
    #[test]
    fn fuzz_mount_spec(parts in proptest::collection::vec(spec_part(), 1..5), cwd in prop_oneof![Just("/home/u"), Just("/")]) {
        let spec = parts.join(":");
        // A generated part may hold a ':' itself: the model splits as the parser does.
        let parts: Vec<&str> = spec.split(':').collect();
        match parse_mount(&spec, Path::new(cwd)) {
            Err(e) => check_one_line_unless_control(spec.as_bytes(), &e)?,
            Ok(m) => {
                prop_assert!(parts.len() <= 3 && parts.iter().take(2).all(|p| !p.is_empty()));
                prop_assert!(m.target.is_absolute(), "{:?}", m);
                prop_assert!(m.target.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))), "{:?}", m);
                for reserved in ["/proc", "/sys", "/dev"] {
                    prop_assert!(!m.target.starts_with(reserved), "{:?}", m);
                }
                prop_assert!(m.target != Path::new("/"));
                prop_assert_eq!(&m.source, &Path::new(cwd).join(parts[0]));
                let opts: Vec<&str> = parts.get(2).map_or(vec![], |o| o.split(',').collect());
                let last = |a: &str, b: &str, default: bool| {
                    opts.iter().rev().find(|o| **o == a || **o == b).map_or(default, |o| *o == a)
                };
                prop_assert_eq!(m.readonly, last("ro", "rw", false));
                prop_assert_eq!(m.recursive, last("rbind", "bind", true));
            }
        }
    }

    /// Specs and `--env` values are OsStrings: any bytes, never a panic.
    #[test]
    fn fuzz_mount_spec_and_env_bytes(bytes in proptest::collection::vec(prop_oneof![Just(b':'), Just(b'/'), Just(b','), Just(b'='), any::<u8>()], 0..32)) {
        use std::os::unix::ffi::OsStrExt;
        let raw = std::ffi::OsStr::from_bytes(&bytes);
        match MountSpec::parse(raw, Path::new("/home/u")) {
            Ok(m) => prop_assert!(m.target.is_absolute() && !m.target.starts_with("/proc")),
            Err(e) => check_one_line_unless_control(&bytes, &e.to_string())?,
        }
        match parse_env(raw) {
            Ok((k, v)) => {
                let mut joined = k.as_bytes().to_vec();
                joined.push(b'=');
                joined.extend_from_slice(v.as_bytes());
                prop_assert_eq!(joined, bytes);
                prop_assert!(!k.is_empty() && !k.as_bytes().contains(&b'='));
            }
            Err(e) => check_one_line_unless_control(&bytes, &e.to_string())?,
        }
    }

    #[test]
    fn fuzz_env_and_keys(s in "\\PC{0,40}|[A-Za-z_0-9=.-]{0,20}") {
        match parse_env(&s) {
            Ok((k, v)) => {
                prop_assert_eq!(format!("{}={}", k.to_string_lossy(), v.to_string_lossy()), s.clone());
                prop_assert!(!k.is_empty());
            }
            Err(e) => check_one_line_unless_control(s.as_bytes(), &e.to_string())?,
        }
        if check_join_key(&s).is_ok() {
            prop_assert!(!s.is_empty() && s.len() <= 100 && !s.starts_with('.') && !s.contains('/'));
        }
    }
}

// ---- image.json ----

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,10}".prop_map(Value::String),
    ];
    let key = prop_oneof![
        prop::sample::select(vec![
            "schemaVersion",
            "config",
            "source",
            "Env",
            "Entrypoint",
            "Cmd",
            "WorkingDir",
            "Labels",
        ])
        .prop_map(String::from),
        "\\PC{0,6}",
    ];
    leaf.prop_recursive(4, 40, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(cases(512))]

    /// JSON of the right shape now and then: never a panic; accepted configs round-trip.
    #[test]
    fn fuzz_image_config(v in json_value(), schema in prop_oneof![Just(None), Just(Some(1u32)), any::<u32>().prop_map(Some)]) {
        let mut v = v;
        if let (Some(s), Some(obj)) = (schema, v.as_object_mut()) {
            obj.insert("schemaVersion".into(), s.into());
        }
        if let Ok(c) = ImageConfig::parse(&v.to_string()) {
            prop_assert_eq!(c.schema_version, 1);
            prop_assert_eq!(ImageConfig::parse(&c.to_json()).unwrap(), c);
        }
    }

    #[test]
    fn fuzz_image_config_text(s in "\\PC{0,64}|\\{\"schemaVersion\":1,\"config\":\\{\"(Env|Cmd)\":\\[\"\\PC{0,8}\"\\]\\}\\}") {
        if let Err(e) = ImageConfig::parse(&s) {
            check_one_line(&e)?;
        }
    }
}

/// Nesting far deeper than any config: refused by serde_json's depth limit, not a stack overflow.
#[test]
fn fuzz_image_config_deep_nesting() {
    for open in ["[", "{\"a\":"] {
        let text = open.repeat(100_000);
        assert!(ImageConfig::parse(&text).is_err());
    }
}
