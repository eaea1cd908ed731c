//! The reader against mksquashfs and unsquashfs (a corpus of trees with every inode type, each
//! codec and block size), against hand-built images, and against hostile images (truncations,
//! bit flips, proptest). Longer fuzzing: see docs/testing.md.

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const CACHE: usize = 8 << 20;

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("berth-sqfs-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn have_tools() -> bool {
    let ok = |tool: &str| Command::new(tool).arg("-version").output().is_ok();
    if ok("mksquashfs") && ok("unsquashfs") {
        return true;
    }
    eprintln!(
        "skipped: mksquashfs or unsquashfs is not installed (apt-get install squashfs-tools)"
    );
    false
}

/// Deterministic bytes: `xorshift` noise (incompressible) or text (compressible).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn text(len: usize) -> Vec<u8> {
    let line = b"squashfs block boundary test line, a little text to compress 0123456789\n";
    line.iter().copied().cycle().take(len).collect()
}

fn touch(path: &Path, mtime: u32) {
    let ok = Command::new("touch")
        .arg("-h")
        .arg("-d")
        .arg(format!("@{mtime}"))
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "touch {}", path.display());
}

fn set_xattr(path: &Path, name: &str) {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and a 3-byte value; failure (no privilege) is ignored.
    unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), b"yes".as_ptr().cast(), 3, 0) };
}

/// A source tree with every inode type an unprivileged user can make (devices come from
/// pseudo definitions, see `PSEUDO`).
fn build_tree(root: &Path) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    for (i, size) in [
        0usize,
        1,
        4095,
        4096,
        4097,
        12288,
        131071,
        131072,
        131073,
        (1 << 20) + 1,
    ]
    .into_iter()
    .enumerate()
    {
        let mut data = noise(i as u64 + 7, size);
        // Half text, so blocks come both compressed and stored.
        let half = size / 2;
        data[..half].copy_from_slice(&text(half));
        w(&format!("sizes/s{size}"), &data);
    }
    let mut multi = text(1 << 20);
    multi.extend(noise(99, (1 << 20) + 333));
    multi.extend(text(300_000));
    w("multi", &multi);
    // Sparse: holes at the start, between and after two islands.
    let sparse = root.join("sparse");
    let f = std::fs::File::create(&sparse).unwrap();
    f.set_len(3 << 20).unwrap();
    f.write_all_at(&noise(5, 5000), (1 << 20) + 100).unwrap();
    f.write_all_at(b"tail", (3 << 20) - 4).unwrap();
    drop(f);
    w("dir/sub/deep/file", b"deep\n");
    w("dir/sub/empty-sibling", b"");
    std::fs::create_dir_all(root.join("dir/emptydir")).unwrap();
    std::fs::hard_link(root.join("sizes/s4097"), root.join("dir/hard")).unwrap();
    std::fs::hard_link(root.join("sizes/s4097"), root.join("dir/sub/hard2")).unwrap();
    std::os::unix::fs::symlink("../sizes/s1", root.join("dir/short")).unwrap();
    let long: String = (0..60).map(|i| format!("d{i:03}/")).collect::<String>() + "end";
    assert!(long.len() > 255);
    std::os::unix::fs::symlink(&long, root.join("dir/long")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dir/dangling")).unwrap();
    let fifo = std::ffi::CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    drop(std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap());
    for i in 0..3000 {
        let data = if i % 500 == 0 {
            noise(i, 3000)
        } else {
            Vec::new()
        };
        w(
            &format!("big/entry-{i:05}-{}", "x".repeat(i as usize % 7)),
            &data,
        );
    }
    let names = root.join("names");
    std::fs::create_dir_all(&names).unwrap();
    for name in [
        &b"caf\xe9"[..],
        b"\xff\xfe",
        b"with space",
        "\u{fc}n\u{ef}code".as_bytes(),
        &[b'n'; 255],
    ] {
        std::fs::write(names.join(OsStr::from_bytes(name)), name).unwrap();
    }
    // Extended inodes: xattrs (user.* on files and dirs; trusted.* where we are root).
    set_xattr(&root.join("sizes/s1"), "user.berth");
    set_xattr(&root.join("dir"), "user.berth");
    for p in ["dir/short", "fifo", "sock"] {
        set_xattr(&root.join(p), "trusted.berth");
    }
    touch(&root.join("sizes/s1"), 1);
    touch(&root.join("sizes/s0"), 4_000_000_000);
    touch(&root.join("dir/short"), 1_234_567_890);
    touch(&root.join("dir/sub"), 987_654_321);
}

/// Devices, owners and modes that need no privilege through mksquashfs pseudo definitions.
const PSEUDO: &[&str] = &[
    "null c 666 0 0 1 3",
    "sda b 660 0 6 8 0",
    "bigdev c 600 0 0 300 70000",
    "sizes/s4095 m 4755 1000 100",
    "dir m 2750 4242 4343",
    "dir/emptydir m 1777 0 0",
    "sizes/s0 m 000 65534 65534",
];

fn mksquashfs(src: &Path, img: &Path, args: &[&str]) {
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(src)
        .arg(img)
        .args(["-noappend", "-quiet", "-no-progress"])
        .args(args);
    for p in PSEUDO {
        cmd.arg("-p").arg(p);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "mksquashfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- Our listing, in the shape of `unsquashfs -lln -UTC -d ''` ----

#[derive(Debug, PartialEq, Eq, Clone)]
struct Line {
    perm: String,
    owner: String,
    size: String,
    time: String,
    target: Option<Vec<u8>>,
}

fn perm(kind: Kind, mode: u16) -> String {
    let t = match kind {
        Kind::Dir => 'd',
        Kind::File => '-',
        Kind::Symlink => 'l',
        Kind::BlockDev => 'b',
        Kind::CharDev => 'c',
        Kind::Fifo => 'p',
        Kind::Socket => 's',
    };
    let mut s = String::from(t);
    for (shift, special, lower, upper) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (mode & special != 0, x) {
            (true, true) => lower,
            (true, false) => upper,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// "YYYY-MM-DD HH:MM" in UTC (days to civil date: Howard Hinnant's algorithm).
fn utc_minute(t: u32) -> String {
    let secs = i64::from(t);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

fn line_of(a: &Archive, inode: &Inode) -> Line {
    let size = match inode.kind {
        Kind::BlockDev | Kind::CharDev => {
            // As unsquashfs 4.5 prints it (the old 8-bit minor split; the kernel's is below).
            format!("{},{}", inode.rdev >> 8, inode.rdev & 0xff)
        }
        _ => inode.size.to_string(),
    };
    Line {
        perm: perm(inode.kind, inode.mode),
        owner: format!("{}/{}", inode.uid, inode.gid),
        size,
        time: utc_minute(inode.mtime),
        target: (inode.kind == Kind::Symlink).then(|| a.read_link(inode).unwrap()),
    }
}

/// Parses `unsquashfs -lln -UTC -d '' IMG`: "perm uid/gid size date time path[ -> target]".
fn parse_lln(out: &[u8]) -> BTreeMap<Vec<u8>, Line> {
    let mut map = BTreeMap::new();
    for raw in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut rest = raw;
        let mut token = || {
            let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
            let s = &rest[start..];
            let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
            rest = &s[end..];
            String::from_utf8(s[..end].to_vec()).unwrap()
        };
        let perm = token();
        let owner = token();
        let mut size = token();
        if perm.starts_with(['b', 'c']) && size.ends_with(',') {
            size = format!("{size}{}", token());
        }
        let time = format!("{} {}", token(), token());
        let path = rest.strip_prefix(b" ").unwrap_or(rest);
        let (path, target) = match path.windows(4).position(|w| w == b" -> ") {
            Some(i) if perm.starts_with('l') => (&path[..i], Some(path[i + 4..].to_vec())),
            _ => (path, None),
        };
        map.insert(
            path.to_vec(),
            Line {
                perm,
                owner,
                size,
                time,
                target,
            },
        );
    }
    map
}

// ---- Walking an image through the API ----

/// A directory entry as read_dir gave it: name, reference, kind, cookie, inode number.
type Listed = (Vec<u8>, InodeRef, Kind, u64, u32);

struct Walk {
    /// path ("" for the root, "/a/b" below it) -> inode
    inodes: BTreeMap<Vec<u8>, Inode>,
    /// directory path -> its entries (name, reference, kind, cookie) in read_dir order
    dirs: BTreeMap<Vec<u8>, Vec<Listed>>,
}

/// Walks the whole tree; `max` bounds the entries (hostile images may hold cycles).
fn walk(a: &Archive, max: usize) -> Result<Walk, SquashError> {
    let mut w = Walk {
        inodes: BTreeMap::new(),
        dirs: BTreeMap::new(),
    };
    let root = a.inode(a.root())?;
    let mut stack = vec![(Vec::new(), root)];
    let mut seen = HashSet::new();
    while let Some((path, inode)) = stack.pop() {
        if inode.kind == Kind::Dir && seen.insert(inode.reference) {
            let mut entries = Vec::new();
            a.read_dir(&inode, 0, &mut |e| {
                entries.push((e.name.to_vec(), e.inode, e.kind, e.cookie, e.number));
                entries.len() < max
            })?;
            for (name, r, ..) in &entries {
                if w.inodes.len() + stack.len() >= max {
                    break;
                }
                let mut p = path.clone();
                p.push(b'/');
                p.extend_from_slice(name);
                stack.push((p, a.inode(*r)?));
            }
            w.dirs.insert(path.clone(), entries);
        }
        w.inodes.insert(path, inode);
    }
    Ok(w)
}

/// Reads a whole file in `chunk`-sized reads, at most `cap` bytes.
fn read_all(a: &Archive, inode: &Inode, chunk: u32, cap: u64) -> Result<Vec<u8>, SquashError> {
    let mut out = Vec::new();
    loop {
        let before = out.len();
        a.read(inode, before as u64, chunk, &mut out)?;
        if out.len() == before || out.len() as u64 >= cap {
            return Ok(out);
        }
    }
}

fn open(img: &Path) -> Archive {
    let started = std::time::Instant::now();
    let a = Archive::open(std::fs::File::open(img).unwrap(), 0, CACHE).unwrap();
    eprintln!("open {}: {:?}", img.display(), started.elapsed());
    a
}

/// Checks the reader against unsquashfs on one image: listing, contents, lookups, cookies,
/// reads at unaligned offsets across block boundaries.
fn check_image(img: &Path, work: &Path, full: bool) {
    let a = open(img);
    let w = walk(&a, usize::MAX).unwrap();

    let lln = Command::new("unsquashfs")
        .args(["-lln", "-UTC", "-d", ""])
        .arg(img)
        .output()
        .unwrap();
    assert!(lln.status.success());
    let want = parse_lln(&lln.stdout);
    let got: BTreeMap<Vec<u8>, Line> = w
        .inodes
        .iter()
        .map(|(p, i)| (p.clone(), line_of(&a, i)))
        .collect();
    let only = |a: &BTreeMap<Vec<u8>, Line>, b: &BTreeMap<Vec<u8>, Line>| -> Vec<String> {
        a.keys()
            .filter(|k| !b.contains_key(*k))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    };
    assert_eq!(
        got.len(),
        want.len(),
        "{}: only ours {:?}, only unsquashfs's {:?}",
        img.display(),
        only(&got, &want),
        only(&want, &got)
    );
    for (path, line) in &want {
        assert_eq!(
            got.get(path),
            Some(line),
            "{}: {}",
            img.display(),
            String::from_utf8_lossy(path)
        );
    }

    let out = work.join("x");
    let _ = std::fs::remove_dir_all(&out);
    // Devices fail to extract without privilege; the files are what is compared here.
    let x = Command::new("unsquashfs")
        .args(["-no-progress", "-no-xattrs", "-d"])
        .arg(&out)
        .arg(img)
        .output()
        .unwrap();
    let bs = a.block_size();
    let mut stored = 0;
    for (path, inode) in &w.inodes {
        let host = out.join(OsStr::from_bytes(&path[1.min(path.len())..]));
        if inode.kind == Kind::File {
            let want = std::fs::read(&host).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; unsquashfs: {}",
                    host.display(),
                    String::from_utf8_lossy(&x.stderr)
                )
            });
            // Unaligned reads (through the block cache), then whole blocks (straight into the
            // reply, or from the cache where the first pass left them).
            for chunk in [bs + 1234, 2 * bs] {
                let got = read_all(&a, inode, chunk, u64::MAX).unwrap();
                assert!(
                    got == want,
                    "{}: contents of {} in reads of {chunk}",
                    img.display(),
                    String::from_utf8_lossy(path)
                );
            }
            // Into a reused buffer that holds old bytes, as the server's does: every byte
            // returned is written (sparse blocks too), none is left from the last read.
            let mut dirty = vec![0xaau8; 2 * bs as usize + 7];
            let mut got = Vec::new();
            loop {
                let n = a.read_into(inode, got.len() as u64, &mut dirty).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&dirty[..n]);
            }
            assert!(
                got == want,
                "{}: contents of {} through a reused buffer",
                img.display(),
                String::from_utf8_lossy(path)
            );
            // What a spliced reply sends: the image file's bytes where the reader says a
            // range is stored as it is, at the kernel's readahead windows and unaligned.
            let size = want.len() as u64;
            let b = u64::from(bs);
            let blocks = (0..size.div_ceil(b)).flat_map(|k| [(k * b, b), (k * b + 100, 4096)]);
            let windows = [
                (0, 128 << 10),
                (4095, 128 << 10),
                (size / 2, 1 << 20),
                (0, size),
            ];
            for (from, len) in windows.into_iter().chain(blocks) {
                let Some((pos, n)) = a.stored_range(inode, from, len).unwrap() else {
                    continue;
                };
                let mut raw = vec![0u8; n as usize];
                a.image_file().read_exact_at(&mut raw, pos).unwrap();
                let end = (from + len).min(size);
                assert!(
                    raw == want[from as usize..end as usize],
                    "{}: stored range {from}+{len} of {}",
                    img.display(),
                    String::from_utf8_lossy(path)
                );
                stored += 1;
            }
            if !full {
                continue;
            }
            let meta = std::fs::symlink_metadata(&host).unwrap();
            use std::os::unix::fs::MetadataExt;
            // Exact times (the listing has minutes), and links as extracted.
            assert_eq!(i64::from(inode.mtime), meta.mtime());
            assert_eq!(u64::from(inode.nlink), meta.nlink());
            // Unaligned reads around every block boundary, and past the end.
            let size = want.len() as u64;
            let mut k = u64::from(bs);
            while k < size + u64::from(bs) {
                for (back, len) in [(1u64, 2u32), (100, 300), (3, u32::from(u16::MAX))] {
                    let from = k.saturating_sub(back);
                    let mut got = vec![0xaa];
                    a.read(inode, from, len, &mut got).unwrap();
                    let end = (from + u64::from(len)).min(size).max(from.min(size));
                    let from = from.min(size);
                    assert_eq!(
                        &got[1..],
                        &want[from as usize..end as usize],
                        "{} at {from}",
                        img.display()
                    );
                }
                k += u64::from(bs);
            }
            let mut none = Vec::new();
            a.read(inode, size, 10, &mut none).unwrap();
            a.read(inode, u64::MAX - 5, 10, &mut none).unwrap();
            assert!(none.is_empty());
        } else if inode.kind == Kind::Symlink {
            let target = std::fs::read_link(&host).unwrap();
            assert_eq!(a.read_link(inode).unwrap(), target.as_os_str().as_bytes());
        }
    }

    // The tree's noise files are incompressible: whole blocks of them are stored as they are.
    assert!(stored > 0, "{}: no stored range found", img.display());

    // Lookups find every entry, and nothing else; cookies resume after their entry.
    for (dir, entries) in &w.dirs {
        let d = &w.inodes[dir];
        let names: Vec<&[u8]> = entries.iter().map(|e| e.0.as_slice()).collect();
        assert!(names.windows(2).all(|p| p[0] < p[1]), "sorted");
        for (i, (name, r, kind, cookie, number)) in entries.iter().enumerate() {
            assert_eq!(a.lookup(d, name).unwrap(), Some(*r));
            let inode = a.inode(*r).unwrap();
            assert_eq!((inode.kind, inode.number), (*kind, *number));
            let mut longer = name.clone();
            longer.push(b'~');
            assert_eq!(a.lookup(d, &longer).unwrap(), None);
            if full || i % 97 == 0 {
                let mut next = None;
                a.read_dir(d, *cookie, &mut |e| {
                    next = Some(e.name.to_vec());
                    false
                })
                .unwrap();
                assert_eq!(next.as_deref(), entries.get(i + 1).map(|e| e.0.as_slice()));
            }
        }
        for missing in [&b"\x01"[..], b"zzzzzz", b"entry-00000", b"entry-99999"] {
            assert_eq!(a.lookup(d, missing).unwrap(), None);
        }
    }
    // The kernel's split of a large device number (new_decode_dev).
    if let Some(dev) = w.inodes.get(&b"/bigdev"[..]) {
        let r = dev.rdev;
        assert_eq!(
            ((r & 0xfff00) >> 8, (r & 0xff) | ((r >> 12) & 0xfff00)),
            (300, 70000)
        );
    }
    // The big directory is long enough for an index, so lookups went through it.
    if let Some(big) = w.inodes.get(&b"/big"[..]) {
        assert!(
            big.index_count > 0,
            "{}: /big has no directory index",
            img.display()
        );
    }
    // Hard links share the inode.
    if let (Some(h1), Some(h2)) = (
        w.inodes.get(&b"/dir/hard"[..]),
        w.inodes.get(&b"/sizes/s4097"[..]),
    ) {
        assert_eq!(
            (h1.reference, h1.number, h1.nlink),
            (h2.reference, h2.number, 3)
        );
    }
}

fn corpus(variants: &[&[&str]]) {
    if !have_tools() {
        return;
    }
    // Each test builds its own tree: a static one would never be removed.
    let work = TempDir::new("img");
    let src = work.0.join("tree");
    build_tree(&src);
    let src = &src;
    for args in variants {
        let img = work.0.join("img.sqsh");
        mksquashfs(src, &img, args);
        eprintln!("checking {args:?}");
        let full = args.contains(&"4096");
        check_image(&img, &work.0, full);
    }
}

#[test]
fn corpus_gzip_and_zstd_at_each_block_size() {
    corpus(&[
        &["-comp", "gzip", "-b", "4096"],
        &["-comp", "gzip", "-b", "128K", "-Xcompression-level", "1"],
        &["-comp", "zstd", "-b", "4096"],
        &["-comp", "zstd", "-b", "1M"],
    ]);
}

#[test]
fn corpus_xz_and_lz4_at_each_block_size() {
    corpus(&[
        &["-comp", "xz", "-b", "4096"],
        &[
            "-comp",
            "xz",
            "-b",
            "1M",
            "-Xbcj",
            "x86",
            "-Xdict-size",
            "50%",
        ],
        &["-comp", "lz4", "-b", "128K"],
        &["-comp", "lz4", "-b", "1M", "-Xhc"],
    ]);
}

#[test]
fn corpus_fragment_options_and_uncompressed() {
    corpus(&[
        &["-comp", "zstd", "-b", "4096", "-no-fragments"],
        &["-comp", "zstd", "-b", "128K", "-always-use-fragments"],
        &["-comp", "gzip", "-b", "4096", "-tailends", "-no-duplicates"],
        &["-comp", "lz4", "-b", "1M", "-noI", "-noD", "-noF", "-noX"],
        &[
            "-comp",
            "gzip",
            "-b",
            "4096",
            "-noD",
            "-no-exports",
            "-no-xattrs",
        ],
    ]);
}

#[test]
fn demo_image() {
    let img = Path::new("/var/cache/berth-test/demo.sqsh");
    if !img.exists() || !have_tools() {
        eprintln!("skipped: {} is absent (tests/run builds it)", img.display());
        return;
    }
    let a = open(img);
    for pass in ["cold", "warm"] {
        let started = std::time::Instant::now();
        let w = walk(&a, usize::MAX).unwrap();
        eprintln!(
            "walk of {} inodes ({pass}): {:?}",
            w.inodes.len(),
            started.elapsed()
        );
    }
    let w = walk(&a, usize::MAX).unwrap();
    let lln = Command::new("unsquashfs")
        .args(["-lln", "-UTC", "-d", ""])
        .arg(img)
        .output()
        .unwrap();
    let want = parse_lln(&lln.stdout);
    let got: BTreeMap<Vec<u8>, Line> = w
        .inodes
        .iter()
        .map(|(p, i)| (p.clone(), line_of(&a, i)))
        .collect();
    assert_eq!(got.len(), want.len());
    for (path, line) in &want {
        assert_eq!(
            got.get(path),
            Some(line),
            "{}",
            String::from_utf8_lossy(path)
        );
    }
    // The largest file, cold then warm, in 128 KiB reads (a figure to look at, not a bound).
    let (path, big) = w.inodes.iter().max_by_key(|f| f.1.size).unwrap();
    for pass in ["cold", "warm"] {
        let started = std::time::Instant::now();
        let n = read_all(&a, big, 128 << 10, u64::MAX).unwrap().len();
        let secs = started.elapsed().as_secs_f64();
        let path = String::from_utf8_lossy(path);
        eprintln!(
            "read {path} ({n} bytes, {pass}): {:.0} MB/s",
            n as f64 / secs / 1e6
        );
    }
    // A sample of contents, through unsquashfs -cat.
    let files: Vec<_> = w
        .inodes
        .iter()
        .filter(|(_, i)| i.kind == Kind::File)
        .collect();
    for (path, inode) in files
        .iter()
        .step_by(files.len() / 40 + 1)
        .chain(files.iter().max_by_key(|f| f.1.size))
    {
        let cat = Command::new("unsquashfs")
            .arg("-cat")
            .arg(img)
            .arg(OsStr::from_bytes(path))
            .output()
            .unwrap();
        assert!(cat.status.success(), "{}", String::from_utf8_lossy(path));
        let got = read_all(&a, inode, 128 << 10, u64::MAX).unwrap();
        assert!(
            got == cat.stdout,
            "contents of {}",
            String::from_utf8_lossy(path)
        );
    }
}

// ---- Hand-built images: the format written out here, independent of mksquashfs ----

/// Writes an image with uncompressed metadata: a root (basic or extended dir) holding `entries`
/// of the given inode types. Returns the bytes.
struct Built {
    inodes: Vec<u8>,
    dirs: Vec<u8>,
}

fn meta_block(data: &[u8]) -> Vec<u8> {
    let mut out = ((data.len() as u16) | 0x8000).to_le_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

fn header(t: u16, mode: u16, number: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(t.to_le_bytes());
    h.extend(mode.to_le_bytes());
    h.extend(0u16.to_le_bytes()); // uid index
    h.extend(1u16.to_le_bytes()); // gid index
    h.extend(1_700_000_000u32.to_le_bytes());
    h.extend(number.to_le_bytes());
    h
}

/// One inode of each type (basic 2..7 and extended 9..14), a file with one stored block of
/// "hello" and a symlink to "target"; the root is an extended dir when `ext_root`.
fn hand_image(ext_root: bool) -> Vec<u8> {
    let data_at = 96u64;
    let data = b"hello";
    let mut b = Built {
        inodes: Vec::new(),
        dirs: Vec::new(),
    };
    let mut entries: Vec<(&[u8], u16, u16)> = Vec::new(); // name, type, inode offset
    let types: [(&[u8], u16); 12] = [
        (b"blk", 4),
        (b"chr", 5),
        (b"fifo", 6),
        (b"file", 2),
        (b"lblk", 11),
        (b"lchr", 12),
        (b"lfifo", 13),
        (b"lfile", 9),
        (b"link", 3),
        (b"llink", 10),
        (b"lsock", 14),
        (b"sock", 7),
    ];
    for (i, (name, t)) in types.iter().enumerate() {
        let off = b.inodes.len() as u16;
        b.inodes.extend(header(*t, 0o644, i as u32 + 2));
        match t {
            2 => {
                for v in [
                    data_at as u32,
                    NO_FRAGMENT,
                    0,
                    data.len() as u32,
                    data.len() as u32 | UNCOMPRESSED_BLOCK,
                ] {
                    b.inodes.extend(v.to_le_bytes());
                }
            }
            9 => {
                for v in [data_at, data.len() as u64, 0] {
                    b.inodes.extend(v.to_le_bytes());
                }
                for v in [
                    1u32,
                    NO_FRAGMENT,
                    0,
                    0,
                    data.len() as u32 | UNCOMPRESSED_BLOCK,
                ] {
                    b.inodes.extend(v.to_le_bytes());
                }
            }
            3 | 10 => {
                b.inodes.extend(1u32.to_le_bytes());
                b.inodes.extend(6u32.to_le_bytes());
                b.inodes.extend(b"target");
                if *t == 10 {
                    b.inodes.extend(0u32.to_le_bytes());
                }
            }
            4 | 5 | 11 | 12 => {
                b.inodes.extend(1u32.to_le_bytes());
                b.inodes.extend(((8 << 8) | 1u32).to_le_bytes());
                if *t > 7 {
                    b.inodes.extend(0u32.to_le_bytes());
                }
            }
            _ => {
                b.inodes.extend(1u32.to_le_bytes());
                if *t > 7 {
                    b.inodes.extend(0u32.to_le_bytes());
                }
            }
        }
        entries.push((name, *t, off));
    }
    // The listing: one header, entries with basic types.
    b.dirs.extend((entries.len() as u32 - 1).to_le_bytes());
    b.dirs.extend(0u32.to_le_bytes());
    b.dirs.extend(2u32.to_le_bytes());
    for (i, (name, t, off)) in entries.iter().enumerate() {
        b.dirs.extend(off.to_le_bytes());
        b.dirs.extend((i as i16).to_le_bytes());
        b.dirs
            .extend((if *t > 7 { t - 7 } else { *t }).to_le_bytes());
        b.dirs.extend((name.len() as u16 - 1).to_le_bytes());
        b.dirs.extend(*name);
    }
    let root_off = b.inodes.len() as u16;
    let listing = b.dirs.len() as u32 + 3;
    if ext_root {
        b.inodes.extend(header(8, 0o755, 1));
        for v in [2u32, listing, 0, 0] {
            b.inodes.extend(v.to_le_bytes());
        }
        b.inodes.extend(1u16.to_le_bytes()); // one index entry
        b.inodes.extend(0u16.to_le_bytes());
        b.inodes.extend(0u32.to_le_bytes()); // xattr
                                             // Index: the header at 0, block 0, first name "blk".
        for v in [0u32, 0, 2] {
            b.inodes.extend(v.to_le_bytes());
        }
        b.inodes.extend(b"blk");
    } else {
        b.inodes.extend(header(1, 0o755, 1));
        b.inodes.extend(0u32.to_le_bytes());
        b.inodes.extend(2u32.to_le_bytes());
        b.inodes.extend((listing as u16).to_le_bytes());
        b.inodes.extend(0u16.to_le_bytes());
        b.inodes.extend(0u32.to_le_bytes());
    }
    let mut img = vec![0u8; 96];
    img.extend(data);
    let inode_table = img.len() as u64;
    img.extend(meta_block(&b.inodes));
    let dir_table = img.len() as u64;
    img.extend(meta_block(&b.dirs));
    let id_block = img.len() as u64;
    let ids: Vec<u8> = [0u32, 1000].iter().flat_map(|v| v.to_le_bytes()).collect();
    img.extend(meta_block(&ids));
    let id_table = img.len() as u64;
    img.extend(id_block.to_le_bytes());
    let bytes_used = img.len() as u64;
    let sb = &mut img[..96];
    sb[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    sb[4..8].copy_from_slice(&14u32.to_le_bytes());
    sb[12..16].copy_from_slice(&4096u32.to_le_bytes());
    sb[20..22].copy_from_slice(&1u16.to_le_bytes()); // gzip
    sb[22..24].copy_from_slice(&12u16.to_le_bytes());
    sb[26..28].copy_from_slice(&2u16.to_le_bytes());
    sb[28..30].copy_from_slice(&4u16.to_le_bytes());
    sb[32..40].copy_from_slice(&u64::from(root_off).to_le_bytes());
    sb[40..48].copy_from_slice(&bytes_used.to_le_bytes());
    sb[48..56].copy_from_slice(&id_table.to_le_bytes());
    sb[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
    sb[64..72].copy_from_slice(&inode_table.to_le_bytes());
    sb[72..80].copy_from_slice(&dir_table.to_le_bytes());
    sb[80..88].copy_from_slice(&u64::MAX.to_le_bytes());
    sb[88..96].copy_from_slice(&u64::MAX.to_le_bytes());
    img
}

/// An unlinked temporary file holding `bytes`.
fn tmp_file(bytes: &[u8]) -> std::fs::File {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("berth-sqfs-{}-{n}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    file
}

fn open_bytes(bytes: &[u8]) -> Result<Archive, SquashError> {
    Archive::open(tmp_file(bytes), 0, 1 << 20)
}

#[test]
fn hand_built_image_has_every_inode_type() {
    for ext_root in [false, true] {
        // No cache at all works too (every block decoded again), and so does an image that
        // starts inside its file (a SIF partition).
        let a = if ext_root {
            let mut sif = vec![0x5a; 1000];
            sif.extend(hand_image(ext_root));
            sif.extend([0xa5; 300]);
            Archive::open(tmp_file(&sif), 1000, 0).unwrap()
        } else {
            open_bytes(&hand_image(ext_root)).unwrap()
        };
        let root = a.inode(a.root()).unwrap();
        assert_eq!(
            (root.kind, root.mode, root.uid, root.gid, root.number),
            (Kind::Dir, 0o755, 0, 1000, 1)
        );
        let w = walk(&a, 100).unwrap();
        let kinds: Vec<(String, Kind)> = w
            .inodes
            .iter()
            .skip(1)
            .map(|(p, i)| (String::from_utf8_lossy(p).into_owned(), i.kind))
            .collect();
        use Kind::*;
        let want = [
            ("/blk", BlockDev),
            ("/chr", CharDev),
            ("/fifo", Fifo),
            ("/file", File),
            ("/lblk", BlockDev),
            ("/lchr", CharDev),
            ("/lfifo", Fifo),
            ("/lfile", File),
            ("/link", Symlink),
            ("/llink", Symlink),
            ("/lsock", Socket),
            ("/sock", Socket),
        ];
        assert_eq!(kinds, want.map(|(p, k)| (p.to_string(), k)));
        for (path, inode) in &w.inodes {
            match inode.kind {
                File => assert_eq!(read_all(&a, inode, 3, 100).unwrap(), b"hello"),
                Symlink => assert_eq!(a.read_link(inode).unwrap(), b"target"),
                BlockDev | CharDev => assert_eq!(inode.rdev, (8 << 8) | 1),
                _ => {}
            }
            assert_eq!(
                a.lookup(&root, &path[1.min(path.len())..])
                    .unwrap()
                    .is_some(),
                !path.is_empty()
            );
        }
        assert_eq!(a.lookup(&root, b"a").unwrap(), None);
        assert_eq!(a.lookup(&root, b"zzz").unwrap(), None);
    }
}

/// The offset of `needle` in the hand-built image.
fn find(img: &[u8], needle: &[u8]) -> usize {
    img.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn hand_built_corruptions_are_one_line_errors() {
    let base = hand_image(false);
    let walk_err = |img: &[u8]| -> String {
        let e = match open_bytes(img) {
            Err(e) => e,
            Ok(a) => match walk(&a, 100) {
                Err(e) => e,
                Ok(w) => {
                    let mut err = None;
                    for i in w.inodes.values() {
                        if let Err(e) = read_all(&a, i, 4096, 1 << 20) {
                            err = Some(e);
                        }
                    }
                    err.expect("an error")
                }
            },
        };
        let s = e.to_string();
        assert!(!s.contains('\n') && !s.ends_with('.'), "{s}");
        s
    };
    // A name with a slash, and "..".
    let mut img = base.clone();
    let at = find(&img, b"fifo");
    img[at + 1] = b'/';
    assert!(walk_err(&img).contains("not a file name"));
    // A header claiming 300 entries.
    let mut img = base.clone();
    let dir_table = u64::from_le_bytes(img[72..80].try_into().unwrap()) as usize;
    img[dir_table + 2..dir_table + 6].copy_from_slice(&299u32.to_le_bytes());
    assert!(walk_err(&img).contains("more than 256"));
    // A data block past the image's end.
    let mut img = base.clone();
    let at = find(&img, &(5u32 | UNCOMPRESSED_BLOCK).to_le_bytes());
    img[at..at + 4].copy_from_slice(&(4000u32 | UNCOMPRESSED_BLOCK).to_le_bytes());
    assert!(walk_err(&img).contains("outside the image"));
    // Unknown compressor, lzo, bad version, bytes_used past the file.
    let mut img = base.clone();
    img[20] = 3;
    assert!(walk_err(&img).contains("lzo"));
    let mut img = base.clone();
    img[28] = 3;
    assert!(walk_err(&img).contains("version 3.0"));
    let mut img = base.clone();
    let len = img.len() as u64 + 1;
    img[40..48].copy_from_slice(&len.to_le_bytes());
    assert!(walk_err(&img).contains("truncated"));
    assert!(walk_err(&base[..50]).contains("too short"));
}

// ---- Hostile images: whatever the bytes, Ok or Err, never a panic or a hang ----

/// A small image with fragments, several blocks, a 300-entry directory and links.
fn small_image() -> &'static Option<Vec<u8>> {
    static IMG: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    IMG.get_or_init(|| {
        if !have_tools() {
            return None;
        }
        let t = TempDir::new("small");
        let src = t.0.join("src");
        std::fs::create_dir_all(src.join("d/e")).unwrap();
        std::fs::write(src.join("a"), text(10_000)).unwrap();
        std::fs::write(src.join("b"), noise(3, 9000)).unwrap();
        std::fs::write(src.join("d/e/c"), b"cc").unwrap();
        std::os::unix::fs::symlink("a", src.join("l")).unwrap();
        std::fs::hard_link(src.join("a"), src.join("d/h")).unwrap();
        for i in 0..300 {
            std::fs::write(
                src.join(format!("d/f{i:03}")),
                if i % 50 == 0 { &b"x"[..] } else { b"" },
            )
            .unwrap();
        }
        let img = t.0.join("img");
        mksquashfs(&src, &img, &["-comp", "gzip", "-b", "4096"]);
        Some(std::fs::read(img).unwrap())
    })
}

/// Opens and walks a (possibly hostile) image through every call, bounded.
fn exercise(bytes: &[u8]) -> usize {
    let one_line = |e: SquashError| {
        let s = e.to_string();
        assert!(!s.contains('\n') && !s.is_empty(), "{s:?}");
    };
    let a = match open_bytes(bytes) {
        Ok(a) => a,
        Err(e) => {
            one_line(e);
            return 0;
        }
    };
    let w = match walk(&a, 2000) {
        Ok(w) => w,
        Err(e) => {
            one_line(e);
            return 1;
        }
    };
    let mut errors = 0;
    for (dir, entries) in &w.dirs {
        let d = &w.inodes[dir];
        for (name, _, _, cookie, _) in entries.iter().take(50) {
            a.lookup(d, name).map_err(one_line).err();
            a.read_dir(d, *cookie, &mut |_| false)
                .map_err(one_line)
                .err();
        }
    }
    for path in [
        &b"/dir/short"[..],
        b"/dir/long",
        b"/dir/sub/../sub/deep/file",
    ] {
        a.resolve(path).map_err(one_line).err();
    }
    for inode in w.inodes.values() {
        if inode.kind == Kind::Symlink {
            a.read_link(inode).map_err(one_line).err();
        }
        a.preload(inode, 64 << 10).map_err(one_line).err();
        let mut out = Vec::new();
        errors += a
            .read(inode, 0, 64 << 10, &mut out)
            .map_err(one_line)
            .is_err() as usize;
        assert!(out.len() <= 64 << 10);
        // A stored range never reaches past the image (a spliced reply reads it unchecked).
        if let Ok(Some((pos, len))) = a.stored_range(inode, 0, 1 << 20) {
            assert!(pos + len <= bytes.len() as u64, "{pos}+{len}");
        }
        let from = inode.size.saturating_sub(5000);
        errors += a
            .read(inode, from, 10_000, &mut out)
            .map_err(one_line)
            .is_err() as usize;
    }
    2 + (errors > 0) as usize
}

/// Runs `f` on a thread and fails if it takes longer than `limit` (a hang).
fn bounded(limit: std::time::Duration, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => handle.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(handle.join().unwrap_err())
        }
        Err(_) => panic!("hostile images: no answer in {limit:?} (a hang?)"),
    }
}

#[test]
fn truncated_images_fail_cleanly() {
    let Some(img) = small_image() else { return };
    bounded(std::time::Duration::from_secs(300), move || {
        let step = (img.len() / 400).max(1);
        let mut tally = [0; 4];
        for len in (0..img.len())
            .step_by(step)
            .chain(img.len() - 100..img.len())
        {
            let mut cut = img[..len].to_vec();
            tally[exercise(&cut)] += 1;
            // The same prefix with the superblock's length made to fit: the tables are cut.
            if len >= 96 {
                cut[40..48].copy_from_slice(&(len as u64).to_le_bytes());
                tally[exercise(&cut)] += 1;
            }
        }
        eprintln!(
            "truncations: [open failed, walk failed, walked, walked with read errors]: {tally:?}"
        );
    });
}

#[test]
fn bit_flips_fail_cleanly() {
    let Some(img) = small_image() else { return };
    bounded(std::time::Duration::from_secs(300), move || {
        let sb = |at: usize| u64::from_le_bytes(img[at..at + 8].try_into().unwrap()) as usize;
        // Flips land in the superblock, the inode table, the directory table, and the tables
        // after it (fragments, export, ids), a third each after the superblock.
        let regions = [
            (0, 96),
            (sb(64), sb(72)),
            (sb(72), img.len().min(sb(72) + 4096)),
            (sb(80).min(img.len() - 1), img.len()),
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut tally = [0; 4];
        for case in 0..3000 {
            let mut bytes = img.clone();
            let (lo, hi) = regions[case % regions.len()];
            for _ in 0..1 + next() % 3 {
                let at = lo + (next() as usize) % (hi - lo).max(1);
                bytes[at.min(img.len() - 1)] ^= 1 << (next() % 8);
            }
            tally[exercise(&bytes)] += 1;
        }
        eprintln!(
            "bit flips: [open failed, walk failed, walked, walked with read errors]: {tally:?}"
        );
    });
}

fn cases(n: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = n;
    }
    config.failure_persistence = None;
    config.rng_algorithm = proptest::test_runner::RngAlgorithm::XorShift;
    config
}

proptest! {
    #![proptest_config(cases(200))]

    /// Random byte writes anywhere in a valid image, and a random length: Ok or Err, no panic.
    #[test]
    fn fuzz_squashfs_reader(
        writes in proptest::collection::vec((any::<u32>(), any::<u8>()), 1..8),
        cut in any::<u32>(),
    ) {
        let Some(img) = small_image() else { return Ok(()) };
        let mut bytes = img.clone();
        for (at, v) in writes {
            let at = at as usize % bytes.len();
            bytes[at] = v;
        }
        if cut % 4 == 0 {
            bytes.truncate(cut as usize % (bytes.len() + 1));
        }
        exercise(&bytes);
    }
}

#[test]
fn concurrent_readers_agree_with_a_tiny_cache() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Archive>();
    if !have_tools() {
        return;
    }
    let t = TempDir::new("threads");
    let src = t.0.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut big = text(1 << 20);
    big.extend(noise(11, 2 << 20));
    std::fs::write(src.join("big"), &big).unwrap();
    for i in 0..200u64 {
        std::fs::write(src.join(format!("f{i}")), noise(i, 100 + i as usize * 37)).unwrap();
    }
    let img = t.0.join("img");
    mksquashfs(&src, &img, &["-comp", "zstd", "-b", "4096"]);
    // 64 KiB of cache: blocks and checkpoints are evicted and rebuilt under the threads' feet.
    let a = Arc::new(Archive::open(std::fs::File::open(&img).unwrap(), 0, 64 << 10).unwrap());
    let root = a.inode(a.root()).unwrap();
    let mut want = BTreeMap::new();
    a.read_dir(&root, 0, &mut |e| {
        want.insert(e.name.to_vec(), e.inode);
        true
    })
    .unwrap();
    let threads: Vec<_> = (0..4u32)
        .map(|k| {
            let a = Arc::clone(&a);
            let want = want.clone();
            std::thread::spawn(move || {
                let root = a.inode(a.root()).unwrap();
                for (name, r) in want.iter().rev().skip(k as usize) {
                    let inode = a.inode(a.lookup(&root, name).unwrap().unwrap()).unwrap();
                    assert_eq!(inode.reference, *r);
                    if inode.kind != Kind::File {
                        continue; // the corpus's pseudo devices
                    }
                    let got = read_all(&a, &inode, 4096 * (k + 1) + k * 333, u64::MAX).unwrap();
                    let expected = if name == b"big" {
                        big_contents()
                    } else {
                        let i: u64 = std::str::from_utf8(&name[1..]).unwrap().parse().unwrap();
                        noise(i, 100 + i as usize * 37)
                    };
                    assert!(got == expected, "{}", String::from_utf8_lossy(name));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    fn big_contents() -> Vec<u8> {
        let mut big = text(1 << 20);
        big.extend(noise(11, 2 << 20));
        big
    }
}

#[test]
fn resolve_follows_symlinks_and_preload_fills_the_cache() {
    if !have_tools() {
        return;
    }
    let t = TempDir::new("resolve");
    let src = t.0.join("src");
    std::fs::create_dir_all(src.join("usr/lib")).unwrap();
    std::fs::create_dir_all(src.join("etc")).unwrap();
    let mut lib = text(100_000);
    lib.extend(noise(3, 50_000));
    std::fs::write(src.join("usr/lib/libc.so.6"), &lib).unwrap();
    std::fs::write(src.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    let link = |to: &str, at: &str| std::os::unix::fs::symlink(to, src.join(at)).unwrap();
    link("usr/lib", "lib");
    link("/lib/libc.so.6", "abs");
    link("../usr/./lib/../lib/libc.so.6", "etc/rel");
    link("loop", "loop");
    link("/nonexistent", "dangling");
    let img = t.0.join("img");
    mksquashfs(&src, &img, &["-comp", "zstd", "-b", "4096"]);
    let a = open(&img);
    let root = a.inode(a.root()).unwrap();
    let libc = a.resolve(b"/usr/lib/libc.so.6").unwrap().unwrap();
    assert_eq!(libc.size, lib.len() as u64);
    for path in [
        "/lib/libc.so.6",
        "/abs",
        "/etc/rel",
        "//usr/../../lib//libc.so.6",
    ] {
        let got = a.resolve(path.as_bytes()).unwrap();
        assert_eq!(got.map(|i| i.reference), Some(libc.reference), "{path}");
    }
    assert_eq!(a.resolve(b"/").unwrap().unwrap().reference, root.reference);
    for path in ["/loop", "/dangling", "/nope", "/etc/passwd/x", "/abs/x"] {
        assert!(a.resolve(path.as_bytes()).unwrap().is_none(), "{path}");
    }

    // Only the first `max` bytes' blocks go in; the tail's fragment only with the whole file.
    let before = a.cache.weight();
    a.preload(&libc, 3 * 4096).unwrap();
    let three = a.cache.weight() - before;
    assert!(
        three >= 3 * 4096 && three < 4 * 4096 + META_SIZE as u64,
        "{three}"
    );
    a.preload(&libc, u64::MAX).unwrap();
    let all = a.cache.weight() - before;
    assert!(all > 20 * 4096, "{all}");
    // Again: nothing new.
    a.preload(&libc, u64::MAX).unwrap();
    assert_eq!(a.cache.weight() - before, all);
    assert_eq!(read_all(&a, &libc, 5000, u64::MAX).unwrap(), lib);
    let passwd = a.resolve(b"/etc/passwd").unwrap().unwrap();
    a.preload(&passwd, u64::MAX).unwrap();
    assert_eq!(
        read_all(&a, &passwd, 4096, u64::MAX).unwrap(),
        b"root:x:0:0::/root:/bin/sh\n"
    );
}
