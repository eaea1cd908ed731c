//! Caches and leftovers: the extract cache follows an image edited in place (mount and extract
//! modes agree), copies of one image share one entry, and what killed runs leave behind
//! (partial unpacks, lock files, join sockets) is swept by a later run or `berth cache clean`
//! when no live process holds it, and never when one does.

use berth_tests::*;
use std::fs;
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const BUSYBOX: &str = "/bin/busybox";

/// A busybox root with `/aaa-marker` holding `marker` (8 KiB, so it has a data block of its
/// own at the start of the image, far from the tables at its end).
fn busybox_root(dir: &Path, marker: &str) {
    let _ = fs::remove_dir_all(dir);
    for d in ["bin", "etc", "tmp", "home", "dev", "proc", "sys", "root"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: run scripts/install-deps.sh (busybox-static)"
    );
    copy_executable(Path::new(BUSYBOX), &dir.join("bin/busybox"));
    for a in ["sh", "cat", "true", "sleep"] {
        symlink("busybox", dir.join("bin").join(a)).unwrap();
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
    let mut content = marker.as_bytes().to_vec();
    content.resize(8192, b'.');
    fs::write(dir.join("aaa-marker"), content).unwrap();
}

/// An uncompressed squashfs of `dir`, without fragments: every file's bytes appear as they are.
fn squash_plain(dir: &Path, out: &Path) {
    let _ = fs::remove_file(out);
    let st = Command::new("mksquashfs")
        .arg(dir)
        .arg(out)
        .args([
            "-noappend",
            "-all-root",
            "-quiet",
            "-no-progress",
            "-noI",
            "-noD",
            "-noX",
            "-no-fragments",
        ])
        .stdout(Stdio::null())
        .status()
        .expect("run mksquashfs");
    assert!(st.success(), "mksquashfs {} failed", dir.display());
    fs::set_permissions(out, fs::Permissions::from_mode(0o644)).unwrap();
}

fn marker_in(sb: &Sandbox, mode: &str, image: &Path) -> Run {
    run(sb.berth(&[
        "run",
        "--mode",
        mode,
        "--no-join",
        image.to_str().unwrap(),
        "--",
        "cat",
        "/aaa-marker",
    ]))
}

fn images_dir(sb: &Sandbox) -> PathBuf {
    sb.state.join("images")
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn entries(sb: &Sandbox) -> Vec<String> {
    names(&images_dir(sb))
        .into_iter()
        .filter(|n| !n.starts_with('.') && !n.ends_with(".lock"))
        .collect()
}

fn partials(sb: &Sandbox) -> Vec<String> {
    names(&images_dir(sb))
        .into_iter()
        .filter(|n| n.starts_with(".tmp-"))
        .collect()
}

/// Make `path` (created by this root process) the test user's.
fn give(path: &Path) {
    if is_root() {
        chown(path, Some(user().uid), Some(user().gid)).unwrap();
    }
}

#[test]
fn an_image_edited_in_place_is_unpacked_again_and_mount_and_extract_agree() {
    let sb = Sandbox::new("leftovers-edit");
    let root = sb.root.join("rootfs");
    busybox_root(&root, "MARKER-ONE");
    let image = sb.root.join("img.sqsh");
    squash_plain(&root, &image);
    // berth remembers a file's identity only once its timestamps are a few seconds old (a
    // write in the same clock tick could otherwise go unseen): let this one become known.
    std::thread::sleep(Duration::from_secs(3));

    let first = marker_in(&sb, "extract", &image).expect_ok("first extract");
    assert!(first.stdout.starts_with("MARKER-ONE"), "{}", first.stdout);
    assert_eq!(
        names(&images_dir(&sb).join(".ids")).len(),
        1,
        "the image's identity is remembered"
    );

    // Corrupt it in the middle, in place: same inode, same size, same superblock and tables.
    let mut bytes = fs::read(&image).unwrap();
    let at = bytes
        .windows(10)
        .position(|w| w == b"MARKER-ONE")
        .expect("the marker is stored as it is");
    assert!(
        at + 65536 < bytes.len(),
        "the marker lies before the image's last 64 KiB"
    );
    bytes[at..at + 10].copy_from_slice(b"MARKER-TWO");
    let mut f = fs::OpenOptions::new().write(true).open(&image).unwrap();
    std::io::Write::write_all(&mut f, &bytes).unwrap();
    drop(f);

    let mount = marker_in(&sb, "mount", &image).expect_ok("mount after the edit");
    let extract = marker_in(&sb, "extract", &image).expect_ok("extract after the edit");
    assert!(mount.stdout.starts_with("MARKER-TWO"), "{}", mount.stdout);
    assert_eq!(
        extract.stdout, mount.stdout,
        "extract mode shows the edited image, as mount mode does"
    );
    assert!(extract.stderr.contains("unpacking"), "{}", extract.stderr);
    assert_eq!(entries(&sb).len(), 2, "{:?}", entries(&sb));
}

#[test]
fn copies_of_one_image_share_one_cache_entry() {
    let sb = Sandbox::new("leftovers-copy");
    let root = sb.root.join("rootfs");
    busybox_root(&root, "MARKER-COPY");
    let image = sb.root.join("img.sqsh");
    squash_plain(&root, &image);
    marker_in(&sb, "extract", &image).expect_ok("first");
    // Another file with the same bytes: a stage-in copy per job.
    let copy = sb.root.join("copy.sqsh");
    fs::copy(&image, &copy).unwrap();
    let again = marker_in(&sb, "extract", &copy).expect_ok("the copy");
    assert!(again.stdout.starts_with("MARKER-COPY"), "{}", again.stdout);
    assert!(
        !again.stderr.contains("unpacking"),
        "the copy reuses the entry: {}",
        again.stderr
    );
    assert_eq!(entries(&sb).len(), 1, "{:?}", entries(&sb));
}

#[test]
fn a_killed_first_extract_is_swept_by_the_next_run_and_by_cache_clean() {
    let sb = Sandbox::new("leftovers-kill");
    let small = sb.root.join("small.sqsh");
    let root = sb.root.join("rootfs");
    busybox_root(&root, "MARKER-SMALL");
    squash_plain(&root, &small);

    for sweeper in ["next run", "cache clean"] {
        let mut first = sb
            .berth_demo(&["--mode", "extract", "--no-join"], &["true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // setpriv and env exec: the child is berth itself. Kill it once unsquashfs writes.
        let writing = eventually(Duration::from_secs(120), || {
            partials(&sb)
                .iter()
                .any(|p| images_dir(&sb).join(p).join("rootfs/usr").exists())
        });
        first.kill().unwrap();
        first.wait().unwrap();
        assert!(writing, "the first extract started unpacking");
        // unsquashfs dies with berth (parent-death signal): nothing writes any more.
        assert!(
            eventually(Duration::from_secs(20), || processes_with("unsquashfs")
                .iter()
                .all(|(_, c)| !c.contains(sb.state.to_str().unwrap()))),
            "unsquashfs outlived berth"
        );
        assert_eq!(partials(&sb).len(), 1, "the partial unpack is there");
        if sweeper == "next run" {
            let out = marker_in(&sb, "extract", &small).expect_ok("another image");
            assert!(out.stdout.starts_with("MARKER-SMALL"));
        } else {
            let clean = run(sb.berth(&["cache", "clean"])).expect_ok("clean");
            assert!(
                clean.stdout.contains("removed partial unpack"),
                "{}",
                clean.stdout
            );
        }
        assert!(
            partials(&sb).is_empty(),
            "{sweeper} removed the partial unpack: {:?}",
            names(&images_dir(&sb))
        );
    }
    // Nothing but the small image's entry (removed by the clean too) and no orphan locks.
    let left: Vec<String> = names(&images_dir(&sb))
        .into_iter()
        .filter(|n| n != ".ids")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Hold the flock of `path` (opened by this process, as root) until the guard is dropped.
fn hold_lock(path: &Path) -> nix::fcntl::Flock<fs::File> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    give(path);
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockShared)
        .map_err(|(_, e)| e)
        .expect("flock")
}

#[test]
fn stale_locks_partials_and_join_sockets_go_live_ones_stay() {
    let sb = Sandbox::new("leftovers-stale");
    let images = images_dir(&sb);
    let join = sb.state.join("join");
    for d in [&images, &join] {
        fs::create_dir_all(d).unwrap();
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
        give(d);
    }
    let (dead_key, live_key) = (
        "0123456789abcdef0123456789abcdef",
        "fedcba9876543210fedcba9876543210",
    );
    let (lone_key, held_key) = (
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
    );
    for key in [dead_key, live_key] {
        let p = images.join(format!(".tmp-{key}-4242"));
        fs::create_dir_all(p.join("rootfs/usr")).unwrap();
        fs::write(p.join("rootfs/usr/file"), b"partial").unwrap();
        give(&p);
        give(&p.join("rootfs"));
        give(&p.join("rootfs/usr"));
        fs::write(images.join(format!("{key}.lock")), b"").unwrap();
        give(&images.join(format!("{key}.lock")));
    }
    fs::write(images.join(format!("{lone_key}.lock")), b"").unwrap();
    give(&images.join(format!("{lone_key}.lock")));
    // Held: an unpack (or a container) of these is live.
    let _live = hold_lock(&images.join(format!("{live_key}.lock")));
    let _held = hold_lock(&images.join(format!("{held_key}.lock")));

    // A socket whose keeper died (bound, then closed) and one a live process listens on,
    // named as this node's keepers name theirs (a sweep touches no other node's files).
    let node = join_node_prefix();
    let dead_sock = join.join(format!("{node}-dead.sock"));
    let live_sock = join.join(format!("{node}-live.sock"));
    drop(UnixListener::bind(&dead_sock).unwrap());
    let _listener = UnixListener::bind(&live_sock).unwrap();
    for s in [&dead_sock, &live_sock] {
        fs::set_permissions(s, fs::Permissions::from_mode(0o600)).unwrap();
        give(s);
        // Each keeper's first rank made its lock beside the socket.
        let lock = s.with_extension("lock");
        fs::write(&lock, b"").unwrap();
        give(&lock);
    }

    let clean = run(sb.berth(&["cache", "clean"])).expect_ok("clean");
    let left = names(&images);
    assert!(
        !left.contains(&format!(".tmp-{dead_key}-4242")),
        "stale partial removed: {left:?}\n{}",
        clean.stdout
    );
    assert!(!left.contains(&format!("{dead_key}.lock")), "{left:?}");
    assert!(!left.contains(&format!("{lone_key}.lock")), "{left:?}");
    assert!(
        left.contains(&format!(".tmp-{live_key}-4242")),
        "a partial whose lock is held stays: {left:?}"
    );
    assert!(left.contains(&format!("{live_key}.lock")), "{left:?}");
    assert!(left.contains(&format!("{held_key}.lock")), "{left:?}");
    assert!(!dead_sock.exists(), "dead join socket removed");
    assert!(live_sock.exists(), "a listened-on socket stays");
    assert!(
        clean.stdout.contains("dead join socket"),
        "{}",
        clean.stdout
    );

    // A first rank of a joined run sweeps dead sockets too, and leaves live ones.
    drop(UnixListener::bind(&dead_sock).unwrap());
    give(&dead_sock);
    let root = sb.root.join("rootfs");
    busybox_root(&root, "MARKER-JOIN");
    let image = sb.root.join("img.sqsh");
    squash_plain(&root, &image);
    run(sb.berth(&[
        "run",
        "--join",
        "leftovers",
        image.to_str().unwrap(),
        "--",
        "true",
    ]))
    .expect_ok("joined run");
    assert!(
        !dead_sock.exists(),
        "the first rank removed the dead socket"
    );
    assert!(live_sock.exists());
}

/// The first part of this node's join keepers' file names: a short hash of the node's name.
fn join_node_prefix() -> String {
    use sha2::{Digest, Sha256};
    let node = nix::unistd::gethostname().unwrap();
    let mut h = Sha256::new();
    h.update(node.as_encoded_bytes());
    h.update([0]);
    h.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
