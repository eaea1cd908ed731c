//! The site policy, enforced by the launcher: site mounts, user-mount rules, devices, host MPI
//! injection with its ABI check, PMIx directories, and refusal of a broken policy.

use berth_tests::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Write a policy file in the sandbox and return its path (BERTH_CONFIG).
fn with_policy(mut cmd: std::process::Command, policy: &Path) -> std::process::Command {
    cmd.env("BERTH_CONFIG", policy);
    cmd
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect(needle) + 1
}

#[test]
fn site_mounts_appear_with_their_options_and_optional_ones_are_skipped() {
    let sb = Sandbox::new("policy-site");
    let lustre = sb.root.join("lustre");
    fs::create_dir_all(lustre.join("project")).unwrap();
    fs::write(lustre.join("project/data.txt"), "on lustre\n").unwrap();
    fs::set_permissions(&lustre, fs::Permissions::from_mode(0o755)).unwrap();
    let text = format!(
        "[[mount]]\nsource = \"{}\"\ntarget = \"/lustre\"\noptions = [\"ro\", \"rbind\"]\n\n\
         [[mount]]\nsource = \"/nonexistent/scratch/${{USER}}\"\ntarget = \"/scratch\"\noptional = true\n",
        lustre.display()
    );
    let policy = policy_file(&sb, &text);
    let image = demo_image();
    let r = run(with_policy(
        sb.berth(&["run", image.to_str().unwrap(), "--", "sh", "-c",
            "cat /lustre/project/data.txt; (echo x > /lustre/new) 2>&1; grep ' /lustre ' /proc/self/mountinfo; test -e /scratch && echo scratch || echo no-scratch"]),
        &policy,
    ))
    .expect_ok("site mount");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "on lustre");
    assert!(lines[1].contains("Read-only file system"), "{}", r.stdout);
    let opts = lines[2].split_whitespace().nth(5).unwrap();
    for want in ["ro", "nosuid", "nodev"] {
        assert!(
            opts.split(',').any(|o| o == want),
            "mount options {opts} lack {want}"
        );
    }
    assert_eq!(
        lines[3], "no-scratch",
        "an optional absent site mount is skipped"
    );
    // --dry-run names the rule behind each mount.
    let dry = run(with_policy(
        sb.berth(&["run", "--dry-run", image.to_str().unwrap(), "--", "true"]),
        &policy,
    ))
    .expect_ok("dry-run");
    let want = format!("[policy {}:1]", policy.display());
    assert!(
        dry.stdout
            .lines()
            .any(|l| l.contains("/lustre") && l.contains(&want)),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .contains("skipped: /nonexistent/scratch/berthtest is absent")
            || dry
                .stdout
                .contains(&format!("/nonexistent/scratch/{} is absent", user().name)),
        "{}",
        dry.stdout
    );
}

#[test]
fn user_mounts_outside_the_allowed_sources_are_refused_naming_the_rule() {
    let sb = Sandbox::new("policy-user");
    let text = "# site rules\n[user_mounts]\nallowed_sources = [\"${HOME}\", \"/tmp\"]\ndenied_targets = [\"/usr\"]\n";
    let policy = policy_file(&sb, text);
    let image = demo_image();
    let img = image.to_str().unwrap();
    run(with_policy(
        sb.berth(&["run", "-m", "/tmp:/data", img, "--", "true"]),
        &policy,
    ))
    .expect_ok("allowed");
    let r = run(with_policy(
        sb.berth(&["run", "-m", "/etc:/data", img, "--", "true"]),
        &policy,
    ));
    assert_eq!(r.code, Some(125));
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("mount source /etc is outside the sources the site allows"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("{}:3", policy.display())),
        "names the rule's file:line: {}",
        r.stderr
    );
    // A symlink inside an allowed place does not lead past the rule.
    let link = sb.work.join("etc-link");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let spec = format!("{}:/data", link.display());
    let r = run(with_policy(
        sb.berth(&["run", "-m", &spec, img, "--", "true"]),
        &policy,
    ));
    assert_eq!(r.code, Some(125), "{}", r.stderr);
    assert!(
        r.stderr.contains("outside the sources the site allows"),
        "{}",
        r.stderr
    );
    let r = run(with_policy(
        sb.berth(&["run", "-m", "/tmp:/usr/data", img, "--", "true"]),
        &policy,
    ));
    assert!(
        r.stderr.contains("mount target /usr/data is denied") && r.stderr.contains(":4)"),
        "{}",
        r.stderr
    );
}

#[test]
fn infiniband_devices_are_carried_in_with_their_numbers_and_absent_ones_change_nothing() {
    assert!(is_root(), "needs root to make device nodes with mknod");
    let sb = Sandbox::new("policy-dev");
    let ib = sb.root.join("fake-dev/infiniband");
    fs::create_dir_all(&ib).unwrap();
    for (name, major, minor) in [
        ("uverbs0", 231, 192),
        ("rdma_cm", 10, 58),
        ("umad0", 231, 0),
    ] {
        nix::sys::stat::mknod(
            &ib.join(name),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(major, minor),
        )
        .unwrap();
    }
    let verbs = sb.root.join("fake-etc/libibverbs.d");
    fs::create_dir_all(&verbs).unwrap();
    fs::write(verbs.join("mlx5.driver"), "driver mlx5\n").unwrap();
    for d in [
        sb.root.join("fake-dev"),
        ib.clone(),
        sb.root.join("fake-etc"),
        verbs.clone(),
    ] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let text = format!(
        "[devices]\npaths = [\"{}:/dev/infiniband\"]\nconfig = [\"{}:/etc/libibverbs.d\"]\n",
        ib.display(),
        verbs.display()
    );
    let policy = policy_file(&sb, &text);
    let image = demo_image();
    let probe = "stat -c '%n %F %t:%T' /dev/infiniband/uverbs0 /dev/infiniband/rdma_cm /dev/infiniband/umad0; cat /etc/libibverbs.d/mlx5.driver; ulimit -l";
    let r = run(with_policy(
        sb.berth(&["run", image.to_str().unwrap(), "--", "sh", "-c", probe]),
        &policy,
    ))
    .expect_ok("devices");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "/dev/infiniband/uverbs0 character special file e7:c0"
    );
    assert_eq!(
        lines[1],
        "/dev/infiniband/rdma_cm character special file a:3a"
    );
    assert_eq!(
        lines[2],
        "/dev/infiniband/umad0 character special file e7:0"
    );
    assert_eq!(lines[3], "driver mlx5");
    // RLIMIT_MEMLOCK is the user's, unchanged.
    let host =
        run(sb.as_user(&["sh".into(), "-c".into(), "ulimit -l".into()])).expect_ok("host ulimit");
    assert_eq!(lines[4], host.stdout.trim());
    // This machine has no InfiniBand: the default policy carries nothing in.
    assert!(
        !Path::new("/dev/infiniband").exists(),
        "this test expects a host without InfiniBand"
    );
    let r = run(sb.berth(&[
        "run",
        image.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "test -e /dev/infiniband && echo present || echo absent",
    ]))
    .expect_ok("no devices");
    assert_eq!(r.stdout, "absent\n");
}

const OPENMPI_POLICY: &str = "[mpi]\nfamily = \"openmpi\"\nversion = \"4.1.4\"\ncompatibility = \"major\"\n\
bind = [\"/usr/lib/x86_64-linux-gnu/openmpi\"]\n\
libraries = [\"/usr/lib/x86_64-linux-gnu/libmpi.so.40*\", \"/usr/lib/x86_64-linux-gnu/libopen-rte.so.40*\", \"/usr/lib/x86_64-linux-gnu/libopen-pal.so.40*\"]\n";

fn mpirun_hello(sb: &Sandbox, policy: &Path, extra: &[&str]) -> Run {
    let mut cmd = sb.as_user(&mpirun_argv(&[], extra, &["mpi-hello"]));
    cmd.env("BERTH_CONFIG", policy);
    run(cmd)
}

#[test]
fn host_open_mpi_is_injected_into_an_open_mpi_image() {
    let sb = Sandbox::new("policy-mpi");
    let policy = policy_file(&sb, OPENMPI_POLICY);
    let r = mpirun_hello(&sb, &policy, &[]).expect_ok("mpirun with host MPI");
    let ranks = two_ranks(&r.stdout);
    for l in &ranks {
        assert!(l.contains("allreduce=ok") && l.contains("ring=ok"), "{l}");
        assert!(
            l.ends_with("libmpi=/.berth/mpi-lib/libmpi.so.40"),
            "the rank maps the host's libmpi: {l}"
        );
    }
    // --no-mpi: the image's own library.
    let r = mpirun_hello(&sb, &policy, &["--no-mpi"]).expect_ok("mpirun --no-mpi");
    for l in r.stdout.lines().filter(|l| l.starts_with("rank ")) {
        assert!(
            l.ends_with("libmpi=/usr/lib/x86_64-linux-gnu/libmpi.so.40.30.4"),
            "{l}"
        );
    }
}

/// A small image with MPICH's library and a static program, made from the host's libmpich12.
fn mpich_image(sb: &Sandbox) -> PathBuf {
    let lib = Path::new("/usr/lib/x86_64-linux-gnu/libmpich.so.12.2.2");
    assert!(
        lib.exists(),
        "{} is missing: scripts/install-deps.sh installs libmpich12",
        lib.display()
    );
    let root = sb.work.join("mpich-rootfs");
    let libdir = root.join("usr/lib/x86_64-linux-gnu");
    fs::create_dir_all(&libdir).unwrap();
    fs::copy(lib, libdir.join("libmpich.so.12.2.2")).unwrap();
    std::os::unix::fs::symlink("libmpich.so.12.2.2", libdir.join("libmpich.so.12")).unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    let src = sb.work.join("hello.c");
    fs::write(
        &src,
        "#include <stdio.h>\nint main(void){puts(\"static hello\");return 0;}\n",
    )
    .unwrap();
    let cc = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(root.join("bin/hello"))
        .arg(&src)
        .status()
        .unwrap();
    assert!(cc.success(), "cc -static failed (libc6-dev is needed)");
    let out = sb.work.join("mpich.sqsh");
    let st = std::process::Command::new("mksquashfs")
        .arg(&root)
        .arg(&out)
        .args(["-noappend", "-quiet", "-no-progress", "-all-root"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    fs::set_permissions(&out, fs::Permissions::from_mode(0o644)).unwrap();
    out
}

#[test]
fn an_mpich_image_is_refused_by_the_abi_check_naming_both_versions() {
    let sb = Sandbox::new("policy-mpich");
    let policy = policy_file(&sb, OPENMPI_POLICY);
    let image = mpich_image(&sb);
    let img = image.to_str().unwrap();
    for mode in ["mount", "extract"] {
        let r = run(with_policy(
            sb.berth(&["run", "--mode", mode, img, "--", "/bin/hello"]),
            &policy,
        ));
        assert_eq!(r.code, Some(125), "{mode}: {} {}", r.stdout, r.stderr);
        let err = r.stderr.lines().last().unwrap_or_default();
        assert!(
            r.stderr
                .lines()
                .filter(|l| !l.contains("unpacking"))
                .count()
                == 1,
            "{}",
            r.stderr
        );
        assert!(
            err.contains("MPICH-ABI 4.0.2") && err.contains("Open MPI 4.1.4"),
            "names both versions: {err}"
        );
        assert!(err.contains("--no-mpi"), "{err}");
        assert!(r.stdout.is_empty(), "nothing ran");
        // --no-mpi runs with the image's own.
        let r = run(with_policy(
            sb.berth(&["run", "--mode", mode, "--no-mpi", img, "--", "/bin/hello"]),
            &policy,
        ))
        .expect_ok("--no-mpi");
        assert_eq!(r.stdout, "static hello\n");
    }
    // The site may prefer a warning and the image's MPI.
    let lenient = policy_file(&sb, &format!("{OPENMPI_POLICY}on_mismatch = \"image\"\n"));
    let r = run(with_policy(
        sb.berth(&["run", img, "--", "/bin/hello"]),
        &lenient,
    ))
    .expect_ok("on_mismatch = image");
    assert_eq!(r.stdout, "static hello\n");
    assert!(
        r.stderr.contains("warning") && r.stderr.contains("image's own MPI"),
        "{}",
        r.stderr
    );
}

#[test]
fn pmix_server_and_munge_directories_are_mounted_in() {
    assert!(
        is_root(),
        "needs root to make directories outside /tmp and home"
    );
    let sb = Sandbox::new("policy-pmix");
    let base = PathBuf::from(format!("/var/tmp/berth-test-pmix-{}", std::process::id()));
    let (pmix, munge) = (base.join("pmix.7.0"), base.join("munge"));
    for d in [&pmix, &munge] {
        fs::create_dir_all(d).unwrap();
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(pmix.join("pmix-server"), "").unwrap();
    fs::write(munge.join("munge.socket.2"), "").unwrap();
    let policy = policy_file(
        &sb,
        &format!("[pmix]\nmunge_socket_dir = \"{}\"\n", munge.display()),
    );
    let mut cmd = with_policy(
        sb.berth(&["run", demo_image().to_str().unwrap(), "--", "sh", "-c", "ls $PMIX_SERVER_TMPDIR; ls /var/tmp/berth-test-pmix-*/munge; echo $SLURM_JOB_ID $PMIX_RANK $OMPI_X"]),
        &policy,
    );
    cmd.env("PMIX_SERVER_TMPDIR", &pmix)
        .env("SLURM_JOB_ID", "7")
        .env("PMIX_RANK", "3")
        .env("OMPI_X", "y");
    let r = run(cmd);
    let _ = fs::remove_dir_all(&base);
    let r = r.expect_ok("pmix");
    assert_eq!(r.stdout, "pmix-server\nmunge.socket.2\n7 3 y\n");
}

#[test]
fn a_broken_policy_stops_berth_with_file_and_line() {
    let sb = Sandbox::new("policy-broken");
    let image = demo_image();
    let cases: Vec<(&str, String)> = vec![
        ("[runtime\nmode = \"mount\"\n", ":1:".into()),
        ("[runtime]\nmode = \"mount\"\nfrobnicate = 1\n", ":3: unknown field `frobnicate`".into()),
        ("[[mount]]\nsource = \"lustre\"\n", ":2: mount source 'lustre' is not an absolute path".into()),
        ("[[mount]]\nsource = \"/tmp\"\ntarget = \"/x\"\n\n[[mount]]\nsource = \"/var\"\ntarget = \"/x\"\n", ":7: duplicate mount target /x".into()),
    ];
    for (text, want) in cases {
        let policy = policy_file(&sb, text);
        let r = run(with_policy(
            sb.berth(&["run", image.to_str().unwrap(), "--", "echo", "ran"]),
            &policy,
        ));
        assert_eq!(r.code, Some(125), "{text:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "nothing ran with a broken policy");
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(
            r.stderr.contains(&format!("{}{want}", policy.display())),
            "{text:?}: {}",
            r.stderr
        );
        let check = run(sb.berth(&["policy", "check", policy.to_str().unwrap()]));
        assert_eq!(check.code, Some(125));
        assert!(check.stderr.contains(&want), "{}", check.stderr);
    }
    // A policy that does not exist where BERTH_CONFIG points is an error, not "no policy".
    let r = run(with_policy(
        sb.berth(&["run", image.to_str().unwrap(), "--", "true"]),
        Path::new("/nonexistent/berth.toml"),
    ));
    assert_eq!(r.code, Some(125));
    assert!(
        r.stderr.contains("/nonexistent/berth.toml: no such file"),
        "{}",
        r.stderr
    );
}

#[test]
fn policy_check_prints_the_merged_policy_of_main_file_and_conf_d() {
    let sb = Sandbox::new("policy-check");
    let main = policy_file(
        &sb,
        "[runtime]\nmode = \"mount\"\n[[mount]]\nsource = \"/tmp\"\ntarget = \"/apps\"\n",
    );
    let confd = main.parent().unwrap().join("conf.d");
    fs::create_dir_all(&confd).unwrap();
    fs::write(confd.join("10-site.toml"), "[runtime]\nmode = \"extract\"\n[[mount]]\nsource = \"/var\"\ntarget = \"/apps\"\noptions = [\"ro\"]\n").unwrap();
    fs::set_permissions(&confd, fs::Permissions::from_mode(0o755)).unwrap();
    let r = run(sb.berth(&["policy", "check", main.to_str().unwrap()])).expect_ok("policy check");
    assert!(r.stdout.contains("mode:         extract"), "{}", r.stdout);
    let confd_file = confd.join("10-site.toml");
    let line = line_of(&r.stdout, "/apps <-");
    let apps = r.stdout.lines().nth(line - 1).unwrap();
    assert!(
        apps.contains("/var")
            && apps.contains("ro")
            && apps.contains(&format!("{}:3", confd_file.display())),
        "{apps}"
    );
    assert_eq!(
        r.stdout.matches("/apps <-").count(),
        1,
        "the later file replaced the mount"
    );
}
