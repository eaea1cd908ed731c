//! berth-imagefs: mount mode's FUSE server, a forked child of berth serving the image through
//! berth's own squashfs reader.
//!
//! berth mounts `fuse.berth` itself and hands this server the mounted `/dev/fuse` fd (see
//! `container::FuseServer`); fuser does the INIT handshake on it. The server asks for the kernel
//! options that let a warm mount answer from the kernel's caches: READDIRPLUS, CACHE_SYMLINKS,
//! PARALLEL_DIROPS, MAX_PAGES, ASYNC_READ; it answers OPEN and OPENDIR with ENOSYS (the kernel
//! then stops sending them and keeps the page cache), and every entry, negative entry and
//! attribute is valid "forever": the image never changes under a mount.
//!
//! A cold walk would make one READ round trip per small file: the first READ in a listed
//! directory instead has the small files listed after it pushed into the kernel's page cache
//! (FUSE_NOTIFY_STORE) by a thread of their own (see `Pending`).
//!
//! It is stateless: a FUSE node id is the squashfs inode reference (shifted so that it never
//! collides with the root's id 1), so FORGET is a no-op. fuser sends a node id as st_ino too,
//! so st_ino is that same number: stable for the image and shared by hard links.
//! A reader error is EIO and one log line; a panic in a request is EIO for that request.

use crate::squashfs::{Archive, Inode, InodeRef, Kind, SquashError};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use tracing::{debug, warn};

/// The decompressed-block cache of one server (a policy key later).
pub(crate) const BLOCK_CACHE_BYTES: usize = 64 << 20;

/// Threads reading requests: two overlap one cold read's decompression with the next request.
pub(crate) const THREADS: usize = 2;

/// The server's name in `ps`, /proc/PID/comm and /proc/PID/cmdline.
pub const PROCESS_NAME: &str = "berth-imagefs";

/// "Forever" for the kernel's caches: about 136 years (the kernel clamps it anyway).
const FOREVER: Duration = Duration::from_secs(u32::MAX as u64);

/// Node ids: the root is FUSE's 1; any other inode reference r is r + 2 (never 0 or 1).
const NODE_SHIFT: u64 = 2;

/// Readdir offsets: 1 is after ".", 2 after ".."; the reader's cookie c is c + 2.
const DOTS: u64 = 2;

/// Files up to this size are pushed into the kernel's page cache with their siblings.
const PUSH_FILE_MAX: u64 = 16 << 10;

/// At most this many bytes are pushed for one READ.
const PUSH_BUDGET: u64 = 1 << 20;

/// Listings remembered for pushing (the oldest are forgotten first).
const PUSH_LISTINGS: usize = 64;

/// Push jobs waiting for the pusher; more are dropped (the kernel READs those files).
const PUSH_QUEUE: usize = 64;

pub(crate) struct ImageFs {
    archive: Arc<Archive>,
    root: InodeRef,
    blksize: u32,
    pending: Mutex<Pending>,
    /// Files to push, for the pusher thread (see `push`).
    to_push: SyncSender<Push>,
    /// The files the warm thread decompressed ahead, pushed whole on their first READ.
    warmed: Warmed,
    /// The session's /dev/fuse (a duplicate), for READ replies spliced from the image file.
    dev: OwnedFd,
}

/// What the pusher stores in the kernel's page cache.
enum Push {
    /// Small files (node id, size), up to PUSH_BUDGET bytes.
    Small(Vec<(u64, u64)>),
    /// A file decompressed ahead (node id, size), up to WARM_FILE_MAX bytes.
    Whole(u64, u64),
}

/// The files decompressed ahead (node id, size) and not read yet.
pub(crate) type Warmed = Arc<Mutex<Vec<(u64, u64)>>>;

/// Small files of recently listed directories, not read yet. A cold walk reads every file of
/// a directory, each a FUSE round trip; so the first READ of one of them has the files
/// listed after it pushed into the kernel's page cache (FUSE_NOTIFY_STORE, see `push`)
/// without a round trip each. The image never changes, so a pushed page is never stale.
#[derive(Default)]
struct Pending {
    /// A file's node id -> (its listing's number, its place in the listing).
    files: HashMap<u64, (u64, usize)>,
    /// (number, the small files' node ids and sizes in listing order), oldest first.
    listings: VecDeque<(u64, Vec<(u64, u64)>)>,
    next: u64,
}

impl Pending {
    fn add(&mut self, files: Vec<(u64, u64)>) {
        if files.len() < 2 {
            return;
        }
        if self.listings.len() >= PUSH_LISTINGS {
            if let Some((_, old)) = self.listings.pop_front() {
                self.forget(&old);
            }
        }
        let number = self.next;
        self.next += 1;
        for (at, &(node, _)) in files.iter().enumerate() {
            self.files.insert(node, (number, at));
        }
        self.listings.push_back((number, files));
    }

    fn forget(&mut self, files: &[(u64, u64)]) {
        for (node, _) in files {
            self.files.remove(node);
        }
    }

    /// The files listed after `node`, if it was listed: they are then forgotten, so they are
    /// pushed once.
    fn take_after(&mut self, node: u64) -> Vec<(u64, u64)> {
        let Some((number, at)) = self.files.get(&node).copied() else {
            return Vec::new();
        };
        let Some(i) = self.listings.iter().position(|(n, _)| *n == number) else {
            return Vec::new();
        };
        let Some((_, files)) = self.listings.remove(i) else {
            return Vec::new();
        };
        self.forget(&files);
        files.into_iter().skip(at + 1).collect()
    }
}

thread_local! {
    /// One read buffer per server thread, reused: no allocation per READ.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Serve `archive` on `dev`, a /dev/fuse fd already mounted, until the mount goes away.
pub(crate) fn serve(archive: Arc<Archive>, dev: OwnedFd, warmed: Warmed) -> std::io::Result<()> {
    let mut config = fuser::Config::default();
    // The kernel decides who may look (allow_other, the container's user namespace); fuser's
    // own owner check would refuse the container's uids.
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(THREADS);
    let root = archive.root();
    let blksize = archive.block_size().clamp(4096, 1 << 20);
    let (to_push, jobs) = sync_channel(PUSH_QUEUE);
    let reply_dev = dev.try_clone()?;
    let fs = ImageFs {
        archive: archive.clone(),
        root,
        blksize,
        pending: Mutex::default(),
        to_push,
        warmed,
        dev: reply_dev,
    };
    let session = fuser::Session::from_fd(fs, dev, fuser::SessionACL::All, config)?;
    let notifier = session.notifier();
    // It ends when the session drops the sender (or at the process's exit).
    std::thread::Builder::new()
        .name("imagefs-push".into())
        .spawn(move || push(&archive, &notifier, &jobs))?;
    session.run()
}

/// Files nearly every command of a glibc or musl image reads as it starts: the dynamic loader,
/// its cache and the C library (absolute, in the image; symlinks are followed).
#[cfg(target_arch = "x86_64")]
const LOADER_FILES: &[&str] = &[
    "/lib64/ld-linux-x86-64.so.2",
    "/etc/ld.so.cache",
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib64/libc.so.6",
    "/lib/ld-musl-x86_64.so.1",
];
#[cfg(target_arch = "aarch64")]
const LOADER_FILES: &[&str] = &[
    "/lib/ld-linux-aarch64.so.1",
    "/etc/ld.so.cache",
    "/lib/aarch64-linux-gnu/libc.so.6",
    "/lib64/libc.so.6",
    "/lib/ld-musl-aarch64.so.1",
];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const LOADER_FILES: &[&str] = &["/etc/ld.so.cache"];

/// At most this many bytes of one file are decompressed ahead.
const WARM_FILE_MAX: u64 = 4 << 20;

/// Decompress `first` (the image files berth itself reads as it builds the container, absolute)
/// and then the loader's files into the block cache, in a thread of their own, while berth
/// builds the container: a fresh mount's first run would otherwise wait on each of their
/// blocks in turn, one READ at a time. Best effort.
pub(crate) fn warm(archive: Arc<Archive>, first: Vec<std::path::PathBuf>, warmed: &Warmed) {
    let done = warmed.clone();
    let started = std::thread::Builder::new()
        .name("imagefs-warm".into())
        .spawn(move || {
            // The paths first: a lookup holds a metadata block's cache slot while it
            // decompresses it, and a request for that block waits on it.
            let loader = LOADER_FILES.iter().map(std::path::Path::new);
            let mut files: Vec<(&std::path::Path, Inode)> = Vec::new();
            for path in first.iter().map(|p| p.as_path()).chain(loader) {
                let Ok(Some(inode)) = archive.resolve(path.as_os_str().as_bytes()) else {
                    continue;
                };
                if inode.kind == Kind::File
                    && files.iter().all(|(_, f)| f.reference != inode.reference)
                {
                    files.push((path, inode));
                }
            }
            // The data: behind the requests and berth's own work when they need the CPU (a
            // request never waits on a block this decompresses).
            // SAFETY: setpriority takes no pointers; who 0 is this thread.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
            for (path, inode) in files {
                if let Err(e) = archive.preload(&inode, WARM_FILE_MAX) {
                    debug!("imagefs: cannot preload {}: {e}", path.display());
                    continue;
                }
                let node = inode.reference.checked_add(NODE_SHIFT);
                if let Some(node) = node.filter(|_| inode.size > PUSH_FILE_MAX) {
                    lock(&done).push((node, inode.size));
                }
            }
        });
    if let Err(e) = started {
        debug!("imagefs: no preload thread: {e}");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Make the forked child a server process: its name, signals and allocator. Call it first.
pub(crate) fn become_server_process() {
    let _ = nix::sys::prctl::set_name(c"berth-imagefs");
    // SAFETY: mallopt only sets a threshold of glibc's allocator, called before this process
    // starts a thread; signal() installs SIG_IGN only, so no handler code can run.
    unsafe {
        // fuser zeroes a 16 MiB buffer per thread: keep glibc from moving its mmap threshold
        // up (it does after a large free), or each buffer is memset from the heap.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        // Schedulers signal every process group of a job (OpenLava's bkill -s, Slurm's
        // scancel -s): the server serves the job's files until its mount goes away, whatever
        // the job is told.
        for sig in [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGTERM,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPIPE,
            libc::SIGALRM,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    set_cmdline(PROCESS_NAME, true);
    // A panic is one request's EIO (see `guard`); say so in the log, not on the job's stderr.
    std::panic::set_hook(Box::new(|info| warn!("imagefs: {info}")));
}

/// Overwrite this process's argument area (as setproctitle does), so /proc/PID/cmdline shows
/// the server rather than the berth command line it was forked from. With `env_too`, a name
/// longer than the arguments runs on into the environment strings after them (the kernel shows
/// them when the argument area's last NUL is overwritten): for a process forked from one with a
/// short command line (slurmstepd), which reads neither its arguments nor its environment after.
pub(crate) fn set_cmdline(name: &str, env_too: bool) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command's closing parenthesis start at field 3; arg_start, arg_end,
    // env_start and env_end are fields 48 to 51.
    let fields: Vec<usize> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    let (Some(&start), Some(&arg_end), Some(&env_start), Some(&env_end)) = (
        fields.get(45),
        fields.get(46),
        fields.get(47),
        fields.get(48),
    ) else {
        return;
    };
    // The name and its NUL, in the arguments or, with `env_too`, in the environment that
    // directly follows them.
    let end = if arg_end > start + name.len() {
        arg_end
    } else if env_too && env_start == arg_end && env_end > start + name.len() {
        start + name.len() + 1
    } else {
        return;
    };
    // SAFETY: [start, end) is this process's own argument (and environment) strings, writable
    // stack memory the kernel set up; only std::env reads it again, and the caller no longer
    // does.
    unsafe {
        let area = std::slice::from_raw_parts_mut(start as *mut u8, end - start);
        // The name first, then the rest cleared: a reader of /proc/PID/cmdline in between
        // sees the name with the old tail, never an empty command line.
        area[..name.len()].copy_from_slice(name.as_bytes());
        area[name.len()..].fill(0);
    }
}

/// The pusher thread: stores each job's files in the kernel's page cache, small files up to
/// PUSH_BUDGET bytes a job. Not a request thread: a store waits for a page a READ in flight has
/// locked, and that READ must find a request thread free. The kernel made the files' inodes
/// when it took their listing, or it READ them; it ignores one it has dropped since. Best
/// effort: an error ends the job, and the kernel READs what was not pushed.
fn push(archive: &Archive, notifier: &fuser::Notifier, jobs: &Receiver<Push>) {
    let mut buf = Vec::new();
    while let Ok(job) = jobs.recv() {
        let (files, budget, chunk) = match job {
            Push::Small(files) => (files, PUSH_BUDGET, PUSH_FILE_MAX),
            Push::Whole(node, size) => (
                vec![(node, size.min(WARM_FILE_MAX))],
                WARM_FILE_MAX,
                WARM_FILE_MAX,
            ),
        };
        // Whole files go in block-sized pieces, each a copy out of the block cache.
        let chunk = chunk.min(u64::from(archive.block_size())) as usize;
        buf.resize(chunk.max(buf.len()), 0);
        let mut budget = budget;
        'files: for (node, size) in files {
            let Some(left) = budget.checked_sub(size) else {
                break;
            };
            budget = left;
            let Some(inode) = node
                .checked_sub(NODE_SHIFT)
                .and_then(|r| archive.inode(r).ok())
            else {
                break;
            };
            let mut at = 0;
            while at < size {
                let piece = buf.get_mut(..chunk).unwrap_or_default();
                let Ok(n) = archive.read_into(&inode, at, piece) else {
                    break 'files;
                };
                if n == 0 {
                    break;
                }
                let data = piece.get(..n).unwrap_or_default();
                if let Err(e) = notifier.store(INodeNo(node), at, data) {
                    debug!("imagefs: cannot push node {node:#x}: {e}");
                    break 'files;
                }
                at += n as u64;
            }
        }
    }
}

thread_local! {
    /// One pipe per server thread for spliced READ replies (see `splice_reply`).
    static REPLY_PIPE: RefCell<Option<ReplyPipe>> = const { RefCell::new(None) };
}

struct ReplyPipe {
    read: OwnedFd,
    write: OwnedFd,
    /// How many buffers (pages) it holds.
    slots: usize,
}

/// The pipe size asked for: room for the kernel's 128 KiB readahead READs (larger READs take
/// the usual path). Pipes count against the user's pipe-user-pages-soft (64 MiB), which the
/// user's own programs share, so not the 1 MiB an unprivileged process may ask for.
const REPLY_PIPE_BYTES: i32 = 256 << 10;

/// Answers READ `unique` with the image file's bytes `pos..pos + len`, spliced through a pipe:
/// the kernel copies them once, from the image file's page cache into the FUSE file's, where
/// a read into a buffer and a write to /dev/fuse copy them twice (uncompressed blocks only, as
/// `Archive::stored_range` finds them). True when the reply went to the kernel (or the kernel
/// dropped the request meanwhile); false when nothing was sent, and the caller answers the
/// usual way.
fn splice_reply(dev: BorrowedFd, image: BorrowedFd, unique: u64, pos: u64, len: usize) -> bool {
    use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
    REPLY_PIPE.with_borrow_mut(|slot| {
        if slot.is_none() {
            let Ok((read, write)) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK) else {
                return false;
            };
            let _ = fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(REPLY_PIPE_BYTES));
            let bytes = fcntl(write.as_raw_fd(), FcntlArg::F_GETPIPE_SZ).unwrap_or(0);
            let slots = usize::try_from(bytes).unwrap_or(0) / 4096;
            *slot = Some(ReplyPipe { read, write, slots });
        }
        let Some(pipe) = slot.as_ref() else {
            return false;
        };
        // The header's buffer, and a page more at each end for an unaligned start.
        let total = len + 16;
        let (Ok(total32), true) = (u32::try_from(total), len / 4096 + 3 <= pipe.slots) else {
            return false;
        };
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&total32.to_le_bytes());
        header[8..].copy_from_slice(&unique.to_le_bytes());
        let mut filled = matches!(nix::unistd::write(&pipe.write, &header), Ok(16));
        let mut at = i64::try_from(pos).unwrap_or(i64::MAX);
        let mut moved = 0;
        let mut unsupported = false;
        while filled && moved < len {
            let step = splice(
                image,
                Some(&mut at),
                &pipe.write,
                None,
                len - moved,
                SpliceFFlags::SPLICE_F_NONBLOCK,
            );
            match step {
                Ok(n) if n > 0 => moved += n,
                Err(nix::errno::Errno::EINVAL) => (filled, unsupported) = (false, true),
                _ => filled = false,
            }
        }
        if unsupported {
            // The image's file system cannot splice: this thread stops trying.
            debug!("imagefs: the image file cannot be spliced; READs are copied");
            if let Some(pipe) = slot.as_mut() {
                pipe.slots = 0;
            }
            return false;
        }
        if !filled {
            // A truncated image, or a full pipe: this pipe holds a partial reply.
            *slot = None;
            return false;
        }
        match splice(&pipe.read, None, dev, None, total, SpliceFFlags::empty()) {
            Ok(_) | Err(nix::errno::Errno::ENOENT) => true,
            Err(e) => {
                debug!("imagefs: spliced reply refused: {e}");
                *slot = None;
                false
            }
        }
    })
}

/// Run one request's handler; a panic in it is logged, and its reply (dropped while unwinding)
/// goes to the kernel as EIO. The server goes on.
fn guard(what: &str, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        warn!("imagefs: {what} panicked: answered EIO");
    }
}

fn eio(what: &str, node: INodeNo, e: SquashError) -> Errno {
    warn!("imagefs: {what} of node {:#x}: {e}", node.0);
    Errno::EIO
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::BlockDev => FileType::BlockDevice,
        Kind::CharDev => FileType::CharDevice,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
    }
}

impl ImageFs {
    fn node(&self, r: InodeRef) -> Option<INodeNo> {
        if r == self.root {
            return Some(INodeNo::ROOT);
        }
        r.checked_add(NODE_SHIFT).map(INodeNo)
    }

    fn reference(&self, node: INodeNo) -> Option<InodeRef> {
        match node.0 {
            1 => Some(self.root),
            n => n.checked_sub(NODE_SHIFT),
        }
    }

    /// The inode behind a node id the kernel sent.
    fn inode(&self, what: &str, node: INodeNo) -> Result<Inode, Errno> {
        let r = self.reference(node).ok_or(Errno::EIO)?;
        self.archive.inode(r).map_err(|e| eio(what, node, e))
    }

    fn attr(&self, node: INodeNo, inode: &Inode) -> FileAttr {
        let time = UNIX_EPOCH + Duration::from_secs(inode.mtime.into());
        FileAttr {
            ino: node,
            size: inode.size,
            blocks: inode.size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind: file_type(inode.kind),
            perm: inode.mode & 0o7777,
            nlink: inode.nlink,
            // Every file is the mounting user's (uid 0 of the namespace that mounted it, which
            // maps to them), as in extract mode, where unsquashfs unpacks them as the user. The
            // image's other owners (group shadow, _apt) have no mapping in a user namespace: as
            // the overflow id their files could not be copied up into a writable overlay, so a
            // fake-root package manager could not rewrite /etc/gshadow.
            uid: 0,
            gid: 0,
            // squashfs and FUSE both carry the kernel's new_encode_dev() form: no conversion.
            rdev: inode.rdev,
            blksize: self.blksize,
            flags: 0,
        }
    }

    fn lookup_entry(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let dir = self.inode("lookup", parent)?;
        if dir.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        match self.archive.lookup(&dir, name.as_bytes()) {
            Ok(Some(r)) => {
                let node = self.node(r).ok_or(Errno::EIO)?;
                let inode = self.inode("lookup", node)?;
                Ok(self.attr(node, &inode))
            }
            // Node id 0 is a negative entry the kernel caches for the entry's time.
            Ok(None) => Ok(FileAttr {
                ino: INodeNo(0),
                ..self.attr(parent, &dir)
            }),
            Err(e) => Err(eio("lookup", parent, e)),
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        lock(&self.pending)
    }

    /// After a READ of `node` (`size` bytes) was answered, either way: push what the next
    /// reads will want.
    fn after_read(&self, node: INodeNo, size: u64) {
        if size <= PUSH_FILE_MAX {
            self.push_siblings(node);
        } else {
            self.push_warmed(node);
        }
    }

    /// After a READ of the small file `node`: have the small files listed after it pushed.
    fn push_siblings(&self, node: INodeNo) {
        let files = self.lock_pending().take_after(node.0);
        if !files.is_empty() {
            let _ = self.to_push.try_send(Push::Small(files));
        }
    }

    /// After the first READ of a file decompressed ahead: have all of it pushed, so the
    /// loader's page faults on it find the kernel's page cache filled.
    fn push_warmed(&self, node: INodeNo) {
        let found = {
            let mut warmed = lock(&self.warmed);
            let at = warmed.iter().position(|&(n, _)| n == node.0);
            at.map(|i| warmed.swap_remove(i))
        };
        if let Some((node, size)) = found {
            let _ = self.to_push.try_send(Push::Whole(node, size));
        }
    }

    /// Fill a READDIR(PLUS) reply from `offset`: `add` returns true when the reply is full.
    fn list(
        &self,
        node: INodeNo,
        offset: u64,
        add: &mut dyn FnMut(INodeNo, u64, &OsStr, &FileAttr) -> bool,
    ) -> Result<(), Errno> {
        let dir = self.inode("readdir", node)?;
        if dir.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let own = self.attr(node, &dir);
        // "." and "..": the kernel does not make them for FUSE. ".." shows the directory's
        // own attributes (the reader has no parent reference; the kernel ignores them).
        for (at, name) in [(0, "."), (1, "..")] {
            if offset <= at && add(node, at + 1, OsStr::new(name), &own) {
                return Ok(());
            }
        }
        let mut failed = None;
        let cookie = offset.saturating_sub(DOTS);
        let walked = self.archive.read_dir(&dir, cookie, &mut |entry| {
            let (Some(child), Some(next)) =
                (self.node(entry.inode), entry.cookie.checked_add(DOTS))
            else {
                failed = Some(Errno::EIO);
                return false;
            };
            let attr = FileAttr {
                kind: file_type(entry.kind),
                ..own
            };
            !add(child, next, OsStr::from_bytes(entry.name), &attr)
        });
        walked.map_err(|e| eio("readdir", node, e))?;
        failed.map_or(Ok(()), Err)
    }
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let offered = config.capabilities();
        let wanted = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_NO_OPEN_SUPPORT
            | InitFlags::FUSE_NO_OPENDIR_SUPPORT;
        // An older kernel lacks some: serve without them.
        let _ = config.add_capabilities(wanted & offered);
        debug!(
            "imagefs: init: kernel ABI {}; enabled {:?}; not offered {:?}",
            config.kernel_abi(),
            wanted & offered,
            wanted - offered
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guard("lookup", || match self.lookup_entry(parent, name) {
            Ok(attr) => reply.entry(&FOREVER, &attr, Generation(0)),
            Err(e) => reply.error(e),
        })
    }

    fn getattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: Option<FileHandle>,
        reply: fuser::ReplyAttr,
    ) {
        guard("getattr", || match self.inode("getattr", ino) {
            Ok(inode) => reply.attr(&FOREVER, &self.attr(ino, &inode)),
            Err(e) => reply.error(e),
        })
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guard("readlink", || {
            let target = self.inode("readlink", ino).and_then(|inode| {
                if inode.kind != Kind::Symlink {
                    return Err(Errno::EINVAL);
                }
                self.archive
                    .read_link(&inode)
                    .map_err(|e| eio("readlink", ino, e))
            });
            match target {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(e),
            }
        })
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No-open: the kernel stops asking and keeps the page cache across opens.
        reply.error(Errno::ENOSYS)
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS)
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guard("read", || {
            let inode = match self.inode("read", ino) {
                Ok(i) if i.kind == Kind::File => i,
                Ok(i) if i.kind == Kind::Dir => return reply.error(Errno::EISDIR),
                Ok(_) => return reply.error(Errno::EINVAL),
                Err(e) => return reply.error(e),
            };
            let stored = self.archive.stored_range(&inode, offset, u64::from(size));
            if let Ok(Some((pos, len))) = stored {
                let image = self.archive.image_file().as_fd();
                if splice_reply(self.dev.as_fd(), image, req.unique().0, pos, len as usize) {
                    // Answered by hand (fuser has no spliced reply). Dropping fuser's reply
                    // would send a second one (EIO); it holds only the channel's Arc, so
                    // forgetting it costs a reference count, no memory.
                    std::mem::forget(reply);
                    return self.after_read(ino, inode.size);
                }
            }
            READ_BUF.with_borrow_mut(|buf| {
                // Grown (and zeroed) once per thread, never cleared: a READ writes only the
                // bytes it returns, so no request pays for zeroing its reply.
                // The kernel bounds `size` by the max_pages of INIT (1 MiB by default).
                let size = size as usize;
                if buf.len() < size {
                    buf.resize(size, 0);
                }
                let dst = buf.get_mut(..size).unwrap_or_default();
                match self.archive.read_into(&inode, offset, dst) {
                    Ok(n) => reply.data(dst.get(..n).unwrap_or_default()),
                    Err(e) => return reply.error(eio("read", ino, e)),
                }
                self.after_read(ino, inode.size);
            })
        })
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        guard("readdir", || {
            match self.list(ino, offset, &mut |node, next, name, attr| {
                reply.add(node, next, attr.kind, name)
            }) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        })
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        guard("readdirplus", || {
            let mut failed = None;
            let mut small = Vec::new();
            let listed = self.list(ino, offset, &mut |node, next, name, attr| {
                // "." and ".." carry the directory's own attributes; others their own.
                let attr = if node == ino {
                    *attr
                } else {
                    match self.inode("readdirplus", node) {
                        Ok(inode) => self.attr(node, &inode),
                        Err(e) => {
                            failed = Some(e);
                            return true;
                        }
                    }
                };
                let full = reply.add(node, next, name, &FOREVER, &attr, Generation(0));
                if !full && attr.kind == FileType::RegularFile && attr.size <= PUSH_FILE_MAX {
                    small.push((node.0, attr.size));
                }
                full
            });
            match listed.and_then(|()| failed.map_or(Ok(()), Err)) {
                Ok(()) => {
                    self.lock_pending().add(small);
                    reply.ok()
                }
                Err(e) => reply.error(e),
            }
        })
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guard("statfs", || {
            let bsize = self.archive.block_size().max(1);
            reply.statfs(
                self.archive.bytes_used().div_ceil(bsize.into()),
                0,
                0,
                self.archive.inode_count().into(),
                0,
                bsize,
                256,
                bsize,
            )
        })
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // xattrs are ignored: ENOSYS once, and the kernel answers EOPNOTSUPP itself after.
        reply.error(Errno::ENOSYS)
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_takes_the_files_listed_after_it_once() {
        let mut p = Pending::default();
        p.add(vec![(10, 1), (11, 2), (12, 3)]);
        assert_eq!(p.take_after(11), vec![(12, 3)]);
        // The listing is gone: each file is pushed at most once.
        assert!(p.take_after(10).is_empty());
        assert!(p.files.is_empty() && p.listings.is_empty());
        // A lone file has no siblings to push.
        p.add(vec![(20, 1)]);
        assert!(p.take_after(20).is_empty());
    }

    #[test]
    fn old_listings_are_forgotten() {
        let mut p = Pending::default();
        for d in 0..PUSH_LISTINGS as u64 + 5 {
            p.add(vec![(d * 10, 1), (d * 10 + 1, 1)]);
        }
        assert_eq!(p.listings.len(), PUSH_LISTINGS);
        assert_eq!(p.files.len(), 2 * PUSH_LISTINGS);
        assert!(p.take_after(0).is_empty());
        let last = (PUSH_LISTINGS as u64 + 4) * 10;
        assert_eq!(p.take_after(last), vec![(last + 1, 1)]);
    }
}
