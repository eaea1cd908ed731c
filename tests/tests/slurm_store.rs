//! Registry images under Slurm go through the image store: srun resolves the tag and imports
//! once for the whole job; the nodes use the stored image by digest. Requests are counted in
//! the registry's access log (Debian's docker-registry on the cluster's bridge).

use berth_tests::registry::{push_shell, Registry};
use berth_tests::slurm::{cluster, BRIDGE_IP, POLICY};
use berth_tests::*;
use std::path::PathBuf;
use std::time::Duration;

fn lines(r: &Run) -> Vec<String> {
    let mut v: Vec<String> = r.stdout.lines().map(String::from).collect();
    v.sort();
    v
}

/// (manifest GETs, blob GETs) in the registry's access log since `from` lines.
fn gets(reg: &Registry, from: usize) -> (usize, usize, usize) {
    let log = std::fs::read_to_string(reg.dir.join("registry.log")).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    let new = &all[from.min(all.len())..];
    let count = |what: &str| {
        new.iter()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(what))
            .count()
    };
    (count("/manifests/"), count("/blobs/"), all.len())
}

#[test]
fn a_registry_image_is_imported_once_per_job_and_the_nodes_use_its_digest() {
    let c = cluster();
    let sb = Sandbox::new("slurm-store");
    let store = sb.work.join("store");
    let reg = Registry::start_on("slurm-store", None, BRIDGE_IP);
    push_shell(
        &reg,
        &sb.root.join("layout-first"),
        "demo/app:1",
        b"first\n",
    );
    let (_, _, start) = gets(&reg, 0);
    let flag = format!("--container-image=docker://{}/demo/app:1", reg.addr);
    let srun = |args: &[&str]| {
        let mut argv = vec!["srun"];
        argv.extend_from_slice(args);
        let mut cmd = c.cmd(&sb, &argv);
        cmd.env("BERTH_STORE", &store)
            .env("BERTH_LAYER_CACHE", sb.work.join("layers"));
        run(cmd)
    };

    // One job on three nodes: one manifest GET and one GET per blob (config, layer) in all.
    let r = srun(&["-N3", "--ntasks-per-node=2", &flag, "cat", "/srv/hello.txt"]);
    let r = r.expect_ok("srun -N3");
    assert_eq!(lines(&r), vec!["first"; 6]);
    let (manifests, blobs, seen) = gets(&reg, start);
    assert_eq!(
        (manifests, blobs),
        (1, 2),
        "requests of the job:\n{}",
        std::fs::read_to_string(reg.dir.join("registry.log")).unwrap()
    );
    let stored: Vec<PathBuf> = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sqsh"))
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");

    // A second job: the tag is resolved (one manifest GET), no blob is fetched.
    let r = srun(&["-N3", &flag, "cat", "/srv/hello.txt"]).expect_ok("second job");
    assert_eq!(lines(&r), vec!["first"; 3]);
    let (manifests, blobs, seen) = gets(&reg, seen);
    assert_eq!((manifests, blobs), (1, 0));

    // A tag moved between two steps of one job: both steps use the job's first digest.
    let moved = sb.work.join("moved");
    let out = sb.work.join("job.out");
    let script = format!(
        "srun -N2 {flag} cat /srv/hello.txt; while [ ! -e {m} ]; do sleep 0.2; done; srun -N2 {flag} cat /srv/hello.txt",
        m = moved.display()
    );
    let o = format!("--output={}", out.display());
    let mut sbatch = c.cmd(&sb, &["sbatch", "--wait", "-N2", &o, "--wrap", &script]);
    sbatch
        .env("BERTH_STORE", &store)
        .env("BERTH_LAYER_CACHE", sb.work.join("layers"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let job = sbatch.spawn().unwrap();
    let first_step = eventually(Duration::from_secs(120), || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.lines().count() >= 2)
    });
    push_shell(
        &reg,
        &sb.root.join("layout-second"),
        "demo/app:1",
        b"second, after the move\n",
    );
    std::fs::write(&moved, b"").unwrap();
    let done = job.wait_with_output().unwrap();
    assert!(first_step, "the first step ran");
    assert!(
        done.status.success(),
        "sbatch: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec!["first"; 4],
        "both steps use the first digest"
    );
    // The later step asked nothing: the job's record gave the digest.
    let (_, blobs, _) = gets(&reg, seen);
    assert_eq!(blobs, 0);

    // A new job follows the moved tag.
    let r = srun(&["-N1", &flag, "cat", "/srv/hello.txt"]).expect_ok("after the move");
    assert_eq!(lines(&r), vec!["second, after the move"]);

    // The site policy places the store (`[images] store`, `${USER}` the job's user); it wins
    // over the user's BERTH_STORE, on srun's side and on the nodes.
    let placed = sb.work.join("placed");
    std::fs::create_dir_all(&placed).unwrap();
    let _ = std::process::Command::new("chown")
        .arg(format!("{}:", user().name))
        .arg(&placed)
        .status();
    std::fs::write(
        &c.policy,
        format!(
            "{POLICY}[images]\nstore = \"{}/${{USER}}\"\n",
            placed.display()
        ),
    )
    .unwrap();
    let r = srun(&["-N2", &flag, "cat", "/srv/hello.txt"]);
    std::fs::write(&c.policy, POLICY).unwrap();
    assert_eq!(
        lines(&r.expect_ok("policy store")),
        vec!["second, after the move"; 2]
    );
    let in_policy_store = std::fs::read_dir(placed.join(&user().name))
        .unwrap()
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "sqsh"));
    assert!(in_policy_store, "the image is in the policy's store");
}

/// The nodes need no registry access: a registry on the submit host's loopback, which no node's
/// network namespace can reach, serves the job (srun imports; the nodes use the store).
#[test]
fn nodes_that_cannot_reach_the_registry_run_the_job() {
    let c = cluster();
    let sb = Sandbox::new("slurm-store-noreg");
    let reg = Registry::start("slurm-store-noreg", None);
    push_shell(
        &reg,
        &sb.root.join("layout-offline"),
        "demo/app:1",
        b"no registry on the nodes\n",
    );
    let flag = format!("--container-image=docker://{}/demo/app:1", reg.addr);
    let mut cmd = c.cmd(&sb, &["srun", "-N3", &flag, "cat", "/srv/hello.txt"]);
    cmd.env("BERTH_STORE", sb.work.join("store"))
        .env("BERTH_LAYER_CACHE", sb.work.join("layers"));
    let r = run(cmd).expect_ok("srun with a loopback registry");
    assert_eq!(lines(&r), vec!["no registry on the nodes"; 3]);
}
