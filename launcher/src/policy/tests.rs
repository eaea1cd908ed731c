use super::files::MAX_POLICY_BYTES;
use super::*;

fn merged(files: &[(&str, &str)]) -> Result<Policy, PolicyError> {
    let mut p = Policy::default();
    for (name, text) in files {
        p.merge(Path::new(name), text)?;
    }
    Ok(p)
}

#[test]
fn a_full_policy_parses() {
    let p = merged(&[(
        "berth.toml",
        r#"
[runtime]
mode = "extract"
linger = 30

[[mount]]
source = "/lustre"
options = ["ro", "rbind"]

[[mount]]
source = "/scratch/${USER}"
target = "/scratch"
optional = true

[user_mounts]
allowed_sources = ["${HOME}", "/scratch", "/tmp"]
denied_targets = ["/usr", "/etc"]

[mpi]
family = "openmpi"
version = "4.1.4"
compatibility = "full"
libraries = ["/usr/lib/x86_64-linux-gnu/libmpi.so.40*"]

[env]
passthrough = ["SLURM_*", "PMIX_*"]
set = { SITE = "x" }
prepend = { PATH = "/opt/site/bin" }
"#,
    )])
    .unwrap();
    assert_eq!(p.mode, Some(Mode::Extract));
    assert_eq!(p.mounts.len(), 2);
    assert!(p.mounts[0].readonly && p.mounts[0].target == "/lustre");
    assert_eq!(p.mounts[0].origin.0, "berth.toml:6");
    assert!(p.mounts[1].optional && p.mounts[1].target == "/scratch");
    assert_eq!(p.user_mounts.allowed_sources.as_ref().unwrap().len(), 3);
    let mpi = p.mpi.unwrap();
    assert_eq!(
        (mpi.family, mpi.compatibility, mpi.on_mismatch),
        (MpiFamily::Openmpi, Compatibility::Full, OnMismatch::Error)
    );
    assert_eq!(p.env.passthrough.unwrap(), vec!["SLURM_*", "PMIX_*"]);
}

#[test]
fn later_files_override_and_mounts_replace_by_target() {
    let p = merged(&[
        ("a.toml", "[runtime]\nmode = \"mount\"\n[[mount]]\nsource = \"/apps\"\n[env]\nset = { A = \"1\", B = \"1\" }\n"),
        ("b.toml", "[runtime]\nmode = \"extract\"\n[[mount]]\nsource = \"/apps\"\noptions = [\"ro\"]\n[env]\nset = { B = \"2\" }\n"),
    ])
    .unwrap();
    assert_eq!(p.mode, Some(Mode::Extract));
    assert_eq!(p.mounts.len(), 1);
    assert!(p.mounts[0].readonly);
    assert_eq!(p.mounts[0].origin.0, "b.toml:3");
    assert_eq!(p.env.set.get("A").map(String::as_str), Some("1"));
    assert_eq!(p.env.set.get("B").map(String::as_str), Some("2"));
}

#[test]
fn errors_name_file_and_line() {
    let cases = [
        ("[runtime\nmode = 1\n", "bad.toml:1:"),
        ("[runtime]\nmdoe = \"mount\"\n", "bad.toml:2: unknown field `mdoe`"),
        ("\n[runtime]\nlinger = \"long\"\n", "bad.toml:3:"),
        ("[[mount]]\nsource = \"lustre\"\n", "bad.toml:2: mount source 'lustre' is not an absolute path"),
        ("[[mount]]\nsource = \"/a\"\ntarget = \"/x\"\n[[mount]]\nsource = \"/b\"\ntarget = \"/x\"\n", "bad.toml:6: duplicate mount target /x (also at bad.toml:1)"),
        ("[[mount]]\nsource = \"/a\"\ntarget = \"/proc\"\n", "bad.toml:3: mount target /proc is reserved"),
        ("[[mount]]\nsource = \"/a\"\noptions = [\"rx\"]\n", "bad.toml:3: unknown mount option 'rx'"),
        ("[user_mounts]\nallowed_sources = [\"home\"]\n", "bad.toml:2: 'home' is not an absolute path"),
        ("[mpi]\nfamily = \"lam\"\nversion = \"1\"\n", "bad.toml:2:"),
        ("[mpi]\nfamily = \"mpich\"\nversion = \"four\"\n", "bad.toml:3: mpi version 'four'"),
        ("[runtime]\nmode = \"copy\"\n", "bad.toml:2: unknown mode 'copy'"),
        ("[[mount]]\nsource = \"a\\nb\"\n", "bad.toml:2: mount source 'a\\nb' is not an absolute path"),
    ];
    for (text, want) in cases {
        let err = merged(&[("bad.toml", text)]).unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn invalid_globs_name_file_and_line() {
    let cases = [
        ("[gpu]\ndevices = [\n  \"/dev/nvidiactl\",\n  \"/dev/nvidia[0-9*\",\n]\n", "bad.toml:4: invalid glob pattern '/dev/nvidia[0-9*'"),
        ("[devices]\npaths = [\"/dev/in***band:/dev/x\"]\n", "bad.toml:2: invalid glob pattern '/dev/in***band'"),
        ("[gpu]\nlibraries = [\"libcuda[.so\"]\n", "bad.toml:2: invalid glob pattern"),
        ("[mpi]\nfamily = \"mpich\"\nversion = \"4\"\nlibraries = [\"/usr/lib/**a/libmpi.so\"]\n", "bad.toml:4: invalid glob pattern"),
        ("\n[env]\npassthrough = [\"SLURM_*\", \"[PMIX\"]\n", "bad.toml:3: invalid glob pattern '[PMIX'"),
    ];
    for (text, want) in cases {
        let err = merged(&[("bad.toml", text)]).unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // Device rules map HOST:CONTAINER; only the host part is a pattern.
    assert!(merged(&[(
        "ok.toml",
        "[devices]\npaths = [\"/dev/nvidia[0-9]*:/dev/x\"]\n"
    )])
    .is_ok());
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-policy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    dir
}

#[test]
fn non_utf8_is_refused_at_its_line() {
    let dir = scratch("utf8");
    let main = dir.join("berth.toml");
    std::fs::write(&main, b"[runtime]\nmode = \"mount\"\n# caf\xe9\n").unwrap();
    let err = Policy::load(Some(&main)).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "{}:3: byte 0xe9 at column 6 is not UTF-8",
            main.display()
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fifos_sockets_devices_and_huge_files_are_refused() {
    let dir = scratch("kinds");
    let main = dir.join("berth.toml");
    std::fs::write(&main, "# site\n").unwrap();
    let conf = dir.join("conf.d");
    let fifo = conf.join("10-fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = Policy::load(Some(&main)).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "{}: is a FIFO, not a regular file",
            fifo.display()
        )),
        "{err}"
    );
    std::fs::remove_file(&fifo).unwrap();

    let sock = conf.join("20-sock.toml");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let err = Policy::load(Some(&main)).unwrap_err().to_string();
    assert!(
        err.contains("20-sock.toml: is a socket, not a regular file"),
        "{err}"
    );
    std::fs::remove_file(&sock).unwrap();

    std::os::unix::fs::symlink("/dev/zero", conf.join("30-zero.toml")).unwrap();
    let err = Policy::load(Some(&main)).unwrap_err().to_string();
    assert!(
        err.contains("30-zero.toml: is a device, not a regular file"),
        "{err}"
    );
    std::fs::remove_file(conf.join("30-zero.toml")).unwrap();

    std::fs::create_dir(conf.join("40-dir.toml")).unwrap();
    let err = Policy::load(Some(&main)).unwrap_err().to_string();
    assert!(
        err.contains("40-dir.toml: is a directory, not a regular file"),
        "{err}"
    );
    std::fs::remove_dir(conf.join("40-dir.toml")).unwrap();

    let huge = std::fs::File::create(conf.join("50-huge.toml")).unwrap();
    huge.set_len(MAX_POLICY_BYTES + 1).unwrap();
    let err = Policy::load(Some(&main)).unwrap_err().to_string();
    assert!(err.contains("50-huge.toml: is larger than 4 MiB"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn many_mounts_merge_in_order_with_later_files_replacing() {
    let many = |n: usize, opts: &str| -> String {
        (0..n)
            .map(|i| format!("[[mount]]\nsource = \"/site/{i}\"\n{opts}\n"))
            .collect()
    };
    let p = merged(&[
        ("a.toml", &many(2000, "")),
        (
            "b.toml",
            &format!(
                "{}[[mount]]\nsource = \"/new\"\n",
                many(10, "options = [\"ro\"]")
            ),
        ),
    ])
    .unwrap();
    assert_eq!(p.mounts.len(), 2001);
    // The earlier file's survivors keep their order, then the later file's mounts.
    assert_eq!(p.mounts[0].target, "/site/10");
    assert_eq!(p.mounts[1989].target, "/site/1999");
    assert_eq!(p.mounts[1990].target, "/site/0");
    assert!(p.mounts[1990].readonly);
    assert_eq!(p.mounts[1990].origin.0, "b.toml:1");
    assert_eq!(p.mounts[2000].target, "/new");
    assert_eq!(p.mounts[1999].origin.0, "b.toml:28");
    assert_eq!(p.mounts[1989].origin.0, "a.toml:5998");
}

#[test]
fn versions_and_expansion() {
    assert_eq!(parse_version("4.1.4"), Some((4, 1, 4)));
    assert_eq!(parse_version("v5.0"), Some((5, 0, 0)));
    assert_eq!(parse_version("4.0.2rc1"), Some((4, 0, 2)));
    assert_eq!(parse_version("x"), None);
    assert_eq!(
        expand("/scratch/${USER}/${UID}", "al", Path::new("/h/al"), 7),
        "/scratch/al/7"
    );
    assert!(name_matches("SLURM_*", "SLURM_JOB_ID") && !name_matches("SLURM_*", "PMIX_X"));
}
