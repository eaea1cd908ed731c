//! OpenLava: jobs submitted with `-a 'berth(IMG)'` (or BERTH_IMAGE) run in the image through
//! the queue's JOB_STARTER, the esub checks images at submit, bkill leaves nothing behind, and
//! berth-lava-mpirun runs an MPI job's ranks in the image across two hosts. OpenLava itself is
//! emulated by tests/src/openlava.rs (sbatchd's job file and environment, bsub's esub call).

use berth_tests::openlava::{env_file_vars, lava_bin, Esub, Hosts, Job, Running, Sbatchd};
use berth_tests::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// sbatchd with job files in the sandbox (`/tmp/.lsbtmp<uid>/.lsbatch`: under /tmp).
fn sbatchd(sb: &Sandbox) -> Sbatchd {
    Sbatchd::new(&sb.root.join(format!(".lsbtmp{}/.lsbatch", user().uid)))
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

/// The user namespace of this (host) process: a job in the image has another one.
fn host_user_ns() -> PathBuf {
    std::fs::read_link("/proc/self/ns/user").unwrap()
}

/// Nothing of a job is left: no process with the sandbox's state directory, none in the
/// container's mount namespace, no FUSE or state-directory mount on the host.
fn assert_nothing_left(sb: &Sandbox, mnt_ns: Option<&Path>) {
    assert!(
        eventually(Duration::from_secs(20), || sb.processes().is_empty()),
        "processes left: {:?}",
        sb.processes()
    );
    if let Some(ns) = mnt_ns {
        let inside: Vec<_> = live_processes(user().uid)
            .into_iter()
            .filter(|(p, _)| {
                std::fs::read_link(format!("/proc/{p}/ns/mnt"))
                    .ok()
                    .as_deref()
                    == Some(ns)
            })
            .collect();
        assert!(
            inside.is_empty(),
            "processes still in the container: {inside:?}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains("fuse.berth") && !mounts.contains(sb.state.to_str().unwrap()),
        "the host's mount table changed"
    );
}

/// A one-line error: berth's message, nothing else.
fn assert_one_line(r: &Run, what: &str) {
    assert_eq!(r.stderr.lines().count(), 1, "{what}: {}", r.stderr);
    assert!(r.stderr.starts_with("berth: "), "{what}: {}", r.stderr);
}

#[test]
fn a_simple_command_runs_in_the_image_with_the_jobs_environment() {
    let sb = Sandbox::new("lava-simple");
    let lava = sbatchd(&sb);
    let r = lava.run(
        &sb,
        &Job::new("printenv DEMO_IMAGE LSB_JOBID LS_SUBCWD PWD DEMO_ENTRYPOINT")
            .image(&demo_image()),
    );
    // printenv exits 1 because DEMO_ENTRYPOINT is unset: the job's command runs, not the
    // image's entrypoint; the image's Env and the scheduler's variables are there.
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let out = lines(&r.stdout);
    assert_eq!(out[0], "berth-demo", "{}", r.stdout);
    assert!(out[1].parse::<u32>().is_ok(), "{}", r.stdout);
    assert_eq!(out[2], sb.work.to_str().unwrap());
    assert_eq!(out[3], sb.work.to_str().unwrap());
    assert_eq!(out.len(), 4);
    let r = lava
        .run(
            &sb,
            &Job::new("readlink /proc/self/ns/user").image(&demo_image()),
        )
        .expect_ok("namespace");
    assert_ne!(
        Path::new(r.stdout.trim()),
        host_user_ns(),
        "the job is in a user namespace"
    );
    assert_nothing_left(&sb, None);
}

#[test]
fn without_an_image_the_job_runs_as_it_is() {
    let sb = Sandbox::new("lava-noimage");
    let lava = sbatchd(&sb);
    let r = lava
        .run(&sb, &Job::new("readlink /proc/self/ns/user"))
        .expect_ok("no image");
    assert_eq!(Path::new(r.stdout.trim()), host_user_ns());
    let r = lava.run(&sb, &Job::new("sh -c 'exit 7'"));
    assert_eq!(r.code, Some(7));
    // An empty BERTH_IMAGE is no image.
    let r = lava
        .run(
            &sb,
            &Job::new("readlink /proc/self/ns/user").env("BERTH_IMAGE", ""),
        )
        .expect_ok("empty BERTH_IMAGE");
    assert_eq!(Path::new(r.stdout.trim()), host_user_ns());
}

#[test]
fn quoted_arguments_reach_the_command_as_the_shell_split_them() {
    let sb = Sandbox::new("lava-quoted");
    let lava = sbatchd(&sb);
    // bsub joined the user's argv into this one string; the job's /bin/sh splits it again.
    let command = r#"sh -c 'printf "%s|" "$0" "$@"; echo "a  b" > out.txt; echo $DEMO_IMAGE' x 'one two' "three  four" '$HOME'"#;
    let r = lava
        .run(&sb, &Job::new(command).image(&demo_image()))
        .expect_ok("quoted");
    assert_eq!(r.stdout, "x|one two|three  four|$HOME|berth-demo\n");
    // Written in the container, in the submit directory, as the user.
    let out = sb.work.join("out.txt");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "a  b\n");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&out).unwrap().uid(), user().uid);
}

/// A JOB_SPOOL_DIR outside /tmp and the home directory, removed at the end.
struct Spool(PathBuf);
impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_script_submitted_on_stdin_runs_in_the_image() {
    let sb = Sandbox::new("lava-script");
    // Job files in a spool directory the container would not show by itself: the starter
    // binds it, so `$LSB_JOBFILENAME.shell` can be run inside.
    let spool = Spool(PathBuf::from(format!(
        "/var/tmp/berth-lava-spool-{}",
        std::process::id()
    )));
    let lava = Sbatchd::new(&spool.0.join(".lsbatch"));
    let script = "#!/bin/sh\n#BSUB -n 1\necho \"script=$0\"\necho \"image=$DEMO_IMAGE\"\n\
                  test -x /usr/local/bin/mpi-hello && echo in-image\necho \"cwd=$PWD\"\nexit 5\n";
    let job = Job {
        command: "bsub < job.sh".into(),
        script: Some(script.into()),
        ..Job::default()
    }
    .image(&demo_image());
    let running = lava.start(&sb, &job);
    let shell = format!("{}.shell", running.job_file.display());
    let r = running.wait();
    assert_eq!(r.code, Some(5), "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!(
            "script={shell}\nimage=berth-demo\nin-image\ncwd={}\n",
            sb.work.display()
        )
    );
    // The directory is the scheduler's, not a user mount: a site that allows no user mounts
    // still runs scripts.
    let policy = sb.user_file("berth.toml", b"[user_mounts]\nenabled = false\n");
    let r = lava.run(
        &sb,
        &Job {
            script: Some("#!/bin/sh\necho ok\n".into()),
            ..Job::default()
        }
        .image(&demo_image())
        .env("BERTH_CONFIG", policy.to_str().unwrap()),
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(0), "ok\n"),
        "{}",
        r.stderr
    );
    assert_nothing_left(&sb, None);
}

#[test]
fn array_job_elements_get_their_index_cwd_environment_and_exit_status() {
    let sb = Sandbox::new("lava-array");
    let lava = sbatchd(&sb);
    let image = demo_image();
    let mut started = Vec::new();
    for index in 1..=3u32 {
        let dir = sb.work.join(format!("elem{index}"));
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(user().uid), Some(user().gid)).unwrap();
        let job = Job {
            command: r#"sh -c 'echo "$LSB_JOBINDEX $PWD $DEMO_IMAGE $LSB_DJOB_NUMPROC"; exit $((40 + LSB_JOBINDEX))'"#
                .into(),
            index,
            cwd: Some(dir.clone()),
            ..Job::default()
        }
        .image(&image);
        started.push((index, dir, lava.start(&sb, &job)));
    }
    for (index, dir, running) in started {
        let r = running.wait();
        assert_eq!(r.code, Some(40 + index as i32), "{index}: {}", r.stderr);
        assert_eq!(
            r.stdout,
            format!("{index} {} berth-demo 1\n", dir.display())
        );
    }
    assert_nothing_left(&sb, None);
}

/// Start a job in the image and wait until its command (`marker` in its command line) runs in
/// the container; returns the container's mount namespace.
fn started_in_image(sb: &Sandbox, running: &Running, marker: &str) -> PathBuf {
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let mut ns = None;
    let up = eventually(Duration::from_secs(30), || {
        ns = sb
            .processes()
            .into_iter()
            .filter(|(_, c)| c.contains(marker))
            .filter_map(|(p, _)| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok())
            .find(|n| *n != host_mnt);
        ns.is_some()
    });
    assert!(
        up,
        "the job did not start in the image (pgid {})",
        running.pgid
    );
    ns.unwrap()
}

#[test]
fn bkill_ends_the_job_and_leaves_no_mount_or_process() {
    let sb = Sandbox::new("lava-bkill");
    let lava = sbatchd(&sb);
    let image = demo_image();

    // A command that dies of SIGINT: the job's exit status says so (128 + 2).
    let running = lava.start(&sb, &Job::new("sleep 3001").image(&image));
    let ns = started_in_image(&sb, &running, "sleep 3001");
    running.sigint();
    let r = running.wait();
    assert_eq!(r.code, Some(130), "{}", r.stderr);
    assert_nothing_left(&sb, Some(&ns));

    // A command that ignores SIGINT: bkill's SIGKILL to the group ends it all.
    let mut running = lava.start(
        &sb,
        &Job::new(r#"sh -c 'trap "echo ignored-INT" INT; echo ready; while :; do sleep 1; done' sleep3002"#)
            .image(&image),
    );
    let mut out = BufReader::new(running.child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let ns = started_in_image(&sb, &running, "sleep3002");
    running.sigint();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ignored-INT\n");
    running.sigkill();
    let r = running.wait();
    assert_eq!(r.signal, Some(libc::SIGKILL));
    assert_nothing_left(&sb, Some(&ns));

    // A command that cleans up on SIGINT still has its image: the FUSE server is not in the
    // job's process group, so bkill's SIGINT does not take the files away under the handler.
    let mut running = lava.start(
        &sb,
        &Job::new(r#"sh -c 'trap "cat /etc/debian_version >/dev/null && echo cleaned-up; exit 9" INT; echo ready; while :; do sleep 1; done' sleep3003"#)
            .image(&image),
    );
    let mut out = BufReader::new(running.child.stdout.take().unwrap());
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let ns = started_in_image(&sb, &running, "sleep3003");
    running.sigint();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "cleaned-up\n");
    let r = running.wait();
    assert_eq!(r.code, Some(9), "{}", r.stderr);
    assert_nothing_left(&sb, Some(&ns));
}

#[test]
fn esub_accepts_an_image_and_the_job_gets_it() {
    let sb = Sandbox::new("lava-esub-ok");
    let esub = Esub::new();
    let image = demo_image();
    let e = esub.submit(&sb, Some(&format!("berth({})", image.display())), &[]);
    assert_eq!(e.run.code, Some(0), "{}", e.run.stderr);
    assert_eq!(e.run.stderr, "");
    assert_eq!(e.env_file, format!("BERTH_IMAGE=\"{}\"\n", image.display()));
    // A relative path is the submit directory's, and other -a applications are not ours.
    std::os::unix::fs::symlink(&image, sb.work.join("app.sqsh")).unwrap();
    let e = esub.submit(&sb, Some("other(x) berth(app.sqsh)"), &[]);
    assert_eq!(e.run.code, Some(0), "{}", e.run.stderr);
    let vars = env_file_vars(&e.env_file);
    assert_eq!(
        vars,
        vec![(
            "BERTH_IMAGE".to_string(),
            sb.work.join("app.sqsh").to_string_lossy().into_owned()
        )]
    );
    // The job that bsub then submits, with the env file's variables, runs in the image.
    let mut job = Job::new("printenv DEMO_IMAGE");
    job.env = vars;
    let r = sbatchd(&sb).run(&sb, &job).expect_ok("job after esub");
    assert_eq!(r.stdout, "berth-demo\n");
}

#[test]
fn esub_without_berth_does_nothing() {
    let sb = Sandbox::new("lava-esub-none");
    let esub = Esub::new();
    for additional in [None, Some("other(x)"), Some("myberth(y)")] {
        let e = esub.submit(&sb, additional, &[]);
        assert_eq!(e.run.code, Some(0), "{additional:?}: {}", e.run.stderr);
        assert_eq!((e.run.stderr.as_str(), e.env_file.as_str()), ("", ""));
    }
    // BERTH_IMAGE given at submit is checked, and bsub passes it on itself.
    let image = demo_image();
    let e = esub.submit(&sb, None, &[("BERTH_IMAGE", image.to_str().unwrap())]);
    assert_eq!(e.run.code, Some(0), "{}", e.run.stderr);
    assert_eq!(e.env_file, "");
}

#[test]
fn esub_rejects_bad_images_at_submit_with_97() {
    let sb = Sandbox::new("lava-esub-bad");
    let esub = Esub::new();
    let text = sb.user_file("notes.sqsh", b"not a squashfs image\n");
    let empty = sb.user_file("empty.sqsh", b"");
    // (bsub -a, BERTH_IMAGE in the submit environment, what the message names)
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        ("berth(/nonexistent/app.sqsh)".into(), None, "app.sqsh"),
        (format!("berth({})", text.display()), None, "notes.sqsh"),
        (format!("berth({})", empty.display()), None, "empty.sqsh"),
        ("berth()".into(), None, "no image"),
        ("berth".into(), None, "needs an image"),
        (
            "berth(docker://registry.local/app:1)".into(),
            None,
            "import it first",
        ),
        (String::new(), Some("/nonexistent/env.sqsh"), "env.sqsh"),
    ];
    for (additional, berth_image, says) in cases {
        let a = (!additional.is_empty()).then_some(additional.as_str());
        let env: Vec<(&str, &str)> = berth_image
            .map(|i| ("BERTH_IMAGE", i))
            .into_iter()
            .collect();
        let e = esub.submit(&sb, a, &env);
        assert_eq!(
            e.run.code,
            Some(97),
            "{additional} {env:?}: {}",
            e.run.stderr
        );
        assert_one_line(&e.run, &additional);
        assert!(
            e.run.stderr.contains("job rejected") && e.run.stderr.contains(says),
            "{}",
            e.run.stderr
        );
        assert_eq!(e.env_file, "", "nothing passed on");
    }
    assert_nothing_left(&sb, None);
}

#[test]
fn bad_job_input_fails_with_one_line_and_leaves_nothing() {
    let sb = Sandbox::new("lava-bad");
    let lava = sbatchd(&sb);
    let text = sb.user_file("notes.sqsh", b"not a squashfs image\n");
    let image = demo_image();
    let cases: Vec<(Job, i32, &str)> = vec![
        (
            Job::new("true").env("BERTH_IMAGE", "/nonexistent/app.sqsh"),
            125,
            "app.sqsh",
        ),
        (
            Job::new("true").env("BERTH_IMAGE", text.to_str().unwrap()),
            125,
            "notes.sqsh",
        ),
        (
            Job::new("true").env("BERTH_IMAGE", "relative-missing.sqsh"),
            125,
            "relative-missing.sqsh",
        ),
        (
            // The job file's directory is gone (a JOB_SPOOL_DIR not mounted on this host).
            Job::new("true")
                .image(&image)
                .env("LSB_JOBFILENAME", "/nonexistent/.lsbatch/1.1"),
            125,
            "LSB_JOBFILENAME",
        ),
        (
            Job::new("no-such-command").image(&image),
            127,
            "no-such-command",
        ),
        (Job::new("").image(&image), 125, "no job command"),
        (Job::new("no-such-command"), 127, "no-such-command"),
    ];
    for (job, code, says) in cases {
        let r = lava.run(&sb, &job);
        assert_eq!(r.code, Some(code), "{}: {}", job.command, r.stderr);
        assert_one_line(&r, &job.command);
        assert!(r.stderr.contains(says), "{}: {}", job.command, r.stderr);
        assert_eq!(r.stdout, "");
    }
    // The MPI helper outside a parallel job, or given no command.
    let helper = lava_bin("berth-lava-mpirun");
    for (argv, says) in [
        (
            vec![helper.to_string_lossy().into_owned(), "mpi-hello".into()],
            "LSB_MCPU_HOSTS",
        ),
        (vec![helper.to_string_lossy().into_owned()], "no command"),
    ] {
        let r = run(sb.as_user(&argv));
        assert_eq!(r.code, Some(125), "{argv:?}: {}", r.stderr);
        assert_one_line(&r, "berth-lava-mpirun");
        assert!(r.stderr.contains(says), "{}", r.stderr);
    }
    assert_nothing_left(&sb, None);
}

#[test]
fn mpi_job_runs_its_ranks_in_the_image_across_two_hosts() {
    let sb = Sandbox::new("lava-mpi");
    let hosts = Hosts::start(&sb);
    // The hosts answer by name, as the test user, each in its own network and UTS namespace.
    for name in ["lvh1", "lvh2"] {
        let r = hosts.ssh(&sb, name, "hostname").expect_ok(name);
        assert_eq!(r.stdout.trim(), name);
    }
    let lava = hosts.sbatchd(&sb.root.join(".lsbatch"));
    let helper = lava_bin("berth-lava-mpirun");
    let job = Job {
        command: format!("{} mpi-hello", helper.display()),
        hosts: vec![("lvh1".into(), 2), ("lvh2".into(), 2)],
        ..Job::default()
    }
    .image(&demo_image())
    // What the user (or the site's profile) sets for Open MPI: ssh to the hosts, TCP between
    // them, shared memory (with CMA, needing one container per host) within one.
    .env(
        "OMPI_MCA_plm_rsh_agent",
        &format!("ssh -F {}", hosts.ssh_config.display()),
    )
    .env("OMPI_MCA_btl", "self,vader,tcp")
    .env("OMPI_MCA_btl_vader_single_copy_mechanism", "cma")
    .env("OMPI_MCA_btl_tcp_if_include", "10.198.0.0/24")
    .env("OMPI_MCA_oob_tcp_if_include", "10.198.0.0/24");
    let r = lava.run(&sb, &job);
    assert_eq!(
        r.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    let field = |l: &str, f: &str| -> String {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(f))
            .unwrap_or_else(|| panic!("no {f} in {l}"))
            .to_string()
    };
    let mut ranks: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("rank "))
        .collect();
    ranks.sort_by_key(|l| l[5..].split('/').next().unwrap().parse::<u32>().unwrap());
    assert_eq!(ranks.len(), 4, "{}", r.stdout);
    for (i, l) in ranks.iter().enumerate() {
        assert!(l.starts_with(&format!("rank {i}/4 ")), "{l}");
        let host = if i < 2 { "lvh1" } else { "lvh2" };
        assert_eq!(field(l, "host="), host, "{l}");
        assert!(
            l.contains("bookworm") && l.contains("allreduce=ok") && l.contains("ring=ok"),
            "{l}"
        );
        assert_eq!(field(l, "uid="), user().uid.to_string());
    }
    // One container per host: the ranks of a host share it, the hosts do not.
    assert_eq!(field(ranks[0], "mnt="), field(ranks[1], "mnt="));
    assert_eq!(field(ranks[2], "mnt="), field(ranks[3], "mnt="));
    assert_ne!(field(ranks[0], "mnt="), field(ranks[2], "mnt="));
    assert_eq!(field(ranks[0], "user="), field(ranks[1], "user="));
    assert!(!field(ranks[0], "mnt=").is_empty());
    // The keepers went with their ranks.
    assert_nothing_left(&sb, None);
    drop(hosts);
    let links = std::process::Command::new("ip")
        .args(["link", "show", "berthlv0"])
        .output()
        .unwrap();
    assert!(!links.status.success(), "the test hosts' bridge is removed");
}

/// Bytes as hex, the way `od -An -tx1 | tr -d ' \n'` prints them.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_job_starts_with_sbatchds_signal_state_in_the_image() {
    let sb = Sandbox::new("lava-signals");
    let lava = sbatchd(&sb);
    // What sbatchd (the driver) gives the job: this thread's mask, and what this process
    // ignores except the signals it resets to their default.
    let own = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let field = |status: &str, name: &str| {
        let v = status.lines().find_map(|l| l.strip_prefix(name)).unwrap();
        u64::from_str_radix(v.trim(), 16).unwrap()
    };
    let reset = [
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGHUP,
        libc::SIGPIPE,
        libc::SIGTERM,
    ]
    .iter()
    .fold(0u64, |m, s| m | 1 << (s - 1));
    let expected = (field(&own, "SigIgn:") & !reset, field(&own, "SigBlk:"));
    for image in [None, Some(demo_image())] {
        let mut job = Job::new("cat /proc/self/status");
        if let Some(i) = &image {
            job = job.image(i);
        }
        let r = lava.run(&sb, &job).expect_ok("status");
        let got = (field(&r.stdout, "SigIgn:"), field(&r.stdout, "SigBlk:"));
        assert_eq!(got, expected, "(SigIgn, SigBlk), image {image:?}");
    }
    // So a closed pipe kills its writer, as on the host.
    let r = lava
        .run(
            &sb,
            &Job::new("bash -c 'yes | head -1 >/dev/null; echo ${PIPESTATUS[0]}'")
                .image(&demo_image()),
        )
        .expect_ok("yes | head");
    assert_eq!(r.stdout, "141\n", "{}", r.stderr);
}

#[test]
fn non_utf8_arguments_and_submit_directory_reach_the_job_unchanged() {
    use std::os::unix::ffi::OsStrExt;
    let sb = Sandbox::new("lava-latin1");
    let lava = sbatchd(&sb);
    // A Latin-1 submit directory ("résultats") and argument ("café").
    let dir = sb.work.join(std::ffi::OsStr::from_bytes(b"r\xe9sultats"));
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(user().uid), Some(user().gid)).unwrap();
    let probe = sb.user_file(
        "probe.sh",
        b"for v in \"$1\" \"$LS_SUBCWD\" \"$(pwd)\"; do printf %s \"$v\" | od -An -tx1 | tr -d ' \\n'; echo; done\n",
    );
    let mut job =
        Job::new(&format!("sh {} \"$(printf 'caf\\351')\"", probe.display())).image(&demo_image());
    job.cwd = Some(dir.clone());
    let r = lava.run(&sb, &job).expect_ok("latin-1");
    let d = hex(dir.as_os_str().as_bytes());
    assert_eq!(
        r.stdout,
        format!("{}\n{d}\n{d}\n", hex(b"caf\xe9")),
        "{}",
        r.stderr
    );
}
