//! berth's own lazy squashfs reader (issue 14): serves the FUSE image server (imagefs.rs).
//! See /work/helpers/squashfs-api.md for the contract. Work in progress.
#![allow(dead_code)]

use std::fs::File;

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
    pub number: u32,
    pub kind: Kind,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub size: u64,
    pub nlink: u32,
    pub rdev: u32,
}

pub(crate) struct DirEntry<'a> {
    pub name: &'a [u8],
    pub inode: InodeRef,
    pub kind: Kind,
    pub cookie: u64,
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

pub(crate) struct Archive {
    file: File,
}

fn not_yet() -> SquashError {
    SquashError::Unsupported("not yet".into())
}

impl Archive {
    pub(crate) fn open(
        file: File,
        offset: u64,
        cache_bytes: usize,
    ) -> Result<Archive, SquashError> {
        let _ = (file, offset, cache_bytes);
        Err(not_yet())
    }
    pub(crate) fn root(&self) -> InodeRef {
        0
    }
    pub(crate) fn inode(&self, r: InodeRef) -> Result<Inode, SquashError> {
        let _ = r;
        Err(not_yet())
    }
    pub(crate) fn lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<InodeRef>, SquashError> {
        let _ = (dir, name);
        Err(not_yet())
    }
    pub(crate) fn read_dir(
        &self,
        dir: &Inode,
        cookie: u64,
        f: &mut dyn FnMut(&DirEntry<'_>) -> bool,
    ) -> Result<(), SquashError> {
        let _ = (dir, cookie, f);
        Err(not_yet())
    }
    pub(crate) fn read_link(&self, link: &Inode) -> Result<Vec<u8>, SquashError> {
        let _ = link;
        Err(not_yet())
    }
    pub(crate) fn read(
        &self,
        file: &Inode,
        offset: u64,
        size: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), SquashError> {
        let _ = (file, offset, size, out);
        Err(not_yet())
    }
    pub(crate) fn block_size(&self) -> u32 {
        0
    }
    pub(crate) fn inode_count(&self) -> u32 {
        0
    }
    pub(crate) fn bytes_used(&self) -> u64 {
        0
    }
}
