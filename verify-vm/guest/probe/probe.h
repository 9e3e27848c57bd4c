/*
 * Interfaces between the probe's parts: the analysis (analyze.c, fs.c) runs over a
 * `probe_dev` and writes JSON lines through out.c; the platform (main.c in the VM,
 * harness.c on the host for tests) provides the device and plat_write().
 */
#ifndef VDR_PROBE_H
#define VDR_PROBE_H

#include "probe_params.h"

/* Exit statuses (also in src/probe/mod.rs). */
#define EXIT_OK 0
#define EXIT_BAD_PARAMS 1
#define EXIT_NO_DEVICE 2
#define EXIT_DEVICE_FAILED 3

/* Results of a device request. */
#define IO_OK 0
#define IO_ERR (-1)    /* the device answered VIRTIO_BLK_S_IOERR (or UNSUPP) */
#define IO_DEAD (-2)   /* no answer within the spin limit, or a broken reply */
#define IO_RANGE (-3)  /* the request lies past the device's capacity */

struct probe_dev {
    u64 sectors;         /* capacity in 512-byte sectors */
    int read_only;       /* VIRTIO_BLK_F_RO negotiated */
    u32 max_io_sectors;  /* largest single request */
    int (*read)(void *ctx, u64 lba, u32 count, void *buf);
    int (*write)(void *ctx, u64 lba, u32 count, const void *buf);
    void *ctx;
};

/* Runs the whole analysis and returns the exit status. */
int probe_run(const struct vdr_probe_params *p, struct probe_dev *d);

/* Reads `count` sectors (any length: split into device-sized requests). */
int dev_read(struct probe_dev *d, u64 lba, u32 count, void *buf);

/* fs.c: what a partition (or the whole disk) holds. */
struct fs_info {
    const char *kind;    /* "ext4", ..., or 0 */
    u8 label[256];
    u32 label_len;
    int label_utf16;     /* label is UTF-16LE (unused so far) */
    char uuid[48];
    int vbr_signature;   /* 0x55AA at byte 510 of the first sector */
    int boot_code;       /* ... and non-zero code after the BPB */
};
int fs_detect(struct probe_dev *d, u64 start, u64 sectors, struct fs_info *out);

/* out.c: one JSON object per line, prefixed "VDRPROBE ". */
void plat_write(const char *s, u32 n);
void jl_begin(const char *type);
void jl_str(const char *key, const char *ascii);
void jl_text(const char *key, const u8 *bytes, u32 max_len); /* UTF-8, stops at NUL */
void jl_utf16le(const char *key, const u8 *bytes, u32 max_units);
void jl_u64(const char *key, u64 v);
void jl_bool(const char *key, int v);
void jl_null(const char *key);
void jl_hex32(const char *key, u32 v);
void jl_end(void);
void emit_note(const char *what, u64 lba);

u32 crc32_update(u32 crc, const void *data, u64 len);

/* small helpers (no libc in the guest) */
int bytes_eq(const void *a, const void *b, u32 n);
int all_zero(const u8 *p, u32 n);
u16 le16(const u8 *p);
u32 le32(const u8 *p);
u64 le64(const u8 *p);
u32 be32(const u8 *p);
u64 be64(const u8 *p);
void format_uuid(char *out, const u8 *raw16);
void hex_upper(char *out, u64 v, int digits);

#endif
