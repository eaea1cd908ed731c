//! Under Slurm, a job's later steps find its image mounted: with `PrologFlags=Contain` (an
//! extern step on each of the job's nodes) one image keeper serves every step of the job on the
//! node; without it each step has its own, and both work. Either way no keeper of the job is
//! left once it has ended. The test cluster runs proctrack/linuxproc: the plugin's move of the
//! keeper into the extern step's cgroups (proctrack/cgroup) is not exercised here.

use berth_tests::slurm::{cluster, Cluster};
use berth_tests::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The node the tests' jobs run on.
const NODE: &str = "n1";

/// The cluster with or without PrologFlags=Contain for the jobs allocated next; put back to
/// without when dropped.
struct Contain<'a>(&'a Path);

impl<'a> Contain<'a> {
    fn set(dir: &'a Path, on: bool) -> Contain<'a> {
        let ok = Command::new("bash")
            .arg(workspace_root().join("tests/slurm/cluster.sh"))
            .arg("contain")
            .arg(dir)
            .arg(if on { "on" } else { "off" })
            .status()
            .unwrap()
            .success();
        assert!(ok, "cluster.sh contain failed");
        Contain(dir)
    }
}

/// Whether the job has an extern step (its slurmstepd, `slurmstepd: [JOB.extern]`).
fn has_extern(job: &str) -> bool {
    let title = format!("slurmstepd: [{job}.extern]");
    live_processes(0).iter().any(|(_, c)| c.trim_end() == title)
}

impl Drop for Contain<'_> {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(workspace_root().join("tests/slurm/cluster.sh"))
            .args(["contain".as_ref(), self.0.as_os_str(), "off".as_ref()])
            .status();
    }
}

/// The job's image keepers: `pid title` of each (`berth-imagefs keeper slurm-JOB[.STEP]`).
fn keepers(job: &str) -> Vec<String> {
    let prefix = format!("berth-imagefs keeper slurm-{job}");
    let mut v: Vec<String> = live_processes(user().uid)
        .into_iter()
        .map(|(pid, c)| (pid, c.trim_end().to_string()))
        .filter(|(_, c)| c == &prefix || c.starts_with(&format!("{prefix}.")))
        .map(|(pid, c)| format!("{pid} {c}"))
        .collect();
    v.sort();
    v
}

/// One job on one node, two container steps in a row: the job's keepers while each step runs
/// (each step waits for the test), and the job id.
fn two_steps(c: &Cluster, name: &str, contain: bool) -> (String, Vec<String>, Vec<String>) {
    let sb = Sandbox::new(name);
    let flag = format!("--container={}", demo_image().display());
    let mounts = format!("--container-mounts={}:/warm", sb.work.display());
    // Each step says it is up (its keeper is serving it then) and waits for the word to go on.
    let script = format!(
        "for s in 1 2; do srun -n1 {flag} {mounts} sh -c \
         'echo $SLURM_JOB_ID > /warm/up-'$s'; i=0; while [ ! -e /warm/go-'$s' ] && [ $i -lt 600 ]; \
         do sleep 0.1; i=$((i+1)); done; echo step '$s' ok' || exit 1; done"
    );
    let mut salloc = c.cmd(&sb, &["salloc", "-w", NODE, "-n1", "sh", "-c", &script]);
    let salloc = salloc
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut externs = Vec::new();
    let mut job = String::new();
    for s in 1..=2 {
        let up = sb.work.join(format!("up-{s}"));
        let started = eventually(Duration::from_secs(120), || {
            std::fs::read_to_string(&up).is_ok_and(|t| t.ends_with('\n'))
        });
        if !started {
            std::fs::write(sb.work.join(format!("go-{s}")), "").unwrap();
            let out = salloc.wait_with_output().unwrap();
            panic!(
                "step {s} did not start: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        job = std::fs::read_to_string(&up).unwrap().trim().to_string();
        seen.push(keepers(&job));
        externs.push(has_extern(&job));
        std::fs::write(sb.work.join(format!("go-{s}")), "").unwrap();
    }
    let out = salloc.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("step 1 ok") && stdout.contains("step 2 ok"),
        "the job's steps failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The job has ended: its keepers stop taking runs and go (the extern step's or each
    // step's slurmstepd, which they watch, is gone).
    assert!(
        eventually(Duration::from_secs(60), || keepers(&job).is_empty()),
        "the job's keepers stayed after it ended: {:?}",
        keepers(&job)
    );
    assert!(
        externs.iter().all(|&e| e == contain),
        "job {job}: extern step in steps 1 and 2: {externs:?}, expected {contain}"
    );
    let mut seen = seen.into_iter();
    (job, seen.next().unwrap(), seen.next().unwrap())
}

#[test]
fn with_an_extern_step_a_job_s_second_step_finds_the_image_mounted() {
    let c = cluster();
    let _contain = Contain::set(&c.dir, true);
    let (job, first, second) = two_steps(&c, "slurm-warm-contain", true);
    // One keeper for the job, the same one in both steps: the second step's runs attached to
    // the first step's mount.
    assert_eq!(first.len(), 1, "job {job}: keepers in step 1: {first:?}");
    assert!(
        first[0].ends_with(&format!(" berth-imagefs keeper slurm-{job}")),
        "a job-wide keeper: {first:?}"
    );
    assert_eq!(
        first, second,
        "job {job}: the second step had another keeper"
    );
    // The plugin found it at the end of step 1 (proctrack/linuxproc: no cgroup to leave).
    let pid = first[0].split(' ').next().unwrap();
    let log = std::fs::read_to_string(c.dir.join(format!("log/slurmd-{NODE}.log"))).unwrap();
    assert!(
        log.contains(&format!(
            "image keeper {pid} of job {job}: not in the step's cgroups"
        )),
        "the plugin did not look at keeper {pid} when step 1 ended"
    );
}

#[test]
fn without_an_extern_step_each_step_has_its_own_keeper() {
    let c = cluster();
    let (job, first, second) = two_steps(&c, "slurm-warm-plain", false);
    let has = |v: &[String], scope: &str| {
        v.iter()
            .any(|k| k.ends_with(&format!(" berth-imagefs keeper slurm-{job}.{scope}")))
    };
    assert!(has(&first, "0"), "job {job}: step 0's keeper: {first:?}");
    assert!(has(&second, "1"), "job {job}: step 1's keeper: {second:?}");
}
