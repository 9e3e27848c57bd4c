/*
 * A polled virtio-blk driver over virtio-mmio version 2 (virtio 1.2 §4.2.2 register
 * layout, §3.1.1 driver initialisation, §2.7 split virtqueues, §5.2 block device). One
 * request in flight: header, data, status descriptors; the used ring is polled with a
 * bounded spin, interrupts stay masked (the probe runs with IF=0).
 */
#include "virtio_blk.h"

#define REG_MAGIC 0x000
#define REG_VERSION 0x004
#define REG_DEVICE_ID 0x008
#define REG_DEVICE_FEATURES 0x010
#define REG_DEVICE_FEATURES_SEL 0x014
#define REG_DRIVER_FEATURES 0x020
#define REG_DRIVER_FEATURES_SEL 0x024
#define REG_QUEUE_SEL 0x030
#define REG_QUEUE_NUM_MAX 0x034
#define REG_QUEUE_NUM 0x038
#define REG_QUEUE_READY 0x044
#define REG_QUEUE_NOTIFY 0x050
#define REG_INTERRUPT_STATUS 0x060
#define REG_INTERRUPT_ACK 0x064
#define REG_STATUS 0x070
#define REG_QUEUE_DESC_LOW 0x080
#define REG_QUEUE_DESC_HIGH 0x084
#define REG_QUEUE_DRIVER_LOW 0x090
#define REG_QUEUE_DRIVER_HIGH 0x094
#define REG_QUEUE_DEVICE_LOW 0x0a0
#define REG_QUEUE_DEVICE_HIGH 0x0a4
#define REG_CONFIG_GENERATION 0x0fc
#define REG_CONFIG 0x100

#define STATUS_ACKNOWLEDGE 1u
#define STATUS_DRIVER 2u
#define STATUS_DRIVER_OK 4u
#define STATUS_FEATURES_OK 8u
#define STATUS_FAILED 0x80u

#define F_BLK_SIZE_MAX 1u        /* bit 1: size_max in config */
#define F_BLK_RO 5u              /* bit 5 */
#define F_VERSION_1_HIGH 0u      /* bit 32: bit 0 of the high word */

#define DESC_F_NEXT 1u
#define DESC_F_WRITE 2u

#define REQ_IN 0u
#define REQ_OUT 1u
#define REQ_S_OK 0u
#define REQ_S_IOERR 1u

#define QUEUE_SIZE 8u
#define MAX_IO_BYTES (64u * 1024u)

struct desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};

struct avail {
    u16 flags;
    u16 idx;
    u16 ring[QUEUE_SIZE];
    u16 used_event;
};

struct used_elem {
    u32 id;
    u32 len;
};

struct used {
    u16 flags;
    u16 idx;
    struct used_elem ring[QUEUE_SIZE];
    u16 avail_event;
};

struct req_header {
    u32 type;
    u32 reserved;
    u64 sector;
};

static struct desc descs[QUEUE_SIZE] __attribute__((aligned(16)));
static struct avail avail_ring __attribute__((aligned(16)));
static struct used used_ring __attribute__((aligned(16)));
static struct req_header header __attribute__((aligned(16)));
static volatile u8 req_status __attribute__((aligned(16)));
static u16 queue_size;
static u16 last_used;

static u32 rd(struct virtio_blk *v, u32 reg) { return *(volatile u32 *)(v->base + reg); }
static void wr(struct virtio_blk *v, u32 reg, u32 val) { *(volatile u32 *)(v->base + reg) = val; }

static void fence(void) { __asm__ volatile("mfence" ::: "memory"); }

static u64 addr_of(const volatile void *p) { return (u64)(unsigned long)p; }

static const char *fail(struct virtio_blk *v, const char *why)
{
    wr(v, REG_STATUS, rd(v, REG_STATUS) | STATUS_FAILED);
    return why;
}

const char *virtio_blk_init(struct virtio_blk *v, u64 base, u64 spin_limit)
{
    v->base = (unsigned long)base;
    v->spin_limit = spin_limit;
    if (rd(v, REG_MAGIC) != 0x74726976u)
        return "no virtio-mmio magic at the device address";
    if (rd(v, REG_VERSION) != 2)
        return "not a virtio-mmio version 2 device";
    if (rd(v, REG_DEVICE_ID) != 2)
        return "not a block device";

    wr(v, REG_STATUS, 0);
    for (u64 i = 0; rd(v, REG_STATUS) != 0; i++)
        if (i > 1000000)
            return "the device does not reset";
    wr(v, REG_STATUS, STATUS_ACKNOWLEDGE);
    wr(v, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);

    wr(v, REG_DEVICE_FEATURES_SEL, 0);
    u32 low = rd(v, REG_DEVICE_FEATURES);
    wr(v, REG_DEVICE_FEATURES_SEL, 1);
    u32 high = rd(v, REG_DEVICE_FEATURES);
    if (!(high & (1u << F_VERSION_1_HIGH)))
        return fail(v, "the device does not offer VIRTIO_F_VERSION_1");
    u32 accept_low = low & ((1u << F_BLK_RO) | (1u << F_BLK_SIZE_MAX));
    wr(v, REG_DRIVER_FEATURES_SEL, 0);
    wr(v, REG_DRIVER_FEATURES, accept_low);
    wr(v, REG_DRIVER_FEATURES_SEL, 1);
    wr(v, REG_DRIVER_FEATURES, 1u << F_VERSION_1_HIGH);
    wr(v, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    if (!(rd(v, REG_STATUS) & STATUS_FEATURES_OK))
        return fail(v, "the device refused the features (FEATURES_OK not kept)");
    v->read_only = (accept_low >> F_BLK_RO) & 1;

    wr(v, REG_QUEUE_SEL, 0);
    if (rd(v, REG_QUEUE_READY) != 0)
        return fail(v, "queue 0 is already live");
    u32 max = rd(v, REG_QUEUE_NUM_MAX);
    if (max < 4)
        return fail(v, "queue 0 is too small");
    queue_size = max < QUEUE_SIZE ? (max >= 4 ? 4 : (u16)max) : QUEUE_SIZE;
    last_used = 0;
    avail_ring.idx = 0;
    avail_ring.flags = 1; /* VIRTQ_AVAIL_F_NO_INTERRUPT: we poll */
    used_ring.idx = 0;
    wr(v, REG_QUEUE_NUM, queue_size);
    wr(v, REG_QUEUE_DESC_LOW, (u32)addr_of(descs));
    wr(v, REG_QUEUE_DESC_HIGH, (u32)(addr_of(descs) >> 32));
    wr(v, REG_QUEUE_DRIVER_LOW, (u32)addr_of(&avail_ring));
    wr(v, REG_QUEUE_DRIVER_HIGH, (u32)(addr_of(&avail_ring) >> 32));
    wr(v, REG_QUEUE_DEVICE_LOW, (u32)addr_of(&used_ring));
    wr(v, REG_QUEUE_DEVICE_HIGH, (u32)(addr_of(&used_ring) >> 32));
    wr(v, REG_QUEUE_READY, 1);
    wr(v, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);

    /* capacity (u64) and, when offered, size_max (u32 at 8); config is read until the
     * generation counter is stable (§4.2.2.3). */
    u32 gen, cap_low, cap_high, size_max = 0;
    for (int tries = 0;; tries++) {
        gen = rd(v, REG_CONFIG_GENERATION);
        cap_low = rd(v, REG_CONFIG);
        cap_high = rd(v, REG_CONFIG + 4);
        if (accept_low & (1u << F_BLK_SIZE_MAX))
            size_max = rd(v, REG_CONFIG + 8);
        if (rd(v, REG_CONFIG_GENERATION) == gen)
            break;
        if (tries > 100)
            return fail(v, "the device's configuration keeps changing");
    }
    v->sectors = ((u64)cap_high << 32) | cap_low;
    u32 io_bytes = MAX_IO_BYTES;
    if (size_max >= 512 && size_max < io_bytes)
        io_bytes = size_max;
    v->max_io_sectors = io_bytes / 512;
    return 0;
}

static int submit(struct virtio_blk *v, u32 type, u64 lba, u32 count, const void *buf)
{
    u32 len = count * 512;
    if (count == 0 || count > v->max_io_sectors)
        return IO_RANGE;
    header.type = type;
    header.reserved = 0;
    header.sector = lba;
    req_status = 0xff;
    descs[0].addr = addr_of(&header);
    descs[0].len = sizeof(header);
    descs[0].flags = DESC_F_NEXT;
    descs[0].next = 1;
    descs[1].addr = addr_of(buf);
    descs[1].len = len;
    descs[1].flags = DESC_F_NEXT | (type == REQ_IN ? DESC_F_WRITE : 0);
    descs[1].next = 2;
    descs[2].addr = addr_of(&req_status);
    descs[2].len = 1;
    descs[2].flags = DESC_F_WRITE;
    descs[2].next = 0;
    avail_ring.ring[avail_ring.idx % queue_size] = 0;
    fence();
    *(volatile u16 *)&avail_ring.idx = (u16)(avail_ring.idx + 1);
    fence();
    wr(v, REG_QUEUE_NOTIFY, 0);

    u64 spins = 0;
    while (*(volatile u16 *)&used_ring.idx == last_used) {
        if (++spins > v->spin_limit)
            return IO_DEAD;
        __asm__ volatile("pause" ::: "memory");
    }
    fence();
    last_used++;
    u32 isr = rd(v, REG_INTERRUPT_STATUS);
    if (isr)
        wr(v, REG_INTERRUPT_ACK, isr);
    if (used_ring.ring[(u16)(last_used - 1) % queue_size].id != 0)
        return IO_DEAD;
    if (req_status == REQ_S_OK)
        return IO_OK;
    if (req_status == 0xff)
        return IO_DEAD;
    return IO_ERR; /* IOERR or UNSUPP */
}

int virtio_blk_read(void *ctx, u64 lba, u32 count, void *buf)
{
    return submit(ctx, REQ_IN, lba, count, buf);
}

int virtio_blk_write(void *ctx, u64 lba, u32 count, const void *buf)
{
    return submit(ctx, REQ_OUT, lba, count, buf);
}
