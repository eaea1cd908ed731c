//! Fetch: the layers of a plan, from a registry into the layer cache or from local files,
//! and read back decompressed with their digests verified.

use crate::cache::Cache;
use crate::cleanup::cancelled;
use crate::import::short;
use crate::oci::Descriptor;
use crate::progress::Progress;
use crate::registry::Client;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where a layer's bytes are.
pub(crate) enum Loc {
    Cache(PathBuf),
    /// A file, or a slice of one (a member of a tar archive).
    Slice {
        file: PathBuf,
        offset: u64,
        len: u64,
    },
}

pub(crate) struct Layer {
    /// The digest the raw bytes must have (descriptor digest; diff_id for docker-archive).
    pub digest: String,
    /// The digest of the uncompressed stream, from the image config, for a cached registry
    /// layer: a decoded copy is kept and read by it.
    pub diff_id: Option<String>,
    pub size: u64,
    pub loc: Loc,
    pub cached: bool,
}

/// Hashes what passes through, so a layer is verified in the same read that applies it.
/// It also moves the unpack progress bar (hidden when there is none).
struct HashReader<R> {
    inner: R,
    hash: Sha256,
    bar: indicatif::ProgressBar,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// How much decompressed data after a layer's tar stream is read (tar pads to 10 KiB records).
const TRAILER_LIMIT: u64 = 16 << 20;

/// Read a layer through `f` (decompressed: gzip, zstd or none, told by the magic bytes), then
/// verify the digest of every raw byte. A mismatch fails the import.
pub(crate) fn read_layer<T>(
    layer: &Layer,
    bar: &indicatif::ProgressBar,
    f: impl FnOnce(&mut dyn Read) -> Result<T, String>,
) -> Result<T, String> {
    if let Some(copy) = decoded_copy(layer).filter(|c| c.is_file()) {
        return read_decoded(layer, &copy, bar, f);
    }
    let mut new_copy = NewCopy::start(layer);
    let mut hr = HashReader {
        inner: open_loc(&layer.loc)?,
        hash: Sha256::new(),
        bar: bar.clone(),
    };
    let fail = |e: String| format!("layer {}: {e}", layer.digest);
    let out = {
        let mut buf = BufReader::with_capacity(256 << 10, &mut hr);
        let magic = buf
            .fill_buf()
            .map_err(|e| fail(format!("cannot read: {e}")))?
            .to_vec();
        let decoded: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(buf))
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(
                zstd::stream::read::Decoder::with_buffer(buf)
                    .map_err(|e| fail(format!("zstd: {e}")))?,
            )
        } else {
            Box::new(buf)
        };
        let mut decoded = Tee {
            inner: decoded,
            copy: new_copy.as_mut(),
        };
        // A tar stream can end before its input does: drain, so the digest covers everything.
        // Not after a refusal, and only so far through the decompressor: a bomb of zeros must
        // not be expanded to the end (the raw bytes are drained for the digest all the same).
        f(&mut decoded).and_then(|v| {
            io::copy(&mut decoded.take(TRAILER_LIMIT), &mut io::sink())
                .map(|_| v)
                .map_err(|e| format!("corrupt data: {e}"))
        })
    };
    let out = out.map_err(|e| fail_with_digest(layer, &mut hr, e))?;
    io::copy(&mut hr, &mut io::sink()).map_err(|e| fail(format!("cannot read: {e}")))?;
    let got = format!("sha256:{:x}", hr.hash.finalize());
    if got != layer.digest {
        return Err(format!(
            "layer {} failed verification: the content has digest {got}; refusing it",
            layer.digest
        ));
    }
    if let Some(copy) = new_copy {
        copy.keep();
    }
    Ok(out)
}

/// Where the decoded copy of a cached layer is, or would be.
fn decoded_copy(layer: &Layer) -> Option<PathBuf> {
    match (&layer.loc, &layer.diff_id) {
        (Loc::Cache(blob), Some(diff_id)) => crate::cache::decoded_of(blob, diff_id),
        _ => None,
    }
}

/// Read a layer from its decoded copy (zstd is several times faster to decompress than
/// gzip), and verify the digest of the uncompressed stream against the config's diff_id. A
/// copy that fails is removed: the next import reads the blob again.
fn read_decoded<T>(
    layer: &Layer,
    copy: &Path,
    bar: &indicatif::ProgressBar,
    f: impl FnOnce(&mut dyn Read) -> Result<T, String>,
) -> Result<T, String> {
    let fail = |e: String| format!("layer {}: {e}", layer.digest);
    let file =
        File::open(copy).map_err(|e| fail(format!("cannot open {}: {e}", copy.display())))?;
    let decoder = zstd::stream::read::Decoder::new(file).map_err(|e| fail(format!("zstd: {e}")))?;
    let mut hr = HashReader {
        inner: decoder,
        hash: Sha256::new(),
        bar: indicatif::ProgressBar::hidden(),
    };
    // The copy holds the whole stream that was verified, trailer included (at most
    // TRAILER_LIMIT after the tar's end); anything more fails the digest.
    let out = f(&mut hr);
    let drained = io::copy(&mut (&mut hr).take(TRAILER_LIMIT), &mut io::sink());
    let got = format!("sha256:{:x}", hr.hash.finalize());
    let want = layer.diff_id.as_deref().unwrap_or_default();
    if drained.is_err() || got != want {
        let _ = std::fs::remove_file(copy);
        return Err(format!(
            "layer {}: its decoded copy in the layer cache failed verification (the config's diff_id is {want}); removed it, import again",
            layer.digest
        ));
    }
    bar.inc(layer.size);
    out.map_err(fail)
}

/// A decoded copy being written while a cached layer is read: the uncompressed stream,
/// hashed and compressed with zstd level 1 (in a thread of zstd's) into a temp file. Kept
/// only if the stream's digest is the config's diff_id and the blob's own digest verified.
/// A copy is a shortcut: a failure to write one only means there is none.
struct NewCopy {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<zstd::stream::write::Encoder<'static, File>>,
    hash: Sha256,
    want: String,
}

impl NewCopy {
    fn start(layer: &Layer) -> Option<NewCopy> {
        let path = decoded_copy(layer)?;
        let dir = path.parent()?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .ok()?;
        // Not where the copy could take the room the image needs.
        let fs = nix::sys::statvfs::statvfs(dir).ok()?;
        let room = fs.blocks_available().saturating_mul(fs.fragment_size());
        if room < layer.size.saturating_mul(8) {
            return None;
        }
        let hex = crate::oci::check_digest(&layer.digest).ok()?;
        let tmp = dir.join(crate::cache::temp_name(hex));
        let file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .ok()?;
        let mut out = zstd::stream::write::Encoder::new(file, 1).ok()?;
        // The compression runs beside the inflate instead of after it.
        let _ = out.multithread(1);
        Some(NewCopy {
            path,
            tmp,
            out: Some(out),
            hash: Sha256::new(),
            want: layer.diff_id.clone()?,
        })
    }

    fn add(&mut self, bytes: &[u8]) {
        self.hash.update(bytes);
        if let Some(out) = &mut self.out {
            if out.write_all(bytes).is_err() {
                self.out = None;
            }
        }
    }

    fn keep(mut self) {
        let got = format!("sha256:{:x}", std::mem::take(&mut self.hash).finalize());
        if let Some(out) = self.out.take().filter(|_| got == self.want) {
            if out.finish().is_ok() {
                let _ = std::fs::rename(&self.tmp, &self.path);
            }
        }
    }
}

impl Drop for NewCopy {
    fn drop(&mut self) {
        // Gone after a rename; else a copy not to keep.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Passes a layer's uncompressed stream through to its new decoded copy, if it gets one.
struct Tee<'a, R> {
    inner: R,
    copy: Option<&'a mut NewCopy>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(c) = &mut self.copy {
            c.add(&buf[..n]);
        }
        Ok(n)
    }
}

/// On an apply error, a digest mismatch is the better explanation when there is one.
fn fail_with_digest(layer: &Layer, hr: &mut HashReader<Box<dyn Read>>, err: String) -> String {
    if io::copy(hr, &mut io::sink()).is_ok() {
        let got = format!("sha256:{:x}", std::mem::take(&mut hr.hash).finalize());
        if got != layer.digest {
            return format!(
                "layer {} failed verification: the content has digest {got}; refusing it",
                layer.digest
            );
        }
    }
    format!("layer {}: {err}", layer.digest)
}

pub(crate) fn open_loc(loc: &Loc) -> Result<Box<dyn Read>, String> {
    match loc {
        Loc::Cache(p) => {
            Ok(Box::new(File::open(p).map_err(|e| {
                format!("cannot open {}: {e}", p.display())
            })?))
        }
        Loc::Slice { file, offset, len } => {
            let mut f =
                File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
            f.seek(SeekFrom::Start(*offset))
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            Ok(Box::new(f.take(*len)))
        }
    }
}

/// A layer's entries, and whether they came from the cache's index (the layer is then
/// verified when its data is streamed) and are all there (see [`crate::merge::scan`]).
pub(crate) struct Entries {
    pub list: Vec<crate::merge::Entry>,
    pub indexed: bool,
    pub complete: bool,
}

/// A layer's entries: from its index in the layer cache, else read (and verified) from the
/// layer, which then gets an index.
pub(crate) fn layer_entries(
    layer: &Layer,
    bar: &indicatif::ProgressBar,
    max_size: u64,
) -> Result<Entries, String> {
    let blob = match &layer.loc {
        Loc::Cache(p) => Some(p),
        Loc::Slice { .. } => None,
    };
    let indexed = blob
        .and_then(|b| crate::cache::index_of(b))
        .and_then(|i| std::fs::read(i).ok())
        .and_then(|bytes| crate::merge::decode(&bytes));
    if let Some(list) = indexed {
        bar.inc(layer.size);
        return Ok(Entries {
            list,
            indexed: true,
            complete: true,
        });
    }
    let (list, complete) = read_layer(layer, bar, |r| crate::merge::scan(r, &cancelled, max_size))?;
    if let (Some(b), true) = (blob, complete) {
        crate::cache::store_index(b, &crate::merge::encode(&list));
    }
    Ok(Entries {
        list,
        indexed: false,
        complete,
    })
}

/// Fetch the layers missing from the cache, a few at a time; each is verified before it
/// enters the cache.
pub(crate) fn fetch_layers(
    progress: &Progress,
    client: &Client,
    cache: &Cache,
    descs: &[Descriptor],
    diff_ids: &[Option<String>],
    max_size: u64,
) -> Result<Vec<Layer>, String> {
    let total = descs.len();
    let was_cached: Vec<bool> = descs
        .iter()
        .map(|l| cache.blob_path(&l.digest).is_ok_and(|p| p.is_file()))
        .collect();
    let downloads = progress.downloads(
        was_cached.iter().filter(|c| !**c).count(),
        descs
            .iter()
            .zip(&was_cached)
            .filter(|(_, c)| !**c)
            .map(|(l, _)| l.size)
            .sum(),
        format!("layer {total}/{total} ").len() + short("sha256:0123456789ab").len(),
    );
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<bool, String>>>> =
        (0..total).map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..total.clamp(1, 3) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= total {
                    break;
                }
                let l = &descs[i];
                let bar = downloads.layer(
                    format!("layer {}/{total} {}", i + 1, short(&l.digest)),
                    l.size,
                    was_cached[i],
                );
                let res = client.fetch_layer(&l.digest, cache, &|have| bar.at(have));
                bar.finish(progress, res.as_ref().map(|c| *c).map_err(|_| ()));
                // Read a new layer's entries now, while others download: the merge then finds
                // them in its index. A failure here is the merge's to report.
                if let (Ok(false), Ok(path)) = (&res, cache.blob_path(&l.digest)) {
                    let layer = Layer {
                        digest: l.digest.clone(),
                        diff_id: diff_ids[i].clone(),
                        size: l.size,
                        loc: Loc::Cache(path),
                        cached: false,
                    };
                    let _ = layer_entries(&layer, &indicatif::ProgressBar::hidden(), max_size);
                }
                let failed = res.is_err();
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(res);
                if failed {
                    break;
                }
            });
        }
    });
    let ok = results
        .iter()
        .all(|r| matches!(*r.lock().unwrap_or_else(|e| e.into_inner()), Some(Ok(_))));
    downloads.finish(ok);
    let mut layers = Vec::new();
    for ((l, res), diff_id) in descs.iter().zip(results).zip(diff_ids) {
        match res.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(Ok(cached)) => layers.push(Layer {
                digest: l.digest.clone(),
                diff_id: diff_id.clone(),
                size: l.size,
                loc: Loc::Cache(cache.blob_path(&l.digest)?),
                cached,
            }),
            Some(Err(e)) => return Err(e),
            None => return Err("a layer download was abandoned after an earlier failure".into()),
        }
    }
    Ok(layers)
}
