//! The per-run image server of mount mode: berth-imagefs forked before the namespaces exist,
//! handed /dev/fuse once berth has mounted it.

use crate::error::{Context, Error, Result};
use nix::mount::{mount, MsFlags};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Open /dev/fuse and mount it read-only on `at` as `source` (berth's image file system, for a
/// server given the returned connection). Done in the user namespace that owns the mount:
/// berth holds CAP_SYS_ADMIN there, so no fusermount and no privilege.
pub(crate) fn mount_fuse(source: &Path, at: &Path) -> Result<File> {
    let dev = File::options().read(true).write(true).open("/dev/fuse").map_err(|e| {
        Error::Image(format!(
            "cannot open /dev/fuse ({e}): mount mode needs /dev/fuse mode 0666 (ask the admin) or use --mode extract"
        ))
    })?;
    let opts = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
        dev.as_raw_fd()
    );
    mount(
        Some(source),
        at,
        Some("fuse.berth"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .ctx(|| "cannot mount FUSE")?;
    Ok(dev)
}

/// If the image server has died, say so with its exit status: that is the real cause.
pub(super) fn fuse_failure(fuse: &mut Option<FuseServer>) -> Option<Error> {
    let server = fuse.as_mut()?;
    match server.try_wait() {
        Ok(Some(status)) => Some(Error::Image(format!(
            "the image server (berth-imagefs) could not serve the image ({status}); check the image with unsquashfs -s or use --mode extract"
        ))),
        _ => None,
    }
}

/// The image server of a mount-mode container: berth-imagefs ([`crate::imagefs`]), forked.
///
/// It is forked before the namespaces exist, so it lives in the host's namespaces and holds no
/// reference to the container's: it then lives exactly as long as the FUSE mount, which goes
/// with the container's last process (the kernel ends the connection, the server exits). So a
/// killed keeper leaves its ranks their image, and a command's background processes keep
/// theirs. It waits on a socket pair until berth has mounted FUSE and sends it the /dev/fuse fd
/// (berth holds CAP_SYS_ADMIN in the new namespace; no fusermount, no privilege). It runs in a
/// process group of its own and ignores the signals schedulers send to a job's groups: the
/// command may handle them and still need its files.
pub struct FuseServer {
    pid: nix::unistd::Pid,
    status: Option<std::process::ExitStatus>,
    /// Where the /dev/fuse fd is sent once mounted; closed unsent, the server exits.
    channel: Option<UnixStream>,
}

impl FuseServer {
    /// Open the image's squashfs (here, so a corrupt or unsupported image is one line before
    /// anything is mounted) and fork the server that will serve it.
    /// `warm`: the image files to decompress ahead (see [`crate::imagefs::warm`]).
    pub(super) fn fork(
        image: &File,
        offset: u64,
        path: &Path,
        warm: Vec<PathBuf>,
    ) -> Result<FuseServer> {
        let file = image
            .try_clone()
            .ctx(|| "cannot duplicate the image's descriptor")?;
        // The server keeps this descriptor, and only this one, of berth's.
        let image_fd = file.as_raw_fd();
        let archive =
            crate::squashfs::Archive::open(file, offset, crate::imagefs::BLOCK_CACHE_BYTES)
                .map_err(|e| {
                    Error::Image(format!(
                        "cannot serve {}: {e}; check it with unsquashfs -s or use --mode extract",
                        path.display()
                    ))
                })?;
        let null = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .ctx(|| "cannot open /dev/null")?;
        let (ours, theirs) = UnixStream::pair().ctx(|| "cannot make a socket pair")?;
        // SAFETY: the caller is single-threaded (see `build`), so the child may allocate and
        // start threads; it ends in _exit, never returning into the caller.
        match unsafe { nix::unistd::fork() }.ctx(|| "cannot fork the FUSE server")? {
            nix::unistd::ForkResult::Child => {
                let me = nix::unistd::Pid::from_raw(0);
                let _ = nix::unistd::setpgid(me, me);
                crate::imagefs::become_server_process();
                drop(ours);
                let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
                let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
                // Nothing else berth had open (a keeper's socket, a scheduler's pipe, the
                // job's other descriptors) may stay open for as long as the mount lives.
                close_other_fds(&[0, 1, 2, theirs.as_raw_fd(), image_fd]);
                // The loader and libc are decompressed while berth builds the container.
                let archive = std::sync::Arc::new(archive);
                let warmed = crate::imagefs::Warmed::default();
                crate::imagefs::warm(archive.clone(), warm, &warmed);
                // /dev/fuse must be opened in the namespace that mounts it: berth sends it.
                let dev_fd = receive_fd(&theirs);
                let Some(dev_fd) = dev_fd else {
                    // SAFETY: _exit runs none of the forking berth's destructors or atexit.
                    unsafe { libc::_exit(0) }
                };
                drop(theirs);
                // SAFETY: the fd just received is this process's own.
                let dev = unsafe { OwnedFd::from_raw_fd(dev_fd) };
                let code = match crate::imagefs::serve(archive, dev, warmed) {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::warn!("imagefs: the server stopped: {e}");
                        1
                    }
                };
                // SAFETY: as above.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => Ok(FuseServer {
                pid: child,
                status: None,
                channel: Some(ours),
            }),
        }
    }

    /// Mount the image (in the new namespace) on `at` and hand the server its /dev/fuse fd.
    pub(super) fn mount_and_start(&mut self, image_path: &Path, at: &str) -> Result<()> {
        let dev = mount_fuse(image_path, Path::new(at))?;
        if let Some(channel) = self.channel.take() {
            let fds = [dev.as_raw_fd()];
            nix::sys::socket::sendmsg::<()>(
                channel.as_raw_fd(),
                &[std::io::IoSlice::new(b"g")],
                &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
                nix::sys::socket::MsgFlags::empty(),
                None,
            )
            .ctx(|| "cannot start the FUSE server")?;
        }
        Ok(())
    }

    pub fn id(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.reap(libc::WNOHANG)
    }

    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.reap(0)
            .map(|s| s.unwrap_or(std::os::unix::process::ExitStatusExt::from_raw(0)))
    }

    pub fn kill(&mut self) -> std::io::Result<()> {
        if self.status.is_none() {
            nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL)?;
        }
        Ok(())
    }

    fn reap(&mut self, flags: libc::c_int) -> std::io::Result<Option<std::process::ExitStatus>> {
        if self.status.is_none() {
            let mut raw = 0;
            // SAFETY: `raw` is a live int the kernel writes; `pid` is this server's own child,
            // not yet reaped (`status` is None).
            let got = unsafe { libc::waitpid(self.pid.as_raw(), &mut raw, flags) };
            if got < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if got > 0 {
                self.status = Some(std::os::unix::process::ExitStatusExt::from_raw(raw));
            }
        }
        Ok(self.status)
    }
}

impl Drop for FuseServer {
    /// Not started (the build failed before the mount): the server exits on the closed pipe.
    fn drop(&mut self) {
        if self.channel.take().is_some() {
            let _ = self.wait();
        }
    }
}

/// The one descriptor sent over `socket` (SCM_RIGHTS), or None if it closed unsent.
fn receive_fd(socket: &UnixStream) -> Option<RawFd> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = nix::sys::socket::recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .ok()?;
    msg.cmsgs().ok()?.find_map(|c| match c {
        nix::sys::socket::ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
        _ => None,
    })
}

/// Close every descriptor but `keep` (in a forked child that does not exec).
pub(crate) fn close_other_fds(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .collect();
    keep.sort_unstable();
    let mut from = 0u32;
    for fd in keep {
        if fd > from {
            // SAFETY: called only in a forked child that never returns to its caller's frames
            // (it ends in _exit), so no object that owned a closed descriptor uses it again.
            unsafe { libc::close_range(from, fd - 1, 0) };
        }
        from = from.max(fd + 1);
    }
    // SAFETY: as above.
    unsafe { libc::close_range(from, u32::MAX, 0) };
}
