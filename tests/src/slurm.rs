//! A real Slurm cluster for the tests: munge, slurmctld and [`NODES`] slurmd nodes, each in its
//! own network and UTS namespace (tests/slurm/cluster.sh), with berth's SPANK plugin loaded.
//! The nodes share /tmp (the default state directory), as nodes share a home on NFS. One
//! cluster per test binary, started on first use and stopped when the binary exits.

use crate::{is_root, run, workspace_root, Run, Sandbox};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

pub struct Cluster {
    pub dir: PathBuf,
    pub conf: PathBuf,
    /// The site policy the plugin applies (written by the tests before jobs run).
    pub policy: PathBuf,
}

extern "C" fn stop_cluster() {
    if let Some(c) = CLUSTER.get() {
        let _ = Command::new("bash")
            .arg(workspace_root().join("tests/slurm/cluster.sh"))
            .arg("stop")
            .arg(&c.dir)
            .status();
        let _ = fs::remove_dir_all(&c.dir);
    }
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// Held (flock, exclusive) by whoever runs the test cluster: tests and `berth-bench slurm`.
pub const CLUSTER_LOCK: &str = "/run/berth-test-cluster.lock";

/// The test cluster's site policy. Its mode (mount) wins over plugstack's `mode=extract`,
/// which a test shows by taking it out.
pub const POLICY: &str = "# the test cluster's site policy\n[user_mounts]\ndenied_sources = [\"/etc/shadow\"]\n[runtime]\nmode = \"mount\"\n";

/// The test cluster's nodes (n1 ... n8).
pub const NODES: usize = 8;

/// The host's address on the cluster's bridge (tests/slurm/cluster.sh), reachable from every node.
pub const BRIDGE_IP: &str = "10.197.0.1";

/// The plugin under test, copied where slurmd and srun (as the test user) can load it: the
/// release build, the one a site installs (its profile decides, e.g., whether a panic can be
/// caught by the plugin's guard or aborts srun).
fn plugin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let built = target.join("release/libspank_berth.so");
    assert!(
        built.exists(),
        "{} is missing: run tests/run (it builds it with cargo build --release -p berth-slurm)",
        built.display()
    );
    let dir = crate::per_process_dir("berth-slurm-plugin");
    let copy = dir.join("spank_berth.so");
    crate::copy_executable(&built, &copy);
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// The cluster, for one test at a time: the tests look at the user's processes on the
/// machine (e.g. that scancel left none), so they must not overlap.
pub struct Serial {
    _turn: MutexGuard<'static, ()>,
    cluster: &'static Cluster,
}

impl std::ops::Deref for Serial {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        self.cluster
    }
}

pub fn cluster() -> Serial {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    Serial {
        _turn: turn,
        cluster: start(),
    }
}

fn start() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        assert!(
            is_root(),
            "the Slurm tests start a cluster: run them as root (tests/run)"
        );
        for tool in ["slurmctld", "slurmd", "munged", "srun"] {
            assert!(
                Command::new("sh")
                    .arg("-c")
                    .arg(format!("command -v {tool}"))
                    .output()
                    .unwrap()
                    .status
                    .success(),
                "{tool} is missing: run scripts/install-deps.sh"
            );
        }
        // One cluster on the machine at a time (it owns a fixed bridge and ports): wait for
        // any other test binary or benchmark using it, and hold the lock until this one exits.
        let lock = fs::File::create(CLUSTER_LOCK).unwrap();
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("flock the test cluster lock");
        std::mem::forget(lock);
        let dir = PathBuf::from(format!("/tmp/berth-slurm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let policy = dir.join("berth.toml");
        fs::write(&policy, POLICY).unwrap();
        fs::set_permissions(&policy, fs::Permissions::from_mode(0o644)).unwrap();
        let importer = crate::registry::berth_image_bin();
        // The nodes reach a test registry on the bridge over plain http.
        let args = format!(
            "policy={} berth_image={} insecure_registries={BRIDGE_IP} entrypoint=1 mode=extract",
            policy.display(),
            importer.display()
        );
        let out = Command::new("bash")
            .arg(workspace_root().join("tests/slurm/cluster.sh"))
            .arg("start")
            .args(["-n", &NODES.to_string()])
            .arg(&dir)
            .arg(plugin())
            .args(args.split(' '))
            .output()
            .unwrap();
        // SAFETY: `stop_cluster` is an extern "C" fn without arguments, as atexit requires; a
        // panic in it aborts rather than unwinding into libc.
        unsafe { libc::atexit(stop_cluster) };
        assert!(
            out.status.success(),
            "the test cluster did not start:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster {
            conf: dir.join("slurm.conf"),
            dir,
            policy,
        }
    })
}

impl Cluster {
    /// A Slurm client command (srun, sbatch, scancel...) as the test user.
    pub fn cmd(&self, sb: &Sandbox, argv: &[&str]) -> Command {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let mut cmd = sb.as_user(&argv);
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    pub fn run(&self, sb: &Sandbox, argv: &[&str]) -> Run {
        run(self.cmd(sb, argv))
    }

    /// More arguments for the plugin in plugstack.conf, which srun and every new slurmstepd
    /// read: until the returned guard is dropped (e.g. `runtime_dir=` for a state directory
    /// per node instead of the shared /tmp).
    pub fn plugin_args(&self, extra: &str) -> PluginArgs {
        let path = self.dir.join("plugstack.conf");
        let saved = fs::read_to_string(&path).unwrap();
        fs::write(&path, format!("{} {extra}\n", saved.trim_end())).unwrap();
        PluginArgs { path, saved }
    }

    /// Node states as sinfo prints them (`idle`, `drain`...), one per node.
    pub fn node_states(&self) -> Vec<String> {
        let out = Command::new("sinfo")
            .args(["-h", "-N", "-o", "%T"])
            .env("SLURM_CONF", &self.conf)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect()
    }
}

/// plugstack.conf with more plugin arguments ([`Cluster::plugin_args`]); put back when dropped.
pub struct PluginArgs {
    path: PathBuf,
    saved: String,
}

impl Drop for PluginArgs {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, &self.saved);
    }
}
