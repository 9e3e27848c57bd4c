/*
 * File system identification by superblock, the way blkid's probes do it (libblkid
 * superblocks/ sources): the magic at its fixed offset, plus label and UUID where they sit in the
 * same sectors. Two reads per partition: its first 8 sectors (VBR, LUKS, LVM label, ext
 * superblock at 1024, XFS at 0, swap signature at 4086) and 2 sectors at 64 KiB (btrfs).
 */
#include "probe.h"

static u8 head[4096] __attribute__((aligned(16)));
static u8 btrfs_sb[1024] __attribute__((aligned(16)));

static void set_label(struct fs_info *out, const u8 *p, u32 n)
{
    if (n > sizeof(out->label))
        n = sizeof(out->label);
    for (u32 i = 0; i < n; i++)
        out->label[i] = p[i];
    /* FAT pads with spaces; a NUL ends the others. */
    while (n && (out->label[n - 1] == ' ' || out->label[n - 1] == 0))
        n--;
    for (u32 i = 0; i < n; i++)
        if (out->label[i] == 0) {
            n = i;
            break;
        }
    out->label_len = n;
}

/* ext2/3/4 superblock at byte 1024 (Linux fs/ext4/ext4.h struct ext4_super_block). */
static int detect_ext(const u8 *sb, struct fs_info *out)
{
    if (le16(sb + 0x38) != 0xef53)
        return 0;
    u32 compat = le32(sb + 0x5c), incompat = le32(sb + 0x60);
    /* EXTENTS 0x40, 64BIT 0x80, FLEX_BG 0x200 make it ext4; HAS_JOURNAL 0x4 ext3. */
    if (incompat & (0x40 | 0x80 | 0x200))
        out->kind = "ext4";
    else if (compat & 0x4)
        out->kind = "ext3";
    else
        out->kind = "ext2";
    set_label(out, sb + 0x78, 16);
    format_uuid(out->uuid, sb + 0x68);
    return 1;
}

/* XFS superblock at 0, big-endian (xfs_format.h struct xfs_dsb). */
static int detect_xfs(const u8 *sb, struct fs_info *out)
{
    if (!bytes_eq(sb, "XFSB", 4))
        return 0;
    out->kind = "xfs";
    set_label(out, sb + 108, 12);
    format_uuid(out->uuid, sb + 32);
    return 1;
}

/* btrfs superblock at 64 KiB: magic at 0x40, fsid at 0x20, label at 0x12b. */
static int detect_btrfs(const u8 *sb, struct fs_info *out)
{
    if (!bytes_eq(sb + 0x40, "_BHRfS_M", 8))
        return 0;
    out->kind = "btrfs";
    set_label(out, sb + 0x12b, 256);
    format_uuid(out->uuid, sb + 0x20);
    return 1;
}

static int detect_ntfs(const u8 *vbr, struct fs_info *out)
{
    if (!bytes_eq(vbr + 3, "NTFS    ", 8))
        return 0;
    out->kind = "ntfs";
    /* blkid shows the volume serial number as 16 hex digits. */
    hex_upper(out->uuid, le64(vbr + 0x48), 16);
    return 1;
}

static int is_pow2(u32 v) { return v && !(v & (v - 1)); }

/* FAT12/16/32: BPB sanity, a "FAT" type string, and the cluster count that decides the
 * width (Microsoft FAT specification, "FAT type determination"). */
static int detect_fat(const u8 *vbr, struct fs_info *out)
{
    u32 bps = le16(vbr + 0x0b), spc = vbr[0x0d], rsvd = le16(vbr + 0x0e), nfats = vbr[0x10];
    u32 root_entries = le16(vbr + 0x11), media = vbr[0x15];
    if (!(bps == 512 || bps == 1024 || bps == 2048 || bps == 4096) || !is_pow2(spc) ||
        rsvd == 0 || nfats == 0 || !(media == 0xf0 || media >= 0xf8))
        return 0;
    if (!bytes_eq(vbr + 0x36, "FAT", 3) && !bytes_eq(vbr + 0x52, "FAT", 3))
        return 0;
    u64 fat_size = le16(vbr + 0x16) ? le16(vbr + 0x16) : le32(vbr + 0x24);
    u64 total = le16(vbr + 0x13) ? le16(vbr + 0x13) : le32(vbr + 0x20);
    u64 root_sectors = ((u64)root_entries * 32 + bps - 1) / bps;
    u64 meta = rsvd + nfats * fat_size + root_sectors;
    if (fat_size == 0 || total <= meta)
        return 0;
    u64 clusters = (total - meta) / spc;
    int fat32 = le16(vbr + 0x16) == 0;
    out->kind = clusters < 4085 ? "fat12" : clusters < 65525 ? "fat16" : "fat32";
    const u8 *ext = vbr + (fat32 ? 0x40 : 0x24); /* extended BPB: drive, res, sig 0x29 */
    if (ext[2] == 0x29) {
        u32 serial = le32(ext + 3);
        hex_upper(out->uuid, serial >> 16, 4);
        out->uuid[4] = '-';
        hex_upper(out->uuid + 5, serial & 0xffff, 4);
        if (!bytes_eq(ext + 7, "NO NAME    ", 11))
            set_label(out, ext + 7, 11);
    }
    return 1;
}

/* Linux swap: "SWAPSPACE2" at the end of the first 4 KiB page; uuid and label after the
 * 1 KiB of boot bits (include/linux/swap.h union swap_header). */
static int detect_swap(const u8 *page, u32 have, struct fs_info *out)
{
    if (have < 4096 || (!bytes_eq(page + 4086, "SWAPSPACE2", 10) &&
                        !bytes_eq(page + 4086, "SWAP-SPACE", 10)))
        return 0;
    out->kind = "swap";
    format_uuid(out->uuid, page + 1024 + 12);
    set_label(out, page + 1024 + 28, 16);
    return 1;
}

/* LVM2 physical volume: "LABELONE" in one of the first four sectors, type "LVM2 001",
 * the PV UUID (32 characters) in the pv_header at the label's offset_xl. */
static int detect_lvm(const u8 *p, u32 have, struct fs_info *out)
{
    for (u32 s = 0; s < 4 && (s + 1) * 512 <= have; s++) {
        const u8 *label = p + s * 512;
        if (!bytes_eq(label, "LABELONE", 8) || !bytes_eq(label + 24, "LVM2 001", 8))
            continue;
        out->kind = "lvm2-pv";
        u32 off = le32(label + 20);
        if (off <= 512 - 32) {
            static const u8 dashes[] = {6, 4, 4, 4, 4, 4, 6};
            u32 o = 0, i = 0;
            for (u32 g = 0; g < 7; g++) {
                for (u32 k = 0; k < dashes[g]; k++) {
                    u8 c = label[off + i++];
                    out->uuid[o++] = (c >= '!' && c <= '~' && c != '"' && c != '\\') ? (char)c : '?';
                }
                if (g < 6)
                    out->uuid[o++] = '-';
            }
            out->uuid[o] = 0;
        }
        return 1;
    }
    return 0;
}

/* LUKS1/LUKS2: magic "LUKS\xba\xbe", the UUID as text at 168 (40 bytes). */
static int detect_luks(const u8 *p, struct fs_info *out)
{
    if (!bytes_eq(p, "LUKS\xba\xbe", 6))
        return 0;
    out->kind = le16(p + 6) == 0x0200 ? "luks2" : "luks1";
    u32 i = 0;
    for (; i < 40 && i + 1 < sizeof(out->uuid); i++) {
        u8 c = p[168 + i];
        if (c == 0)
            break;
        out->uuid[i] = (c >= '!' && c <= '~' && c != '"' && c != '\\') ? (char)c : '?';
    }
    out->uuid[i] = 0;
    return 1;
}

int fs_detect(struct probe_dev *d, u64 start, u64 sectors, struct fs_info *out)
{
    u32 n = sectors < 8 ? (u32)sectors : 8;
    out->kind = 0;
    out->label_len = 0;
    out->label_utf16 = 0;
    out->uuid[0] = 0;
    out->vbr_signature = 0;
    out->boot_code = 0;
    if (n == 0)
        return IO_OK;
    for (u32 i = 0; i < sizeof(head); i++)
        head[i] = 0;
    int r = dev_read(d, start, n, head);
    if (r != IO_OK)
        return r;
    u32 have = n * 512;
    out->vbr_signature = head[510] == 0x55 && head[511] == 0xaa;
    out->boot_code = out->vbr_signature && !all_zero(head + 0x5a, 0x1fe - 0x5a);

    if (detect_luks(head, out) || detect_lvm(head, have, out) || detect_xfs(head, out))
        return IO_OK;
    if (have >= 2048 && detect_ext(head + 1024, out))
        return IO_OK;
    if (sectors >= 130) {
        r = dev_read(d, start + 128, 2, btrfs_sb);
        if (r == IO_DEAD)
            return r;
        if (r == IO_OK && detect_btrfs(btrfs_sb, out))
            return IO_OK;
    }
    if (detect_ntfs(head, out) || detect_fat(head, out) || detect_swap(head, have, out))
        return IO_OK;
    return IO_OK;
}
