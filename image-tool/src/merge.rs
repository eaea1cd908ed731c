//! The layers of an image merged in memory, without unpacking them: a tree of the paths the
//! image will hold, each file pointing at the layer entry whose data it has.
//!
//! [`Tree::apply`] takes a layer's entries (their tar headers, see [`scan`]) and does to the
//! tree what [`crate::unpack::Unpacker::apply`] does to a directory, rule for rule: names that
//! escape (`..`, absolute paths, hardlink targets likewise) refuse the layer; parents resolve
//! inside the root as `openat2(RESOLVE_IN_ROOT)` resolves them (symlinks followed, `..` stops at
//! the root, 40 links at most); device nodes and fifos are skipped; setuid, setgid and sticky
//! file bits are dropped; whiteouts and opaque directories hide what lower layers put there.
//! The tests compare the two on a hostile corpus (`fuzz_unpack.rs`).

use crate::unpack::{clean_path, human, LayerStats};
use nix::errno::Errno;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use tar::EntryType;

/// One tar entry of a layer: what its header says; the data stays in the layer.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    pub kind: EntryType,
    pub mode: u32,
    pub mtime: u64,
    /// The size of the file's content (for a GNU sparse entry: with its holes).
    pub size: u64,
    pub link: Option<PathBuf>,
}

/// Where a file's data is: the `entry`th entry of layer `layer`, or the image config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Data {
    Layer { layer: u32, entry: u32 },
    Config,
}

type Id = usize;
const ROOT: Id = 0;
/// Symlinks a resolution follows before it gives up (the kernel's MAXSYMLINKS).
const MAX_LINKS: u32 = 40;
/// The kernel's limits on a name and on a path (with its NUL), as the unpacker meets them.
const NAME_MAX: usize = 255;
const PATH_MAX: usize = 4096;

#[derive(Debug, Clone)]
pub enum Node {
    Dir {
        parent: Id,
        mode: u32,
        mtime: u64,
        children: BTreeMap<OsString, Id>,
    },
    /// Hardlinks share one node: files are never changed in place, only replaced.
    File {
        data: Data,
        size: u64,
        mode: u32,
        mtime: u64,
    },
    Symlink {
        target: PathBuf,
        mtime: u64,
    },
}

pub struct Tree {
    nodes: Vec<Node>,
    /// Paths created by the layer being applied (an opaque marker keeps these).
    this_layer: HashSet<PathBuf>,
    pub warnings: Vec<String>,
    /// Bytes of file content (holes included) so far, over all layers.
    pub unpacked: u64,
    max_size: u64,
    /// The mtime of directories the layers do not name (the build time).
    now: u64,
}

fn errno_msg(what: &str, path: &Path, e: Errno) -> String {
    format!("{what} '{}': {}", path.display(), e.desc())
}

/// The entries of one layer (an uncompressed tar stream), read to its end; or, once its files
/// add up to more than `max_size`, only so far (false): the merge then refuses the layer
/// without a bomb of zeros being expanded to its end first.
pub fn scan(
    reader: impl Read,
    cancelled: &dyn Fn() -> bool,
    max_size: u64,
) -> Result<(Vec<Entry>, bool), String> {
    let mut out = Vec::new();
    let mut files = 0u64;
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        if cancelled() {
            return Err("interrupted".into());
        }
        let entry = entry.map_err(|e| format!("broken tar stream: {e}"))?;
        let h = entry.header();
        out.push(Entry {
            path: entry
                .path()
                .map_err(|e| format!("bad entry name: {e}"))?
                .into_owned(),
            kind: h.entry_type(),
            mode: h.mode().unwrap_or(0o644),
            mtime: h.mtime().unwrap_or(0),
            size: entry.size(),
            link: entry
                .link_name()
                .ok()
                .flatten()
                .map(|l| l.into_owned())
                .filter(|l| !l.as_os_str().is_empty()),
        });
        if matches!(
            h.entry_type(),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
        ) {
            files = files.saturating_add(entry.size());
            if files > max_size {
                return Ok((out, false));
            }
        }
    }
    Ok((out, true))
}

impl Tree {
    pub fn new(now: u64) -> Tree {
        Tree {
            nodes: vec![Node::Dir {
                parent: ROOT,
                mode: 0o755,
                mtime: now,
                children: BTreeMap::new(),
            }],
            this_layer: HashSet::new(),
            warnings: Vec::new(),
            unpacked: 0,
            max_size: u64::MAX,
            now,
        }
    }

    /// Refuse layers once their files add up to more than `bytes` (holes included).
    pub fn set_max_size(&mut self, bytes: u64) {
        self.max_size = bytes;
    }

    fn children(&self, id: Id) -> Option<&BTreeMap<OsString, Id>> {
        match &self.nodes[id] {
            Node::Dir { children, .. } => Some(children),
            _ => None,
        }
    }

    fn children_mut(&mut self, id: Id) -> &mut BTreeMap<OsString, Id> {
        match &mut self.nodes[id] {
            Node::Dir { children, .. } => children,
            _ => unreachable!("only directories are parents"),
        }
    }

    fn child(&self, dir: Id, name: &OsStr) -> Option<Id> {
        self.children(dir).and_then(|c| c.get(name).copied())
    }

    fn is_dir(&self, id: Id) -> bool {
        matches!(self.nodes[id], Node::Dir { .. })
    }

    fn add(&mut self, dir: Id, name: &OsStr, node: Node) -> Id {
        self.nodes.push(node);
        let id = self.nodes.len() - 1;
        self.children_mut(dir).insert(name.to_owned(), id);
        id
    }

    /// A directory by its path, every symlink followed, as `openat2(RESOLVE_IN_ROOT)` finds it.
    fn resolve_dir(&self, path: &Path) -> Result<Id, Errno> {
        if path.as_os_str().len() >= PATH_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let mut todo: Vec<OsString> = Vec::new();
        push_components(&mut todo, path);
        let (mut cur, mut links) = (ROOT, 0);
        while let Some(c) = todo.pop() {
            if c == ".." {
                if let Node::Dir { parent, .. } = self.nodes[cur] {
                    cur = parent;
                }
                continue;
            }
            let children = self.children(cur).ok_or(Errno::ENOTDIR)?;
            if c.len() > NAME_MAX {
                return Err(Errno::ENAMETOOLONG);
            }
            let next = *children.get(&c).ok_or(Errno::ENOENT)?;
            match &self.nodes[next] {
                Node::Symlink { target, .. } => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(Errno::ELOOP);
                    }
                    if target.as_os_str().is_empty() {
                        return Err(Errno::ENOENT);
                    }
                    if target.has_root() {
                        cur = ROOT;
                    }
                    push_components(&mut todo, target);
                }
                _ => cur = next,
            }
        }
        if self.is_dir(cur) {
            Ok(cur)
        } else {
            Err(Errno::ENOTDIR)
        }
    }

    /// The parent directory of an entry, made (0755) where missing, a dangling symlink in
    /// the way replaced: as the unpacker's `parent_dir`.
    fn parent_dir(&mut self, parent: &Path) -> Result<Id, String> {
        match self.resolve_dir(parent) {
            Ok(id) => return Ok(id),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(errno_msg("cannot open directory", parent, e)),
        }
        let mut dir = ROOT;
        let mut so_far = PathBuf::new();
        for c in parent.components() {
            so_far.push(c);
            match self.resolve_dir(&so_far) {
                Ok(id) => dir = id,
                Err(Errno::ENOENT) => {
                    let name = c.as_os_str();
                    if self.child(dir, name).is_some_and(|id| !self.is_dir(id)) {
                        self.children_mut(dir).remove(name);
                    }
                    if self.child(dir, name).is_some() {
                        return Err(errno_msg("cannot create directory", &so_far, Errno::EEXIST));
                    }
                    let now = self.now;
                    dir = self.add(
                        dir,
                        name,
                        Node::Dir {
                            parent: dir,
                            mode: 0o755,
                            mtime: now,
                            children: BTreeMap::new(),
                        },
                    );
                }
                Err(e) => return Err(errno_msg("cannot open directory", &so_far, e)),
            }
        }
        Ok(dir)
    }

    /// Apply layer `layer`'s entries. Stops at the first refused entry, as the unpacker does.
    pub fn apply(&mut self, layer: u32, entries: &[Entry]) -> Result<LayerStats, String> {
        self.this_layer.clear();
        let mut stats = LayerStats::default();
        for (i, e) in entries.iter().enumerate() {
            stats.entries += 1;
            if matches!(e.kind, EntryType::XGlobalHeader | EntryType::XHeader) {
                continue;
            }
            let Some(rel) = clean_path(&e.path)? else {
                continue; // the root itself: its mode is ours to choose
            };
            let name = rel.file_name().expect("non-empty path has a name");
            let parent = rel.parent().unwrap_or(Path::new(""));
            if let Some(hidden) = name.to_string_lossy().strip_prefix(".wh.") {
                stats.whiteouts += 1;
                self.whiteout(&e.path, parent, hidden)?;
                continue;
            }
            let data = Data::Layer {
                layer,
                entry: i as u32,
            };
            if self.entry(e, &rel, data, &mut stats)? {
                self.this_layer.insert(rel);
            }
        }
        Ok(stats)
    }

    fn whiteout(&mut self, raw: &Path, parent: &Path, hidden: &str) -> Result<(), String> {
        if hidden == ".wh..opq" {
            return self.opaque(parent);
        }
        if matches!(hidden, "" | "." | "..") {
            // `.wh..` would remove the directory itself, `.wh...` its parent.
            return Err(format!(
                "layer entry {} is a whiteout of '{hidden}', which no layer may remove: the image is broken or hostile",
                raw.display()
            ));
        }
        let dir = match self.resolve_dir(parent) {
            Ok(d) => d,
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(()),
            Err(e) => return Err(errno_msg("cannot open directory", parent, e)),
        };
        if hidden.len() > NAME_MAX {
            let e = Errno::ENAMETOOLONG;
            return Err(errno_msg("cannot remove", &parent.join(hidden), e));
        }
        // The name as the unpacker has it (lossy: a name that is not UTF-8 is not found).
        self.children_mut(dir).remove(OsStr::new(hidden));
        Ok(())
    }

    fn opaque(&mut self, dir_rel: &Path) -> Result<(), String> {
        let dir = match self.resolve_dir(dir_rel) {
            Ok(d) => d,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(errno_msg("cannot open directory", dir_rel, e)),
        };
        let keep = &self.this_layer;
        let Node::Dir { children, .. } = &mut self.nodes[dir] else {
            unreachable!("resolve_dir returns directories")
        };
        children.retain(|name, _| keep.contains(&dir_rel.join(name)));
        Ok(())
    }

    /// A non-whiteout entry at `rel`; false if it was skipped (a device, an unknown type).
    fn entry(
        &mut self,
        e: &Entry,
        rel: &Path,
        data: Data,
        stats: &mut LayerStats,
    ) -> Result<bool, String> {
        let name = rel.file_name().expect("non-empty path has a name");
        let dir = self.parent_dir(rel.parent().unwrap_or(Path::new("")))?;
        let existing = self.child(dir, name);
        let existing_is_dir = existing.is_some_and(|id| self.is_dir(id));
        // Replace what is there, except a directory by a directory (keeps its contents).
        if existing.is_some() && !(e.kind == EntryType::Directory && existing_is_dir) {
            self.children_mut(dir).remove(name);
        }
        let too_long = |what: &str| -> Result<(), String> {
            match name.len() > NAME_MAX {
                true => Err(errno_msg(what, rel, Errno::ENAMETOOLONG)),
                false => Ok(()),
            }
        };
        let node = match e.kind {
            EntryType::Directory => {
                too_long("cannot create directory")?;
                let mode = (e.mode & 0o1777) | 0o700;
                if let Some(Node::Dir { mode: m, mtime, .. }) = existing
                    .filter(|_| existing_is_dir)
                    .map(|id| &mut self.nodes[id])
                {
                    (*m, *mtime) = (mode, e.mtime);
                    return Ok(true);
                }
                Node::Dir {
                    parent: dir,
                    mode,
                    mtime: e.mtime,
                    children: BTreeMap::new(),
                }
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let node = self.file(e, rel, data)?;
                too_long("cannot create")?;
                node
            }
            EntryType::Symlink => {
                let target = e
                    .link
                    .clone()
                    .ok_or_else(|| format!("symlink '{}' has no target", rel.display()))?;
                too_long("cannot create symlink")?;
                if target.as_os_str().len() >= PATH_MAX {
                    let e = Errno::ENAMETOOLONG;
                    return Err(errno_msg("cannot create symlink", rel, e));
                }
                Node::Symlink {
                    target,
                    mtime: e.mtime,
                }
            }
            EntryType::Link => {
                let id = self.hardlink_target(e, rel)?;
                self.children_mut(dir).insert(name.to_owned(), id);
                return Ok(true);
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                stats.skipped += 1;
                self.warnings
                    .push(format!("skipped device node or fifo /{}", rel.display()));
                return Ok(false);
            }
            other => {
                stats.skipped += 1;
                self.warnings.push(format!(
                    "skipped /{} of unsupported tar type {other:?}",
                    rel.display()
                ));
                return Ok(false);
            }
        };
        self.add(dir, name, node);
        Ok(true)
    }

    fn file(&mut self, e: &Entry, rel: &Path, data: Data) -> Result<Node, String> {
        if self.unpacked.saturating_add(e.size) > self.max_size {
            return Err(format!(
                "the image unpacks to more than --max-size {} (/{} alone is {}); \
                 give a larger --max-size if it is meant to be that big",
                human(self.max_size),
                rel.display(),
                human(e.size)
            ));
        }
        self.unpacked += e.size;
        if e.mode & 0o6000 != 0 {
            self.warnings
                .push(format!("dropped setuid/setgid bits of /{}", rel.display()));
        }
        Ok(Node::File {
            data,
            size: e.size,
            // No setuid/setgid/sticky; the owner can always read.
            mode: (e.mode & 0o777) | 0o400,
            mtime: e.mtime,
        })
    }

    /// The node a hardlink entry names (a file or a symlink; never a directory).
    fn hardlink_target(&self, e: &Entry, rel: &Path) -> Result<Id, String> {
        let target = e
            .link
            .as_ref()
            .ok_or_else(|| format!("hardlink '{}' has no target", rel.display()))?;
        let target = clean_path(target)
            .map_err(|err| format!("hardlink '{}': target {err}", rel.display()))?
            .ok_or_else(|| format!("hardlink '{}' points at the root", rel.display()))?;
        let tdir = self
            .resolve_dir(target.parent().unwrap_or(Path::new("")))
            .map_err(|err| errno_msg("hardlink target not in the image", &target, err))?;
        let cant = |err| {
            errno_msg(
                &format!("cannot hardlink '{}' to", rel.display()),
                &target,
                err,
            )
        };
        let tname = target.file_name().expect("non-empty");
        // In linkat's order: the old name is looked up, the new one made, then the kind checked.
        if tname.len() > NAME_MAX {
            return Err(cant(Errno::ENAMETOOLONG));
        }
        let id = self.child(tdir, tname).ok_or_else(|| cant(Errno::ENOENT))?;
        if rel.file_name().is_some_and(|n| n.len() > NAME_MAX) {
            return Err(cant(Errno::ENAMETOOLONG));
        }
        if self.is_dir(id) {
            return Err(cant(Errno::EPERM));
        }
        Ok(id)
    }

    /// Write a file at `rel` (the image config), replacing whatever is there.
    pub fn add_config(&mut self, rel: &Path, size: u64) -> Result<(), String> {
        let name = rel.file_name().ok_or("empty path")?;
        let dir = self.parent_dir(rel.parent().unwrap_or(Path::new("")))?;
        self.children_mut(dir).remove(name);
        let now = self.now;
        self.add(
            dir,
            name,
            Node::File {
                data: Data::Config,
                size,
                mode: 0o644,
                mtime: now,
            },
        );
        Ok(())
    }

    /// Every path of the image, parents before children, siblings by name.
    pub fn walk<E>(&self, mut f: impl FnMut(&Path, &Node) -> Result<(), E>) -> Result<(), E> {
        let mut stack = vec![(PathBuf::new(), ROOT)];
        while let Some((path, id)) = stack.pop() {
            f(&path, &self.nodes[id])?;
            if let Some(children) = self.children(id) {
                for (name, &child) in children.iter().rev() {
                    stack.push((path.join(name), child));
                }
            }
        }
        Ok(())
    }

    /// The files to write, by where their data is: the node and its names (more than one
    /// for hardlinks), in walk order.
    pub fn files(&self) -> HashMap<Data, (Node, Vec<PathBuf>)> {
        let mut out: HashMap<Data, (Node, Vec<PathBuf>)> = HashMap::new();
        let _ = self.walk(|path, node| {
            if let Node::File { data, .. } = node {
                out.entry(*data)
                    .or_insert_with(|| (node.clone(), Vec::new()))
                    .1
                    .push(path.to_path_buf());
            }
            Ok::<(), ()>(())
        });
        out
    }
}

/// Push `path`'s components onto a stack of names still to resolve (so the first is on top).
fn push_components(todo: &mut Vec<OsString>, path: &Path) {
    let start = todo.len();
    for c in path.components() {
        match c {
            Component::Normal(n) => todo.push(n.to_owned()),
            Component::ParentDir => todo.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    todo[start..].reverse();
}

/// The first bytes of a layer's index (its entries, kept in the layer cache beside the blob).
const INDEX_MAGIC: &[u8] = b"berth-layer-index 1\n";

/// A layer's entries as bytes: what [`decode`] reads back.
pub fn encode(entries: &[Entry]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = INDEX_MAGIC.to_vec();
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend((b.len() as u32).to_le_bytes());
        out.extend(b);
    };
    for e in entries {
        out.push(e.kind.as_byte());
        out.extend(e.mode.to_le_bytes());
        out.extend(e.mtime.to_le_bytes());
        out.extend(e.size.to_le_bytes());
        bytes(&mut out, e.path.as_os_str().as_bytes());
        match &e.link {
            Some(l) => {
                out.push(1);
                bytes(&mut out, l.as_os_str().as_bytes());
            }
            None => out.push(0),
        }
    }
    out
}

/// The entries [`encode`] wrote; `None` for anything else (the layer is then read again).
pub fn decode(mut b: &[u8]) -> Option<Vec<Entry>> {
    use std::os::unix::ffi::OsStrExt;
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    fn num<const N: usize>(b: &mut &[u8]) -> Option<[u8; N]> {
        take(b, N)?.try_into().ok()
    }
    fn path(b: &mut &[u8]) -> Option<PathBuf> {
        let n = u32::from_le_bytes(num(b)?) as usize;
        Some(PathBuf::from(OsStr::from_bytes(take(b, n)?)))
    }
    if take(&mut b, INDEX_MAGIC.len())? != INDEX_MAGIC {
        return None;
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let kind = EntryType::new(take(&mut b, 1)?[0]);
        let mode = u32::from_le_bytes(num(&mut b)?);
        let mtime = u64::from_le_bytes(num(&mut b)?);
        let size = u64::from_le_bytes(num(&mut b)?);
        let p = path(&mut b)?;
        let link = match take(&mut b, 1)?[0] {
            0 => None,
            _ => Some(path(&mut b)?),
        };
        out.push(Entry {
            path: p,
            kind,
            mode,
            mtime,
            size,
            link,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    /// A file over the limit ends the scan at its header: its data (here: none, as a bomb's
    /// would be terabytes of zeros) is not read.
    #[test]
    fn scan_stops_at_a_file_over_the_limit() {
        let mut h = tar::Header::new_gnu();
        h.set_path("zeros").unwrap();
        h.set_size(1 << 40);
        h.set_cksum();
        let (entries, complete) = scan(&h.as_bytes()[..], &|| false, 1 << 30).unwrap();
        assert_eq!((entries.len(), complete), (1, false));
        let mut tree = Tree::new(0);
        tree.set_max_size(1 << 30);
        let err = tree.apply(0, &entries).unwrap_err();
        assert!(err.contains("more than --max-size 1 GiB"), "{err}");
    }

    #[test]
    fn index_round_trips() {
        let entries = vec![
            Entry {
                path: PathBuf::from(OsStr::from_bytes(b"etc/\xff name")),
                kind: EntryType::Regular,
                mode: 0o4755,
                mtime: 1_700_000_000,
                size: 10 << 30,
                link: None,
            },
            Entry {
                path: PathBuf::from("lib"),
                kind: EntryType::Symlink,
                mode: 0o777,
                mtime: 0,
                size: 0,
                link: Some(PathBuf::from("usr//lib/")),
            },
        ];
        let bytes = encode(&entries);
        let back = decode(&bytes).unwrap();
        assert_eq!(format!("{entries:?}"), format!("{back:?}"));
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(decode(b"something else").is_none());
    }
}
