//! Which files make the policy, and reading one of them safely.

use super::DEFAULT_CONFIG;
use crate::error::PolicyError;
use std::path::{Path, PathBuf};

/// The files of the policy: the main file, then `conf.d/*.toml` next to it, in name order.
/// `BERTH_CONFIG` names another main file (tests, a site's own layout); it must exist.
pub fn policy_files(explicit: Option<&Path>) -> Result<Vec<PathBuf>, PolicyError> {
    let (main, required) = match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => match std::env::var_os("BERTH_CONFIG") {
            Some(p) if !p.is_empty() => (PathBuf::from(p), true),
            _ => (PathBuf::from(DEFAULT_CONFIG), false),
        },
    };
    let mut files = Vec::new();
    if main.exists() {
        files.push(main.clone());
    } else if required {
        return Err(PolicyError(format!("{}: no such file", main.display())));
    }
    if let Some(dir) = main.parent().map(|d| d.join("conf.d")) {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut extra: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            extra.sort();
            files.extend(extra);
        }
    }
    Ok(files)
}

/// A policy file larger than this is refused: policies are a few KiB of text, and every rank
/// reads them.
pub const MAX_POLICY_BYTES: u64 = 4 << 20;

/// Read one policy file: a regular file of at most [`MAX_POLICY_BYTES`] of UTF-8 text. A FIFO,
/// socket or device (in conf.d, or as `BERTH_CONFIG`) is refused before it can hang berth or
/// feed it without end; a byte that is not UTF-8 is reported at its line.
pub fn read_policy_file(path: &Path) -> Result<String, PolicyError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let fail = |what: String| PolicyError(format!("{}: {what}", path.display()));
    let kind = |t: std::fs::FileType| {
        if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        }
    };
    // Non-blocking: opening a FIFO must not wait for a writer (a socket cannot be opened at
    // all, so on failure its type is looked up by name).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match std::fs::metadata(path) {
            Ok(m) if !m.is_file() => {
                fail(format!("is {}, not a regular file", kind(m.file_type())))
            }
            _ => fail(format!("cannot read: {e}")),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(fail(format!(
            "is {}, not a regular file",
            kind(meta.file_type())
        )));
    }
    let too_big = || {
        fail(format!(
            "is larger than {} MiB, too large for a policy file",
            MAX_POLICY_BYTES >> 20
        ))
    };
    if meta.len() > MAX_POLICY_BYTES {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let bad = e.utf8_error().valid_up_to();
        let line_start = bytes[..bad]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line = bytes[..bad].iter().filter(|&&b| b == b'\n').count() + 1;
        PolicyError(format!(
            "{}:{line}: byte 0x{:02x} at column {} is not UTF-8 (policy files are UTF-8 text)",
            path.display(),
            bytes[bad],
            bad - line_start + 1
        ))
    })
}
