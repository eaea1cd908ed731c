//! `berth-image import app.sif`: an Apptainer SIF's squashfs system partition copied out as is
//! (the bytes of the partition, nothing rebuilt), checked with `unsquashfs -s`, then renamed
//! into place. `berth run app.sif` needs no import (it serves the partition in place); this is
//! for sites that want plain `.sqsh` files.

use crate::import::{make_work_dir, Options, Summary};
use crate::progress::Progress;
use berth_launcher::sif;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The file starts as a SIF does (by its bytes, not its name).
pub fn is_sif(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let mut head = [0u8; sif::HEADER_LEN];
    let n = f.read_at(&mut head, 0).unwrap_or(0);
    f.metadata().is_ok_and(|m| m.is_file()) && sif::looks_like_sif(&head[..n])
}

pub fn import(
    opts: &Options,
    progress: &Progress,
    path: &Path,
    work_path: &Path,
) -> Result<Summary, String> {
    let bad = |why: String| format!("{}: {why}", path.display());
    let mut file = File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| bad(format!("cannot open: {e}")))?
        .len();
    let part = sif::locate(&file, len).map_err(bad)?;
    berth_launcher::read_squashfs_superblock(&mut file, part.offset, part.size)
        .map_err(|why| bad(format!("the SIF's system partition: {why}")))?;

    let (work, _owner) = make_work_dir(work_path)?;
    let out = work.path().join("image.sqsh");
    progress.plain_line(&format!(
        "copying the squashfs partition of {} ({:.1} MiB) to {}",
        path.display(),
        part.size as f64 / 1048576.0,
        opts.output.display()
    ));
    let cant = |e: std::io::Error| format!("cannot write {}: {e}", opts.output.display());
    file.seek(SeekFrom::Start(part.offset))
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut dst = File::create(&out).map_err(cant)?;
    let copied = std::io::copy(&mut (&mut file).take(part.size), &mut dst).map_err(cant)?;
    if copied != part.size {
        return Err(bad("the file shrank while it was copied".into()));
    }
    dst.sync_all().map_err(cant)?;
    drop(dst);
    if crate::cleanup::cancelled() {
        return Err("interrupted".into());
    }
    let check = Command::new("unsquashfs")
        .arg("-s")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run unsquashfs ({e}); install squashfs-tools"))?;
    if !check.status.success() {
        let last = crate::inspect::last_line(&check.stderr);
        return Err(bad(format!(
            "its squashfs partition is not readable: {}",
            last.trim()
        )));
    }
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644));
    std::fs::rename(&out, &opts.output)
        .map_err(|e| format!("cannot move the image to {}: {e}", opts.output.display()))?;
    Ok(Summary::built(
        opts,
        part.size,
        None,
        Vec::new(),
        Vec::new(),
    ))
}

#[cfg(test)]
mod tests {
    use crate::source::{parse_source, Source};

    #[test]
    fn a_sif_file_is_told_by_its_header_not_its_name() {
        let dir = std::env::temp_dir().join(format!("berth-image-sif-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut head = b"#!/usr/bin/env run-singularity\n\0SIF_MAGIC\0".to_vec();
        head.resize(4096, 0);
        let named_sqsh = dir.join("app.sqsh");
        std::fs::write(&named_sqsh, &head).unwrap();
        let text = dir.join("app.sif");
        std::fs::write(&text, b"not a SIF").unwrap();
        let named = named_sqsh.to_str().unwrap();
        assert_eq!(parse_source(named).unwrap(), Source::Sif(named.into()));
        assert!(!matches!(
            parse_source(text.to_str().unwrap()).unwrap(),
            Source::Sif(_)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
