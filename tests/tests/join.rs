//! One container per node: ranks with the same key share the user and mount namespaces, and
//! Open MPI's shared memory with CMA works between them.

use berth_tests::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::Duration;

fn ns(out: &str, name: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {out}"))
        .to_string()
}

#[test]
fn two_runs_with_the_same_key_share_namespaces() {
    let sb = Sandbox::new("join");
    let image = demo_image();
    let img = image.to_str().unwrap();
    // The first holds the container while the second joins; each prints its namespaces.
    let mut first = sb
        .berth(&[
            "run",
            "--join",
            "pair",
            img,
            "--",
            "sh",
            "-c",
            "readlink /proc/self/ns/mnt /proc/self/ns/user; read x || true",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The second starts only once the first is inside (it has printed both lines), so the
    // second joins the first's container rather than racing it to make one.
    let mut first_out = BufReader::new(first.stdout.take().unwrap());
    let mut out = String::new();
    for _ in 0..2 {
        first_out.read_line(&mut out).unwrap();
    }
    assert!(out.contains("user:"), "first did not start: {out}");
    let second = run(sb.berth(&[
        "run",
        "--join",
        "pair",
        img,
        "--",
        "readlink",
        "/proc/self/ns/mnt",
        "/proc/self/ns/user",
    ]))
    .expect_ok("second");
    // A run of its own, while the shared one still exists, differs.
    let alone = run(sb.berth(&[
        "run",
        "--no-join",
        img,
        "--",
        "readlink",
        "/proc/self/ns/mnt",
    ]))
    .expect_ok("alone");
    drop(first.stdin.take());
    first_out.read_to_string(&mut out).unwrap();
    assert!(first.wait().unwrap().success());
    assert!(out.contains("mnt:"), "first: {out}");
    assert_eq!(ns(&out, "mnt:"), ns(&second.stdout, "mnt:"));
    assert_eq!(ns(&out, "user:"), ns(&second.stdout, "user:"));
    assert_ne!(ns(&alone.stdout, "mnt:"), ns(&out, "mnt:"));
    // The keeper is gone once both have exited.
    assert!(
        eventually(Duration::from_secs(10), || processes_with("--join pair")
            .is_empty()),
        "{:?}",
        processes_with("--join pair")
    );
}

#[test]
fn a_key_in_use_with_other_mounts_is_refused() {
    let sb = Sandbox::new("join-mismatch");
    let image = demo_image();
    let img = image.to_str().unwrap();
    let mut first = sb
        .berth(&["run", "--join", "k", img, "--", "sleep", "20"])
        .spawn()
        .unwrap();
    let ready = eventually(Duration::from_secs(20), || {
        std::fs::read_dir(sb.state.join("join"))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".sock"))
            })
            .unwrap_or(false)
    });
    assert!(ready);
    let r = run(sb.berth(&[
        "run",
        "--join",
        "k",
        "--mount",
        "/tmp:/other",
        img,
        "--",
        "true",
    ]));
    assert_eq!(r.code, Some(125));
    assert!(r.stderr.contains("join key 'k' is in use"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1);
    first.kill().unwrap();
    first.wait().unwrap();
}

fn mpirun(sb: &Sandbox, extra: &[&str]) -> Run {
    run(sb.as_user(&mpirun_argv(MPI_SHM_CMA, extra, &["mpi-hello"])))
}

#[test]
fn mpirun_ranks_share_one_container_and_cma_works() {
    let sb = Sandbox::new("mpi-join");
    let r = mpirun(&sb, &[]).expect_ok("mpirun in one container");
    let ranks = two_ranks(&r.stdout);
    for l in &ranks {
        assert!(
            l.contains("allreduce=ok") && l.contains("ring=ok") && l.contains("bookworm"),
            "{l}"
        );
        assert!(l.contains(&format!("uid={}", user().uid)));
    }
    let field = |l: &str, f: &str| {
        l.split_whitespace()
            .find(|w| w.starts_with(f))
            .unwrap()
            .to_string()
    };
    assert_eq!(
        field(ranks[0], "mnt="),
        field(ranks[1], "mnt="),
        "one mount namespace"
    );
    assert_eq!(
        field(ranks[0], "user="),
        field(ranks[1], "user="),
        "one user namespace"
    );
    assert!(
        !r.stderr.contains("cma-different-user-namespace"),
        "{}",
        r.stderr
    );
}

#[test]
fn without_join_open_mpi_sees_different_namespaces() {
    // The control for the test above: it would pass without CMA if this did not differ.
    let sb = Sandbox::new("mpi-nojoin");
    let r = mpirun(&sb, &["--no-join"]);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        !r.ok(),
        "forcing CMA across user namespaces must fail: {all}"
    );
    // Open MPI explains why (when its help message gets through) and aborts in vader.
    assert!(
        all.contains("different user namespaces") || all.contains("vader BTL is aborting"),
        "{all}"
    );
}

#[test]
fn linger_keeps_a_warm_container_for_the_next_run_then_goes() {
    let sb = Sandbox::new("linger");
    let image = demo_image();
    let img = image.to_str().unwrap();
    let args = [
        "run",
        "--linger",
        "3",
        img,
        "--",
        "readlink",
        "/proc/self/ns/mnt",
    ];
    let first = run(sb.berth(&args)).expect_ok("first");
    let keepers = sb.processes();
    assert_eq!(
        keepers.len(),
        2,
        "keeper and its berth-imagefs stay after the command: {keepers:?}"
    );
    let second = run(sb.berth(&args)).expect_ok("second");
    assert_eq!(
        first.stdout, second.stdout,
        "the second run started in the same container"
    );
    assert_eq!(sb.processes(), keepers, "same keeper");
    // Other mounts: another container.
    let other = run(sb.berth(&[
        "run",
        "--linger",
        "3",
        "-m",
        "/tmp:/x",
        img,
        "--",
        "readlink",
        "/proc/self/ns/mnt",
    ]))
    .expect_ok("other");
    assert_ne!(other.stdout, first.stdout);
    assert!(
        eventually(Duration::from_secs(30), || sb.processes().is_empty()),
        "keepers leave after lingering: {:?}",
        sb.processes()
    );
    // A writable container is never kept for another run.
    run(sb.berth(&["run", "--linger", "30", "--writable", img, "--", "true"]))
        .expect_ok("writable");
    assert!(
        eventually(Duration::from_secs(10), || sb.processes().is_empty()),
        "{:?}",
        sb.processes()
    );
}

/// A join keeper's command line (`berth-keeper KEY`).
const KEEPER: &str = "berth-keeper ";

/// The first sandbox process whose command line starts with `prefix`.
fn process_of(sb: &Sandbox, prefix: &str) -> Option<i32> {
    sb.processes()
        .into_iter()
        .find(|(_, cmd)| cmd.starts_with(prefix))
        .map(|(pid, _)| pid)
}

/// Two ranks joining `key`, each running `script` (which starts with `read x`, so they wait for
/// their stdin to close), returned once both are inside and the keeper serves them.
fn two_waiting_ranks(sb: &Sandbox, key: &str, img: &str, script: &str) -> [std::process::Child; 2] {
    let rank = || {
        sb.berth(&["run", "--join", key, img, "--", "sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let ranks = [rank(), rank()];
    assert!(
        eventually(Duration::from_secs(30), || {
            sb.processes()
                .iter()
                .filter(|(_, c)| c.starts_with("sh -c read x"))
                .count()
                == 2
                && process_of(sb, KEEPER).is_some()
        }),
        "ranks did not start: {:?}",
        sb.processes()
    );
    ranks
}

#[test]
fn a_killed_keeper_leaves_its_ranks_their_image() {
    let sb = Sandbox::new("keeper-kill");
    let image = demo_image();
    let img = image.to_str().unwrap();
    let mut ranks = two_waiting_ranks(
        &sb,
        "kk",
        img,
        "read x; cat /etc/debian_version; ls /usr/bin | wc -l",
    );
    let keeper = || process_of(&sb, KEEPER);
    let pid = keeper().unwrap();
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    assert!(eventually(Duration::from_secs(10), || keeper().is_none()));
    for r in ranks.iter_mut() {
        drop(r.stdin.take());
    }
    for r in ranks {
        let out = r.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a rank lost its image when the keeper died: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("12."), "{text}");
    }
    // The image server goes with the container's last process.
    assert!(
        eventually(Duration::from_secs(10), || sb.processes().is_empty()),
        "left: {:?}",
        sb.processes()
    );
}

#[test]
fn a_killed_image_server_is_named_in_every_rank_s_stderr() {
    let sb = Sandbox::new("server-kill");
    let image = demo_image();
    let img = image.to_str().unwrap();
    let mut ranks = two_waiting_ranks(&sb, "sk", img, "read x; cat /etc/debian_version");
    let find = |prefix: &str| process_of(&sb, prefix);
    let server = find("berth-imagefs").expect("the image server runs");
    let _ = kill(Pid::from_raw(server), Signal::SIGKILL);
    // The keeper tells the ranks and leaves.
    assert!(eventually(Duration::from_secs(10), || find(KEEPER).is_none()));
    for r in ranks.iter_mut() {
        drop(r.stdin.take());
    }
    for r in ranks {
        let out = r.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the image is gone: {err}");
        assert_eq!(
            err.lines()
                .filter(|l| l.starts_with("berth: the image server of this container"))
                .count(),
            1,
            "one line names the cause: {err}"
        );
    }
    assert!(
        eventually(Duration::from_secs(10), || sb.processes().is_empty()),
        "left: {:?}",
        sb.processes()
    );
}

#[test]
fn a_lingering_container_is_not_reused_for_an_image_replaced_at_the_same_path() {
    use berth_tests::hostile::{minimal_root, squash};
    let sb = Sandbox::new("linger-replaced");
    let image = sb.work.join("app.sqsh");
    let tree = sb.root.join("tree");
    let build = |marker: &str| {
        minimal_root(&tree);
        std::fs::write(tree.join("etc/marker"), marker).unwrap();
        let fresh = sb.root.join("fresh.sqsh");
        squash(&tree, &fresh);
        // Replaced as tools do: a new file renamed over the old path.
        std::fs::rename(&fresh, &image).unwrap();
    };
    let args = [
        "run",
        "--linger",
        "30",
        image.to_str().unwrap(),
        "--",
        "cat",
        "/etc/marker",
    ];
    build("first");
    let r = run(sb.berth(&args)).expect_ok("first");
    assert_eq!(r.stdout, "first");
    build("second");
    let r = run(sb.berth(&args)).expect_ok("second");
    assert_eq!(
        r.stdout, "second",
        "the new image, not the warm container of the old"
    );
    // The two lingering keepers are not needed any more.
    for (pid, _) in sb.processes() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}
