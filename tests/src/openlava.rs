//! OpenLava, emulated faithfully enough to test berth's glue against its contract (no OpenLava
//! package exists for Debian). See ../shared/design.md, "OpenLava facts", and OpenLava 4.0's
//! lsbatch/lib/lsb.sub.c (the job file) and lsbatch/daemons/sbd.job.c (the job environment).
//!
//! - [`Sbatchd`] starts a job the way sbatchd does: it writes the job file as bsub makes it
//!   (`#! /bin/sh`, the submit environment as `NAME='value'; export NAME` lines,
//!   `$LSB_TRAPSIGS`, the `# LSBATCH: User input` line rewritten to `<JOB_STARTER> <command>`,
//!   `ExitStat=$?`, the exit line), and `$LSB_JOBFILENAME.shell` for `bsub < script`; sets the
//!   `LSB_*`/`LS_*` variables; and runs the file with `/bin/sh` as the job user, in the submit
//!   directory, in a process group of its own. [`Job::bkill`] is bkill: SIGINT to the group,
//!   then SIGKILL.
//! - [`Esub`] runs the esub as bsub does: the parameter file (`LSB_SUB_ADDITIONAL` is `-a`),
//!   an empty env file to modify, `LSB_SUB_ABORT_VALUE`.
//! - [`Hosts`] are two execution hosts for parallel jobs: network + UTS namespaces (`lvh1`,
//!   `lvh2`) on their own bridge (`berthlv0`, 10.198.0.0/24; the Slurm test cluster has
//!   `berthbr0` and 10.197.0.0/24), each with a real sshd for mpirun's rsh agent. Everything
//!   is removed when the value is dropped, also after a failed test, and a leftover of a killed
//!   run is removed before a new start.

use crate::{berth_bin, copy_executable, is_root, user, workspace_root, Run, Sandbox};
use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The glue's programs under test, copied next to the test `berth` where the test user can run
/// them.
pub fn lava_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let built = target.join("debug").join(name);
    assert!(
        built.exists(),
        "{} is missing: run `cargo build --workspace` first (tests/run does)",
        built.display()
    );
    let copy = berth_bin().parent().unwrap().join(name);
    if !copy.exists() {
        // Copied under a temporary name and renamed: concurrent tests never see half a file.
        let tmp = copy.with_extension(format!("tmp-{:?}", std::thread::current().id()));
        copy_executable(&built, &tmp);
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&tmp, &copy).unwrap();
    }
    copy
}

fn give_to_user(path: &Path) {
    if is_root() {
        chown(path, Some(user().uid), Some(user().gid)).unwrap();
    }
}

/// A job as bsub would have submitted it.
#[derive(Clone, Default)]
pub struct Job {
    /// The command as the user gave it to bsub: one string, split again by the job's /bin/sh.
    pub command: String,
    /// `bsub < script`: the script (the command is then `$LSB_JOBFILENAME.shell`).
    pub script: Option<String>,
    /// The submit environment bsub copies into the job file (e.g. BERTH_IMAGE).
    pub env: Vec<(String, String)>,
    /// `LSB_JOBINDEX` of an element of a job array (0: not an array job).
    pub index: u32,
    /// The job's hosts and slots (`bsub -n`); default: one slot on this machine.
    pub hosts: Vec<(String, u32)>,
    /// The submit directory (`LS_SUBCWD`); default: the sandbox's work directory.
    pub cwd: Option<PathBuf>,
}

impl Job {
    pub fn new(command: &str) -> Job {
        Job {
            command: command.into(),
            ..Default::default()
        }
    }

    pub fn image(mut self, image: &Path) -> Job {
        self.env
            .push(("BERTH_IMAGE".into(), image.to_string_lossy().into_owned()));
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Job {
        self.env.push((name.into(), value.into()));
        self
    }
}

/// A job started by [`Sbatchd::start`].
pub struct Running {
    pub child: Child,
    pub job_file: PathBuf,
    /// The process group of the job (the job shell's pid).
    pub pgid: i32,
}

impl Running {
    /// bkill's first signal: SIGINT to the job's process group.
    pub fn sigint(&self) {
        unsafe { libc::kill(-self.pgid, libc::SIGINT) };
    }

    /// bkill's last signal: SIGKILL to the job's process group.
    pub fn sigkill(&self) {
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
    }

    pub fn wait(self) -> Run {
        let out = self.child.wait_with_output().unwrap();
        Run {
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// sbatchd on one host (this machine, or a test host's namespaces).
pub struct Sbatchd {
    /// The queue's JOB_STARTER.
    pub starter: PathBuf,
    /// Where job files go: `~/.lsbatch`, `/tmp/.lsbtmp<uid>/.lsbatch` or a JOB_SPOOL_DIR.
    pub spool: PathBuf,
    /// The sshd of the test host whose namespaces the job runs in (None: this machine).
    host_pid: Option<u32>,
    host_name: String,
}

static NEXT_JOB: AtomicU32 = AtomicU32::new(1);

impl Sbatchd {
    /// sbatchd on this machine, with job files in `spool` (made, owned by the test user).
    pub fn new(spool: &Path) -> Sbatchd {
        fs::create_dir_all(spool).unwrap();
        fs::set_permissions(spool, fs::Permissions::from_mode(0o700)).unwrap();
        give_to_user(spool);
        Sbatchd {
            starter: lava_bin("berth-lava-starter"),
            spool: spool.to_path_buf(),
            host_pid: None,
            host_name: hostname(),
        }
    }

    /// Write the job file (and `.shell` file) the way bsub and sbatchd make them.
    fn write_job_file(&self, id: u32, job: &Job) -> PathBuf {
        let job_file = self.spool.join(format!("1700000000.{id}"));
        let mut text = String::from("#! /bin/sh\n\n");
        text.push_str("OPENLAVA_VERSION='40'; export OPENLAVA_VERSION\n");
        for (k, v) in &job.env {
            text.push_str(&format!("{k}='{v}'; export {k}\n"));
        }
        text.push_str("$LSB_TRAPSIGS\n$LSB_RCP1\n$LSB_RCP2\n$LSB_RCP3\n");
        text.push_str("# LSBATCH: User input\n");
        let command = match &job.script {
            Some(script) => {
                let shell = PathBuf::from(format!("{}.shell", job_file.display()));
                fs::write(&shell, script).unwrap();
                fs::set_permissions(&shell, fs::Permissions::from_mode(0o700)).unwrap();
                give_to_user(&shell);
                "$LSB_JOBFILENAME.shell".to_string()
            }
            None => job.command.clone(),
        };
        // The queue's JOB_STARTER (without %USRCMD) goes in front of the user's command.
        text.push_str(&format!("{} {command}\n", self.starter.display()));
        text.push_str("ExitStat=$?\nwait\n# LSBATCH: End user input\ntrue\n");
        text.push_str("exit `expr $? \"|\" $ExitStat`\n");
        text.push_str("# LSBATCH: edata\n0\n");
        fs::write(&job_file, text).unwrap();
        fs::set_permissions(&job_file, fs::Permissions::from_mode(0o700)).unwrap();
        give_to_user(&job_file);
        job_file
    }

    /// Start a job: the job file run by /bin/sh as the test user, in its own process group,
    /// with the environment sbatchd gives it.
    pub fn start(&self, sb: &Sandbox, job: &Job) -> Running {
        let id = std::process::id() % 10000 * 100 + NEXT_JOB.fetch_add(1, Ordering::SeqCst);
        let job_file = self.write_job_file(id, job);
        let cwd = job.cwd.clone().unwrap_or_else(|| sb.work.clone());
        let hosts = if job.hosts.is_empty() {
            vec![(self.host_name.clone(), 1)]
        } else {
            job.hosts.clone()
        };
        let slots: u32 = hosts.iter().map(|(_, n)| n).sum();
        let lsb_hosts: Vec<String> = hosts
            .iter()
            .flat_map(|(h, n)| std::iter::repeat_n(h.clone(), *n as usize))
            .collect();
        let mcpu: Vec<String> = hosts.iter().map(|(h, n)| format!("{h} {n}")).collect();
        let u = user();
        let argv: Vec<String> = vec!["/bin/sh".into(), job_file.to_string_lossy().into_owned()];
        let mut cmd = match self.host_pid {
            None => sb.as_user(&argv),
            Some(pid) => {
                let mut c = Command::new("nsenter");
                c.args(["-t", &pid.to_string(), "--net", "--uts", "--"]);
                c.args(["setpriv", "--reuid", &u.name, "--regid", &u.name])
                    .args(["--init-groups", "--"])
                    .args(&argv);
                c.env_clear()
                    .env("HOME", &u.home)
                    .env("USER", &u.name)
                    .env("LOGNAME", &u.name)
                    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                    .env("BERTH_STATE_DIR", &sb.state)
                    .stdin(Stdio::null());
                c
            }
        };
        cmd.current_dir(&cwd)
            .env("SHELL", "/bin/sh")
            .env("LSFUSER", &u.name)
            .env("LSB_JOBID", id.to_string())
            .env("LSB_JOBINDEX", job.index.to_string())
            .env("LSB_JOBNAME", format!("job{id}"))
            .env("LSB_QUEUE", "berth")
            .env("LSB_JOBFILENAME", &job_file)
            .env("LSB_CHKFILENAME", &job_file)
            .env("LSB_TRAPSIGS", "trap # 15 10 12 2 1")
            .env("LSB_HOSTS", lsb_hosts.join(" "))
            .env("LSB_MCPU_HOSTS", mcpu.join(" ") + " ")
            .env("LSB_DJOB_NUMPROC", slots.to_string())
            .env("LSB_JOB_EXECUSER", &u.name)
            .env("LSB_EXIT_PRE_ABORT", "99")
            .env("LSB_JOBEXIT_STAT", "0")
            .env("LSB_SUB_HOST", &self.host_name)
            .env("LS_SUBCWD", &cwd)
            .env("LS_JOBPID", std::process::id().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // sbatchd starts a job with default signal dispositions, whatever it inherited (a
        // test run started in the background ignores SIGINT, and so would the job).
        unsafe {
            cmd.pre_exec(|| {
                for sig in [
                    libc::SIGINT,
                    libc::SIGQUIT,
                    libc::SIGHUP,
                    libc::SIGPIPE,
                    libc::SIGTERM,
                ] {
                    libc::signal(sig, libc::SIG_DFL);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start the job shell");
        let pgid = child.id() as i32;
        Running {
            child,
            job_file,
            pgid,
        }
    }

    pub fn run(&self, sb: &Sandbox, job: &Job) -> Run {
        self.start(sb, job).wait()
    }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// bsub's call of the esub.
pub struct Esub {
    pub program: PathBuf,
}

/// What the esub did: its exit and the env file it wrote.
pub struct EsubResult {
    pub run: Run,
    pub env_file: String,
}

impl Esub {
    pub fn new() -> Esub {
        Esub {
            program: lava_bin("berth-lava-esub"),
        }
    }

    /// Run the esub for `bsub -a ADDITIONAL` (None: no -a) with `env` in the submit
    /// environment, in the sandbox's work directory, as the test user.
    pub fn submit(
        &self,
        sb: &Sandbox,
        additional: Option<&str>,
        env: &[(&str, &str)],
    ) -> EsubResult {
        let n = NEXT_JOB.fetch_add(1, Ordering::SeqCst);
        let dir = sb.root.join(format!("esub-{n}"));
        fs::create_dir_all(&dir).unwrap();
        give_to_user(&dir);
        let parm = dir.join("parm");
        let mut text = String::from("LSB_SUB_QUEUE=\"berth\"\nLSB_SUB_COMMAND_LINE=\"bsub\"\n");
        if let Some(a) = additional {
            text.push_str(&format!(
                "LSB_SUB_ADDITIONAL=\"{}\"\n",
                a.replace('\\', "\\\\").replace('"', "\\\"")
            ));
        }
        text.push_str("LSB_SUB_NUM_PROCESSORS=1\n");
        fs::write(&parm, text).unwrap();
        let env_file = dir.join("envfile");
        fs::write(&env_file, "").unwrap();
        give_to_user(&parm);
        give_to_user(&env_file);
        let mut cmd = sb.as_user(&[self.program.to_string_lossy().into_owned()]);
        cmd.env("LSB_SUB_PARM_FILE", &parm)
            .env("LSB_SUB_MODIFY_ENVFILE", &env_file)
            .env("LSB_SUB_MODIFY_FILE", dir.join("modfile"))
            .env("LSB_SUB_ABORT_VALUE", "97");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let run = crate::run(cmd);
        EsubResult {
            run,
            env_file: fs::read_to_string(&env_file).unwrap(),
        }
    }
}

impl Default for Esub {
    fn default() -> Self {
        Esub::new()
    }
}

/// Parse an esub env file (`NAME="value"` lines) into a job's submit environment.
pub fn env_file_vars(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

const BRIDGE: &str = "berthlv0";
const NET: &str = "10.198.0";
pub const HOST_NAMES: [&str; 2] = ["lvh1", "lvh2"];
/// Held while a test uses the hosts: they have fixed names, one set on the machine.
const HOSTS_LOCK: &str = "/run/berth-lava-hosts.lock";

/// Two execution hosts, each a network + UTS namespace with a real sshd; see the module doc.
pub struct Hosts {
    dir: PathBuf,
    sshd: Vec<Child>,
    /// `ssh -F` configuration reaching the hosts by name, for mpirun's rsh agent.
    pub ssh_config: PathBuf,
    _lock: fs::File,
    _turn: MutexGuard<'static, ()>,
}

fn sh(script: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(script).output().unwrap()
}

/// Remove the namespaces, links and bridge (whatever exists of them) and the processes left
/// in the namespaces.
fn remove_hosts() {
    for (i, name) in HOST_NAMES.iter().enumerate() {
        let ns = format!("berthlv-{name}");
        sh(&format!(
            "for p in $(ip netns pids {ns} 2>/dev/null); do kill -9 $p; done; \
             ip netns del {ns} 2>/dev/null; ip link del vlv{} 2>/dev/null; true",
            i + 1
        ));
    }
    sh(&format!("ip link del {BRIDGE} 2>/dev/null; true"));
}

impl Hosts {
    pub fn start(sb: &Sandbox) -> Hosts {
        static TURN: Mutex<()> = Mutex::new(());
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            is_root(),
            "the multi-host test makes namespaces: run it as root"
        );
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "sshd is missing: run scripts/install-deps.sh (openssh-server)"
        );
        let lock = fs::File::create(HOSTS_LOCK).unwrap();
        assert_eq!(
            unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
            0
        );
        remove_hosts();
        let dir = PathBuf::from(format!("/run/berth-lava-hosts-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let mut hosts = Hosts {
            ssh_config: dir.join("ssh_config"),
            dir: dir.clone(),
            sshd: Vec::new(),
            _lock: lock,
            _turn: turn,
        };
        // From here on Drop removes whatever was made, also when a step fails.
        let mut script = format!(
            "set -e\nip link add {BRIDGE} type bridge\nip addr add {NET}.1/24 dev {BRIDGE}\nip link set {BRIDGE} up\n"
        );
        for (i, name) in HOST_NAMES.iter().enumerate() {
            let (ns, veth, ip) = (format!("berthlv-{name}"), format!("vlv{}", i + 1), i + 11);
            script.push_str(&format!(
                "ip netns add {ns}\nip link add {veth} type veth peer name eth0 netns {ns}\n\
                 ip link set {veth} master {BRIDGE} up\nip -n {ns} addr add {NET}.{ip}/24 dev eth0\n\
                 ip -n {ns} link set eth0 up\nip -n {ns} link set lo up\n"
            ));
        }
        let out = sh(&script);
        assert!(
            out.status.success(),
            "cannot make the test hosts: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Keys: the hosts' (one for both), and the test user's (in the sandbox, its own).
        let key = sb.root.join("lava-id");
        for (file, owner) in [(dir.join("host_key"), false), (key.clone(), true)] {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&file)
                .status()
                .unwrap();
            assert!(st.success(), "ssh-keygen failed");
            if owner {
                give_to_user(&file);
            }
        }
        fs::copy(key.with_extension("pub"), dir.join("authorized_keys")).unwrap();
        fs::set_permissions(
            dir.join("authorized_keys"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let mut client = String::new();
        for (i, name) in HOST_NAMES.iter().enumerate() {
            client.push_str(&format!("Host {name}\n  HostName {NET}.{}\n", i + 11));
        }
        client.push_str(&format!(
            "Host *\n  User {}\n  IdentityFile {}\n  IdentitiesOnly yes\n  BatchMode yes\n  \
             StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  GlobalKnownHostsFile /dev/null\n  \
             ConnectTimeout 20\n  LogLevel ERROR\n",
            user().name,
            key.display()
        ));
        fs::write(&hosts.ssh_config, client).unwrap();
        fs::set_permissions(&hosts.ssh_config, fs::Permissions::from_mode(0o644)).unwrap();
        // sshd needs its privilege separation directory (systemd makes it on a real host).
        fs::create_dir_all("/run/sshd").unwrap();
        fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)).unwrap();
        for (i, name) in HOST_NAMES.iter().enumerate() {
            let conf = dir.join(format!("sshd-{name}.conf"));
            fs::write(
                &conf,
                format!(
                    "ListenAddress {NET}.{}\nPort 22\nHostKey {}\nPidFile none\n\
                     AuthorizedKeysFile {}\nAllowUsers {}\nPubkeyAuthentication yes\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\n\
                     UsePAM yes\nStrictModes no\nUseDNS no\nPrintMotd no\nX11Forwarding no\n\
                     AllowTcpForwarding no\nLogLevel ERROR\n",
                    i + 11,
                    dir.join("host_key").display(),
                    dir.join("authorized_keys").display(),
                    user().name
                ),
            )
            .unwrap();
            let log = fs::File::create(dir.join(format!("sshd-{name}.log"))).unwrap();
            // nsenter and unshare exec (no fork): the child is sshd itself, in the host's
            // network namespace and a UTS namespace named for the host.
            let child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/berthlv-{name}"))
                .args(["unshare", "--uts", "sh", "-c"])
                .arg(format!(
                    "hostname {name} && exec /usr/sbin/sshd -D -e -f {}",
                    conf.display()
                ))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            hosts.sshd.push(child);
        }
        for (i, name) in HOST_NAMES.iter().enumerate() {
            let addr: std::net::SocketAddr = format!("{NET}.{}:22", i + 11).parse().unwrap();
            let up = crate::eventually(Duration::from_secs(30), || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            });
            assert!(up, "sshd on {name} did not come up: {}", hosts.log(name));
        }
        hosts
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(format!("sshd-{name}.log"))).unwrap_or_default()
    }

    /// sbatchd on the first host (where OpenLava runs a parallel job's script).
    pub fn sbatchd(&self, spool: &Path) -> Sbatchd {
        let mut s = Sbatchd::new(spool);
        s.host_pid = Some(self.sshd[0].id());
        s.host_name = HOST_NAMES[0].into();
        s
    }

    /// Run a command as the test user on a host, through ssh (checks the hosts themselves).
    pub fn ssh(&self, sb: &Sandbox, host: &str, command: &str) -> Run {
        let argv: Vec<String> = vec![
            "ssh".into(),
            "-F".into(),
            self.ssh_config.to_string_lossy().into_owned(),
            host.into(),
            command.into(),
        ];
        crate::run(sb.as_user(&argv))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for child in &mut self.sshd {
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_hosts();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
