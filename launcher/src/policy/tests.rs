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

fn paths(rules: &[Rule]) -> Vec<&str> {
    rules.iter().map(|r| r.path.as_str()).collect()
}

/// The shipped conf.d files are berth's defaults, the same values berth had built in before
/// they were files: a policy without files behaves as it always did.
#[test]
fn the_shipped_files_are_the_built_in_defaults() {
    let p = Policy::default();
    assert_eq!(paths(&p.device_paths), ["/dev/infiniband"]);
    assert_eq!(paths(&p.device_config), ["/etc/libibverbs.d", "/etc/rdma"]);
    assert!(p.device_libraries.is_empty());
    assert!(p.gpu_enabled);
    assert_eq!(
        paths(&p.gpu_devices),
        [
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools",
            "/dev/nvidia-modeset",
            "/dev/nvidia[0-9]*"
        ]
    );
    assert_eq!(
        paths(&p.gpu_libraries),
        [
            "libcuda.so*",
            "libnvidia-ml.so*",
            "libnvidia-ptxjitcompiler.so*",
            "libnvidia-nvvm.so*",
            "libnvidia-fatbinaryloader.so*",
            "libnvidia-opencl.so*"
        ]
    );
    assert!(p.user_mounts.enabled && p.user_mounts.allowed_sources.is_none());
    assert!(p.user_mounts.denied_sources.is_empty() && p.user_mounts.denied_targets.is_empty());
    assert!(p.pmix_server_dir);
    assert_eq!(p.munge_socket_dir.as_ref().unwrap().path, "/run/munge");
    assert!(p.mounts.is_empty() && p.mpi.is_none() && p.mode.is_none());
    assert_eq!(p.env, EnvRules::default());
    assert_eq!(
        p.gpu_devices[0].origin.0, "built-in 20-nvidia.toml:16",
        "rules name the shipped file and line"
    );
}

/// The files on disk (launcher/conf.d, what the package installs) parse, and loading them as
/// an installed conf.d gives exactly the built-in policy.
#[test]
fn the_installed_files_equal_the_built_in_ones() {
    let dir = scratch("shipped");
    let main = dir.join("berth.toml");
    std::fs::write(&main, "# site\n").unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf.d");
    let mut names: Vec<String> = std::fs::read_dir(&shipped)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let builtin: Vec<&str> = super::defaults::BUILTIN.iter().map(|b| b.0).collect();
    assert_eq!(names, builtin, "every shipped file is built in, in order");
    for name in &names {
        std::fs::copy(shipped.join(name), dir.join("conf.d").join(name)).unwrap();
    }
    let mut installed = Policy::load(Some(&main)).unwrap();
    let mut builtin = Policy::default();
    assert_eq!(installed.files.len(), 1 + names.len());
    // Only where the rules came from differs.
    installed.files.clear();
    builtin.files.clear();
    let unplace = |p: &mut Policy| {
        for r in p
            .device_paths
            .iter_mut()
            .chain(&mut p.device_config)
            .chain(&mut p.gpu_devices)
            .chain(&mut p.gpu_libraries)
            .chain(&mut p.munge_socket_dir)
        {
            r.origin.0 = r
                .origin
                .0
                .rsplit('/')
                .next()
                .unwrap()
                .replace("built-in ", "");
        }
    };
    unplace(&mut installed);
    unplace(&mut builtin);
    assert_eq!(installed, builtin);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An installed file of a built-in's name replaces it: an empty 20-nvidia.toml turns the
/// NVIDIA defaults off and leaves the others; the main file still overrides them.
#[test]
fn an_installed_file_replaces_the_built_in_one_of_its_name() {
    let dir = scratch("shadow");
    let main = dir.join("berth.toml");
    std::fs::write(&main, "# site\n").unwrap();
    assert_eq!(
        Policy::load(Some(&main)).unwrap().gpu_devices.len(),
        5,
        "no conf.d file: the built-in NVIDIA defaults"
    );
    std::fs::write(dir.join("conf.d/20-nvidia.toml"), "# off\n").unwrap();
    let p = Policy::load(Some(&main)).unwrap();
    assert!(p.gpu_devices.is_empty() && p.gpu_libraries.is_empty() && !p.gpu_enabled);
    assert_eq!(paths(&p.device_paths), ["/dev/infiniband"]);
    assert!(p.user_mounts.enabled);
    // The vendor files are the base: the main file overrides them, installed or not.
    std::fs::write(&main, "[user_mounts]\nenabled = false\n").unwrap();
    std::fs::write(
        dir.join("conf.d/10-defaults.toml"),
        super::defaults::BUILTIN[0].1,
    )
    .unwrap();
    let p = Policy::load(Some(&main)).unwrap();
    assert!(
        !p.user_mounts.enabled,
        "berth.toml wins over 10-defaults.toml"
    );
    assert_eq!(
        p.files,
        [
            dir.join("conf.d/10-defaults.toml"),
            dir.join("conf.d/20-nvidia.toml"),
            main.clone()
        ]
    );
    // A main file of that name is not a conf.d file: it does not replace the built-in.
    let odd = dir.join("20-nvidia.toml");
    std::fs::write(&odd, "# main\n").unwrap();
    std::fs::remove_file(dir.join("conf.d/20-nvidia.toml")).unwrap();
    assert_eq!(Policy::load(Some(&odd)).unwrap().gpu_devices.len(), 5);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every section and key of the policy format, as serde knows them: each `deny_unknown_fields`
/// struct names its fields when it meets an unknown one. `[[mount]]` is `mount`.
fn schema_keys() -> Vec<(String, Vec<String>)> {
    fn fields(text: &str) -> Vec<String> {
        let err = toml::from_str::<super::schema::File>(text).unwrap_err();
        let msg = err.message().to_string();
        let (_, list) = msg
            .split_once("expected ")
            .unwrap_or_else(|| panic!("{msg}"));
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect()
    }
    fields("zz_unknown = 1\n")
        .into_iter()
        .map(|section| {
            let probe = match section.as_str() {
                "mount" => "[[mount]]\nzz_unknown = 1\n".to_string(),
                s => format!("[{s}]\nzz_unknown = 1\n"),
            };
            let keys = fields(&probe);
            (section, keys)
        })
        .collect()
}

/// docs/man/berth.toml.5 has a subsection for every section of the format and, in it, every
/// key: a key added to the schema fails here until the page describes it.
#[test]
fn every_policy_key_is_in_the_man_page() {
    let keys = schema_keys();
    assert!(keys.len() >= 9, "{keys:?}");
    assert!(keys
        .iter()
        .any(|(s, k)| s == "runtime" && k.contains(&"mode".into())));
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/man/berth.toml.5"
    ))
    .unwrap()
    .replace("\\-", "-");
    let mut missing = Vec::new();
    for (section, fields) in &keys {
        let heading = match section.as_str() {
            "mount" => ".SS [[mount]]\n".to_string(),
            s => format!(".SS [{s}]\n"),
        };
        let Some((_, rest)) = page.split_once(&heading) else {
            missing.push(heading.trim().to_string());
            continue;
        };
        let body = rest.split(".SS ").next().unwrap_or(rest);
        for key in fields {
            if !body.contains(&format!("\\fB{key}\\fR")) {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    assert!(missing.is_empty(), "not in berth.toml.5: {missing:?}");
}
