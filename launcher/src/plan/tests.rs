use super::key::auto_join_key;
use super::probe::FakeHost;
use super::process::get_var;
use super::site::{gpu_device_visible, gpu_visible};
use super::*;
use crate::image_config::ImageConfig;
use crate::options::{Join, MountSpec};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

fn user() -> HostUser {
    HostUser {
        uid: 1000,
        gid: 1000,
        name: "alice".into(),
        home: "/tmp".into(),
        shell: "/bin/bash".into(),
        gecos: "".into(),
        groups: vec![(1001, "lab".into())],
    }
}

fn opts() -> RunOptions {
    RunOptions {
        mode: Some(Mode::Mount),
        join: Join::No,
        ..RunOptions::new("/img.sqsh", vec!["true".into()])
    }
}

fn image() -> Image {
    Image {
        path: "/img.sqsh".into(),
        kind: ImageKind::Squashfs { bytes_used: 4096 },
        offset: 0,
    }
}

fn plan(o: &RunOptions, cwd: &str) -> Plan {
    plan_with(o, cwd, &Policy::default()).unwrap()
}

fn plan_with(o: &RunOptions, cwd: &str, policy: &Policy) -> Result<Plan> {
    build_on(&node(), o, cwd, &[], policy)
}

/// A node with what a usual Linux host has, and nothing else: the tests do not depend on the
/// machine they run on.
fn node() -> FakeHost {
    let mut host = FakeHost::new()
        .dir("/proc")
        .dir("/sys/fs/cgroup")
        .dir("/dev/shm")
        .dir("/tmp")
        .file("/etc/hosts")
        .file("/etc/resolv.conf")
        .dir("/usr/share")
        .dir("/usr/lib")
        .dir("/var");
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        host = host.file(&format!("/dev/{node}"));
    }
    host
}

fn build_on(
    host: &FakeHost,
    o: &RunOptions,
    cwd: &str,
    env: &[(&str, &str)],
    policy: &Policy,
) -> Result<Plan> {
    let env: Vec<(OsString, OsString)> = env.iter().map(|(k, v)| (k.into(), v.into())).collect();
    Plan::build_on(
        host,
        o,
        image(),
        user(),
        Path::new(cwd),
        "/tmp/berth-1000".into(),
        &env,
        policy,
    )
}

fn targets(p: &Plan) -> Vec<String> {
    p.steps
        .iter()
        .map(|s| s.target.to_string_lossy().into_owned())
        .collect()
}

fn step<'a>(p: &'a Plan, target: &str) -> Option<&'a Step> {
    p.steps.iter().find(|s| s.target == Path::new(target))
}

fn policy(text: &str) -> Policy {
    let mut p = Policy::default();
    p.merge(Path::new("site.toml"), text).unwrap();
    p
}

#[test]
fn default_plan_has_system_mounts_in_order() {
    let p = plan(&opts(), "/");
    let targets: Vec<_> = p
        .steps
        .iter()
        .map(|s| s.target.to_string_lossy().into_owned())
        .collect();
    let pos = |t: &str| {
        targets
            .iter()
            .position(|x| x == t)
            .unwrap_or_else(|| panic!("{t} missing"))
    };
    assert!(
        pos("/proc") < pos("/dev")
            && pos("/dev") < pos("/dev/null")
            && pos("/dev/null") < pos("/tmp")
    );
    assert!(pos("/etc/passwd") > pos("/tmp"));
    assert_eq!(p.rootfs, Rootfs::Fuse);
    assert!(!p.cwd_visible, "cwd / is the image's own root");
    let passwd = p
        .steps
        .iter()
        .find(|s| s.target == Path::new("/etc/passwd"))
        .unwrap();
    assert_eq!(
        passwd.action,
        Action::AddEntry {
            line: "alice:x:1000:1000::/tmp:/bin/bash".into()
        }
    );
}

#[test]
fn cwd_is_bound_unless_covered_or_system() {
    let p = plan(&opts(), "/tmp/work");
    assert!(
        p.cwd_visible && !p.steps.iter().any(|s| s.origin == "cwd"),
        "covered by /tmp"
    );
    let p = plan(&opts(), "/etc");
    assert!(!p.cwd_visible && !p.steps.iter().any(|s| s.origin == "cwd"));
    let p = plan(&opts(), "/srv");
    assert!(p.cwd_visible);
    assert!(p
        .steps
        .iter()
        .any(|s| s.origin == "cwd" && s.target == Path::new("/srv")));
}

#[test]
fn user_mounts_come_last_and_missing_sources_are_refused() {
    let mut o = opts();
    o.mounts
        .push(MountSpec::parse("/tmp:/data:ro", Path::new("/")).unwrap());
    let p = plan(&o, "/");
    let last = p.steps.last().unwrap();
    assert_eq!(last.origin, "--mount");
    assert_eq!(
        last.action,
        Action::Bind {
            source: "/tmp".into(),
            recursive: true,
            readonly: true,
            propagation: Propagation::Private,
            noexec: false,
            create: Create::Auto,
        }
    );
    o.mounts
        .push(MountSpec::parse("/does/not/exist:/x", Path::new("/")).unwrap());
    let err = Plan::build_on(
        &node(),
        &o,
        image(),
        user(),
        Path::new("/"),
        "/s".into(),
        &[],
        &Policy::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("mount source /does/not/exist does not exist"),
        "{err}"
    );
}

#[test]
fn process_precedence_and_entrypoint() {
    let p = plan(&opts(), "/tmp/w");
    let mut cfg = ImageConfig::default();
    cfg.config.env = vec!["PATH=/img/bin".into(), "A=image".into()];
    cfg.config.entrypoint = Some(vec!["/entry".into()]);
    cfg.config.cmd = Some(vec!["default".into()]);
    cfg.config.working_dir = Some("/work".into());
    let host: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), "/host/bin".into()),
        ("B".into(), "host".into()),
        ("LATIN1".into(), OsStr::from_bytes(b"caf\xe9").into()),
    ];
    let mut o = opts();
    o.env = vec![("A".into(), "user".into())];
    let pr = p
        .process(&o, &cfg, &host, Path::new("/tmp/w"), &[])
        .unwrap();
    assert_eq!(pr.argv, vec!["/entry", "true"]);
    let get = |k: &str| get_var(&pr.env, k).and_then(OsStr::to_str);
    assert_eq!(get("PATH"), Some("/img/bin"));
    assert_eq!(get("A"), Some("user"));
    assert_eq!(get("B"), Some("host"));
    // Bytes pass as they are (no U+FFFD).
    assert_eq!(
        get_var(&pr.env, "LATIN1").map(OsStr::as_bytes),
        Some(&b"caf\xe9"[..])
    );
    assert_eq!(pr.workdir, Path::new("/tmp/w"));
    o.entrypoint = false;
    o.argv.clear();
    let pr = p
        .process(&o, &cfg, &host, Path::new("/tmp/w"), &[])
        .unwrap();
    assert_eq!(pr.argv, vec!["default"]);
    cfg.config.cmd = None;
    assert!(p.process(&o, &cfg, &host, Path::new("/"), &[]).is_err());
    let p = plan(&opts(), "/etc");
    cfg.config.cmd = Some(vec!["x".into()]);
    assert_eq!(
        p.process(&o, &cfg, &host, Path::new("/etc"), &[])
            .unwrap()
            .workdir,
        Path::new("/work")
    );
}

#[test]
fn remap_root_maps_to_zero_and_adds_no_entries() {
    let mut o = opts();
    o.remap_root = true;
    let p = plan(&o, "/");
    assert_eq!(p.inner_ids(), (0, 0));
    assert!(!p
        .steps
        .iter()
        .any(|s| matches!(s.action, Action::AddEntry { .. })));
}

#[test]
fn auto_join_keys_from_launchers() {
    let env = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect::<Vec<(OsString, OsString)>>()
    };
    assert_eq!(
        auto_join_key(&env(&[
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
            ("PMIX_NAMESPACE", "123@1")
        ]))
        .as_deref(),
        Some("ompi-123_1")
    );
    assert_eq!(
        auto_join_key(&env(&[
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "1"),
            ("PMIX_NAMESPACE", "1")
        ])),
        None
    );
    assert_eq!(
        auto_join_key(&env(&[
            ("SLURM_JOB_ID", "7"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_STEP_NUM_TASKS", "4")
        ]))
        .as_deref(),
        Some("slurm-7.0")
    );
    assert_eq!(auto_join_key(&env(&[("SLURM_JOB_ID", "7")])), None);
}

#[test]
fn linger_shares_by_fingerprint_but_never_a_writable_root() {
    let mut o = opts();
    o.join = Join::Auto;
    o.linger_secs = Some(30);
    let p = plan(&o, "/");
    assert_eq!(p.join_key, Some(format!("node-{}", &p.fingerprint()[..16])));
    o.writable = true;
    assert_eq!(plan(&o, "/").join_key, None);
    o.writable = false;
    o.join = Join::No;
    assert_eq!(plan(&o, "/").join_key, None);
}

#[test]
fn site_mounts_apply_optional_ones_are_skipped_and_missing_ones_refused() {
    let pol = policy(
        "[[mount]]\nsource = \"/tmp\"\ntarget = \"/lustre\"\noptions = [\"ro\"]\n\
         [[mount]]\nsource = \"/nonexistent/${USER}\"\ntarget = \"/scratch\"\noptional = true\n",
    );
    let p = plan_with(&opts(), "/", &pol).unwrap();
    let lustre = p
        .steps
        .iter()
        .find(|s| s.target == Path::new("/lustre"))
        .unwrap();
    assert_eq!(
        lustre.action,
        Action::Bind {
            source: "/tmp".into(),
            recursive: true,
            readonly: true,
            propagation: Propagation::Private,
            noexec: false,
            create: Create::Auto,
        }
    );
    assert_eq!(lustre.origin, "policy site.toml:1");
    assert!(!p.steps.iter().any(|s| s.target == Path::new("/scratch")));
    assert!(
        p.notes[0].contains("/nonexistent/alice is absent"),
        "{:?}",
        p.notes
    );
    let pol = policy("[[mount]]\nsource = \"/nonexistent\"\n");
    let err = plan_with(&opts(), "/", &pol).unwrap_err().to_string();
    assert!(
        err.contains("site mount source /nonexistent does not exist")
            && err.contains("site.toml:1"),
        "{err}"
    );
}

#[test]
fn user_mounts_are_checked_against_the_site_rules() {
    let pol = policy(
        "[user_mounts]\nallowed_sources = [\"${HOME}\", \"/usr\"]\ndenied_sources = [\"/usr/lib\"]\n\
         denied_targets = [\"/etc\"]\n",
    );
    let with = |spec: &str| {
        let mut o = opts();
        o.mounts
            .push(MountSpec::parse(spec, Path::new("/")).unwrap());
        plan_with(&o, "/", &pol)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(with("/usr/share:/data").is_ok());
    let e = with("/var:/data").unwrap_err();
    assert!(
        e.contains("outside the sources the site allows (/tmp, /usr") && e.contains("site.toml:2"),
        "{e}"
    );
    let e = with("/usr/lib:/data").unwrap_err();
    assert!(
        e.contains("denied by the site policy (denied_sources /usr/lib at site.toml:3)"),
        "{e}"
    );
    let e = with("/usr/share:/etc/x").unwrap_err();
    assert!(
        e.contains("mount target /etc/x is denied") && e.contains("site.toml:4"),
        "{e}"
    );
    let off = policy("[user_mounts]\nenabled = false\n");
    let mut o = opts();
    o.mounts
        .push(MountSpec::parse("/usr", Path::new("/")).unwrap());
    assert!(plan_with(&o, "/", &off)
        .unwrap_err()
        .to_string()
        .contains("disabled"));
}

#[test]
fn env_rules_sit_between_image_and_user() {
    let pol = policy(
        "[env]\npassthrough = [\"SLURM_*\", \"PATH\"]\nset = { SITE = \"1\", A = \"site\" }\n\
         unset = [\"SLURM_SECRET\"]\nprepend = { PATH = \"/site/bin\" }\nappend = { MANPATH = \"/site/man\" }\n",
    );
    let p = plan_with(&opts(), "/", &pol).unwrap();
    let host: Vec<(OsString, OsString)> = [
        ("PATH", "/host/bin"),
        ("SLURM_JOB_ID", "7"),
        ("SLURM_SECRET", "x"),
        ("OTHER", "y"),
    ]
    .iter()
    .map(|(k, v)| (k.into(), v.into()))
    .collect();
    let mut cfg = ImageConfig::default();
    cfg.config.env = vec!["A=image".into(), "B=image".into()];
    let mut o = opts();
    o.env = vec![("B".into(), "user".into())];
    let pr = p
        .process(
            &o,
            &cfg,
            &host,
            Path::new("/"),
            &[MPI_LIB_DIR, HOST_LIB_DIR],
        )
        .unwrap();
    let get = |k: &str| {
        get_var(&pr.env, k)
            .and_then(OsStr::to_str)
            .map(String::from)
    };
    assert_eq!(get("OTHER"), None, "not in passthrough");
    assert_eq!(get("SLURM_JOB_ID").as_deref(), Some("7"));
    assert_eq!(get("SLURM_SECRET"), None, "unset");
    assert_eq!(get("A").as_deref(), Some("site"), "policy over image");
    assert_eq!(get("B").as_deref(), Some("user"), "user over image");
    assert_eq!(get("PATH").as_deref(), Some("/site/bin:/host/bin"));
    assert_eq!(get("MANPATH").as_deref(), Some("/site/man"));
    assert_eq!(
        get("LD_LIBRARY_PATH").as_deref(),
        Some("/.berth/mpi-lib:/.berth/host-lib")
    );
}

#[test]
fn gpu_visibility() {
    let env = |v: &str| vec![("CUDA_VISIBLE_DEVICES".into(), v.into())];
    assert_eq!(gpu_visible(&[]), None);
    assert_eq!(gpu_visible(&env("0,2")), Some(vec![0, 2]));
    assert_eq!(gpu_visible(&env("none")), Some(vec![]));
    assert_eq!(gpu_visible(&env("GPU-1234")), None);
    assert!(gpu_device_visible(Path::new("/dev/nvidia2"), Some(&[0, 2])));
    assert!(!gpu_device_visible(
        Path::new("/dev/nvidia1"),
        Some(&[0, 2])
    ));
    assert!(gpu_device_visible(Path::new("/dev/nvidiactl"), Some(&[])));
}

#[test]
fn fingerprint_changes_with_mounts() {
    let a = plan(&opts(), "/");
    let mut o = opts();
    o.mounts
        .push(MountSpec::parse("/tmp:/data", Path::new("/")).unwrap());
    let b = plan(&o, "/");
    assert_ne!(a.fingerprint(), b.fingerprint());
    assert_eq!(a.fingerprint(), plan(&opts(), "/").fingerprint());
}

#[test]
fn unshared_namespaces_are_another_container_and_net_gets_its_own_sysfs() {
    let a = plan(&opts(), "/");
    let mut o = opts();
    o.unshare = Namespaces::parse("net").unwrap();
    let b = plan(&o, "/");
    o.unshare = Namespaces::parse("ipc").unwrap();
    let c = plan(&o, "/");
    assert_ne!(a.fingerprint(), b.fingerprint());
    assert_ne!(b.fingerprint(), c.fingerprint());
    let sys = |p: &Plan| {
        p.steps
            .iter()
            .find(|s| s.target == Path::new("/sys"))
            .map(|s| s.action.clone())
            .unwrap()
    };
    assert!(matches!(sys(&a), Action::Bind { .. }));
    assert_eq!(sys(&b), Action::Sysfs);
    assert!(matches!(sys(&c), Action::Bind { .. }));
    assert!(b
        .describe(None)
        .contains("namespaces: user, mount, net (only lo, up)"));
    assert!(a.describe(None).contains("namespaces: user, mount\n"));
}

#[test]
fn system_mounts_follow_the_nodes_files() {
    let mut o = opts();
    o.unshare = Namespaces::parse("net").unwrap();
    let bare = FakeHost::new().dir("/tmp");
    let p = build_on(&bare, &o, "/", &[], &Policy::default()).unwrap();
    let t = targets(&p);
    for absent in ["/dev/null", "/dev/shm", "/etc/hosts", "/sys/fs/cgroup"] {
        assert!(!t.iter().any(|x| x == absent), "{absent}: {t:?}");
    }
    assert!(step(&p, "/dev/pts").is_some() && step(&p, "/dev/ptmx").is_some());
    let p = build_on(&node(), &o, "/", &[], &Policy::default()).unwrap();
    let t = targets(&p);
    for present in [
        "/dev/null",
        "/dev/tty",
        "/dev/shm",
        "/etc/hosts",
        "/sys/fs/cgroup",
    ] {
        assert!(t.iter().any(|x| x == present), "{present}: {t:?}");
    }
    // The home is bound only where the node has it.
    let home = |host: &FakeHost| {
        let mut u = user();
        u.home = "/home/alice".into();
        Plan::build_on(
            host,
            &opts(),
            image(),
            u,
            Path::new("/"),
            "/s".into(),
            &[],
            &Policy::default(),
        )
        .unwrap()
        .steps
        .iter()
        .any(|s| s.origin == "home")
    };
    assert!(!home(&node()));
    assert!(home(&node().dir("/home/alice")));
}

#[test]
fn devices_and_visible_gpus_come_with_their_libraries() {
    let libs = [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
    ];
    let gpu_node = node()
        .dir("/dev/infiniband")
        .dir("/etc/libibverbs.d")
        .file("/dev/nvidiactl")
        .file("/dev/nvidia-uvm")
        .file("/dev/nvidia0")
        .file("/dev/nvidia1")
        .ldconfig_lists(&libs);
    let env = [("CUDA_VISIBLE_DEVICES", "1")];
    let p = build_on(&gpu_node, &opts(), "/", &env, &Policy::default()).unwrap();
    let ib = step(&p, "/dev/infiniband").expect("infiniband");
    assert!(matches!(
        ib.action,
        Action::Bind {
            readonly: false,
            ..
        }
    ));
    assert_eq!(ib.origin, "devices built-in 20-infiniband.toml:12");
    let verbs = step(&p, "/etc/libibverbs.d").expect("verbs config");
    assert!(matches!(verbs.action, Action::Bind { readonly: true, .. }));
    assert!(step(&p, "/dev/nvidiactl").is_some() && step(&p, "/dev/nvidia-uvm").is_some());
    assert!(step(&p, "/dev/nvidia1").is_some());
    assert!(step(&p, "/dev/nvidia0").is_none(), "not visible to the job");
    assert_eq!(
        step(&p, HOST_LIB_DIR).map(|s| &s.action),
        Some(&Action::Libraries {
            files: vec![libs[0].into(), libs[1].into()]
        })
    );
    // Without the driver's control device, /dev is not searched for GPUs at all.
    let no_ctl = node().file("/dev/nvidia0").ldconfig_lists(&libs);
    let p = build_on(&no_ctl, &opts(), "/", &[], &Policy::default()).unwrap();
    assert!(step(&p, "/dev/nvidia0").is_none() && step(&p, HOST_LIB_DIR).is_none());
    assert!(step(&p, "/dev/infiniband").is_none());
}

#[test]
fn mpi_libraries_are_found_by_soname() {
    let pol = policy(
        "[mpi]\nfamily = \"openmpi\"\nversion = \"4.1.4\"\nbind = [\"/opt/mpi/share\"]\n\
         libraries = [\"/usr/lib/libmpi.so.40*\", \"/opt/mpi/lib/libopen-pal.so*\"]\n",
    );
    let host = node()
        .file("/usr/lib/libmpi.so.40")
        .file("/usr/lib/libmpi.so.40.30.2")
        .dir("/opt/mpi/share")
        .file("/opt/mpi/lib/libopen-pal.so.40.30.2")
        .link("/opt/mpi/lib/libopen-pal.so.40", "libopen-pal.so.40.30.2")
        .link("/opt/mpi/lib/libopen-pal.so", "gone");
    let p = build_on(&host, &opts(), "/", &[], &pol).unwrap();
    let mpi = p.mpi.expect("mpi plan");
    assert_eq!(mpi.steps[0].target, Path::new("/opt/mpi/share"));
    assert_eq!(mpi.steps[0].origin, "mpi site.toml:4");
    assert_eq!(
        mpi.steps[1].action,
        Action::Libraries {
            files: vec![
                "/usr/lib/libmpi.so.40".into(),
                "/opt/mpi/lib/libopen-pal.so.40".into()
            ]
        }
    );
    assert_eq!(mpi.steps[1].target, Path::new(MPI_LIB_DIR));
    let mut o = opts();
    o.mpi = false;
    assert!(build_on(&host, &o, "/", &[], &pol).unwrap().mpi.is_none());
}

#[test]
fn pmix_and_munge_directories_are_bound_when_present_and_not_shown_already() {
    let host = node()
        .dir("/var/spool/pmix")
        .dir("/var/spool/slurm/spmix_appdir_1000_7.0")
        .dir("/run/munge");
    let env = [
        ("PMIX_SERVER_TMPDIR", "/var/spool/pmix"),
        ("SLURM_PMIX_TMPDIR", "/var/spool/slurm"),
        ("SLURM_JOB_ID", "7"),
        ("SLURM_STEP_ID", "0"),
    ];
    let p = build_on(&host, &opts(), "/", &env, &Policy::default()).unwrap();
    let origin = |t: &str| step(&p, t).map(|s| s.origin.as_str());
    assert_eq!(origin("/var/spool/pmix"), Some("pmix PMIX_SERVER_TMPDIR"));
    assert_eq!(
        origin("/var/spool/slurm/spmix_appdir_1000_7.0"),
        Some("pmix SLURM_PMIX_TMPDIR")
    );
    assert_eq!(
        origin("/run/munge"),
        Some("pmix munge built-in 10-defaults.toml:21")
    );
    // Under /tmp, already shown; absent on the node, left out.
    let env = [("PMIX_SERVER_TMPDIR", "/tmp/pmix")];
    let p = build_on(
        &node().dir("/tmp/pmix"),
        &opts(),
        "/",
        &env,
        &Policy::default(),
    )
    .unwrap();
    assert!(step(&p, "/tmp/pmix").is_none() && step(&p, "/run/munge").is_none());
}

#[test]
fn a_user_mount_is_judged_by_the_real_path_of_its_source() {
    let pol = policy("[user_mounts]\ndenied_sources = [\"/etc\"]\n");
    let host = node().dir("/etc/secret").link("/tmp/link", "/etc/secret");
    let mut o = opts();
    o.mounts
        .push(MountSpec::parse("/tmp/link:/x", Path::new("/")).unwrap());
    let err = build_on(&host, &o, "/", &[], &pol).unwrap_err().to_string();
    assert!(err.contains("mount source /tmp/link is denied"), "{err}");
    let p = build_on(&host, &o, "/", &[], &Policy::default()).unwrap();
    assert!(matches!(
        &step(&p, "/x").unwrap().action,
        Action::Bind { source, .. } if source == Path::new("/etc/secret")
    ));
}
