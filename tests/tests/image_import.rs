//! `berth-image import` against a real local registry (Debian's docker-registry), with images
//! pushed by skopeo from OCI layouts built here; results run with `berth run` as the test user.

use berth_tests::registry::*;
use berth_tests::{dir_names, run, Run, Sandbox};
use serde_json::json;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEMO_ROOTFS: &str = "/var/cache/berth-test/demo-rootfs";

/// `berth-image ARGS` as the test user, with a per-sandbox layer cache.
fn berth_image(sb: &Sandbox, args: &[&str]) -> Command {
    let mut argv = vec![berth_image_bin().to_string_lossy().into_owned()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let mut cmd = sb.as_user(&argv);
    cmd.env("BERTH_LAYER_CACHE", sb.work.join("cache"));
    cmd
}

fn import_ok(sb: &Sandbox, source: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["import", "--json", source, "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = run(berth_image(sb, &args)).expect_ok(&format!("import {source}"));
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("bad --json output {e}: {}", r.stdout))
}

/// `berth-image import SOURCE -o OUT EXTRA...` as the test user.
fn import_cmd(sb: &Sandbox, source: &str, out: &Path, extra: &[&str]) -> Command {
    let mut args = vec!["import", source, "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    berth_image(sb, &args)
}

/// A failed import: exit 1, exactly one line `berth-image: ...` containing `needle`, no
/// output file, no temp files left next to it.
fn expect_clean_failure(r: &Run, out: &Path, needle: &str) {
    assert_eq!(
        r.code,
        Some(1),
        "expected failure, got {:?}\nstderr: {}",
        r.code,
        r.stderr
    );
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line of error expected:\n{}", r.stderr);
    assert!(lines[0].starts_with("berth-image: "), "{}", lines[0]);
    assert!(
        lines[0].contains(needle),
        "error should mention '{needle}': {}",
        lines[0]
    );
    assert!(!out.exists(), "partial output {} left", out.display());
    if let Some(dir) = out.parent().filter(|d| d.is_dir()) {
        let leftovers: Vec<String> = dir_names(dir)
            .into_iter()
            .filter(|n| n.contains("berth-tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }
}

/// An import without credentials, then one with a wrong password for `user`: both fail
/// cleanly, the first saying credentials are required, the second containing `rejected`.
fn expect_credentials_refused(sb: &Sandbox, src: &str, out: &Path, user: &str, rejected: &str) {
    let r = run(import_cmd(sb, src, out, &[]));
    expect_clean_failure(&r, out, "requires credentials");
    let mut cmd = import_cmd(sb, src, out, &[]);
    cmd.env("BERTH_REGISTRY_USER", user)
        .env("BERTH_REGISTRY_PASSWORD", "wrong");
    expect_clean_failure(&run(cmd), out, rejected);
}

fn cat_in_image(img: &Path, path: &str) -> Option<String> {
    let out = Command::new("unsquashfs")
        .arg("-cat")
        .arg(img)
        .arg(path)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A layer with /bin/sh and cat and their libraries from the demo rootfs (a few MB).
fn shell_layer() -> Vec<u8> {
    assert!(
        Path::new(DEMO_ROOTFS).join("usr/bin/dash").exists(),
        "{DEMO_ROOTFS} is missing: run tests/run as root (it builds the demo image)"
    );
    shell_tar(Path::new(DEMO_ROOTFS), &[], &[])
}

fn layout_dir(sb: &Sandbox, name: &str) -> PathBuf {
    sb.root.join(format!("layout-{name}"))
}

#[test]
fn import_by_tag_and_by_digest_runs_with_berth() {
    let sb = Sandbox::new("img-tag-digest");
    let reg = Registry::start("tag-digest", None);
    let mut layout = Layout::new(&layout_dir(&sb, "app"));
    let base = shell_layer();
    let app = tar_layer(&[
        Entry::Dir("srv/", 0o755),
        Entry::File("srv/hello.txt", b"the app layer", 0o644),
    ]);
    layout.image(
        "v1",
        &[(gzip(&base), LAYER_GZIP), (zstd(&app), LAYER_ZSTD)],
        &[base.clone(), app.clone()],
        json!({"Env": ["GREETING=hello from berth-image", "PATH=/usr/bin:/bin"],
               "Cmd": ["/bin/sh", "-c", "echo $GREETING; cat /srv/hello.txt"],
               "WorkingDir": "/srv", "Labels": {"org.example": "yes"}}),
    );
    reg.push(&layout.dir, "v1", "demo/app:v1", &[]);

    // By tag, the docker:// form.
    let img = sb.work.join("app.sqsh");
    let src = format!("docker://{}/demo/app:v1", reg.addr);
    let s = import_ok(&sb, &src, &img, &[]);
    let digest = s["manifest_digest"].as_str().unwrap().to_string();
    assert_eq!(s["layers"].as_array().unwrap().len(), 2);
    assert!(s["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["cached"] == false));

    // The result runs: image Env, Cmd and WorkingDir come from the imported config.
    let r = run(sb.berth(&["run", img.to_str().unwrap()])).expect_ok("berth run imported image");
    assert_eq!(r.stdout, "hello from berth-image\nthe app layer");

    // inspect shows the source digest and the layers.
    let r = run(berth_image(
        &sb,
        &["inspect", "--json", img.to_str().unwrap()],
    ))
    .expect_ok("inspect");
    let info: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(info["config"]["source"]["manifest_digest"], digest.as_str());
    assert_eq!(info["config"]["config"]["Labels"]["org.example"], "yes");
    assert_eq!(
        info["config"]["source"]["layers"]
            .as_str()
            .unwrap()
            .split(' ')
            .count(),
        2
    );
    run(berth_image(&sb, &["verify", img.to_str().unwrap()])).expect_ok("verify");

    // By digest, the enroot form; every layer now comes from the cache.
    let img2 = sb.work.join("app2.sqsh");
    let s2 = import_ok(&sb, &format!("{}#demo/app@{digest}", reg.addr), &img2, &[]);
    assert_eq!(s2["manifest_digest"], digest.as_str());
    assert!(s2["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["cached"] == true));
    let r = run(sb.berth(&["run", img2.to_str().unwrap(), "--", "cat", "/srv/hello.txt"]))
        .expect_ok("run by digest");
    assert_eq!(r.stdout, "the app layer");

    let r = run(berth_image(&sb, &["cache", "list"])).expect_ok("cache list");
    assert_eq!(r.stdout.lines().count(), 2, "{}", r.stdout);
    let decoded = sb.work.join("cache/decoded/sha256");
    assert_eq!(dir_names(&decoded).len(), 2, "a decoded copy per layer");
    run(berth_image(&sb, &["cache", "prune"])).expect_ok("cache prune");
    let r = run(berth_image(&sb, &["cache", "list"])).expect_ok("cache list");
    assert_eq!(r.stdout, "");
    assert!(dir_names(&decoded).is_empty(), "copies go with their blobs");
}

#[test]
fn multi_arch_index_picks_the_platform() {
    let sb = Sandbox::new("img-index");
    let reg = Registry::start("index", None);
    let mut layout = Layout::new(&layout_dir(&sb, "multi"));
    let mut descs = Vec::new();
    for arch in ["arm64", "amd64"] {
        let l = tar_layer(&[Entry::File("arch", arch.as_bytes(), 0o644)]);
        let (desc, _) = layout.manifest(
            arch,
            &[(gzip(&l), LAYER_GZIP)],
            std::slice::from_ref(&l),
            json!({}),
        );
        descs.push(desc);
    }
    layout.index("multi", &descs);
    reg.push(&layout.dir, "multi", "demo/multi:1", &["--all"]);
    let src = format!("docker://{}/demo/multi:1", reg.addr);
    let amd = sb.work.join("amd.sqsh");
    import_ok(&sb, &src, &amd, &[]);
    assert_eq!(cat_in_image(&amd, "arch").as_deref(), Some("amd64"));
    let arm = sb.work.join("arm.sqsh");
    import_ok(&sb, &src, &arm, &["--platform", "linux/arm64"]);
    assert_eq!(cat_in_image(&arm, "arch").as_deref(), Some("arm64"));
    let none = sb.work.join("none.sqsh");
    let r = run(import_cmd(&sb, &src, &none, &["--platform", "linux/s390x"]));
    expect_clean_failure(&r, &none, "no linux/s390x image");
}

#[test]
fn docker_format_behind_basic_auth() {
    let sb = Sandbox::new("img-auth");
    let reg = Registry::start("auth", Some(("alice", "s3cret")));
    let mut layout = Layout::new(&layout_dir(&sb, "auth"));
    let l = tar_layer(&[Entry::File("secret.txt", b"members only", 0o644)]);
    layout.image(
        "v1",
        &[(gzip(&l), LAYER_GZIP)],
        std::slice::from_ref(&l),
        json!({"Cmd": ["true"]}),
    );
    reg.push(
        &layout.dir,
        "v1",
        "private/app:v1",
        &["--format", "v2s2", "--dest-creds", "alice:s3cret"],
    );
    let src = format!("docker://{}/private/app:v1", reg.addr);
    let out = sb.work.join("auth.sqsh");

    expect_credentials_refused(&sb, &src, &out, "alice", "rejected the credentials");

    // A netrc-style credentials file.
    let creds = sb.user_file(
        "creds",
        format!("machine {} login alice password s3cret\n", reg.addr).as_bytes(),
    );
    let mut cmd = berth_image(&sb, &["import", "-q", &src, "-o", out.to_str().unwrap()]);
    cmd.env("BERTH_CREDENTIALS", &creds);
    let r = run(cmd).expect_ok("import with credentials");
    assert_eq!(r.stderr, "", "--quiet prints nothing");
    assert_eq!(
        cat_in_image(&out, "secret.txt").as_deref(),
        Some("members only")
    );
}

/// Relative paths, types and contents of a tree (symlink targets, file bytes).
fn tree(root: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                out.push(format!("{rel} -> {}", fs::read_link(&p).unwrap().display()));
            } else if m.is_dir() {
                out.push(format!("{rel}/"));
                walk(base, &p, out);
            } else {
                out.push(format!(
                    "{rel} = {}",
                    String::from_utf8_lossy(&fs::read(&p).unwrap())
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn whiteouts_and_opaque_dirs_match_umoci() {
    need_tool("umoci", "umoci");
    let sb = Sandbox::new("img-whiteout");
    let reg = Registry::start("whiteout", None);
    let mut layout = Layout::new(&layout_dir(&sb, "wh"));
    let l1 = tar_layer(&[
        Entry::Dir("etc/", 0o755),
        Entry::File("etc/keep", b"keep", 0o644),
        Entry::File("etc/gone", b"gone", 0o644),
        Entry::Dir("opt/", 0o755),
        Entry::Dir("opt/app/", 0o755),
        Entry::File("opt/app/old", b"old", 0o644),
        Entry::Dir("opt/app/sub/", 0o755),
        Entry::File("opt/app/sub/deep", b"deep", 0o644),
        Entry::Dir("var/", 0o755),
        Entry::File("var/x", b"x", 0o644),
        Entry::Symlink("link", "etc/keep"),
    ]);
    let l2 = tar_layer(&[
        Entry::File("etc/.wh.gone", b"", 0o644),
        Entry::Dir("opt/app/", 0o755),
        Entry::File("opt/app/.wh..wh..opq", b"", 0o644),
        Entry::File("opt/app/new", b"new", 0o644),
        Entry::File(".wh.var", b"", 0o644),
        Entry::File("link", b"now a file", 0o644),
    ]);
    let l3 = tar_layer(&[Entry::Dir("var/", 0o755), Entry::File("var/y", b"y", 0o644)]);
    layout.image(
        "v1",
        // umoci 0.4.7 reads no zstd: gzip and plain tar here (zstd is covered above).
        &[
            (gzip(&l1), LAYER_GZIP),
            (l2.clone(), LAYER_TAR),
            (gzip(&l3), LAYER_GZIP),
        ],
        &[l1.clone(), l2.clone(), l3.clone()],
        json!({}),
    );
    reg.push(&layout.dir, "v1", "demo/wh:v1", &[]);
    let img = sb.work.join("wh.sqsh");
    import_ok(&sb, &format!("docker://{}/demo/wh:v1", reg.addr), &img, &[]);

    let ours = sb.root.join("ours");
    let out = Command::new("unsquashfs")
        .arg("-d")
        .arg(&ours)
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "unsquashfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_dir_all(ours.join(".berth")).unwrap();
    let bundle = sb.root.join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:v1", layout.dir.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = tree(&bundle.join("rootfs"));
    assert_eq!(tree(&ours), theirs);
    assert!(
        theirs.contains(&"opt/app/new = new".to_string())
            && !theirs.iter().any(|p| p.contains("old"))
    );
}

/// Push a one-layer image made of `entries` and import it; returns (result, output path).
fn import_layer(sb: &Sandbox, reg: &Registry, name: &str, layer: Vec<u8>) -> (Run, PathBuf) {
    push_layer(
        reg,
        &layout_dir(sb, name),
        &layer,
        json!({}),
        &format!("hostile/{name}:v1"),
    );
    let out = sb.work.join(format!("{name}.sqsh"));
    let src = format!("docker://{}/hostile/{name}:v1", reg.addr);
    (run(import_cmd(sb, &src, &out, &[])), out)
}

#[test]
fn hostile_layers_are_refused_or_neutralised() {
    let sb = Sandbox::new("img-hostile");
    let reg = Registry::start("hostile", None);
    let passwd = fs::read("/etc/passwd").unwrap();
    // A directory the test user could write to: a write through a symlink would land here.
    let outside = sb.work.join("outside");
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::chown(
        &outside,
        Some(berth_tests::user().uid),
        Some(berth_tests::user().gid),
    )
    .unwrap();
    let escape_up = "../../../../../../../../../tmp/berth-escape";

    // `..` entry: refused.
    let (r, out) = import_layer(
        &sb,
        &reg,
        "dotdot",
        tar_layer(&[Entry::File(escape_up, b"x", 0o644)]),
    );
    expect_clean_failure(&r, &out, "escapes the image root");
    assert!(!Path::new("/tmp/berth-escape").exists());

    // Hardlink to /etc/passwd (absolute and via ..): refused.
    let (r, out) = import_layer(
        &sb,
        &reg,
        "hardlink",
        tar_layer(&[Entry::Hardlink("pw", "/etc/passwd")]),
    );
    expect_clean_failure(&r, &out, "absolute path");
    let (r, out) = import_layer(
        &sb,
        &reg,
        "hardlink2",
        tar_layer(&[Entry::Hardlink("pw", "../../../../../../etc/passwd")]),
    );
    expect_clean_failure(&r, &out, "escapes the image root");

    // Absolute symlink to a writable host directory, then a write through it: stays inside.
    let target = outside.to_str().unwrap();
    let (r, out) = import_layer(
        &sb,
        &reg,
        "symlink",
        tar_layer(&[
            Entry::Symlink("esc", target),
            Entry::File("esc/pwned", b"pwned", 0o644),
        ]),
    );
    let r = r.expect_ok("symlink layer (confined)");
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "wrote outside through a symlink"
    );
    // The dangling link was replaced by a directory inside the image: the file is there.
    assert_eq!(
        cat_in_image(&out, "esc/pwned").as_deref(),
        Some("pwned"),
        "{}",
        r.stderr
    );

    // Device node, fifo: skipped with a warning. setuid/setgid: dropped.
    let (r, out) = import_layer(
        &sb,
        &reg,
        "special",
        tar_layer(&[
            Entry::CharDev("dev-mem", 1, 1),
            Entry::Fifo("fifo"),
            Entry::File("suid", b"#!/bin/sh\n", 0o6755),
        ]),
    );
    let r = r.expect_ok("special files layer");
    assert!(
        r.stderr.contains("skipped device node or fifo /dev-mem"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("dropped setuid/setgid bits of /suid"),
        "{}",
        r.stderr
    );
    let ls = Command::new("unsquashfs")
        .arg("-lls")
        .arg(&out)
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(!ls.contains("dev-mem") && !ls.contains("fifo"), "{ls}");
    let suid = ls.lines().find(|l| l.ends_with("/suid")).unwrap();
    assert!(suid.starts_with("-rwxr-xr-x root/root"), "{suid}");

    // A 0-byte blob served for a layer digest: refused, with the digest named, nothing cached.
    let mut layout = Layout::new(&layout_dir(&sb, "zero"));
    let l = tar_layer(&[Entry::File("a", b"a", 0o644)]);
    let gz = gzip(&l);
    let digest = sha256(&gz);
    layout.image("v1", &[(gz, LAYER_GZIP)], &[l], json!({}));
    reg.push(&layout.dir, "v1", "hostile/zero:v1", &[]);
    fs::write(reg.blob_data(&digest), b"").unwrap();
    let out = sb.work.join("zero.sqsh");
    let r = run(import_cmd(
        &sb,
        &format!("docker://{}/hostile/zero:v1", reg.addr),
        &out,
        &[],
    ));
    expect_clean_failure(&r, &out, &digest);
    let cached = sb
        .work
        .join("cache/blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    assert!(!cached.exists(), "a bad blob entered the cache");

    assert_eq!(
        fs::read("/etc/passwd").unwrap(),
        passwd,
        "/etc/passwd changed"
    );
}

#[test]
fn bad_inputs_fail_with_one_line_and_no_output() {
    let sb = Sandbox::new("img-bad");
    let reg = Registry::start("bad", None);
    let out = sb.work.join("out.sqsh");

    let r = run(import_cmd(
        &sb,
        "docker://registry.invalid/x/y:1",
        &out,
        &[],
    ));
    expect_clean_failure(&r, &out, "cannot reach registry registry.invalid");

    let r = run(import_cmd(
        &sb,
        &format!("docker://{}/no/such:tag", reg.addr),
        &out,
        &[],
    ));
    expect_clean_failure(&r, &out, "not found");

    let not_archive = sb.user_file("notes.tar", b"this is not a tar file at all\n");
    let r = run(import_cmd(
        &sb,
        &format!("docker-archive:{}", not_archive.display()),
        &out,
        &[],
    ));
    expect_clean_failure(&r, &out, "not a tar archive");

    let missing = sb.work.join("no/such/dir/out.sqsh");
    let r = run(import_cmd(
        &sb,
        &format!("docker://{}/no/such:tag", reg.addr),
        &missing,
        &[],
    ));
    expect_clean_failure(&r, &missing, "does not exist");

    // A layer that claims gzip but is not: the digest is right, the content is garbage.
    let mut layout = Layout::new(&layout_dir(&sb, "corrupt"));
    let mut bad = gzip(&tar_layer(&[Entry::File("a", &[7u8; 4096], 0o644)]));
    let mid = bad.len() / 2;
    bad[mid..].iter_mut().for_each(|b| *b = !*b);
    layout.image(
        "v1",
        &[(bad, LAYER_GZIP)],
        &[b"unknown".to_vec()],
        json!({}),
    );
    reg.push(&layout.dir, "v1", "bad/corrupt:v1", &[]);
    let r = run(import_cmd(
        &sb,
        &format!("docker://{}/bad/corrupt:v1", reg.addr),
        &out,
        &[],
    ));
    expect_clean_failure(&r, &out, "layer sha256:");

    // Disk full: the output directory is a 1 MiB tmpfs, the image needs more.
    let small = sb.root.join("small");
    fs::create_dir_all(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=1777", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "mounting a small tmpfs failed (the tests run as root)"
    );
    let big = shell_layer();
    push_layer(&reg, &layout_dir(&sb, "big"), &big, json!({}), "bad/big:v1");
    let full = small.join("big.sqsh");
    let r = run(import_cmd(
        &sb,
        &format!("docker://{}/bad/big:v1", reg.addr),
        &full,
        &[],
    ));
    let leftovers = fs::read_dir(&small).unwrap().count();
    let _ = Command::new("umount").arg(&small).status();
    expect_clean_failure(&r, &full, "No space left on device");
    assert_eq!(leftovers, 0, "files left on the full filesystem");
}

#[test]
fn local_sources_oci_layout_docker_archive_and_rootfs() {
    let sb = Sandbox::new("img-local");
    let layer = tar_layer(&[
        Entry::Dir("etc/", 0o755),
        Entry::File("etc/motd", b"local", 0o644),
    ]);
    let run_cfg = json!({"Cmd": ["/bin/true"], "Env": ["A=b"]});

    // oci:DIR:TAG
    let mut layout = Layout::new(&layout_dir(&sb, "local"));
    let digest = layout.image(
        "v1",
        &[(zstd(&layer), LAYER_ZSTD)],
        std::slice::from_ref(&layer),
        run_cfg.clone(),
    );
    let out = sb.work.join("oci.sqsh");
    let s = import_ok(&sb, &format!("oci:{}:v1", layout.dir.display()), &out, &[]);
    assert_eq!(s["manifest_digest"], digest.as_str());
    assert_eq!(cat_in_image(&out, "etc/motd").as_deref(), Some("local"));

    // oci-archive:FILE:TAG, the same layout as one tar file.
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", &layout.dir).unwrap();
    let archive = sb.user_file("layout.tar", &b.into_inner().unwrap());
    let out = sb.work.join("oci-archive.sqsh");
    let s = import_ok(
        &sb,
        &format!("oci-archive:{}:v1", archive.display()),
        &out,
        &[],
    );
    assert_eq!(s["manifest_digest"], digest.as_str());
    assert_eq!(cat_in_image(&out, "etc/motd").as_deref(), Some("local"));
    let r = run(import_cmd(
        &sb,
        &format!("oci-archive:{}:nope", archive.display()),
        &out,
        &[],
    ));
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("no image tagged 'nope'"), "{}", r.stderr);

    // docker-archive: what `docker save` writes (config named by its digest, plain tar layers).
    let config = json!({"architecture": "amd64", "os": "linux", "config": run_cfg,
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]}})
    .to_string();
    let config_name = format!(
        "{}.json",
        sha256(config.as_bytes()).trim_start_matches("sha256:")
    );
    let manifest =
        json!([{"Config": config_name, "RepoTags": ["local:v1"], "Layers": ["abc/layer.tar"]}])
            .to_string();
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("manifest.json", manifest.as_bytes()),
        (config_name.as_str(), config.as_bytes()),
        ("abc/layer.tar", &layer[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    }
    let archive = sb.user_file("saved.tar", &b.into_inner().unwrap());
    let out = sb.work.join("archive.sqsh");
    import_ok(
        &sb,
        &format!("docker-archive:{}", archive.display()),
        &out,
        &[],
    );
    assert_eq!(cat_in_image(&out, "etc/motd").as_deref(), Some("local"));
    let cfg: serde_json::Value =
        serde_json::from_str(&cat_in_image(&out, ".berth/image.json").unwrap()).unwrap();
    assert_eq!(cfg["config"]["Env"][0], "A=b");

    // A plain rootfs directory, with a config added; runs with berth.
    let rootfs = sb.root.join("rootfs");
    let tar = shell_layer();
    fs::create_dir_all(&rootfs).unwrap();
    let mut a = tar::Archive::new(&tar[..]);
    a.unpack(&rootfs).unwrap();
    let out = sb.work.join("dir.sqsh");
    import_ok(&sb, rootfs.to_str().unwrap(), &out, &["--level", "3"]);
    let r = run(sb.berth(&["run", out.to_str().unwrap(), "--", "sh", "-c", "echo ok"]))
        .expect_ok("run imported rootfs");
    assert_eq!(r.stdout, "ok\n");
    assert!(cat_in_image(&out, ".berth/image.json").is_some());
}

#[test]
fn truncated_downloads_are_retried_then_refused() {
    let sb = Sandbox::new("img-truncated");
    let reg = Registry::start("truncated", None);
    let mut layout = Layout::new(&layout_dir(&sb, "trunc"));
    // Incompressible data, so the blob stays large (and gzip, so skopeo keeps it as is).
    let data: Vec<u8> = (0u32..50_000)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    let layer = tar_layer(&[Entry::File("data", &data, 0o644)]);
    let blob = gzip(&layer);
    assert!(blob.len() > 150_000, "test layer compressed too well");
    layout.image(
        "v1",
        &[(blob.clone(), LAYER_GZIP)],
        std::slice::from_ref(&layer),
        json!({}),
    );
    reg.push(&layout.dir, "v1", "demo/trunc:v1", &[]);

    // The connection drops once in the middle of the layer: the import resumes and succeeds.
    let once = CuttingProxy::start(&reg.addr, 1, 65536);
    let out = sb.work.join("once.sqsh");
    import_ok(
        &sb,
        &format!("docker://{}/demo/trunc:v1", once.addr),
        &out,
        &[],
    );
    let got = Command::new("unsquashfs")
        .arg("-cat")
        .arg(&out)
        .arg("data")
        .output()
        .unwrap();
    assert!(got.stdout == data, "the resumed layer is not the original");

    // It drops every time (each resumed request gets half of what is left): a one-line error naming the layer, no output, nothing cached.
    let always = CuttingProxy::start(&reg.addr, usize::MAX, 1024);
    let out = sb.work.join("always.sqsh");
    let mut cmd = import_cmd(
        &sb,
        &format!("docker://{}/demo/trunc:v1", always.addr),
        &out,
        &[],
    );
    cmd.env("BERTH_LAYER_CACHE", sb.work.join("cache2"));
    let r = run(cmd);
    expect_clean_failure(&r, &out, &format!("download of layer {}", sha256(&blob)));
    let cached: Vec<_> = fs::read_dir(sb.work.join("cache2/blobs/sha256"))
        .unwrap()
        .collect();
    assert!(cached.is_empty(), "partial downloads left in the cache");
}

#[test]
fn bearer_token_auth() {
    let sb = Sandbox::new("img-token");
    let reg = Registry::start("token", None);
    let l = tar_layer(&[Entry::File("secret.txt", b"token holders only", 0o644)]);
    push_layer(
        &reg,
        &layout_dir(&sb, "token"),
        &l,
        json!({"Cmd": ["true"]}),
        "private/tok:v1",
    );
    let proxy = TokenProxy::start(&reg.addr, "bob", "t0ken-pw");
    let src = format!("docker://{}/private/tok:v1", proxy.addr);
    let out = sb.work.join("tok.sqsh");

    // No credentials: the token endpoint refuses, one line, nothing written.
    expect_credentials_refused(
        &sb,
        &src,
        &out,
        "bob",
        "rejected the credentials of user 'bob'",
    );
    assert!(
        proxy.issued.lock().unwrap().is_empty(),
        "a token was issued"
    );

    let mut cmd = berth_image(
        &sb,
        &["import", "--json", &src, "-o", out.to_str().unwrap()],
    );
    cmd.env("BERTH_REGISTRY_USER", "bob")
        .env("BERTH_REGISTRY_PASSWORD", "t0ken-pw");
    run(cmd).expect_ok("import with a bearer token");
    assert_eq!(
        cat_in_image(&out, "secret.txt").as_deref(),
        Some("token holders only")
    );
    // The token was asked for the service and the scope of the challenge.
    let issued = proxy.issued.lock().unwrap().clone();
    assert!(!issued.is_empty());
    for q in &issued {
        assert!(q.contains(&format!("service={TOKEN_SERVICE}")), "{q}");
        assert!(
            q.contains("scope=repository%3Aprivate%2Ftok%3Apull")
                || q.contains("scope=repository:private/tok:pull"),
            "{q}"
        );
    }
}

/// Modification time and inode of a file: unchanged means not rewritten.
fn stamp(p: &Path) -> (std::time::SystemTime, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(p).unwrap();
    (m.modified().unwrap(), m.ino())
}

#[test]
fn reimport_of_an_unchanged_image_is_skipped() {
    let sb = Sandbox::new("img-reimport");
    let reg = Registry::start("reimport", None);
    let mut layout = Layout::new(&layout_dir(&sb, "re"));
    let l1 = tar_layer(&[Entry::File("version", b"one", 0o644)]);
    layout.image(
        "v1",
        &[(gzip(&l1), LAYER_GZIP)],
        std::slice::from_ref(&l1),
        json!({}),
    );
    reg.push(&layout.dir, "v1", "demo/re:1", &[]);
    let src = format!("docker://{}/demo/re:1", reg.addr);
    let img = sb.work.join("re.sqsh");
    let s = import_ok(&sb, &src, &img, &[]);
    assert_eq!(s["up_to_date"], false);
    let before = stamp(&img);

    // Same image, same settings: nothing downloaded or rebuilt, even with the layers gone.
    run(berth_image(&sb, &["cache", "prune"])).expect_ok("cache prune");
    let s = import_ok(&sb, &src, &img, &[]);
    assert_eq!(s["up_to_date"], true);
    assert_eq!(
        s["manifest_digest"],
        cat_config(&img)["source"]["manifest_digest"]
    );
    assert_eq!(stamp(&img), before, "the output was rewritten");
    let r = run(berth_image(&sb, &["cache", "list"])).expect_ok("cache list");
    assert_eq!(r.stdout, "", "layers were downloaded");
    let r = run(import_cmd(&sb, &src, &img, &[])).expect_ok("re-import");
    assert!(r.stderr.contains("is up to date"), "{}", r.stderr);

    // --force, or other squashfs settings, rebuild.
    let s = import_ok(&sb, &src, &img, &["--force"]);
    assert_eq!(s["up_to_date"], false);
    assert_ne!(stamp(&img), before);
    assert_eq!(cat_config(&img)["source"]["squashfs"], "zstd level 3");
    let s = import_ok(&sb, &src, &img, &["--level", "5"]);
    assert_eq!(s["up_to_date"], false);
    assert_eq!(cat_config(&img)["source"]["squashfs"], "zstd level 5");
    let s = import_ok(&sb, &src, &img, &["--level", "5"]);
    assert_eq!(s["up_to_date"], true);

    // The tag moves to a new image: rebuilt with the new content.
    let l2 = tar_layer(&[Entry::File("version", b"two", 0o644)]);
    layout.image(
        "v2",
        &[(gzip(&l2), LAYER_GZIP)],
        std::slice::from_ref(&l2),
        json!({}),
    );
    reg.push(&layout.dir, "v2", "demo/re:1", &[]);
    let s = import_ok(&sb, &src, &img, &[]);
    assert_eq!(s["up_to_date"], false);
    assert_eq!(cat_in_image(&img, "version").as_deref(), Some("two"));

    // An output that is not a readable image is rebuilt, not trusted.
    fs::write(&img, b"garbage").unwrap();
    let s = import_ok(&sb, &src, &img, &[]);
    assert_eq!(s["up_to_date"], false);
    assert_eq!(cat_in_image(&img, "version").as_deref(), Some("two"));

    // Local layouts too.
    let oci = sb.work.join("oci.sqsh");
    let lsrc = format!("oci:{}:v2", layout.dir.display());
    assert_eq!(import_ok(&sb, &lsrc, &oci, &[])["up_to_date"], false);
    assert_eq!(import_ok(&sb, &lsrc, &oci, &[])["up_to_date"], true);
}

fn cat_config(img: &Path) -> serde_json::Value {
    serde_json::from_str(&cat_in_image(img, ".berth/image.json").unwrap()).unwrap()
}

/// An oci layout tagged `v1` with the one layer (gzip).
fn layout_with(sb: &Sandbox, name: &str, layer: &[u8]) -> String {
    let mut layout = Layout::new(&layout_dir(sb, name));
    layout.image(
        "v1",
        &[(gzip(layer), LAYER_GZIP)],
        &[layer.to_vec()],
        json!({"Cmd": ["/bin/true"]}),
    );
    format!("oci:{}:v1", layout.dir.display())
}

/// A small tmpfs owned by the test user, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn new(at: PathBuf, size: &str) -> SmallDisk {
        fs::create_dir_all(&at).unwrap();
        let u = berth_tests::user();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},uid={},gid={},mode=0755", u.uid, u.gid))
            .arg("tmpfs")
            .arg(&at)
            .status()
            .unwrap();
        assert!(st.success(), "mount a tmpfs (the tests run as root)");
        SmallDisk(at)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn sparse_files_stay_sparse_and_max_size_bounds_the_unpacked_image() {
    let sb = Sandbox::new("img-sparse");
    let real: u64 = 10 << 30;
    let source = layout_with(&sb, "sparse", &sparse_layer(real));
    // 10 GiB of file on a 256 MiB disk: only written sparse does it fit.
    let disk = SmallDisk::new(sb.work.join("disk"), "256m");
    let out = disk.0.join("sparse.sqsh");
    import_ok(&sb, &source, &out, &[]);
    let listing = Command::new("unsquashfs")
        .arg("-lls")
        .arg(&out)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.ends_with("/big") && l.contains(&real.to_string())),
        "{listing}"
    );

    // Bounded: a clear error with the figure, nothing left behind.
    let out = disk.0.join("bounded.sqsh");
    let r = run(import_cmd(&sb, &source, &out, &["--max-size", "1G"]));
    expect_clean_failure(
        &r,
        &out,
        "more than --max-size 1 GiB (/big alone is 10 GiB)",
    );
    let r = run(import_cmd(&sb, &source, &out, &["--max-size", "lots"]));
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("not a size"), "{}", r.stderr);
}

fn temps(dir: &Path) -> Vec<String> {
    dir_names(dir)
        .into_iter()
        .filter(|n| n.contains(".berth-tmp-"))
        .collect()
}

#[test]
fn later_imports_remove_temps_of_killed_imports_and_keep_live_ones() {
    use std::os::unix::fs::chown;
    let sb = Sandbox::new("img-stale");
    let u = berth_tests::user();
    let dir = sb.work.join("out");
    fs::create_dir_all(&dir).unwrap();
    chown(&dir, Some(u.uid), Some(u.gid)).unwrap();

    // A real import killed (SIGKILL) while it streams a large sparse file into tar2sqfs.
    let source = layout_with(&sb, "slow", &sparse_layer(8 << 30));
    let out = dir.join("killed.sqsh");
    let mut child = import_cmd(&sb, &source, &out, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let writing = || {
        berth_tests::processes_with("tar2sqfs")
            .iter()
            .any(|(_, c)| c.contains(dir.to_str().unwrap()))
    };
    let started = berth_tests::eventually(std::time::Duration::from_secs(120), writing);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(started, "the import started writing");
    assert!(
        berth_tests::eventually(std::time::Duration::from_secs(20), || !writing()),
        "tar2sqfs outlived berth-image"
    );
    let killed = temps(&dir);
    assert_eq!(
        killed.len(),
        1,
        "the killed import left its temp: {killed:?}"
    );

    // Made by hand: one of a dead import without its lock file (an older berth-image), one a
    // live import holds, and one of another user.
    let mk = |name: &str, owner: bool| {
        let p = dir.join(name);
        fs::create_dir_all(p.join("rootfs")).unwrap();
        fs::write(p.join("rootfs/data"), b"x").unwrap();
        if owner {
            for q in [&p, &p.join("rootfs"), &p.join("rootfs/data")] {
                chown(q, Some(u.uid), Some(u.gid)).unwrap();
            }
        }
        p
    };
    let old = mk(".old.sqsh.berth-tmp-999999999", true);
    let live = mk(".live.sqsh.berth-tmp-1", true);
    let lock = fs::File::create(live.join(".owner")).unwrap();
    chown(live.join(".owner"), Some(u.uid), Some(u.gid)).unwrap();
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock the live import's owner file");
    let others = mk(".root.sqsh.berth-tmp-999999998", false);

    let layer = tar_layer(&[Entry::File("etc/motd", b"next", 0o644)]);
    let next = layout_with(&sb, "next", &layer);
    import_ok(&sb, &next, &dir.join("next.sqsh"), &[]);
    let left = temps(&dir);
    assert!(
        !left.contains(&killed[0]),
        "killed import's temp removed: {left:?}"
    );
    assert!(!old.exists(), "{left:?}");
    assert!(live.exists(), "a live import's temp stays");
    assert!(others.exists(), "another user's temp is theirs");
    drop(lock);
    fs::remove_dir_all(&others).unwrap();
}

/// `unsquashfs -lln`, without what the two writers may differ in and the image does not:
/// directory sizes (their on-disk encoding) and the times of directories, symlinks and the
/// config (set when the import ran).
fn listing(img: &Path) -> Vec<String> {
    let out = Command::new("unsquashfs")
        .arg("-lln")
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success(), "unsquashfs -lln {}", img.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split_whitespace().collect();
            let timeless = l.starts_with('d') || l.starts_with('l') || l.contains(".berth/");
            if f.len() >= 6 && timeless {
                f.drain(3..5);
                if l.starts_with('d') {
                    f.remove(2);
                }
            }
            f.join(" ")
        })
        .collect()
}

/// The streamed import (layers into tar2sqfs) makes the image the old way (unpack, then
/// mksquashfs) makes: same tree, modes, owners, link targets, contents and config, for
/// ordinary and hostile layers in gzip, plain tar and zstd.
#[test]
fn streamed_import_matches_unpacked_import() {
    need_tool("tar2sqfs", "squashfs-tools-ng");
    let sb = Sandbox::new("img-stream");
    let long_name = format!("etc/{}", "n".repeat(150));
    let long_target = format!("/usr/{}", "t".repeat(200));
    let zeros = vec![0u8; 1 << 20];
    let mut l1 = shell_layer();
    l1.truncate(l1.len() - 1024);
    l1.extend(tar_layer(&[
        Entry::Dir("etc/", 0o755),
        Entry::File("etc/a", b"a", 0o644),
        Entry::Hardlink("etc/a-link", "etc/a"),
        Entry::File("etc/suid", b"s", 0o4755),
        Entry::File("etc/mode000", b"0", 0o000),
        Entry::CharDev("dev-mem", 1, 1),
        Entry::Fifo("fifo"),
        Entry::Dir("opt/", 0o750),
        Entry::Dir("opt/sticky/", 0o1777),
        Entry::File("opt/old", b"old", 0o644),
        Entry::File("lib/x86_64-linux-gnu/via-link", b"through lib", 0o644),
        Entry::Symlink("abs", "/etc/a"),
        Entry::Symlink("weird", "a//b/./c/"),
        Entry::File("deep/implicit/parent", b"p", 0o640),
        Entry::File("zeros", &zeros, 0o644),
        Entry::Symlink("esc", "/tmp/berth-stream-outside"),
        Entry::File("esc/pwned", b"inside", 0o644),
        Entry::Symlink("up", "../../../.."),
        Entry::File("up/pwned2", b"inside too", 0o644),
        Entry::Dir("var/", 0o755),
        Entry::File("var/old", b"v", 0o644),
    ]));
    // Names and targets past the 100 bytes of a tar header: GNU long-name records.
    l1.truncate(l1.len() - 1024);
    let mut b = tar::Builder::new(l1);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_size(4);
    b.append_data(&mut h.clone(), &long_name, &b"long"[..])
        .unwrap();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "long-link", &long_target).unwrap();
    let l1 = b.into_inner().unwrap();
    let l2 = tar_layer(&[
        Entry::File("etc/a", b"replaced", 0o600),
        Entry::File("etc/.wh.suid", b"", 0o644),
        Entry::Hardlink("etc/b", "etc/a"),
        Entry::Dir("etc/", 0o711),
        Entry::Dir("opt/", 0o700),
        Entry::File("opt/.wh..wh..opq", b"", 0o644),
        Entry::File("opt/new", b"new", 0o644),
        Entry::File(".wh.var", b"", 0o644),
        Entry::Symlink("var", "opt"),
        Entry::File(".wh.deep", b"", 0o644),
    ]);
    let l3 = tar_layer(&[
        Entry::File("var/via-var", b"in opt", 0o644),
        Entry::Dir("deep/", 0o755),
        Entry::File("abs", b"now a file", 0o644),
    ]);
    let mut layout = Layout::new(&layout_dir(&sb, "stream"));
    layout.image(
        "v1",
        &[
            (gzip(&l1), LAYER_GZIP),
            (l2.clone(), LAYER_TAR),
            (zstd(&l3), LAYER_ZSTD),
        ],
        &[l1, l2, l3],
        json!({"Cmd": ["/bin/sh"], "Env": ["A=b"]}),
    );
    let source = format!("oci:{}:v1", layout.dir.display());
    let streamed = sb.work.join("streamed.sqsh");
    let unpacked = sb.work.join("unpacked.sqsh");
    let s = import_ok(&sb, &source, &streamed, &[]);
    let u = import_ok(&sb, &source, &unpacked, &["--assemble", "unpack"]);
    assert_eq!(s["warnings"], u["warnings"]);
    assert_eq!(s["layers"], u["layers"]);
    assert!(!Path::new("/tmp/berth-stream-outside").exists());
    let (ls, lu) = (listing(&streamed), listing(&unpacked));
    assert_eq!(ls, lu);
    assert!(ls.iter().any(|l| l.ends_with("/var -> opt")), "{ls:?}");
    let trees: Vec<Vec<String>> = [&streamed, &unpacked]
        .iter()
        .map(|img| {
            let dir = sb
                .root
                .join(format!("x-{}", img.file_stem().unwrap().to_string_lossy()));
            let out = Command::new("unsquashfs")
                .arg("-d")
                .arg(&dir)
                .arg(img)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            tree(&dir)
        })
        .collect();
    assert_eq!(trees[0], trees[1]);
    for want in [
        "etc/a = replaced",
        "etc/a-link = a",
        "etc/b = replaced",
        "esc/pwned = inside",
        "opt/via-var = in opt",
        "usr/lib/x86_64-linux-gnu/via-link = through lib",
    ] {
        assert!(trees[0].iter().any(|l| l == want), "{want}: {:?}", trees[0]);
    }
}

/// An import of cached layers reads their entries from the cache's index (each layer is then
/// read once) and its data from a decoded copy verified by the config's diff_id, and gives the
/// same image; a cached blob or copy changed since is refused.
#[test]
fn cached_layers_are_indexed_and_still_verified() {
    let sb = Sandbox::new("img-index");
    let reg = Registry::start("index", None);
    let layer = tar_layer(&[
        Entry::Dir("etc/", 0o755),
        Entry::File("etc/motd", b"indexed", 0o644),
        Entry::Symlink("motd", "etc/motd"),
    ]);
    push_layer(
        &reg,
        &layout_dir(&sb, "index"),
        &layer,
        json!({}),
        "demo/index:v1",
    );
    let src = format!("docker://{}/demo/index:v1", reg.addr);
    let (first, again) = (sb.work.join("first.sqsh"), sb.work.join("again.sqsh"));
    import_ok(&sb, &src, &first, &[]);
    let index = sb.work.join("cache/index/sha256");
    let indexed: Vec<_> = fs::read_dir(&index).unwrap().flatten().collect();
    assert_eq!(indexed.len(), 1, "one layer, one index");
    let s = import_ok(&sb, &src, &again, &[]);
    assert_eq!(s["layers"][0]["cached"], true);
    assert_eq!(listing(&first), listing(&again));
    assert_eq!(cat_in_image(&again, "etc/motd").as_deref(), Some("indexed"));

    // The first read also kept a decoded copy (zstd), named by the blob and the diff_id.
    let blob_hex = indexed[0].file_name().into_string().unwrap();
    let decoded = sb.work.join("cache/decoded/sha256");
    let copies = dir_names(&decoded);
    assert_eq!(
        copies,
        vec![format!("{blob_hex}-{}", &sha256(&layer)[7..])],
        "one decoded copy, by blob and diff_id"
    );
    let copy = decoded.join(&copies[0]);
    let r = run(berth_image(&sb, &["cache", "list", "--json"])).expect_ok("cache list");
    let listed: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        listed[0]["decoded_size"],
        fs::metadata(&copy).unwrap().len(),
        "{listed}"
    );

    // The blob changed behind the index: the import reads the decoded copy, verified against
    // the diff_id, and builds the same image without touching the blob.
    let blob = sb.work.join("cache/blobs/sha256").join(&blob_hex);
    fs::write(
        &blob,
        gzip(&tar_layer(&[Entry::File("etc/motd", b"evil", 0o644)])),
    )
    .unwrap();
    let from_copy = sb.work.join("from-copy.sqsh");
    import_ok(&sb, &src, &from_copy, &[]);
    assert_eq!(listing(&first), listing(&from_copy));
    assert_eq!(
        cat_in_image(&from_copy, "etc/motd").as_deref(),
        Some("indexed")
    );

    // The copy changed too: refused by the diff_id, no output, the copy removed.
    fs::write(
        &copy,
        zstd::encode_all(
            &tar_layer(&[Entry::File("etc/motd", b"evil", 0o644)])[..],
            1,
        )
        .unwrap(),
    )
    .unwrap();
    let out = sb.work.join("tampered.sqsh");
    let r = run(import_cmd(&sb, &src, &out, &[]));
    expect_clean_failure(
        &r,
        &out,
        "decoded copy in the layer cache failed verification",
    );
    assert!(!copy.exists(), "a copy that failed is removed");

    // With no copy, the tampered blob is read: refused by its digest, no output.
    let r = run(import_cmd(&sb, &src, &out, &[]));
    expect_clean_failure(&r, &out, "failed verification");
    assert!(dir_names(&decoded).is_empty(), "no copy of a refused blob");
}

/// A config whose diff_id is not the digest of its layer's content: the layer is imported as
/// its manifest pins it (no diff_id check, as before), and no decoded copy is kept for it, so
/// that a copy is never read for a diff_id it does not have.
#[test]
fn a_wrong_diff_id_gets_no_decoded_copy() {
    let sb = Sandbox::new("img-diffid");
    let reg = Registry::start("diffid", None);
    let layer = tar_layer(&[Entry::File("etc/motd", b"real", 0o644)]);
    let claimed = tar_layer(&[Entry::File("etc/motd", b"claimed", 0o644)]);
    let mut layout = Layout::new(&layout_dir(&sb, "diffid"));
    layout.image("v1", &[(gzip(&layer), LAYER_GZIP)], &[claimed], json!({}));
    reg.push(&layout.dir, "v1", "demo/diffid:v1", &[]);
    let src = format!("docker://{}/demo/diffid:v1", reg.addr);
    let (first, again) = (sb.work.join("first.sqsh"), sb.work.join("again.sqsh"));
    import_ok(&sb, &src, &first, &[]);
    let s = import_ok(&sb, &src, &again, &[]);
    assert_eq!(s["layers"][0]["cached"], true);
    for img in [&first, &again] {
        assert_eq!(cat_in_image(img, "etc/motd").as_deref(), Some("real"));
    }
    let decoded = sb.work.join("cache/decoded/sha256");
    let copies = match decoded.is_dir() {
        true => dir_names(&decoded),
        false => Vec::new(),
    };
    assert!(
        copies.is_empty(),
        "a copy under a wrong diff_id: {copies:?}"
    );
}
