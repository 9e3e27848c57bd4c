/*
 * The probe's analysis: the partition table (MBR with its EBR chain, GPT with both CRC-32s
 * and the backup header, as formats/src/partition.rs reads them so the host can compare
 * line by line), the file system of each partition, the host's sample sectors and the
 * overlay write test. Everything is reported as it is found; a failing read is a note,
 * a dead device ends the run.
 */
#include "probe.h"

#define MAX_PARTS_STORED 128u
#define MAX_LOGICAL 128u
#define MAX_GPT_ENTRIES 4096u
#define MAX_GPT_ENTRY_SIZE 4096u
#define CHUNK_SECTORS 128u /* 64 KiB */

struct part {
    u32 index;
    u64 start;
    u64 sectors;
};

static struct part parts[MAX_PARTS_STORED];
static u32 part_count;
static u32 part_limit;
static int device_dead;
static u8 sector[512] __attribute__((aligned(16)));
static u8 chunk[CHUNK_SECTORS * 512] __attribute__((aligned(4096)));

int dev_read(struct probe_dev *d, u64 lba, u32 count, void *buf)
{
    u8 *out = buf;
    if (device_dead)
        return IO_DEAD;
    if (lba > d->sectors || count > d->sectors - lba)
        return IO_RANGE;
    u32 step = d->max_io_sectors ? d->max_io_sectors : 1;
    while (count) {
        u32 n = count < step ? count : step;
        int r = d->read(d->ctx, lba, n, out);
        if (r == IO_DEAD)
            device_dead = 1;
        if (r != IO_OK)
            return r;
        lba += n;
        count -= n;
        out += (u64)n * 512;
    }
    return IO_OK;
}

/* Reads a sector that a structure should be in; a failure is reported and returns 0. */
static int read_meta(struct probe_dev *d, u64 lba, u8 *buf)
{
    int r = dev_read(d, lba, 1, buf);
    if (r == IO_OK)
        return 1;
    if (r != IO_DEAD)
        emit_note(r == IO_RANGE ? "sector past the end of the device" : "read error", lba);
    return 0;
}

/* Records a partition, cut at the end of the device (partition.rs push_clipped). */
static void add_part(struct probe_dev *d, u32 index, u64 start, u64 sectors, const char *type,
                     const u8 *name_utf16)
{
    if (start >= d->sectors) {
        emit_note("partition starts past the end of the disk; left out", start);
        return;
    }
    if (sectors > d->sectors - start) {
        emit_note("partition ends past the end of the disk; cut", start);
        sectors = d->sectors - start;
    }
    jl_begin("part");
    jl_u64("i", index);
    jl_u64("start", start);
    jl_u64("sectors", sectors);
    jl_str("type", type);
    if (name_utf16)
        jl_utf16le("name", name_utf16, 36);
    jl_end();
    if (part_count < part_limit && part_count < MAX_PARTS_STORED) {
        parts[part_count].index = index;
        parts[part_count].start = start;
        parts[part_count].sectors = sectors;
        part_count++;
    } else {
        emit_note("more partitions than the probe analyses", start);
    }
}

static void mbr_type(char *out, u8 kind)
{
    out[0] = '0';
    out[1] = 'x';
    out[2] = "0123456789abcdef"[kind >> 4];
    out[3] = "0123456789abcdef"[kind & 15];
    out[4] = 0;
}

static int is_extended(u8 kind) { return kind == 0x05 || kind == 0x0f || kind == 0x85; }

/* The logical partitions of the extended partition at `base` (partition.rs read_logical). */
static void read_logical(struct probe_dev *d, u64 base)
{
    u64 ebr = base;
    char type[8];
    for (u32 n = 0; n < MAX_LOGICAL; n++) {
        if (!read_meta(d, ebr, sector))
            return;
        if (sector[510] != 0x55 || sector[511] != 0xaa) {
            emit_note("EBR has no 0x55AA signature", ebr);
            return;
        }
        const u8 *logical = sector + 446, *next = sector + 462;
        if (logical[4] != 0 && le32(logical + 12) != 0) {
            mbr_type(type, logical[4]);
            add_part(d, 5 + n, ebr + le32(logical + 8), le32(logical + 12), type, 0);
        }
        /* add_part may not touch `sector`, so `next` is still this EBR's second entry. */
        if (next[4] == 0 || le32(next + 8) == 0)
            return;
        ebr = base + le32(next + 8);
    }
    emit_note("too many logical partitions (an EBR loop?); stopped", base);
}

/* GUID text form: the first three fields little-endian (partition.rs guid_string). */
static void guid_string(char *out, const u8 *b)
{
    hex_upper(out, le32(b), 8);
    out[8] = '-';
    hex_upper(out + 9, le16(b + 4), 4);
    out[13] = '-';
    hex_upper(out + 14, le16(b + 6), 4);
    out[18] = '-';
    hex_upper(out + 19, b[8], 2);
    hex_upper(out + 21, b[9], 2);
    out[23] = '-';
    for (int i = 0; i < 6; i++)
        hex_upper(out + 24 + 2 * i, b[10 + i], 2);
}

struct gpt_header {
    u64 entries_lba;
    u32 count;
    u32 entry_size;
    u32 entries_crc;
};

static const char *check_gpt_header(const u8 *raw, u64 lba, struct gpt_header *h)
{
    u32 size = le32(raw + 12);
    if (size < 92 || size > 512)
        return "GPT header size out of range";
    u32 stored = le32(raw + 16);
    u32 crc = crc32_update(0, raw, 16);
    static const u8 zero[4];
    crc = crc32_update(crc, zero, 4);
    crc = crc32_update(crc, raw + 20, size - 20);
    if (crc != stored)
        return "GPT header CRC32 mismatch";
    if (le64(raw + 24) != lba)
        return "GPT header names another LBA";
    h->count = le32(raw + 80);
    h->entry_size = le32(raw + 84);
    h->entries_lba = le64(raw + 72);
    h->entries_crc = le32(raw + 88);
    if (h->count == 0 || h->count > MAX_GPT_ENTRIES)
        return "GPT entry count out of range";
    if (h->entry_size < 128 || h->entry_size > MAX_GPT_ENTRY_SIZE ||
        (h->entry_size & (h->entry_size - 1)))
        return "GPT entry size invalid";
    return 0;
}

/* Walks the entry array in chunks: pass 0 computes its CRC-32, pass 1 reports entries. */
static int gpt_entries(struct probe_dev *d, const struct gpt_header *h, int report, u32 *crc)
{
    u64 len = (u64)h->count * h->entry_size, done = 0;
    char type[40];
    *crc = 0;
    while (done < len) {
        u64 lba = h->entries_lba + done / 512;
        u64 left = len - done;
        u32 n = left >= sizeof(chunk) ? CHUNK_SECTORS : (u32)((left + 511) / 512);
        u32 bytes = left >= sizeof(chunk) ? (u32)sizeof(chunk) : (u32)left;
        int r = dev_read(d, lba, n, chunk);
        if (r != IO_OK) {
            if (r != IO_DEAD)
                emit_note("read error in the GPT entry array", lba);
            return 0;
        }
        if (!report) {
            *crc = crc32_update(*crc, chunk, bytes);
        } else {
            /* entry_size is a power of two >= 128, so entries never straddle chunks. */
            for (u32 off = 0; off + h->entry_size <= bytes; off += h->entry_size) {
                const u8 *e = chunk + off;
                u32 index = (u32)((done + off) / h->entry_size);
                if (all_zero(e, 16))
                    continue;
                u64 first = le64(e + 32), last = le64(e + 40);
                if (last < first) {
                    emit_note("GPT entry: last LBA before first", first);
                    continue;
                }
                guid_string(type, e);
                add_part(d, index + 1, first, last - first + 1, type, e + 56);
            }
        }
        done += bytes;
    }
    return 1;
}

/* The GPT, primary first then the backup at the last LBA (partition.rs read_gpt). Returns
 * 1 when a table was reported. */
static int read_gpt(struct probe_dev *d)
{
    if (d->sectors < 3)
        return 0;
    u64 last = d->sectors - 1;
    int seen_any = 0, primary_ok = 0;
    for (int which = 0; which < 2; which++) {
        u64 lba = which == 0 ? 1 : last;
        struct gpt_header h;
        if (!read_meta(d, lba, sector))
            continue;
        if (!bytes_eq(sector, "EFI PART", 8)) {
            if (seen_any)
                emit_note("backup GPT header has no signature", lba);
            continue;
        }
        seen_any = 1;
        const char *why = check_gpt_header(sector, lba, &h);
        if (why) {
            emit_note(why, lba);
            continue;
        }
        u64 array_sectors = ((u64)h.count * h.entry_size + 511) / 512;
        if (h.entries_lba > d->sectors || array_sectors > d->sectors - h.entries_lba) {
            emit_note("GPT entry array lies past the end of the disk", h.entries_lba);
            continue;
        }
        u32 crc;
        if (!gpt_entries(d, &h, 0, &crc))
            continue;
        if (crc != h.entries_crc) {
            emit_note("GPT entry array CRC32 mismatch", h.entries_lba);
            continue;
        }
        if (which == 0)
            primary_ok = 1;
        jl_begin("table");
        jl_str("scheme", which == 0 ? "gpt" : "gpt-backup");
        jl_bool("crc_ok", 1);
        jl_bool("primary_ok", primary_ok);
        jl_u64("header_lba", lba);
        jl_u64("entries", h.count);
        jl_end();
        gpt_entries(d, &h, 1, &crc);
        return 1;
    }
    return 0;
}

/* Sector 0 is the boot sector of an NTFS or FAT file system on the whole disk (it ends in
 * 0x55AA too, and its "partition entries" are boot code): the same check as the host's
 * partition reader and libblkid's dos probe. */
static int fs_boot_sector(const u8 *s)
{
    static const u8 ntfs[8] = {'N', 'T', 'F', 'S', ' ', ' ', ' ', ' '};
    int is_ntfs = 1;
    for (int i = 0; i < 8; i++)
        is_ntfs &= s[3 + i] == ntfs[i];
    if (is_ntfs)
        return 1;
    int fat32 = s[0x52] == 'F' && s[0x53] == 'A' && s[0x54] == 'T' && s[0x55] == '3' && s[0x56] == '2';
    int fat16 = s[0x36] == 'F' && s[0x37] == 'A' && s[0x38] == 'T' && s[0x39] == '1' &&
                (s[0x3a] == '2' || s[0x3a] == '6');
    u16 bytes_per_sector = le16(s + 11);
    u8 spc = s[13];
    int plausible = (bytes_per_sector == 512 || bytes_per_sector == 1024 || bytes_per_sector == 2048 ||
                     bytes_per_sector == 4096) &&
                    spc != 0 && (spc & (spc - 1)) == 0 && (s[0] == 0xeb || s[0] == 0xe9);
    return (fat32 || fat16) && plausible;
}

static void read_table(struct probe_dev *d)
{
    static u8 mbr[512] __attribute__((aligned(16)));
    if (!read_meta(d, 0, mbr)) {
        jl_begin("table");
        jl_str("scheme", "unreadable");
        jl_end();
        return;
    }
    int signature = mbr[510] == 0x55 && mbr[511] == 0xaa;
    jl_begin("mbr");
    jl_bool("signature", signature);
    jl_bool("boot_code", signature && !all_zero(mbr, 440));
    jl_hex32("disk_id", le32(mbr + 440));
    jl_end();
    int protective = 0;
    for (int i = 0; signature && i < 4; i++)
        protective |= mbr[446 + 16 * i + 4] == 0xee;
    if (read_gpt(d) || device_dead)
        return;
    if (protective)
        emit_note("protective MBR but neither GPT header is valid", 0);
    if (!signature || (!protective && fs_boot_sector(mbr))) {
        jl_begin("table");
        jl_str("scheme", "none");
        jl_end();
        return;
    }
    jl_begin("table");
    jl_str("scheme", "mbr");
    jl_end();
    char type[8];
    for (u32 slot = 0; slot < 4; slot++) {
        const u8 *e = mbr + 446 + 16 * slot;
        u8 kind = e[4];
        u32 start = le32(e + 8), count = le32(e + 12);
        if (kind == 0 || kind == 0xee || count == 0)
            continue;
        if (is_extended(kind))
            read_logical(d, start);
        mbr_type(type, kind);
        add_part(d, slot + 1, start, count, type, 0);
    }
}

static void report_fs(struct probe_dev *d, u32 index, u64 start, u64 sectors)
{
    struct fs_info fs;
    int r = fs_detect(d, start, sectors, &fs);
    jl_begin("fs");
    jl_u64("part", index);
    if (r != IO_OK) {
        jl_null("kind");
        jl_str("error", r == IO_ERR ? "ioerr" : r == IO_RANGE ? "range" : "dead");
    } else if (fs.kind) {
        jl_str("kind", fs.kind);
        jl_text("label", fs.label, fs.label_len);
        jl_str("uuid", fs.uuid);
    } else {
        jl_null("kind");
    }
    jl_bool("vbr_signature", fs.vbr_signature);
    jl_bool("boot_code", fs.boot_code);
    jl_end();
}

static void check_sample(struct probe_dev *d, const struct vdr_probe_sample *s, u32 max)
{
    u32 count = s->sectors > max ? max : s->sectors;
    u32 crc = 0;
    int r = IO_OK;
    for (u32 done = 0; done < count && r == IO_OK;) {
        u32 n = count - done < CHUNK_SECTORS ? count - done : CHUNK_SECTORS;
        r = dev_read(d, s->lba + done, n, chunk);
        if (r == IO_OK)
            crc = crc32_update(crc, chunk, (u64)n * 512);
        done += n;
    }
    jl_begin("sample");
    jl_u64("lba", s->lba);
    jl_u64("n", count);
    if (r == IO_OK)
        jl_hex32("crc", crc);
    else
        jl_str("crc", r == IO_RANGE ? "range" : r == IO_DEAD ? "dead" : "ioerr");
    jl_end();
}

/* Writes a pattern over one sector, reads it back: proves writes reach a (host-side)
 * overlay and are served back. The host then checks that the evidence did not change. */
static void overlay_test(struct probe_dev *d, u64 lba)
{
    static u8 pattern[512] __attribute__((aligned(16)));
    static const char marker[] = "VDRPROBE overlay test sector";
    for (u32 i = 0; i < 512; i++)
        pattern[i] = (u8)((i * 7 + lba) ^ 0xa5);
    for (u32 i = 0; i < sizeof(marker) - 1; i++)
        pattern[i] = (u8)marker[i];
    int before = dev_read(d, lba, 1, sector);
    u32 before_crc = before == IO_OK ? crc32_update(0, sector, 512) : 0;
    int w = (lba < d->sectors && !device_dead) ? d->write(d->ctx, lba, 1, pattern) : IO_RANGE;
    if (w == IO_DEAD)
        device_dead = 1;
    int r = w == IO_OK ? dev_read(d, lba, 1, sector) : w;
    jl_begin("overlay");
    jl_u64("lba", lba);
    if (before == IO_OK)
        jl_hex32("before_crc", before_crc);
    jl_str("write", w == IO_OK ? "ok" : w == IO_ERR ? "ioerr" : w == IO_RANGE ? "range" : "dead");
    jl_bool("matched", r == IO_OK && bytes_eq(sector, pattern, 512));
    jl_end();
}

int probe_run(const struct vdr_probe_params *p, struct probe_dev *d)
{
    part_count = 0;
    device_dead = 0;
    part_limit = p->max_partitions;
    jl_begin("disk");
    jl_u64("sectors", d->sectors);
    jl_bool("ro", d->read_only);
    jl_end();

    read_table(d);
    if (!device_dead && part_count == 0)
        report_fs(d, 0, 0, d->sectors);
    for (u32 i = 0; i < part_count && !device_dead; i++)
        report_fs(d, parts[i].index, parts[i].start, parts[i].sectors);

    u32 samples = p->sample_count < VDR_PROBE_MAX_SAMPLES ? p->sample_count : VDR_PROBE_MAX_SAMPLES;
    for (u32 i = 0; i < samples && !device_dead; i++)
        check_sample(d, &p->samples[i], p->max_sample_sectors);

    if ((p->flags & VDR_PROBE_OVERLAY_TEST) && !device_dead)
        overlay_test(d, p->overlay_lba);

    if (device_dead) {
        jl_begin("error");
        jl_str("what", "the block device stopped answering");
        jl_end();
        return EXIT_DEVICE_FAILED;
    }
    jl_begin("done");
    jl_end();
    return EXIT_OK;
}
