//! The plan in words: one line per step for `--dry-run` and the -vv log, and the whole plan.

use super::{Action, Plan, Process, Rootfs};
use crate::options::{Create, Propagation};
use crate::policy::OnMismatch;
use std::fmt::Write as _;
use std::path::PathBuf;

impl Action {
    /// One line for `--dry-run` and the -vv log: what is mounted or written, and how.
    pub fn describe(&self) -> String {
        match self {
            Action::Bind {
                source,
                recursive,
                readonly,
                propagation,
                noexec,
                create,
            } => format!(
                "<- {} ({}{}{}{}, nosuid{})",
                source.display(),
                if *recursive { "rbind" } else { "bind" },
                if *readonly { ", ro" } else { "" },
                match propagation {
                    Propagation::Private => "",
                    Propagation::Slave => ", rslave",
                    Propagation::Unbindable => ", runbindable",
                },
                if *noexec { ", noexec" } else { "" },
                match create {
                    Create::Auto => "",
                    Create::Dir => ", x-create=dir",
                    Create::File => ", x-create=file",
                }
            ),
            Action::Tmpfs {
                options,
                readonly,
                noexec,
            } => format!(
                "tmpfs ({}{}nosuid{})",
                if options.is_empty() {
                    String::new()
                } else {
                    format!("{options}, ")
                },
                if *readonly { "ro, " } else { "" },
                if *noexec { ", noexec" } else { "" }
            ),
            Action::Umount => "unmount what is there".to_string(),
            Action::Sysfs => "sysfs of the container's network namespace (ro)".to_string(),
            Action::Devpts => "devpts, new instance (nosuid, noexec)".to_string(),
            Action::Symlink { to } => format!("symlink -> {}", to.display()),
            Action::AddEntry { line } => format!("add entry '{line}'"),
            Action::AddEntryIfDir { line } => {
                format!("add entry '{line}' (if the directory exists)")
            }
            Action::Libraries { files } => format!("<- host libraries {}", lib_names(files)),
        }
    }
}

impl Plan {
    /// The plan in words, for `--dry-run`.
    pub fn describe(&self, process: Option<&Process>) -> String {
        let mut out = String::new();
        self.describe_container(&mut out);
        self.describe_mounts(&mut out);
        if let Some(p) = process {
            self.describe_process(&mut out, p);
        }
        out
    }

    /// The image, the identity, the namespaces, and how the container is shared.
    fn describe_container(&self, out: &mut String) {
        let kind = match self.rootfs {
            Rootfs::Fuse => "squashfs, mount mode: served by berth-imagefs",
            Rootfs::Extract => "squashfs, extract mode: node-local cache",
            Rootfs::Directory => "directory rootfs",
        };
        let _ = writeln!(out, "image:    {} ({kind})", self.image.path.display());
        if self.image.offset != 0 {
            let at = self.image.offset;
            let _ = writeln!(out, "          SIF: its squashfs partition at byte {at}");
        }
        let _ = writeln!(
            out,
            "root:     overlay on the image, {} (changes discarded at exit)",
            if self.writable {
                "writable"
            } else {
                "read-only"
            }
        );
        let (uid, gid) = self.inner_ids();
        let groups: Vec<String> = self
            .user
            .groups
            .iter()
            .map(|(g, n)| format!("{g}({n})"))
            .collect();
        let _ = writeln!(
            out,
            "identity: uid {uid} gid {gid} inside = {}({}) gid {} on the host; supplementary groups still grant access (unnamed inside): {}",
            self.user.name,
            self.user.uid,
            self.user.gid,
            if groups.is_empty() { "none".to_string() } else { groups.join(" ") }
        );
        let _ = writeln!(
            out,
            "namespaces: user, mount{}",
            self.unshare
                .names()
                .iter()
                .map(|n| match *n {
                    "net" => ", net (only lo, up)",
                    "ipc" => ", ipc",
                    _ => ", uts (the host's hostname)",
                })
                .collect::<String>()
        );
        let _ = writeln!(out, "state:    {}", self.state_dir.display());
        let _ = writeln!(
            out,
            "join:     {}",
            self.join_key
                .as_deref()
                .map_or("no (a container of its own)".to_string(), |k| format!(
                    "key {k}"
                ))
        );
        if self.linger_secs > 0 {
            let _ = writeln!(
                out,
                "linger:   {} s after the last process",
                self.linger_secs
            );
        }
    }

    /// The mounts in order, the host MPI's, and what was left out.
    fn describe_mounts(&self, out: &mut String) {
        let _ = writeln!(out, "mounts (in order):");
        for s in &self.steps {
            let what = s.action.describe();
            let _ = writeln!(out, "  {:<20} {what}  [{}]", s.target.display(), s.origin);
        }
        if let Some(mpi) = &self.mpi {
            let _ = writeln!(
                out,
                "host MPI ({} {}, {:?} compatibility) if the image's MPI passes the ABI check, else {} [{}]:",
                mpi.family,
                mpi.version,
                mpi.compatibility,
                match mpi.on_mismatch {
                    OnMismatch::Error => "refuse to run",
                    OnMismatch::Image => "the image's own MPI",
                },
                mpi.origin
            );
            for s in &mpi.steps {
                if let Action::Bind { source, .. } = &s.action {
                    let _ = writeln!(
                        out,
                        "  {:<20} <- {} (ro, nosuid)  [{}]",
                        s.target.display(),
                        source.display(),
                        s.origin
                    );
                }
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note:     {note}");
        }
    }

    /// The process: argv, working directory, ids, environment.
    fn describe_process(&self, out: &mut String, p: &Process) {
        let _ = writeln!(out, "process:");
        let _ = writeln!(out, "  argv:    {:?}", p.argv);
        let _ = writeln!(out, "  workdir: {}", p.workdir.display());
        let _ = writeln!(
            out,
            "  uid/gid: {}/{} (no_new_privs set, all mounts nosuid)",
            p.uid, p.gid
        );
        if self.remap_root {
            let _ = writeln!(out, "  {}", crate::fakeroot::DESCRIPTION);
        }
        let _ = writeln!(out, "  env:");
        for (k, v) in &p.env {
            let _ = writeln!(out, "    {}={}", k.to_string_lossy(), v.to_string_lossy());
        }
    }
}

fn lib_names(files: &[PathBuf]) -> String {
    let names: Vec<String> = files
        .iter()
        .map(|f| {
            f.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    format!(
        "{} (copied once into the state directory, bound ro)",
        names.join(" ")
    )
}
