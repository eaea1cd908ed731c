//! Node-local staging (`[images] stage = "node-local"`): a store image is copied into the
//! node's state directory once per node and used from there, for stores on filesystems that
//! serve many small random reads badly (mount mode reads the image in small blocks). The
//! copy is checked against the sha256 the store recorded before it is renamed into place, so
//! a damaged store file or a short copy is never used.

use crate::error::Error;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The copy of the store image `stored` (`KEY.sqsh`, with its metadata `KEY.json` beside it)
/// in `dir`, node-local; made if missing. The copy is named as in the store (by manifest
/// digest and squashfs settings), so it is made once per image: the ranks and steps that
/// stage one image at once wait on a lock of that image's own (on the node's filesystem),
/// and the first makes the copy while the others then find it.
pub fn stage(stored: &Path, dir: &Path) -> Result<PathBuf, Error> {
    let name = stored
        .file_name()
        .ok_or_else(|| Error::Image(format!("{} is not a store image", stored.display())))?;
    let dest = dir.join(name);
    let lock_path = dir.join(format!("{}.lock", name.to_string_lossy()));
    let lock = File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| Error::Image(format!("cannot create {}: {e}", lock_path.display())))?;
    // Held until the copy is in place; a crashed stager's lock goes with its process.
    let _lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::Image(format!("cannot lock {}: {e}", lock_path.display())))?;
    // A copy is only ever renamed into place once verified: one that is there is good.
    if dest.exists() {
        return Ok(dest);
    }
    let expected = recorded_sha256(stored)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = copy_hashed(stored, &tmp).and_then(|sum| {
        if sum == expected {
            std::fs::rename(&tmp, &dest)
                .map_err(|e| format!("cannot rename it to {}: {e}", dest.display()))
        } else {
            Err(format!(
                "its copy has sha256 {}, the store recorded {}: the store's file is damaged \
                 (remove it with `berth-image store rm` and import the image again)",
                short(&sum),
                short(&expected)
            ))
        }
    });
    result.map(|()| dest).map_err(|why| {
        let _ = std::fs::remove_file(&tmp);
        Error::Image(format!(
            "cannot stage {} on this node: {why}",
            stored.display()
        ))
    })
}

fn short(sum: &str) -> &str {
    &sum[..sum.len().min(12)]
}

/// The sha256 the store recorded for `stored` (its `KEY.json`'s `sha256`, hex).
fn recorded_sha256(stored: &Path) -> Result<String, Error> {
    let meta = stored.with_extension("json");
    let text = std::fs::read_to_string(&meta).map_err(|e| {
        Error::Image(format!(
            "cannot stage {}: cannot read its store metadata {}: {e}",
            stored.display(),
            meta.display()
        ))
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    value
        .get("sha256")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(String::from)
        .ok_or_else(|| {
            Error::Image(format!(
                "cannot stage {}: its store metadata {} records no sha256 (import it again)",
                stored.display(),
                meta.display()
            ))
        })
}

/// Copy `from` to a new file `to` (never one that exists), fsynced; the sha256 of the bytes
/// written, as hex.
fn copy_hashed(from: &Path, to: &Path) -> Result<String, String> {
    let mut src = File::open(from).map_err(|e| format!("cannot open it: {e}"))?;
    let mut dst = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src
            .read(&mut buf)
            .map_err(|e| format!("cannot read it: {e}"))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    }
    dst.sync_all()
        .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("berth-stage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("store")).unwrap();
        std::fs::create_dir_all(d.join("node")).unwrap();
        d
    }

    fn store(d: &Path, bytes: &[u8], sha256: &str) -> PathBuf {
        let sqsh = d.join("store/abc.sqsh");
        std::fs::write(&sqsh, bytes).unwrap();
        std::fs::write(
            d.join("store/abc.json"),
            serde_json::json!({ "sha256": sha256 }).to_string(),
        )
        .unwrap();
        sqsh
    }

    fn sha(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn concurrent_stagers_make_one_verified_copy() {
        let d = scratch("two");
        let bytes = vec![7u8; 3 << 20];
        let sqsh = store(&d, &bytes, &sha(&bytes));
        let node = d.join("node");
        let staged: Vec<PathBuf> = std::thread::scope(|s| {
            let a = s.spawn(|| stage(&sqsh, &node).unwrap());
            let b = s.spawn(|| stage(&sqsh, &node).unwrap());
            vec![a.join().unwrap(), b.join().unwrap()]
        });
        assert_eq!(staged[0], node.join("abc.sqsh"));
        assert_eq!(staged[0], staged[1]);
        assert_eq!(std::fs::read(&staged[0]).unwrap(), bytes);
        // The copy, its lock, no temporary.
        let mut names: Vec<String> = std::fs::read_dir(&node)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["abc.sqsh", "abc.sqsh.lock"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_copy_that_does_not_match_the_store_record_is_refused_and_removed() {
        let d = scratch("bad");
        let sqsh = store(&d, b"damaged", &sha(b"the image as imported"));
        let node = d.join("node");
        let e = stage(&sqsh, &node).unwrap_err().to_string();
        assert!(e.contains("the store's file is damaged"), "{e}");
        assert!(e.contains("berth-image store rm"), "{e}");
        let left: Vec<_> = std::fs::read_dir(&node)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| !n.to_string_lossy().ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_image_without_a_recorded_sha256_is_not_staged() {
        let d = scratch("nometa");
        let sqsh = d.join("store/abc.sqsh");
        std::fs::write(&sqsh, b"x").unwrap();
        let e = stage(&sqsh, &d.join("node")).unwrap_err().to_string();
        assert!(e.contains("store metadata"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
