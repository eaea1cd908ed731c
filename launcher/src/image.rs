//! Opening an image: a squashfs file or a directory rootfs. Checks the squashfs superblock so a
//! wrong or truncated file is refused before any namespace or mount exists, and computes the
//! image's identity (the extract-cache key) cheaply, without reading the whole file.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const SQUASHFS_MAGIC: u32 = 0x7371_7368; // "hsqs" little-endian
const SUPERBLOCK_LEN: usize = 96;
/// How much of the metadata at the end of the image goes into its identity.
const IDENTITY_TAIL: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageKind {
    Squashfs { bytes_used: u64 },
    Directory,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Absolute path of the image.
    pub path: PathBuf,
    pub kind: ImageKind,
}

impl Image {
    /// Open and check an image path given by the user.
    pub fn open(path: &Path) -> Result<Image> {
        let abs = std::path::absolute(path)
            .map_err(|e| Error::Image(format!("image {}: {e}", path.display())))?;
        let meta = std::fs::metadata(&abs).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Image(format!(
                "image not found: {} (give the path of a .sqsh file or a rootfs directory)",
                path.display()
            )),
            _ => Error::Image(format!("cannot open image {}: {e}", path.display())),
        })?;
        if meta.is_dir() {
            return Ok(Image {
                path: abs,
                kind: ImageKind::Directory,
            });
        }
        let mut file = File::open(&abs)
            .map_err(|e| Error::Image(format!("cannot open image {}: {e}", path.display())))?;
        let sb = read_superblock(&mut file, meta.len())
            .map_err(|why| Error::Image(format!("image {}: {why}", path.display())))?;
        Ok(Image {
            path: abs,
            kind: ImageKind::Squashfs {
                bytes_used: sb.bytes_used,
            },
        })
    }

    /// A key that names this image's content, for the extract cache: a hash of the squashfs
    /// superblock, the file size and the metadata tables at the end of the image (which change
    /// whenever any file's content, size or place changes). Reads about 64 KiB.
    pub fn identity(&self) -> Result<String> {
        let ImageKind::Squashfs { bytes_used } = self.kind else {
            return Err(Error::Image(
                "only squashfs images have a cache identity".into(),
            ));
        };
        let file = File::open(&self.path)
            .map_err(|e| Error::Image(format!("cannot open image {}: {e}", self.path.display())))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut head = [0u8; SUPERBLOCK_LEN];
        let tail_start = bytes_used.saturating_sub(IDENTITY_TAIL);
        let mut tail = vec![0u8; (bytes_used - tail_start) as usize];
        file.read_exact_at(&mut head, 0)
            .and_then(|_| file.read_exact_at(&mut tail, tail_start))
            .map_err(|e| Error::Image(format!("cannot read image {}: {e}", self.path.display())))?;
        let mut h = Sha256::new();
        h.update(head);
        h.update(len.to_le_bytes());
        h.update(&tail);
        let digest = h.finalize();
        Ok(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
    }
}

#[derive(Debug)]
pub struct Superblock {
    pub bytes_used: u64,
    pub block_size: u32,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Parse and sanity-check a squashfs 4.0 superblock. The error says what is wrong in words a
/// user can act on.
pub fn read_superblock(file: &mut File, file_len: u64) -> std::result::Result<Superblock, String> {
    let mut sb = [0u8; SUPERBLOCK_LEN];
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut got = 0;
    while got < SUPERBLOCK_LEN {
        match file.read(&mut sb[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("cannot read: {e}")),
        }
    }
    parse_superblock(&sb[..got], file_len)
}

pub fn parse_superblock(sb: &[u8], file_len: u64) -> std::result::Result<Superblock, String> {
    const HINT: &str = "build images with berth-image or mksquashfs";
    if sb.len() < SUPERBLOCK_LEN || le32(sb, 0) != SQUASHFS_MAGIC {
        return Err(format!("not a squashfs image ({HINT})"));
    }
    let (major, minor) = (le16(sb, 28), le16(sb, 30));
    if (major, minor) != (4, 0) {
        return Err(format!(
            "squashfs version {major}.{minor} is not supported, only 4.0 ({HINT})"
        ));
    }
    let block_size = le32(sb, 12);
    let block_log = le16(sb, 22);
    if block_log > 20 || block_size != 1 << block_log {
        return Err(format!(
            "corrupt squashfs superblock (block size {block_size}) ({HINT})"
        ));
    }
    let bytes_used = le64(sb, 40);
    if bytes_used > file_len {
        return Err(format!(
            "image is truncated: the superblock says {bytes_used} bytes, the file has {file_len} \
             (copy it again)"
        ));
    }
    let table_starts = [le64(sb, 48), le64(sb, 64), le64(sb, 72)];
    if bytes_used < SUPERBLOCK_LEN as u64 || table_starts.iter().any(|&t| t >= bytes_used) {
        return Err(format!(
            "corrupt squashfs superblock (tables beyond the end) ({HINT})"
        ));
    }
    Ok(Superblock {
        bytes_used,
        block_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_superblock(bytes_used: u64) -> Vec<u8> {
        let mut sb = vec![0u8; SUPERBLOCK_LEN];
        sb[0..4].copy_from_slice(&SQUASHFS_MAGIC.to_le_bytes());
        sb[12..16].copy_from_slice(&131072u32.to_le_bytes());
        sb[22..24].copy_from_slice(&17u16.to_le_bytes());
        sb[28..30].copy_from_slice(&4u16.to_le_bytes());
        sb[40..48].copy_from_slice(&bytes_used.to_le_bytes());
        for at in [48, 64, 72] {
            sb[at..at + 8].copy_from_slice(&200u64.to_le_bytes());
        }
        sb
    }

    #[test]
    fn accepts_a_valid_superblock() {
        let sb = parse_superblock(&good_superblock(4096), 8192).unwrap();
        assert_eq!(sb.bytes_used, 4096);
        assert_eq!(sb.block_size, 131072);
    }

    #[test]
    fn refuses_wrong_magic_short_truncated_and_old_versions() {
        assert!(parse_superblock(b"#!/bin/sh\n", 10)
            .unwrap_err()
            .contains("not a squashfs"));
        let mut bad = good_superblock(4096);
        bad[0] = b'x';
        assert!(parse_superblock(&bad, 8192)
            .unwrap_err()
            .contains("not a squashfs"));
        assert!(parse_superblock(&good_superblock(4096), 2000)
            .unwrap_err()
            .contains("truncated"));
        let mut v3 = good_superblock(4096);
        v3[28] = 3;
        assert!(parse_superblock(&v3, 8192)
            .unwrap_err()
            .contains("version 3.0"));
        let mut blk = good_superblock(4096);
        blk[22] = 3;
        assert!(parse_superblock(&blk, 8192)
            .unwrap_err()
            .contains("block size"));
    }
}
