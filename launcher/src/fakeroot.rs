//! Fake root for package managers (`--remap-root`): a seccomp filter under which the calls that
//! change ids or ownership report success without effect, as enroot and Charliecloud
//! (`ch-run --seccomp`) do. Under `--remap-root` the process is uid 0 in a user namespace that
//! maps only the user's own uid and gid, so `chown(f, 4242, ...)`, `setresuid(_apt)` or
//! `setgroups` fail with EINVAL/EPERM, and dpkg, apt and rpm stop. Faked, they go on; the files
//! stay the user's (the kernel never sees the call), so nothing on the host changes owner.
//!
//! Built with libseccomp rather than a single-architecture BPF compiler (rust-vmm's
//! `seccompiler`): a process can make system calls in every ABI its kernel runs (i386 `int
//! 0x80` and x32 on x86_64, arm32 on aarch64), with other numbers and extra calls (`chown32`).
//! libseccomp resolves each name per ABI and checks the architecture for us, so every ABI gets
//! the same fake; an ABI the filter does not know is refused (ENOSYS), never run for real.
//! `capset` is not faked: root in the namespace holds its capabilities, so a real `capset`
//! succeeds, and faking it would only make a program's capability drop silently not happen.

use crate::error::{Error, Result};
use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext};

/// The calls that report success (return 0) without effect. The `*32` names exist only in the
/// 32-bit ABIs (i386, arm32); libseccomp adds each call to the ABIs that have it.
pub const FAKED: &[&str] = &[
    "chown",
    "fchown",
    "lchown",
    "fchownat",
    "chown32",
    "fchown32",
    "lchown32",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setfsuid",
    "setfsgid",
    "setgroups",
    "setuid32",
    "setgid32",
    "setreuid32",
    "setregid32",
    "setresuid32",
    "setresgid32",
    "setfsuid32",
    "setfsgid32",
    "setgroups32",
];

/// `mknod` and `mknodat` are faked for device nodes only (a package's `/dev` entries): FIFOs,
/// sockets and regular files are made for real. The call and the index of its mode argument.
pub const FAKED_DEVICE_NODES: &[(&str, u32)] = &[("mknod", 1), ("mknodat", 2)];

/// apt's drop-in under `--remap-root` (Debian-family images, which have the directory), and
/// its line: apt verifies that its switch to `_apt` changed its ids, which a faked `setresuid`
/// does not, so it is told to stay root, as enroot's `10-aptfix.sh` hook does.
pub const APT_DROP_IN: &str = "/etc/apt/apt.conf.d/99berth-remap-root";
pub const APT_SANDBOX_ROOT: &str = "APT::Sandbox::User \"root\";";

/// What `--dry-run` prints for the filter.
pub const DESCRIPTION: &str = "fake root (seccomp): chown family, set*id, setgroups and device \
    mknod report success without effect";

/// The ABIs besides the native one that this machine's kernel can run.
fn foreign_arches() -> &'static [ScmpArch] {
    if cfg!(target_arch = "x86_64") {
        &[ScmpArch::X86, ScmpArch::X32]
    } else if cfg!(target_arch = "aarch64") {
        &[ScmpArch::Arm]
    } else {
        &[]
    }
}

fn seccomp_error(what: &str, e: libseccomp::error::SeccompError) -> Error {
    Error::Sys {
        context: format!("cannot build the fake-root seccomp filter ({what})"),
        source: std::io::Error::other(e.to_string()),
    }
}

/// The filter: every call allowed, except the faked ones, which return 0.
pub fn filter() -> Result<ScmpFilterContext> {
    let mut ctx =
        ScmpFilterContext::new(ScmpAction::Allow).map_err(|e| seccomp_error("init", e))?;
    // A call from an ABI not in the filter is refused rather than run for real.
    ctx.set_act_badarch(ScmpAction::Errno(libc::ENOSYS))
        .map_err(|e| seccomp_error("bad-arch action", e))?;
    for arch in foreign_arches() {
        ctx.add_arch(*arch)
            .map_err(|e| seccomp_error(&format!("{arch:?}"), e))?;
    }
    let fake = ScmpAction::Errno(0);
    for name in FAKED {
        ctx.add_rule(
            fake,
            libseccomp::ScmpSyscall::from_name(name).map_err(|e| seccomp_error(name, e))?,
        )
        .map_err(|e| seccomp_error(name, e))?;
    }
    let kind = u64::from(libc::S_IFMT);
    for (name, mode_arg) in FAKED_DEVICE_NODES {
        let call = libseccomp::ScmpSyscall::from_name(name).map_err(|e| seccomp_error(name, e))?;
        for device in [libc::S_IFCHR, libc::S_IFBLK] {
            let cmp = ScmpArgCompare::new(
                *mode_arg,
                ScmpCompareOp::MaskedEqual(kind),
                u64::from(device),
            );
            ctx.add_rule_conditional(fake, call, &[cmp])
                .map_err(|e| seccomp_error(name, e))?;
        }
    }
    Ok(ctx)
}

/// Set no_new_privs and install the filter in the calling thread; it stays across exec (the
/// command, or the task Slurm execs next) and in every child.
pub fn install() -> Result<()> {
    crate::sys::set_no_new_privs().map_err(|e| Error::Sys {
        context: "cannot set no_new_privs".into(),
        source: e,
    })?;
    filter()?.load().map_err(|e| Error::Sys {
        context: "cannot install the fake-root seccomp filter (does the kernel have \
                  CONFIG_SECCOMP_FILTER?)"
            .into(),
        source: std::io::Error::other(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filter in libseccomp's readable form (PFC).
    fn pfc() -> String {
        let ctx = filter().expect("filter builds");
        let file = tempfile_in_memory();
        ctx.export_pfc(&file).expect("export");
        std::fs::read_to_string(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&file)
        ))
        .expect("read back")
    }

    fn tempfile_in_memory() -> std::fs::File {
        use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
        memfd_create(c"pfc", MemFdCreateFlag::MFD_CLOEXEC)
            .expect("memfd_create")
            .into()
    }

    /// The PFC text of one architecture's section.
    fn section<'a>(pfc: &'a str, arch: &str) -> &'a str {
        let start = pfc
            .find(&format!("# filter for arch {arch} "))
            .unwrap_or_else(|| panic!("no section for {arch} in:\n{pfc}"));
        let rest = &pfc[start + 1..];
        let end = rest.find("# filter for arch ").unwrap_or(rest.len());
        &rest[..end]
    }

    #[test]
    fn every_name_is_known_to_libseccomp() {
        for name in FAKED
            .iter()
            .chain(FAKED_DEVICE_NODES.iter().map(|(n, _)| n))
        {
            libseccomp::ScmpSyscall::from_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn faked_calls_return_zero_on_the_native_abi() {
        let pfc = pfc();
        let native = if cfg!(target_arch = "x86_64") {
            "x86_64"
        } else {
            "aarch64"
        };
        let s = section(&pfc, native);
        for name in [
            "fchownat",
            "fchown",
            "setresuid",
            "setresgid",
            "setgroups",
            "setfsuid",
            "setuid",
        ] {
            let at = s
                .find(&format!("\"{name}\""))
                .unwrap_or_else(|| panic!("{name} missing from the {native} section:\n{s}"));
            assert!(
                s[at..]
                    .lines()
                    .take(3)
                    .any(|l| l.contains("action ERRNO(0);")),
                "{name} is not faked:\n{s}"
            );
        }
        // Only the faked calls are in the filter; the default is to allow.
        assert!(!s.contains("\"capset\""), "capset is not faked");
        assert!(!s.contains("\"mount\""));
        assert!(pfc.contains("action ALLOW;"), "{pfc}");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_32_bit_abis_get_the_same_fake_and_unknown_ones_are_refused() {
        let pfc = pfc();
        let i386 = section(&pfc, "x86");
        for name in ["chown32", "lchown", "setresuid32", "setgroups32", "mknod"] {
            assert!(i386.contains(&format!("\"{name}\"")), "{name}:\n{i386}");
        }
        // x32 shares the x86_64 architecture value with its own call numbers.
        let x32 = section(&pfc, "x32");
        assert!(x32.contains("\"fchownat\""), "{x32}");
        // Any other architecture: ENOSYS (38), not the real call.
        let refused = format!(
            "# invalid architecture action\naction ERRNO({});",
            libc::ENOSYS
        );
        assert!(pfc.contains(&refused), "{pfc}");
    }

    #[test]
    fn mknod_is_faked_for_device_nodes_only() {
        let pfc = pfc();
        let native = section(
            &pfc,
            if cfg!(target_arch = "x86_64") {
                "x86_64"
            } else {
                "aarch64"
            },
        );
        let at = native.find("\"mknodat\"").expect("mknodat in the filter");
        let block: String = native[at..].lines().take(8).collect::<Vec<_>>().join("\n");
        // The mode argument masked with S_IFMT, compared with S_IFCHR and S_IFBLK.
        assert!(
            block.contains(&format!("& 0x{:08x}", libc::S_IFMT)),
            "{block}"
        );
        assert!(block.contains(&format!("{}", libc::S_IFCHR)), "{block}");
        assert!(block.contains(&format!("{}", libc::S_IFBLK)), "{block}");
    }
}
