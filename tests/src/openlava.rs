//! OpenLava 4.0, modelled from its sources (no OpenLava package exists for Debian). Each fact
//! names the file it comes from; the tree is github.com/openlava/openlava.
//!
//! - [`Sbatchd`] starts a job as sbatchd does (lsbatch/daemons/sbd.job.c, execJob,
//!   setJobEnv): res is the job's first process and the leader of its process group, and runs
//!   `/bin/sh JOBFILE`, whose user-input line is `<JOB_STARTER> <command>`. The job file is
//!   the execution host's (sbd.file.c, createJobFile): no environment lines, the environment
//!   set in the process (the submit environment, then sbatchd's `LSB_*`/`LS_*`; a login-shell
//!   job, `-L`, keeps almost none of the former), `$LSB_TRAPSIGS`, the starter put in by
//!   mbatchd (mbd.log.c) unless its path is in the file already. Every signal starts at its
//!   default but SIGHUP, which is ignored; none is blocked. An eexec, if given, runs first
//!   with the esub's output on its stdin (lsf/lib/lib.esub.c).
//! - [`Running::bkill`] is bkill (sbd.sig.c, jobsig1 and mykillpg): SIGCONT, SIGINT, SIGTERM
//!   after JOB_TERMINATE_INTERVAL, SIGKILL after another, each to every process group the
//!   job has had (found as PIM finds them, lsf/lib/lib.pim.c: the job's group and the group of
//!   every child of a job process). [`Running::signal`] is `bkill -s SIG`;
//!   [`Running::bstop`]/[`Running::bresume`] send STOP/CONT the same way.
//! - [`Esub`] runs the esub as bsub does (lsbatch/lib/lsb.sub.c, runBatchEsub): the
//!   parameter file as bsub writes it (`LSB_SUB_ADDITIONAL` unescaped, other strings with
//!   only `"` escaped, `LSB_SUB_QUEUE` only for `-q`, `LSB_SUB_LOGIN_SHELL` for `-L`,
//!   `LSB_SUB_MODIFY=Y` for bmod), the env file named but not made, stdout kept as eexec
//!   data, stderr to the user. [`bsub`] is the two together; [`bsub_join`] is bsub's join of
//!   the command's words (lsbatch/cmd/cmd.sub.c).
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
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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

/// bsub's join of the command's arguments into the one string the job file holds
/// (lsbatch/cmd/cmd.sub.c): the first word as it is; a word with a space in `'...'` if it holds
/// `"` or `$`, else in `"..."`; in other words `"`, `'`, `\`, `(` and `)` get a backslash, and a
/// word starting with `$` has its pieces between those characters in `'...'`. Everything else
/// (`* ? ; & | < > ~`, a later `$`, a backquote) reaches the job's shell as it is.
pub fn bsub_join(argv: &[&str]) -> String {
    let mut line = argv.first().copied().unwrap_or_default().to_string();
    for word in argv.iter().skip(1) {
        line.push(' ');
        if word.contains(' ') {
            let q = if word.contains('"') || word.contains('$') {
                '\''
            } else {
                '"'
            };
            line.push(q);
            line.push_str(word);
            line.push(q);
            continue;
        }
        let dollar = word.starts_with('$');
        let mut rest = *word;
        loop {
            let cut = rest.find(['"', '\'', '\\', '(', ')']);
            let (piece, special) = match cut {
                Some(i) => (&rest[..i], rest[i..].chars().next()),
                None => (rest, None),
            };
            if dollar {
                line.push('\'');
            }
            line.push_str(piece);
            if dollar {
                line.push('\'');
            }
            match special {
                Some(c) => {
                    line.push('\\');
                    line.push(c);
                    rest = &rest[piece.len() + 1..];
                }
                None => break,
            }
            if rest.is_empty() {
                break;
            }
        }
    }
    line
}

/// A job as bsub would have submitted it.
#[derive(Clone, Default)]
pub struct Job {
    /// The command as the user gave it to bsub: one string, split again by the job's /bin/sh
    /// (see [`bsub_join`]).
    pub command: String,
    /// `bsub < script`: the script (the command is then `$LSB_JOBFILENAME.shell`).
    pub script: Option<String>,
    /// The submit environment bsub copies into the job (e.g. BERTH_IMAGE, the esub's env file).
    pub env: Vec<(String, String)>,
    /// `LSB_JOBINDEX` of an element of a job array (0: not an array job).
    pub index: u32,
    /// The job's hosts and slots (`bsub -n`); default: one slot on this machine.
    pub hosts: Vec<(String, u32)>,
    /// The submit directory (`LS_SUBCWD`); default: the sandbox's work directory.
    pub cwd: Option<PathBuf>,
    /// `bsub -L SHELL`: the job starts through a login shell, without the submit environment.
    pub login_shell: Option<String>,
}

impl Job {
    pub fn new(command: &str) -> Job {
        Job {
            command: command.into(),
            ..Default::default()
        }
    }

    /// `bsub ARGV...`: the command as bsub joins it.
    pub fn argv(argv: &[&str]) -> Job {
        Job::new(&bsub_join(argv))
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

/// The job's process groups as sbatchd knows them (PIM's rule, lsf/lib/lib.pim.c): the job's
/// own group, and the group of every process whose parent is a process of the job. A group
/// stays on the list while it has a process, also after its first process has left the job's
/// tree.
#[derive(Default)]
struct Pgids {
    list: Vec<i32>,
}

/// (pid, ppid, pgid) of every live process.
fn process_table() -> Vec<(i32, i32, i32)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if fields.len() < 3 || fields[0] == "Z" || fields[0] == "X" {
            continue;
        }
        if let (Ok(ppid), Ok(pgid)) = (fields[1].parse(), fields[2].parse()) {
            out.push((pid, ppid, pgid));
        }
    }
    out
}

impl Pgids {
    fn update(&mut self) {
        let table = process_table();
        let mut job: Vec<i32> = Vec::new();
        loop {
            let before = (job.len(), self.list.len());
            for &(pid, ppid, pgid) in &table {
                if job.contains(&pid) {
                    continue;
                }
                if self.list.contains(&pgid) || job.contains(&ppid) {
                    job.push(pid);
                    if !self.list.contains(&pgid) {
                        self.list.push(pgid);
                    }
                }
            }
            if (job.len(), self.list.len()) == before {
                break;
            }
        }
    }
}

/// A job started by [`Sbatchd::start`].
pub struct Running {
    pub child: Child,
    pub job_file: PathBuf,
    /// The job's process group: res's pid.
    pub pgid: i32,
    pgids: Arc<Mutex<Pgids>>,
    done: Arc<AtomicBool>,
    terminate_interval: Duration,
    _reaper: Reaper,
}

/// Ends a job that its test left running (a failed assertion): SIGCONT, then SIGKILL to
/// every group it had, so a stopped job does not outlive the test.
struct Reaper {
    root: i32,
    pgids: Arc<Mutex<Pgids>>,
    done: Arc<AtomicBool>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if !self.done.swap(true, Ordering::SeqCst) {
            killpg_all(self.root, &self.pgids, libc::SIGCONT);
            killpg_all(self.root, &self.pgids, libc::SIGKILL);
        }
    }
}

/// sbatchd's mykillpg (lsbatch/daemons/sbd.sig.c): `sig` to the job's first process and to
/// every process group of the job. False when none of them is left.
fn killpg_all(root: i32, pgids: &Mutex<Pgids>, sig: i32) -> bool {
    let mut p = pgids.lock().unwrap();
    p.update();
    // SAFETY: kill only sends a signal; the pids are numbers, no memory is involved.
    let mut alive = unsafe { libc::kill(root, sig) } == 0;
    for &g in &p.list {
        // SAFETY: as above.
        alive |= unsafe { libc::kill(-g, sig) } == 0;
    }
    alive
}

impl Running {
    /// The process groups sbatchd has seen for the job so far.
    pub fn pgids(&self) -> Vec<i32> {
        let mut p = self.pgids.lock().unwrap();
        p.update();
        p.list.clone()
    }

    /// Groups PIM may have seen in the job: a process forked from it (an image keeper) that
    /// left the job's tree before a scan would be missed by the scan alone.
    pub fn seen_groups(&self, groups: &[i32]) {
        let mut p = self.pgids.lock().unwrap();
        for g in groups {
            if !p.list.contains(g) {
                p.list.push(*g);
            }
        }
    }

    /// `bkill -s SIG`: the signal to every group of the job, once.
    pub fn signal(&self, sig: i32) {
        killpg_all(self.pgid, &self.pgids, sig);
    }

    /// bkill: SIGCONT, then SIGINT, then after JOB_TERMINATE_INTERVAL SIGTERM, then after
    /// another SIGKILL, each to every group of the job (sbd.sig.c, jobsig1); sbatchd does it
    /// in a child of its own, so bkill returns at once.
    pub fn bkill(&self) {
        let (root, pgids, interval) = (self.pgid, self.pgids.clone(), self.terminate_interval);
        killpg_all(root, &pgids, libc::SIGCONT);
        std::thread::spawn(move || {
            if killpg_all(root, &pgids, libc::SIGINT) {
                std::thread::sleep(interval);
                if killpg_all(root, &pgids, libc::SIGTERM) {
                    std::thread::sleep(interval);
                    killpg_all(root, &pgids, libc::SIGKILL);
                }
            }
        });
    }

    /// bstop: SIGSTOP to every group (SIGTSTP for parallel and interactive jobs).
    pub fn bstop(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// bresume: SIGCONT to every group.
    pub fn bresume(&self) {
        self.signal(libc::SIGCONT);
    }

    pub fn wait(self) -> Run {
        let out = self.child.wait_with_output().unwrap();
        self.done.store(true, Ordering::SeqCst);
        Run {
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The variables a login-shell job keeps of its submit environment (sbd.job.c, setJobEnv:
/// a substring of `NAME=value`).
const LOGIN_SHELL_KEEPS: [&str; 8] = [
    "LSB_ACCT_MAP",
    "LSF_VERSION",
    "LSB_UNIXGROUP",
    "LSB_JOB_STARTER",
    "LSF_INTERACTIVE_STDERR",
    "LOGNAME",
    "LSF_CUR_SECURITY_LABEL",
    "LSF_JOB_SECURITY_LABEL",
];

/// sbatchd on one host (this machine, or a test host's namespaces).
pub struct Sbatchd {
    /// The queue's JOB_STARTER (None: a queue without one).
    pub starter: Option<PathBuf>,
    /// Where job files go: `~/.lsbatch`, `/tmp/.lsbtmp<uid>/.lsbatch` or a JOB_SPOOL_DIR.
    pub spool: PathBuf,
    /// lsb.params' JOB_TERMINATE_INTERVAL (10 s by default): bkill's wait between signals.
    pub terminate_interval: Duration,
    /// `$LSF_SERVERDIR/eexec`, run before the job with the esub's output on its stdin.
    pub eexec: Option<PathBuf>,
    /// The sshd of the test host whose namespaces the job runs in (None: this machine).
    host_pid: Option<u32>,
    host_name: String,
}

static NEXT_JOB: AtomicU32 = AtomicU32::new(1);

/// res, the job's first process and process-group leader: it runs the job file with
/// /bin/sh, waits, and exits with its status. It lives through the signals bkill sends the
/// group before SIGKILL (a caught signal is the default again in the job shell).
const RES: &str = "trap : INT TERM QUIT USR1 USR2; /bin/sh \"$0\"; exit $?";

impl Sbatchd {
    /// sbatchd on this machine, with job files in `spool` (made, owned by the test user).
    pub fn new(spool: &Path) -> Sbatchd {
        fs::create_dir_all(spool).unwrap();
        fs::set_permissions(spool, fs::Permissions::from_mode(0o700)).unwrap();
        give_to_user(spool);
        Sbatchd {
            starter: Some(lava_bin("berth-lava-starter")),
            spool: spool.to_path_buf(),
            terminate_interval: Duration::from_secs(10),
            eexec: None,
            host_pid: None,
            host_name: hostname(),
        }
    }

    /// The job file as sbatchd writes it on the execution host (sbd.file.c, createJobFile:
    /// bsub's file from `$LSB_TRAPSIGS` on, without the environment lines), with the queue's
    /// JOB_STARTER put in front of the first line after "User input" unless its path appears
    /// in the file already (mbd.log.c, checkJobStarter and instrJobStarter1). A script
    /// (`bsub < script`) is written to `$LSB_CHKFILENAME.shell` by the job file itself
    /// (lsb.sub.c, wrapCommandLine) and the starter goes before `$LSB_JOBFILENAME.shell`.
    fn write_job_file(&self, id: u32, job: &Job) -> PathBuf {
        let job_file = self.spool.join(format!("1700000000.{id}"));
        let input = match &job.script {
            Some(script) => format!(
                "(cat <<_USER_\\SCRIPT_\n{script}\n_USER_SCRIPT_\n) > $LSB_CHKFILENAME.shell\n\
                 chmod u+x $LSB_CHKFILENAME.shell\n$LSB_JOBFILENAME.shell\nsaveExit=$?\n\
                 /bin/rm -f $LSB_JOBFILENAME.shell\n(exit $saveExit)"
            ),
            None => job.command.clone(),
        };
        let mut data = format!(
            "$LSB_TRAPSIGS\n$LSB_RCP1\n$LSB_RCP2\n$LSB_RCP3\n# LSBATCH: User input\n{input}\n\
             ExitStat=$?\nwait\n# LSBATCH: End user input\ntrue\nexit `expr $? \"|\" $ExitStat`\n"
        );
        if let Some(starter) = &self.starter {
            let starter = starter.to_string_lossy();
            if !data.contains(&*starter) {
                let at = match data.find("\n$LSB_JOBFILENAME.shell") {
                    Some(i) => i + 1,
                    None => data.find("# LSBATCH: User input\n").unwrap() + 22,
                };
                data.insert_str(at, &format!("{starter} "));
            }
        }
        fs::write(&job_file, format!("#! /bin/sh\n\n{data}")).unwrap();
        fs::set_permissions(&job_file, fs::Permissions::from_mode(0o700)).unwrap();
        give_to_user(&job_file);
        job_file
    }

    /// Start a job as sbatchd does (sbd.job.c, execJob and setJobEnv): res in a process group
    /// of its own, the environment set in the process (the submit environment, then sbatchd's
    /// variables), every signal at its default but SIGHUP ignored, no signal blocked, the
    /// eexec run first with the esub's output.
    pub fn start(&self, sb: &Sandbox, job: &Job) -> Running {
        self.start_with_eexec(sb, job, "")
    }

    pub fn start_with_eexec(&self, sb: &Sandbox, job: &Job, eexec_data: &str) -> Running {
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
        let file = job_file.to_string_lossy().into_owned();
        // A login-shell job: the login shell reads `cd CWD; exec res JOBFILE` on its stdin
        // (sbd.job.c, createTmpJobFile), so res is still the group leader.
        let argv: Vec<String> = match &job.login_shell {
            None => vec!["/bin/sh".into(), "-c".into(), RES.into(), file.clone()],
            Some(shell) => vec![shell.clone()],
        };
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
                    // As the sandbox's: image keepers go 2 s after the last run, not 60.
                    .env("BERTH_IMAGE_IDLE", "2")
                    .stdin(Stdio::null());
                c
            }
        };
        for (k, v) in &job.env {
            let kept = LOGIN_SHELL_KEEPS
                .iter()
                .any(|n| format!("{k}={v}").contains(n));
            if job.login_shell.is_none() || kept {
                cmd.env(k, v);
            }
        }
        if let Some(shell) = &job.login_shell {
            let tmp = PathBuf::from(format!("{file}.tmp"));
            fs::write(
                &tmp,
                format!(
                    "cd {}\nexec /bin/sh -c '{RES}' {file} </dev/null\n",
                    cwd.display()
                ),
            )
            .unwrap();
            give_to_user(&tmp);
            cmd.arg0("-")
                .env("SHELL", shell)
                .stdin(fs::File::open(&tmp).unwrap());
        } else {
            cmd.env("SHELL", "/bin/sh");
        }
        cmd.current_dir(&cwd)
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
        // SAFETY: between fork and exec the closure only makes system calls (rt_sigaction
        // with a zeroed kernel sigaction on the stack, signal, sigprocmask), which are
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // The raw call: libc's sigaction refuses the signals it keeps for itself (32,
                // 33), which sbatchd's loop over every signal resets too.
                let dfl = [0u64; 4];
                for sig in 1..=64 {
                    if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                        libc::syscall(
                            libc::SYS_rt_sigaction,
                            sig,
                            dfl.as_ptr(),
                            std::ptr::null_mut::<u64>(),
                            8usize,
                        );
                    }
                }
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                Ok(())
            });
        }
        if let Some(eexec) = &self.eexec {
            self.run_eexec(sb, eexec, &cmd, eexec_data);
        }
        let child = cmd.spawn().expect("start res");
        let pgid = child.id() as i32;
        let pgids = Arc::new(Mutex::new(Pgids { list: vec![pgid] }));
        let done = Arc::new(AtomicBool::new(false));
        // sbatchd refreshes the job's process groups from PIM while the job runs.
        let (p, d) = (pgids.clone(), done.clone());
        std::thread::spawn(move || {
            while !d.load(Ordering::SeqCst) {
                p.lock().unwrap().update();
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Running {
            child,
            job_file,
            pgid,
            _reaper: Reaper {
                root: pgid,
                pgids: pgids.clone(),
                done: done.clone(),
            },
            pgids,
            done,
            terminate_interval: self.terminate_interval,
        }
    }

    /// The eexec (lsf/lib/lib.esub.c, runEexec_): as the user, with the job's environment,
    /// the esub's output on its stdin; sbatchd waits for it.
    fn run_eexec(&self, sb: &Sandbox, eexec: &Path, job: &Command, data: &str) {
        let mut cmd = sb.as_user(&[eexec.to_string_lossy().into_owned()]);
        cmd.env_clear();
        for (k, v) in job.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd.stdin(Stdio::piped());
        let mut child = cmd.spawn().expect("start the eexec");
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(data.as_bytes());
        child.wait().unwrap();
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

/// bsub's call of the esub (lsbatch/lib/lsb.sub.c, runBatchEsub; lsf/lib/lib.esub.c): the
/// parameter file, `LSB_SUB_MODIFY_ENVFILE` named but not made, `LSB_SUB_ABORT_VALUE=97`,
/// the submit environment; the esub's stdout is kept as the job's eexec data, its stderr
/// goes to the user.
pub struct Esub {
    pub program: PathBuf,
    /// The user's environment at submit, besides the sandbox's (e.g. BERTH_LAVA_CONFIG).
    pub env: Vec<(String, String)>,
}

/// What bsub (or bmod) asks for.
#[derive(Clone, Default)]
pub struct Submit {
    /// `-a STRING`.
    pub additional: Option<String>,
    /// `-q QUEUE`.
    pub queue: Option<String>,
    /// `-L SHELL`.
    pub login_shell: Option<String>,
    /// bmod rather than bsub (`LSB_SUB_MODIFY=Y`).
    pub modify: bool,
    /// The submit environment (besides the user's own).
    pub env: Vec<(String, String)>,
}

/// What the esub did: its exit, the env file it wrote (if any) and its stdout (eexec data).
pub struct EsubResult {
    pub run: Run,
    pub env_file: String,
    pub env_file_made: bool,
}

impl EsubResult {
    /// Whether bsub goes on with the job (the esub did not exit with LSB_SUB_ABORT_VALUE).
    pub fn accepted(&self) -> bool {
        self.run.code != Some(97) && self.run.signal.is_none()
    }
}

/// Quote a string as bsub writes one into the parameter file: `"` escaped, nothing else
/// (lsb.sub.c, QUOTE_STR).
fn parm_str(v: &str) -> String {
    format!("\"{}\"", v.replace('"', "\\\""))
}

impl Esub {
    pub fn new() -> Esub {
        Esub {
            program: lava_bin("berth-lava-esub"),
            env: Vec::new(),
        }
    }

    /// `bsub -q berth -a ADDITIONAL` (None: no -a) with `env` in the submit environment.
    pub fn submit(
        &self,
        sb: &Sandbox,
        additional: Option<&str>,
        env: &[(&str, &str)],
    ) -> EsubResult {
        self.call(
            sb,
            &Submit {
                additional: additional.map(String::from),
                queue: Some("berth".into()),
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Submit::default()
            },
        )
    }

    /// Run the esub as bsub does, as the test user in the sandbox's work directory.
    pub fn call(&self, sb: &Sandbox, s: &Submit) -> EsubResult {
        let n = NEXT_JOB.fetch_add(1, Ordering::SeqCst);
        let dir = sb.root.join(format!("esub-{n}"));
        fs::create_dir_all(&dir).unwrap();
        give_to_user(&dir);
        let parm = dir.join("parm");
        let mut text = String::new();
        if let Some(q) = &s.queue {
            text.push_str(&format!("LSB_SUB_QUEUE={}\n", parm_str(q)));
        }
        if let Some(shell) = &s.login_shell {
            text.push_str(&format!("LSB_SUB_LOGIN_SHELL={}\n", parm_str(shell)));
        }
        if s.modify {
            text.push_str("LSB_SUB_MODIFY=Y\n");
        }
        text.push_str("LSB_SUB_NUM_PROCESSORS=1\nLSB_SUB_MAX_NUM_PROCESSORS=1\n");
        if let Some(a) = &s.additional {
            // Written as it is: bsub does not escape -a.
            text.push_str(&format!("LSB_SUB_ADDITIONAL=\"{a}\"\n"));
        }
        fs::write(&parm, text).unwrap();
        give_to_user(&parm);
        let env_file = dir.join(".lsbsubdeltaenv");
        let mut cmd = sb.as_user(&[self.program.to_string_lossy().into_owned()]);
        cmd.env("LSB_SUB_PARM_FILE", &parm)
            .env("LSB_SUB_MODIFY_ENVFILE", &env_file)
            .env("LSB_SUB_MODIFY_FILE", dir.join(".lsbsubdeltaparm"))
            .env("LSB_SUB_ABORT_VALUE", "97");
        for (k, v) in self.env.iter().chain(&s.env) {
            cmd.env(k, v);
        }
        let run = crate::run(cmd);
        EsubResult {
            run,
            env_file_made: env_file.exists(),
            env_file: fs::read_to_string(&env_file).unwrap_or_default(),
        }
    }
}

impl Default for Esub {
    fn default() -> Self {
        Esub::new()
    }
}

/// bsub with the esub, then (if the esub accepted it) the job on `lava`: the esub's env file
/// added to the submit environment, its stdout given to the eexec.
pub fn bsub(
    sb: &Sandbox,
    esub: &Esub,
    lava: &Sbatchd,
    s: &Submit,
    job: &Job,
) -> (EsubResult, Option<Run>) {
    let e = esub.call(sb, s);
    if !e.accepted() {
        return (e, None);
    }
    let mut job = job.clone();
    job.env.extend(esub.env.iter().chain(&s.env).cloned());
    job.env.extend(env_file_vars(&e.env_file));
    job.login_shell = s.login_shell.clone();
    let run = lava.start_with_eexec(sb, &job, &e.run.stdout).wait();
    (e, Some(run))
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
            // SAFETY: flock on a descriptor this function owns; no memory is involved.
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
