//! Assemble: the layers of a plan merged into one squashfs image, plus `/.berth/image.json`.
//!
//! Streamed (the default): the layers' tar headers are read first (in parallel, digests
//! verified) and merged in memory ([`crate::merge`]); a second read of each layer then streams
//! the data of the entries that survive, as one tar stream, into `tar2sqfs`, which compresses
//! on every core. No temporary tree: the disk holds the layer cache and the output.
//!
//! Unpacked (`--assemble=unpack`, and when tar2sqfs is not installed): the layers applied into
//! a temp rootfs next to the output, then mksquashfs.

use crate::cleanup::{cancelled, TempGuard};
use crate::fetch::{layer_entries, read_layer, Layer, Loc};
use crate::import::{mib, short, LayerSummary, Options, Plan, Summary, MKSQUASHFS_MEM};
use crate::merge::{Data, Node, Tree};
use crate::progress::Progress;
use crate::unpack::Unpacker;
use berth_image_config::CONFIG_PATH;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How the image is put together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Method {
    /// Layers streamed into tar2sqfs; no temporary tree.
    #[default]
    Stream,
    /// Layers unpacked into a temporary tree, then mksquashfs (the old way).
    Unpack,
}

/// The file in a work directory whose lock its live import holds.
const OWNER_LOCK: &str = ".owner";

/// Raw flock, not nix's `Flock` (which would own the file): the owner lock lives as long as
/// its open file does.
fn flock(f: &File, how: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock takes no pointers; `f` is borrowed, so its fd is open for the call.
    if unsafe { libc::flock(f.as_raw_fd(), how) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Make the private work directory and lock its owner file for the import's life: a directory
/// whose lock nobody holds was left by a killed import (see [`sweep_stale_temps`]).
pub(crate) fn make_work_dir(work_path: &Path) -> Result<(TempGuard, File), String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let work = TempGuard::new(work_path.to_path_buf());
    let cant = |e: io::Error| format!("cannot create {}: {e}", work_path.display());
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(work.path())
        .map_err(cant)?;
    let owner = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(work.path().join(OWNER_LOCK))
        .map_err(cant)?;
    flock(&owner, libc::LOCK_EX | libc::LOCK_NB).map_err(cant)?;
    Ok((work, owner))
}

/// Remove the work directories of killed imports next to this one's (`.NAME.berth-tmp-PID-…`,
/// for any output name): ours (by owner) whose owner lock nobody holds. One without the lock
/// file is from an import that died before making it (or from an older berth-image): stale
/// when its pid is gone. Other users' directories are theirs to remove.
pub(crate) fn sweep_stale_temps(work_path: &Path) {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let Some(dir) = work_path.parent() else {
        return;
    };
    let me = nix::unistd::getuid().as_raw();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `PID-RANDOM-HOST`, or only `PID` (older berth-image).
        let Some((pid, host)) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(".berth-tmp-"))
            .and_then(|(_, rest)| {
                let (pid, host) = match rest.split_once('-') {
                    Some((pid, r)) => (pid, r.split_once('-').map(|(_, h)| h)),
                    None => (rest, None),
                };
                Some((pid.parse::<i32>().ok()?, host))
            })
        else {
            continue;
        };
        let path = e.path();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() && m.uid() == me => {}
            _ => continue,
        }
        let lock = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path.join(OWNER_LOCK));
        // The lock stays held (by `lock`) while the directory goes.
        let stale = match &lock {
            Ok(f) => flock(f, libc::LOCK_EX | libc::LOCK_NB).is_ok(),
            // Without the lock file, only a pid of this host can be looked up.
            Err(_) => {
                host.is_none_or(|h| h == crate::store::hostname())
                    && matches!(
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                        Err(nix::errno::Errno::ESRCH)
                    )
            }
        };
        if stale {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// The old way: every layer applied into a temp rootfs next to the output, then mksquashfs.
fn assemble_unpacked(
    opts: &Options,
    progress: &Progress,
    mut plan: Plan,
    work_path: &Path,
    comp: &str,
    level: Option<u32>,
) -> Result<Summary, String> {
    // The old way stays as it was: it reads the blobs, neither reading nor making decoded
    // copies, so that it remains the baseline the streamed import is measured against.
    for layer in &mut plan.layers {
        layer.diff_id = None;
    }
    let (work, _owner) = make_work_dir(work_path)?;
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(&rootfs)
        .map_err(|e| format!("cannot create {}: {e}", rootfs.display()))?;
    let mut unpacker = Unpacker::new(&rootfs)?;
    unpacker.set_max_size(opts.max_size);
    let mut summaries = Vec::new();
    let n = plan.layers.len();
    let bytes: u64 = plan.layers.iter().map(|l| l.size).sum();
    let bar = progress.unpack(bytes);
    let started = std::time::Instant::now();
    for (i, layer) in plan.layers.iter().enumerate() {
        if cancelled() {
            return Err("interrupted".into());
        }
        let what = format!(
            "layer {}/{n} {} ({})",
            i + 1,
            short(&layer.digest),
            mib(layer.size)
        );
        progress.plain_line(&format!("applying {what}"));
        bar.set_message(what);
        let stats = read_layer(layer, &bar, |r| unpacker.apply(r, &cancelled));
        let stats = stats.inspect_err(|_| bar.abandon())?;
        summaries.push(LayerSummary {
            digest: layer.digest.clone(),
            size: layer.size,
            cached: layer.cached,
            entries: stats.entries,
        });
    }
    bar.finish_and_clear();
    if !bar.is_hidden() {
        progress.line(&format!(
            "unpacked {n} layer{} ({}, {} entries) in {}",
            if n == 1 { "" } else { "s" },
            mib(bytes),
            summaries.iter().map(|s| s.entries).sum::<u64>(),
            indicatif::HumanDuration(started.elapsed())
        ));
    }
    unpacker.write_file(Path::new(CONFIG_PATH), plan.config.to_json().as_bytes())?;
    let warnings = std::mem::take(&mut unpacker.warnings);
    print_warnings(opts, &warnings);
    drop(unpacker);
    let size = mksquashfs(opts, progress, &rootfs, &[], work.path(), comp, level)?;
    Ok(Summary::built(
        opts,
        size,
        plan.manifest_digest,
        summaries,
        warnings,
    ))
}

/// The warnings of reading the layers, on stderr unless quiet (before the squashfs is built).
fn print_warnings(opts: &Options, warnings: &[String]) {
    if !opts.quiet {
        warnings
            .iter()
            .for_each(|w| eprintln!("berth-image: warning: {w}"));
    }
}

/// mksquashfs into the work directory, then rename over the output: never a half image.
pub(crate) fn mksquashfs(
    opts: &Options,
    progress: &Progress,
    root: &Path,
    extra: &[String],
    work: &Path,
    comp: &str,
    level: Option<u32>,
) -> Result<u64, String> {
    let part = work.join("image.sqsh");
    let stage = format!("writing {} ({comp})", opts.output.display());
    progress.plain_line(&stage);
    let spinner = progress.spinner(format!("mksquashfs: {stage}"));
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(root)
        .arg(&part)
        .args([
            "-noappend",
            "-quiet",
            "-no-progress",
            "-all-root",
            "-no-xattrs",
            "-mem",
            MKSQUASHFS_MEM,
            "-comp",
            comp,
        ])
        .args(extra);
    if let Some(l) = level {
        cmd.args(["-Xcompression-level", &l.to_string()]);
    }
    // mksquashfs dies with us: after a SIGKILL it must not go on writing into a work
    // directory that the next import removes as stale.
    // SAFETY: the closure runs between fork and exec and calls only prctl, which is
    // async-signal-safe; it allocates nothing (an Errno converts without allocating).
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run mksquashfs ({e}); install squashfs-tools"))?;
    crate::cleanup::set_child(child.id());
    let out = child.wait_with_output();
    crate::cleanup::clear_child();
    spinner.finish_and_clear();
    let out = out.map_err(|e| format!("mksquashfs: {e}"))?;
    if !out.status.success() {
        let last = crate::inspect::last_line(&out.stderr);
        return Err(format!(
            "mksquashfs failed writing {}: {}",
            opts.output.display(),
            last.trim()
        ));
    }
    if cancelled() {
        return Err("interrupted".into());
    }
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o644));
    std::fs::rename(&part, &opts.output)
        .map_err(|e| format!("cannot move the image to {}: {e}", opts.output.display()))?;
    Ok(std::fs::metadata(&opts.output)
        .map(|m| m.len())
        .unwrap_or(0))
}

/// Build the image of `plan` into `opts.output`, streamed unless told (or forced) otherwise.
pub(crate) fn assemble(
    opts: &Options,
    progress: &Progress,
    plan: Plan,
    work_path: &Path,
    comp: &str,
    level: Option<u32>,
) -> Result<Summary, String> {
    if opts.assemble == Method::Unpack || !on_path("tar2sqfs") {
        return assemble_unpacked(opts, progress, plan, work_path, comp, level);
    }
    let (work, _owner) = make_work_dir(work_path)?;
    let bytes: u64 = plan.layers.iter().map(|l| l.size).sum();
    let started = std::time::Instant::now();
    let (tree, summaries, from_index) = merge_layers(opts, progress, &plan.layers)?;
    let n = plan.layers.len();
    if !progress.unpack(0).is_hidden() {
        progress.line(&format!(
            "merged {n} layer{} ({}, {} entries) in {}",
            if n == 1 { "" } else { "s" },
            mib(bytes),
            summaries.iter().map(|s| s.entries).sum::<u64>(),
            indicatif::HumanDuration(started.elapsed())
        ));
    }
    let mut tree = tree;
    let config = plan.config.to_json();
    tree.add_config(Path::new(CONFIG_PATH), config.len() as u64)?;
    let warnings = std::mem::take(&mut tree.warnings);
    print_warnings(opts, &warnings);
    let size = tar2sqfs(
        opts,
        progress,
        &Image {
            tree: &tree,
            layers: &plan.layers,
            config: config.as_bytes(),
            from_index: &from_index,
        },
        work.path(),
        comp,
        level,
    )?;
    Ok(Summary::built(
        opts,
        size,
        plan.manifest_digest,
        summaries,
        warnings,
    ))
}

/// Is `prog` an executable in `$PATH`?
fn on_path(prog: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            std::fs::metadata(d.join(prog))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Read every layer's headers (several layers at a time, each verified against its digest)
/// and merge them in order as they come: only the layers read ahead of the merge are held.
/// Errors come in layer order, as when the layers are applied.
fn merge_layers(
    opts: &Options,
    progress: &Progress,
    layers: &[Layer],
) -> Result<(Tree, Vec<LayerSummary>, Vec<bool>), String> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let bar = progress.unpack(layers.iter().map(|l| l.size).sum());
    let n = layers.len();
    let (next, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    let workers = std::thread::available_parallelism().map_or(2, |p| p.get());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut tree = Tree::new(now);
    tree.set_max_size(opts.max_size);
    let merged = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..n.clamp(1, workers) {
            let tx = tx.clone();
            let (next, stop, bar) = (&next, &stop, &bar);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n || stop.load(Ordering::SeqCst) {
                    break;
                }
                let _ = tx.send((i, layer_entries(&layers[i], bar, opts.max_size)));
            });
        }
        drop(tx);
        let mut ready = std::collections::BTreeMap::new();
        let mut summaries = Vec::new();
        let mut from_index = Vec::new();
        for (i, layer) in layers.iter().enumerate() {
            let entries = loop {
                if let Some(r) = ready.remove(&i) {
                    break r;
                }
                match rx.recv() {
                    Ok((j, r)) => ready.insert(j, r),
                    Err(_) => break Err("not read after an earlier failure".into()),
                };
            };
            let stats = entries
                .and_then(|e| {
                    from_index.push(e.indexed);
                    progress.plain_line(&format!(
                        "applying layer {}/{n} {} ({})",
                        i + 1,
                        short(&layer.digest),
                        mib(layer.size)
                    ));
                    match cancelled() {
                        true => Err("interrupted".into()),
                        false => tree
                            .apply(i as u32, &e.list)
                            .and_then(|stats| match e.complete {
                                true => Ok(stats),
                                // Cannot happen: the layer's files alone are over the limit.
                                false => Err("the image unpacks to more than --max-size".into()),
                            })
                            .map_err(|e| format!("layer {}: {e}", layer.digest)),
                    }
                })
                .inspect_err(|_| stop.store(true, Ordering::SeqCst))?;
            summaries.push(LayerSummary {
                digest: layer.digest.clone(),
                size: layer.size,
                cached: layer.cached,
                entries: stats.entries,
            });
        }
        Ok((summaries, from_index))
    });
    match merged {
        Ok((summaries, from_index)) => {
            bar.finish_and_clear();
            Ok((tree, summaries, from_index))
        }
        Err(e) => {
            bar.abandon();
            Err(e)
        }
    }
}

/// What the tar stream is made of.
struct Image<'a> {
    tree: &'a Tree,
    layers: &'a [Layer],
    config: &'a [u8],
    /// Per layer: its entries came from the cache's index (so it must be read to be verified).
    from_index: &'a [bool],
}

/// The pipe into tar2sqfs: 1 MiB, the most an unprivileged process may ask for by default
/// (/proc/sys/fs/pipe-max-size).
const PIPE_BYTES: libc::c_int = 1 << 20;

/// tar2sqfs fed from a thread of ours into the work directory, then rename over the output.
fn tar2sqfs(
    opts: &Options,
    progress: &Progress,
    image: &Image,
    work: &Path,
    comp: &str,
    level: Option<u32>,
) -> Result<u64, String> {
    let part = work.join("image.sqsh");
    let stage = format!("writing {} ({comp})", opts.output.display());
    progress.plain_line(&stage);
    let spinner = progress.spinner(format!("tar2sqfs: {stage}"));
    let jobs = std::thread::available_parallelism().map_or(2, |p| p.get());
    let mut cmd = Command::new("tar2sqfs");
    // -s: a record it cannot read fails the import rather than being left out.
    cmd.args(["-q", "-s", "-x", "-c", comp, "-j", &jobs.to_string()]);
    if let Some(l) = level {
        cmd.args(["-X", &format!("level={l}")]);
    }
    cmd.arg(&part);
    die_with_parent(&mut cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run tar2sqfs ({e}); install squashfs-tools-ng"))?;
    crate::cleanup::set_child(child.id());
    let stdin = child.stdin.take().expect("piped");
    // A bigger pipe lets our reading of the layers run ahead of tar2sqfs instead of taking
    // turns with it 64 KiB at a time; the default stays if the system allows no more.
    let _ = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&stdin),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES),
    );
    let mut stderr = child.stderr.take().expect("piped");
    // Read by a thread: tar2sqfs must never wait on a full stderr pipe while we write.
    let said = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let written = write_tar(io::BufWriter::with_capacity(1 << 20, stdin), image);
    let status = child.wait();
    crate::cleanup::clear_child();
    spinner.finish_and_clear();
    let said = said.join().unwrap_or_default();
    let status = status.map_err(|e| format!("tar2sqfs: {e}"))?;
    if !status.success() || written.is_err() {
        let last = crate::inspect::last_line(&said);
        return Err(match written {
            // A broken pipe means tar2sqfs stopped: its own words say why.
            Err(e) if !e.contains("Broken pipe") || last.trim().is_empty() => e,
            // tar2sqfs reports a full disk as an I/O error, and removes what it wrote: an
            // I/O error with less room than the image's files is taken for a full disk.
            _ if last.contains("I/O error") && disk_short(work, image.tree.unpacked) => format!(
                "cannot write {}: No space left on device ({})",
                opts.output.display(),
                last.trim()
            ),
            _ => format!(
                "tar2sqfs failed writing {}: {}",
                opts.output.display(),
                last.trim()
            ),
        });
    }
    if cancelled() {
        return Err("interrupted".into());
    }
    finish_output(&part, &opts.output)
}

/// Has the filesystem of `dir` less than `bytes` free?
fn disk_short(dir: &Path, bytes: u64) -> bool {
    nix::sys::statvfs::statvfs(dir)
        .is_ok_and(|v| v.blocks_available().saturating_mul(v.fragment_size()) < bytes)
}

/// The child dies with us: after a SIGKILL it must not go on writing into a work directory
/// that the next import removes as stale.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and calls only prctl, which is
    // async-signal-safe; it allocates nothing (an Errno converts without allocating).
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            Ok(())
        });
    }
}

/// Mode 0644 and rename over the output: never a half image.
fn finish_output(part: &Path, output: &Path) -> Result<u64, String> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(part, std::fs::Permissions::from_mode(0o644));
    std::fs::rename(part, output)
        .map_err(|e| format!("cannot move the image to {}: {e}", output.display()))?;
    Ok(std::fs::metadata(output).map(|m| m.len()).unwrap_or(0))
}

/// A header owned by root (mksquashfs -all-root did the same).
fn header(kind: tar::EntryType, mode: u32, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

/// The image as one tar stream: directories and symlinks first (parents before children),
/// then the files, layer by layer in the order their data lies there, then the config.
fn write_tar(out: impl Write, image: &Image) -> Result<(), String> {
    let io_err = |e: io::Error| format!("cannot write the image stream: {e}");
    let mut b = tar::Builder::new(out);
    image
        .tree
        .walk(|path, node| -> io::Result<()> {
            let name = if path.as_os_str().is_empty() {
                Path::new(".")
            } else {
                path
            };
            match node {
                Node::Dir { mode, mtime, .. } => {
                    let mut h = header(tar::EntryType::Directory, *mode, *mtime, 0);
                    b.append_data(&mut h, name, io::empty())
                }
                Node::Symlink { target, mtime } => append_symlink(&mut b, name, target, *mtime),
                Node::File { .. } => Ok(()),
            }
        })
        .map_err(io_err)?;
    let mut files = image.tree.files();
    let hidden = indicatif::ProgressBar::hidden();
    for (i, layer) in image.layers.iter().enumerate() {
        let wanted = |j: usize| Data::Layer {
            layer: i as u32,
            entry: j as u32,
        };
        let needed = files
            .keys()
            .any(|d| matches!(d, Data::Layer { layer, .. } if *layer == i as u32));
        if !needed && !image.from_index[i] {
            continue;
        }
        read_layer(layer, &hidden, |r| {
            let mut archive = tar::Archive::new(r);
            let entries = archive
                .entries()
                .map_err(|e| format!("not a tar archive: {e}"))?;
            for (j, entry) in entries.enumerate() {
                if cancelled() {
                    return Err("interrupted".into());
                }
                let entry = entry.map_err(|e| format!("broken tar stream: {e}"))?;
                if let Some((node, names)) = files.remove(&wanted(j)) {
                    let Node::File { size, .. } = node else {
                        unreachable!("files() returns files")
                    };
                    let kind = entry.header().entry_type();
                    let file = matches!(
                        kind,
                        tar::EntryType::Regular
                            | tar::EntryType::Continuous
                            | tar::EntryType::GNUSparse
                    );
                    if !file || entry.size() != size {
                        // Only a changed index can do this: drop it, the next import reads anew.
                        if let Some(i) = layer_index(layer) {
                            let _ = std::fs::remove_file(i);
                        }
                        return Err(format!(
                            "entry {} is not what the layer cache's index says; import again",
                            j + 1
                        ));
                    }
                    append_file(&mut b, &node, &names, entry).map_err(io_err)?;
                }
            }
            Ok(())
        })?;
    }
    if let Some((node, names)) = files.remove(&Data::Config) {
        append_file(&mut b, &node, &names, image.config).map_err(io_err)?;
    }
    if !files.is_empty() {
        return Err(format!(
            "{} files were not found in their layers on the second read",
            files.len()
        ));
    }
    b.into_inner().and_then(|mut w| w.flush()).map_err(io_err)
}

fn layer_index(layer: &Layer) -> Option<PathBuf> {
    match &layer.loc {
        Loc::Cache(p) => crate::cache::index_of(p),
        Loc::Slice { .. } => None,
    }
}

/// A symlink, its target byte for byte (the tar crate would normalise `a//b` or `./x`).
fn append_symlink(
    b: &mut tar::Builder<impl Write>,
    name: &Path,
    target: &Path,
    mtime: u64,
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = target.as_os_str().as_bytes();
    let mut h = header(tar::EntryType::Symlink, 0o777, mtime, 0);
    let room = h.as_old().linkname.len();
    if bytes.len() > room {
        // GNU long link: a `././@LongLink` record carries the whole target.
        let mut long = header(
            tar::EntryType::GNULongLink,
            0o644,
            0,
            bytes.len() as u64 + 1,
        );
        long.as_gnu_mut().expect("gnu header").name[..13].copy_from_slice(b"././@LongLink");
        long.set_cksum();
        b.append(&long, bytes.chain(&[0u8][..]))?;
        h.set_link_name_literal(&bytes[..room])?;
    } else {
        h.set_link_name_literal(bytes)?;
    }
    b.append_data(&mut h, name, io::empty())
}

/// A file's data under its first name, its other names as hardlinks to it.
fn append_file(
    b: &mut tar::Builder<impl Write>,
    node: &Node,
    names: &[PathBuf],
    data: impl Read,
) -> io::Result<()> {
    let Node::File {
        size, mode, mtime, ..
    } = node
    else {
        unreachable!("files() returns files")
    };
    let mut h = header(tar::EntryType::Regular, *mode, *mtime, *size);
    b.append_data(
        &mut h,
        &names[0],
        Exact {
            inner: data,
            left: *size,
        },
    )?;
    for name in &names[1..] {
        let mut h = header(tar::EntryType::Link, *mode, *mtime, 0);
        b.append_link(&mut h, name, &names[0])?;
    }
    Ok(())
}

/// Exactly `left` bytes of `inner`, or an error: a short read must not shift the stream.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a layer entry ended before its size",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
