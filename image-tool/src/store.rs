//! The image store: squashfs files addressed by the manifest digest a reference resolved to
//! (plus the platform and squashfs settings), each with a metadata file, in a directory that is
//! shared across nodes (a home or parallel filesystem).
//!
//! Layout of a store directory:
//! - `KEY.sqsh`: the image; `KEY.json`: its [`Meta`] (written last: an image is in the store
//!   once its metadata is); `KEY.used`: touched on each use (last use, for `gc`);
//! - `KEY.claim`: an import under way (host, pid and start time; its mtime is a heartbeat);
//! - `jobs/JOB/REFHASH`: the digest a reference resolved to for a job (its later steps use it).
//!
//! No lock is held on the shared filesystem: files appear by O_EXCL create or rename, which
//! parallel filesystems do atomically; a claim whose heartbeat stops is taken over.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often a live importer touches its claim.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A claim not touched for this long belongs to a dead importer (another host's, or one whose
/// clock is far off). Same-host claims of dead processes are taken over at once.
const STALE: Duration = Duration::from_secs(15);

/// What the store knows about an image (`KEY.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    /// The reference as it was imported (`docker://reg/repo:tag`).
    pub reference: String,
    /// The digest the reference resolved to (the index's for a multi-arch image).
    pub digest: String,
    /// The platform's manifest digest (equal to `digest` for a single-platform image).
    pub manifest_digest: String,
    pub platform: String,
    pub squashfs: String,
    pub size: u64,
    /// sha256 of the .sqsh file: checked before use, so a damaged file is never mounted.
    pub sha256: String,
    /// Seconds since the epoch.
    pub imported_at: u64,
    pub imported_by: String,
    pub host: String,
    /// The file as it was hashed (inode, size, mtime and ctime in ns): while it is unchanged,
    /// a use needs a stat, not a read of the whole image (1,000 nodes would read it 1,000
    /// times from the shared filesystem). Any write or replacement changes the ctime.
    #[serde(default)]
    pub identity: String,
}

/// The user's store (read-write) and the site's (read-only, searched first).
pub struct Stores {
    pub user: PathBuf,
    pub site: Option<PathBuf>,
}

/// The user's store by default: `$BERTH_STORE`, else `$HOME/.local/share/berth/store`. The
/// home directory is the one place every node of a cluster sees as the same user's, so an image
/// imported by srun on the login node is there for the compute nodes; XDG's data directory,
/// not its cache, because jobs depend on what is in it.
pub fn default_dir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("BERTH_STORE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or("HOME is not set; give the store with --store DIR or BERTH_STORE")?;
    Ok(PathBuf::from(home).join(".local/share/berth/store"))
}

/// The site store named by `$BERTH_SITE_STORE`, if any.
pub fn default_site() -> Option<PathBuf> {
    std::env::var_os("BERTH_SITE_STORE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file name stem of an image: the digest's hex, then a short hash of the platform and
/// squashfs settings (one manifest built two ways is two files).
pub fn key(digest: &str, platform: &str, squashfs: &str) -> String {
    let d = digest.strip_prefix("sha256:").unwrap_or(digest);
    let how = Sha256::digest(format!("{platform}\n{squashfs}").as_bytes());
    format!("{d}-{}", &hex(&how)[..12])
}

/// This host's name (temp and claim names, metadata).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// A random hex string: temp names unique across hosts whose PIDs repeat.
pub fn random() -> String {
    let mut b = [0u8; 8];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        b = (t.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes();
    }
    hex(&b)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Write `bytes` to `path` whole: an O_EXCL temp of a host- and random-unique name, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}-{}", hostname(), random()));
    let res = File::options()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|_| std::fs::rename(&tmp, path));
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// The sha256 of a file, as hex.
pub fn sha256_file(path: &Path) -> Result<String, String> {
    let mut f = File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// An image found in a store.
pub struct Found {
    pub path: PathBuf,
    pub meta: Meta,
}

fn read_meta(path: &Path) -> Option<Meta> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Look `key` up in one store directory. A metadata file without its image is not found.
pub fn find(dir: &Path, key: &str) -> Option<Found> {
    let meta = read_meta(&dir.join(format!("{key}.json")))?;
    let path = dir.join(format!("{key}.sqsh"));
    path.is_file().then_some(Found { path, meta })
}

impl Stores {
    /// Look `key` up in the site store, then the user's.
    pub fn find(&self, key: &str) -> Option<Found> {
        self.site
            .as_deref()
            .and_then(|s| find(s, key))
            .or_else(|| find(&self.user, key))
    }

    /// Make the user's store (private to the user: it holds what their jobs run).
    pub fn create(&self) -> Result<(), String> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.user.join("jobs"))
            .map_err(|e| format!("cannot create the image store {}: {e}", self.user.display()))
    }
}

/// A file's identity: `ino:size:mtime_ns:ctime_ns`.
fn identity(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(format!(
        "{}:{}:{}:{}",
        m.ino(),
        m.size(),
        m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128
    ))
}

/// Check a found image before it is used: a file unchanged since it was hashed (same
/// identity) is trusted; any other is hashed and compared with its metadata's sha256. A
/// damaged or replaced file is one line that says what to do. The use is recorded for `gc`.
pub fn verify(found: &Found) -> Result<(), String> {
    if !found.meta.identity.is_empty()
        && identity(&found.path).as_ref() == Some(&found.meta.identity)
    {
        touch_used(&found.path);
        return Ok(());
    }
    let corrupt = |why: String| {
        format!(
            "{} in the image store is damaged ({why}); remove it with `berth-image store rm {}` and run again to import it anew",
            found.path.display(),
            found.meta.digest
        )
    };
    let size = std::fs::metadata(&found.path)
        .map_err(|e| format!("cannot read {}: {e}", found.path.display()))?
        .len();
    if size != found.meta.size {
        return Err(corrupt(format!(
            "{size} bytes, {} expected",
            found.meta.size
        )));
    }
    let sum = sha256_file(&found.path)?;
    if sum != found.meta.sha256 {
        return Err(corrupt(format!(
            "sha256 {}, {} expected",
            &sum[..12],
            &found.meta.sha256[..found.meta.sha256.len().min(12)]
        )));
    }
    touch_used(&found.path);
    Ok(())
}

/// Record a use (`KEY.used`'s mtime), at most once an hour (a wide job's nodes would all write
/// it); the site store is read-only, so not there.
fn touch_used(sqsh: &Path) {
    let used = sqsh.with_extension("used");
    let recent = std::fs::metadata(&used)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < Duration::from_secs(3600));
    if recent {
        return;
    }
    let _ = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(used);
}

/// A claim on importing `KEY` into a store: held while its heartbeat thread runs; removed on
/// drop (also when the import fails). A killed importer's claim stops beating and is taken over.
pub struct Claim {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    beat: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.beat.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Who holds a claim: `host pid starttime`.
fn me() -> String {
    format!(
        "{} {} {}",
        hostname(),
        std::process::id(),
        start_time(std::process::id()).unwrap_or(0)
    )
}

/// A process's start time in clock ticks since boot (field 22 of /proc/PID/stat): a PID that
/// was reused is another process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Is the claim at `path` abandoned? On this host: its process is gone (or is another one
/// with the PID). Anywhere: its heartbeat stopped.
fn stale(path: &Path) -> bool {
    let Ok(m) = std::fs::metadata(path) else {
        return false;
    };
    let holder = std::fs::read_to_string(path).unwrap_or_default();
    let mut f = holder.split_whitespace();
    if let (Some(host), Some(pid), Some(start)) = (f.next(), f.next(), f.next()) {
        if host == hostname() {
            if let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) {
                return start_time(pid) != Some(start);
            }
        }
    }
    m.modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE)
}

/// Try to claim `KEY`'s import. `Ok(None)`: someone else holds a live claim.
pub fn try_claim(dir: &Path, key: &str) -> Result<Option<Claim>, String> {
    let path = dir.join(format!("{key}.claim"));
    let created = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path);
    match created {
        Ok(mut f) => {
            f.write_all(format!("{}\n", me()).as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            let stop = Arc::new(AtomicBool::new(false));
            let (p, s) = (path.clone(), stop.clone());
            let beat = std::thread::spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    std::thread::park_timeout(HEARTBEAT);
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    let _ = nix::sys::stat::utimensat(
                        None,
                        &p,
                        &nix::sys::time::TimeSpec::UTIME_NOW,
                        &nix::sys::time::TimeSpec::UTIME_NOW,
                        nix::sys::stat::UtimensatFlags::FollowSymlink,
                    );
                }
            });
            Ok(Some(Claim {
                path,
                stop,
                beat: Some(beat),
            }))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if stale(&path) {
                // Renamed aside first: of several waiters that find it stale, one moves it;
                // the others' rename fails and they try again.
                let aside = dir.join(format!(".{key}.stale-{}-{}", hostname(), random()));
                if std::fs::rename(&path, &aside).is_ok() {
                    let _ = std::fs::remove_file(&aside);
                }
            }
            Ok(None)
        }
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    }
}

/// Wait until `KEY` is in the store or this process holds its claim.
pub fn claim_or_wait(
    stores: &Stores,
    key: &str,
    quiet: bool,
) -> Result<Result<Found, Claim>, String> {
    let mut said = false;
    loop {
        if let Some(f) = stores.find(key) {
            return Ok(Ok(f));
        }
        if crate::cleanup::cancelled() {
            return Err("interrupted".into());
        }
        if let Some(c) = try_claim(&stores.user, key)? {
            // Finished between the look and the claim?
            if let Some(f) = stores.find(key) {
                return Ok(Ok(f));
            }
            return Ok(Err(c));
        }
        if !quiet && !said {
            eprintln!("berth-image: another import of this image is under way; waiting for it");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Put an imported file (already renamed to `KEY.sqsh`) in the store: its metadata is written
/// last, so an image is found only once complete.
pub fn commit(dir: &Path, key: &str, mut meta: Meta) -> Result<Found, String> {
    let path = dir.join(format!("{key}.sqsh"));
    meta.sha256 = sha256_file(&path)?;
    meta.size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    meta.imported_at = now();
    meta.imported_by = user_name();
    meta.host = hostname();
    meta.identity = identity(&path).unwrap_or_default();
    let json = serde_json::to_vec_pretty(&meta).expect("serializable");
    write_atomic(&dir.join(format!("{key}.json")), &json)?;
    touch_used(&path);
    Ok(Found { path, meta })
}

fn user_name() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

fn ref_hash(reference: &str) -> String {
    hex(&Sha256::digest(reference.as_bytes()))[..32].to_string()
}

/// The digest `reference` resolved to for job `job`, if a step of the job resolved it.
pub fn job_digest(dir: &Path, job: &str, reference: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(dir.join("jobs").join(job).join(ref_hash(reference))).ok()?;
    let d = text.lines().next()?.trim();
    d.starts_with("sha256:").then(|| d.to_string())
}

/// Record the digest `reference` resolved to for job `job`; the first record wins (a tag
/// moved during the job: the job keeps its first digest), which is returned.
pub fn pin_job(dir: &Path, job: &str, reference: &str, digest: &str) -> Result<String, String> {
    use std::os::unix::fs::DirBuilderExt;
    let jd = dir.join("jobs").join(job);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&jd)
        .map_err(|e| format!("cannot create {}: {e}", jd.display()))?;
    let file = jd.join(ref_hash(reference));
    // Hard link of a complete temp: the record appears whole, and only once (link fails if
    // it exists), on filesystems where rename would replace it.
    let tmp = jd.join(format!(".tmp-{}-{}", hostname(), random()));
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(format!("{digest}\n{reference}\n").as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let linked = std::fs::hard_link(&tmp, &file);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(digest.to_string()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Ok(job_digest(dir, job, reference).unwrap_or_else(|| digest.to_string()))
        }
        Err(e) => Err(format!("cannot write {}: {e}", file.display())),
    }
}

/// One image of a store, for `store list`.
#[derive(Debug, serde::Serialize)]
pub struct Entry {
    pub key: String,
    pub path: PathBuf,
    #[serde(flatten)]
    pub meta: Meta,
    /// Seconds since the epoch of the last use (the import, if never used since).
    pub last_used: u64,
}

fn mtime(p: &Path) -> Option<u64> {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

/// The images of one store, oldest use first.
pub fn list(dir: &Path) -> Result<Vec<Entry>, String> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(key) = name.strip_suffix(".json").filter(|k| !k.starts_with('.')) else {
            continue;
        };
        let Some(f) = find(dir, key) else { continue };
        let last_used = mtime(&f.path.with_extension("used")).unwrap_or(f.meta.imported_at);
        out.push(Entry {
            key: key.to_string(),
            path: f.path,
            meta: f.meta,
            last_used,
        });
    }
    out.sort_by_key(|e| e.last_used);
    Ok(out)
}

/// Remove the images whose key, digest or reference is `what`; their count.
pub fn remove(dir: &Path, what: &str) -> Result<usize, String> {
    let mut n = 0;
    for e in list(dir)? {
        let digest_hex = e
            .meta
            .digest
            .strip_prefix("sha256:")
            .unwrap_or(&e.meta.digest);
        if e.key == what || e.meta.digest == what || digest_hex == what || e.meta.reference == what
        {
            remove_key(dir, &e.key)?;
            n += 1;
        }
    }
    Ok(n)
}

fn remove_key(dir: &Path, key: &str) -> Result<(), String> {
    // The metadata first: a half-removed image is not found, never found damaged.
    for ext in ["json", "sqsh", "used"] {
        let p = dir.join(format!("{key}.{ext}"));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", p.display())),
        }
    }
    Ok(())
}

/// `gc`: images unused for `older_than`, job records as old, and leftovers of killed imports
/// (temps and abandoned claims); the images and bytes removed.
pub fn gc(dir: &Path, older_than: Duration) -> Result<(usize, u64), String> {
    let limit = now().saturating_sub(older_than.as_secs());
    let (mut n, mut bytes) = (0, 0);
    for e in list(dir)? {
        if e.last_used <= limit && !dir.join(format!("{}.claim", e.key)).exists() {
            remove_key(dir, &e.key)?;
            n += 1;
            bytes += e.meta.size;
        }
    }
    let stale_age = now().saturating_sub(STALE.as_secs() * 4);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        let old = mtime(&p).is_some_and(|t| t <= stale_age);
        let abandoned_claim = name.ends_with(".claim") && stale(&p);
        let old_temp =
            name.starts_with('.') && (name.contains(".tmp-") || name.contains(".stale-")) && old;
        // An image whose metadata never came (its importer was killed between the rename
        // and the commit); not one whose importer is still hashing it.
        let orphan = name.ends_with(".sqsh")
            && !p.with_extension("json").exists()
            && !p.with_extension("claim").exists()
            && old;
        if abandoned_claim || old_temp || orphan {
            let _ = std::fs::remove_file(&p);
        }
    }
    for e in std::fs::read_dir(dir.join("jobs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if mtime(&e.path()).is_some_and(|t| t <= limit) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok((n, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("berth-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn meta() -> Meta {
        Meta {
            reference: "docker://r/a:1".into(),
            digest: "sha256:ab".into(),
            manifest_digest: "sha256:ab".into(),
            platform: "linux/amd64".into(),
            squashfs: "zstd level 3".into(),
            size: 0,
            sha256: String::new(),
            imported_at: 0,
            imported_by: String::new(),
            host: String::new(),
            identity: String::new(),
        }
    }

    #[test]
    fn keys_differ_by_settings_and_platform() {
        let a = key("sha256:ab", "linux/amd64", "zstd level 3");
        assert!(a.starts_with("ab-"));
        assert_ne!(a, key("sha256:ab", "linux/amd64", "gzip level 9"));
        assert_ne!(a, key("sha256:ab", "linux/arm64", "zstd level 3"));
    }

    #[test]
    fn a_committed_image_is_found_and_a_changed_one_is_refused() {
        let d = scratch("commit");
        let stores = Stores {
            user: d.clone(),
            site: None,
        };
        assert!(stores.find("k").is_none());
        std::fs::write(d.join("k.sqsh"), b"image bytes").unwrap();
        assert!(
            stores.find("k").is_none(),
            "no metadata yet: not in the store"
        );
        commit(&d, "k", meta()).unwrap();
        let f = stores.find("k").unwrap();
        verify(&f).unwrap();
        std::fs::write(d.join("k.sqsh"), b"image bytez").unwrap();
        let e = verify(&f).unwrap_err();
        assert!(e.contains("is damaged (sha256"), "{e}");
        assert!(!e.contains('\n'));
        assert_eq!(remove(&d, "sha256:ab").unwrap(), 1);
        assert!(stores.find("k").is_none());
    }

    #[test]
    fn one_claim_at_a_time_and_a_dead_holders_claim_is_taken_over() {
        let d = scratch("claim");
        let c = try_claim(&d, "k").unwrap().expect("first claim");
        assert!(try_claim(&d, "k").unwrap().is_none(), "held");
        drop(c);
        assert!(!d.join("k.claim").exists());
        // A claim of a process of this host that is gone.
        std::fs::write(d.join("k.claim"), format!("{} 999999999 1\n", hostname())).unwrap();
        assert!(try_claim(&d, "k").unwrap().is_none(), "moved aside first");
        assert!(try_claim(&d, "k").unwrap().is_some());
    }

    #[test]
    fn a_job_keeps_its_first_digest() {
        let d = scratch("job");
        assert_eq!(job_digest(&d, "7", "docker://r/a:1"), None);
        assert_eq!(
            pin_job(&d, "7", "docker://r/a:1", "sha256:01").unwrap(),
            "sha256:01"
        );
        assert_eq!(
            pin_job(&d, "7", "docker://r/a:1", "sha256:02").unwrap(),
            "sha256:01"
        );
        assert_eq!(
            job_digest(&d, "7", "docker://r/a:1").as_deref(),
            Some("sha256:01")
        );
        assert_eq!(job_digest(&d, "8", "docker://r/a:1"), None);
    }
}
