//! Registry images under Slurm go through the image store: srun resolves the tag and imports
//! once for the whole job; the nodes use the stored image by digest. Requests are counted in
//! the registry's access log (Debian's docker-registry on the cluster's bridge).

use berth_tests::registry::{push_layer, push_shell, shell_layer_with, Registry};
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

/// `[images] stage = "node-local"`: each node copies the store's image into its own state
/// directory once, checked against the store's sha256, and its tasks run from that copy; the
/// two tasks of a node and a later job use the one copy.
#[test]
fn node_local_staging_copies_the_store_image_once_per_node() {
    let c = cluster();
    let sb = Sandbox::new("slurm-store-stage");
    let store = sb.work.join("store");
    let reg = Registry::start_on("slurm-store-stage", None, BRIDGE_IP);
    push_shell(
        &reg,
        &sb.root.join("layout-stage"),
        "demo/stage:1",
        b"staged\n",
    );
    let local = sb.root.join("local");
    let _args = c.plugin_args(&format!("runtime_dir={}/%n", local.display()));
    std::fs::write(
        &c.policy,
        format!("{POLICY}[images]\nstage = \"node-local\"\n"),
    )
    .unwrap();
    let flag = format!("--container-image=docker://{}/demo/stage:1", reg.addr);
    let srun = |args: &[&str]| {
        let mut argv = vec!["srun"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&[
            &flag,
            "sh",
            "-c",
            "echo $BERTH_CONTAINER; cat /srv/hello.txt",
        ]);
        let mut cmd = c.cmd(&sb, &argv);
        cmd.env("BERTH_STORE", &store)
            .env("BERTH_LAYER_CACHE", sb.work.join("layers"));
        run(cmd)
    };
    // The same two nodes each time.
    let first = srun(&["-w", "n1,n2", "--ntasks-per-node=2"]);
    let second = srun(&["-w", "n1,n2"]);
    std::fs::write(&c.policy, POLICY).unwrap();
    let (first, second) = (first.expect_ok("first job"), second.expect_ok("second job"));

    let stored: Vec<PathBuf> = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sqsh"))
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let name = stored[0].file_name().unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stored[0].with_extension("json")).unwrap()).unwrap();
    // Each task ran from its node's copy, never from the store's file.
    let mut copies = std::collections::BTreeSet::new();
    for (r, tasks) in [(&first, 4), (&second, 2)] {
        // The tasks' lines interleave: their images, and what they read.
        let (images, read): (Vec<&str>, Vec<&str>) =
            r.stdout.lines().partition(|l| l.starts_with('/'));
        assert_eq!(read, vec!["staged"; tasks], "{}", r.stdout);
        assert_eq!(images.len(), tasks, "{}", r.stdout);
        for image in images {
            let image = PathBuf::from(image);
            assert!(
                image.starts_with(&local) && image.file_name() == Some(name),
                "a task ran from {}, not from a node-local copy in {}: {}",
                image.display(),
                local.display(),
                r.stdout
            );
            copies.insert(image);
        }
    }
    assert_eq!(copies.len(), 2, "one copy per node: {copies:?}");
    // Each copy is the store's file, and nothing else is left beside it (no temporary).
    for copy in &copies {
        let bytes = std::fs::read(copy).unwrap();
        assert_eq!(
            berth_tests::registry::sha256(&bytes),
            format!("sha256:{}", meta["sha256"].as_str().unwrap())
        );
        let beside: Vec<String> = std::fs::read_dir(copy.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert_eq!(beside, [name.to_string_lossy().into_owned()]);
    }
}

/// sbatch `--container-image=docker://...` resolves and imports at submit, once for the job:
/// the batch step and the step it starts use that digest even though the tag moved before
/// the job started, and no node fetches a blob.
#[test]
fn sbatch_imports_a_registry_image_once_and_the_job_keeps_its_digest() {
    let c = cluster();
    let sb = Sandbox::new("slurm-store-sbatch");
    let store = sb.work.join("store");
    let reg = Registry::start_on("slurm-store-sbatch", None, BRIDGE_IP);
    // srun in the batch script runs in the container: it needs these of glibc's, the users
    // Slurm names, and what Slurm's munge plugin and berth's plugin link (an image of the
    // node's distribution has them all).
    let srun_libs = [
        "usr/lib/x86_64-linux-gnu/libm.so.6",
        "usr/lib/x86_64-linux-gnu/libresolv.so.2",
        "usr/lib/x86_64-linux-gnu/libmunge.so.2",
        "usr/lib/x86_64-linux-gnu/libseccomp.so.2",
        "usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
        "etc/passwd",
        "etc/group",
    ];
    let env = serde_json::json!({"Env": ["PATH=/usr/bin:/bin"]});
    push_layer(
        &reg,
        &sb.root.join("layout-first"),
        &shell_layer_with(b"first\n", &srun_libs),
        env.clone(),
        "demo/batch:1",
    );
    let (_, _, start) = gets(&reg, 0);
    let flag = format!("--container-image=docker://{}/demo/batch:1", reg.addr);
    let out = sb.work.join("job.out");
    let o = format!("--output={}", out.display());
    let script = "cat /srv/hello.txt; srun -N2 cat /srv/hello.txt";
    let mut sbatch = c.cmd(
        &sb,
        &["sbatch", "--hold", "-N2", &flag, &o, "--wrap", script],
    );
    sbatch
        .env("BERTH_STORE", &store)
        .env("BERTH_LAYER_CACHE", sb.work.join("layers"));
    let submitted = run(sbatch).expect_ok("sbatch");
    let job = submitted
        .stdout
        .split_whitespace()
        .last()
        .expect("sbatch prints the job id")
        .to_string();
    // sbatch imported: one manifest GET and one per blob (config, layer).
    let (manifests, blobs, seen) = gets(&reg, start);
    assert_eq!((manifests, blobs), (1, 2), "at submit");

    // The tag moves while the job waits; then it runs.
    push_layer(
        &reg,
        &sb.root.join("layout-second"),
        &shell_layer_with(b"second, after the move\n", &srun_libs),
        env,
        "demo/batch:1",
    );
    c.run(&sb, &["scontrol", "release", &job])
        .expect_ok("scontrol release");
    let finished = eventually(Duration::from_secs(180), || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.lines().count() >= 3)
            || !c
                .run(&sb, &["squeue", "-h", "-j", &job])
                .stdout
                .contains(&job)
    });
    assert!(finished, "job {job} did not finish");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec!["first"; 3],
        "the batch step and its srun step use the digest sbatch resolved"
    );
    let (_, blobs, _) = gets(&reg, seen);
    assert_eq!(blobs, 0, "no node fetched a blob");
}
