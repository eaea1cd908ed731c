//! SIF files (Apptainer's image format) built to the published layout (sylabs/sif, version 01),
//! without Apptainer: a squashfs wrapped as the primary system partition, as `apptainer build`
//! writes it. Damaged variants for the refusal tests.
//!
//! Layout: a 128-byte global header at 0; 48 descriptors of 585 bytes at 4096; the data
//! objects from 4096 + 48 * 585: the definition file, a JSON labels object, then the squashfs
//! aligned to 4096 (the alignment sylabs/sif gives partitions). Little-endian, no padding.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

const HEADER_LEN: u64 = 128;
const DESCRIPTOR_LEN: u64 = 585;
const DESCRIPTORS_AT: u64 = 4096;
const DESCRIPTORS: u64 = 48;
const GROUP: u32 = 0xf000_0000 | 1;
const DATA_DEFFILE: i32 = 0x4001;
const DATA_LABELS: i32 = 0x4003;
const DATA_PARTITION: i32 = 0x4004;
const FS_SQUASH: i32 = 1;
const FS_EXT3: i32 = 2;
const PART_PRIMSYS: i32 = 2;
const PART_DATA: i32 = 3;

/// What is wrong with the SIF written (for the refusal tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    None,
    /// The file ends inside the global header.
    TruncatedHeader,
    /// `SIF_MAGIC` misspelt (the launch line is intact).
    BadMagic,
    /// The partition's descriptor points past the end of the file.
    OffsetPastEnd,
    /// The squashfs is a data partition: no primary system partition.
    NoSystemPartition,
    /// The system partition says ext3 (old Singularity writable images).
    Ext3,
}

/// Where the squashfs went.
#[derive(Debug, Clone, Copy)]
pub struct SifLayout {
    pub partition_offset: u64,
    pub partition_size: u64,
}

struct Object {
    kind: i32,
    offset: u64,
    size: u64,
    padded: u64,
    extra: Vec<u8>,
}

/// Write `out`: the squashfs `sqsh` as a SIF's primary system partition, damaged as asked.
pub fn write_sif(sqsh: &Path, out: &Path, damage: Damage) -> SifLayout {
    let deffile =
        b"Bootstrap: docker\nFrom: debian:12\n\n%runscript\n    exec cat /etc/os-release\n";
    let labels = br#"{"org.label-schema.schema-version":"1.0","org.label-schema.usage.apptainer.version":"1.3.0"}"#;
    let part_size = std::fs::metadata(sqsh).expect("squashfs to wrap").len();
    let data_at = DESCRIPTORS_AT + DESCRIPTORS * DESCRIPTOR_LEN;
    let mut objects = Vec::new();
    let mut end = data_at;
    for (kind, size) in [
        (DATA_DEFFILE, deffile.len() as u64),
        (DATA_LABELS, labels.len() as u64),
    ] {
        objects.push(Object {
            kind,
            offset: end,
            size,
            padded: size,
            extra: Vec::new(),
        });
        end += size;
    }
    let part_at = end.next_multiple_of(4096);
    let (fs, part) = match damage {
        Damage::Ext3 => (FS_EXT3, PART_PRIMSYS),
        Damage::NoSystemPartition => (FS_SQUASH, PART_DATA),
        _ => (FS_SQUASH, PART_PRIMSYS),
    };
    let mut extra = fs.to_le_bytes().to_vec();
    extra.extend(part.to_le_bytes());
    extra.extend(b"02\0"); // amd64
    objects.push(Object {
        kind: DATA_PARTITION,
        offset: if damage == Damage::OffsetPastEnd {
            part_at + part_size + 4096
        } else {
            part_at
        },
        size: part_size,
        padded: part_at - end + part_size,
        extra,
    });
    let data_size = objects.iter().map(|o| o.padded).sum::<u64>();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    let mut launch = b"#!/usr/bin/env run-singularity\n".to_vec();
    launch.resize(32, 0);
    header.extend(&launch);
    header.extend(if damage == Damage::BadMagic {
        b"SIF_MAGIX\0"
    } else {
        b"SIF_MAGIC\0"
    });
    header.extend(b"01\0");
    header.extend(b"02\0");
    header.extend((0u8..16).map(|i| i.wrapping_mul(37) ^ std::process::id() as u8));
    for v in [
        now,
        now,
        (DESCRIPTORS - objects.len() as u64) as i64,
        DESCRIPTORS as i64,
        DESCRIPTORS_AT as i64,
        (DESCRIPTORS * DESCRIPTOR_LEN) as i64,
        data_at as i64,
        data_size as i64,
    ] {
        header.extend(v.to_le_bytes());
    }
    assert_eq!(header.len() as u64, HEADER_LEN);

    let mut table = Vec::with_capacity((DESCRIPTORS * DESCRIPTOR_LEN) as usize);
    for (i, o) in objects.iter().enumerate() {
        let start = table.len();
        table.extend(o.kind.to_le_bytes());
        table.push(1); // used
        table.extend((i as u32 + 1).to_le_bytes());
        table.extend(GROUP.to_le_bytes());
        table.extend(0u32.to_le_bytes()); // linked id
        for v in [o.offset, o.size, o.padded] {
            table.extend((v as i64).to_le_bytes());
        }
        for v in [now, now, 0, 0] {
            table.extend(v.to_le_bytes()); // created, modified, uid, gid
        }
        table.resize(table.len() + 128, 0); // name
        table.extend(&o.extra);
        table.resize(start + DESCRIPTOR_LEN as usize, 0);
    }
    table.resize((DESCRIPTORS * DESCRIPTOR_LEN) as usize, 0);

    let mut f = File::create(out).expect("create SIF");
    if damage == Damage::TruncatedHeader {
        f.write_all(&header[..100]).unwrap();
        return SifLayout {
            partition_offset: part_at,
            partition_size: part_size,
        };
    }
    f.write_all(&header).unwrap();
    f.seek(SeekFrom::Start(DESCRIPTORS_AT)).unwrap();
    f.write_all(&table).unwrap();
    f.write_all(deffile).unwrap();
    f.write_all(labels).unwrap();
    f.seek(SeekFrom::Start(part_at)).unwrap();
    std::io::copy(&mut File::open(sqsh).unwrap(), &mut f).expect("copy the squashfs");
    SifLayout {
        partition_offset: part_at,
        partition_size: part_size,
    }
}
