//! `--unshare net,ipc,uts`: namespaces of the container's own besides user and mount, one set
//! per container, shared by the ranks that join it.

use berth_tests::*;
use std::process::Stdio;
use std::time::Duration;

/// The test's own (the host's) namespace of this kind, as `readlink /proc/self/ns/KIND` prints it.
fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The line of `out` that starts with `prefix`.
fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {out}"))
}

/// Reads the namespaces, the interfaces (kernel's list, sysfs's) and lo's flags, then talks TCP
/// to itself over 127.0.0.1 (the image has perl, not `ip`).
const NET_PROBE: &str = r#"readlink /proc/self/ns/net /proc/self/ns/ipc /proc/self/ns/uts
echo "dev: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
echo "sys: $(ls /sys/class/net | tr '\n' ' ')"
echo "flags: $(cat /sys/class/net/lo/flags)"
echo "cgroup: $(ls /sys/fs/cgroup | wc -l)"
perl -MIO::Socket::INET -e '
  $l = IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1:0") or die "listen: $@\n";
  $c = IO::Socket::INET->new(PeerAddr => "127.0.0.1", PeerPort => $l->sockport, Timeout => 10)
    or die "connect: $@\n";
  $a = $l->accept; print $c "ping\n"; print "tcp: ", scalar <$a>;'
"#;

fn lo_is_up(out: &str) {
    assert_eq!(
        line(out, "dev:"),
        "dev: lo ",
        "only lo in /proc/net/dev: {out}"
    );
    assert_eq!(
        line(out, "sys:"),
        "sys: lo ",
        "only lo in /sys/class/net: {out}"
    );
    let flags = line(out, "flags: ").trim_start_matches("flags: 0x");
    let flags = u32::from_str_radix(flags, 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is up (IFF_UP): {out}");
    assert_eq!(line(out, "tcp:"), "tcp: ping", "{out}");
}

#[test]
fn unshare_net_has_only_lo_and_it_is_up() {
    let sb = Sandbox::new("unshare-net");
    let image = demo_image();
    let img = image.to_str().unwrap();
    let r = run(sb.berth(&["run", "--unshare", "net", img, "--", "sh", "-c", NET_PROBE]))
        .expect_ok("--unshare net");
    lo_is_up(&r.stdout);
    assert_ne!(line(&r.stdout, "net:"), host_ns("net"));
    assert_eq!(
        line(&r.stdout, "ipc:"),
        host_ns("ipc"),
        "only net asked for"
    );
    assert_eq!(
        line(&r.stdout, "uts:"),
        host_ns("uts"),
        "only net asked for"
    );
    // The fresh sysfs keeps the host's cgroups (hwloc and MPI read cpusets there).
    assert_ne!(line(&r.stdout, "cgroup:"), "cgroup: 0", "{}", r.stdout);
    // The control: without it, the container is on the host's network.
    let plain =
        run(sb.berth(&["run", img, "--", "readlink", "/proc/self/ns/net"])).expect_ok("plain");
    assert_eq!(plain.stdout.trim(), host_ns("net"));
}

#[test]
fn unshare_ipc_and_uts_give_new_namespaces_with_the_host_hostname() {
    let sb = Sandbox::new("unshare-ipc-uts");
    let image = demo_image();
    let img = image.to_str().unwrap();
    // From the environment, as the other options.
    let mut cmd = sb.berth(&[
        "run",
        img,
        "--",
        "sh",
        "-c",
        "readlink /proc/self/ns/net /proc/self/ns/ipc /proc/self/ns/uts; echo host: $(hostname); \
         ipcmk -M 4096 >/dev/null && echo shm: $(ipcs -m | grep -c 4096)",
    ]);
    cmd.env("BERTH_UNSHARE", "ipc,uts");
    let r = run(cmd).expect_ok("BERTH_UNSHARE=ipc,uts");
    let out = &r.stdout;
    assert_ne!(line(out, "ipc:"), host_ns("ipc"), "{out}");
    assert_ne!(line(out, "uts:"), host_ns("uts"), "{out}");
    assert_eq!(line(out, "net:"), host_ns("net"), "{out}");
    let hostname = nix::unistd::gethostname().unwrap();
    assert_eq!(
        line(out, "host:"),
        format!("host: {}", hostname.to_string_lossy()),
        "the host's hostname is kept"
    );
    // A System V segment made inside lives in the container's namespace: it goes with it.
    assert_eq!(line(out, "shm:"), "shm: 1", "{out}");
    let dry = run(sb.berth(&[
        "run",
        "--dry-run",
        "--unshare",
        "uts,ipc",
        img,
        "--",
        "true",
    ]))
    .expect_ok("dry run");
    assert!(
        dry.stdout.contains("namespaces: user, mount, ipc, uts"),
        "{}",
        dry.stdout
    );
}

#[test]
fn ranks_with_one_join_key_share_one_set_of_namespaces() {
    let sb = Sandbox::new("unshare-join");
    let image = demo_image();
    let img = image.to_str().unwrap();
    let args = [
        "run",
        "--join",
        "uk",
        "--unshare",
        "net,uts",
        "--unshare",
        "ipc",
        img,
    ];
    // The first holds the container while the second joins.
    let mut first_args = args.to_vec();
    first_args.extend([
        "--",
        "sh",
        "-c",
        "readlink /proc/self/ns/net /proc/self/ns/ipc /proc/self/ns/uts; read x || true",
    ]);
    let mut first = sb
        .berth(&first_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut second_args = args.to_vec();
    second_args.extend(["--", "sh", "-c", NET_PROBE]);
    let second = run(sb.berth(&second_args)).expect_ok("second");
    drop(first.stdin.take());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut first.stdout.take().unwrap(), &mut out).unwrap();
    assert!(first.wait().unwrap().success());
    for kind in ["net:", "ipc:", "uts:"] {
        assert_eq!(line(&out, kind), line(&second.stdout, kind), "one {kind}");
        assert_ne!(line(&out, kind), host_ns(kind.trim_end_matches(':')));
    }
    // lo was brought up by the keeper, once, for both.
    lo_is_up(&second.stdout);
    // The keeper goes with its last rank.
    assert!(
        eventually(Duration::from_secs(10), || processes_with("--join uk")
            .is_empty()),
        "{:?}",
        processes_with("--join uk")
    );
    // Under --remap-root no inner user namespace is sent: the others still are.
    let root = run(sb.berth(&[
        "run",
        "--join",
        "uk2",
        "--remap-root",
        "--unshare",
        "net",
        img,
        "--",
        "sh",
        "-c",
        "id -u; readlink /proc/self/ns/net",
    ]))
    .expect_ok("remap-root");
    assert!(root.stdout.starts_with("0\n"), "{}", root.stdout);
    assert_ne!(line(&root.stdout, "net:"), host_ns("net"));
}

#[test]
fn another_set_of_namespaces_is_another_container() {
    let sb = Sandbox::new("unshare-key");
    let image = demo_image();
    let img = image.to_str().unwrap();
    let mut first = sb
        .berth(&["run", "--join", "uk3", img, "--", "sleep", "20"])
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || {
        std::fs::read_dir(sb.state.join("join"))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".sock"))
            })
            .unwrap_or(false)
    }));
    let r = run(sb.berth(&[
        "run",
        "--join",
        "uk3",
        "--unshare",
        "net",
        img,
        "--",
        "true",
    ]));
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(r.code, Some(125), "{}", r.stderr);
    assert!(
        r.stderr.contains("join key 'uk3' is in use"),
        "{}",
        r.stderr
    );
}

#[test]
fn an_unknown_kind_is_one_line_and_exit_125() {
    let sb = Sandbox::new("unshare-bogus");
    let image = demo_image();
    let img = image.to_str().unwrap();
    for (args, env) in [
        (vec!["run", "--unshare", "bogus", img, "--", "true"], None),
        (vec!["run", "--unshare", "net,", img, "--", "true"], None),
        (vec!["run", img, "--", "true"], Some("net,bogus")),
    ] {
        let mut cmd = sb.berth(&args);
        if let Some(v) = env {
            cmd.env("BERTH_UNSHARE", v);
        }
        let r = run(cmd);
        assert_eq!(r.code, Some(125), "{args:?} {env:?}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(
            r.stderr.starts_with("berth: cannot unshare '"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("net, ipc and uts"), "{}", r.stderr);
        if args.contains(&"bogus") || env.is_some() {
            assert!(r.stderr.contains("'bogus'"), "{}", r.stderr);
        }
    }
}

#[test]
fn mpirun_with_unshare_ipc_keeps_shared_memory_and_cma() {
    let sb = Sandbox::new("unshare-mpi");
    let argv = mpirun_argv(
        MPI_SHM_CMA,
        &["--unshare", "ipc"],
        &[
            "sh",
            "-c",
            "echo ipc=$(readlink /proc/self/ns/ipc); exec mpi-hello",
        ],
    );
    let r = run(sb.as_user(&argv)).expect_ok("mpirun --unshare ipc");
    let ranks = two_ranks(&r.stdout);
    for l in &ranks {
        assert!(l.contains("allreduce=ok") && l.contains("ring=ok"), "{l}");
    }
    let ipcs: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("ipc=")).collect();
    assert_eq!(ipcs.len(), 2, "{}", r.stdout);
    assert_eq!(ipcs[0], ipcs[1], "one ipc namespace for the node's ranks");
    assert_ne!(ipcs[0], format!("ipc={}", host_ns("ipc")));
    assert!(
        !r.stderr.contains("cma-different-user-namespace"),
        "{}",
        r.stderr
    );
}
