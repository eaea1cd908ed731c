//! Opening an image: a squashfs file or a directory rootfs. Checks the squashfs superblock so a
//! wrong or truncated file is refused before any namespace or mount exists, and computes the
//! image's identity (the extract-cache keys: the file's identity on the host, and its content).

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const SQUASHFS_MAGIC: u32 = 0x7371_7368; // "hsqs" little-endian
const SUPERBLOCK_LEN: usize = 96;

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
    /// Where the squashfs starts in the file: 0, or a SIF's system partition (found by magic,
    /// not by the file's name). unsquashfs takes it as `-o`, the image server as its offset.
    pub offset: u64,
}

impl Image {
    /// Open and check an image path given by the user.
    pub fn open(path: &Path) -> Result<Image> {
        let abs = std::path::absolute(path)
            .map_err(|e| Error::Image(format!("image {}: {e}", path.display())))?;
        let meta = std::fs::metadata(&abs).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Image(format!(
                "image not found: {} (give the path of a .sqsh or .sif file or a rootfs directory)",
                path.display()
            )),
            _ => Error::Image(format!("cannot open image {}: {e}", path.display())),
        })?;
        if meta.is_dir() {
            return Ok(Image {
                path: abs,
                kind: ImageKind::Directory,
                offset: 0,
            });
        }
        let not_a_file = |meta: &std::fs::Metadata| {
            Error::Image(format!(
                "image {} is {}, not a squashfs file or a directory",
                path.display(),
                kind_name(meta.file_type())
            ))
        };
        if !meta.is_file() {
            return Err(not_a_file(&meta));
        }
        // Non-blocking, then fstat: had the path become a FIFO since the stat, the open must
        // not wait for a writer, and what is read must be what was checked.
        let mut file = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&abs)
            .map_err(|e| Error::Image(format!("cannot open image {}: {e}", path.display())))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::Image(format!("cannot open image {}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(not_a_file(&meta));
        }
        let bad = |why: String| Error::Image(format!("image {}: {why}", path.display()));
        let mut head = [0u8; crate::sif::HEADER_LEN];
        let got = file
            .read_at(&mut head, 0)
            .map_err(|e| bad(format!("cannot read: {e}")))?;
        // A SIF (Apptainer) holds the squashfs as its system partition: served in place.
        let (offset, len) = if crate::sif::looks_like_sif(&head[..got]) {
            let part = crate::sif::locate(&file, meta.len()).map_err(bad)?;
            (part.offset, part.size)
        } else {
            (0, meta.len())
        };
        let sb = read_superblock(&mut file, offset, len).map_err(|why| {
            bad(if offset == 0 {
                why
            } else {
                format!("the SIF's system partition: {why}")
            })
        })?;
        Ok(Image {
            path: abs,
            kind: ImageKind::Squashfs {
                bytes_used: sb.bytes_used,
            },
            offset,
        })
    }

    /// The image file as the extract cache sees it: opened once (later reads, the content hash
    /// and unsquashfs, all use this open file) and named by its identity on the host.
    pub fn identity(&self) -> Result<Identity> {
        if !matches!(self.kind, ImageKind::Squashfs { .. }) {
            return Err(Error::Image(
                "only squashfs images have a cache identity".into(),
            ));
        }
        let cant = |e: std::io::Error| {
            Error::Image(format!("cannot open image {}: {e}", self.path.display()))
        };
        // Non-blocking: the path may have been swapped for a FIFO since it was checked.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(cant)?;
        let meta = file.metadata().map_err(cant)?;
        if !meta.is_file() {
            return Err(Error::Image(format!(
                "image {} is not a regular file",
                self.path.display()
            )));
        }
        Ok(Identity {
            key: stat_key(&meta),
            settled: settled(&meta),
            file,
            path: self.path.clone(),
        })
    }
}

/// An open squashfs image and its identity key: a hash of the file's device, inode, size,
/// mtime and ctime (with nanoseconds). Any write to the file changes its ctime, and a copy or a
/// replacement is another inode, so an image edited in place or replaced never matches an
/// older entry. Costs one fstat, no reading.
pub struct Identity {
    pub file: File,
    pub key: String,
    /// The timestamps are old enough that a write in the same clock tick as our fstat is
    /// impossible, so the key may be remembered (the "racy git" rule).
    pub settled: bool,
    path: PathBuf,
}

fn stat_key(m: &std::fs::Metadata) -> String {
    let text = format!(
        "{}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    );
    hex16(&Sha256::digest(text.as_bytes()))
}

fn settled(m: &std::fs::Metadata) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    // Two seconds covers filesystems that keep whole seconds and coarse kernel clocks.
    m.mtime() < now - 2 && m.ctime() < now - 2
}

fn hex16(digest: &[u8]) -> String {
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

impl Identity {
    /// A key for the image's content: the sha256 of the whole file. Two copies of one image
    /// (another path, a fresh copy per job, a `touch`) share one cache entry through it.
    /// Reads the whole file, once per new identity: less than unpacking it.
    pub fn content_key(&self) -> Result<String> {
        let cant = |e: std::io::Error| {
            Error::Image(format!("cannot read image {}: {e}", self.path.display()))
        };
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        loop {
            let n = self.file.read_at(&mut buf, at).map_err(cant)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            at += n as u64;
        }
        Ok(hex16(&h.finalize()))
    }

    /// The file is still what it was when the identity was taken (checked after unpacking).
    pub fn unchanged(&self) -> bool {
        self.file.metadata().is_ok_and(|m| stat_key(&m) == self.key)
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

/// Parse and sanity-check a squashfs 4.0 superblock that starts at `offset` and may use `len`
/// bytes from there. The error says what is wrong in words a user can act on.
pub fn read_superblock(
    file: &mut File,
    offset: u64,
    len: u64,
) -> std::result::Result<Superblock, String> {
    let mut sb = [0u8; SUPERBLOCK_LEN];
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| e.to_string())?;
    let mut got = 0;
    while got < SUPERBLOCK_LEN {
        match file.read(&mut sb[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("cannot read: {e}")),
        }
    }
    parse_superblock(&sb[..got], len)
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

/// What a file is, in words for an error ("a FIFO", "a socket"...).
pub fn kind_name(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Read all of `reader` if it holds at most `limit` bytes; `None` if it holds more (only
/// `limit + 1` bytes are read to find out).
pub fn read_at_most(reader: impl Read, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    reader.take(limit + 1).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= limit).then_some(buf))
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

    #[test]
    fn fifos_sockets_and_devices_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("berth-image-kind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let fifo = dir.join("fifo.sqsh");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let sock = dir.join("socket.sqsh");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        for (path, says) in [
            (
                fifo.as_path(),
                "is a FIFO, not a squashfs file or a directory",
            ),
            (sock.as_path(), "is a socket"),
            (Path::new("/dev/zero"), "is a character device"),
        ] {
            let e = Image::open(path).unwrap_err().to_string();
            assert!(e.contains(says), "{}: {e}", path.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_are_bounded() {
        assert_eq!(read_at_most(&b"abc"[..], 3).unwrap().unwrap(), b"abc");
        assert!(read_at_most(&b"abcd"[..], 3).unwrap().is_none());
        let zero = File::open("/dev/zero").unwrap();
        assert!(read_at_most(zero, 1 << 20).unwrap().is_none());
    }
}
