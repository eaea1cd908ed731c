//! The block codecs. Each call decompresses one block into a buffer whose length is the cap (the
//! block size, or 8 KiB for metadata), so a hostile block can never grow past it.

use super::SquashError;
use std::cell::RefCell;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Codec {
    Gzip,
    Xz,
    Lz4,
    Zstd,
}

/// xz needs the dictionary in memory; squashfs dictionaries are at most the block size (1 MiB),
/// so a stream that asks for more than this is hostile.
const XZ_MEMLIMIT: u64 = 16 << 20;

thread_local! {
    // Decoder state reused per thread: a fresh zlib or zstd context costs an allocation of
    // tens of KiB, more than decoding a small metadata block.
    static ZLIB: RefCell<flate2::Decompress> = RefCell::new(flate2::Decompress::new(true));
    static ZSTD: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn corrupt(codec: &str, what: impl std::fmt::Display) -> SquashError {
    SquashError::Corrupt(format!("a {codec} block does not decompress ({what})"))
}

impl Codec {
    pub(super) fn from_id(id: u16) -> Result<Codec, SquashError> {
        let unsupported = |name: &str| {
            SquashError::Unsupported(format!(
                "the image is compressed with {name}; rebuild it with mksquashfs -comp zstd"
            ))
        };
        match id {
            1 => Ok(Codec::Gzip),
            2 => Err(unsupported("lzma (the legacy format)")),
            3 => Err(unsupported("lzo")),
            4 => Ok(Codec::Xz),
            5 => Ok(Codec::Lz4),
            6 => Ok(Codec::Zstd),
            n => Err(SquashError::Corrupt(format!("unknown compressor id {n}"))),
        }
    }

    /// Decompresses `src` into `dst`, whose length is the most the block may hold; returns the
    /// length written. A block that does not fit, is truncated or is garbage is Corrupt.
    pub(super) fn decompress(self, src: &[u8], dst: &mut [u8]) -> Result<usize, SquashError> {
        match self {
            Codec::Gzip => ZLIB.with_borrow_mut(|z| {
                z.reset(true);
                match z.decompress(src, dst, flate2::FlushDecompress::Finish) {
                    Ok(flate2::Status::StreamEnd) => {
                        usize::try_from(z.total_out()).map_err(|_| corrupt("gzip", "too long"))
                    }
                    Ok(_) => Err(corrupt("gzip", "truncated or larger than a block")),
                    Err(e) => Err(corrupt("gzip", e)),
                }
            }),
            Codec::Zstd => ZSTD.with_borrow_mut(|slot| {
                if slot.is_none() {
                    *slot = Some(zstd::bulk::Decompressor::new()?);
                }
                match slot.as_mut() {
                    Some(d) => d
                        .decompress_to_buffer(src, dst)
                        .map_err(|e| corrupt("zstd", e)),
                    None => Err(corrupt("zstd", "no decoder")),
                }
            }),
            Codec::Lz4 => lz4_flex::block::decompress_into(src, dst).map_err(|e| corrupt("lz4", e)),
            Codec::Xz => {
                let mut s = liblzma::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, 0)
                    .map_err(|e| corrupt("xz", e))?;
                match s.process(src, dst, liblzma::stream::Action::Finish) {
                    Ok(liblzma::stream::Status::StreamEnd) => {
                        usize::try_from(s.total_out()).map_err(|_| corrupt("xz", "too long"))
                    }
                    Ok(_) => Err(corrupt("xz", "truncated or larger than a block")),
                    Err(e) => Err(corrupt("xz", e)),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn each_codec_round_trips_and_respects_the_cap() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let cases = [
            (Codec::Gzip, zlib(&data)),
            (Codec::Zstd, zstd::bulk::compress(&data, 3).unwrap()),
            (Codec::Lz4, lz4_flex::block::compress(&data)),
            (Codec::Xz, {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
                e.write_all(&data).unwrap();
                e.finish().unwrap()
            }),
        ];
        for (codec, packed) in cases {
            let mut out = vec![0u8; 8192];
            let n = codec.decompress(&packed, &mut out).unwrap();
            assert_eq!(&out[..n], &data[..], "{codec:?}");
            // One byte short of the output: an error, not a partial block.
            let mut small = vec![0u8; data.len() - 1];
            assert!(codec.decompress(&packed, &mut small).is_err(), "{codec:?}");
            // Truncated input.
            let mut out = vec![0u8; 8192];
            let cut = &packed[..packed.len() / 2];
            assert!(
                codec.decompress(cut, &mut out).is_err(),
                "{codec:?} truncated"
            );
            // Garbage.
            assert!(
                codec.decompress(&[0xff; 64], &mut out).is_err(),
                "{codec:?} garbage"
            );
        }
    }

    #[test]
    fn lzo_and_legacy_lzma_say_how_to_rebuild() {
        for id in [2, 3] {
            let e = Codec::from_id(id).unwrap_err().to_string();
            assert!(e.starts_with("unsupported squashfs: "), "{e}");
            assert!(e.contains("mksquashfs -comp zstd"), "{e}");
        }
        assert!(matches!(Codec::from_id(99), Err(SquashError::Corrupt(_))));
    }
}
