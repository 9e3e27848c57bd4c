/* The probe's virtio-blk driver (virtio_blk.c). */
#ifndef VDR_VIRTIO_BLK_H
#define VDR_VIRTIO_BLK_H

#include "probe.h"

struct virtio_blk {
    unsigned long base;
    u64 spin_limit;
    u64 sectors;
    int read_only;
    u32 max_io_sectors;
};

/* Returns 0, or what failed. */
const char *virtio_blk_init(struct virtio_blk *v, u64 base, u64 spin_limit);
int virtio_blk_read(void *ctx, u64 lba, u32 count, void *buf);
int virtio_blk_write(void *ctx, u64 lba, u32 count, const void *buf);

#endif
