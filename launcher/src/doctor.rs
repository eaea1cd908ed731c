//! `berth doctor`: can berth run here, and if not, what to fix. Each check is one row of a
//! table (✓ works, ! works with a caveat, ✗ broken, with its fix); the exit status is non-zero
//! when something berth needs is broken. The kernel features are tried for real, in a forked
//! child inside a user and mount namespace of its own, with the launcher's own wrappers: a
//! version number or a config flag says less than a syscall that works.

use crate::options::Mode;
use crate::policy::Policy;
use crate::{host, plan, sys};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use serde::Serialize;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
        }
    }
}

/// One check's result: what was checked, what was found, and for a ✗ or ! what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub check: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn row(check: &str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Row {
    Row {
        check: check.to_string(),
        status,
        detail: detail.into(),
        fix,
    }
}

fn ok(check: &str, detail: impl Into<String>) -> Row {
    row(check, Status::Ok, detail, None)
}

/// ✗ when berth needs it, ! when only another mode or an option does.
fn bad(check: &str, needed: bool, detail: impl Into<String>, fix: impl Into<String>) -> Row {
    let status = if needed { Status::Fail } else { Status::Warn };
    row(check, status, detail, Some(fix.into()))
}

/// The table: a row per check, the fix indented under each ✗ and !, and a summary line.
pub fn render(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    let width = rows
        .iter()
        .map(|r| r.check.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for r in rows {
        let _ = writeln!(out, "{} {:<width$}  {}", r.status.mark(), r.check, r.detail);
        if let Some(fix) = &r.fix {
            let _ = writeln!(out, "  {:<width$}  fix: {fix}", "");
        }
    }
    let failed = rows.iter().filter(|r| r.status == Status::Fail).count();
    let warned = rows.iter().filter(|r| r.status == Status::Warn).count();
    let _ = match failed {
        0 => writeln!(
            out,
            "berth can run here ({warned} warning{})",
            if warned == 1 { "" } else { "s" }
        ),
        n => writeln!(
            out,
            "berth cannot run here: {n} check{} failed (✗); see the fixes above",
            if n == 1 { "" } else { "s" }
        ),
    };
    out
}

/// 0 when nothing berth needs is broken (warnings allowed), else 1.
pub fn exit_code(rows: &[Row]) -> i32 {
    if rows.iter().any(|r| r.status == Status::Fail) {
        1
    } else {
        0
    }
}

/// Run every check; print the table (or JSON); return the exit status.
pub fn run(json: bool) -> i32 {
    let rows = checks();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        print!("{}", render(&rows));
    }
    exit_code(&rows)
}

pub fn checks() -> Vec<Row> {
    let uid = nix::unistd::Uid::current().as_raw();
    let gid = nix::unistd::Gid::current().as_raw();
    let mut rows = Vec::new();
    let policy = match Policy::load(None) {
        Ok(p) => {
            let files = if p.files.is_empty() {
                "no policy file, built-in defaults".to_string()
            } else {
                let names: Vec<String> = p.files.iter().map(|f| f.display().to_string()).collect();
                format!("valid: {}", names.join(", "))
            };
            rows.push(ok("site policy", files));
            p
        }
        Err(e) => {
            rows.push(bad(
                "site policy",
                true,
                e.0.clone(),
                "fix the file named (see 'berth policy check'), or ask the admin",
            ));
            Policy::default()
        }
    };
    let mode = policy.mode.unwrap_or(Mode::Mount);
    let mount_mode = mode == Mode::Mount;
    let mode_name = if mount_mode { "mount" } else { "extract" };

    rows.extend(kernel_probes(uid, gid, mount_mode));

    // Mount mode: /dev/fuse opened by the user (berth serves the image itself).
    let other = |m: &str| format!("(the default mode is {mode_name}; --mode {m} needs it)");
    let fuse = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => ok("/dev/fuse", "present and openable by you"),
        Err(e) => bad(
            "/dev/fuse",
            mount_mode,
            format!("cannot open /dev/fuse: {e} {}", if mount_mode { String::new() } else { other("mount") }),
            "ask the admin to load the fuse module and make /dev/fuse mode 0666, or use --mode extract",
        ),
    };
    rows.push(fuse);
    rows.push(match crate::container::find_in_path("unsquashfs") {
        Some(p) => ok("unsquashfs", p.display().to_string()),
        None => bad(
            "unsquashfs",
            !mount_mode,
            format!(
                "not on PATH {}",
                if mount_mode {
                    other("extract")
                } else {
                    String::new()
                }
            ),
            "install squashfs-tools (Debian/Ubuntu: apt install squashfs-tools)",
        ),
    });
    rows.push(state_dir_check(
        &crate::site::Site::default().state_dir(&policy, uid),
        uid,
    ));
    rows.extend(plugstack_check(Path::new("/etc/slurm")));
    rows.extend(mpi_check(&policy));
    rows
}

/// The per-user state directory: where, whether berth will accept it, and room to extract.
fn state_dir_check(dir: &Path, uid: u32) -> Row {
    const NAME: &str = "state directory";
    let shown = dir.display();
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        // berth creates it on first use: its parent must let us.
        let parent = dir.parent().unwrap_or(Path::new("/"));
        return match nix::unistd::access(parent, nix::unistd::AccessFlags::W_OK) {
            Ok(()) => ok(NAME, format!("{shown} (absent; berth creates it, mode 0700)")),
            Err(e) => bad(
                NAME,
                true,
                format!("{shown} is absent and {} is not writable by you ({e})", parent.display()),
                "set BERTH_STATE_DIR to a node-local directory of yours, or ask the admin for runtime.cache_dir",
            ),
        };
    };
    // The launcher's own test, so doctor refuses exactly what a run refuses.
    let mode = meta.permissions().mode() & 0o7777;
    if let Err(e) = host::ensure_private_dir(dir, uid) {
        let fix = if meta.uid() == uid && meta.is_dir() {
            format!("chmod 0700 {shown}")
        } else {
            "remove it, or set BERTH_STATE_DIR to a private directory of yours".to_string()
        };
        let detail = format!(
            "{} (owner uid {}, mode {mode:04o})",
            crate::error::one_line(&e),
            meta.uid()
        );
        return bad(NAME, true, detail, fix);
    }
    let free = nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0);
    let gib = free as f64 / (1u64 << 30) as f64;
    let detail = format!("{shown} (yours, mode {mode:04o}, {gib:.1} GiB free)");
    if mode & 0o077 != 0 {
        return row(
            NAME,
            Status::Warn,
            detail,
            Some(format!(
                "chmod 0700 {shown}: others can read your containers' state"
            )),
        );
    }
    if free < 1 << 30 {
        return row(
            NAME,
            Status::Warn,
            detail,
            Some("extract mode unpacks images here: free space or set BERTH_STATE_DIR".into()),
        );
    }
    ok(NAME, detail)
}

/// The sysctls that forbid unprivileged user namespaces, with the value that forbids them.
fn userns_sysctls() -> Vec<(String, String)> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let mut found = Vec::new();
    for (path, name, blocks) in [
        (
            "/proc/sys/kernel/unprivileged_userns_clone",
            "kernel.unprivileged_userns_clone",
            "0",
        ),
        (
            "/proc/sys/user/max_user_namespaces",
            "user.max_user_namespaces",
            "0",
        ),
        (
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "kernel.apparmor_restrict_unprivileged_userns",
            "1",
        ),
    ] {
        if let Some(v) = read(path).filter(|v| v == blocks) {
            found.push((name.to_string(), v));
        }
    }
    found
}

fn userns_fix() -> String {
    let culprits = userns_sysctls();
    if culprits.is_empty() {
        return "ask the admin to allow unprivileged user namespaces (a kernel without \
                CONFIG_USER_NS, or a seccomp profile such as a container's, forbids them)"
            .into();
    }
    let fixes: Vec<String> = culprits
        .iter()
        .map(|(name, _)| match name.as_str() {
            "user.max_user_namespaces" => "sysctl -w user.max_user_namespaces=15000".to_string(),
            "kernel.apparmor_restrict_unprivileged_userns" => {
                "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile \
                 for berth with 'userns,')"
                    .to_string()
            }
            other => format!("sysctl -w {other}=1"),
        })
        .collect();
    format!("ask the admin: {}", fixes.join("; "))
}

fn sysctl_note() -> String {
    let culprits = userns_sysctls();
    if culprits.is_empty() {
        return String::new();
    }
    let list: Vec<String> = culprits.iter().map(|(n, v)| format!("{n} = {v}")).collect();
    format!(" ({})", list.join(", "))
}

/// Try the kernel features in a forked child (new user and mount namespaces, uid 0 inside over
/// the user's own ids, everything on a tmpfs of its own) and collect a row for each.
fn kernel_probes(uid: u32, gid: u32, mount_mode: bool) -> Vec<Row> {
    let (rd, wr) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => {
            return vec![bad(
                "kernel probes",
                true,
                format!("cannot make a pipe: {e}"),
                "retry",
            )]
        }
    };
    // SAFETY: berth is single-threaded here, so the child may allocate; it only runs the
    // probes and leaves by _exit, never returning into the caller.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(rd);
            // A probe that hangs (a FUSE mount gone wrong) must not hang doctor.
            nix::unistd::alarm::set(20);
            let rows = probes_in_child(uid, gid, mount_mode);
            let mut out = File::from(wr);
            let _ = out.write_all(serde_json::to_string(&rows).unwrap_or_default().as_bytes());
            drop(out);
            // SAFETY: _exit runs none of the forking berth's destructors or atexit handlers.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(wr);
            let mut text = String::new();
            let _ = File::from(rd).read_to_string(&mut text);
            let status = nix::sys::wait::waitpid(child, None);
            match serde_json::from_str::<Vec<ProbeRow>>(&text) {
                Ok(rows) => rows.into_iter().map(ProbeRow::into_row).collect(),
                Err(_) => vec![bad(
                    "kernel probes",
                    true,
                    format!("the probe process ended without an answer ({status:?})"),
                    "run 'berth doctor' again; if it persists, report it",
                )],
            }
        }
        Err(e) => vec![bad(
            "kernel probes",
            true,
            format!("cannot fork: {e}"),
            "retry",
        )],
    }
}

/// A row as it crosses the pipe from the probe child.
#[derive(serde::Deserialize)]
struct ProbeRow {
    check: String,
    status: String,
    detail: String,
    fix: Option<String>,
}

impl ProbeRow {
    fn into_row(self) -> Row {
        let status = match self.status.as_str() {
            "ok" => Status::Ok,
            "warn" => Status::Warn,
            _ => Status::Fail,
        };
        row(&self.check, status, self.detail, self.fix)
    }
}

fn attrs_ro() -> u64 {
    sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV
}

/// open_tree + mount_setattr + move_mount: how berth binds every source on a kernel that has
/// them. Run in the probe's scratch directory.
fn new_mount_api_probes(kernel: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    match sys::open_tree_clone(Path::new("lower"), false) {
        Err(e) => {
            rows.push(bad(
                "open_tree",
                true,
                format!("open_tree(OPEN_TREE_CLONE): {e}"),
                kernel,
            ));
        }
        Ok(tree) => {
            rows.push(ok(
                "open_tree",
                "open_tree(OPEN_TREE_CLONE) + move_mount work",
            ));
            let setattr = sys::mount_setattr(&tree, attrs_ro(), false);
            let moved = File::open("bind").and_then(|t| sys::move_mount(&tree, &OwnedFd::from(t)));
            if let Err(e) = moved {
                let last = rows.len() - 1;
                rows[last] = bad("open_tree", true, format!("move_mount: {e}"), kernel);
            }
            rows.push(match setattr {
                Ok(()) => ok("mount_setattr", "ro, nosuid, nodev on a detached mount"),
                Err(e) => bad("mount_setattr", true, format!("mount_setattr: {e}"), kernel),
            });
        }
    }
    rows
}

fn probes_in_child(uid: u32, gid: u32, mount_mode: bool) -> Vec<Row> {
    const USERNS: &str = "user namespaces";
    let mut rows = Vec::new();
    let userns_failed = |what: String| {
        vec![bad(
            USERNS,
            true,
            format!(
                "{what}{}; the kernel features below were not tried",
                sysctl_note()
            ),
            userns_fix(),
        )]
    };
    if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS) {
        return userns_failed(format!("unshare(CLONE_NEWUSER|CLONE_NEWNS): {e}"));
    }
    let maps = sys::write_file("/proc/self/setgroups", "deny")
        .and_then(|()| sys::write_file("/proc/self/uid_map", &format!("0 {uid} 1")))
        .and_then(|()| sys::write_file("/proc/self/gid_map", &format!("0 {gid} 1")));
    if let Err(e) = maps {
        return userns_failed(format!("cannot write the id maps: {e}"));
    }
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    ) {
        return userns_failed(format!("no mount rights in the new namespace: {e}"));
    }
    // Everything below happens on this tmpfs, in this namespace: nothing reaches the host.
    let scratch = Path::new("/tmp");
    if let Err(e) = mount(
        Some("berth-doctor"),
        scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0700"),
    ) {
        return userns_failed(format!("cannot mount a tmpfs in the new namespace: {e}"));
    }
    rows.push(ok(
        USERNS,
        "unshare(CLONE_NEWUSER|CLONE_NEWNS), id maps, tmpfs: work",
    ));
    let setup = || -> std::io::Result<()> {
        std::env::set_current_dir(scratch)?;
        for d in ["lower", "upper", "work", "root", "bind", "pts", "fuse", "r"] {
            std::fs::create_dir(d)?;
        }
        std::fs::write("lower/file", "lower\n")?;
        std::fs::write("r/marker", "")?;
        std::os::unix::fs::symlink("/marker", "r/link")
    };
    if let Err(e) = setup() {
        rows.push(bad(
            "kernel probes",
            true,
            format!("cannot set up the probe files: {e}"),
            "report it",
        ));
        return rows;
    }
    let kernel = "Linux >= 4.18 is needed (berth's minimum); upgrade the kernel";

    // Which calls berth binds with: the new mount API, or mount(2) on kernels without it.
    match sys::missing_mount_api() {
        None => {
            rows.push(ok("mount API", "new (open_tree/move_mount/mount_setattr)"));
            rows.extend(new_mount_api_probes(kernel));
        }
        Some(missing) => {
            // The same bind as a run's, done with mount(2) on O_PATH fds: read-only, nosuid.
            let bound = (|| -> std::io::Result<()> {
                let open = |p: &str| {
                    File::options()
                        .read(true)
                        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
                        .open(p)
                };
                sys::bind_fds(&open("lower")?, &open("bind")?, true)?;
                let tree = open("bind")?;
                sys::remount_fd(&tree, attrs_ro(), true)?;
                sys::propagation_fd(&tree, sys::PROPAGATION_PRIVATE, true)?;
                match std::fs::write("bind/probe", "") {
                    Err(e) if e.raw_os_error() == Some(libc::EROFS) => Ok(()),
                    _ => Err(std::io::Error::other("the bind stayed writable")),
                }
            })();
            rows.push(match bound {
                Ok(()) => ok(
                    "mount API",
                    format!(
                        "classic mount(2) (kernel lacks {missing}): binds, remounts and moves \
                         on O_PATH fds work; each run mounts its image itself (no image keeper)"
                    ),
                ),
                Err(e) => bad(
                    "mount API",
                    true,
                    format!("classic mount(2) (kernel lacks {missing}): bind: {e}"),
                    kernel,
                ),
            });
        }
    }

    // openat2(RESOLVE_IN_ROOT): an absolute link inside r/ must stay inside r/.
    let confined = (|| -> std::io::Result<bool> {
        let root = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open("r")?;
        let fd = sys::open_in_root(root.as_raw_fd(), Path::new("link"), libc::O_RDONLY, 0)?;
        let got = File::from(fd).metadata()?.ino();
        Ok(got == std::fs::metadata("r/marker")?.ino())
    })();
    rows.push(match confined {
        Ok(true) if sys::has_openat2() => ok(
            "openat2",
            "RESOLVE_IN_ROOT keeps an image's links inside it",
        ),
        Ok(true) => ok(
            "openat2",
            "absent: berth resolves paths component by component, inside the root",
        ),
        Ok(false) => bad(
            "openat2",
            true,
            "RESOLVE_IN_ROOT did not confine a symlink",
            kernel,
        ),
        Err(e) => bad(
            "openat2",
            true,
            format!("openat2(RESOLVE_IN_ROOT): {e}"),
            kernel,
        ),
    });

    // statx STATX_MNT_ID: tells berth's own mounts from host directories bound in.
    let ids = File::open(".")
        .and_then(|here| sys::mount_id(&here))
        .and_then(|here| {
            File::open("/")
                .and_then(|root| sys::mount_id(&root))
                .map(|r| (here, r))
        });
    rows.push(match ids {
        Ok((a, b)) if a != b => ok("statx", "STATX_MNT_ID tells mounts apart"),
        Ok(_) => bad(
            "statx",
            true,
            "STATX_MNT_ID gives one id for two mounts",
            kernel,
        ),
        Err(e) => bad("statx", true, format!("statx(STATX_MNT_ID): {e}"), kernel),
    });

    // The container root: an overlay with userxattr over tmpfs dirs, written through (copy-up).
    let overlay = mount(
        Some("berth-doctor"),
        "root",
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("lowerdir=lower,upperdir=upper,workdir=work,userxattr"),
    )
    .map_err(std::io::Error::from)
    .and_then(|()| {
        std::fs::OpenOptions::new()
            .append(true)
            .open("root/file")?
            .write_all(b"upper\n")
    })
    .and_then(|()| std::fs::metadata("upper/file").map(|_| ()));
    rows.push(match overlay {
        Ok(()) => ok(
            "overlayfs",
            "userxattr overlay in a user namespace, copy-up works",
        ),
        Err(e) => bad(
            "overlayfs",
            true,
            format!("overlay with userxattr: {e}"),
            "Linux >= 5.11 with overlayfs (modprobe overlay) is needed",
        ),
    });

    let devpts = mount(
        Some("devpts"),
        "pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(std::io::Error::from)
    .and_then(|()| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("pts/ptmx")
            .map(|_| ())
    });
    rows.push(match devpts {
        Ok(()) => ok("devpts", "a new instance, ptys open"),
        Err(e) => bad(
            "devpts",
            true,
            format!("devpts newinstance: {e}"),
            "a kernel with CONFIG_UNIX98_PTYS and devpts mountable in user namespaces (Linux >= 4.7)",
        ),
    });

    // FUSE mounted inside the namespace, as mount mode does (no server: nothing reads it).
    let fuse = File::options()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .and_then(|dev| {
            let opts = format!("fd={},rootmode=40000,user_id=0,group_id=0", dev.as_raw_fd());
            mount(
                Some("berth-doctor"),
                "fuse",
                Some("fuse.berth-doctor"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RDONLY,
                Some(opts.as_str()),
            )
            .map_err(std::io::Error::from)
        });
    rows.push(match fuse {
        Ok(()) => ok("FUSE in a user namespace", "mounts (mount mode)"),
        Err(e) => bad(
            "FUSE in a user namespace",
            mount_mode,
            format!("cannot mount FUSE: {e}"),
            "Linux >= 4.18 and a readable /dev/fuse are needed for mount mode; or use --mode extract",
        ),
    });
    rows
}

/// The Slurm plugin's plugstack line, when this node has a plugstack.conf(.d).
fn plugstack_check(slurm: &Path) -> Vec<Row> {
    const NAME: &str = "Slurm plugin";
    let conf = slurm.join("plugstack.conf");
    let dir = slurm.join("plugstack.conf.d");
    if !conf.exists() && !dir.is_dir() {
        return Vec::new();
    }
    // plugstack.conf and what it includes (as Slurm reads them); conf.d files too if nothing
    // includes them, so a forgotten include is named.
    let mut files = vec![conf.clone()];
    let mut lines = Vec::new();
    let mut i = 0;
    while i < files.len() && i < 64 {
        let text = std::fs::read_to_string(&files[i]).unwrap_or_default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["include", pattern, ..] => {
                    if let Ok(paths) = glob::glob(pattern) {
                        files.extend(paths.flatten());
                    }
                }
                [_, path, ..] if path.contains("spank_berth") => {
                    lines.push((files[i].clone(), line.to_string(), PathBuf::from(path)))
                }
                _ => {}
            }
        }
        i += 1;
    }
    let Some((file, line, so)) = lines.into_iter().next() else {
        return vec![bad(
            NAME,
            false,
            format!(
                "berth's plugin is not in {} or its includes",
                conf.display()
            ),
            format!(
                "to use berth under Slurm, uncomment the line in {}/berth.conf (the \
                 berth-slurm package installs it; from source: slurm-glue/plugstack.conf.d/berth.conf) \
                 and make sure plugstack.conf includes that directory",
                dir.display()
            ),
        )];
    };
    let so = if so.is_absolute() {
        so
    } else {
        plugin_dir(slurm).join(so)
    };
    vec![if so.is_file() {
        ok(NAME, format!("{} ({})", line, file.display()))
    } else {
        bad(
            NAME,
            true,
            format!(
                "{} names {}, which does not exist",
                file.display(),
                so.display()
            ),
            "install target/release/libspank_berth.so at that path (see README: Slurm)",
        )
    }]
}

/// Slurm's PluginDir (slurm.conf), where a relative plugstack path is looked up.
fn plugin_dir(slurm: &Path) -> PathBuf {
    let text = std::fs::read_to_string(slurm.join("slurm.conf")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("PluginDir="))
        .map(|v| PathBuf::from(v.split(':').next().unwrap_or("").trim()))
        .next()
        .unwrap_or_else(|| {
            let triplet = crate::arch::multiarch_triplet(crate::arch::NATIVE);
            PathBuf::from(format!("/usr/lib/{triplet}/slurm-wlm"))
        })
}

/// Host MPI injection, when the policy enables it: are the host's libraries and binds there?
fn mpi_check(policy: &Policy) -> Vec<Row> {
    const NAME: &str = "host MPI";
    let Some(mpi) = policy.mpi.as_ref().filter(|m| m.enabled) else {
        return Vec::new();
    };
    let libraries: Vec<PathBuf> = mpi
        .libraries
        .iter()
        .flat_map(|r| plan::glob_paths(&r.path))
        .collect();
    let missing: Vec<String> = mpi
        .libraries
        .iter()
        .chain(&mpi.bind)
        .filter(|r| plan::glob_paths(&r.path).is_empty())
        .map(|r| format!("{} [{}]", r.path, r.origin))
        .collect();
    let what = format!("{} {} (policy {})", mpi.family, mpi.version, mpi.origin);
    if libraries.is_empty() || !missing.is_empty() {
        return vec![bad(
            NAME,
            true,
            format!(
                "{what}: nothing on this host matches {}",
                missing.join(", ")
            ),
            "install the host MPI the policy names, or fix the [mpi] section's paths",
        )];
    }
    let names: Vec<String> = libraries
        .iter()
        .take(3)
        .map(|p| p.display().to_string())
        .collect();
    let more = libraries.len().saturating_sub(3);
    let detail = format!(
        "{what}: {}{}",
        names.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    );
    // The version built into the host's libmpi, read as the ABI check reads the image's.
    let found = libraries
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libmpi"))
        })
        .find_map(|p| {
            // A regular file, read up to a bound: a policy path naming a FIFO or /dev/zero
            // must not hang doctor.
            let file = File::open(p)
                .ok()
                .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))?;
            let mut bytes = Vec::new();
            file.take(256 << 20).read_to_end(&mut bytes).ok()?;
            crate::container::mpi_version_in(&bytes)
        });
    match found {
        Some(v) if v != mpi.version => vec![row(
            NAME,
            Status::Warn,
            format!("{detail}; the library says {v}"),
            Some(format!(
                "set [mpi] version = \"{v}\" in the policy: the ABI check compares images with it"
            )),
        )],
        Some(v) => vec![ok(NAME, format!("{detail} (library version {v})"))],
        None => vec![ok(NAME, detail)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(status: Status) -> Vec<Row> {
        vec![
            ok("user namespaces", "work"),
            row(
                "state directory",
                status,
                "/x is mode 0777",
                Some("chmod 0700 /x".into()),
            ),
            row(
                "unsquashfs",
                Status::Warn,
                "not on PATH",
                Some("install it".into()),
            ),
        ]
    }

    #[test]
    fn a_failed_check_shows_its_fix_and_fails_the_exit_status() {
        let rows = fake(Status::Fail);
        let text = render(&rows);
        assert_eq!(exit_code(&rows), 1);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("✓ user namespaces "), "{text}");
        assert!(lines[1].starts_with("✗ state directory "), "{text}");
        assert!(lines[1].ends_with("/x is mode 0777"), "{text}");
        assert_eq!(lines[2].trim(), "fix: chmod 0700 /x", "{text}");
        assert!(lines[3].starts_with("! unsquashfs "), "{text}");
        assert!(lines.last().unwrap().contains("1 check failed"), "{text}");
    }

    #[test]
    fn warnings_alone_keep_exit_status_zero() {
        let rows = fake(Status::Warn);
        assert_eq!(exit_code(&rows), 0);
        assert!(render(&rows).ends_with("berth can run here (2 warnings)\n"));
        assert_eq!(exit_code(&fake(Status::Ok)), 0);
    }

    #[test]
    fn the_plugstack_line_is_found_through_includes_and_its_library_checked() {
        let dir = std::env::temp_dir().join(format!("berth-doctor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("plugstack.conf.d")).unwrap();
        let conf = format!("include {}/plugstack.conf.d/*.conf\n", dir.display());
        std::fs::write(dir.join("plugstack.conf"), conf).unwrap();
        let missing = plugstack_check(&dir);
        assert_eq!(missing[0].status, Status::Warn, "{missing:?}");
        let so = dir.join("spank_berth.so");
        let line = format!("# berth\nrequired {} policy=/x.toml\n", so.display());
        std::fs::write(dir.join("plugstack.conf.d/berth.conf"), line).unwrap();
        let absent = plugstack_check(&dir);
        assert_eq!(absent[0].status, Status::Fail, "{absent:?}");
        assert!(absent[0].detail.contains("does not exist"), "{absent:?}");
        std::fs::write(&so, "").unwrap();
        let good = plugstack_check(&dir);
        assert_eq!(good[0].status, Status::Ok, "{good:?}");
        assert!(good[0].detail.contains("policy=/x.toml"), "{good:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rows_round_trip_through_the_probe_pipe() {
        let rows = fake(Status::Fail);
        let text = serde_json::to_string(&rows).unwrap();
        let back: Vec<Row> = serde_json::from_str::<Vec<ProbeRow>>(&text)
            .unwrap()
            .into_iter()
            .map(ProbeRow::into_row)
            .collect();
        assert_eq!(back, rows);
    }
}
