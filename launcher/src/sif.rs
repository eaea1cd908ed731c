//! Apptainer/Singularity SIF files: where the squashfs of the primary system partition lies, so
//! berth serves it in place (no conversion, no copy).
//!
//! The layout (sylabs/sif, format version 01; all integers little-endian, no padding):
//! a 128-byte global header — launch script (32 bytes, `#!/usr/bin/env run-singularity\n`),
//! magic `SIF_MAGIC\0` (10), version `01\0` (3), arch (3), uuid (16), then eight i64s: created,
//! modified, descriptors free, descriptors total, descriptors offset, descriptors size, data
//! offset, data size — and a table of 585-byte descriptors: data type i32, used u8, id, group id,
//! linked id (u32 each), offset, size, size with padding, created, modified, uid, gid (i64 each),
//! name (128 bytes), extra (384 bytes; for a partition: fs type i32, partition type i32, arch).

use std::fs::File;
use std::os::unix::fs::FileExt;

pub const HEADER_LEN: usize = 128;
pub const DESCRIPTOR_LEN: usize = 585;
pub const LAUNCH_SCRIPT: &[u8] = b"#!/usr/bin/env run-singularity\n";
pub const MAGIC: &[u8; 10] = b"SIF_MAGIC\0";
pub const VERSION: &[u8; 3] = b"01\0";
const MAGIC_AT: usize = 32;
const VERSION_AT: usize = 42;
const DESCRIPTORS_TOTAL_AT: usize = 88;
const DESCRIPTORS_OFFSET_AT: usize = 96;

pub const DATA_DEFFILE: i32 = 0x4001;
pub const DATA_PARTITION: i32 = 0x4004;
pub const DATA_GENERIC_JSON: i32 = 0x4006;
pub const FS_SQUASH: i32 = 1;
pub const FS_EXT3: i32 = 2;
pub const FS_ENCRYPTED_SQUASH: i32 = 5;
pub const PART_PRIMSYS: i32 = 2;

/// Real SIFs have 48 descriptors; a bound keeps a damaged count from costing memory.
const MAX_DESCRIPTORS: u64 = 4096;

const CONVERT: &str = "berth supports SIF images whose system partition is squashfs; convert with \
                       apptainer build --sandbox DIR IMAGE.sif and mksquashfs DIR IMAGE.sqsh";

/// Where the squashfs lies in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub offset: u64,
    pub size: u64,
}

/// The first bytes of a file say it is (or was meant to be) a SIF: the magic where SIF has it, or
/// Apptainer's launch line (then a bad magic is reported as a damaged SIF, not as "not squashfs").
pub fn looks_like_sif(head: &[u8]) -> bool {
    head.starts_with(b"#!/usr/bin/env run-singularity")
        || head.get(MAGIC_AT..MAGIC_AT + 9) == Some(&MAGIC[..9])
}

fn le_i32(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le_i64(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The descriptor table's place from the global header: (offset, count).
pub fn parse_header(head: &[u8], file_len: u64) -> Result<(u64, u64), String> {
    if head.len() < HEADER_LEN {
        return Err(format!(
            "SIF file is truncated: its header has {} of {HEADER_LEN} bytes (copy it again)",
            head.len()
        ));
    }
    if &head[MAGIC_AT..MAGIC_AT + 10] != MAGIC {
        return Err("not a SIF file (bad SIF_MAGIC); give a SIF or a squashfs image".into());
    }
    let version = &head[VERSION_AT..VERSION_AT + 3];
    if version != VERSION {
        return Err(format!(
            "SIF version {:?} is not supported, only 01",
            String::from_utf8_lossy(version).trim_end_matches('\0')
        ));
    }
    let total = le_i64(head, DESCRIPTORS_TOTAL_AT);
    let offset = le_i64(head, DESCRIPTORS_OFFSET_AT);
    let table_end = u64::try_from(total)
        .ok()
        .filter(|&n| n <= MAX_DESCRIPTORS)
        .zip(u64::try_from(offset).ok())
        .and_then(|(n, off)| off.checked_add(n * DESCRIPTOR_LEN as u64));
    match table_end {
        Some(end) if end <= file_len && offset as u64 >= HEADER_LEN as u64 => {
            Ok((offset as u64, total as u64))
        }
        _ => Err(format!(
            "SIF header is damaged: {total} descriptors at offset {offset} do not fit in the \
             file's {file_len} bytes (copy it again)"
        )),
    }
}

/// The primary system partition among the descriptors, checked to lie inside the file and to be
/// squashfs.
pub fn pick_partition(table: &[u8], file_len: u64) -> Result<Partition, String> {
    let mut found: Option<(i32, i64, i64)> = None;
    for d in table.chunks_exact(DESCRIPTOR_LEN) {
        let used = d[4] != 0;
        if !used || le_i32(d, 0) != DATA_PARTITION || le_i32(d, 205) != PART_PRIMSYS {
            continue;
        }
        if found.is_some() {
            return Err("SIF file has two primary system partitions (damaged)".into());
        }
        found = Some((le_i32(d, 201), le_i64(d, 17), le_i64(d, 25)));
    }
    let Some((fs, offset, size)) = found else {
        return Err(format!(
            "SIF file has no primary system partition (nothing to run); {CONVERT}"
        ));
    };
    if fs != FS_SQUASH {
        let what = match fs {
            FS_EXT3 => "ext3".to_string(),
            FS_ENCRYPTED_SQUASH => "encrypted squashfs".to_string(),
            3 => "an archive".to_string(),
            4 => "raw data".to_string(),
            n => format!("of unknown type {n}"),
        };
        return Err(format!("the SIF's system partition is {what}: {CONVERT}"));
    }
    let end = u64::try_from(offset)
        .ok()
        .zip(u64::try_from(size).ok())
        .and_then(|(o, s)| o.checked_add(s));
    match end {
        Some(end) if end <= file_len && size > 0 && offset as u64 >= HEADER_LEN as u64 => {
            Ok(Partition {
                offset: offset as u64,
                size: size as u64,
            })
        }
        _ => Err(format!(
            "SIF file is truncated or damaged: its system partition ({size} bytes at offset \
             {offset}) lies outside the file's {file_len} bytes (copy it again)"
        )),
    }
}

/// Read the header and the descriptor table of `file` and find its squashfs partition.
pub fn locate(file: &File, file_len: u64) -> Result<Partition, String> {
    let mut head = vec![0u8; HEADER_LEN];
    let n = read_full_at(file, &mut head, 0)?;
    head.truncate(n);
    let (offset, count) = parse_header(&head, file_len)?;
    let mut table = vec![0u8; count as usize * DESCRIPTOR_LEN];
    let n = read_full_at(file, &mut table, offset)?;
    if n < table.len() {
        return Err(
            "SIF file is truncated: its descriptor table is cut short (copy it again)".into(),
        );
    }
    pick_partition(&table, file_len)
}

fn read_full_at(file: &File, buf: &mut [u8], at: u64) -> Result<usize, String> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read: {e}")),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIF laid out as Apptainer writes one: a deffile, a JSON object, then the partition
    /// aligned to 4096 after a 48-entry table at 4096.
    fn sif(fs: i32, part: i32, data: &[u8]) -> Vec<u8> {
        let table_at = 4096usize;
        let data_at = table_at + 48 * DESCRIPTOR_LEN;
        let mut f = vec![0u8; data_at];
        f[..LAUNCH_SCRIPT.len()].copy_from_slice(LAUNCH_SCRIPT);
        f[32..42].copy_from_slice(MAGIC);
        f[42..45].copy_from_slice(VERSION);
        f[88..96].copy_from_slice(&48i64.to_le_bytes());
        f[96..104].copy_from_slice(&(table_at as i64).to_le_bytes());
        let mut put = |i: usize, ty: i32, offset: usize, len: usize, extra: &[u8]| {
            let d = &mut f[table_at + i * DESCRIPTOR_LEN..][..DESCRIPTOR_LEN];
            d[0..4].copy_from_slice(&ty.to_le_bytes());
            d[4] = 1;
            d[5..9].copy_from_slice(&(i as u32 + 1).to_le_bytes());
            d[17..25].copy_from_slice(&(offset as i64).to_le_bytes());
            d[25..33].copy_from_slice(&(len as i64).to_le_bytes());
            d[201..201 + extra.len()].copy_from_slice(extra);
        };
        put(0, DATA_DEFFILE, data_at, 10, &[]);
        put(1, DATA_GENERIC_JSON, data_at + 10, 2, &[]);
        let part_at = (data_at + 12).next_multiple_of(4096);
        let mut extra = fs.to_le_bytes().to_vec();
        extra.extend(part.to_le_bytes());
        extra.extend(b"02\0");
        put(2, DATA_PARTITION, part_at, data.len(), &extra);
        f.extend(b"Bootstrap:{}");
        f.resize(part_at, 0);
        f.extend(data);
        f
    }

    fn find(f: &[u8]) -> Result<Partition, String> {
        let (off, n) = parse_header(&f[..HEADER_LEN.min(f.len())], f.len() as u64)?;
        pick_partition(
            &f[off as usize..off as usize + n as usize * DESCRIPTOR_LEN],
            f.len() as u64,
        )
    }

    #[test]
    fn finds_the_squashfs_system_partition() {
        let f = sif(FS_SQUASH, PART_PRIMSYS, b"hsqs and the rest");
        let p = find(&f).unwrap();
        assert_eq!(p.offset % 4096, 0);
        assert_eq!(
            &f[p.offset as usize..][..p.size as usize],
            b"hsqs and the rest"
        );
        assert!(looks_like_sif(&f));
        assert!(!looks_like_sif(b"hsqs\0\0\0\0"));
    }

    #[test]
    fn refuses_truncated_headers_bad_magic_and_versions() {
        let f = sif(FS_SQUASH, PART_PRIMSYS, b"x");
        assert!(parse_header(&f[..60], 60)
            .unwrap_err()
            .contains("truncated"));
        let mut bad = f.clone();
        bad[33] = b'X';
        assert!(find(&bad).unwrap_err().contains("bad SIF_MAGIC"));
        assert!(looks_like_sif(&bad), "the launch line still says SIF");
        let mut v2 = f.clone();
        v2[43] = b'2';
        assert!(find(&v2).unwrap_err().contains("version \"02\""));
        let mut many = f.clone();
        many[88..96].copy_from_slice(&i64::MAX.to_le_bytes());
        assert!(find(&many).unwrap_err().contains("do not fit"));
        let mut neg = f;
        neg[96..104].copy_from_slice(&(-5i64).to_le_bytes());
        assert!(find(&neg).unwrap_err().contains("do not fit"));
    }

    #[test]
    fn refuses_partitions_outside_the_file() {
        let f = sif(FS_SQUASH, PART_PRIMSYS, b"0123456789");
        let short = &f[..f.len() - 1];
        let (off, n) = parse_header(short, short.len() as u64).unwrap();
        let table = &short[off as usize..off as usize + n as usize * DESCRIPTOR_LEN];
        assert!(pick_partition(table, short.len() as u64)
            .unwrap_err()
            .contains("outside the file"));
        let mut wrap = f.clone();
        let d = 4096 + 2 * DESCRIPTOR_LEN;
        wrap[d + 25..d + 33].copy_from_slice(&i64::MAX.to_le_bytes());
        assert!(find(&wrap).unwrap_err().contains("outside the file"));
    }

    #[test]
    fn refuses_sifs_without_a_squashfs_system_partition() {
        for (fs, says) in [
            (FS_EXT3, "is ext3"),
            (FS_ENCRYPTED_SQUASH, "is encrypted squashfs"),
        ] {
            let e = find(&sif(fs, PART_PRIMSYS, b"x")).unwrap_err();
            assert!(e.contains(says) && e.contains("mksquashfs"), "{e}");
        }
        // A data partition only: nothing to run.
        let e = find(&sif(FS_SQUASH, 3, b"x")).unwrap_err();
        assert!(e.contains("no primary system partition"), "{e}");
        // An unused descriptor does not count.
        let mut f = sif(FS_SQUASH, PART_PRIMSYS, b"x");
        f[4096 + 2 * DESCRIPTOR_LEN + 4] = 0;
        assert!(find(&f).unwrap_err().contains("no primary"));
    }
}
