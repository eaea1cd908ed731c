//! The image store (`berth-image import --store`, `berth-image store`) against a real local
//! registry (Debian's docker-registry); requests are counted in the registry's access log.

use berth_tests::registry::*;
use berth_tests::{dir_names, policy_file, run, Sandbox};
use serde_json::json;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `berth-image ARGS` as the test user, with the sandbox's store and a layer cache `cache`.
fn berth_image(sb: &Sandbox, cache: &str, args: &[&str]) -> Command {
    let mut argv = vec![berth_image_bin().to_string_lossy().into_owned()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let mut cmd = sb.as_user(&argv);
    cmd.env("BERTH_LAYER_CACHE", sb.work.join(cache))
        .env("BERTH_STORE", store(sb));
    cmd
}

fn store(sb: &Sandbox) -> PathBuf {
    sb.work.join("store")
}

fn import(sb: &Sandbox, cache: &str, source: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["import", "--json", "--store"];
    args.extend_from_slice(extra);
    args.push(source);
    let r = run(berth_image(sb, cache, &args)).expect_ok(&format!("import {source}"));
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("bad --json {e}: {}", r.stdout))
}

/// The registry's GET requests so far, as `(path, kind)`: kind is "manifest" or "blob".
fn gets(reg: &Registry) -> Vec<(String, &'static str)> {
    let log = fs::read_to_string(reg.dir.join("registry.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| {
            let at = l.find("\"GET /v2/")? + 5;
            let path = l[at..].split_whitespace().next()?.to_string();
            let kind = if path.contains("/manifests/") {
                "manifest"
            } else if path.contains("/blobs/") {
                "blob"
            } else {
                return None;
            };
            Some((path, kind))
        })
        .collect()
}

fn count(reqs: &[(String, &str)], kind: &str) -> usize {
    reqs.iter().filter(|(_, k)| *k == kind).count()
}

/// An image of one small layer holding `/version` and a shell-free config, pushed to `dest`.
fn push(sb: &Sandbox, reg: &Registry, name: &str, version: &[u8], dest: &str) {
    let layer = tar_layer(&[Entry::File("version", version, 0o644)]);
    let dir = sb.root.join(format!("layout-{name}"));
    push_layer(reg, &dir, &layer, json!({"Cmd": ["/version"]}), dest);
}

fn cat(img: &Path, path: &str) -> String {
    let out = Command::new("unsquashfs")
        .arg("-cat")
        .arg(img)
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_store_imports_once_and_serves_by_digest() {
    let sb = Sandbox::new("store-once");
    let reg = Registry::start("store-once", None);
    push(&sb, &reg, "a", b"one", "demo/a:1");
    let src = format!("docker://{}/demo/a:1", reg.addr);

    let s = import(&sb, "c1", &src, &[]);
    assert_eq!(s["up_to_date"], false);
    let img = PathBuf::from(s["output"].as_str().unwrap());
    let digest = s["digest"].as_str().unwrap().to_string();
    assert!(img.starts_with(store(&sb)), "{}", img.display());
    assert_eq!(cat(&img, "version"), "one");
    let first = gets(&reg);
    assert_eq!(count(&first, "manifest"), 1, "{first:?}");
    assert_eq!(count(&first, "blob"), 2, "config and layer: {first:?}");

    // Again, from another layer cache (another node): one manifest request, no blob.
    let s = import(&sb, "c2", &src, &[]);
    assert_eq!(s["up_to_date"], true);
    assert_eq!(s["output"].as_str().unwrap(), img.to_str().unwrap());
    let again = gets(&reg)[first.len()..].to_vec();
    assert_eq!(count(&again, "manifest"), 1, "{again:?}");
    assert_eq!(count(&again, "blob"), 0, "{again:?}");

    // By digest (what a job's nodes are given): no request at all.
    let by_digest = format!("docker://{}/demo/a@{digest}", reg.addr);
    let n = gets(&reg).len();
    assert_eq!(import(&sb, "c3", &by_digest, &[])["output"], s["output"]);
    assert_eq!(
        gets(&reg).len(),
        n,
        "the store answered without the registry"
    );

    // A job pins the digest its first import resolved: a tag moved later is not followed.
    assert_eq!(import(&sb, "c1", &src, &["--job", "41"])["digest"], digest);
    push(&sb, &reg, "b", b"two", "demo/a:1");
    let pinned = import(&sb, "c1", &src, &["--job", "41"]);
    assert_eq!(pinned["digest"], digest, "the job keeps its first digest");
    assert_eq!(
        cat(Path::new(pinned["output"].as_str().unwrap()), "version"),
        "one"
    );
    let other = import(&sb, "c1", &src, &["--job", "42"]);
    assert_ne!(other["digest"], digest, "a new job follows the tag");
    let moved = PathBuf::from(other["output"].as_str().unwrap());
    assert_eq!(cat(&moved, "version"), "two");

    // list shows both, with sizes; rm removes one by digest.
    let r = run(berth_image(&sb, "c1", &["store", "list"])).expect_ok("store list");
    assert_eq!(r.stdout.lines().count(), 2, "{}", r.stdout);
    assert!(
        r.stdout.contains("MiB") && r.stdout.contains("demo/a:1"),
        "{}",
        r.stdout
    );
    run(berth_image(&sb, "c1", &["store", "rm", &digest])).expect_ok("store rm");
    let r = run(berth_image(&sb, "c1", &["store", "list"])).expect_ok("store list");
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    assert!(!img.exists());
    // A site store (read-only, filled by admins) is searched first: an empty user store and
    // a site store that has the image: found there, nothing fetched, nothing written.
    let site = sb.work.join("site");
    let s = import(&sb, "c4", &src, &["--store-dir", site.to_str().unwrap()]);
    let n = gets(&reg).len();
    let user = sb.work.join("empty-user-store");
    let s2 = import(
        &sb,
        "c5",
        &src,
        &[
            "--store-dir",
            user.to_str().unwrap(),
            "--site-store",
            site.to_str().unwrap(),
        ],
    );
    assert_eq!(s2["output"], s["output"]);
    assert_eq!(count(&gets(&reg)[n..], "blob"), 0);
    assert!(!user.exists(), "nothing written to the user's store");

    let r = run(berth_image(&sb, "c1", &["store", "rm", &digest]));
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("no image"), "{}", r.stderr);
}

#[test]
fn a_damaged_store_file_is_one_line_before_use() {
    let sb = Sandbox::new("store-corrupt");
    let reg = Registry::start("store-corrupt", None);
    push(&sb, &reg, "a", b"one", "demo/a:1");
    let src = format!("docker://{}/demo/a:1", reg.addr);
    let img = PathBuf::from(import(&sb, "c", &src, &[])["output"].as_str().unwrap());
    // One byte changed in place (same size): only the digest can tell.
    let mut bytes = fs::read(&img).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&img, &bytes).unwrap();
    let r = run(berth_image(&sb, "c", &["import", "--store", &src]));
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(lines[0].starts_with("berth-image: "), "{}", lines[0]);
    assert!(lines[0].contains("is damaged (sha256"), "{}", lines[0]);
    assert!(lines[0].contains("berth-image store rm"), "{}", lines[0]);
    // Removed as it says, the next import makes it anew.
    let digest = lines[0]
        .split("store rm ")
        .nth(1)
        .unwrap()
        .split('`')
        .next()
        .unwrap();
    run(berth_image(&sb, "c", &["store", "rm", digest])).expect_ok("store rm");
    let s = import(&sb, "c", &src, &[]);
    assert_eq!(s["up_to_date"], false);
    assert_eq!(cat(&img, "version"), "one");
}

#[test]
fn two_importers_of_one_new_image_import_it_once() {
    let sb = Sandbox::new("store-two");
    let reg = Registry::start("store-two", None);
    // Big enough that the two overlap: a 256 MiB sparse file takes mksquashfs a while.
    let layer = sparse_layer(256 << 20);
    push_layer(
        &reg,
        &sb.root.join("layout-two"),
        &layer,
        json!({}),
        "demo/two:1",
    );
    let src = format!("docker://{}/demo/two:1", reg.addr);
    // Separate layer caches: an importer that did the work would fetch the blobs again.
    let spawn = |cache: &str| {
        berth_image(&sb, cache, &["import", "--json", "--store", &src])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("ca"), spawn("cb"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for o in [&a, &b] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let out = |o: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (sa, sb_) = (out(&a), out(&b));
    assert_eq!(sa["output"], sb_["output"]);
    let ups = [&sa, &sb_]
        .iter()
        .filter(|s| s["up_to_date"] == true)
        .count();
    assert_eq!(ups, 1, "one imported, the other found its result");
    let reqs = gets(&reg);
    assert_eq!(count(&reqs, "blob"), 2, "each blob fetched once: {reqs:?}");
    let leftovers: Vec<String> = dir_names(&store(&sb))
        .into_iter()
        .filter(|n| n.starts_with('.') || n.ends_with(".claim"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_importer_killed_with_sigkill_blocks_nothing() {
    let sb = Sandbox::new("store-kill");
    let reg = Registry::start("store-kill", None);
    let layer = sparse_layer(1 << 30);
    push_layer(
        &reg,
        &sb.root.join("layout-kill"),
        &layer,
        json!({}),
        "demo/kill:1",
    );
    let src = format!("docker://{}/demo/kill:1", reg.addr);
    let mut child = berth_image(&sb, "c", &["import", "--store", &src])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let claimed = || {
        fs::read_dir(store(&sb))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".claim"))
    };
    let started = berth_tests::eventually(Duration::from_secs(60), claimed);
    // setpriv execs berth-image: the child's pid is the importer's.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(started, "the import claimed the image");
    assert!(claimed(), "the killed importer's claim is left");
    // The next import takes the dead importer's claim over and does the work.
    let s = import(&sb, "c", &src, &[]);
    assert_eq!(s["up_to_date"], false);
    assert!(!claimed());
    let list = Command::new("unsquashfs")
        .args(["-lls", s["output"].as_str().unwrap()])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains(&format!("{} ", 1u64 << 30)), "{list}");
}

/// A claim of an importer on another node: waited for while its heartbeat goes on, taken over
/// once it stops (the node died), with no lock held on the shared filesystem meanwhile.
#[test]
fn another_nodes_claim_is_waited_for_then_taken_over_when_it_stops_beating() {
    let sb = Sandbox::new("store-foreign");
    let reg = Registry::start("store-foreign", None);
    push(&sb, &reg, "a", b"one", "demo/a:1");
    let src = format!("docker://{}/demo/a:1", reg.addr);
    // The key of the image: import it once to learn it, then remove it.
    let s = import(&sb, "c", &src, &[]);
    let img = PathBuf::from(s["output"].as_str().unwrap());
    let key = img.file_stem().unwrap().to_string_lossy().into_owned();
    run(berth_image(
        &sb,
        "c",
        &["store", "rm", s["digest"].as_str().unwrap()],
    ))
    .expect_ok("rm");
    let claim = store(&sb).join(format!("{key}.claim"));
    fs::write(&claim, "node-elsewhere 4242 17\n").unwrap();
    let mut child = berth_image(&sb, "c", &["import", "--store", &src])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It waits while the claim beats (touched here every half second, for a few seconds).
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        fs::write(&claim, "node-elsewhere 4242 17\n").unwrap();
        assert!(
            child.try_wait().unwrap().is_none(),
            "did not wait for a live claim"
        );
    }
    assert!(!img.exists());
    // The other node dies: its claim goes stale and is taken over.
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("waiting"));
    assert_eq!(cat(&img, "version"), "one");
    assert!(!claim.exists());
}

/// Two importers on two "nodes" (PID namespaces: both are PID 1) fill one shared layer cache at
/// once: their temp files differ (host and a random part, created O_EXCL), so both succeed.
#[test]
fn importers_with_the_same_pid_share_a_layer_cache() {
    let sb = Sandbox::new("store-samepid");
    let reg = Registry::start("store-samepid", None);
    // 24 MiB that gzip cannot shrink: the downloads overlap.
    let mut noise = vec![0u8; 24 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let layer = tar_layer(&[Entry::File("noise", &noise, 0o644)]);
    push_layer(
        &reg,
        &sb.root.join("layout-samepid"),
        &layer,
        json!({}),
        "demo/noise:1",
    );
    let src = format!("docker://{}/demo/noise:1", reg.addr);
    let u = berth_tests::user();
    let spawn = |out: &str| {
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "--"])
            .args([
                "setpriv",
                "--reuid",
                &u.name,
                "--regid",
                &u.name,
                "--init-groups",
                "--",
            ])
            .arg(berth_image_bin())
            .args(["import", "--quiet", &src, "-o"])
            .arg(sb.work.join(out))
            .env_clear()
            .env("HOME", &u.home)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("BERTH_LAYER_CACHE", sb.work.join("shared-cache"))
            .current_dir(&sb.work)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("a.sqsh"), spawn("b.sqsh"));
    for o in [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for img in ["a.sqsh", "b.sqsh"] {
        let out = Command::new("unsquashfs")
            .arg("-cat")
            .arg(sb.work.join(img))
            .arg("noise")
            .output()
            .unwrap();
        assert!(out.stdout == noise, "{img} holds the layer's file");
    }
    let temps: Vec<String> = dir_names(&sb.work.join("shared-cache/blobs/sha256"))
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
}

/// `berth run docker://...` imports into the store and runs; a second run fetches no blob.
#[test]
fn berth_run_takes_a_registry_reference() {
    let sb = Sandbox::new("store-run");
    let reg = Registry::start("store-run", None);
    push_shell(
        &reg,
        &sb.root.join("layout-run"),
        "demo/run:1",
        b"from the store",
    );
    let src = format!("docker://{}/demo/run:1", reg.addr);
    let berth = |args: &[&str]| {
        let mut cmd = sb.berth(args);
        // berth-image on PATH (the tests' berth is a copy with no berth-image beside it).
        let tools = berth_image_bin().parent().unwrap().display().to_string();
        cmd.env("BERTH_STORE", store(&sb))
            .env("BERTH_LAYER_CACHE", sb.work.join("layers"))
            .env("PATH", format!("{tools}:/usr/bin:/bin"));
        run(cmd)
    };
    let r = berth(&["run", &src, "--", "cat", "/srv/hello.txt"]).expect_ok("berth run docker://");
    assert_eq!(r.stdout, "from the store");
    let n = gets(&reg).len();
    let r = berth(&["run", &src, "--", "cat", "/srv/hello.txt"]).expect_ok("second run");
    assert_eq!(r.stdout, "from the store");
    assert_eq!(count(&gets(&reg)[n..], "blob"), 0);
    // `[images] stage = "node-local"`: the run uses this node's verified copy of the store's
    // file, which --dry-run shows as the image.
    let policy = policy_file(&sb, "[images]\nstage = \"node-local\"\n");
    let staged = |args: &[&str]| {
        let mut cmd = sb.berth(args);
        let tools = berth_image_bin().parent().unwrap().display().to_string();
        cmd.env("BERTH_STORE", store(&sb))
            .env("BERTH_LAYER_CACHE", sb.work.join("layers"))
            .env("BERTH_CONFIG", &policy)
            .env("PATH", format!("{tools}:/usr/bin:/bin"));
        run(cmd)
    };
    let dry = staged(&["run", "--dry-run", &src, "--", "true"]).expect_ok("--dry-run, staged");
    let image = dry
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("image:"))
        .and_then(|l| l.split_whitespace().next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no image line: {}", dry.stdout));
    assert!(image.starts_with(sb.state.join("staged")), "{}", dry.stdout);
    let r = staged(&[
        "run",
        &src,
        "--",
        "sh",
        "-c",
        "echo $BERTH_CONTAINER; cat /srv/hello.txt",
    ])
    .expect_ok("staged run");
    assert_eq!(r.stdout, format!("{}\nfrom the store", image.display()));
    let stored = store(&sb).join(image.file_name().unwrap());
    assert_eq!(
        std::fs::read(&image).unwrap(),
        std::fs::read(&stored).unwrap()
    );
    // An unknown tag: one line, exit 125.
    let missing = format!("docker://{}/demo/run:nope", reg.addr);
    let r = berth(&["run", &missing, "--", "true"]);
    assert_eq!(r.code, Some(125), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("berth: cannot import docker://"),
        "{}",
        r.stderr
    );
}
