//! The per-user layer cache: compressed blobs by digest, `<cache>/blobs/sha256/<hex>`.
//! A blob enters the cache only once its digest is verified (temp name + rename), and is
//! verified again whenever it is applied.
//!
//! Next to a blob: its index (the tar entries, `index/`) and its decoded copy (the tar
//! stream recompressed with zstd level 1, `decoded/`), both made on the blob's first read.
//! Gzip is slow to inflate, so a later import reads the copy instead, and verifies it against
//! the image config's diff_id, the digest of the uncompressed layer.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub struct Cache {
    pub dir: PathBuf,
}

/// `--cache`, else `$BERTH_LAYER_CACHE`, else `$XDG_CACHE_HOME/berth/layers`, else `~/.cache/berth/layers`.
pub fn default_dir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("BERTH_LAYER_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("berth/layers"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".cache/berth/layers")),
        None => Err("no cache directory: set HOME, BERTH_LAYER_CACHE or --cache".into()),
    }
}

impl Cache {
    /// Open (creating, mode 0700) the cache; refuse one that another user owns.
    pub fn open(dir: PathBuf) -> Result<Cache, String> {
        let blobs = dir.join("blobs/sha256");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&blobs)
            .map_err(|e| {
                format!(
                    "cannot create the layer cache {}: {e}; choose another with --cache",
                    blobs.display()
                )
            })?;
        let meta = fs::metadata(&dir).map_err(|e| format!("layer cache {}: {e}", dir.display()))?;
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(format!(
                "layer cache {} belongs to uid {}, not you; choose another with --cache",
                dir.display(),
                meta.uid()
            ));
        }
        Ok(Cache { dir })
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, String> {
        let hex = crate::oci::check_digest(digest)?;
        Ok(self.dir.join("blobs/sha256").join(hex))
    }

    /// A private temp file in the cache for a download in progress, created here (O_EXCL):
    /// `.tmp-<hex>-<pid>-<random>-<host>`, unique across the nodes that share the cache
    /// (their PIDs repeat), so no import writes or resumes another's partial file.
    pub fn temp_path(&self, digest: &str) -> Result<PathBuf, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let hex = crate::oci::check_digest(digest)?;
        let path = self.dir.join("blobs/sha256").join(temp_name(hex));
        fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(path)
    }

    /// Mark a blob as used now (prune --older-than goes by this).
    pub fn touch(&self, path: &Path) {
        if let Ok(f) = fs::File::options().append(true).open(path) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// (digest, size, last used) of every cached blob.
    pub fn list(&self) -> Result<Vec<(String, u64, SystemTime)>, String> {
        let dir = self.dir.join("blobs/sha256");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))? {
            let e = e.map_err(|e| e.to_string())?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let m = e.metadata().map_err(|e| e.to_string())?;
            out.push((
                format!("sha256:{name}"),
                m.len(),
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            ));
        }
        out.sort();
        Ok(out)
    }

    /// Remove blobs unused for `older_than` (all with zero), and leftovers of dead imports.
    pub fn prune(&self, older_than: Duration) -> Result<(u64, u64), String> {
        let dir = self.dir.join("blobs/sha256");
        let (mut n, mut bytes) = (0, 0);
        let now = SystemTime::now();
        for e in fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))? {
            let e = e.map_err(|e| e.to_string())?;
            let name = e.file_name().to_string_lossy().into_owned();
            let m = e.metadata().map_err(|e| e.to_string())?;
            let stale_temp = name.starts_with(".tmp-") && !temp_owner_alive(&name, &m);
            let old = !name.starts_with('.')
                && now
                    .duration_since(m.modified().unwrap_or(SystemTime::UNIX_EPOCH))
                    .unwrap_or_default()
                    >= older_than;
            if stale_temp || old {
                fs::remove_file(e.path())
                    .map_err(|err| format!("cannot remove {}: {err}", e.path().display()))?;
                n += 1;
                bytes += m.len();
            }
        }
        // Indexes and decoded copies go with their blobs (and any temp of a dead import with
        // them).
        let index = self.dir.join("index/sha256");
        for e in fs::read_dir(&index).into_iter().flatten().flatten() {
            let name = e.file_name();
            if !dir.join(&name).exists() {
                let _ = fs::remove_file(e.path());
            }
        }
        let decoded = self.dir.join("decoded/sha256");
        for e in fs::read_dir(&decoded).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(m) = e.metadata() else { continue };
            let stale = match name.starts_with(".tmp-") {
                true => !temp_owner_alive(&name, &m),
                false => !dir
                    .join(name.split('-').next().unwrap_or_default())
                    .is_file(),
            };
            if stale && fs::remove_file(e.path()).is_ok() {
                bytes += m.len();
            }
        }
        let _ = fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700));
        Ok((n, bytes))
    }
}

/// Where the index of a cached blob is kept (its tar entries, so that an import of cached
/// layers reads each layer once): `<cache>/index/sha256/<hex>` for `<cache>/blobs/sha256/<hex>`.
pub fn index_of(blob: &Path) -> Option<PathBuf> {
    let cache = blob.parent()?.parent()?.parent()?;
    Some(cache.join("index/sha256").join(blob.file_name()?))
}

/// The bytes of the decoded copies kept for the blob with digest hex `hex`.
pub fn decoded_bytes(cache: &Path, hex: &str) -> u64 {
    let prefix = format!("{hex}-");
    fs::read_dir(cache.join("decoded/sha256"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

/// Where the decoded copy of a cached blob whose uncompressed stream has digest `diff_id`
/// is kept: `<cache>/decoded/sha256/<blob hex>-<diff_id hex>`. Keyed by both, so that a copy
/// is only ever read for the pair it was verified as (an image config could pair a blob with
/// a diff_id it does not have).
pub fn decoded_of(blob: &Path, diff_id: &str) -> Option<PathBuf> {
    let cache = blob.parent()?.parent()?.parent()?;
    let diff = crate::oci::check_digest(diff_id).ok()?;
    let name = format!("{}-{diff}", blob.file_name()?.to_str()?);
    Some(cache.join("decoded/sha256").join(name))
}

/// Store the index of a cached blob (temp name + rename); an index is only a shortcut, so a
/// failure to store it is not an error.
pub fn store_index(blob: &Path, bytes: &[u8]) {
    let Some(path) = index_of(blob) else { return };
    let Some(dir) = path.parent() else { return };
    if fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .is_err()
    {
        return;
    }
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        crate::store::random()
    ));
    if fs::write(&tmp, bytes).is_err() || fs::rename(&tmp, &path).is_err() {
        let _ = fs::remove_file(&tmp);
    }
}

/// A temp name for a blob or decoded copy being written: `.tmp-<hex>-<pid>-<random>-<host>`.
pub fn temp_name(hex: &str) -> String {
    format!(
        ".tmp-{hex}-{}-{}-{}",
        std::process::id(),
        crate::store::random(),
        crate::store::hostname()
    )
}

/// Is the import that writes temp `name` still running? `.tmp-<hex>-<pid>-<random>-<host>`:
/// on this host, by its pid; another host's pid cannot be looked up here, so its temp is live
/// while it was written in the last hour (a download in progress writes all the time).
/// `.tmp-<hex>-<pid>` (an older berth-image) is taken as this host's.
fn temp_owner_alive(name: &str, m: &fs::Metadata) -> bool {
    let mut parts = name.trim_start_matches(".tmp-").splitn(4, '-').skip(1);
    let pid = parts.next().and_then(|p| p.parse::<i32>().ok());
    let host = parts.nth(1);
    if host.is_some_and(|h| h != crate::store::hostname()) {
        return m
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(3600));
    }
    pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}
