//! Property tests of layer application with hostile archives: `..` and absolute names,
//! symlinks then writes through them, hardlinks to outside, whiteouts of `.` and `..`, huge
//! and non-UTF-8 names, duplicates, directory/file swaps. Whatever the layers hold, the
//! unpacker may fail but must not panic, and nothing outside its root may change: a decoy
//! directory beside the root is compared byte for byte before and after.
//!
//! Only the unpacker's public API is used. Longer run:
//! `PROPTEST_CASES=20000 cargo test --release -p berth-image fuzz` (docs/testing.md).

use crate::unpack::Unpacker;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

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

// ---- A tar writer that writes names as given (the tar crate's builder refuses `..`) ----

#[derive(Debug, Clone)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Fifo,
}

#[derive(Debug, Clone)]
struct Entry {
    name: Vec<u8>,
    kind: Kind,
    mode: u32,
}

fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let digits = format!("{value:0width$o}");
    field[..width].copy_from_slice(&digits.as_bytes()[digits.len() - width..]);
    field[width] = 0;
}

fn header(name: &[u8], link: &[u8], kind: u8, size: u64, mode: u32) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = kind;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..265].copy_from_slice(b"ustar  \0");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    octal(&mut h[148..155], u64::from(sum));
    h[155] = b' ';
    h
}

fn push_data(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// GNU long name/link records for what does not fit in 100 bytes.
fn push_long(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    if value.len() >= 100 {
        let mut data = value.to_vec();
        data.push(0);
        out.extend_from_slice(&header(
            b"././@LongLink",
            b"",
            kind,
            data.len() as u64,
            0o644,
        ));
        push_data(out, &data);
    }
}

fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        push_long(&mut out, b'L', &e.name);
        let (kind, link, data): (u8, &[u8], &[u8]) = match &e.kind {
            Kind::File(d) => (b'0', b"", d),
            Kind::Dir => (b'5', b"", b""),
            Kind::Symlink(t) => (b'2', t, b""),
            Kind::Hardlink(t) => (b'1', t, b""),
            Kind::Fifo => (b'6', b"", b""),
        };
        push_long(&mut out, b'K', link);
        out.extend_from_slice(&header(&e.name, link, kind, data.len() as u64, e.mode));
        push_data(&mut out, data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

// ---- The hostile generator ----

/// The case's layout: `base/root` (unpacked into) and `base/decoy` (must not change).
struct Case {
    base: PathBuf,
}

impl Case {
    fn new() -> Case {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir().join(format!(
            "berth-fuzz-unpack-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("root")).unwrap();
        std::fs::create_dir_all(base.join("decoy/sub")).unwrap();
        std::fs::write(base.join("decoy/secret"), b"decoy secret").unwrap();
        std::fs::write(base.join("decoy/sub/file"), b"decoy file").unwrap();
        std::os::unix::fs::symlink("secret", base.join("decoy/link")).unwrap();
        std::fs::write(base.join("beside-root"), b"beside").unwrap();
        Case { base }
    }

    /// Everything under `base` but the root: type, mode, size, content or link target.
    fn outside(&self) -> BTreeMap<PathBuf, String> {
        let mut seen = BTreeMap::new();
        let mut stack = vec![self.base.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let path = e.unwrap().path();
                if path == self.base.join("root") {
                    continue;
                }
                let meta = std::fs::symlink_metadata(&path).unwrap();
                let what = if meta.is_dir() {
                    stack.push(path.clone());
                    format!("dir {:o}", meta.mode())
                } else if meta.file_type().is_symlink() {
                    format!("link {:?}", std::fs::read_link(&path).unwrap())
                } else {
                    format!(
                        "file {:o} {} {:?}",
                        meta.mode(),
                        meta.nlink(),
                        std::fs::read(&path).unwrap()
                    )
                };
                seen.insert(path, what);
            }
        }
        seen
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        // The unpacker keeps its directories u+rwx, so this always works.
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Name parts a hostile layer would use; `{DECOY}` becomes the decoy's real absolute path.
fn component() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Mostly plain names: a layer stops at its first refused entry, and the entries after
        // it are the ones that build on what came before.
        12 => prop::sample::select(vec!["a", "b", "l", "h", "decoy", "root", "secret"]).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::sample::select(vec!["..", ".", ""]).prop_map(|s| s.as_bytes().to_vec()),
        2 => prop::sample::select(vec![".wh.a", ".wh.l", ".wh..wh..opq", ".wh.", ".wh.decoy", ".wh..", ".wh..."]).prop_map(|s| s.as_bytes().to_vec()),
        1 => Just(vec![b'x'; 300]),
        1 => Just(b"caf\xe9".to_vec()),
        1 => proptest::collection::vec(any::<u8>().prop_filter("no NUL or /", |b| *b != 0 && *b != b'/'), 1..6),
    ]
}

fn name(decoy: &[u8]) -> impl Strategy<Value = Vec<u8>> {
    let decoy = decoy.to_vec();
    (
        prop_oneof![
            20 => Just(Vec::new()),
            1 => Just(b"/".to_vec()),
            1 => Just(b"./".to_vec()),
            1 => Just(decoy),
        ],
        proptest::collection::vec(component(), 1..4),
    )
        .prop_map(|(prefix, parts)| {
            let mut n = prefix;
            if !n.is_empty() && !n.ends_with(b"/") {
                n.push(b'/');
            }
            n.extend(parts.join(&b'/'));
            n
        })
}

fn link_target(decoy: &[u8]) -> impl Strategy<Value = Vec<u8>> {
    let d = decoy.to_vec();
    let secret = [decoy, b"/secret"].concat();
    prop_oneof![
        prop::sample::select(vec![
            b"..".to_vec(),
            b"../..".to_vec(),
            b"../decoy".to_vec(),
            b"../decoy/secret".to_vec(),
            b"../../decoy".to_vec(),
            b"/".to_vec(),
            b"/decoy".to_vec(),
            b"a".to_vec(),
            b"l".to_vec(),
            b"l/secret".to_vec(),
            b".".to_vec(),
            b"".to_vec(),
            vec![b'y'; 200],
        ]),
        Just(d),
        Just(secret),
        name(decoy),
    ]
}

fn entry(decoy: &[u8]) -> impl Strategy<Value = Entry> {
    let kind = prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Kind::File),
        2 => Just(Kind::Dir),
        2 => link_target(decoy).prop_map(Kind::Symlink),
        2 => link_target(decoy).prop_map(Kind::Hardlink),
        1 => Just(Kind::Fifo),
    ];
    (
        name(decoy),
        kind,
        prop::sample::select(vec![0o644u32, 0o755, 0o4755, 0o000, 0o7777]),
    )
        .prop_map(|(name, kind, mode)| Entry { name, kind, mode })
}

/// A classic escape (symlink out, then write through it...) or random entries.
fn layer(decoy: &[u8]) -> impl Strategy<Value = Vec<Entry>> {
    let d = decoy.to_vec();
    let classic = prop_oneof![
        Just(vec![
            Entry {
                name: b"l".to_vec(),
                kind: Kind::Symlink(d.clone()),
                mode: 0o777
            },
            Entry {
                name: b"l/secret".to_vec(),
                kind: Kind::File(b"pwned".to_vec()),
                mode: 0o644
            },
        ]),
        Just(vec![
            Entry {
                name: b"l".to_vec(),
                kind: Kind::Symlink(b"../decoy".to_vec()),
                mode: 0o777
            },
            Entry {
                name: b"l/sub/new".to_vec(),
                kind: Kind::File(b"pwned".to_vec()),
                mode: 0o644
            },
            Entry {
                name: b"l/.wh.secret".to_vec(),
                kind: Kind::File(Vec::new()),
                mode: 0o644
            },
            Entry {
                name: b"l/.wh..wh..opq".to_vec(),
                kind: Kind::File(Vec::new()),
                mode: 0o644
            },
        ]),
        Just(vec![Entry {
            name: b"h".to_vec(),
            kind: Kind::Hardlink(b"../decoy/secret".to_vec()),
            mode: 0o644
        },]),
        Just(vec![
            Entry {
                name: b"a".to_vec(),
                kind: Kind::Dir,
                mode: 0o755
            },
            Entry {
                name: b"a".to_vec(),
                kind: Kind::File(b"now a file".to_vec()),
                mode: 0o644
            },
            Entry {
                name: b"a/x".to_vec(),
                kind: Kind::File(b"x".to_vec()),
                mode: 0o644
            },
        ]),
        Just(Vec::new()),
    ];
    prop_oneof![
        1 => classic,
        3 => proptest::collection::vec(entry(decoy), 1..8),
    ]
}

/// The decoy's absolute path as a case will make it (the counter is not known in advance:
/// the generator uses a stable stand-in that each case links to its own decoy).
fn decoy_stand_in() -> PathBuf {
    std::env::temp_dir().join(format!("berth-fuzz-unpack-decoy-{}", std::process::id()))
}

fn apply_all(case: &Case, layers: &[Vec<Entry>]) -> Vec<Result<(), String>> {
    let mut u = Unpacker::new(&case.base.join("root")).unwrap();
    u.set_max_size(1 << 20);
    layers
        .iter()
        .map(|l| u.apply(&tar(l)[..], &|| false).map(|_| ()))
        .collect()
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn fuzz_unpack_hostile_layers(layers in proptest::collection::vec(layer(decoy_stand_in().as_os_str().as_bytes()), 1..5)) {
        let case = Case::new();
        // Absolute link targets name the stand-in, which points at this case's decoy.
        let stand_in = decoy_stand_in();
        let _ = std::fs::remove_file(&stand_in);
        std::os::unix::fs::symlink(case.base.join("decoy"), &stand_in).unwrap();
        let before = case.outside();
        let results = apply_all(&case, &layers);
        let after = case.outside();
        std::fs::remove_file(&stand_in).unwrap();
        prop_assert_eq!(before, after, "something outside the root changed; results {:?}", results);
        // Errors are one line, except that names are echoed as they are: a name with a
        // newline gives a two-line error today (reported, not unpack.rs's caller's problem).
        let control = |b: &[u8]| b.iter().any(u8::is_ascii_control);
        let plain = layers.iter().flatten().all(|e| {
            !control(&e.name) && !matches!(&e.kind, Kind::Symlink(t) | Kind::Hardlink(t) if control(t))
        });
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            prop_assert!(!plain || r.lines().count() == 1, "not one line: {:?}", r);
        }
    }

    /// Arbitrary bytes as a layer: an error, never a panic or a write outside.
    #[test]
    fn fuzz_unpack_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..4096), tarry in any::<bool>()) {
        let case = Case::new();
        // Half the time, a valid header first so the reader gets past the start.
        let mut data = if tarry { tar(&[Entry { name: b"ok".to_vec(), kind: Kind::File(b"1".to_vec()), mode: 0o644 }]) } else { Vec::new() };
        data.truncate(data.len().saturating_sub(1024));
        data.extend_from_slice(&bytes);
        let before = case.outside();
        let mut u = Unpacker::new(&case.base.join("root")).unwrap();
        let _ = u.apply(&data[..], &|| false);
        prop_assert_eq!(before, case.outside());
    }
}

/// A whiteout named `..` (`.wh...`) or `.` (`.wh..`) names no file of the layer below: it
/// must not remove the root's parent's contents (the decoy) or the root's.
#[test]
fn fuzz_unpack_whiteouts_of_dot_and_dot_dot() {
    for name in [&b".wh..."[..], b".wh..", b"a/.wh...", b"a/.wh.."] {
        let case = Case::new();
        let before = case.outside();
        let layers = vec![
            vec![
                Entry {
                    name: b"a/keep".to_vec(),
                    kind: Kind::File(b"k".to_vec()),
                    mode: 0o644,
                },
                Entry {
                    name: b"top".to_vec(),
                    kind: Kind::File(b"t".to_vec()),
                    mode: 0o644,
                },
            ],
            vec![Entry {
                name: name.to_vec(),
                kind: Kind::File(Vec::new()),
                mode: 0o644,
            }],
        ];
        let results = apply_all(&case, &layers);
        assert_eq!(
            before,
            case.outside(),
            "{}: {results:?}",
            String::from_utf8_lossy(name)
        );
        let root = case.base.join("root");
        assert!(
            root.join("a/keep").exists() && root.join("top").exists(),
            "{}: {results:?}",
            String::from_utf8_lossy(name)
        );
    }
}

#[test]
fn writer_round_trips_through_the_tar_crate() {
    let long = vec![b'n'; 150];
    let data = tar(&[
        Entry {
            name: long.clone(),
            kind: Kind::File(b"abc".to_vec()),
            mode: 0o644,
        },
        Entry {
            name: b"../up".to_vec(),
            kind: Kind::Symlink(vec![b't'; 120]),
            mode: 0o777,
        },
    ]);
    let mut a = tar::Archive::new(&data[..]);
    let names: Vec<(Vec<u8>, Option<Vec<u8>>)> = a
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path_bytes().into_owned(),
                e.link_name_bytes().map(|l| l.into_owned()),
            )
        })
        .collect();
    assert_eq!(names[0].0, long);
    assert_eq!(names[1], (b"../up".to_vec(), Some(vec![b't'; 120])));
}

// ---- The merge (streamed import) against the unpacker ----

/// What a tree holds, path by path: directory modes, file modes and contents, link targets.
type Listing = BTreeMap<PathBuf, String>;

fn listing_on_disk(root: &std::path::Path) -> Listing {
    let mut seen = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {:o}", meta.mode() & 0o7777)
            } else if meta.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&path).unwrap())
            } else {
                format!(
                    "file {:o} {:?}",
                    meta.mode() & 0o7777,
                    std::fs::read(&path).unwrap()
                )
            };
            seen.insert(path.strip_prefix(root).unwrap().to_path_buf(), what);
        }
    }
    seen
}

fn listing_of_tree(tree: &crate::merge::Tree, tars: &[Vec<u8>]) -> Listing {
    use crate::merge::{Data, Node};
    use std::io::Read;
    let mut seen = BTreeMap::new();
    tree.walk(|path, node| {
        if path.as_os_str().is_empty() {
            return Ok::<(), ()>(());
        }
        let what = match node {
            Node::Dir { mode, .. } => format!("dir {mode:o}"),
            Node::Symlink { target, .. } => format!("link {target:?}"),
            Node::File {
                data: Data::Layer { layer, entry },
                mode,
                ..
            } => {
                let mut a = tar::Archive::new(&tars[*layer as usize][..]);
                let mut e = a.entries().unwrap().nth(*entry as usize).unwrap().unwrap();
                let mut content = Vec::new();
                e.read_to_end(&mut content).unwrap();
                format!("file {mode:o} {content:?}")
            }
            Node::File { .. } => unreachable!("no config in these tests"),
        };
        seen.insert(path.to_path_buf(), what);
        Ok(())
    })
    .unwrap();
    seen
}

/// The layers merged in memory, each layer's result as the unpacker would give it.
fn merge_all(tars: &[Vec<u8>]) -> (crate::merge::Tree, Vec<Result<(), String>>) {
    let mut tree = crate::merge::Tree::new(0);
    tree.set_max_size(1 << 20);
    let results = tars
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (entries, _) = crate::merge::scan(&t[..], &|| false, 1 << 20)?;
            tree.apply(i as u32, &entries).map(|_| ())
        })
        .collect();
    (tree, results)
}

proptest! {
    #![proptest_config(cases(512))]

    /// The streamed import's merge gives the image the unpacker gives, layer errors included.
    #[test]
    fn fuzz_merge_matches_unpacker(layers in proptest::collection::vec(layer(decoy_stand_in().as_os_str().as_bytes()), 1..5)) {
        // The unpacker resolves inside its root, so the decoy's stand-in is not needed here.
        let case = Case::new();
        let unpacked = apply_all(&case, &layers);
        let tars: Vec<Vec<u8>> = layers.iter().map(|l| tar(l)).collect();
        let (tree, merged) = merge_all(&tars);
        prop_assert_eq!(&unpacked, &merged);
        prop_assert_eq!(listing_on_disk(&case.base.join("root")), listing_of_tree(&tree, &tars));
    }
}
