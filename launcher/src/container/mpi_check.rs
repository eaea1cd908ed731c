//! The host-vs-image MPI ABI check: injecting the host's MPI into an image whose own MPI is of
//! another family or an incompatible version would break it, so the image's library is found
//! and its version read before anything is injected.

use super::root::read_image_file;
use crate::plan::MpiPlan;
use crate::policy::{parse_version, Compatibility, MpiFamily};
use crate::sys;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// What the check found.
pub(super) enum MpiCheck {
    NoMpi,
    Compatible,
    Incompatible(String),
}

/// The ABI check: is the image's MPI (if any) of the host's family and a compatible version?
pub(super) fn mpi_check(root: &OwnedFd, host: &MpiPlan, state_dir: &Path) -> MpiCheck {
    let Some((path, family)) = find_image_mpi(root) else {
        return MpiCheck::NoMpi;
    };
    let version = image_mpi_version(root, &path, state_dir).unwrap_or_else(|| "unknown".into());
    let host_desc = format!("the host's MPI ({} {})", host.family, host.version);
    let image_desc = format!("the image's MPI ({family} {version}, /{})", path.display());
    if family != host.family {
        return MpiCheck::Incompatible(format!(
            "{image_desc} is not ABI-compatible with {host_desc}: different MPI families"
        ));
    }
    let (Some(i), Some(h)) = (parse_version(&version), parse_version(&host.version)) else {
        return MpiCheck::Incompatible(format!(
            "cannot tell the version of {image_desc} to compare with {host_desc}"
        ));
    };
    let compatible = match host.compatibility {
        Compatibility::Major => i.0 == h.0,
        Compatibility::Full => (i.0, i.1) == (h.0, h.1),
        Compatibility::Strict => i == h,
    };
    if compatible {
        MpiCheck::Compatible
    } else {
        MpiCheck::Incompatible(format!(
            "{image_desc} is not compatible with {host_desc} under the site's '{:?}' rule",
            host.compatibility
        ))
    }
}

/// The image's MPI library: Open MPI's libmpi.so.40, or an MPICH-ABI libmpi.so.12/libmpich.so.12
/// (their SONAME links), probed by name rather than by listing large library directories.
fn find_image_mpi(root: &OwnedFd) -> Option<(PathBuf, MpiFamily)> {
    const NAMES: &[(&str, MpiFamily)] = &[
        ("libmpi.so.40", MpiFamily::Openmpi),
        ("libmpi.so.12", MpiFamily::Mpich),
        ("libmpich.so.12", MpiFamily::Mpich),
    ];
    // Where images keep their MPI library: the image is of berth's own architecture.
    for dir in crate::arch::lib_dirs(crate::arch::NATIVE) {
        for (name, family) in NAMES {
            let path = Path::new(&dir).join(name);
            if sys::open_in_root(root.as_raw_fd(), &path, libc::O_PATH, 0).is_ok() {
                return Some((path, *family));
            }
        }
    }
    None
}

/// An MPI library is read up to this size for its version string.
const MPI_LIBRARY_LIMIT: u64 = 256 << 20;

/// The version string built into an MPI library: the first NUL-delimited `[v]X.Y.Z` string
/// (Open MPI's and MPICH's version constants come first). Scanning a large library takes a
/// while, so the answer is cached in the state directory by the file's identity.
fn image_mpi_version(root: &OwnedFd, path: &Path, state_dir: &Path) -> Option<String> {
    let fd = sys::open_in_root(root.as_raw_fd(), path, libc::O_PATH, 0).ok()?;
    let meta = File::from(fd.try_clone().ok()?).metadata().ok()?;
    use std::os::unix::fs::MetadataExt;
    let cache_dir = state_dir.join("mpi-versions");
    let key = cache_dir.join(format!("{}-{}-{}", meta.size(), meta.mtime(), meta.ino()));
    if let Ok(v) = std::fs::read_to_string(&key) {
        return Some(v);
    }
    // A FIFO or a link to /dev/zero in the image must not hang or exhaust berth.
    let bytes = read_image_file(&fd, path, MPI_LIBRARY_LIMIT).ok()?;
    let version = mpi_version_in(&bytes)?;
    let _ = std::fs::create_dir_all(&cache_dir);
    let _ = std::fs::write(&key, &version);
    Some(version)
}

/// The first NUL-delimited `[v]X.Y.Z` string of an MPI library (also `berth doctor`'s reading
/// of the host's).
pub(crate) fn mpi_version_in(bytes: &[u8]) -> Option<String> {
    bytes.split(|b| *b == 0).find_map(|s| {
        let s = std::str::from_utf8(s).ok()?;
        let v = s.strip_prefix('v').unwrap_or(s);
        let parts: Vec<&str> = v.split('.').collect();
        (parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
        .then(|| v.to_string())
    })
}
