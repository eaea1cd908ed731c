//! berth under a real Slurm (22.05, three slurmd nodes in network namespaces): `srun
//! --container`, the pyxis flags, one container per node per step, MPI over PMIx, exit codes,
//! scancel clean-up and bad input. Jobs are submitted as the non-root test user.

use berth_tests::slurm::{cluster, POLICY};
use berth_tests::*;
use std::time::Duration;

fn image() -> String {
    demo_image().to_string_lossy().into_owned()
}

/// `host field ...` lines of tasks that print `$(hostname) ...`, sorted.
fn lines(r: &Run) -> Vec<String> {
    let mut v: Vec<String> = r.stdout.lines().map(String::from).collect();
    v.sort();
    v
}

#[test]
fn srun_container_runs_every_task_in_the_image_and_no_flag_means_no_container() {
    let c = cluster();
    let sb = Sandbox::new("slurm-basic");
    let probe = "test -e /.berth/image.json && echo image || echo host";
    let img = image();
    let with_slurm_flag = format!("--container={img}");
    let with_pyxis_flag = format!("--container-image={img}");
    for flag in [&with_slurm_flag, &with_pyxis_flag] {
        let r = c
            .run(&sb, &["srun", "-N2", "-n4", flag, "sh", "-c", probe])
            .expect_ok(flag);
        assert_eq!(lines(&r), vec!["image"; 4], "{flag}");
        let r = c
            .run(
                &sb,
                &[
                    "srun",
                    "-N2",
                    "-n4",
                    flag,
                    "grep",
                    "^PRETTY_NAME",
                    "/etc/os-release",
                ],
            )
            .expect_ok(flag);
        assert_eq!(
            lines(&r),
            vec!["PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\""; 4]
        );
    }
    let r = c
        .run(&sb, &["srun", "-N2", "-n2", "sh", "-c", probe])
        .expect_ok("no flag");
    assert_eq!(lines(&r), vec!["host"; 2]);
    // The environment variable form of the flag.
    let mut cmd = c.cmd(&sb, &["srun", "-n1", "sh", "-c", probe]);
    cmd.env("BERTH_CONTAINER_IMAGE", &img);
    assert_eq!(run(cmd).expect_ok("env").stdout, "image\n");
}

#[test]
fn one_container_per_node_per_step() {
    let c = cluster();
    let sb = Sandbox::new("slurm-pernode");
    let flag = format!("--container-image={}", image());
    let r = c
        .run(
            &sb,
            &[
                "srun",
                "-N2",
                "-n6",
                "--ntasks-per-node=3",
                &flag,
                "sh",
                "-c",
                "echo $(hostname) $(readlink /proc/self/ns/mnt) $(readlink /proc/self/ns/user)",
            ],
        )
        .expect_ok("srun");
    let rows: Vec<Vec<String>> = lines(&r)
        .iter()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    assert_eq!(rows.len(), 6, "{}", r.stdout);
    let per_node = |node: &str| {
        let mut ns: Vec<(String, String)> = rows
            .iter()
            .filter(|r| r[0] == node)
            .map(|r| (r[1].clone(), r[2].clone()))
            .collect();
        ns.dedup();
        ns
    };
    let (a, b) = (per_node(&rows[0][0]), per_node(&rows[5][0]));
    assert_eq!(
        a.len(),
        1,
        "all tasks on {} share one container: {a:?}",
        rows[0][0]
    );
    assert_eq!(
        b.len(),
        1,
        "all tasks on {} share one container: {b:?}",
        rows[5][0]
    );
    assert_ne!(rows[0][0], rows[5][0]);
    assert_ne!(a[0], b[0], "different nodes have different containers");
    // A second step gets a fresh container: what the first wrote in its (writable) root is gone.
    let w = format!("--container-image={}", image());
    c.run(
        &sb,
        &[
            "srun",
            "-n1",
            &w,
            "--container-writable",
            "sh",
            "-c",
            "echo x > /step-marker",
        ],
    )
    .expect_ok("step 1");
    let r = c
        .run(
            &sb,
            &[
                "srun",
                "-n1",
                &w,
                "--container-writable",
                "sh",
                "-c",
                "test -e /step-marker && echo kept || echo fresh",
            ],
        )
        .expect_ok("step 2");
    assert_eq!(r.stdout, "fresh\n");
}

#[test]
fn open_mpi_over_pmix_across_nodes() {
    let c = cluster();
    let sb = Sandbox::new("slurm-mpi");
    let flag = format!("--container={}", image());
    let r = c
        .run(
            &sb,
            &[
                "srun",
                "--mpi=pmix",
                "-N2",
                "-n4",
                "--ntasks-per-node=2",
                &flag,
                "mpi-hello",
            ],
        )
        .expect_ok("mpi");
    let ranks = lines(&r);
    assert_eq!(ranks.len(), 4, "{}", r.stdout);
    for (i, l) in ranks.iter().enumerate() {
        assert!(l.starts_with(&format!("rank {i}/4 ")), "{l}");
        assert!(
            l.contains("allreduce=ok") && l.contains("ring=ok") && l.contains("bookworm"),
            "{l}"
        );
        assert!(l.contains(&format!("uid={}", user().uid)), "{l}");
    }
    let field = |l: &str, f: &str| {
        l.split_whitespace()
            .find(|w| w.starts_with(f))
            .unwrap()
            .to_string()
    };
    // Ranks 0,1 on one node, 2,3 on the other: shared memory within a node needs one container.
    assert_eq!(field(&ranks[0], "host="), field(&ranks[1], "host="));
    assert_eq!(field(&ranks[0], "mnt="), field(&ranks[1], "mnt="));
    assert_eq!(field(&ranks[2], "user="), field(&ranks[3], "user="));
    assert_ne!(field(&ranks[0], "host="), field(&ranks[2], "host="));
}

#[test]
fn sbatch_container_runs_the_script_and_its_steps_in_the_image() {
    let c = cluster();
    let sb = Sandbox::new("slurm-sbatch");
    let out = sb.work.join("job.out");
    let flag = format!("--container={}", image());
    // The batch script itself sees the image (and the Slurm client, to start steps); each step
    // gets a container of its own, also in the image, as the submitting user.
    let script = "test -e /.berth/image.json && echo script-in-image; \
                  echo script-ns $(readlink /proc/self/ns/mnt); \
                  srun -n2 sh -c 'test -e /.berth/image.json && echo step-in-image $(id -u) $(readlink /proc/self/ns/mnt)'; \
                  echo step-exit $?";
    let o = format!("--output={}", out.display());
    c.run(
        &sb,
        &[
            "sbatch", "--wait", "-N1", "-n2", &flag, &o, "--wrap", script,
        ],
    )
    .expect_ok("sbatch");
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(lines[0], "script-in-image", "{text}");
    let script_ns = lines[1].strip_prefix("script-ns ").unwrap();
    let steps: Vec<&str> = lines[2..4].to_vec();
    let uid = user().uid.to_string();
    for s in &steps {
        let f: Vec<&str> = s.split(' ').collect();
        assert_eq!(f[..2], ["step-in-image", uid.as_str()], "{text}");
        assert_ne!(f[2], script_ns, "a step has a container of its own: {text}");
    }
    assert_eq!(steps[0], steps[1], "the step's two tasks share one: {text}");
    assert_eq!(lines[4], "step-exit 0", "{text}");
}

#[test]
fn pyxis_flags() {
    let c = cluster();
    let sb = Sandbox::new("slurm-pyxis");
    let img = format!("--container-image={}", image());
    let data = sb.work.join("data");
    std::fs::create_dir(&data).unwrap();
    let file = sb.user_file("data/one.txt", b"one\n");
    if is_root() {
        nix::unistd::chown(&data, Some(nix::unistd::Uid::from_raw(user().uid)), None).unwrap();
    }
    let mounts = format!(
        "--container-mounts={0}:/mnt/ro:ro,{0}:/mnt/rw,{1}:/etc/one.txt",
        data.display(),
        file.display()
    );
    let r = c
        .run(&sb, &["srun", "-n1", &img, &mounts, "sh", "-c", "cat /mnt/ro/one.txt /etc/one.txt; (echo x > /mnt/ro/x) 2>&1; echo y > /mnt/rw/y && echo rw-ok"])
        .expect_ok("mounts");
    assert!(
        r.stdout.starts_with("one\none\n")
            && r.stdout.contains("Read-only file system")
            && r.stdout.ends_with("rw-ok\n"),
        "{}",
        r.stdout
    );
    assert_eq!(std::fs::read_to_string(data.join("y")).unwrap(), "y\n");
    let r = c
        .run(
            &sb,
            &["srun", "-n1", &img, "--container-workdir=/usr/share", "pwd"],
        )
        .expect_ok("workdir");
    assert_eq!(r.stdout, "/usr/share\n");
    let mut cmd = c.cmd(
        &sb,
        &[
            "srun",
            "-n1",
            &img,
            "--container-env=MY_VAR",
            "sh",
            "-c",
            "echo $MY_VAR $DEMO_IMAGE",
        ],
    );
    cmd.env("MY_VAR", "from-host");
    assert_eq!(run(cmd).expect_ok("env").stdout, "from-host berth-demo\n");
    let r = c
        .run(
            &sb,
            &[
                "srun",
                "-n1",
                &img,
                "sh",
                "-c",
                "(echo x > /etc/new) 2>&1; true",
            ],
        )
        .expect_ok("readonly");
    assert!(r.stdout.contains("Read-only file system"), "{}", r.stdout);
    let r = c
        .run(
            &sb,
            &[
                "srun",
                "-n1",
                &img,
                "--container-writable",
                "sh",
                "-c",
                "echo x > /etc/new && cat /etc/new",
            ],
        )
        .expect_ok("writable");
    assert_eq!(r.stdout, "x\n");
    let r = c
        .run(
            &sb,
            &["srun", "-n1", &img, "--container-remap-root", "id", "-u"],
        )
        .expect_ok("remap-root");
    assert_eq!(r.stdout, "0\n");
    // The image's entrypoint (it exports DEMO_ENTRYPOINT=ran, then execs its arguments) runs in
    // front of the task's whole command, quoting kept, when asked or by the site's default (the
    // test cluster says entrypoint=1), not with --no-container-entrypoint; the exit code of the
    // command still reaches srun.
    let show = "echo \"${DEMO_ENTRYPOINT:-none} [$1] [$2]\"; exit 4";
    let r = c.run(
        &sb,
        &[
            "srun",
            "-n2",
            &img,
            "--container-entrypoint",
            "sh",
            "-c",
            show,
            "zero",
            "it's two words",
            "",
        ],
    );
    assert_eq!(r.code, Some(4), "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout, "ran [it's two words] []\nran [it's two words] []\n",
        "{}",
        r.stderr
    );
    let r = c.run(&sb, &["srun", "-n1", &img, "sh", "-c", show, "zero", "a"]);
    assert_eq!(r.stdout, "ran [a] []\n", "{}", r.stderr);
    let r = c.run(
        &sb,
        &[
            "srun",
            "-n1",
            &img,
            "--no-container-entrypoint",
            "sh",
            "-c",
            show,
            "zero",
            "a",
        ],
    );
    assert_eq!(r.stdout, "none [a] []\n", "{}", r.stderr);
    let r = c
        .run(
            &sb,
            &[
                "srun",
                "-n1",
                &img,
                "sh",
                "-c",
                "id -un; test -d $HOME && echo home",
            ],
        )
        .expect_ok("identity");
    assert_eq!(r.stdout, format!("{}\nhome\n", user().name));
    let r = c
        .run(
            &sb,
            &[
                "srun",
                "-n1",
                &img,
                "--no-container-mount-home",
                "sh",
                "-c",
                "ls $HOME 2>/dev/null | wc -l",
            ],
        )
        .expect_ok("no home");
    assert_eq!(r.stdout.trim(), "0");
}

#[test]
fn exit_codes_reach_srun_and_scancel_leaves_nothing() {
    let c = cluster();
    let sb = Sandbox::new("slurm-exit");
    let img = format!("--container-image={}", image());
    let r = c.run(&sb, &["srun", "-n1", &img, "sh", "-c", "exit 3"]);
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    // A long step, cancelled.
    let srun = c
        .cmd(
            &sb,
            &[
                "srun",
                "-N2",
                "-n4",
                "--job-name=berth-cancel",
                &img,
                "sleep",
                "300",
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sleeping = || {
        live_processes(user().uid)
            .iter()
            // "/usr/bin/sleep 300", or "sleep 300" through the entrypoint
            .filter(|(_, c)| c.split(' ').next().is_some_and(|a| a.ends_with("sleep")))
            .count()
    };
    let running = eventually(Duration::from_secs(30), || sleeping() == 4);
    let snapshot = live_processes(user().uid);
    // The step's image servers (one image keeper per node and step): other tests' keepers may
    // still be waiting out their idle time, so count only those Slurm started.
    let helpers = live_processes(user().uid)
        .iter()
        .filter(|(pid, c)| c.starts_with("berth-imagefs") && in_sandbox(&sb, *pid))
        .count();
    let cancel = c.run(&sb, &["scancel", "--name=berth-cancel"]);
    let srun = srun.wait_with_output().unwrap();
    assert!(
        running,
        "the step did not start: {snapshot:?} {}",
        String::from_utf8_lossy(&srun.stderr)
    );
    assert_eq!(helpers, 2, "one FUSE server per node while running");
    cancel.expect_ok("scancel");
    let of_slurm = || -> Vec<(i32, String)> {
        live_processes(user().uid)
            .into_iter()
            .filter(|(pid, _)| in_sandbox(&sb, *pid))
            .collect()
    };
    let clean = eventually(Duration::from_secs(30), || of_slurm().is_empty());
    assert!(clean, "left after scancel: {:?}", of_slurm());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains("fuse.berth") && !mounts.contains("/tmp/berth-"),
        "host mount table changed:\n{mounts}"
    );
    // Nothing of the job is left in the state directory: only the lock and the caches.
    let join = std::path::PathBuf::from(format!("/tmp/berth-{}/join", user().uid));
    let left: Vec<String> = std::fs::read_dir(&join)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".lock")
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", join.display());
}

#[test]
fn bad_input_fails_fast_in_srun_output_and_the_node_stays_usable() {
    let c = cluster();
    let sb = Sandbox::new("slurm-bad");
    let text = sb.user_file("not.sqsh", b"not an image\n");
    // An image with an entrypoint but no /bin/sh to run it through.
    let bare = sb.work.join("bare");
    std::fs::create_dir_all(bare.join(".berth")).unwrap();
    std::fs::write(
        bare.join(".berth/image.json"),
        r#"{"schemaVersion": 1, "config": {"Entrypoint": ["/entry"]}}"#,
    )
    .unwrap();
    let shellless = sb.work.join("shellless.sqsh");
    let st = std::process::Command::new("mksquashfs")
        .arg(&bare)
        .arg(&shellless)
        .args(["-quiet", "-no-progress", "-all-root"])
        .status()
        .unwrap();
    assert!(st.success());
    let cases = [
        (
            format!(
                "--container-image={}",
                sb.work.join("missing.sqsh").display()
            ),
            vec![],
            "image not found",
        ),
        (
            format!("--container-image={}", text.display()),
            vec![],
            "not a squashfs image",
        ),
        (
            format!("--container-image={}", image()),
            vec!["--container-mounts=/tmp:/x/../etc"],
            "contains '.' or '..'",
        ),
        (
            format!("--container-image={}", image()),
            vec!["--container-mounts=/etc/shadow:/s"],
            "denied by the site policy",
        ),
        (
            format!("--container-image={}", shellless.display()),
            vec!["--container-entrypoint"],
            "needs /bin/sh in the image",
        ),
    ];
    for (img, extra, says) in cases {
        let mut argv = vec!["srun", "-n1", img.as_str()];
        argv.extend(extra.iter().copied());
        argv.extend(["echo", "ran"]);
        let r = c.run(&sb, &argv);
        assert_ne!(r.code, Some(0), "{argv:?}");
        assert!(!r.stdout.contains("ran"), "{argv:?} ran");
        assert!(
            r.stderr.contains(says),
            "{argv:?}: expected '{says}' in srun's output:\n{}",
            r.stderr
        );
    }
    // No node was drained or set down: they take the next job.
    let states = c.node_states();
    assert!(
        states
            .iter()
            .all(|s| !["drain", "down", "fail"].iter().any(|bad| s.contains(bad))),
        "{states:?}"
    );
    let flag = format!("--container-image={}", image());
    c.run(&sb, &["srun", "-N3", "-n3", &flag, "true"])
        .expect_ok("next job");
}

#[test]
fn a_named_container_keeps_its_changes_across_the_steps_of_a_job() {
    let c = cluster();
    let sb = Sandbox::new("slurm-named");
    let out = sb.work.join("named.out");
    let script = "srun -n1 --container-name=keep sh -c 'echo saved > /saved-file' && \
                  srun -n1 --container-name=keep cat /saved-file && \
                  srun -n1 sh -c 'test -e /saved-file && echo unnamed-sees-it || echo unnamed-fresh'";
    let flag = format!("--container={}", image());
    let o = format!("--output={}", out.display());
    let submitted = c
        .run(
            &sb,
            &[
                "sbatch", "--wait", "-w", "n1", "-n1", &flag, &o, "--wrap", script,
            ],
        )
        .expect_ok("sbatch");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "saved\nunnamed-fresh\n"
    );
    // The job epilog removed this job's saved layer and records (other jobs' may come and go).
    let job = submitted
        .stdout
        .split_whitespace()
        .last()
        .expect("sbatch prints the job id")
        .to_string();
    let prefix = format!("slurm-{job}-");
    let named = std::path::PathBuf::from(format!("/tmp/berth-{}/named", user().uid));
    let gone = eventually(Duration::from_secs(20), || {
        std::fs::read_dir(&named)
            .map(|rd| {
                !rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            })
            .unwrap_or(true)
    });
    assert!(gone, "saved layers left in {}", named.display());
}

#[test]
fn container_image_can_be_a_registry_reference_imported_on_the_nodes() {
    use berth_tests::registry::{push_shell, Registry};
    let c = cluster();
    let sb = Sandbox::new("slurm-registry");
    let reg = Registry::start_on("slurm", None, berth_tests::slurm::BRIDGE_IP);
    push_shell(
        &reg,
        &sb.root.join("layout"),
        "demo/shell:v1",
        b"from the registry\n",
    );
    let flag = format!("--container-image=docker://{}/demo/shell:v1", reg.addr);
    let r = c
        .run(&sb, &["srun", "-N2", "-n4", &flag, "cat", "/srv/hello.txt"])
        .expect_ok("registry image");
    assert_eq!(lines(&r), vec!["from the registry"; 4]);
    // A second step finds the import up to date.
    c.run(&sb, &["srun", "-N2", "-n2", &flag, "cat", "/srv/hello.txt"])
        .expect_ok("second step");
    // An unreachable registry: the step fails with the cause in srun's output.
    let r = c.run(
        &sb,
        &[
            "srun",
            "-n1",
            "--container-image=docker://127.0.0.1:1/demo/shell:v1",
            "echo",
            "ran",
        ],
    );
    assert_ne!(r.code, Some(0));
    assert!(!r.stdout.contains("ran"));
    assert!(
        r.stderr
            .contains("cannot import docker://127.0.0.1:1/demo/shell:v1"),
        "{}",
        r.stderr
    );
}

#[test]
fn salloc_and_sbatch_container_image_apply_to_their_steps() {
    let c = cluster();
    let sb = Sandbox::new("slurm-salloc");
    let flag = format!("--container-image={}", image());
    let probe = "test -e /.berth/image.json && echo step-in-image";
    let r = c
        .run(
            &sb,
            &["salloc", "-N1", "-n2", &flag, "srun", "sh", "-c", probe],
        )
        .expect_ok("salloc");
    assert_eq!(r.stdout, "step-in-image\nstep-in-image\n");
    let out = sb.work.join("job.out");
    let o = format!("--output={}", out.display());
    let script = format!("srun -n1 sh -c '{probe}'");
    c.run(
        &sb,
        &[
            "sbatch", "--wait", "-N1", "-n1", &flag, &o, "--wrap", &script,
        ],
    )
    .expect_ok("sbatch");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "step-in-image\n");
}

#[test]
fn tasks_start_as_slurm_starts_them_and_bytes_pass_unchanged() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let c = cluster();
    let sb = Sandbox::new("slurm-procstate");
    let flag = format!("--container-image={}", image());
    // The task's signal dispositions and mask, and what a closed pipe does to its writer,
    // are the ones Slurm gives a task without a container.
    for probe in [
        "grep -E '^Sig(Ign|Blk)' /proc/self/status",
        "yes | head -1 >/dev/null; echo ${PIPESTATUS[0]}",
    ] {
        let native = c
            .run(&sb, &["srun", "-n1", "bash", "-c", probe])
            .expect_ok(probe);
        let inside = c
            .run(&sb, &["srun", "-n1", &flag, "bash", "-c", probe])
            .expect_ok(probe);
        assert_eq!(inside.stdout, native.stdout, "{probe}: {}", inside.stderr);
    }
    // A Latin-1 variable in srun's environment (it made the plugin abort srun) and a Latin-1
    // argument arrive as they are.
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let show =
        "for v in \"$V\" \"$1\"; do printf %s \"$v\" | od -An -tx1 | tr -d ' \\n'; echo; done";
    let mut cmd = c.cmd(&sb, &["srun", "-n1", &flag, "sh", "-c", show, "sh"]);
    cmd.arg(OsStr::from_bytes(b"f\xe9.txt"))
        .env("V", OsStr::from_bytes(b"caf\xe9"));
    let r = run(cmd).expect_ok("latin-1");
    assert_eq!(
        r.stdout,
        format!("{}\n{}\n", hex(b"caf\xe9"), hex(b"f\xe9.txt")),
        "{}",
        r.stderr
    );
}

/// Issue 12: empty, conflicting and malformed arguments, and bad boolean variables, are one
/// `berth:` line at submit and nothing runs (on the host or elsewhere).
#[test]
fn bad_arguments_are_one_line_at_submit_and_run_nothing() {
    let c = cluster();
    let sb = Sandbox::new("slurm-badargs");
    let img = format!("--container-image={}", image());
    // (flags, a variable in srun's environment, what the error line says)
    type Case<'a> = (Vec<&'a str>, Option<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--container-image="], None, "--container-image"),
        (vec![&img, "--container-name=a/b"], None, "'/'"),
        (vec![&img, "--container-name=:exec"], None, "empty name"),
        (vec![&img, "--container-name=a:sometimes"], None, "flag"),
        (
            vec![&img, "--container-readonly", "--container-writable"],
            None,
            "--container-readonly",
        ),
        (vec![&img, "--container-env="], None, "--container-env"),
        (vec![&img, "--container-env=FOO,"], None, "--container-env"),
        (
            vec![&img, "--container-mounts="],
            None,
            "--container-mounts",
        ),
        (
            vec![&img],
            Some(("BERTH_CONTAINER_WRITABLE", "maybe")),
            "BERTH_CONTAINER_WRITABLE=maybe",
        ),
        (
            vec![&img],
            Some(("PYXIS_CONTAINER_REMAP_ROOT", "on")),
            "PYXIS_CONTAINER_REMAP_ROOT=on",
        ),
    ];
    for (flags, var, says) in cases {
        let mut argv = vec!["srun", "-n1"];
        argv.extend(&flags);
        argv.extend(["echo", "ran"]);
        let mut cmd = c.cmd(&sb, &argv);
        if let Some((k, v)) = var {
            cmd.env(k, v);
        }
        let r = run(cmd);
        assert_ne!(r.code, Some(0), "{flags:?} {var:?}: {}", r.stderr);
        assert_eq!(r.stdout, "", "{flags:?} {var:?} ran");
        let lines: Vec<&str> = r.stderr.lines().filter(|l| l.contains("berth:")).collect();
        assert_eq!(lines.len(), 1, "{flags:?} {var:?}: {}", r.stderr);
        assert!(lines[0].contains(says), "{flags:?} {var:?}: {}", r.stderr);
        // At submit, in srun: no step reached a node.
        assert!(
            !r.stderr.contains("slurmstepd"),
            "{flags:?} {var:?}: {}",
            r.stderr
        );
    }
}

/// Issue 12: PYXIS_CONTAINER_* variables as with pyxis (the command line wins), and srun -v
/// shows what berth did at submit.
#[test]
fn pyxis_variables_and_srun_verbose() {
    let c = cluster();
    let sb = Sandbox::new("slurm-pyxisenv");
    let probe = "test -e /.berth/image.json && echo image || echo host; touch /w 2>/dev/null && echo writable || echo readonly";
    let mut cmd = c.cmd(&sb, &["srun", "-n1", "sh", "-c", probe]);
    cmd.env("PYXIS_CONTAINER_IMAGE", image())
        .env("PYXIS_CONTAINER_WRITABLE", "yes");
    assert_eq!(run(cmd).expect_ok("env").stdout, "image\nwritable\n");
    let mut cmd = c.cmd(
        &sb,
        &["srun", "-n1", "--container-readonly", "sh", "-c", probe],
    );
    cmd.env("PYXIS_CONTAINER_IMAGE", image())
        .env("PYXIS_CONTAINER_WRITABLE", "yes");
    assert_eq!(run(cmd).expect_ok("cli wins").stdout, "image\nreadonly\n");
    let img = format!("--container-image={}", image());
    let r = c
        .run(&sb, &["srun", "-v", "-n1", &img, "true"])
        .expect_ok("srun -v");
    assert!(
        r.stderr.contains("berth: image ") && r.stderr.contains("checked before submitting"),
        "{}",
        r.stderr
    );
    // slurmd's log says what berth did on the node: image, key, mode, time taken.
    let logged = eventually(Duration::from_secs(20), || {
        (1..=3).any(|n| {
            std::fs::read_to_string(c.dir.join(format!("log/slurmd-n{n}.log")))
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.contains("berth: job ")
                        && l.contains(&format!("image {}", image()))
                        && l.contains("mode mount")
                        && l.contains(" ms")
                })
        })
    });
    assert!(
        logged,
        "no berth line in {}/log/slurmd-n*.log",
        c.dir.display()
    );
    // And the launcher's own log events, at Slurm's verbose level: the plan and the join (the
    // keeper that builds the container logs to its own file).
    let phases = eventually(Duration::from_secs(20), || {
        (1..=3).any(|n| {
            let log = std::fs::read_to_string(c.dir.join(format!("log/slurmd-n{n}.log")))
                .unwrap_or_default();
            log.contains("berth: plan: ") && log.contains("berth: join: joined the container")
        })
    });
    let berth_lines: Vec<String> = (1..=3)
        .flat_map(|n| {
            std::fs::read_to_string(c.dir.join(format!("log/slurmd-n{n}.log")))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("berth"))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        phases,
        "no berth plan and join lines in {}/log/slurmd-n*.log:\n{}",
        c.dir.display(),
        berth_lines.join("\n")
    );
}

/// Issue 12: the job epilog removes the job's named containers as the job's user: what the
/// user cannot remove (a root-owned directory planted among them) stays.
#[test]
fn the_epilog_removes_named_containers_as_the_user() {
    let c = cluster();
    let sb = Sandbox::new("slurm-epilog");
    let mark = sb.work.join("go");
    let script = format!(
        "srun -n1 --container-image={} --container-name=ep sh -c 'echo x > /f' && \
         while [ ! -e {} ]; do sleep 0.2; done",
        image(),
        mark.display()
    );
    let r = c
        .run(&sb, &["sbatch", "-w", "n1", "-n1", "--wrap", &script])
        .expect_ok("sbatch");
    let job: u32 = r
        .stdout
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|j| j.parse().ok())
        .expect("a job id");
    let named = std::path::PathBuf::from(format!("/tmp/berth-{}/named", user().uid));
    let prefix = format!("slurm-{job}-");
    let layer = eventually(Duration::from_secs(60), || {
        std::fs::read_dir(&named)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            })
            .unwrap_or(false)
    });
    assert!(layer, "no saved layer of job {job} in {}", named.display());
    // Root's, in the user's directory, named like the job's containers.
    let planted = named.join(format!("{prefix}planted"));
    std::fs::create_dir_all(planted.join("sub")).unwrap();
    std::fs::write(planted.join("sub/root-file"), "root's\n").unwrap();
    std::fs::write(&mark, "").unwrap();
    let only_planted = eventually(Duration::from_secs(60), || {
        std::fs::read_dir(&named)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .all(|e| e.path() == planted)
            })
            .unwrap_or(true)
    });
    let kept = planted.join("sub/root-file").exists();
    let _ = std::fs::remove_dir_all(&planted);
    assert!(
        only_planted,
        "the job's own layer is left in {}",
        named.display()
    );
    assert!(
        kept,
        "the epilog removed a root-owned file: it did not run as the user"
    );
}

/// Issue 12: plugstack's `mode=` is the site's default under the policy's: the cluster has
/// `mode=extract` and a policy with `mode = "mount"`; without the policy's line, extract.
#[test]
fn plugstack_mode_is_the_default_under_the_policy() {
    let c = cluster();
    let sb = Sandbox::new("slurm-mode");
    let img = format!("--container-image={}", image());
    let mode_of = |c: &berth_tests::slurm::Serial| {
        let r = c
            .run(
                &sb,
                &[
                    "srun",
                    "-n1",
                    "-w",
                    "n1",
                    &img,
                    "sh",
                    "-c",
                    "echo $SLURM_JOB_ID",
                ],
            )
            .expect_ok("srun");
        let job = r.stdout.trim().to_string();
        let mut mode = String::new();
        eventually(Duration::from_secs(20), || {
            let log = std::fs::read_to_string(c.dir.join("log/slurmd-n1.log")).unwrap_or_default();
            if let Some(l) = log
                .lines()
                .find(|l| l.contains(&format!("berth: job {job} step 0 ")))
            {
                mode = l
                    .split("mode ")
                    .nth(1)
                    .unwrap_or("")
                    .split(',')
                    .next()
                    .unwrap_or("")
                    .to_string();
                return true;
            }
            false
        });
        mode
    };
    assert_eq!(mode_of(&c), "mount", "the policy's mode wins");
    std::fs::write(&c.policy, POLICY.replace("mode = \"mount\"\n", "")).unwrap();
    let without = mode_of(&c);
    std::fs::write(&c.policy, POLICY).unwrap();
    assert_eq!(
        without, "extract",
        "plugstack mode= when the policy has none"
    );
}

#[test]
fn container_mounts_types_and_container_unshare() {
    let c = cluster();
    let sb = Sandbox::new("slurm-mount-types");
    let img = format!("--container-image={}", image());
    let home = user().home.display().to_string();
    // pyxis's flag separator is "+"; tmpfs with its options, umount of the home.
    let mounts = format!("--container-mounts=tmpfs:/scratch:size=1M+mode=0700,umount:{home}");
    let script = format!(
        "stat -c '%a %u' /scratch; grep ' /scratch ' /proc/self/mountinfo | grep -c size=1024k; \
         grep -c ' {home} ' /proc/self/mountinfo || true"
    );
    let r = c
        .run(&sb, &["srun", "-n1", &img, &mounts, "sh", "-c", &script])
        .expect_ok("tmpfs and umount");
    assert_eq!(
        r.stdout,
        format!("700 {}\n1\n0\n", user().uid),
        "a 1 MiB tmpfs of the user's, no home mount"
    );
    // Two tasks on one node share one new network namespace with only lo, up.
    let r = c
        .run(
            &sb,
            &[
                "srun",
                "-w",
                "n1",
                "-n2",
                &img,
                "--container-unshare=net,ipc",
                "sh",
                "-c",
                "readlink /proc/self/ns/net; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
            ],
        )
        .expect_ok("unshare");
    let out = lines(&r);
    // The two tasks' lines may interleave.
    let nets: Vec<&String> = out.iter().filter(|l| l.starts_with("net:")).collect();
    let interfaces: Vec<&String> = out.iter().filter(|l| !l.starts_with("net:")).collect();
    assert_eq!(nets.len(), 2, "{}", r.stdout);
    assert_eq!(nets[0], nets[1], "one net namespace per node: {}", r.stdout);
    let plain = c
        .run(
            &sb,
            &[
                "srun",
                "-w",
                "n1",
                "-n1",
                &img,
                "readlink",
                "/proc/self/ns/net",
            ],
        )
        .expect_ok("no unshare");
    assert_ne!(
        nets[0].as_str(),
        plain.stdout.trim(),
        "not the node's network namespace"
    );
    assert_eq!(interfaces, ["lo", "lo"], "only lo: {}", r.stdout);
    let r = c.run(
        &sb,
        &["srun", "-n1", &img, "--container-unshare=pid", "true"],
    );
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr.contains("--container-unshare=pid"),
        "one line naming the flag: {}",
        r.stderr
    );
}

#[test]
fn host_locale_stays_out_unless_named_and_tasks_start_in_the_image_workdir() {
    let c = cluster();
    let sb = Sandbox::new("slurm-locale");
    let img = format!("--container-image={}", image());
    let show = "echo \"[${LANG-}] [${LANGUAGE-}] [${LC_ALL-}] [${LC_CTYPE-}]\"; pwd; echo $PWD";
    let locale = |cmd: &mut std::process::Command| {
        cmd.env("LANG", "xx_YY.UTF-8")
            .env("LANGUAGE", "xx")
            .env("LC_ALL", "xx_YY.UTF-8")
            .env("LC_CTYPE", "C");
    };
    // pyxis drops the host's LANG, LANGUAGE and LC_ALL (not the other LC_*), and starts in
    // the image's WorkingDir (the demo image's is /srv/demo), not the submit directory.
    let mut cmd = c.cmd(&sb, &["srun", "-n1", &img, "sh", "-c", show]);
    locale(&mut cmd);
    assert_eq!(
        run(cmd).expect_ok("default").stdout,
        "[] [] [] [C]\n/srv/demo\n/srv/demo\n"
    );
    let mut cmd = c.cmd(
        &sb,
        &[
            "srun",
            "-n1",
            &img,
            "--container-env=LANG,LC_ALL",
            "sh",
            "-c",
            show,
        ],
    );
    locale(&mut cmd);
    assert_eq!(
        run(cmd).expect_ok("named").stdout,
        "[xx_YY.UTF-8] [] [xx_YY.UTF-8] [C]\n/srv/demo\n/srv/demo\n"
    );
    // The same without the entrypoint, and --container-workdir still wins.
    let r = c
        .run(
            &sb,
            &["srun", "-n1", &img, "--no-container-entrypoint", "pwd"],
        )
        .expect_ok("no entrypoint");
    assert_eq!(r.stdout, "/srv/demo\n");
    let r = c
        .run(
            &sb,
            &["srun", "-n1", &img, "--container-workdir=/tmp", "pwd"],
        )
        .expect_ok("workdir");
    assert_eq!(r.stdout, "/tmp\n");
}

/// An entrypoint (mounted over the demo image's) that shows what it sees on stdout and
/// stderr, exports two variables, then runs its arguments.
const SHOW_ENTRYPOINT: &str = "#!/bin/sh
echo \"ep HOSTVAR=${HOSTVAR-unset} NAMED=${NAMED-unset} SLURM=${SLURM_JOB_ID:+set} DEMO_IMAGE=${DEMO_IMAGE-unset} PWD=$(pwd)\"
echo ep-stderr >&2
export DEMO_ENTRYPOINT=ran HOSTVAR=from-entrypoint
exec \"$@\"
";

#[test]
fn the_entrypoint_sees_the_container_environment_and_its_output_only_when_asked() {
    let c = cluster();
    let sb = Sandbox::new("slurm-entrypoint-env");
    let img = format!("--container-image={}", image());
    let ep = sb.user_file("entrypoint", SHOW_ENTRYPOINT.as_bytes());
    std::fs::set_permissions(&ep, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mount = format!(
        "--container-mounts={}:/usr/local/bin/demo-entrypoint:ro",
        ep.display()
    );
    let task = "echo \"task HOSTVAR=$HOSTVAR OTHER=$OTHER NAMED=$NAMED DEMO_ENTRYPOINT=$DEMO_ENTRYPOINT\" '[it'\\''s]' \"[$1]\"";
    let srun = |extra: &[&str]| {
        let mut argv = vec!["srun", "-n1", &img, &mount, "--container-env=NAMED"];
        argv.extend_from_slice(extra);
        argv.extend_from_slice(&["sh", "-c", task, "zero", "one two"]);
        let mut cmd = c.cmd(&sb, &argv);
        cmd.env("HOSTVAR", "from-host")
            .env("OTHER", "other")
            .env("NAMED", "named");
        run(cmd)
    };
    // The entrypoint sees the image's variables, the named ones and Slurm's, not the rest of
    // the host's; the task gets its usual environment, with what the entrypoint exported
    // winning over the host's (as pyxis takes the container's environment over the job's).
    let r = srun(&["--container-entrypoint-log"]).expect_ok("log");
    assert_eq!(
        r.stdout,
        "ep HOSTVAR=unset NAMED=named SLURM=set DEMO_IMAGE=berth-demo PWD=/srv/demo\n\
         task HOSTVAR=from-entrypoint OTHER=other NAMED=named DEMO_ENTRYPOINT=ran [it's] [one two]\n"
    );
    assert!(r.stderr.contains("ep-stderr"), "{}", r.stderr);
    // Without --container-entrypoint-log its output is hidden, the task's is not.
    let r = srun(&[]).expect_ok("no log");
    assert_eq!(
        r.stdout,
        "task HOSTVAR=from-entrypoint OTHER=other NAMED=named DEMO_ENTRYPOINT=ran [it's] [one two]\n"
    );
    assert!(!r.stderr.contains("ep-stderr"), "{}", r.stderr);
    let mut cmd = c.cmd(
        &sb,
        &[
            "srun",
            "-n1",
            &img,
            &mount,
            "sh",
            "-c",
            "echo out; echo err >&2",
        ],
    );
    cmd.env("PYXIS_CONTAINER_ENTRYPOINT_LOG", "1");
    let r = run(cmd).expect_ok("variable");
    assert!(
        r.stdout.starts_with("ep ") && r.stdout.ends_with("out\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("ep-stderr") && r.stderr.contains("err"),
        "{}",
        r.stderr
    );
}

#[test]
fn remap_root_has_home_at_root_and_mount_home_binds_it_there() {
    let c = cluster();
    let sb = Sandbox::new("slurm-remap-home");
    let img = format!("--container-image={}", image());
    let marker = format!(".berth-remap-home-{}", std::process::id());
    let host_marker = user().home.join(&marker);
    std::fs::write(&host_marker, "x").unwrap();
    let show = format!("echo $HOME; test -f /root/{marker} && echo home-at-root || echo no-home");
    let r = c
        .run(
            &sb,
            &[
                "srun",
                "-n1",
                &img,
                "--container-remap-root",
                "sh",
                "-c",
                &show,
            ],
        )
        .expect_ok("remap");
    let r2 = c
        .run(
            &sb,
            &[
                "srun",
                "-n1",
                &img,
                "--container-remap-root",
                "--no-container-mount-home",
                "sh",
                "-c",
                &show,
            ],
        )
        .expect_ok("remap, no home");
    std::fs::remove_file(&host_marker).unwrap();
    assert_eq!(r.stdout, "/root\nhome-at-root\n");
    assert_eq!(r2.stdout, "/root\nno-home\n");
}

#[test]
fn enroot_hook_variables_for_pmix_and_pytorch() {
    let c = cluster();
    let sb = Sandbox::new("slurm-hook-vars");
    let img = format!("--container-image={}", image());
    // Slurm's PMIx plugin sets PMIX_SECURITY_MODE and PMIX_GDS_MODULE; enroot's hook gives
    // them to PMIx clients as PMIX_MCA_psec and PMIX_MCA_gds.
    let r = c
        .run(
            &sb,
            &[
                "srun",
                "--mpi=pmix",
                "-n1",
                &img,
                "sh",
                "-c",
                "echo \"$PMIX_SECURITY_MODE=$PMIX_MCA_psec $PMIX_GDS_MODULE=$PMIX_MCA_gds\"",
            ],
        )
        .expect_ok("pmix");
    let (psec, gds) = r.stdout.trim().split_once(' ').unwrap();
    for pair in [psec, gds] {
        let (slurm, mca) = pair.split_once('=').unwrap();
        assert!(!slurm.is_empty() && slurm == mca, "{}", r.stdout);
    }
    // PyTorch's variables when the container has PYTORCH_VERSION (here a named host variable).
    let show = "echo $SLURM_JOB_ID $SLURM_STEP_NODELIST $SLURM_PROCID $SLURM_LOCALID \
                ${MASTER_ADDR:-none} ${MASTER_PORT:-none} ${WORLD_SIZE:-none} ${RANK:-none} \
                ${LOCAL_RANK:-none} ${OMP_NUM_THREADS:-none}";
    let mut cmd = c.cmd(
        &sb,
        &[
            "srun",
            "-N2",
            "-n4",
            "--ntasks-per-node=2",
            &img,
            "--container-env=PYTORCH_VERSION",
            "sh",
            "-c",
            show,
        ],
    );
    cmd.env("PYTORCH_VERSION", "2.1");
    let r = run(cmd).expect_ok("pytorch");
    let out = lines(&r);
    assert_eq!(out.len(), 4, "{}", r.stdout);
    let first_node = |list: &str| {
        let out = c
            .run(&sb, &["scontrol", "show", "hostname", list])
            .expect_ok("scontrol");
        out.stdout.lines().next().unwrap().to_string()
    };
    for l in &out {
        let f: Vec<&str> = l.split_whitespace().collect();
        let job: u64 = f[0].parse().unwrap();
        assert_eq!(f[4], first_node(f[1]), "{l}");
        assert_eq!(f[5], (job % 4536 + 61000).to_string(), "{l}");
        // WORLD_SIZE, RANK, LOCAL_RANK, and OMP_NUM_THREADS=1 with two tasks a node.
        assert_eq!(f[6..], ["4", f[2], f[3], "1"], "{l}");
    }
    let r = c
        .run(&sb, &["srun", "-n1", &img, "sh", "-c", show])
        .expect_ok("no pytorch");
    assert!(
        r.stdout.trim().ends_with("none none none none none none"),
        "{}",
        r.stdout
    );
}

#[test]
fn mpi_works_with_slurm_pmix_tmpdir_elsewhere() {
    let c = cluster();
    let sb = Sandbox::new("slurm-pmix-tmpdir");
    let flag = format!("--container={}", image());
    // Slurm's PMIx plugin makes the step's client directory under SLURM_PMIX_TMPDIR (Open MPI
    // puts its session directory there); outside /tmp it was not in the container. One node:
    // the test nodes share this machine's directories, and two would make the same one.
    for base in ["/var/tmp", "/dev/shm"] {
        let dir = std::path::Path::new(base).join(format!("berth-pmix-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
            .unwrap();
        let mut cmd = c.cmd(
            &sb,
            &["srun", "--mpi=pmix", "-w", "n1", "-n2", &flag, "mpi-hello"],
        );
        cmd.env("SLURM_PMIX_TMPDIR", &dir);
        let r = run(cmd);
        let _ = std::fs::remove_dir_all(&dir);
        let r = r.expect_ok(base);
        let ranks = lines(&r);
        assert_eq!(ranks.len(), 2, "{base}: {}{}", r.stdout, r.stderr);
        for (i, l) in ranks.iter().enumerate() {
            assert!(
                l.starts_with(&format!("rank {i}/2 ")) && l.contains("allreduce=ok"),
                "{base}: {l}"
            );
        }
    }
}

/// Issue 12 (bugs 1 and 9, `NAME:FLAG`): `--container-name=NAME` without an image re-enters
/// the job's named container on the node (its changes, and its namespaces while a step of it
/// runs, whatever this step's options, with one warning naming what is ignored); without one
/// it fails on the node in one line; `create`, `exec` and `no_exec` as with pyxis.
#[test]
fn named_containers_are_re_entered_by_name_as_with_pyxis() {
    let c = cluster();
    let sb = Sandbox::new("slurm-reenter");
    let w = sb.work.display().to_string();
    let script = sb.user_file(
        "reenter.sh",
        format!(
            r#"#!/bin/sh
img={img}
# --overlap: a step may start while the one in the background runs.
step() {{ echo "== $1"; shift; srun -n1 --overlap "$@"; echo "rc=$?"; }}
step none --container-name=env true
step exec-none --container-name=env:exec --container-image=$img true
step create --container-name=env:create --container-image=$img sh -c 'echo installed > /tool'
step reenter --container-name=env cat /tool
step create-again --container-name=env:create --container-image=$img true
srun -n1 --overlap --container-name=env --container-mounts={w}:/out sh -c 'touch /out/started; i=0; while [ ! -e /out/stop ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done' &
i=0; while [ ! -e {w}/started ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
step attach --container-name=env:exec --container-mounts={w}:/elsewhere sh -c 'test -e /out/started && echo sees-out; test -e /elsewhere || echo no-elsewhere; cat /tool'
step no-exec --container-name=env:no_exec sh -c 'test -e /out/started && echo sees-out || echo own-mounts; cat /tool'
touch {w}/stop; wait
"#,
            img = image(),
        )
        .as_bytes(),
    );
    let out = sb.work.join("reenter.out");
    let o = format!("--output={}", out.display());
    let path = script.display().to_string();
    c.run(&sb, &["sbatch", "--wait", "-w", "n1", "-n1", &o, &path])
        .expect_ok("sbatch");
    let text = std::fs::read_to_string(&out).unwrap();
    let section = |name: &str| -> String {
        let start = text
            .find(&format!("== {name}\n"))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        let rest = &text[start..];
        let end = rest.find("rc=").map(|e| rest[e..].find('\n').unwrap() + e);
        rest[..end.unwrap_or(rest.len())].to_string()
    };
    let berth_lines = |s: &str| s.lines().filter(|l| l.contains("berth:")).count();
    // Not on the host: one line from the task, the step fails.
    let none = section("none");
    assert!(
        none.contains("no container named 'env' exists on n1") && !none.contains("rc=0"),
        "{none}"
    );
    assert_eq!(berth_lines(&none), 1, "{none}");
    let exec = section("exec-none");
    assert!(
        exec.contains(":exec: no step") && !exec.contains("rc=0"),
        "{exec}"
    );
    assert!(section("create").contains("rc=0"), "{text}");
    let reenter = section("reenter");
    assert!(reenter.contains("installed\nrc=0"), "{reenter}");
    let again = section("create-again");
    assert!(
        again.contains("already exists on n1") && !again.contains("rc=0"),
        "{again}"
    );
    // Attached to the running step's container: its mounts, not this step's, one warning.
    let attach = section("attach");
    assert!(
        attach.contains("sees-out\nno-elsewhere\ninstalled\nrc=0"),
        "{attach}"
    );
    let warnings: Vec<&str> = attach.lines().filter(|l| l.contains("berth:")).collect();
    assert_eq!(warnings.len(), 1, "{attach}");
    assert!(
        warnings[0].contains("warning") && warnings[0].contains("ignoring this step's mounts"),
        "{attach}"
    );
    // no_exec: a container of its own over the same saved layer.
    let no_exec = section("no-exec");
    assert!(no_exec.contains("own-mounts\ninstalled\nrc=0"), "{no_exec}");
    let states = c.node_states();
    assert!(
        states
            .iter()
            .all(|s| !["drain", "down", "fail"].iter().any(|bad| s.contains(bad))),
        "{states:?}"
    );
}

/// Issue 12 (bug 4): a registry import that fails is tried once, not once per task: srun
/// resolves the image for the job, so four tasks make the requests one task makes, and the job
/// fails with the one error before any task starts. The registry is a stand-in on the cluster's bridge that answers every
/// request 404 (a missing tag) and counts them.
#[test]
fn a_failed_registry_import_is_tried_once_per_node() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let c = cluster();
    let sb = Sandbox::new("slurm-import-once");
    let listener =
        std::net::TcpListener::bind(format!("{}:0", berth_tests::slurm::BRIDGE_IP)).unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
                match conn.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            if head.is_empty() {
                continue;
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let body = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let flag = format!("--container-image=docker://{addr}/demo/shell:missing");
    let one = c.run(&sb, &["srun", "-w", "n1", "-n1", &flag, "echo", "ran"]);
    assert_ne!(one.code, Some(0));
    let per_attempt = requests.swap(0, Ordering::SeqCst);
    assert!(
        per_attempt > 0,
        "the registry was not asked: {}",
        one.stderr
    );
    let r = c.run(&sb, &["srun", "-w", "n1", "-n4", &flag, "echo", "ran"]);
    assert_ne!(r.code, Some(0));
    assert!(!r.stdout.contains("ran"), "{}", r.stdout);
    let failed: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("berth: cannot import"))
        .collect();
    // srun resolves the image for the whole job before any task starts: one error, once.
    assert_eq!(
        failed.len(),
        1,
        "the job fails once, at submit:\n{}",
        r.stderr
    );
    assert_eq!(
        requests.load(Ordering::SeqCst),
        per_attempt,
        "one attempt for the job, not one per task:\n{}",
        r.stderr
    );
}

/// Issue 12: `--container-save=PATH` (relative to the submit directory) saves the step's
/// container, image plus writes (a deletion included), as a squashfs owned by the user, usable
/// as `--container-image` afterwards; the binds (/tmp, /etc/hosts...) stay out. A PATH in a
/// missing directory, or one that is a directory, is one error line and leaves no file.
#[test]
fn container_save_writes_the_container_as_an_image() {
    let c = cluster();
    let sb = Sandbox::new("slurm-save");
    let img = format!("--container-image={}", image());
    let write =
        "echo saved > /etc/marker && rm /etc/issue && echo host-tmp > /tmp/berth-save-probe";
    c.run(
        &sb,
        &[
            "srun",
            "-w",
            "n1",
            &img,
            "--container-save=out.sqsh",
            "sh",
            "-c",
            write,
        ],
    )
    .expect_ok("srun --container-save");
    let out = sb.work.join("out.sqsh");
    let meta = std::fs::metadata(&out).expect("the saved image");
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&meta),
            std::os::unix::fs::MetadataExt::gid(&meta)
        ),
        (user().uid, user().gid),
        "the saved image is the user's"
    );
    let _ = std::fs::remove_file("/tmp/berth-save-probe");
    let r = c
        .run(
            &sb,
            &[
                "srun",
                "-w",
                "n2",
                "--container-image=out.sqsh",
                "sh",
                "-c",
                "cat /etc/marker; test -e /etc/issue || echo no-issue; test -e /tmp/berth-save-probe || echo no-probe",
            ],
        )
        .expect_ok("srun --container-image=out.sqsh");
    assert_eq!(r.stdout, "saved\nno-issue\nno-probe\n");
    let leftovers = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("berth-save"))
            .collect()
    };
    assert_eq!(leftovers(&sb.work), Vec::<String>::new());

    let r = c.run(
        &sb,
        &[
            "srun",
            "-w",
            "n1",
            &img,
            "--container-save=missing/out.sqsh",
            "true",
        ],
    );
    // srun's exit status stays the tasks' (as with pyxis); the error is one line of its output.
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| !l.starts_with("srun: job"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {}", r.stderr);
    assert!(
        errors[0].contains("missing/out.sqsh") && errors[0].contains("is not a directory"),
        "{}",
        errors[0]
    );
    assert!(!sb.work.join("missing").exists());

    std::fs::create_dir(sb.work.join("adir")).unwrap();
    std::os::unix::fs::chown(sb.work.join("adir"), Some(user().uid), Some(user().gid)).unwrap();
    let r = c.run(
        &sb,
        &["srun", "-w", "n1", &img, "--container-save=adir", "true"],
    );
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| !l.starts_with("srun: job"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {}", r.stderr);
    assert!(errors[0].contains("adir"), "{}", errors[0]);
    assert_eq!(leftovers(&sb.work), Vec::<String>::new());
}

#[test]
fn srun_container_runs_an_apptainer_sif_in_place() {
    let c = cluster();
    let sb = Sandbox::new("slurm-sif");
    let sif = sb.work.join("app.sif");
    berth_tests::sif::write_sif(&demo_image(), &sif, berth_tests::sif::Damage::None);
    std::os::unix::fs::chown(&sif, Some(user().uid), Some(user().gid)).unwrap();
    let flag = format!("--container={}", sif.display());
    let r = c
        .run(
            &sb,
            &[
                "srun",
                "-N2",
                "-n2",
                &flag,
                "grep",
                "^PRETTY_NAME",
                "/etc/os-release",
            ],
        )
        .expect_ok("srun --container=app.sif");
    assert_eq!(
        lines(&r),
        vec!["PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\""; 2]
    );
    // A SIF without a squashfs system partition fails at submit, in srun's output.
    let bad = sb.work.join("ext3.sif");
    berth_tests::sif::write_sif(&demo_image(), &bad, berth_tests::sif::Damage::Ext3);
    std::os::unix::fs::chown(&bad, Some(user().uid), Some(user().gid)).unwrap();
    let flag = format!("--container={}", bad.display());
    let r = c.run(&sb, &["srun", "-n1", &flag, "true"]);
    assert!(!r.ok(), "{}", r.stderr);
    assert!(
        r.stderr.contains("system partition is ext3"),
        "{}",
        r.stderr
    );
}

/// Whether a process belongs to this test's jobs: it works in the sandbox (srun's working
/// directory, which the tasks and what berth forks from them inherit). Not its environment:
/// slurmstepd writes its process title over its environment area, and berth's keepers are
/// forked from the task before the exec.
fn in_sandbox(sb: &Sandbox, pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|d| d.starts_with(&sb.root))
}

/// The tasks of one step on one node share one container whatever their timing: short tasks,
/// every node of the cluster, many steps in a row. The first task's keeper stays until the
/// node's other task has joined, even if the first has already exited. Both with the state
/// directory shared between the nodes (/tmp here, as a home on NFS elsewhere: keepers are
/// found by node too) and with one per node (`runtime_dir=.../%n`, made when missing: sticky and
/// open to all as /tmp is, the user's `berth-<uid>` in it private).
#[test]
fn short_tasks_of_a_step_share_one_container_per_node_over_many_steps() {
    const STEPS: usize = 10;
    let nodes = berth_tests::slurm::NODES;
    let c = cluster();
    let sb = Sandbox::new("slurm-short");
    let flag = format!("--container-image={}", image());
    let n = format!("-N{nodes}");
    let local = sb.root.join("local");
    for per_node in [false, true] {
        let _args = per_node.then(|| c.plugin_args(&format!("runtime_dir={}/%n", local.display())));
        let which = if per_node { "per-node" } else { "shared" };
        for step in 0..STEPS {
            let r = c
                .run(
                    &sb,
                    &[
                        "srun",
                        &n,
                        "--ntasks-per-node=2",
                        &flag,
                        "sh",
                        "-c",
                        "echo $(hostname) $(readlink /proc/self/ns/mnt)",
                    ],
                )
                .expect_ok("srun");
            let rows = lines(&r);
            assert_eq!(rows.len(), 2 * nodes, "{}", r.stdout);
            let mut per_host = std::collections::BTreeMap::<&str, Vec<&str>>::new();
            for row in &rows {
                let (host, ns) = row.split_once(' ').unwrap();
                per_host.entry(host).or_default().push(ns);
            }
            assert_eq!(per_host.len(), nodes, "{rows:?}");
            for (host, mut ns) in per_host {
                ns.dedup();
                assert_eq!(
                    ns.len(),
                    1,
                    "{which} state, step {step}: the tasks on {host} are in {} containers: {rows:?}",
                    ns.len()
                );
            }
        }
    }
    for i in 1..=nodes {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let base = local.join(format!("n{i}"));
        let mode = std::fs::metadata(&base).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o1777, "{}", base.display());
        let own = std::fs::metadata(base.join(format!("berth-{}", user().uid))).unwrap();
        assert_eq!((own.uid(), own.mode() & 0o777), (user().uid, 0o700));
    }
}

/// A job whose container is up to date starts while another job of the same user is building
/// another container on the same node: join keys have a lock each, never one per user. The
/// other job's cold build (an extract of a new image) is held stopped while the first runs.
#[test]
fn a_cold_build_does_not_hold_up_another_jobs_start() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let c = cluster();
    let sb = Sandbox::new("slurm-coldbuild");
    // Extract mode (plugstack's mode= without the policy's): the cold build is an unsquashfs.
    struct Policy<'a>(&'a std::path::Path);
    impl Drop for Policy<'_> {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0, POLICY);
        }
    }
    std::fs::write(&c.policy, POLICY.replace("mode = \"mount\"\n", "")).unwrap();
    let _policy = Policy(&c.policy);
    // Another image: the demo image with a tail of this run's own, so an extract cache entry
    // no earlier run made.
    let cold_path = sb.root.join("cold.sqsh");
    let mut bytes = std::fs::read(demo_image()).unwrap();
    let mut tail = format!("{:?} {:?}", sb.root, std::time::SystemTime::now()).into_bytes();
    tail.resize(4096, 0);
    bytes.extend(tail);
    std::fs::write(&cold_path, bytes).unwrap();
    let warm = format!("--container-image={}", image());
    let cold = format!("--container-image={}", cold_path.display());
    c.run(&sb, &["srun", "-n1", "-w", "n1", &warm, "true"])
        .expect_ok("the warm image's first step");
    let mut building = c
        .cmd(&sb, &["srun", "-n1", "-w", "n1", &cold, "true"])
        .spawn()
        .unwrap();
    let mut unsquashfs = None;
    eventually(Duration::from_secs(60), || {
        unsquashfs = berth_tests::live_processes(user().uid)
            .into_iter()
            .find(|(pid, _)| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "unsquashfs")
            })
            .map(|(pid, _)| Pid::from_raw(pid));
        unsquashfs.is_some()
    });
    let unsquashfs = unsquashfs.expect("the cold build's unsquashfs");
    kill(unsquashfs, Signal::SIGSTOP).unwrap();
    // The warm job, while the other build cannot end.
    let mut warm_job = c
        .cmd(&sb, &["srun", "-n1", "-w", "n1", &warm, "echo", "started"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut warm_done = None;
    eventually(Duration::from_secs(60), || {
        warm_done = warm_job.try_wait().unwrap();
        warm_done.is_some()
    });
    let cold_done = building.try_wait().unwrap();
    kill(unsquashfs, Signal::SIGCONT).unwrap();
    if warm_done.is_none() {
        let _ = warm_job.kill();
    }
    let warm_out = warm_job.wait_with_output().unwrap();
    let cold_status = building.wait().unwrap();
    // The cold image's cache entry goes (the nodes' state directory is the shared /tmp one).
    let state = format!("/tmp/berth-{}", user().uid);
    let berth_in_state = |args: &[&str]| {
        let mut cmd = sb.berth(args);
        cmd.env("BERTH_STATE_DIR", &state);
        run(cmd)
    };
    let list = berth_in_state(&["cache", "list"]);
    let cold_path = cold_path.to_string_lossy();
    for key in list
        .stdout
        .lines()
        .filter(|l| l.ends_with(&*cold_path))
        .filter_map(|l| l.split_whitespace().next())
    {
        berth_in_state(&["cache", "clean", key]);
    }
    assert!(
        warm_done.is_some_and(|s| s.success()),
        "the warm job waited for the other job's build: {warm_done:?}"
    );
    assert_eq!(String::from_utf8_lossy(&warm_out.stdout), "started\n");
    assert_eq!(cold_done, None, "the cold build was stopped all along");
    assert!(cold_status.success(), "the cold job: {cold_status:?}");
}

/// A join keeper is named in ps: `berth-keeper <key>`, not the user-owned `slurmstepd: [J.S]`
/// with parent 1 it was forked from, which an admin would take for a stuck slurmstepd.
#[test]
fn the_join_keeper_is_named_in_ps() {
    let c = cluster();
    let sb = Sandbox::new("slurm-keepername");
    let flag = format!("--container-image={}", image());
    let go = sb.root.join("go");
    let wait = format!("while [ ! -e {} ]; do sleep 0.1; done", go.display());
    let mut job = c
        .cmd(&sb, &["srun", "-n2", "-w", "n1", &flag, "sh", "-c", &wait])
        .spawn()
        .unwrap();
    let keeper = |comm: &str| {
        berth_tests::live_processes(user().uid)
            .into_iter()
            .filter(|(pid, _)| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
            })
            .map(|(_, cmdline)| cmdline)
            .collect::<Vec<_>>()
    };
    let mut named = Vec::new();
    // An exiting process reads as an empty command line: look again.
    eventually(Duration::from_secs(60), || {
        named = keeper("berth-keeper");
        !named.is_empty() && named.iter().all(|c| !c.trim().is_empty())
    });
    let stepds: Vec<String> = berth_tests::live_processes(user().uid)
        .into_iter()
        .map(|(_, cmdline)| cmdline)
        .filter(|cmdline| cmdline.starts_with("slurmstepd"))
        .collect();
    std::fs::write(&go, "").unwrap();
    let status = job.wait().unwrap();
    assert_eq!(named.len(), 1, "{named:?}");
    assert!(
        named[0].starts_with("berth-keeper slurm-"),
        "{:?}",
        named[0]
    );
    assert!(
        stepds.is_empty(),
        "user processes named slurmstepd: {stepds:?}"
    );
    assert!(status.success());
}
