//! What the plan asks of the host: whether paths exist, directory listings, symlinks, the
//! loader cache. Behind [`Host`], so that the plan is computed from these answers alone and
//! unit tests give it a [`FakeHost`] instead of this machine's files.

use std::path::{Path, PathBuf};

/// The host as the plan sees it. Every answer is a plain value; a path that cannot be read
/// counts as absent, as it would for the mounts made from it.
pub trait Host {
    /// The path exists (following symlinks).
    fn exists(&self, path: &Path) -> bool;
    /// The path is a directory (following symlinks).
    fn is_dir(&self, path: &Path) -> bool;
    /// The path is a regular file (following symlinks).
    fn is_file(&self, path: &Path) -> bool;
    /// The names in a directory; none if it cannot be read.
    fn read_dir(&self, dir: &Path) -> Vec<String>;
    /// Where a symlink points, as written in it.
    fn read_link(&self, path: &Path) -> Option<PathBuf>;
    /// The path with every symlink resolved, if it exists.
    fn canonicalize(&self, path: &Path) -> Option<PathBuf>;
    /// The paths matching a pattern whose directory part is a pattern too.
    fn glob(&self, pattern: &str) -> Vec<PathBuf>;
    /// The libraries of the host's loader cache (`ldconfig -p`), in its order.
    fn ldconfig(&self) -> &[PathBuf];
    /// A file's identity (device, inode, size, mtime, ctime), if it can be read.
    fn stamp(&self, path: &Path) -> Option<String>;
}

/// This machine. Directory listings and the loader cache are read once per process: several
/// library patterns of a policy usually look into the same large directory
/// (/usr/lib/<triplet>), and `ldconfig -p` is a process to spawn.
pub struct RealHost;

impl Host for RealHost {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }

    fn read_dir(&self, dir: &Path) -> Vec<String> {
        use std::collections::HashMap;
        use std::sync::Mutex;
        static MEMO: std::sync::OnceLock<Mutex<HashMap<PathBuf, Vec<String>>>> =
            std::sync::OnceLock::new();
        let memo = MEMO.get_or_init(|| Mutex::new(HashMap::new()));
        let mut memo = memo.lock().unwrap_or_else(|e| e.into_inner());
        memo.entry(dir.to_path_buf())
            .or_insert_with(|| {
                std::fs::read_dir(dir)
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .clone()
    }

    fn read_link(&self, path: &Path) -> Option<PathBuf> {
        std::fs::read_link(path).ok()
    }

    fn canonicalize(&self, path: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }

    fn glob(&self, pattern: &str) -> Vec<PathBuf> {
        glob::glob(pattern)
            .map(|paths| paths.flatten().collect())
            .unwrap_or_default()
    }

    fn ldconfig(&self) -> &[PathBuf] {
        static CACHE: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
        CACHE.get_or_init(|| {
            let out = std::process::Command::new("/sbin/ldconfig")
                .arg("-p")
                .output();
            let text = out
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            // Only berth's own architecture: an i386 libcuda.so.1 would not load.
            text.lines()
                .filter_map(|l| crate::arch::ld_cache_entry(l, crate::arch::NATIVE))
                .collect()
        })
    }

    fn stamp(&self, path: &Path) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(format!(
            "{}:{}:{}:{}.{}:{}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ))
    }
}

/// Host paths matching a pattern (`*`, `?`, `[..]`); a plain path if it exists.
pub fn glob_paths(pattern: &str) -> Vec<PathBuf> {
    glob_paths_on(&RealHost, pattern)
}

/// [`glob_paths`] on the given host.
pub fn glob_paths_on(host: &dyn Host, pattern: &str) -> Vec<PathBuf> {
    let src = pattern.split_once(':').map_or(pattern, |(s, _)| s);
    let wild = |s: &str| s.contains(['*', '?', '[']);
    let path = Path::new(src);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().map(|n| n.to_string_lossy()))
    else {
        return Vec::new();
    };
    if !wild(src) {
        return if host.exists(path) {
            vec![path.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    if wild(&dir.to_string_lossy()) {
        return host.glob(src);
    }
    // The common case, a pattern in the last part only: one directory listing, no stat per
    // entry (this runs on every rank's start-up).
    let Ok(pat) = glob::Pattern::new(&name) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = host
        .read_dir(dir)
        .iter()
        .filter(|n| pat.matches(n))
        .map(|n| dir.join(n))
        .collect();
    found.sort();
    found
}

/// Host library files for a pattern: a path glob, or a bare name glob looked up in the
/// host's loader cache (`ldconfig -p`), as the host's own programs would find them.
pub fn find_libraries(host: &dyn Host, pattern: &str) -> Vec<PathBuf> {
    if pattern.contains('/') {
        // Libraries are found by SONAME, as the loader does: `libmpi.so.40*` is the file
        // `libmpi.so.40` when it exists, without listing a directory of thousands of files.
        if let Some((literal, _)) = pattern.split_once('*').filter(|(_, rest)| rest.is_empty()) {
            if !literal.contains(['?', '[']) && host.is_file(Path::new(literal)) {
                return vec![PathBuf::from(literal)];
            }
        }
        // Otherwise the pattern may match the SONAME link and the file it points to: a file
        // some matched link already names is left out.
        let matched = glob_paths_on(host, pattern);
        let named: Vec<PathBuf> = matched
            .iter()
            .filter_map(|p| {
                host.read_link(p)
                    .map(|t| p.parent().unwrap_or(Path::new("/")).join(t))
            })
            .collect();
        return matched
            .into_iter()
            .filter(|p| !named.contains(p) && host.exists(p))
            .collect();
    }
    let Ok(pat) = glob::Pattern::new(pattern) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = host
        .ldconfig()
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| pat.matches(&n.to_string_lossy()))
        })
        .cloned()
        .collect();
    found.dedup();
    found
}

/// A made-up node for unit tests: the files, directories and symlinks it is given (and every
/// ancestor directory of them), and a loader cache.
#[cfg(test)]
#[derive(Debug, Default, Clone)]
pub struct FakeHost {
    files: std::collections::BTreeSet<PathBuf>,
    dirs: std::collections::BTreeSet<PathBuf>,
    links: std::collections::BTreeMap<PathBuf, PathBuf>,
    libs: Vec<PathBuf>,
}

#[cfg(test)]
impl FakeHost {
    pub fn new() -> Self {
        let mut host = FakeHost::default();
        host.dirs.insert(PathBuf::from("/"));
        host
    }

    fn parents(&mut self, path: &Path) {
        for dir in path.ancestors().skip(1) {
            self.dirs.insert(dir.to_path_buf());
        }
    }

    /// A regular file (a device node counts as one here).
    pub fn file(mut self, path: &str) -> Self {
        self.parents(Path::new(path));
        self.files.insert(path.into());
        self
    }

    pub fn dir(mut self, path: &str) -> Self {
        self.parents(Path::new(path));
        self.dirs.insert(path.into());
        self
    }

    /// A symlink at `path` holding `to` (relative to its directory, or absolute).
    pub fn link(mut self, path: &str, to: &str) -> Self {
        self.parents(Path::new(path));
        self.links.insert(path.into(), to.into());
        self
    }

    /// The loader cache, as `ldconfig -p` would list it.
    pub fn ldconfig_lists(mut self, libs: &[&str]) -> Self {
        self.libs = libs.iter().map(PathBuf::from).collect();
        self
    }

    /// Follow symlinks (a few, no loops in a test's node).
    fn resolve(&self, path: &Path) -> PathBuf {
        let mut path = path.to_path_buf();
        for _ in 0..8 {
            match self.links.get(&path) {
                Some(to) => path = path.parent().unwrap_or(Path::new("/")).join(to),
                None => break,
            }
        }
        path
    }

    fn entries(&self) -> impl Iterator<Item = &PathBuf> {
        self.files
            .iter()
            .chain(self.dirs.iter())
            .chain(self.links.keys())
    }
}

#[cfg(test)]
impl Host for FakeHost {
    fn exists(&self, path: &Path) -> bool {
        let real = self.resolve(path);
        self.files.contains(&real) || self.dirs.contains(&real)
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.dirs.contains(&self.resolve(path))
    }

    fn is_file(&self, path: &Path) -> bool {
        self.files.contains(&self.resolve(path))
    }

    fn read_dir(&self, dir: &Path) -> Vec<String> {
        self.entries()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect()
    }

    fn read_link(&self, path: &Path) -> Option<PathBuf> {
        self.links.get(path).cloned()
    }

    fn canonicalize(&self, path: &Path) -> Option<PathBuf> {
        let real = self.resolve(path);
        self.exists(&real).then_some(real)
    }

    fn glob(&self, pattern: &str) -> Vec<PathBuf> {
        let Ok(pat) = glob::Pattern::new(pattern) else {
            return Vec::new();
        };
        let mut found: Vec<PathBuf> = self
            .entries()
            .filter(|p| pat.matches_path(p))
            .cloned()
            .collect();
        found.sort();
        found.dedup();
        found
    }

    fn ldconfig(&self) -> &[PathBuf] {
        &self.libs
    }

    fn stamp(&self, path: &Path) -> Option<String> {
        self.is_file(path)
            .then(|| format!("fake:{}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_paths_expands_the_host_part_of_a_rule() {
        let host = FakeHost::new()
            .file("/dev/nvidia1")
            .file("/dev/nvidia0")
            .file("/dev/nvidiactl")
            .file("/sys/class/net/lo/mtu")
            .file("/sys/class/net/eth0/mtu");
        let paths = |p: &str| glob_paths_on(&host, p);
        assert_eq!(
            paths("/dev/nvidia[0-9]*"),
            vec![PathBuf::from("/dev/nvidia0"), PathBuf::from("/dev/nvidia1")]
        );
        assert_eq!(
            paths("/dev/nvidiactl:/dev/x"),
            vec![PathBuf::from("/dev/nvidiactl")]
        );
        assert!(paths("/dev/nvidia-uvm").is_empty());
        assert_eq!(
            paths("/sys/class/*/eth0/mtu"),
            vec![PathBuf::from("/sys/class/net/eth0/mtu")]
        );
    }

    #[test]
    fn bare_library_names_come_from_the_loader_cache() {
        let host = FakeHost::new().ldconfig_lists(&[
            "/lib/libcuda.so.1",
            "/lib/libcuda.so.1",
            "/lib/libz.so.1",
        ]);
        assert_eq!(
            find_libraries(&host, "libcuda.so*"),
            vec![PathBuf::from("/lib/libcuda.so.1")]
        );
        assert!(find_libraries(&host, "libmpi.so*").is_empty());
    }
}
