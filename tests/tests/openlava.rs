//! OpenLava: jobs submitted with `-a 'berth(IMG)'` (or BERTH_IMAGE) run in the image through
//! the queue's JOB_STARTER, the esub checks images at submit, bkill leaves nothing behind, and
//! berth-lava-mpirun runs an MPI job's ranks in the image across two hosts. OpenLava itself is
//! emulated by tests/src/openlava.rs (sbatchd's job file and environment, bsub's esub call).

use berth_tests::openlava::{
    bsub, env_file_vars, lava_bin, Esub, EsubResult, Hosts, Job, Running, Sbatchd, Submit,
};
use berth_tests::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// sbatchd with job files in the sandbox (`/tmp/.lsbtmp<uid>/.lsbatch`: under /tmp), and a
/// JOB_TERMINATE_INTERVAL of 3 s (10 by default) so that bkill's SIGKILL comes sooner.
fn sbatchd(sb: &Sandbox) -> Sbatchd {
    let mut lava = Sbatchd::new(&sb.root.join(format!(".lsbtmp{}/.lsbatch", user().uid)));
    lava.terminate_interval = Duration::from_secs(3);
    lava
}

/// The site's openlava.toml in the sandbox, and an esub that reads it.
fn esub_with_config(sb: &Sandbox, config: &str) -> Esub {
    let file = sb.root.join("openlava.toml");
    std::fs::write(&file, config).unwrap();
    let mut esub = Esub::new();
    esub.env.push((
        "BERTH_LAVA_CONFIG".into(),
        file.to_string_lossy().into_owned(),
    ));
    esub
}

/// The esub of a site whose queue `berth` has the starter.
fn esub(sb: &Sandbox) -> Esub {
    esub_with_config(sb, "starter_queues = [\"berth\"]\n")
}

fn assert_rejected(e: &EsubResult, says: &str) {
    assert_eq!(e.run.code, Some(97), "{}", e.run.stderr);
    assert_one_line(&e.run, says);
    assert!(
        e.run.stderr.contains("job rejected") && e.run.stderr.contains(says),
        "wanted {says:?}: {}",
        e.run.stderr
    );
    assert!(!e.env_file_made, "nothing passed on");
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
        // Only this test's processes (they work in the sandbox): once the container's
        // namespace is gone, the kernel gives its number to the next new namespace, which may
        // be another test's.
        let inside: Vec<_> = live_processes(user().uid)
            .into_iter()
            .filter(|(p, _)| {
                std::fs::read_link(format!("/proc/{p}/ns/mnt"))
                    .ok()
                    .as_deref()
                    == Some(ns)
                    && std::fs::read_link(format!("/proc/{p}/cwd"))
                        .is_ok_and(|d| d.starts_with(&sb.root))
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
            // The command itself: not the starter before it execs, nor a keeper forked from
            // the starter that still has its command line (and a namespace of its own).
            .filter(|(_, c)| c.contains(marker) && !c.contains("berth-lava-starter"))
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

/// sbatchd signals every group it has seen for the job: the image server's and any keeper's
/// too, whether PIM caught them in the job's tree or not. The tests take that worst case, so
/// that what they check does not hang on when PIM's scan ran.
fn see_every_berth_group(sb: &Sandbox, running: &Running) {
    let berth_groups: Vec<i32> = sb
        .processes()
        .into_iter()
        .filter_map(|(p, _)| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            stat.rsplit(')')
                .next()?
                .split_whitespace()
                .nth(2)?
                .parse()
                .ok()
        })
        .collect();
    running.seen_groups(&berth_groups);
}

/// The next line of the job's stdout.
fn next_line(out: &mut impl BufRead) -> String {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line
}

#[test]
fn bkill_ends_the_job_and_leaves_no_mount_or_process() {
    let sb = Sandbox::new("lava-bkill");
    let lava = sbatchd(&sb);
    let image = demo_image();

    // A command that dies of SIGINT: the job's exit status says so (128 + 2).
    let running = lava.start(&sb, &Job::new("sleep 3001").image(&image));
    let ns = started_in_image(&sb, &running, "sleep 3001");
    running.bkill();
    let r = running.wait();
    assert_eq!(r.code, Some(130), "{}", r.stderr);
    assert_nothing_left(&sb, Some(&ns));

    // A command that ignores SIGINT and SIGTERM: bkill's SIGKILL ends it all, res too.
    let mut running = lava.start(
        &sb,
        &Job::new(r#"sh -c 'trap "echo ignored-INT" INT; trap "echo ignored-TERM" TERM; echo ready; while :; do sleep 1; done' sleep3002"#)
            .image(&image),
    );
    let mut out = BufReader::new(running.child.stdout.take().unwrap());
    assert_eq!(next_line(&mut out), "ready\n");
    let ns = started_in_image(&sb, &running, "sleep3002");
    running.bkill();
    assert_eq!(next_line(&mut out), "ignored-INT\n");
    assert_eq!(next_line(&mut out), "ignored-TERM\n");
    let r = running.wait();
    assert_eq!(r.signal, Some(libc::SIGKILL));
    assert_nothing_left(&sb, Some(&ns));
}

#[test]
fn bkill_signals_every_process_group_and_the_job_keeps_its_image() {
    let sb = Sandbox::new("lava-bkill-groups");
    let lava = sbatchd(&sb);
    // A checkpointing job: on SIGUSR1 it reads the image and goes on; on SIGINT it reads the
    // image, cleans up and exits 9.
    let mut running = lava.start(
        &sb,
        &Job::new(r#"sh -c 'trap "cat /etc/debian_version >/dev/null && echo checkpointed" USR1; trap "cat /etc/debian_version >/dev/null && echo cleaned-up; exit 9" INT; echo ready; while :; do sleep 1; done' sleep3003"#)
            .image(&demo_image()),
    );
    let mut out = BufReader::new(running.child.stdout.take().unwrap());
    assert_eq!(next_line(&mut out), "ready\n");
    let ns = started_in_image(&sb, &running, "sleep3003");
    see_every_berth_group(&sb, &running);
    let groups = running.pgids();
    assert!(
        groups.iter().any(|g| *g != running.pgid),
        "the image server has a group of its own: {groups:?}"
    );
    for _ in 0..2 {
        running.signal(libc::SIGUSR1);
        assert_eq!(next_line(&mut out), "checkpointed\n", "{groups:?}");
    }
    // bkill: SIGCONT, then SIGINT to every group; the handler still reads the image.
    running.bkill();
    assert_eq!(next_line(&mut out), "cleaned-up\n");
    let r = running.wait();
    assert_eq!(r.code, Some(9), "{}", r.stderr);
    assert_nothing_left(&sb, Some(&ns));
}

#[test]
fn bstop_and_bresume_reach_the_whole_job_and_it_goes_on_in_the_image() {
    let sb = Sandbox::new("lava-bstop");
    let lava = sbatchd(&sb);
    let mut running = lava.start(
        &sb,
        &Job::new(r#"sh -c 'echo ready; while [ ! -e go ]; do echo tick >>ticks; sleep 0.2; done; cat /etc/debian_version' stop3004"#)
            .image(&demo_image()),
    );
    let mut out = BufReader::new(running.child.stdout.take().unwrap());
    assert_eq!(next_line(&mut out), "ready\n");
    started_in_image(&sb, &running, "stop3004");
    // The worst case: PIM saw the image server's group, so bstop stops it too. A process of
    // the job that was waiting on the image then waits on (state D, killable) instead of
    // stopping (state T); either way the job makes no progress until bresume.
    see_every_berth_group(&sb, &running);
    running.bstop();
    let state = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit(')').next().unwrap_or("").trim().chars().next())
            .ok()
            .flatten()
    };
    let halted = || {
        sb.processes()
            .iter()
            .all(|(p, _)| matches!(state(*p), Some('T' | 'D' | 'Z') | None))
    };
    assert!(
        eventually(Duration::from_secs(10), halted),
        "not stopped: {:?}",
        sb.processes()
            .iter()
            .map(|(p, c)| (*p, state(*p), c.clone()))
            .collect::<Vec<_>>()
    );
    let ticks = sb.work.join("ticks");
    let before = std::fs::metadata(&ticks).unwrap().len();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        std::fs::metadata(&ticks).unwrap().len(),
        before,
        "the job went on while stopped"
    );
    let go = sb.user_file("go", b"");
    assert!(go.exists());
    running.bresume();
    // The image is still there after the stop: the job reads it.
    assert!(next_line(&mut out).starts_with("12"), "bookworm");
    let r = running.wait();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    assert_nothing_left(&sb, None);
}

#[test]
fn esub_accepts_an_image_and_the_job_gets_it() {
    let sb = Sandbox::new("lava-esub-ok");
    let esub = esub(&sb);
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
    let esub = esub(&sb);
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
    let esub = esub(&sb);
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
            "berth(docker://registry.invalid/app:1)".into(),
            None,
            "import docker://registry.invalid/app:1",
        ),
        (
            "berth(oras://registry.local/app:1)".into(),
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
        assert!(!e.env_file_made, "nothing passed on");
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

/// Run `berth-lava-mpirun mpi-hello` on two slots of each test host and check the ranks: in
/// the image, one container per host. `agent` is Open MPI's rsh agent (None: mpirun's own
/// choice), `path` the job's PATH.
fn mpi_job(sb: &Sandbox, hosts: &Hosts, agent: Option<&str>, path: &str) {
    let lava = hosts.sbatchd(&sb.root.join(".lsbatch"));
    let helper = lava_bin("berth-lava-mpirun");
    let mut job = Job {
        command: format!("{} mpi-hello", helper.display()),
        hosts: vec![("lvh1".into(), 2), ("lvh2".into(), 2)],
        ..Job::default()
    }
    .image(&demo_image())
    .env("PATH", path)
    // What the user (or the site's profile) sets for Open MPI: TCP between the hosts, shared
    // memory (with CMA, needing one container per host) within one.
    .env("OMPI_MCA_btl", "self,vader,tcp")
    .env("OMPI_MCA_btl_vader_single_copy_mechanism", "cma")
    .env("OMPI_MCA_btl_tcp_if_include", "10.198.0.0/24")
    .env("OMPI_MCA_oob_tcp_if_include", "10.198.0.0/24");
    if let Some(agent) = agent {
        job = job.env("OMPI_MCA_plm_rsh_agent", agent);
    }
    let r = lava.run(sb, &job);
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
    assert_nothing_left(sb, None);
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
    let ssh = format!("ssh -F {}", hosts.ssh_config.display());
    mpi_job(&sb, &hosts, Some(&ssh), "/usr/local/bin:/usr/bin:/bin");
    drop(hosts);
    let links = std::process::Command::new("ip")
        .args(["link", "show", "berthlv0"])
        .output()
        .unwrap();
    assert!(!links.status.success(), "the test hosts' bridge is removed");
}

#[test]
fn mpi_job_launches_through_blaunch_where_lsf_has_it() {
    let sb = Sandbox::new("lava-blaunch");
    let hosts = Hosts::start(&sb);
    // LSF's blaunch as mpirun's rsh agent sees it: `blaunch HOST COMMAND...` runs the command
    // on that host of the job (here through the test hosts' sshd), and logs the call.
    let bin = sb.work.join("lsf-bin");
    std::fs::create_dir(&bin).unwrap();
    let log = sb.work.join("blaunch.log");
    let blaunch = bin.join("blaunch");
    std::fs::write(
        &blaunch,
        format!(
            "#!/bin/sh\nhost=$1; shift\necho \"$host\" >> {}\nexec ssh -F {} \"$host\" \"$@\"\n",
            log.display(),
            hosts.ssh_config.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&blaunch, std::fs::Permissions::from_mode(0o755)).unwrap();
    // No rsh agent chosen: berth-lava-mpirun finds blaunch on PATH and uses it.
    mpi_job(
        &sb,
        &hosts,
        None,
        &format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
    );
    let called = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        called.trim(),
        "lvh2",
        "blaunch started the daemon on the other host"
    );
}

/// Bytes as hex, the way `od -An -tx1 | tr -d ' \n'` prints them.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_job_starts_with_sbatchds_signal_state_in_the_image() {
    let sb = Sandbox::new("lava-signals");
    let lava = sbatchd(&sb);
    // What sbatchd gives the job (sbd.job.c, execJob): every signal at its default but
    // SIGHUP, ignored; none blocked. The job shell's $LSB_TRAPSIGS catches TERM, USR1, USR2
    // and INT, which a command it starts has at their default again.
    let field = |status: &str, name: &str| {
        let v = status.lines().find_map(|l| l.strip_prefix(name)).unwrap();
        u64::from_str_radix(v.trim(), 16).unwrap()
    };
    let expected = (1u64 << (libc::SIGHUP - 1), 0u64);
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

#[test]
fn arguments_survive_bsubs_join_as_real_bsub_quotes_them() {
    let sb = Sandbox::new("lava-join");
    let lava = sbatchd(&sb);
    // bsub quotes a word with a space, escapes quotes, backslashes and parentheses, and puts
    // a word starting with '$' in single quotes; a later '$' reaches the host shell.
    let job = Job::argv(&[
        "printf",
        "%s/",
        "one two",
        "say \"hi\" now",
        "it's",
        "$HOME",
        "(x)",
        "back\\slash",
        "a$b",
    ])
    .image(&demo_image());
    let r = lava.run(&sb, &job).expect_ok("join");
    assert_eq!(
        r.stdout,
        "one two/say \"hi\" now/it's/$HOME/(x)/back\\slash/a/"
    );
}

#[test]
fn a_login_shell_job_with_an_image_is_refused_at_submit() {
    let sb = Sandbox::new("lava-login");
    let lava = sbatchd(&sb);
    let esub = esub(&sb);
    let image = demo_image();
    let job = Job::new("readlink /proc/self/ns/user");
    for submit in [
        Submit {
            additional: Some(format!("berth({})", image.display())),
            ..Submit::default()
        },
        Submit {
            env: vec![("BERTH_IMAGE".into(), image.to_string_lossy().into_owned())],
            ..Submit::default()
        },
    ] {
        let submit = Submit {
            queue: Some("berth".into()),
            login_shell: Some("/bin/bash".into()),
            ..submit
        };
        let (e, ran) = bsub(&sb, &esub, &lava, &submit, &job);
        // Without the refusal the job would run on the host: sbatchd drops BERTH_IMAGE.
        assert!(ran.is_none(), "ran: {:?}", ran.map(|r| r.stdout));
        assert_rejected(&e, "-L");
    }
    // Without an image a login-shell job is OpenLava's business.
    let (e, ran) = bsub(
        &sb,
        &esub,
        &lava,
        &Submit {
            queue: Some("berth".into()),
            login_shell: Some("/bin/bash".into()),
            ..Submit::default()
        },
        &job,
    );
    assert!(e.accepted(), "{}", e.run.stderr);
    let r = ran.unwrap().expect_ok("login shell without image");
    assert_eq!(Path::new(r.stdout.trim()), host_user_ns());
}

#[test]
fn an_image_on_a_queue_without_the_starter_is_refused_at_submit() {
    let sb = Sandbox::new("lava-queue");
    let image = demo_image();
    let a = Some(format!("berth({})", image.display()));
    let submit = |queue: Option<&str>, env: &[(&str, &str)]| Submit {
        additional: a.clone(),
        queue: queue.map(String::from),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Submit::default()
    };
    // A queue without JOB_STARTER would run the job on the host.
    let mut plain = sbatchd(&sb);
    plain.starter = None;
    let esub = esub_with_config(
        &sb,
        "starter_queues = [\"berth\", \"gpu\"]\ndefault_queue = \"normal\"\n",
    );
    let job = Job::new("readlink /proc/self/ns/user");
    let (e, ran) = bsub(&sb, &esub, &plain, &submit(Some("normal"), &[]), &job);
    assert!(ran.is_none(), "ran: {:?}", ran.map(|r| r.stdout));
    assert_rejected(&e, "queue normal");
    assert!(e.run.stderr.contains("berth, gpu"), "{}", e.run.stderr);
    // No -q: the default queue (the site's, or the user's LSB_DEFAULTQUEUE).
    assert_rejected(&esub.call(&sb, &submit(None, &[])), "queue normal");
    assert!(esub
        .call(&sb, &submit(None, &[("LSB_DEFAULTQUEUE", "gpu")]))
        .accepted());
    assert_rejected(
        &esub.call(&sb, &submit(None, &[("LSB_DEFAULTQUEUE", "short")])),
        "queue short",
    );
    let e = esub.call(&sb, &submit(Some("gpu"), &[]));
    assert!(e.accepted(), "{}", e.run.stderr);
    assert_eq!(e.env_file, format!("BERTH_IMAGE=\"{}\"\n", image.display()));
    // BERTH_IMAGE from the environment goes the same way.
    let from_env = Submit {
        additional: None,
        ..submit(Some("normal"), &[("BERTH_IMAGE", image.to_str().unwrap())])
    };
    assert_rejected(&esub.call(&sb, &from_env), "queue normal");
    // No default queue known, no -q: refused, saying which queues to give.
    let esub = esub_with_config(&sb, "starter_queues = [\"berth\"]\n");
    assert_rejected(&esub.call(&sb, &submit(None, &[])), "-q");
    assert!(esub.call(&sb, &submit(Some("berth"), &[])).accepted());
    // No site file: no queue is known to have the starter.
    let mut esub = Esub::new();
    esub.env.push((
        "BERTH_LAVA_CONFIG".into(),
        sb.root.join("missing.toml").to_string_lossy().into_owned(),
    ));
    assert_rejected(&esub.call(&sb, &submit(Some("berth"), &[])), "missing.toml");
    let esub = esub_with_config(&sb, "starter_queue = [\"berth\"]\n");
    assert_rejected(
        &esub.call(&sb, &submit(Some("berth"), &[])),
        "openlava.toml",
    );
    // Without an image the queue does not matter.
    let e = esub.call(&sb, &Submit::default());
    assert!(e.accepted() && e.run.stderr.is_empty(), "{}", e.run.stderr);
}

#[test]
fn bmod_cannot_change_the_image() {
    let sb = Sandbox::new("lava-bmod");
    let esub = esub(&sb);
    let image = demo_image();
    let e = esub.call(
        &sb,
        &Submit {
            additional: Some(format!("berth({})", image.display())),
            modify: true,
            ..Submit::default()
        },
    );
    // OpenLava does not apply an esub's env file on bmod: the job would keep its old image.
    assert_rejected(&e, "bmod");
    assert!(e.run.stderr.contains("bsub it again"), "{}", e.run.stderr);
    // bmod of anything else goes through.
    let e = esub.call(
        &sb,
        &Submit {
            additional: Some("other(x)".into()),
            modify: true,
            ..Submit::default()
        },
    );
    assert!(e.accepted() && e.run.stderr.is_empty(), "{}", e.run.stderr);
    assert!(!e.env_file_made);
}

#[test]
fn esub_checks_a_directory_image_and_reads_a_as_bsub_writes_it() {
    let sb = Sandbox::new("lava-rootfs");
    let esub = esub(&sb);
    // A directory the user owns but that is no root file system.
    let empty = sb.work.join("notaroot");
    std::fs::create_dir(&empty).unwrap();
    std::os::unix::fs::chown(&empty, Some(user().uid), Some(user().gid)).unwrap();
    assert_rejected(
        &esub.submit(&sb, Some(&format!("berth({})", empty.display())), &[]),
        "/bin/sh",
    );
    // A root with /bin a relative link to usr/bin, as merged-/usr systems have it.
    let root = sb.work.join("root");
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::copy("/bin/sh", root.join("usr/bin/sh")).unwrap();
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    let e = esub.submit(&sb, Some(&format!("berth({})", root.display())), &[]);
    assert!(e.accepted(), "{}", e.run.stderr);
    // A link that leaves the root is resolved inside it, as in the container.
    let escape = sb.work.join("escape");
    std::fs::create_dir(&escape).unwrap();
    std::os::unix::fs::symlink("/usr/bin", escape.join("bin")).unwrap();
    assert_rejected(
        &esub.submit(&sb, Some(&format!("berth({})", escape.display())), &[]),
        "/bin/sh",
    );
    // bsub writes -a unescaped: a backslash is part of the path.
    let odd = sb.work.join("a\\b.sqsh");
    std::fs::copy(demo_image(), &odd).unwrap();
    let e = esub.submit(&sb, Some(&format!("berth({})", odd.display())), &[]);
    assert!(e.accepted(), "{}", e.run.stderr);
    assert_eq!(e.env_file, format!("BERTH_IMAGE=\"{}\"\n", odd.display()));
}

#[test]
fn berth_mode_from_the_submit_environment_is_honoured() {
    let sb = Sandbox::new("lava-mode");
    let lava = sbatchd(&sb);
    let image = demo_image();
    // Extract mode unpacks the image into the node cache (in the state directory here);
    // mount mode does not.
    let unpacked = || {
        std::fs::read_dir(sb.state.join("images"))
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().ends_with(".lock"))
                    .count()
            })
            .unwrap_or(0)
    };
    for (mode, unpacks) in [("mount", false), ("extract", true)] {
        lava.run(
            &sb,
            &Job::new("cat /etc/debian_version")
                .image(&image)
                .env("BERTH_MODE", mode),
        )
        .expect_ok(mode);
        assert_eq!(unpacked() > 0, unpacks, "{mode}");
    }
    let r = lava.run(
        &sb,
        &Job::new("true").image(&image).env("BERTH_MODE", "copy"),
    );
    assert_eq!(r.code, Some(125), "{}", r.stderr);
    assert_one_line(&r, "BERTH_MODE");
    assert!(r.stderr.contains("BERTH_MODE"), "{}", r.stderr);
}

/// `-a 'berth(docker://...)'`: the esub imports into the image store at submit; the job's
/// environment carries the stored file and the digest, and the starter runs it.
#[test]
fn esub_imports_a_registry_image_and_the_job_runs_it() {
    use berth_tests::registry::{berth_image_bin, push_shell, Registry};
    let sb = Sandbox::new("lava-registry");
    let reg = Registry::start("lava-registry", None);
    push_shell(
        &reg,
        &sb.root.join("layout"),
        "demo/app:1",
        b"from the registry",
    );
    let store = sb.work.join("store");
    // berth-image on PATH: the tests' esub is a copy with no berth-image beside it.
    let tools = berth_image_bin().parent().unwrap().display().to_string();
    let submit = Submit {
        additional: Some(format!("berth(docker://{}/demo/app:1)", reg.addr)),
        queue: Some("berth".into()),
        env: vec![
            ("BERTH_STORE".into(), store.to_string_lossy().into_owned()),
            (
                "BERTH_LAYER_CACHE".into(),
                sb.work.join("layers").to_string_lossy().into_owned(),
            ),
            ("PATH".into(), format!("{tools}:/usr/bin:/bin")),
        ],
        ..Submit::default()
    };
    let job = Job::new("cat /srv/hello.txt");
    let (e, ran) = bsub(&sb, &esub(&sb), &sbatchd(&sb), &submit, &job);
    assert!(e.accepted(), "{}", e.run.stderr);
    let vars = env_file_vars(&e.env_file);
    let image = vars.iter().find(|(k, _)| k == "BERTH_IMAGE").unwrap();
    assert!(Path::new(&image.1).starts_with(&store), "{}", e.env_file);
    assert!(
        vars.iter()
            .any(|(k, v)| k == "BERTH_IMAGE_PIN" && v.starts_with("sha256:")),
        "{}",
        e.env_file
    );
    let r = ran.unwrap().expect_ok("registry job");
    assert_eq!(r.stdout.trim(), "from the registry");
}
