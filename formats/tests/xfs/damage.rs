//! Damaged XFS images: errors that name what is wrong, never a panic, a hang or an
//! unbounded allocation.

use super::*;

/// The image of a small tree (no 5000-entry directory) as bytes, and the tree's root.
fn small_image(options: &[&str]) -> Option<(tempfile::TempDir, PathBuf, Vec<u8>)> {
    let (dir, root) = built_tree(false)?;
    let image = mkfs(dir.path(), "small.img", Some(&root), options);
    let bytes = fs::read(&image).unwrap();
    Some((dir, root, bytes))
}

/// Reads everything reachable from the root, ignoring errors; bounded by the reader's own
/// limits. Returns how many files were read whole.
fn walk_everything(xfs: &Xfs) -> usize {
    let mut read = 0;
    let mut todo = vec![(xfs.root(), 0)];
    while let Some((inode, depth)) = todo.pop() {
        let Ok(inode) = inode else { continue };
        match inode.kind() {
            FileKind::Dir if depth < 8 => {
                for entry in xfs
                    .read_dir(&inode)
                    .unwrap_or_default()
                    .into_iter()
                    .take(400)
                {
                    todo.push((xfs.inode(entry.inode), depth + 1));
                }
            }
            FileKind::File => read += usize::from(xfs.read_file(&inode, 8 << 20).is_ok()),
            FileKind::Symlink => {
                let _ = xfs.read_link(&inode);
            }
            _ => {}
        }
    }
    for path in [
        "/links/short",
        "/links/long",
        "/links/dirlink/a",
        "/big.bin",
    ] {
        let _ = xfs.lookup(path);
    }
    read
}

#[test]
fn zeroed_superblock_is_not_xfs() {
    let Some((_dir, _root, mut bytes)) = small_image(&[]) else {
        return;
    };
    bytes[..512].fill(0);

    let err = open_bytes(bytes).unwrap_err();

    assert!(matches!(err, Error::NotXfs { .. }), "{err}");
}

#[test]
fn garbage_inode_gives_an_error_naming_the_inode() {
    let Some((_dir, _root, bytes)) = small_image(&[]) else {
        return;
    };
    let xfs = open_bytes(bytes.clone()).unwrap();
    let text = xfs.lookup("/small/text").unwrap();
    let root = xfs.root().unwrap();
    let isize = usize::from(xfs.superblock().inode_size);
    let mut damaged = bytes.clone();
    let at = text.offset as usize;
    damaged[at..at + isize].copy_from_slice(&noise(7, isize));

    let xfs = open_bytes(damaged).unwrap();
    let err = xfs.lookup("/small/text").unwrap_err();

    assert!(
        err.to_string().contains(&format!("inode {}", text.ino)),
        "{err}"
    );
    // The root inode's magic intact but its fork garbage: still an error.
    let mut damaged = bytes;
    let at = root.offset as usize + 176;
    damaged[at..at + isize - 176].copy_from_slice(&noise(8, isize - 176));
    let xfs = open_bytes(damaged).unwrap();
    assert!(xfs.lookup("/small/text").is_err());
}

#[test]
fn extent_pointing_past_the_end_is_refused() {
    let Some((_dir, _root, bytes)) = small_image(&[]) else {
        return;
    };
    let xfs = open_bytes(bytes.clone()).unwrap();
    let big = xfs.lookup("/big.bin").unwrap();
    assert_eq!(big.fork_format(), ForkFormat::Extents);
    let mut damaged = bytes;
    // First record's start block: its 52 bits all ones (l0 bits 8..0, l1 bits 63..21).
    let rec = big.offset as usize + 176;
    damaged[rec + 6] |= 0x01;
    damaged[rec + 7] = 0xff;
    damaged[rec + 8..rec + 13].fill(0xff);
    damaged[rec + 13] |= 0xe0;

    let xfs = open_bytes(damaged).unwrap();
    let big = xfs.lookup("/big.bin").unwrap();
    let err = xfs.read_file(&big, u64::MAX).unwrap_err();

    assert!(err.to_string().contains("outside the filesystem"), "{err}");
}

#[test]
fn truncated_image_gives_read_errors() {
    let Some((_dir, _root, bytes)) = small_image(&[]) else {
        return;
    };
    let xfs = open_bytes(bytes[..1 << 20].to_vec()).unwrap();

    let err = xfs
        .lookup("/big.bin")
        .and_then(|i| xfs.read_file(&i, u64::MAX));

    assert!(matches!(err, Err(Error::Io { .. })), "{err:?}");
}

/// Random byte changes in the metadata: any result but a panic or a hang.
#[test]
fn random_metadata_damage_never_panics() {
    for options in [&[][..], &["-m", "crc=0"][..]] {
        let Some((_dir, _root, bytes)) = small_image(options) else {
            return;
        };
        let xfs = open_bytes(bytes.clone()).unwrap();
        // Where metadata lives: the inode chunks and directory blocks of AG 0 and the
        // first AG's headers; the 3 MiB file's data comes later.
        let hot: Vec<u64> = [
            "/",
            "/small",
            "/three",
            "/block",
            "/leaf",
            "/links",
            "/links/long",
        ]
        .iter()
        .flat_map(|p| {
            let i = xfs.lookup_nofollow(p).unwrap();
            let mut v = vec![i.offset];
            v.extend(xfs.extents(&i).unwrap().iter().map(|e| {
                let sb = xfs.superblock();
                let ag = e.fs_block >> sb.ag_block_log;
                let agbno = e.fs_block & ((1 << sb.ag_block_log) - 1);
                (ag * u64::from(sb.ag_blocks) + agbno) << sb.block_log
            }));
            v
        })
        .collect();
        let bytes = Arc::new(bytes);
        for round in 0..300u64 {
            let r = noise(round, 64);
            let mut patches: Vec<(u64, u8)> = (0..8)
                .map(|k| {
                    let base = hot[usize::from(r[k]) % hot.len()];
                    let off = u64::from(u16::from_le_bytes([r[8 + 2 * k], r[9 + 2 * k]])) % 4096;
                    (base + off, r[32 + k])
                })
                .collect();
            if round % 10 == 0 {
                let at = usize::from(r[40]) % 264;
                patches.push((at as u64, bytes[at] ^ r[41]));
            }
            if let Ok(xfs) = open_patched(Arc::clone(&bytes), patches) {
                walk_everything(&xfs);
            }
        }
    }
}

proptest! {
    #[test]
    fn random_superblock_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..600), magic in any::<bool>()) {
        if magic && bytes.len() >= 4 {
            bytes[..4].copy_from_slice(b"XFSB");
        }
        let _ = Superblock::parse(&bytes);
    }

    #[test]
    fn random_inode_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..1100), fmt in 0u8..6, ver in 1u8..4) {
        if bytes.len() >= 6 {
            bytes[..2].copy_from_slice(b"IN");
            bytes[4] = ver;
            bytes[5] = fmt;
        }
        let sb = valid_superblock();
        if let Ok(inode) = Inode::parse(&sb, 128, 0, &bytes) {
            // Parsing succeeded: reading through it against an all-zero disk must not panic.
            let xfs = open_bytes(superblock_image()).unwrap();
            let _ = xfs.read_dir(&inode);
            let _ = xfs.read_link(&inode);
            let _ = xfs.read_file(&inode, 1 << 20);
            let _ = xfs.extents(&inode);
        }
    }
}

/// A hand-made v5 superblock: 4 KiB blocks, 512-byte inodes, 4 AGs of 1024 blocks.
fn superblock_image() -> Vec<u8> {
    let mut b = vec![0u8; 4 << 20];
    b[..4].copy_from_slice(b"XFSB");
    b[4..8].copy_from_slice(&4096u32.to_be_bytes());
    b[8..16].copy_from_slice(&1024u64.to_be_bytes());
    b[56..64].copy_from_slice(&128u64.to_be_bytes());
    b[84..88].copy_from_slice(&1024u32.to_be_bytes());
    b[88..92].copy_from_slice(&1u32.to_be_bytes());
    b[100..102].copy_from_slice(&0xb4a5u16.to_be_bytes());
    b[102..104].copy_from_slice(&512u16.to_be_bytes());
    b[104..106].copy_from_slice(&512u16.to_be_bytes());
    b[106..108].copy_from_slice(&8u16.to_be_bytes());
    b[120] = 12;
    b[122] = 9;
    b[123] = 3;
    b[124] = 10;
    b[216..220].copy_from_slice(&1u32.to_be_bytes());
    b
}

fn valid_superblock() -> Superblock {
    Superblock::parse(&superblock_image()[..512]).unwrap()
}
