//! Metadata blocks (the inode, directory, fragment and id tables) and the block cache.
//!
//! A metadata block is a 2-byte header (bit 15: stored uncompressed; the rest: its length on disk)
//! followed by at most 8 KiB once decompressed. Tables are chains of such blocks; a chain is only
//! ever followed forwards and never past the end of its table, so every walk ends.

use super::{Archive, SquashError};
use std::sync::{Arc, Mutex};

pub(super) const META_SIZE: usize = 8192;

/// A decompressed block (metadata, data or fragment).
pub(super) struct Block {
    pub data: Box<[u8]>,
    /// For metadata: where the next block of the chain starts on disk.
    pub next: u64,
}

/// Checkpoints through a long block list: entry `k * stride` of the list is at `points[k]`,
/// with its data block at the `u64` position. Filled lazily as reads go further into the file.
pub(super) struct Points {
    pub stride: u64,
    pub weight: u64,
    pub points: Mutex<Vec<(MetaPos, u64)>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Key {
    Meta(u64),
    /// A data or fragment block: its position and size word (a hostile image may read the same
    /// bytes with two different lengths; each gets its own entry).
    Data(u64, u32),
    /// The block list checkpoints of the file at this inode reference.
    Points(u64),
}

#[derive(Clone)]
pub(super) enum Value {
    Block(Arc<Block>),
    Points(Arc<Points>),
}

#[derive(Clone)]
pub(super) struct Weigh;

impl quick_cache::Weighter<Key, Value> for Weigh {
    fn weight(&self, _key: &Key, value: &Value) -> u64 {
        // The fixed part: the map entry, the Arc and the allocator's header.
        match value {
            Value::Block(b) => b.data.len() as u64 + 96,
            Value::Points(p) => p.weight,
        }
    }
}

pub(super) type Cache = quick_cache::sync::Cache<Key, Value, Weigh>;

pub(super) fn new_cache(cache_bytes: usize) -> Cache {
    let items = (cache_bytes / META_SIZE).clamp(16, 1 << 20);
    Cache::with_weighter(items, cache_bytes as u64, Weigh)
}

/// A position in a metadata table: the block's position on disk (from the start of the image)
/// and an offset into its decompressed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MetaPos {
    pub block: u64,
    pub offset: u16,
}

pub(super) fn corrupt(what: impl Into<String>) -> SquashError {
    SquashError::Corrupt(what.into())
}

impl Archive {
    /// The metadata block at `pos`, which must end before `end` (its table's end).
    pub(super) fn meta_block(&self, pos: u64, end: u64) -> Result<Arc<Block>, SquashError> {
        let value = self.cache.get_or_insert_with(&Key::Meta(pos), || {
            self.load_meta(pos, end).map(|b| Value::Block(Arc::new(b)))
        })?;
        match value {
            Value::Block(b) if b.next <= end => Ok(b),
            Value::Block(_) => Err(corrupt("a metadata block runs past its table")),
            Value::Points(_) => Err(corrupt("a metadata block is also a block list")),
        }
    }

    fn load_meta(&self, pos: u64, end: u64) -> Result<Block, SquashError> {
        let end = end.min(self.bytes_used);
        let room = end
            .checked_sub(pos)
            .filter(|room| *room >= 3 && pos >= super::SUPERBLOCK_SIZE)
            .ok_or_else(|| corrupt("a metadata block lies outside its table"))?;
        let mut buf = [0u8; 2 + META_SIZE];
        let want = usize::try_from(room).unwrap_or(usize::MAX).min(buf.len());
        let buf = buf
            .get_mut(..want)
            .ok_or_else(|| corrupt("metadata read"))?;
        self.pread(buf, pos)?;
        let header = super::le16(buf, 0);
        let len = usize::from(header & 0x7fff);
        let body = buf
            .get(2..2 + len)
            .filter(|b| !b.is_empty() && b.len() <= META_SIZE)
            .ok_or_else(|| corrupt("a metadata block's length is wrong"))?;
        let data: Box<[u8]> = if header & 0x8000 != 0 {
            body.into()
        } else {
            let mut out = vec![0u8; META_SIZE];
            let n = self.codec.decompress(body, &mut out)?;
            if n == 0 {
                return Err(corrupt("an empty metadata block"));
            }
            out.truncate(n);
            out.into_boxed_slice()
        };
        Ok(Block {
            data,
            next: pos + 2 + len as u64,
        })
    }
}

/// Reads a metadata table sequentially from a position, across blocks.
pub(super) struct Cursor<'a> {
    archive: &'a Archive,
    block: Arc<Block>,
    pos: u64,
    off: usize,
    end: u64,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(archive: &'a Archive, at: MetaPos, end: u64) -> Result<Self, SquashError> {
        let block = archive.meta_block(at.block, end)?;
        let off = usize::from(at.offset);
        if off > block.data.len() {
            return Err(corrupt("a metadata offset lies past its block"));
        }
        Ok(Cursor {
            archive,
            block,
            pos: at.block,
            off,
            end,
        })
    }

    pub(super) fn position(&self) -> MetaPos {
        // `off` never exceeds the block's length, which is at most 8 KiB.
        MetaPos {
            block: self.pos,
            offset: self.off as u16,
        }
    }

    fn advance(&mut self) -> Result<(), SquashError> {
        let next = self.block.next;
        if next >= self.end {
            return Err(corrupt("metadata runs past the end of its table"));
        }
        self.block = self.archive.meta_block(next, self.end)?;
        self.pos = next;
        self.off = 0;
        Ok(())
    }

    pub(super) fn read(&mut self, buf: &mut [u8]) -> Result<(), SquashError> {
        let mut done = 0;
        while done < buf.len() {
            if self.off >= self.block.data.len() {
                self.advance()?;
            }
            let avail = self.block.data.get(self.off..).unwrap_or_default();
            let dst = buf.get_mut(done..).unwrap_or_default();
            let n = avail.len().min(dst.len());
            if let (Some(d), Some(s)) = (dst.get_mut(..n), avail.get(..n)) {
                d.copy_from_slice(s);
            }
            done += n;
            self.off += n;
        }
        Ok(())
    }

    pub(super) fn skip(&mut self, mut n: u64) -> Result<(), SquashError> {
        while n > 0 {
            if self.off >= self.block.data.len() {
                self.advance()?;
            }
            let avail = (self.block.data.len() - self.off) as u64;
            let step = avail.min(n);
            n -= step;
            self.off += step as usize;
        }
        Ok(())
    }

    pub(super) fn u16(&mut self) -> Result<u16, SquashError> {
        let mut b = [0u8; 2];
        self.read(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub(super) fn u32(&mut self) -> Result<u32, SquashError> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub(super) fn u64(&mut self) -> Result<u64, SquashError> {
        let mut b = [0u8; 8];
        self.read(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}
