//! berth-imagefs, mount mode's own FUSE server: a tree of every inode type reads the same through
//! it as `unsquashfs` unpacks it, for every codec and for 4 KiB and 1 MiB blocks; a corrupt image
//! is one line before anything is mounted, a damaged block is EIO and the server serves on; the
//! server outlives the signals a scheduler sends to every process group of a job.
//!
//! Needs root (the trees have devices and other owners), `mksquashfs`, `unsquashfs` and
//! `busybox-static`.

use berth_tests::hostile::minimal_root;
use berth_tests::*;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

/// Inside the container: every entry's attributes, every file's sha256, every link's target.
const LIST: &str = "cd /corpus && \
    /bin/busybox find . -exec /bin/busybox stat -c '%n|%f|%s|%u|%g|%h|%Y|%t:%T|%i' {} + && \
    echo --- && /bin/busybox find . -type f -exec /bin/busybox sha256sum {} + && \
    echo --- && /bin/busybox find . -type l | while IFS= read -r l; do \
    printf '%s|%s\\n' \"$l\" \"$(/bin/busybox readlink \"$l\")\"; done";

/// Deterministic bytes that do not compress (the server must serve stored blocks too).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn text(len: usize) -> Vec<u8> {
    let line = b"the quick brown fox jumps over the lazy dog 0123456789\n";
    line.iter().copied().cycle().take(len).collect()
}

fn set_mtime(p: &Path, secs: u64) {
    let f = fs::File::open(p).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: `path` and `name` are C strings and `value` a live buffer of the length passed.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// A minimal busybox root with /corpus: every inode type squashfs has (devices come from
/// mksquashfs pseudo definitions), hard links, sparse and duplicate files, sizes around 4 KiB
/// and 1 MiB block edges, a large directory, long and non-ASCII names, long link targets,
/// special permission bits, other owners, xattrs (ignored) and extreme mtimes.
fn corpus(root: &Path) {
    minimal_root(root);
    let c = root.join("corpus");
    for d in [
        "files",
        "many",
        "deep/a/b/c/d/e/f/g/h",
        "empty",
        "links/sub",
        "special",
        "dev",
        "perm",
        "owners/dir",
        "with space",
    ] {
        fs::create_dir_all(c.join(d)).unwrap();
    }
    let sizes = [
        0usize,
        1,
        100,
        4095,
        4096,
        4097,
        3 * 4096 + 100,
        65536,
        131_072 + 17,
        1_048_575,
        1_048_576,
        1_048_577,
        3 * 1_048_576 + 12_345,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        fs::write(
            c.join(format!("files/noise-{size}")),
            noise(size, i as u64 + 7),
        )
        .unwrap();
        fs::write(c.join(format!("files/text-{size}")), text(size)).unwrap();
    }
    // Sparse: holes of whole blocks at both block sizes, data at odd places.
    let sparse = fs::File::create(c.join("files/sparse")).unwrap();
    sparse.set_len(5 * 1_048_576 + 123).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(&noise(4096, 1), 0).unwrap();
    sparse
        .write_all_at(&noise(5000, 2), 2 * 1_048_576 + 5)
        .unwrap();
    sparse.write_all_at(b"end", 5 * 1_048_576 + 120).unwrap();
    drop(sparse);
    fs::write(c.join("files/zeros"), vec![0u8; 2 * 1_048_576]).unwrap();
    // Identical contents: mksquashfs stores them once.
    fs::write(c.join("files/dup-a"), noise(300_000, 99)).unwrap();
    fs::write(c.join("files/dup-b"), noise(300_000, 99)).unwrap();
    // A directory over several metadata blocks (it gets an index), with odd names.
    for i in 0..600 {
        fs::write(c.join(format!("many/entry-{i:04}")), format!("{i}\n")).unwrap();
    }
    fs::write(c.join("many").join("x".repeat(255)), "longest name\n").unwrap();
    fs::write(c.join("many/naïve-файл-名前"), "utf-8\n").unwrap();
    fs::write(c.join("with space/a file"), "spaces\n").unwrap();
    fs::write(c.join("deep/a/b/c/d/e/f/g/h/leaf"), "deep\n").unwrap();
    // Links: short, dangling, long target, to a directory; hard links across directories.
    symlink("sub/orig", c.join("links/short")).unwrap();
    symlink("/nowhere/at/all", c.join("links/dangling")).unwrap();
    symlink("a/".repeat(400) + "end", c.join("links/long")).unwrap();
    symlink("sub", c.join("links/dir")).unwrap();
    fs::write(c.join("links/sub/orig"), "linked\n").unwrap();
    fs::hard_link(c.join("links/sub/orig"), c.join("links/hard1")).unwrap();
    fs::hard_link(c.join("links/sub/orig"), c.join("deep/hard2")).unwrap();
    // A FIFO and a socket (devices: see `squash`).
    nix::unistd::mkfifo(
        &c.join("special/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    drop(std::os::unix::net::UnixListener::bind(c.join("special/sock")).unwrap());
    // Permission bits.
    fs::write(c.join("perm/suid"), "suid\n").unwrap();
    fs::set_permissions(c.join("perm/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(c.join("perm/private"), "private\n").unwrap();
    fs::set_permissions(c.join("perm/private"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(c.join("perm/readonly"), "ro\n").unwrap();
    fs::set_permissions(c.join("perm/readonly"), fs::Permissions::from_mode(0o444)).unwrap();
    fs::create_dir(c.join("perm/sgid")).unwrap();
    fs::set_permissions(c.join("perm/sgid"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::create_dir(c.join("perm/sticky")).unwrap();
    fs::set_permissions(c.join("perm/sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    // Owners the container's user namespace does not map.
    fs::write(c.join("owners/other"), "other\n").unwrap();
    chown(c.join("owners/other"), Some(1234), Some(5678)).unwrap();
    chown(c.join("owners/dir"), Some(4321), Some(4321)).unwrap();
    // xattrs are in the image but not served.
    set_xattr(&c.join("files/text-100"), "user.berth", b"ignored");
    set_xattr(&c.join("many"), "user.berth", b"ignored too");
    // mtimes: the epoch, and past 2038 (squashfs keeps 32 unsigned bits).
    set_mtime(&c.join("files/text-1"), 0);
    set_mtime(&c.join("files/text-100"), 3_000_000_000);
}

/// mksquashfs `tree` to `out` with codec `comp` and block size `block`.
fn squash(tree: &Path, out: &Path, comp: &str, block: &str, extra: &[&str]) {
    let _ = fs::remove_file(out);
    let st = Command::new("mksquashfs")
        .arg(tree)
        .arg(out)
        .args([
            "-noappend",
            "-quiet",
            "-no-progress",
            "-comp",
            comp,
            "-b",
            block,
        ])
        .args(extra)
        .args(["-p", "corpus/dev/chr c 640 0 0 1 3"])
        .args(["-p", "corpus/dev/blk b 660 0 6 259 300000"])
        .stdout(Stdio::null())
        .status()
        .expect("run mksquashfs");
    assert!(st.success(), "mksquashfs -comp {comp} -b {block} failed");
    fs::set_permissions(out, fs::Permissions::from_mode(0o644)).unwrap();
}

/// `berth run --mode mount IMAGE -- COMMAND` as the test user.
fn mounted(sb: &Sandbox, image: &Path, command: &[&str]) -> Command {
    let mut args = vec!["run", "--mode", "mount", image.to_str().unwrap(), "--"];
    args.extend_from_slice(command);
    sb.berth(&args)
}

/// What the container should show: `unsquashfs` of the image (as root: devices, owners),
/// with every owner the user: as in extract mode, every file of the image is theirs.
#[derive(Default)]
struct Listing {
    attrs: BTreeMap<String, String>,
    sums: BTreeMap<String, String>,
    links: BTreeMap<String, String>,
    hard: BTreeSet<Vec<String>>,
}

/// The names of each inode (given by any key), sorted: the hard-link groups of a listing.
fn link_groups<K>(by_ino: BTreeMap<K, Vec<String>>) -> BTreeSet<Vec<String>> {
    by_ino
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect()
}

fn attr_line(
    kind_mode: u32,
    size: u64,
    uid: u32,
    gid: u32,
    nlink: u64,
    mtime: i64,
    dev: (u32, u32),
) -> String {
    let size = if kind_mode & libc::S_IFMT == libc::S_IFDIR {
        "-".to_string()
    } else {
        size.to_string()
    };
    format!(
        "{kind_mode:x}|{size}|{uid}|{gid}|{nlink}|{mtime}|{:x}:{:x}",
        dev.0, dev.1
    )
}

fn expected(image: &Path, scratch: &Path) -> Listing {
    let _ = fs::remove_dir_all(scratch);
    let st = Command::new("unsquashfs")
        .args(["-quiet", "-no-progress", "-d"])
        .arg(scratch)
        .arg(image)
        .stdout(Stdio::null())
        .status()
        .expect("run unsquashfs");
    assert!(st.success(), "unsquashfs {}", image.display());
    let u = user();
    let map = |_id: u32, own: u32| own;
    let base = scratch.join("corpus");
    let mut out = Listing::default();
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![base.clone()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(&base).unwrap();
        let name = if rel.as_os_str().is_empty() {
            ".".to_string()
        } else {
            format!("./{}", rel.display())
        };
        let ft = m.file_type();
        let dev = if m.mode() & libc::S_IFMT == libc::S_IFCHR
            || m.mode() & libc::S_IFMT == libc::S_IFBLK
        {
            (libc::major(m.rdev()), libc::minor(m.rdev()))
        } else {
            (0, 0)
        };
        out.attrs.insert(
            name.clone(),
            attr_line(
                m.mode(),
                m.size(),
                map(m.uid(), u.uid),
                map(m.gid(), u.gid),
                m.nlink(),
                m.mtime(),
                dev,
            ),
        );
        if ft.is_file() {
            let sum = Sha256::digest(fs::read(&p).unwrap());
            out.sums.insert(name.clone(), format!("{sum:x}"));
            if m.nlink() > 1 {
                by_ino.entry(m.ino()).or_default().push(name.clone());
            }
        } else if ft.is_symlink() {
            let t = fs::read_link(&p).unwrap();
            out.links
                .insert(name.clone(), t.to_string_lossy().into_owned());
        } else if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.hard = link_groups(by_ino);
    out
}

/// Parse LIST's output.
fn seen(stdout: &str) -> Listing {
    let mut parts = stdout.split("---\n");
    let (stats, sums, links) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let mut out = Listing::default();
    let mut by_ino: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in stats.lines() {
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f.len(), 9, "stat line: {line}");
        let mode = u32::from_str_radix(f[1], 16).unwrap();
        let (maj, min) = f[7].split_once(':').unwrap();
        let dev = (
            u32::from_str_radix(maj, 16).unwrap(),
            u32::from_str_radix(min, 16).unwrap(),
        );
        out.attrs.insert(
            f[0].to_string(),
            attr_line(
                mode,
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
                f[5].parse().unwrap(),
                f[6].parse().unwrap(),
                dev,
            ),
        );
        if mode & libc::S_IFMT == libc::S_IFREG && f[5] != "1" {
            by_ino
                .entry(f[8].to_string())
                .or_default()
                .push(f[0].to_string());
        }
    }
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        out.sums.insert(name.to_string(), sum.to_string());
    }
    for line in links.lines() {
        let (name, target) = line.split_once('|').unwrap();
        out.links.insert(name.to_string(), target.to_string());
    }
    out.hard = link_groups(by_ino);
    out
}

fn differences(want: &BTreeMap<String, String>, got: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            Some(g) if g == v => {}
            Some(g) => out.push(format!("{k}: want {v}, got {g}")),
            None => out.push(format!("{k}: missing")),
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        out.push(format!("{k}: unexpected"));
    }
    out
}

/// Every entry of the corpus image made with `comp` at 4 KiB blocks (tails in their own
/// blocks) and 1 MiB blocks (tails in fragments) reads through berth-imagefs as unsquashfs
/// unpacks it.
fn same_as_unsquashfs(comp: &str) {
    let sb = Sandbox::new(&format!("imagefs-{comp}"));
    let tree = sb.root.join("tree");
    corpus(&tree);
    for (block, extra) in [("4K", &[][..]), ("1M", &["-always-use-fragments"][..])] {
        let image = sb.root.join(format!("{comp}-{block}.sqsh"));
        squash(&tree, &image, comp, block, extra);
        let want = expected(&image, &sb.root.join(format!("unsquashfs-{block}")));
        let r = run(mounted(&sb, &image, &["/bin/sh", "-c", LIST]))
            .expect_ok(&format!("{comp} {block}"));
        let got = seen(&r.stdout);
        assert!(want.attrs.len() > 650, "the corpus: {}", want.attrs.len());
        let what = format!("{comp}, {block} blocks");
        let diff = differences(&want.attrs, &got.attrs);
        assert!(diff.is_empty(), "{what}: attributes:\n{}", diff.join("\n"));
        let diff = differences(&want.sums, &got.sums);
        assert!(diff.is_empty(), "{what}: contents:\n{}", diff.join("\n"));
        let diff = differences(&want.links, &got.links);
        assert!(diff.is_empty(), "{what}: links:\n{}", diff.join("\n"));
        assert_eq!(want.hard, got.hard, "{what}: hard links share an inode");
        assert_eq!(
            want.hard.len(),
            1,
            "{what}: the corpus has one hard-link group"
        );
    }
}

#[test]
fn gzip_images_read_as_unsquashfs_unpacks_them() {
    same_as_unsquashfs("gzip");
}

#[test]
fn zstd_images_read_as_unsquashfs_unpacks_them() {
    same_as_unsquashfs("zstd");
}

#[test]
fn xz_images_read_as_unsquashfs_unpacks_them() {
    same_as_unsquashfs("xz");
}

#[test]
fn lz4_images_read_as_unsquashfs_unpacks_them() {
    same_as_unsquashfs("lz4");
}

/// A small valid image: the minimal root and, first in the data, a 2 MiB file of
/// half-compressible blocks (`-no-fragments`: each file in blocks of its own).
fn small_image(sb: &Sandbox, name: &str) -> std::path::PathBuf {
    let tree = sb.root.join(format!("{name}-tree"));
    minimal_root(&tree);
    fs::create_dir_all(tree.join("aaa")).unwrap();
    let hexes: Vec<u8> = noise(1 << 20, 5)
        .iter()
        .flat_map(|b| format!("{b:02x}").into_bytes())
        .collect();
    fs::write(tree.join("aaa/big"), hexes).unwrap();
    let image = sb.root.join(format!("{name}.sqsh"));
    let st = Command::new("mksquashfs")
        .arg(&tree)
        .arg(&image)
        .args([
            "-noappend",
            "-quiet",
            "-no-progress",
            "-all-root",
            "-no-fragments",
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    fs::set_permissions(&image, fs::Permissions::from_mode(0o644)).unwrap();
    image
}

fn patch(image: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(image).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

/// A way to damage an image file.
type Damage = fn(&Path);

#[test]
fn corrupt_images_fail_in_one_line_before_anything_is_mounted() {
    let sb = Sandbox::new("imagefs-corrupt");
    let good = small_image(&sb, "good");
    let variants: [(&str, Damage); 4] = [
        ("truncated", |p| {
            let f = fs::OpenOptions::new().write(true).open(p).unwrap();
            f.set_len(f.metadata().unwrap().len() / 2).unwrap()
        }),
        // Superblock fields the file checks in image.rs do not cover: the reader's own.
        ("unknown compressor", |p| patch(p, 20, &[0xff, 0x00])),
        ("id table in the data", |p| {
            patch(p, 48, &200u64.to_le_bytes())
        }),
        ("id count", |p| patch(p, 26, &[0xff, 0xff])),
    ];
    for (what, damage) in variants {
        let image = sb.root.join("bad.sqsh");
        fs::copy(&good, &image).unwrap();
        damage(&image);
        let r = run(mounted(&sb, &image, &["true"]));
        assert_eq!(r.code, Some(125), "{what}: {}", r.stderr);
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: one line: {}", r.stderr);
        assert!(lines[0].starts_with("berth: "), "{what}: {}", r.stderr);
        assert!(
            eventually(Duration::from_secs(10), || sb.processes().is_empty()),
            "{what}: left {:?}",
            sb.processes()
        );
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("fuse.berth"), "{mounts}");
}

#[test]
fn a_damaged_block_is_an_io_error_and_the_server_serves_on() {
    let sb = Sandbox::new("imagefs-eio");
    let image = small_image(&sb, "damaged");
    // /aaa/big's blocks come first after the superblock and /.berth/image.json's block.
    patch(&image, 8192, &noise(64 * 1024, 3));
    let busybox = format!("{:x}", Sha256::digest(fs::read("/bin/busybox").unwrap()));
    let r = run(mounted(
        &sb,
        &image,
        &[
            "/bin/sh",
            "-c",
            "/bin/busybox cat /aaa/big >/dev/null; echo cat=$?; \
         /bin/busybox cat /aaa/big >/dev/null 2>&1; \
         /bin/busybox sha256sum /bin/busybox; echo still-serving",
        ],
    ))
    .expect_ok("damaged image");
    assert!(r.stdout.contains("cat=1"), "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("Input/output error"), "{}", r.stderr);
    assert!(r.stdout.contains(&busybox), "{}", r.stdout);
    assert!(r.stdout.contains("still-serving"), "{}", r.stdout);
}

/// OpenLava's sbatchd signals every process group of a job: the image server's
/// group too. The server ignores them and serves until its mount goes away.
#[test]
fn the_server_outlives_signals_sent_to_its_process_group() {
    let sb = Sandbox::new("imagefs-signals");
    let mut child = sb
        .berth_demo(
            &["--mode", "mount"],
            &[
                "sh",
                "-c",
                "read x; cat /etc/debian_version; ls /usr/bin | wc -l",
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let server = || {
        sb.processes()
            .into_iter()
            .find(|(_, c)| c.starts_with("berth-imagefs"))
            .map(|(p, _)| p)
    };
    assert!(
        eventually(Duration::from_secs(20), || server().is_some()),
        "no image server: {:?}",
        sb.processes()
    );
    let pid = server().unwrap();
    use nix::sys::signal::{killpg, Signal};
    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).unwrap();
    assert!(pgid.as_raw() > 0);
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGQUIT,
        Signal::SIGTSTP,
        Signal::SIGCONT,
    ] {
        killpg(pgid, sig).unwrap();
    }
    // Only now does the command look at its files.
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("12."),
        "{out:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        eventually(Duration::from_secs(10), || sb.processes().is_empty()),
        "the server goes with its mount: {:?}",
        sb.processes()
    );
}
