//! One container per node for the ranks of a job: `--join KEY` (or a key derived from the
//! launcher's environment).
//!
//! The first rank to arrive forks a keeper: a detached berth process that builds the container
//! (namespaces, mounts, the image's FUSE mount), then waits on a unix socket in the user's
//! private state directory. Every rank, the first included, connects, is registered by its pid
//! (taken from the kernel, SO_PEERCRED, and watched through a pidfd) and receives the
//! namespace fds over SCM_RIGHTS; it then `setns`es into them and execs its command, so it
//! stays the process the launcher started (signals and exit status need no relaying). When the
//! last registered rank has exited, the keeper removes its socket and exits; the image server
//! ends with the mount and the namespaces with their last process. No shell is needed in the
//! image, and the key's lock is only held while connecting or creating, not while ranks run.
//! The keeper knows how many ranks the launcher starts on the node (Slurm's and Open MPI's
//! local task count) and stays until that many have joined or the launcher is gone, so a short
//! first rank never leaves a later one to build a second container.

use crate::container;
use crate::error::{usage, Context, Error, Result};
use crate::host::ensure_private_dir;
use crate::plan::Plan;
use crate::sys;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    getsockopt, recvmsg, sendmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
};
use nix::unistd::{fork, ForkResult};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// A keeper nobody joined within this time was orphaned by a failed first rank: it exits.
const FIRST_JOIN_TIMEOUT: Duration = Duration::from_secs(60);

enum Reply {
    /// The namespaces, and what of the rank's plan the container ignores (attach only).
    Joined(Vec<OwnedFd>, Vec<String>),
    Closing,
    Mismatch,
}

/// A short hex hash of `parts`.
fn short_hash(parts: &[&[u8]], bytes: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(bytes)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// This node's name, as the kernel has it.
fn node_name() -> Vec<u8> {
    nix::unistd::gethostname()
        .map(|n| n.as_encoded_bytes().to_vec())
        .unwrap_or_default()
}

/// The files of this node's keeper for `key`, without extension (`.sock`, `.lock`, `.log`):
/// `<node hash>-<key hash>`. Paths are limited to 108 bytes, hence hashes. The node is in the
/// name, so a state directory shared between nodes (a home on NFS) never leads one node's rank
/// to another node's keeper, and a sweep touches only its own node's files.
fn key_base(dir: &Path, key: &str) -> PathBuf {
    let node = node_name();
    dir.join(format!(
        "{}-{}",
        short_hash(&[&node], 4),
        short_hash(&[&node, key.as_bytes()], 8)
    ))
}

/// The keeper's socket for `key` on this node.
fn sock_path(dir: &Path, key: &str) -> PathBuf {
    key_base(dir, key).with_extension("sock")
}

/// The number of ranks the launcher starts on this node, from its environment: Open MPI's
/// local size, else Slurm's tasks of this step on this node (`SLURM_STEP_TASKS_PER_NODE`, e.g.
/// `2(x3),1`, at `SLURM_NODEID`); 1 when neither says. A keeper stays until that many ranks
/// have joined (or the launcher is gone).
pub fn local_ranks(env: &[(std::ffi::OsString, std::ffi::OsString)]) -> u32 {
    let get = |k: &str| {
        env.iter()
            .find(|(ek, _)| ek == k)
            .and_then(|(_, v)| v.to_str())
    };
    if let Some(n) = get("OMPI_COMM_WORLD_LOCAL_SIZE").and_then(|v| v.parse().ok()) {
        return n;
    }
    let (Some(per_node), Some(node)) = (
        get("SLURM_STEP_TASKS_PER_NODE"),
        get("SLURM_NODEID").and_then(|v| v.parse::<u32>().ok()),
    ) else {
        return 1;
    };
    tasks_on_node(per_node, node).unwrap_or(1)
}

/// Slurm's compressed task list (`2(x3),1`): the count of node `index`.
fn tasks_on_node(list: &str, index: u32) -> Option<u32> {
    let mut seen = 0u32;
    for part in list.split(',') {
        let (count, times) = match part.split_once("(x") {
            Some((c, t)) => (c, t.strip_suffix(')')?.parse::<u32>().ok()?),
            None => (part, 1),
        };
        seen += times;
        if index < seen {
            return count.parse().ok();
        }
    }
    None
}

/// Take the lock of one key (`<base>.lock`, flock). A keeper removes the file when it ends, so
/// a lock taken on a file that is no longer at its path is dropped and taken again.
fn lock_key(lock_path: &Path) -> Result<File> {
    use std::os::unix::fs::MetadataExt;
    loop {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(lock_path)
            .ctx(|| format!("cannot open the join lock {}", lock_path.display()))?;
        sys::flock(&file, libc::LOCK_EX).ctx(|| "cannot take the join lock")?;
        let held = file.metadata().ctx(|| "cannot stat the join lock")?;
        if std::fs::metadata(lock_path)
            .is_ok_and(|m| m.ino() == held.ino() && m.dev() == held.dev())
        {
            return Ok(file);
        }
    }
}

/// Remove a key's lock file if nobody holds it (a keeper's end, a sweep).
fn remove_lock(lock_path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(file) = File::options().read(true).open(lock_path) else {
        return;
    };
    if sys::flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_err() {
        return;
    }
    let same = match (file.metadata(), std::fs::metadata(lock_path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    };
    if same {
        let _ = std::fs::remove_file(lock_path);
    }
}

/// Whether a keeper serves `key` on this node now (a container some rank still runs in, or
/// one lingering): its socket accepts a connection. The probe says nothing, so the keeper
/// registers no rank for it.
pub fn running(state_dir: &Path, key: &str) -> bool {
    UnixStream::connect(sock_path(&state_dir.join("join"), key)).is_ok()
}

/// Enter the container registered under `key` on this node, creating it if needed. On success
/// the calling process is inside its namespaces, as the user (or root with `--remap-root`).
/// With `attach`, a running container under the key is joined whatever its options; the
/// names of the options of this plan it ignores are returned (else none).
///
/// `local_ranks` is how many ranks the launcher starts on this node ([`local_ranks`]): a
/// keeper this rank starts stays until that many have joined or this rank's parent (the
/// launcher: slurmstepd, Open MPI's daemon) has exited.
pub fn join(plan: &Plan, key: &str, attach: bool, local_ranks: u32) -> Result<Vec<String>> {
    let dir = plan.state_dir.join("join");
    ensure_private_dir(&plan.state_dir, plan.user.uid)?;
    ensure_private_dir(&dir, plan.user.uid)?;
    let sock_path = sock_path(&dir, key);
    // One lock per key and node: a cold build of one container never waits on another's.
    let lock_file = lock_key(&sock_path.with_extension("lock"))?;
    let message = if attach {
        let (strict, parts) = plan.fingerprint_parts();
        let parts: Vec<String> = parts.iter().map(|(n, h)| format!("{n}={h}")).collect();
        format!("attach {strict} {}\n", parts.join(","))
    } else {
        format!("join {}\n", plan.fingerprint())
    };
    let mut fds = None;
    let mut ignored = Vec::new();
    for _ in 0..50 {
        debug!("join: connecting to {} (key '{key}')", sock_path.display());
        match UnixStream::connect(&sock_path) {
            Ok(stream) => match request(&stream, &message)? {
                Reply::Joined(got, differ) => {
                    info!("join: joined the container '{key}'");
                    fds = Some(got);
                    ignored = differ;
                    break;
                }
                Reply::Closing => {
                    debug!("join: the keeper is closing; trying again");
                    std::thread::sleep(Duration::from_millis(20))
                }
                Reply::Mismatch => {
                    info!("join: the keeper of '{key}' refused: its container differs");
                    return usage(format!(
                    "join key '{key}' is in use on this node by a container with another image, \
                         mounts or options; use the same options or another key"
                ));
                }
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                // A killed keeper's socket (a live keeper's key lock is ours now), and those
                // other killed keepers of this node left.
                let _ = std::fs::remove_file(&sock_path);
                sweep(&plan.state_dir, false);
                info!(
                    "join: no container '{key}' on this node: spawning a keeper (log {})",
                    log_path(&sock_path).display()
                );
                spawn_keeper(plan, &sock_path, &dir, &lock_file, local_ranks)?;
            }
            Err(e) => {
                return Err(e).ctx(|| {
                    format!(
                        "cannot reach the container keeper at {}",
                        sock_path.display()
                    )
                })
            }
        }
    }
    drop(lock_file);
    let fds = fds.ok_or_else(|| {
        Error::Image(format!(
            "could not join the container '{key}' (keeper kept closing)"
        ))
    })?;
    setns(fds[0].as_fd(), CloneFlags::CLONE_NEWUSER)
        .ctx(|| "cannot join the container's user namespace")?;
    setns(fds[1].as_fd(), CloneFlags::CLONE_NEWNS)
        .ctx(|| "cannot join the container's mount namespace")?;
    // Then the keeper's own namespaces (net, ipc, uts: owned by the outer user namespace,
    // entered while the rank has its capabilities there), and last its inner user namespace,
    // if any. Each is entered as the kind the kernel says it is: an attaching rank gets the
    // container's set, not the one its own options ask for.
    let mut inner = None;
    for fd in &fds[2..] {
        // SAFETY: NS_GET_NSTYPE (0xb703) takes no argument and returns the namespace kind;
        // `fd` is an open descriptor the keeper sent.
        let kind = unsafe { libc::ioctl(fd.as_raw_fd(), 0xb703) };
        if kind == libc::CLONE_NEWUSER {
            inner = Some(fd);
            continue;
        }
        let flag = CloneFlags::from_bits_truncate(kind);
        setns(fd.as_fd(), flag).ctx(|| "cannot join one of the container's namespaces")?;
    }
    if let Some(inner) = inner {
        setns(inner.as_fd(), CloneFlags::CLONE_NEWUSER)
            .ctx(|| "cannot join the container's inner user namespace")?;
    }
    Ok(ignored)
}

/// A keeper's log file: beside its socket.
fn log_path(sock_path: &Path) -> PathBuf {
    sock_path.with_extension("log")
}

/// Sweep `<state>/join` for what killed or failed keepers of this node left: sockets nobody
/// listens on (a first rank does this, `everything` false: a scheduler kills a step's keeper
/// at the step's end), and with `everything` (`berth cache clean`) also lock files of keys
/// without a keeper and logs of failed keepers. Each socket is probed under its key's lock, taken without waiting (a busy key is
/// in use), so that no keeper is between its bind and its listen. Other nodes' files (a shared
/// state directory) are left alone: their sockets cannot be probed from here. Returns what went.
pub fn sweep(state_dir: &Path, everything: bool) -> Vec<String> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let dir = state_dir.join("join");
    let mut gone = Vec::new();
    let node = format!("{}-", short_hash(&[&node_name()], 4));
    let ours: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&node))
        })
        .collect();
    for path in ours
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
    {
        // A first rank makes its key's lock before it binds: with no lock file nobody is
        // between bind and listen.
        let lock = File::options()
            .read(true)
            .open(path.with_extension("lock"))
            .ok();
        if lock
            .as_ref()
            .is_some_and(|l| sys::flock(l, libc::LOCK_EX | libc::LOCK_NB).is_err())
        {
            continue;
        }
        let Ok(sock) = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        ) else {
            continue;
        };
        let Ok(addr) = UnixAddr::new(path) else {
            continue;
        };
        // A live keeper accepts (and drops a connection that says nothing) or, busy, answers
        // EAGAIN: both are kept.
        if connect(sock.as_raw_fd(), &addr) == Err(nix::errno::Errno::ECONNREFUSED) {
            let _ = std::fs::remove_file(path);
            gone.push(format!("dead join socket {}", path.display()));
        }
    }
    if !everything {
        return gone;
    }
    for path in &ours {
        let no_keeper = !path.with_extension("sock").exists();
        match path.extension().and_then(|x| x.to_str()) {
            Some("log") if no_keeper && std::fs::remove_file(path).is_ok() => {
                gone.push(format!("keeper log {}", path.display()))
            }
            Some("lock") if no_keeper => remove_lock(path),
            _ => {}
        }
    }
    gone
}

fn request(stream: &UnixStream, request: &str) -> Result<Reply> {
    // The rank's stderr goes along: if the image server dies, the keeper says so there.
    let stderr = [2 as RawFd];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(request.as_bytes())],
        &[ControlMessage::ScmRights(&stderr)],
        MsgFlags::empty(),
        None,
    )
    .ctx(|| "cannot talk to the container keeper")?;
    let mut buf = [0u8; 256];
    // user, mount, net, ipc, uts, inner user.
    let mut cmsg = nix::cmsg_space!([RawFd; 6]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ctx(|| "cannot read the container keeper's answer")?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmRights(raw) = c {
            fds.extend(
                raw.into_iter()
                    // SAFETY: SCM_RIGHTS gave this process new descriptors nothing else owns.
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let n = msg.bytes;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let text = text.trim();
    // "ok", or "ok NAME,NAME" for an attaching rank: what of its plan the container ignores.
    Ok(match text.split_once(' ').unwrap_or((text, "")) {
        ("ok", differ) if fds.len() >= 2 => Reply::Joined(
            fds,
            differ
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        ),
        ("mismatch", _) => Reply::Mismatch,
        _ => Reply::Closing,
    })
}

/// Fork a detached keeper, wait until it has built the container (or failed, with its error).
fn spawn_keeper(
    plan: &Plan,
    sock_path: &Path,
    dir: &Path,
    join_lock: &File,
    local_ranks: u32,
) -> Result<()> {
    // The launcher that starts this node's ranks: while it lives, more may come.
    let launcher = if local_ranks > 1 {
        sys::pidfd_open(nix::unistd::getppid().as_raw()).ok()
    } else {
        None
    };
    let wait = Wait {
        ranks: local_ranks,
        launcher,
    };
    let listener =
        UnixListener::bind(sock_path).ctx(|| format!("cannot create {}", sock_path.display()))?;
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(|| "pipe")?;
    // SAFETY: berth is single-threaded here (see container::build), so the children may
    // allocate and run any code; each ends in _exit, never returning into the caller.
    match unsafe { fork() }.ctx(|| "cannot fork the container keeper")? {
        ForkResult::Child => {
            drop(ready_r);
            // The join lock's open file would otherwise stay locked for the keeper's life.
            // (`join_lock` is borrowed from a frame this child never returns to.)
            let _ = nix::unistd::close(join_lock.as_raw_fd());
            let _ = nix::unistd::setsid();
            // SAFETY: still single-threaded, as above.
            if let Ok(ForkResult::Child) = unsafe { fork() } {
                let name = sock_path.file_name().map(PathBuf::from).unwrap_or_default();
                let code = keeper_main(plan, listener, ready_w, dir, &name, wait);
                // SAFETY: _exit ends the process without running the parent's atexit or
                // destructors, which belong to the berth that forked.
                unsafe { libc::_exit(code) };
            }
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(listener);
            drop(wait);
            let _ = nix::sys::wait::waitpid(child, None);
            let mut answer = String::new();
            let _ = File::from(ready_r).read_to_string(&mut answer);
            if let Some(rest) = answer.strip_prefix("ok") {
                for line in rest.lines().filter(|l| !l.is_empty()) {
                    eprintln!("berth: {line}");
                }
                Ok(())
            } else {
                let _ = std::fs::remove_file(sock_path);
                Err(Error::Image(if answer.is_empty() {
                    "the container keeper died while starting".into()
                } else {
                    answer
                }))
            }
        }
    }
}

fn keeper_main(
    plan: &Plan,
    listener: UnixListener,
    ready: OwnedFd,
    dir: &Path,
    sock_name: &Path,
    wait: Wait,
) -> i32 {
    // The keeper outlives the first rank: it must not hold the job's stdout/stderr open. It
    // logs to its own file instead (opened before the build hides the host's paths).
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    let log_name = sock_name.with_extension("log");
    let _log = crate::log::to_file(&dir.join(&log_name)).ok();
    let key = plan.join_key.as_deref().unwrap_or("");
    info!(
        "keeper {}: container '{key}' for {}, {} local ranks, linger {} s",
        std::process::id(),
        plan.image.path.display(),
        wait.ranks,
        plan.linger_secs
    );
    let mut ready = File::from(ready);
    // Before the build: the image's path is not visible from the container's namespace.
    let id = Identity {
        fingerprint: plan.fingerprint(),
        parts: plan.fingerprint_parts(),
    };
    let dirfd = match File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)
    {
        Ok(f) => f,
        Err(e) => {
            let _ = write!(ready, "cannot open {}: {e}", dir.display());
            return 1;
        }
    };
    let built = container::build(plan).and_then(|built| {
        let outer = File::open("/proc/self/ns/user").ctx(|| "cannot open the user namespace")?;
        let mnt = File::open("/proc/self/ns/mnt").ctx(|| "cannot open the mount namespace")?;
        let mut fds: Vec<OwnedFd> = vec![outer.into(), mnt.into()];
        // Then the namespaces of `--unshare`, in the order a rank enters them.
        for kind in plan.unshare.names() {
            let ns = File::open(format!("/proc/self/ns/{kind}"))
                .ctx(|| format!("cannot open the {kind} namespace"))?;
            fds.push(ns.into());
        }
        if !plan.remap_root {
            fds.push(make_inner_userns(plan)?);
        }
        Ok((built, fds))
    });
    let (mut built, fds) = match built {
        Ok(ok) => ok,
        Err(e) => {
            warn!("keeper: the build failed: {e}");
            let _ = write!(ready, "{e}");
            return 1;
        }
    };
    info!("keeper: ready, waiting for ranks");
    // In ps: not the command line of the rank it was forked from (under Slurm a user-owned
    // `slurmstepd: [J.S]` with parent 1, which an admin would take for a stuck slurmstepd).
    // Nothing reads this process's arguments or environment from here on.
    // The command line before the name: whoever finds the keeper by its name reads its title.
    crate::imagefs::set_cmdline(&format!("berth-keeper {key}"), true);
    let _ = nix::sys::prctl::set_name(c"berth-keeper");
    let mut answer = String::from("ok");
    for w in &built.warnings {
        answer.push_str(&format!("\nwarning: {w}"));
    }
    let _ = ready.write_all(answer.as_bytes());
    drop(ready);
    // The image's server: a FUSE server of this container's own, or the node's image keeper.
    let fuse_pidfd = built
        .fuse
        .as_ref()
        .map(|c| c.id() as i32)
        .or(built.image_keeper)
        .and_then(|pid| sys::pidfd_open(pid).ok());
    let linger = Duration::from_secs(plan.linger_secs);
    let end = serve(&listener, &fds, &id, fuse_pidfd.as_ref(), linger, wait);
    // Remove the socket before the last answers so a newcomer starts a fresh keeper.
    if let Ok(name) = std::ffi::CString::new(sock_name.as_os_str().as_encoded_bytes()) {
        let _ = nix::unistd::unlinkat(
            Some(dirfd.as_raw_fd()),
            name.as_c_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    let _ = listener.set_nonblocking(true);
    while let Ok((mut conn, _)) = listener.accept() {
        let _ = conn.write_all(b"closing\n");
    }
    // A rank that connected after that reads the end of the stream: "closing" too.
    drop(listener);
    remove_lock(&dir.join(sock_name).with_extension("lock"));
    if let Some(fuse) = built.fuse.as_mut() {
        let _ = fuse.kill();
        let _ = fuse.wait();
    }
    match end {
        End::LastRankGone => {
            info!("keeper: the last rank has exited: closing");
            // A clean end leaves nothing behind; a failure's log stays for the user to read.
            drop(_log);
            if let Ok(name) = std::ffi::CString::new(log_name.as_os_str().as_encoded_bytes()) {
                let _ = nix::unistd::unlinkat(
                    Some(dirfd.as_raw_fd()),
                    name.as_c_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
            }
            0
        }
        End::NoneJoined => {
            warn!("keeper: no rank joined within {FIRST_JOIN_TIMEOUT:?}: closing");
            1
        }
        End::ServerDied(status) => {
            warn!("keeper: the image server (berth-imagefs) died ({status}): closing");
            1
        }
        End::PollFailed(e) => {
            warn!("keeper: cannot wait for ranks: {e}: closing");
            1
        }
    }
}

/// Why a keeper stopped serving.
enum End {
    /// The last rank exited (and the linger time passed): the normal end.
    LastRankGone,
    /// Nobody joined: the first rank failed before it could.
    NoneJoined,
    /// The FUSE server died (its wait status, as far as known).
    ServerDied(String),
    PollFailed(nix::errno::Errno),
}

/// The inner user namespace (the user's own uid/gid) shared by all ranks: made by a short-lived
/// child, kept alive by the fd the keeper holds.
fn make_inner_userns(plan: &Plan) -> Result<OwnedFd> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(|| "pipe")?;
    // SAFETY: the keeper is single-threaded while it builds, so the child may allocate; it
    // never returns, it pauses until the parent kills it.
    match unsafe { fork() }.ctx(|| "fork")? {
        ForkResult::Child => {
            drop(r);
            let ok = container::enter_user(plan).is_ok();
            let _ = File::from(w).write_all(if ok { b"1" } else { b"0" });
            loop {
                nix::unistd::pause();
            }
        }
        ForkResult::Parent { child } => {
            drop(w);
            let mut byte = [0u8; 1];
            let _ = File::from(r).read_exact(&mut byte);
            let ns = File::open(format!("/proc/{child}/ns/user"));
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, None);
            if byte[0] != b'1' {
                return Err(Error::Image(
                    "cannot create the inner user namespace".into(),
                ));
            }
            Ok(ns.ctx(|| "cannot open the inner user namespace")?.into())
        }
    }
}

/// What a keeper compares a rank's request with: the whole fingerprint (a joining rank), or
/// its parts (an attaching one, see `Plan::fingerprint_parts`).
struct Identity {
    fingerprint: String,
    parts: (String, Vec<(&'static str, String)>),
}

impl Identity {
    /// The answer to a request line: "ok" (and for an attaching rank the names of the options
    /// of its plan that differ from the container's), or None for a mismatch.
    fn answer(&self, line: &str) -> Option<String> {
        if let Some(fp) = line.strip_prefix("join ") {
            return (fp == self.fingerprint).then(|| "ok".to_string());
        }
        let (strict, parts) = line.strip_prefix("attach ")?.split_once(' ')?;
        if strict != self.parts.0 {
            return None;
        }
        let differ: Vec<&str> = self
            .parts
            .1
            .iter()
            .filter(|(name, hash)| !parts.split(',').any(|p| p == format!("{name}={hash}")))
            .map(|(name, _)| *name)
            .collect();
        Some(format!("ok {}", differ.join(",")).trim_end().to_string())
    }
}

/// The ranks a keeper waits for: how many the launcher starts on the node, and the launcher
/// itself (a pidfd), whose end means no more will come.
struct Wait {
    ranks: u32,
    launcher: Option<OwnedFd>,
}

/// Register ranks until the last one has exited, every rank the launcher starts has joined (or
/// the launcher is gone) and `linger` has passed without a newcomer (or none came at all, or
/// the FUSE server died).
fn serve(
    listener: &UnixListener,
    fds: &[OwnedFd],
    id: &Identity,
    fuse: Option<&OwnedFd>,
    linger: Duration,
    mut wait: Wait,
) -> End {
    let mut started = Instant::now();
    // Each rank's pidfd, its stderr and its pid (for the log).
    let mut ranks: Vec<(OwnedFd, Option<File>, i32)> = Vec::new();
    let mut joined = 0u32;
    loop {
        let joined_once = joined > 0;
        // More ranks of the launcher to come: a short first rank must not end the container.
        let more = joined < wait.ranks;
        let mut pollfds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if let Some(f) = fuse {
            pollfds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
        }
        let launcher_at = pollfds.len();
        let launcher = wait.launcher.as_ref().filter(|_| more);
        if let Some(l) = launcher {
            pollfds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        let first_rank = pollfds.len();
        pollfds.extend(
            ranks
                .iter()
                .map(|(r, _, _)| PollFd::new(r.as_fd(), PollFlags::POLLIN)),
        );
        // Idle: wait for the first rank, or linger after the last one.
        let idle_limit = if joined_once && !more {
            linger
        } else {
            FIRST_JOIN_TIMEOUT
        };
        let timeout = if !ranks.is_empty() || (joined_once && launcher.is_some()) {
            PollTimeout::NONE
        } else {
            let left = idle_limit.saturating_sub(started.elapsed());
            PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::ZERO)
        };
        match poll(&mut pollfds, timeout) {
            Ok(0) if ranks.is_empty() && joined_once => return End::LastRankGone,
            Ok(0) if ranks.is_empty() => return End::NoneJoined,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return End::PollFailed(e),
        }
        let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
        if fuse.is_some() && ready(&pollfds[1]) {
            // The mount outlives nothing the keeper holds: the server was killed.
            tell_ranks(
                &ranks,
                "berth: the image server of this container (berth-imagefs) died: the image's files \
                 are gone (reads fail, code mapped from the image may die of SIGBUS)\n",
            );
            return End::ServerDied(fuse.map_or_else(String::new, server_status));
        }
        let gone: Vec<usize> = pollfds[first_rank..]
            .iter()
            .enumerate()
            .filter(|(_, p)| ready(p))
            .map(|(i, _)| i)
            .collect();
        let accept = ready(&pollfds[0]);
        let launcher_gone = launcher.is_some() && ready(&pollfds[launcher_at]);
        drop(pollfds);
        if launcher_gone {
            info!("keeper: the launcher has exited: no more ranks will come");
            wait.launcher = None;
            wait.ranks = 0;
        }
        for i in gone.into_iter().rev() {
            let (_, _, pid) = ranks.remove(i);
            info!("keeper: rank {pid} exited ({} left)", ranks.len());
        }
        if accept {
            if let Ok((conn, _)) = listener.accept() {
                if let Some(rank) = register(&conn, fds, id) {
                    ranks.push(rank);
                    joined += 1;
                }
            }
        }
        if joined > 0 && ranks.is_empty() && joined < wait.ranks {
            if wait.launcher.is_none() {
                // Nothing to watch: wait as long as for a first rank.
                started = Instant::now();
            }
            info!(
                "keeper: no rank left, {} of {} joined: waiting for the others",
                joined, wait.ranks
            );
        } else if joined > 0 && ranks.is_empty() {
            if linger.is_zero() {
                return End::LastRankGone;
            }
            info!("keeper: no rank left: lingering {linger:?}");
            started = Instant::now();
        }
    }
}

/// How the FUSE server ended, as waitid on its pidfd tells (without reaping it).
fn server_status(fuse: &OwnedFd) -> String {
    // SAFETY: siginfo_t is a C struct of integers and unions of them: all zeroes is valid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // P_PIDFD = 3. SAFETY: `fuse` is an open pidfd and `info` a live, writable siginfo_t.
    let r = unsafe {
        libc::waitid(
            3,
            fuse.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r != 0 {
        return "status unknown".into();
    }
    // SAFETY: `info` is initialised (zeroed, then filled by waitid in its SIGCHLD layout,
    // which si_status reads).
    let status = unsafe { info.si_status() };
    match info.si_code {
        libc::CLD_EXITED => format!("exit status {status}"),
        libc::CLD_KILLED | libc::CLD_DUMPED => format!("killed by signal {status}"),
        _ => "status unknown".into(),
    }
}

/// Write `line` to the stderr of every registered rank: their processes may fail oddly next,
/// and this names the cause.
fn tell_ranks(ranks: &[(OwnedFd, Option<File>, i32)], line: &str) {
    for mut err in ranks.iter().filter_map(|(_, e, _)| e.as_ref()) {
        let _ = err.write_all(line.as_bytes());
    }
}

fn register(
    conn: &UnixStream,
    fds: &[OwnedFd],
    id: &Identity,
) -> Option<(OwnedFd, Option<File>, i32)> {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = [0u8; 512];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut line)];
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let n = msg.bytes;
    let mut stderr = None;
    for c in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: SCM_RIGHTS gave this process a new descriptor that nothing else owns.
                let fd = unsafe { File::from_raw_fd(fd) };
                stderr.get_or_insert(fd);
            }
        }
    }
    if n == 0 {
        debug!("keeper: a liveness probe");
        return None; // a liveness probe (a sweep), not a rank
    }
    let text = String::from_utf8_lossy(&line[..n]);
    let cred = getsockopt(&conn.as_fd(), sockopt::PeerCredentials).ok()?;
    let Some(answer) = id.answer(text.trim()) else {
        info!(
            "keeper: refused pid {}: its image, mounts or options differ",
            cred.pid()
        );
        let _ = (&*conn).write_all(b"mismatch\n");
        return None;
    };
    let pidfd = sys::pidfd_open(cred.pid()).ok()?;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(format!("{answer}\n").as_bytes())],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .ok()?;
    info!("keeper: rank {} joined ({answer})", cred.pid());
    Some((pidfd, stderr, cred.pid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ranks_from_slurm_and_open_mpi() {
        let env = |kv: &[(&str, &str)]| -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
            kv.iter().map(|(k, v)| (k.into(), v.into())).collect()
        };
        let slurm = |list: &str, node: &str| {
            local_ranks(&env(&[
                ("SLURM_STEP_TASKS_PER_NODE", list),
                ("SLURM_NODEID", node),
            ]))
        };
        assert_eq!(slurm("2(x3),1", "0"), 2);
        assert_eq!(slurm("2(x3),1", "2"), 2);
        assert_eq!(slurm("2(x3),1", "3"), 1);
        assert_eq!(slurm("4", "0"), 4);
        // Out of range or unreadable: one, as without a launcher.
        assert_eq!(slurm("2(x3),1", "4"), 1);
        assert_eq!(slurm("2(x", "0"), 1);
        assert_eq!(local_ranks(&env(&[("OMPI_COMM_WORLD_LOCAL_SIZE", "6")])), 6);
        assert_eq!(local_ranks(&[]), 1);
    }

    #[test]
    fn joins_are_strict_and_attaches_name_what_differs() {
        let id = Identity {
            fingerprint: "f00".into(),
            parts: (
                "s1".into(),
                vec![("image", "a".into()), ("mounts", "b".into())],
            ),
        };
        assert_eq!(id.answer("join f00").as_deref(), Some("ok"));
        assert_eq!(id.answer("join f01"), None);
        assert_eq!(
            id.answer("attach s1 image=a,mounts=b").as_deref(),
            Some("ok")
        );
        assert_eq!(
            id.answer("attach s1 image=a,mounts=c").as_deref(),
            Some("ok mounts")
        );
        assert_eq!(
            id.answer("attach s1 image=z,mounts=c").as_deref(),
            Some("ok image,mounts")
        );
        // Another user or another named container's layer: never.
        assert_eq!(id.answer("attach s2 image=a,mounts=b"), None);
        assert_eq!(id.answer("attach"), None);
    }
}
