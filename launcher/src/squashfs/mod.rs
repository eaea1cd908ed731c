//! berth's own squashfs reader: the image server (imagefs.rs) serves FUSE requests
//! from it. Squashfs 4.0, little-endian, as mksquashfs writes it; codecs gzip, xz, lz4 and zstd.
//!
//! Lazy: `open` reads the superblock, the id table and the fragment table's index; inodes,
//! directories and the fragment table are decoded on demand from metadata blocks, which a
//! sharded LRU cache keeps decompressed together with data and fragment blocks. Uncompressed
//! data blocks are read straight into the caller's buffer.
//!
//! Images are untrusted: every length, count, offset and index is checked against the image's
//! size and its tables before use, walks are bounded, and decompression never writes past a
//! block's size. A bad image gives `SquashError::Corrupt` with a one-line reason, never a panic.

// Every index into image bytes goes through .get(): a hostile image cannot make it panic.
#![deny(clippy::indexing_slicing)]

mod codec;
mod meta;
#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests;

use codec::Codec;
use meta::{corrupt, Cursor, Key, MetaPos, Points, Value, META_SIZE};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

/// squashfs inode reference: (metadata block start << 16) | offset.
pub(crate) type InodeRef = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
    BlockDev,
    CharDev,
    Fifo,
    Socket,
}

#[derive(Clone, Debug)]
pub(crate) struct Inode {
    pub reference: InodeRef,
    /// squashfs inode number (stable; hard links share it).
    #[cfg_attr(not(test), allow(dead_code))] // imagefs numbers nodes by their reference
    pub number: u32,
    pub kind: Kind,
    /// Permission bits incl. setuid/setgid/sticky (no type bits).
    pub mode: u16,
    /// Owners through the id table (imagefs shows every file as the mounting user's).
    #[cfg_attr(not(test), allow(dead_code))]
    pub uid: u32,
    #[cfg_attr(not(test), allow(dead_code))]
    pub gid: u32,
    pub mtime: u32,
    /// File size; symlink target length; directories: as squashfs says.
    pub size: u64,
    pub nlink: u32,
    /// Devices only, in squashfs's encoding.
    pub rdev: u32,
    /// Regular files: where the data blocks start, and the tail's fragment and offset in it.
    blocks_start: u64,
    fragment: u32,
    frag_offset: u32,
    /// Directories: the listing's block (from the directory table's start) and offset, and the
    /// number of index entries (extended directories).
    dir_block: u32,
    dir_offset: u16,
    index_count: u16,
    /// What follows the inode's fixed part: the block list, symlink target or directory index.
    tail: MetaPos,
}

pub(crate) struct DirEntry<'a> {
    /// Never "." or ".."; never contains '/' or NUL.
    pub name: &'a [u8],
    pub inode: InodeRef,
    pub kind: Kind,
    /// Opaque, nonzero: pass it back to read_dir to continue after this entry.
    pub cookie: u64,
    /// The entry's inode number (as `Inode::number`), for d_ino without reading the inode.
    #[cfg_attr(not(test), allow(dead_code))]
    pub number: u32,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SquashError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt squashfs: {0}")]
    Corrupt(String),
    #[error("unsupported squashfs: {0}")]
    Unsupported(String),
}

const SUPERBLOCK_SIZE: u64 = 96;
const MAGIC: u32 = 0x7371_7368;
const NO_FRAGMENT: u32 = 0xffff_ffff;
/// In a data block's size word: the block is stored uncompressed.
const UNCOMPRESSED_BLOCK: u32 = 1 << 24;
/// Longest name in a directory entry.
const NAME_MAX: usize = 256;
/// Linux's PATH_MAX: no symlink target is longer.
const SYMLINK_MAX: u32 = 4096;
/// Block lists up to this many entries are scanned from the start; longer ones get checkpoints.
const SHORT_LIST: u64 = 256;
/// At most this many checkpoints per file (the stride grows for longer lists).
const MAX_POINTS: u64 = 1 << 16;

pub(crate) struct Archive {
    file: File,
    offset: u64,
    codec: Codec,
    block_size: u32,
    inode_count: u32,
    bytes_used: u64,
    root: InodeRef,
    inode_table: u64,
    dir_table: u64,
    /// Where the directory table ends at the latest (the next table's start).
    dir_end: u64,
    /// The fragment table's index: where each metadata block of 512 entries is.
    frag_count: u32,
    frag_table: u64,
    frag_index: Box<[u64]>,
    ids: Box<[u32]>,
    cache: meta::Cache,
}

fn le16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}
fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}
fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn kind_of(t: u16) -> Option<Kind> {
    Some(match t {
        1 | 8 => Kind::Dir,
        2 | 9 => Kind::File,
        3 | 10 => Kind::Symlink,
        4 | 11 => Kind::BlockDev,
        5 | 12 => Kind::CharDev,
        6 | 13 => Kind::Fifo,
        7 | 14 => Kind::Socket,
        _ => return None,
    })
}

impl Archive {
    /// Reads the superblock and the id/fragment tables only; `offset` is where the squashfs
    /// starts in `file` (0, or a SIF partition's offset). `cache_bytes`: block cache size.
    pub(crate) fn open(
        file: File,
        offset: u64,
        cache_bytes: usize,
    ) -> Result<Archive, SquashError> {
        let mut sb = [0u8; SUPERBLOCK_SIZE as usize];
        let file_len = file.metadata()?.len();
        let available = file_len.saturating_sub(offset);
        if available < SUPERBLOCK_SIZE {
            return Err(corrupt("too short for a squashfs superblock"));
        }
        file.read_exact_at(&mut sb, offset)?;
        if le32(&sb, 0) != MAGIC {
            return Err(corrupt("no squashfs magic (not a squashfs image?)"));
        }
        let (major, minor) = (le16(&sb, 28), le16(&sb, 30));
        if (major, minor) != (4, 0) {
            return Err(SquashError::Unsupported(format!(
                "version {major}.{minor}; berth reads squashfs 4.0 (rebuild it with mksquashfs 4)"
            )));
        }
        let codec = Codec::from_id(le16(&sb, 20))?;
        let block_size = le32(&sb, 12);
        let block_log = le16(&sb, 22);
        if !(4096..=1 << 20).contains(&block_size)
            || !block_size.is_power_of_two()
            || u32::from(block_log) != block_size.trailing_zeros()
        {
            return Err(corrupt(format!(
                "bad block size {block_size} (log {block_log})"
            )));
        }
        let bytes_used = le64(&sb, 40);
        if bytes_used > available || bytes_used < SUPERBLOCK_SIZE {
            return Err(corrupt(format!(
                "the image says it is {bytes_used} bytes long, the file holds {available} (truncated?)"
            )));
        }
        let id_table = le64(&sb, 48);
        let xattr_table = le64(&sb, 56);
        let inode_table = le64(&sb, 64);
        let dir_table = le64(&sb, 72);
        let frag_table = le64(&sb, 80);
        let export_table = le64(&sb, 88);
        let frag_count = le32(&sb, 16);
        let id_count = le16(&sb, 26);
        let root = le64(&sb, 32);
        let within = |t: u64| (SUPERBLOCK_SIZE..bytes_used).contains(&t);
        if !within(inode_table) || !within(dir_table) || inode_table >= dir_table {
            return Err(corrupt(
                "the inode or directory table lies outside the image",
            ));
        }
        if !within(id_table) || id_count == 0 {
            return Err(corrupt("the id table lies outside the image"));
        }
        if frag_count > 0 && !within(frag_table) {
            return Err(corrupt("the fragment table lies outside the image"));
        }
        // Each table ends where the next one starts (or at the image's end).
        let starts = [
            inode_table,
            dir_table,
            frag_table,
            export_table,
            id_table,
            xattr_table,
        ];
        let next_after = |t: u64| {
            starts
                .iter()
                .copied()
                .filter(|&s| s > t && s < bytes_used)
                .min()
                .unwrap_or(bytes_used)
        };
        let dir_end = next_after(dir_table);

        let mut archive = Archive {
            file,
            offset,
            codec,
            block_size,
            inode_count: le32(&sb, 4),
            bytes_used,
            root,
            inode_table,
            dir_table,
            dir_end,
            frag_count,
            frag_table,
            frag_index: Box::default(),
            ids: Box::default(),
            cache: meta::new_cache(cache_bytes),
        };
        if (root & 0xffff) as usize >= META_SIZE
            || inode_table
                .checked_add(root >> 16)
                .is_none_or(|b| b >= dir_table)
        {
            return Err(corrupt("the root inode lies outside the inode table"));
        }

        // The id table: the index (one u64 per metadata block of 2048 ids), then the ids.
        let id_count = usize::from(id_count);
        let id_blocks = (id_count * 4).div_ceil(META_SIZE);
        let index = archive.read_index(id_table, id_blocks, next_after(id_table))?;
        let mut ids = Vec::with_capacity(id_count);
        for &block in &index {
            let b = archive.meta_block(block, id_table)?;
            let want = (id_count - ids.len()).min(META_SIZE / 4);
            if b.data.len() < want * 4 {
                return Err(corrupt("the id table is short"));
            }
            ids.extend((0..want).map(|i| le32(&b.data, i * 4)));
        }
        archive.ids = ids.into_boxed_slice();

        // The fragment table's index (512 entries of 16 bytes per metadata block); the entries
        // themselves are read when a file's tail is.
        if frag_count > 0 {
            let blocks = (frag_count as usize).div_ceil(META_SIZE / 16);
            archive.frag_index = archive
                .read_index(frag_table, blocks, next_after(frag_table))?
                .into_boxed_slice();
        }
        Ok(archive)
    }

    /// Reads a table index of `count` u64 block positions at `at`, which must end by `end`;
    /// each block lies before the index.
    fn read_index(&self, at: u64, count: usize, end: u64) -> Result<Vec<u64>, SquashError> {
        let len = (count as u64)
            .checked_mul(8)
            .filter(|&l| at.checked_add(l).is_some_and(|e| e <= end));
        let Some(len) = len else {
            return Err(corrupt("a table index runs past its end"));
        };
        let mut raw = vec![0u8; len as usize];
        self.pread(&mut raw, at)?;
        let index: Vec<u64> = raw.chunks_exact(8).map(|c| le64(c, 0)).collect();
        if index.iter().any(|&b| b < SUPERBLOCK_SIZE || b >= at) {
            return Err(corrupt("a table index points outside its table"));
        }
        Ok(index)
    }

    fn pread(&self, buf: &mut [u8], pos: u64) -> Result<(), SquashError> {
        let end = pos.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.bytes_used) {
            return Err(corrupt("a read runs past the end of the image"));
        }
        self.file.read_exact_at(buf, self.offset + pos)?;
        Ok(())
    }

    pub(crate) fn root(&self) -> InodeRef {
        self.root
    }

    pub(crate) fn block_size(&self) -> u32 {
        self.block_size
    }

    pub(crate) fn inode_count(&self) -> u32 {
        self.inode_count
    }

    pub(crate) fn bytes_used(&self) -> u64 {
        self.bytes_used
    }

    fn id(&self, index: u16) -> Result<u32, SquashError> {
        self.ids
            .get(usize::from(index))
            .copied()
            .ok_or_else(|| corrupt("an id index lies past the id table"))
    }

    pub(crate) fn inode(&self, r: InodeRef) -> Result<Inode, SquashError> {
        let offset = (r & 0xffff) as u16;
        let block = self
            .inode_table
            .checked_add(r >> 16)
            .filter(|&b| b < self.dir_table);
        let Some(block) = block.filter(|_| usize::from(offset) < META_SIZE) else {
            return Err(corrupt(format!(
                "inode reference {r:#x} lies outside the inode table"
            )));
        };
        let mut c = Cursor::new(self, MetaPos { block, offset }, self.dir_table)?;
        let mut h = [0u8; 16];
        c.read(&mut h)?;
        let t = le16(&h, 0);
        let kind = kind_of(t).ok_or_else(|| corrupt(format!("unknown inode type {t}")))?;
        let mut inode = Inode {
            reference: r,
            number: le32(&h, 12),
            kind,
            mode: le16(&h, 2) & 0o7777,
            uid: self.id(le16(&h, 4))?,
            gid: self.id(le16(&h, 6))?,
            mtime: le32(&h, 8),
            size: 0,
            nlink: 1,
            rdev: 0,
            blocks_start: 0,
            fragment: NO_FRAGMENT,
            frag_offset: 0,
            dir_block: 0,
            dir_offset: 0,
            index_count: 0,
            tail: MetaPos {
                block: 0,
                offset: 0,
            },
        };
        match t {
            1 => {
                inode.dir_block = c.u32()?;
                inode.nlink = c.u32()?;
                inode.size = u64::from(c.u16()?);
                inode.dir_offset = c.u16()?;
                c.u32()?; // parent
            }
            8 => {
                inode.nlink = c.u32()?;
                inode.size = u64::from(c.u32()?);
                inode.dir_block = c.u32()?;
                c.u32()?; // parent
                inode.index_count = c.u16()?;
                inode.dir_offset = c.u16()?;
                c.u32()?; // xattr
            }
            2 => {
                inode.blocks_start = u64::from(c.u32()?);
                inode.fragment = c.u32()?;
                inode.frag_offset = c.u32()?;
                inode.size = u64::from(c.u32()?);
            }
            9 => {
                inode.blocks_start = c.u64()?;
                inode.size = c.u64()?;
                c.u64()?; // sparse bytes
                inode.nlink = c.u32()?;
                inode.fragment = c.u32()?;
                inode.frag_offset = c.u32()?;
                c.u32()?; // xattr
            }
            3 | 10 => {
                inode.nlink = c.u32()?;
                let len = c.u32()?;
                if len > SYMLINK_MAX {
                    return Err(corrupt(format!("a symlink of {len} bytes")));
                }
                inode.size = u64::from(len);
            }
            4 | 5 | 11 | 12 => {
                inode.nlink = c.u32()?;
                inode.rdev = c.u32()?;
            }
            _ => inode.nlink = c.u32()?,
        }
        if kind == Kind::Dir {
            if inode.size < 3 || usize::from(inode.dir_offset) >= META_SIZE {
                return Err(corrupt("a directory's size or offset is wrong"));
            }
            if self
                .dir_table
                .checked_add(u64::from(inode.dir_block))
                .is_none_or(|b| b >= self.dir_end)
            {
                return Err(corrupt("a directory lies outside the directory table"));
            }
        }
        inode.tail = c.position();
        Ok(inode)
    }

    /// The directory's listing: where it starts and how many bytes it holds.
    fn listing(&self, dir: &Inode) -> (MetaPos, u64) {
        let at = MetaPos {
            block: self.dir_table + u64::from(dir.dir_block),
            offset: dir.dir_offset,
        };
        (at, dir.size.saturating_sub(3))
    }

    /// Walks a directory listing from byte `pos` (a header's start) at `at`, skipping the first
    /// `skip` entries of the first header, calling `f` until it returns false.
    fn walk(
        &self,
        dir: &Inode,
        mut pos: u64,
        at: MetaPos,
        mut skip: u64,
        f: &mut dyn FnMut(&DirEntry<'_>) -> bool,
    ) -> Result<(), SquashError> {
        let (_, len) = self.listing(dir);
        let mut c = Cursor::new(self, at, self.dir_end)?;
        let mut name = [0u8; NAME_MAX];
        while pos < len {
            if len - pos < 12 {
                return Err(corrupt("a directory header runs past its directory"));
            }
            let header = pos;
            let count = u64::from(c.u32()?) + 1;
            let start_block = u64::from(c.u32()?);
            let base = c.u32()?;
            pos += 12;
            if count > 256 {
                return Err(corrupt("a directory header with more than 256 entries"));
            }
            for j in 0..count {
                if len - pos < 8 {
                    return Err(corrupt("a directory entry runs past its directory"));
                }
                let offset = c.u16()?;
                let delta = c.u16()? as i16;
                let t = c.u16()?;
                let size = usize::from(c.u16()?) + 1;
                pos += 8;
                let name = name.get_mut(..size).filter(|_| (size as u64) <= len - pos);
                let Some(name) = name else {
                    return Err(corrupt("a directory entry's name runs past its directory"));
                };
                c.read(name)?;
                pos += size as u64;
                if j < skip {
                    continue;
                }
                if name == b"." || name == b".." || name.iter().any(|&b| b == b'/' || b == 0) {
                    return Err(corrupt("a directory entry's name is not a file name"));
                }
                let kind = kind_of(t).ok_or_else(|| corrupt(format!("unknown entry type {t}")))?;
                if usize::from(offset) >= META_SIZE {
                    return Err(corrupt("a directory entry points outside its inode block"));
                }
                let entry = DirEntry {
                    name,
                    inode: (start_block << 16) | u64::from(offset),
                    kind,
                    cookie: (header << 9) | (j + 1),
                    number: base.wrapping_add_signed(i32::from(delta)),
                };
                if !f(&entry) {
                    return Ok(());
                }
            }
            skip = 0;
        }
        Ok(())
    }

    /// Ok(None) when there is no such name (or `dir` is not a directory).
    pub(crate) fn lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<InodeRef>, SquashError> {
        if dir.kind != Kind::Dir || name.is_empty() || name.len() > NAME_MAX {
            return Ok(None);
        }
        let (mut at, len) = self.listing(dir);
        let mut pos = 0u64;
        // Extended directories index the first name of their headers: start at the last header
        // whose first name is not past `name`.
        if dir.index_count > 0 {
            let mut c = Cursor::new(self, dir.tail, self.dir_table)?;
            let mut first = [0u8; NAME_MAX];
            for _ in 0..dir.index_count {
                let index = u64::from(c.u32()?);
                let block = u64::from(c.u32()?);
                let size = c.u32()? as usize + 1;
                let Some(first) = first.get_mut(..size) else {
                    return Err(corrupt("a directory index name is too long"));
                };
                c.read(first)?;
                if &*first > name {
                    break;
                }
                let block = self
                    .dir_table
                    .checked_add(block)
                    .filter(|&b| b < self.dir_end);
                let Some(block) = block.filter(|_| index < len) else {
                    return Err(corrupt("a directory index points outside its directory"));
                };
                pos = index;
                let offset = ((u64::from(dir.dir_offset) + index) % META_SIZE as u64) as u16;
                at = MetaPos { block, offset };
            }
        }
        let mut found = None;
        self.walk(dir, pos, at, 0, &mut |e| match e.name.cmp(name) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal => {
                found = Some(e.inode);
                false
            }
            // Names are sorted: it is not there.
            std::cmp::Ordering::Greater => false,
        })?;
        Ok(found)
    }

    /// Calls `f` for each entry after `cookie` (0 = from the start) in on-disk order until `f`
    /// returns false (the reply buffer is full) or the directory ends.
    pub(crate) fn read_dir(
        &self,
        dir: &Inode,
        cookie: u64,
        f: &mut dyn FnMut(&DirEntry<'_>) -> bool,
    ) -> Result<(), SquashError> {
        if dir.kind != Kind::Dir {
            return Ok(());
        }
        let (at, len) = self.listing(dir);
        let (pos, skip) = (cookie >> 9, cookie & 0x1ff);
        if pos >= len {
            return Ok(());
        }
        let mut c = Cursor::new(self, at, self.dir_end)?;
        c.skip(pos)?;
        self.walk(dir, pos, c.position(), skip, f)
    }

    /// The inode at the absolute `path` in the image, following symlinks (at most 40, as the
    /// kernel does; ".." stops at the root), or None if it does not resolve.
    pub(crate) fn resolve(&self, path: &[u8]) -> Result<Option<Inode>, SquashError> {
        let mut dirs = vec![self.inode(self.root)?];
        let mut rest: std::collections::VecDeque<Vec<u8>> =
            path.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
        let mut links = 0;
        while let Some(name) = rest.pop_front() {
            match &name[..] {
                b"" | b"." => continue,
                b".." => {
                    if dirs.len() > 1 {
                        dirs.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let Some(dir) = dirs.last() else {
                return Ok(None);
            };
            let Some(r) = self.lookup(dir, &name)? else {
                return Ok(None);
            };
            let inode = self.inode(r)?;
            if inode.kind == Kind::Symlink {
                links += 1;
                if links > 40 {
                    return Ok(None);
                }
                let target = self.read_link(&inode)?;
                if target.first() == Some(&b'/') {
                    dirs.truncate(1);
                }
                for part in target.split(|&b| b == b'/').rev() {
                    rest.push_front(part.to_vec());
                }
                continue;
            }
            dirs.push(inode);
        }
        Ok(dirs.pop())
    }

    /// Decompresses the compressed blocks of a file's first `max` bytes (and its tail's
    /// fragment, if the file is no longer) into the block cache, so that reads find them there.
    /// A block being read meanwhile is decompressed by its reader too: a read never waits on
    /// this (a preloading thread may be slow).
    pub(crate) fn preload(&self, file: &Inode, max: u64) -> Result<(), SquashError> {
        if file.kind != Kind::File {
            return Ok(());
        }
        let count = self
            .block_count(file)
            .min(max.div_ceil(u64::from(self.block_size)));
        if count > 0 {
            let (mut c, mut data) = self.seek_block(file, 0)?;
            for _ in 0..count {
                let word = c.u32()?;
                self.preload_block(word, data)?;
                data = next_data(data, word)?;
            }
        }
        if file.fragment != NO_FRAGMENT && file.size <= max {
            if file.fragment >= self.frag_count {
                return Err(corrupt("a file's fragment lies past the fragment table"));
            }
            let (word, data) = self.fragment(file.fragment)?;
            self.preload_block(word, data)?;
        }
        Ok(())
    }

    fn preload_block(&self, word: u32, pos: u64) -> Result<(), SquashError> {
        // Sparse and stored blocks have nothing to decompress.
        if word == 0 || word & UNCOMPRESSED_BLOCK != 0 {
            return Ok(());
        }
        let key = Key::Data(pos, word);
        if self.cache.peek(&key).is_none() {
            let block = self.unpack_block(word, pos)?;
            self.cache.insert(key, block);
        }
        Ok(())
    }

    pub(crate) fn read_link(&self, link: &Inode) -> Result<Vec<u8>, SquashError> {
        if link.kind != Kind::Symlink {
            return Err(corrupt("not a symlink"));
        }
        let mut target = vec![0u8; link.size.min(u64::from(SYMLINK_MAX)) as usize];
        Cursor::new(self, link.tail, self.dir_table)?.read(&mut target)?;
        Ok(target)
    }

    /// The number of full data blocks of a file (its tail may be in a fragment).
    fn block_count(&self, file: &Inode) -> u64 {
        let bs = u64::from(self.block_size);
        if file.fragment == NO_FRAGMENT {
            file.size.div_ceil(bs)
        } else {
            file.size / bs
        }
    }

    /// A cursor on the block list at entry `i`, and the position of block `i`'s data.
    fn seek_block(&self, file: &Inode, i: u64) -> Result<(Cursor<'_>, u64), SquashError> {
        let count = self.block_count(file);
        if count <= SHORT_LIST {
            let mut c = Cursor::new(self, file.tail, self.dir_table)?;
            let mut data = file.blocks_start;
            for _ in 0..i {
                data = next_data(data, c.u32()?)?;
            }
            return Ok((c, data));
        }
        let stride = SHORT_LIST.max(count.div_ceil(MAX_POINTS));
        let value = self
            .cache
            .get_or_insert_with(&Key::Points(file.reference), || {
                let max = count / stride + 1;
                Ok::<_, SquashError>(Value::Points(Arc::new(Points {
                    stride,
                    weight: max * 24 + 96,
                    points: Mutex::new(vec![(file.tail, file.blocks_start)]),
                })))
            })?;
        let Value::Points(points) = value else {
            return Err(corrupt("a block list is also a metadata block"));
        };
        let stride = points.stride;
        let (mut j, start) = {
            let v = points.points.lock().unwrap_or_else(|e| e.into_inner());
            let k = (i / stride).min(v.len() as u64 - 1);
            (
                k * stride,
                v.get(k as usize)
                    .copied()
                    .unwrap_or((file.tail, file.blocks_start)),
            )
        };
        let mut c = Cursor::new(self, start.0, self.dir_table)?;
        let mut data = start.1;
        while j < i {
            data = next_data(data, c.u32()?)?;
            j += 1;
            if j % stride == 0 {
                let mut v = points.points.lock().unwrap_or_else(|e| e.into_inner());
                if v.len() as u64 == j / stride {
                    v.push((c.position(), data));
                }
            }
        }
        Ok((c, data))
    }

    /// Appends up to `size` bytes from `offset` to `out` (fewer at end of file, none past it);
    /// sparse blocks read as zeros; fragments/tail ends handled.
    #[cfg_attr(not(test), allow(dead_code))] // imagefs reads into its reply buffer
    pub(crate) fn read(
        &self,
        file: &Inode,
        offset: u64,
        size: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), SquashError> {
        let start_len = out.len();
        let want = u64::from(size).min(file.size.saturating_sub(offset));
        out.resize(start_len + want as usize, 0);
        let result = self.read_into(file, offset, out.get_mut(start_len..).unwrap_or_default());
        out.truncate(start_len + *result.as_ref().unwrap_or(&0));
        result.map(|_| ())
    }

    /// Reads up to `dst.len()` bytes from `offset` into `dst`; returns how many (fewer at end of
    /// file, none past it). `dst` may hold old bytes: every byte returned is written, so a
    /// reused buffer is never zeroed per read.
    pub(crate) fn read_into(
        &self,
        file: &Inode,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<usize, SquashError> {
        if file.kind != Kind::File || offset >= file.size {
            return Ok(0);
        }
        let end = file.size.min(offset.saturating_add(dst.len() as u64));
        let bs = u64::from(self.block_size);
        let count = self.block_count(file);
        let mut at = offset;
        let mut list = None;
        while at < end {
            let i = at / bs;
            let in_block = at % bs;
            let block_len = bs.min(file.size - i * bs);
            let n = (end - at).min(block_len - in_block);
            let from = (at - offset) as usize;
            let out = dst
                .get_mut(from..from + n as usize)
                .ok_or_else(|| corrupt("a read runs past its buffer"))?;
            if i < count {
                if list.is_none() {
                    list = Some(self.seek_block(file, i)?);
                }
                let Some((c, data)) = list.as_mut() else {
                    break;
                };
                let word = c.u32()?;
                self.read_block(word, *data, in_block, n == block_len, out)?;
                *data = next_data(*data, word)?;
            } else {
                // The tail, in a fragment block.
                if file.fragment >= self.frag_count {
                    return Err(corrupt("a file's fragment lies past the fragment table"));
                }
                let (word, data) = self.fragment(file.fragment)?;
                let from = u64::from(file.frag_offset) + in_block;
                self.read_block(word, data, from, false, out)?;
            }
            at += n;
        }
        Ok((at - offset) as usize)
    }

    /// Where the bytes `offset..offset + len` of `file` lie in the image file, when they are
    /// stored as they are (uncompressed, not sparse, not in a fragment) and so in one
    /// contiguous stretch: (position in the image file, length). `None` when they are not, or
    /// when a block is malformed (`read_into` then says how).
    pub(crate) fn stored_range(
        &self,
        file: &Inode,
        offset: u64,
        len: u64,
    ) -> Result<Option<(u64, u64)>, SquashError> {
        if file.kind != Kind::File || offset >= file.size || len == 0 {
            return Ok(None);
        }
        let end = file.size.min(offset.saturating_add(len));
        let bs = u64::from(self.block_size);
        let (first, last) = (offset / bs, (end - 1) / bs);
        if last >= self.block_count(file) {
            return Ok(None);
        }
        let (mut c, mut data) = self.seek_block(file, first)?;
        let start = data.saturating_add(offset % bs);
        for i in first..=last {
            let word = c.u32()?;
            let block_len = bs.min(file.size - i * bs);
            if word & UNCOMPRESSED_BLOCK == 0 || self.block_len(word, data).ok() != Some(block_len)
            {
                return Ok(None);
            }
            data = next_data(data, word)?;
        }
        Ok(Some((self.offset + start, end - offset)))
    }

    /// The image file, for reads that bypass the reader (`stored_range`).
    pub(crate) fn image_file(&self) -> &File {
        &self.file
    }

    /// Fragment `index`'s size word and position.
    fn fragment(&self, index: u32) -> Result<(u32, u64), SquashError> {
        let per_block = (META_SIZE / 16) as u32;
        let block = self.frag_index.get((index / per_block) as usize).copied();
        let Some(block) = block else {
            return Err(corrupt("a fragment lies past the fragment table"));
        };
        let offset = ((index % per_block) * 16) as u16;
        let mut c = Cursor::new(self, MetaPos { block, offset }, self.frag_table)?;
        let start = c.u64()?;
        let word = c.u32()?;
        Ok((word, start))
    }

    /// Fills `out` with the bytes from `from` in the block at `pos` whose size word is `word`.
    /// `whole`: `out` is the whole of a data block.
    fn read_block(
        &self,
        word: u32,
        pos: u64,
        from: u64,
        whole: bool,
        out: &mut [u8],
    ) -> Result<(), SquashError> {
        if word == 0 {
            // A sparse block: all zeros, nothing on disk.
            out.fill(0);
            return Ok(());
        }
        let n = out.len() as u64;
        let len = self.block_len(word, pos)?;
        let short = || corrupt("a data block is shorter than its file");
        if word & UNCOMPRESSED_BLOCK != 0 {
            if from + n > len {
                return Err(short());
            }
            return self.pread(out, pos + from);
        }
        let key = Key::Data(pos, word);
        if whole && self.cache.peek(&key).is_none() {
            // The reply wants the whole block: decompress it straight there (a block holding
            // more than its file says does not fit: corrupt). The kernel's page cache keeps
            // it; caching it here too would only evict fragments.
            let got = self.unpack(pos, len, out)?;
            return if got as u64 == n {
                Ok(())
            } else {
                Err(short())
            };
        }
        let value = self
            .cache
            .get_or_insert_with(&key, || self.unpack_block(word, pos))?;
        let Value::Block(block) = value else {
            return Err(corrupt("a data block is also a block list"));
        };
        let bytes = block.data.get(from as usize..(from + n) as usize);
        out.copy_from_slice(bytes.ok_or_else(short)?);
        Ok(())
    }

    /// The stored length of the data block at `pos` whose size word is `word`, checked to lie
    /// in the image.
    fn block_len(&self, word: u32, pos: u64) -> Result<u64, SquashError> {
        let len = u64::from(word & !UNCOMPRESSED_BLOCK);
        if len > u64::from(self.block_size)
            || pos.checked_add(len).is_none_or(|e| e > self.bytes_used)
        {
            return Err(corrupt("a data block lies outside the image"));
        }
        Ok(len)
    }

    /// The compressed data block at `pos`, decompressed, for the cache.
    fn unpack_block(&self, word: u32, pos: u64) -> Result<Value, SquashError> {
        let len = self.block_len(word, pos)?;
        let mut data = vec![0u8; self.block_size as usize];
        let got = self.unpack(pos, len, &mut data)?;
        data.truncate(got);
        Ok(Value::Block(Arc::new(meta::Block {
            data: data.into_boxed_slice(),
            next: 0,
        })))
    }

    /// Decompresses the `len` bytes at `pos` into `dst`; returns the length.
    fn unpack(&self, pos: u64, len: u64, dst: &mut [u8]) -> Result<usize, SquashError> {
        PACKED.with_borrow_mut(|packed| {
            packed.resize(len as usize, 0);
            self.pread(packed, pos)?;
            self.codec.decompress(packed, dst)
        })
    }
}

thread_local! {
    /// The compressed bytes of a block being read, per thread: no allocation (an mmap, for
    /// large blocks) per block.
    static PACKED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The data position after a block of size word `word` at `data`.
fn next_data(data: u64, word: u32) -> Result<u64, SquashError> {
    data.checked_add(u64::from(word & !UNCOMPRESSED_BLOCK))
        .ok_or_else(|| corrupt("a file's blocks run past the end of the image"))
}
