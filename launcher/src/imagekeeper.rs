//! One FUSE mount of an image per user, node and job step (or Slurm job): the image keeper.
//!
//! The first mount-mode run of an image forks a keeper. The keeper makes its own user and mount
//! namespaces, mounts the image with berth's FUSE server ([`crate::imagefs`], threads of the
//! keeper) and listens on `<state>/keepers/<hash>.sock`. A run connects and receives the keeper's
//! user namespace and a detached clone of the mount. It joins that user namespace (FUSE's
//! `allow_other` reaches only the mounter's user namespace and its children: a sibling gets
//! EACCES), makes its own mount namespace there and attaches the clone as the overlay's lower
//! layer. A warm mount answers from the kernel's caches, so later runs start without FUSE
//! requests and without decompressing anything.
//!
//! After `idle` seconds without a new run the keeper stops taking runs (under the image's lock,
//! so no run is half-way in), unmounts its own copy and serves on until the last clone is gone:
//! the kernel then ends the FUSE connection and the keeper exits. No container ever loses its
//! image to the idle timer. Keepers are keyed by the image file's identity (a replaced .sqsh gets
//! a fresh one) and by the job step they serve under a scheduler, because the scheduler kills a
//! step's processes when it ends and a keeper of one step must not serve another's containers.
//! A Slurm job with an extern step on the node (`PrologFlags=Contain`) is one scope instead
//! (`plan::key::keeper_scope`): the keeper watches the extern step's slurmstepd, and the SPANK
//! plugin moves it into that step's cgroups when the step that started it ends (proctrack/cgroup
//! would kill it with the step), so the job's later steps find the mount warm. Its title,
//! `berth-imagefs keeper SCOPE`, is how the plugin finds it.

use crate::error::{Context, Error, Result};
use crate::host::ensure_private_dir;
use crate::plan::Plan;
use crate::squashfs::Archive;
use crate::sys;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{
    getsockopt, recvmsg, sendmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
};
use nix::unistd::{fork, ForkResult};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// A run's share of the keeper's mount.
pub struct Attached {
    /// The keeper's user namespace: the run must join it to use the mount.
    pub userns: OwnedFd,
    /// A detached clone of the image mount (read-only, nosuid, nodev).
    pub tree: OwnedFd,
    /// The keeper's pid (the FUSE server runs in it), to watch it.
    pub keeper: i32,
}

/// How long a run waits for a keeper's answer before calling it hung.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The keeper's file name stem for this image, user and scope.
fn keeper_name(plan: &Plan, image: &File) -> Result<String> {
    let st = image
        .metadata()
        .ctx(|| format!("cannot stat image {}", plan.image.path.display()))?;
    // The node's name too: a state directory shared between nodes (a home on NFS) must not
    // lead a run to another node's keeper, or to removing its socket.
    let node = nix::unistd::gethostname().unwrap_or_default();
    let identity = format!(
        "{}\0{}\0{}\0{}\0{}\0{}.{}\0{}.{}\0{}\0{}\0{}",
        node.to_string_lossy(),
        plan.user.uid,
        st.dev(),
        st.ino(),
        st.size(),
        st.mtime(),
        st.mtime_nsec(),
        st.ctime(),
        st.ctime_nsec(),
        plan.image.offset,
        plan.image_cache_bytes,
        plan.keeper_scope,
    );
    Ok(format!(
        "{}-{}",
        node_prefix(),
        hex(&Sha256::digest(identity.as_bytes())[..8])
    ))
}

/// The first part of this node's keepers' file names: a sweep touches only its own node's
/// files (another node's socket on a shared filesystem refuses connections from here, alive
/// or not).
fn node_prefix() -> String {
    let node = nix::unistd::gethostname().unwrap_or_default();
    hex(&Sha256::digest(node.as_encoded_bytes())[..4])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Get a share of this image's mount on this node, starting its keeper if there is none.
pub fn attach(plan: &Plan, image: &File) -> Result<Attached> {
    let dir = plan.state_dir.join("keepers");
    ensure_private_dir(&plan.state_dir, plan.user.uid)?;
    ensure_private_dir(&dir, plan.user.uid)?;
    let name = keeper_name(plan, image)?;
    let sock = dir.join(format!("{name}.sock"));
    // One lock per image: held only while connecting or starting a keeper, never while a
    // container runs, and a keeper closes only under it (so no run meets a closing keeper).
    let lock = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(format!("{name}.lock")))
        .ctx(|| format!("cannot open the image lock in {}", dir.display()))?;
    sys::flock(&lock, libc::LOCK_EX).ctx(|| "cannot take the image lock")?;
    for _ in 0..3 {
        match UnixStream::connect(&sock) {
            Ok(stream) => {
                if let Some(attached) = ask(&stream, &sock)? {
                    debug!("image keeper {}: attached", attached.keeper);
                    return Ok(attached);
                }
                // Its server died: it is on its way out. Start another.
                info!("image keeper of {name} is closing; starting another");
                let _ = std::fs::remove_file(&sock);
                spawn(plan, image, &sock, &dir, &name, &lock)?;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                // No keeper, or a killed one's socket: start one. Keepers a scheduler killed
                // at the end of their step left their sockets: sweep them now.
                let _ = std::fs::remove_file(&sock);
                sweep(&plan.state_dir, false);
                spawn(plan, image, &sock, &dir, &name, &lock)?;
            }
            Err(e) => {
                return Err(Error::Sys {
                    context: format!("cannot reach the image keeper at {}", sock.display()),
                    source: e,
                })
            }
        }
    }
    Err(Error::Image(format!(
        "the image keeper of {} keeps closing; run `berth doctor`, or use --image-idle 0",
        plan.image.path.display()
    )))
}

/// Ask a keeper for a share. `None`: it is closing.
fn ask(stream: &UnixStream, sock: &Path) -> Result<Option<Attached>> {
    let peer =
        getsockopt(stream, sockopt::PeerCredentials).ctx(|| "cannot identify the image keeper")?;
    if peer.uid() != nix::unistd::getuid().as_raw() {
        return Err(Error::Image(format!(
            "the image keeper socket is served by uid {}, not by you; remove it with `berth cache clean`",
            peer.uid()
        )));
    }
    let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT));
    (&*stream)
        .write_all(b"attach\n")
        .ctx(|| "cannot talk to the image keeper")?;
    let mut buf = [0u8; 32];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| {
        Error::Image(format!(
            "the image keeper at {} does not answer ({e}); kill its berth-imagefs process or use --image-idle 0",
            sock.display()
        ))
    })?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs().ctx(|| "cannot read the keeper's answer")? {
        if let ControlMessageOwned::ScmRights(got) = c {
            fds.extend(
                got.into_iter()
                    // SAFETY: SCM_RIGHTS gave this process new descriptors nothing else owns.
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let text = msg
        .iovs()
        .next()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    // "ok PID": the keeper's own pid (SO_PEERCRED names the run that bound the socket).
    let keeper = text
        .strip_prefix("ok ")
        .and_then(|rest| rest.trim_end().parse::<i32>().ok());
    match (keeper, fds.len()) {
        (Some(keeper), 2) => {
            let tree = fds.pop().expect("two fds");
            let userns = fds.pop().expect("two fds");
            Ok(Some(Attached {
                userns,
                tree,
                keeper,
            }))
        }
        _ => Ok(None),
    }
}

/// Fork the keeper (detached: its own session, reparented) and wait until it serves the image
/// or says why it cannot.
fn spawn(
    plan: &Plan,
    image: &File,
    sock: &Path,
    dir: &Path,
    name: &str,
    lock: &File,
) -> Result<()> {
    // Read the superblock and tables now: a bad image is the run's one-line error, before
    // anything is forked or mounted.
    let file = image.try_clone().ctx(|| "cannot duplicate the image fd")?;
    // The keeper keeps this descriptor of the run's, and only this one (with its socket and
    // the ready pipe).
    let image_fd = file.as_raw_fd();
    let archive = Archive::open(file, plan.image.offset, plan.image_cache_bytes).map_err(|e| {
        Error::Image(format!(
            "cannot serve {}: {e}; check it with unsquashfs -s or use --mode extract",
            plan.image.path.display()
        ))
    })?;
    // The job step's anchor process, watched through a pidfd: the keeper stops taking runs
    // when the step has ended.
    let anchor = plan.keeper_anchor.and_then(|pid| sys::pidfd_open(pid).ok());
    let listener = UnixListener::bind(sock).ctx(|| format!("cannot create {}", sock.display()))?;
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(|| "pipe")?;
    // SAFETY: the caller is single-threaded (see container::build), so the children may
    // allocate and run any code; each ends in _exit, never returning into the caller.
    match unsafe { fork() }.ctx(|| "cannot fork the image keeper")? {
        ForkResult::Child => {
            drop(ready_r);
            // The lock's open file would otherwise stay locked for the keeper's life.
            // (`lock` is borrowed from a frame this child never returns to.)
            let _ = nix::unistd::close(lock.as_raw_fd());
            let _ = nix::unistd::setsid();
            // SAFETY: still single-threaded, as above.
            if let Ok(ForkResult::Child) = unsafe { fork() } {
                let mut keep = vec![listener.as_raw_fd(), ready_w.as_raw_fd(), image_fd];
                keep.extend(anchor.as_ref().map(|a| a.as_raw_fd()));
                let start = Start {
                    listener,
                    ready: ready_w,
                    archive,
                    anchor,
                };
                let code = keeper_main(plan, start, dir, name, &keep);
                // SAFETY: _exit ends the process without running destructors or atexit
                // handlers, which belong to the berth that forked.
                unsafe { libc::_exit(code) };
            }
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(listener);
            drop(archive);
            let _ = nix::sys::wait::waitpid(child, None);
            let mut answer = String::new();
            let _ = File::from(ready_r).read_to_string(&mut answer);
            if answer == "ok" {
                Ok(())
            } else {
                let _ = std::fs::remove_file(sock);
                Err(Error::Image(if answer.is_empty() {
                    "the image keeper died while starting; see `berth -v` or use --image-idle 0"
                        .into()
                } else {
                    answer
                }))
            }
        }
    }
}

/// What a starting keeper is handed by the run that forks it.
struct Start {
    listener: UnixListener,
    /// Where it reports "ok" or why it cannot serve.
    ready: OwnedFd,
    archive: Archive,
    /// The job step's anchor process (a pidfd), if any.
    anchor: Option<OwnedFd>,
}

fn keeper_main(plan: &Plan, start: Start, dir: &Path, name: &str, keep: &[RawFd]) -> i32 {
    let Start {
        listener,
        ready,
        archive,
        anchor,
    } = start;
    // The server's name, and deaf to the signals schedulers send to every process group of a
    // job: it serves other runs' containers too, and ends when its mount is no longer used.
    crate::imagefs::become_server_process();
    // It outlives the run that started it: it must not hold the job's stdout/stderr open.
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    // Nothing else the run had open (a join keeper's socket, a scheduler's pipes, the job's
    // other descriptors) may stay open as long as the keeper lives.
    crate::container::close_other_fds(&[&[0, 1, 2], keep].concat());
    let log_path = dir.join(format!("{name}.log"));
    let idle = Duration::from_secs(plan.image_idle_secs);
    let mut ready = File::from(ready);
    // The run that forked this keeper waits until it is ready: its title and log come after.
    let mounted = match mount_image(plan) {
        Ok(m) => m,
        Err(e) => {
            let _log = crate::log::to_file(&log_path).ok();
            warn!("image keeper: cannot mount the image: {e}");
            let _ = write!(ready, "{e}");
            return 1;
        }
    };
    let Mounted { dev, at, userns } = mounted;
    let archive = std::sync::Arc::new(archive);
    let warmed = crate::imagefs::Warmed::default();
    let server = {
        let (archive, warmed) = (archive.clone(), warmed.clone());
        std::thread::spawn(move || crate::imagefs::serve(archive, dev, warmed))
    };
    // After the server: the runs' first requests wait for its start.
    crate::imagefs::warm(archive, crate::container::read_first(plan), &warmed);
    // Ready before the server's INIT: the run that forked this keeper attaches while the server
    // starts (its overlay mount waits for INIT). A server that cannot start ends this keeper
    // (the loop below) and fails the runs' mounts, which say so.
    let _ = ready.write_all(b"ok");
    drop(ready);
    let log = crate::log::to_file(&log_path).ok();
    // Found by this title (the SPANK plugin, `ps`).
    crate::imagefs::set_cmdline(
        format!(
            "{} keeper {}",
            crate::imagefs::PROCESS_NAME,
            plan.keeper_scope
        )
        .trim_end(),
        true,
    );
    info!(
        "image keeper {}: {} (scope '{}'), idle {} s",
        std::process::id(),
        plan.image.path.display(),
        plan.keeper_scope,
        idle.as_secs()
    );
    info!("image keeper: serving; waiting for runs");

    let lock_path = dir.join(format!("{name}.lock"));
    let sock_path = dir.join(format!("{name}.sock"));
    let mut last = Instant::now();
    let end = loop {
        if server.is_finished() {
            break "the image server stopped";
        }
        let left = idle.saturating_sub(last.elapsed());
        if left.is_zero() {
            // Close only under the image's lock: a run holding it is between connect and
            // answer, and gets its share first. A lock that is gone (the state directory was
            // removed) protects nobody: close.
            match File::options().read(true).write(true).open(&lock_path) {
                Ok(lock) => {
                    if sys::flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_ok() {
                        let _ = std::fs::remove_file(&sock_path);
                        drop(lock);
                        break "idle";
                    }
                }
                Err(_) => {
                    let _ = std::fs::remove_file(&sock_path);
                    break "idle";
                }
            }
        }
        let wait = left.clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if let Some(a) = &anchor {
            fds.push(PollFd::new(a.as_fd(), PollFlags::POLLIN));
        }
        let timeout = PollTimeout::try_from(wait.as_millis() as u64).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => {
                let step_over = fds
                    .get(1)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty());
                if step_over {
                    // No run of this step can come any more.
                    let _ = std::fs::remove_file(&sock_path);
                    break "idle";
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                warn!("image keeper: cannot wait for runs: {e}");
                let _ = std::fs::remove_file(&sock_path);
                break "poll failed";
            }
        }
        let Ok((conn, _)) = listener.accept() else {
            continue;
        };
        match answer(&conn, &userns, &at) {
            Ok(pid) => {
                last = Instant::now();
                debug!("image keeper: run {pid} attached");
            }
            Err(e) => debug!("image keeper: a connection went away: {e}"),
        }
    };
    drop(listener);
    // Our own copy goes now; the server serves the containers' clones until the last is gone
    // and the kernel ends the connection.
    let _ = umount2(&at, MntFlags::MNT_DETACH);
    drop(userns);
    info!("image keeper: closing ({end}); serving until the last container using it ends");
    let served = server.join();
    info!("image keeper: the image is no longer mounted anywhere: exiting");
    let clean = end == "idle" && matches!(served, Ok(Ok(())));
    if clean {
        drop(log);
        let _ = std::fs::remove_file(&log_path);
        0
    } else {
        1
    }
}

/// What the keeper holds once the image is mounted in its namespaces.
struct Mounted {
    /// The /dev/fuse connection, for the server.
    dev: OwnedFd,
    /// Where the image is mounted (in the keeper's mount namespace only).
    at: PathBuf,
    userns: File,
}

/// A user and mount namespace of the keeper's own (the user is uid 0 there, as in a run's outer
/// namespace), and the image mounted in it.
fn mount_image(plan: &Plan) -> Result<Mounted> {
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
        .ctx(|| "cannot create a user namespace (are unprivileged user namespaces enabled?)")?;
    crate::container::write_id_maps(0, plan.user.uid, 0, plan.user.gid)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .ctx(|| "cannot make the keeper's mounts private")?;
    let staging = plan.state_dir.join("mnt");
    mount(
        Some("berth"),
        &staging,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0700"),
    )
    .ctx(|| format!("cannot mount a tmpfs on {}", staging.display()))?;
    let at = staging.join("image");
    std::fs::create_dir(&at).ctx(|| format!("cannot create {}", at.display()))?;
    let dev = crate::container::mount_fuse(Path::new("berth"), &at)?;
    let userns = File::open("/proc/self/ns/user").ctx(|| "cannot open the user namespace")?;
    Ok(Mounted {
        dev: dev.into(),
        at,
        userns,
    })
}

/// Answer one connection: a clone of the mount and the user namespace. Returns the run's pid.
fn answer(conn: &UnixStream, userns: &File, at: &Path) -> Result<i32> {
    let peer = getsockopt(conn, sockopt::PeerCredentials).ctx(|| "cannot identify the caller")?;
    if peer.uid() != nix::unistd::getuid().as_raw() {
        return Err(Error::Image(format!(
            "uid {} is not the keeper's user",
            peer.uid()
        )));
    }
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = [0u8; 7];
    (&*conn)
        .read_exact(&mut line)
        .ctx(|| "no request from the run")?;
    if &line != b"attach\n" {
        return Err(Error::Image("an unknown request".into()));
    }
    let tree = sys::open_tree_clone(at, false).ctx(|| "cannot clone the image mount")?;
    let fds = [userns.as_raw_fd(), tree.as_raw_fd()];
    let text = format!("ok {}\n", std::process::id());
    sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(text.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .ctx(|| "cannot send the mount")?;
    Ok(peer.pid())
}

/// Remove what this node's killed keepers left in `<state>/keepers` (a scheduler kills a
/// step's keeper with SIGKILL when the step ends): sockets nobody listens on (a keeper binds
/// and listens in one step, so a refused connection means it is gone), and their logs unless a
/// warning in one says something went wrong before (those stay for the user until `berth
/// cache clean`, which passes `all_logs`). Returns what went.
pub fn sweep(state_dir: &Path, all_logs: bool) -> Vec<String> {
    let dir = state_dir.join("keepers");
    let ours = format!("{}-", node_prefix());
    let mut gone = Vec::new();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "sock")
            || !e.file_name().to_string_lossy().starts_with(&ours)
        {
            continue;
        }
        match UnixStream::connect(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                let _ = std::fs::remove_file(&path);
                gone.push(format!("dead image keeper socket {}", path.display()));
            }
            _ => continue,
        }
        let log = path.with_extension("log");
        let failed = std::fs::read_to_string(&log).is_ok_and(|t| t.contains(" WARN "));
        if (all_logs || !failed) && std::fs::remove_file(&log).is_ok() {
            gone.push(format!("image keeper log {}", log.display()));
        }
    }
    if all_logs {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            if e.file_name().to_string_lossy().starts_with(&ours)
                && path.extension().is_some_and(|x| x == "log")
                && !path.with_extension("sock").exists()
                && std::fs::remove_file(&path).is_ok()
            {
                gone.push(format!("image keeper log {}", path.display()));
            }
        }
    }
    gone
}
