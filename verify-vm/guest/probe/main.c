/*
 * The probe guest's platform: port I/O, the 16550 console (polled THRE), the exit port,
 * mapping the virtio-mmio page when it lies above the 1 GiB the VMM identity-maps, and
 * probe_main(), called by entry.S with the parameter block's address.
 */
#include "probe.h"
#include "virtio_blk.h"

static u16 serial_port;
static u16 exit_port;

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* 16550: LSR (port + 5) bit 5 = transmit holding register empty; with the FIFO enabled
 * that means 16 bytes may follow, so the status is polled once per 16 bytes. */
void plat_write(const char *s, u32 n)
{
    u32 room = 0;
    for (u32 i = 0; i < n; i++) {
        for (u32 spin = 0; room == 0; spin++) {
            if ((inb(serial_port + 5) & 0x20) || spin > 100000)
                room = 16;
        }
        outb(serial_port, (u8)s[i]);
        room--;
    }
}

static void serial_init(void)
{
    outb(serial_port + 1, 0x00); /* no interrupts */
    outb(serial_port + 3, 0x03); /* 8N1 */
    outb(serial_port + 2, 0x07); /* FIFO on, cleared */
}

static __attribute__((noreturn)) void stop(int status)
{
    outb(exit_port, (u8)status);
    for (;;)
        __asm__ volatile("cli; hlt");
}

static void error_line(const char *what)
{
    jl_begin("error");
    jl_str("what", what);
    jl_end();
}

/* The VMM identity-maps the first 1 GiB with 2 MiB pages; an MMIO base above that gets a
 * page directory of its own (uncached) in the VMM's PDPT. */
static u64 mmio_pd[512] __attribute__((aligned(4096)));

static const char *map_mmio(u64 base)
{
    const u64 gib = 1ull << 30, addr_mask = 0x000ffffffffff000ull;
    if (base < gib)
        return 0;
    if (base >= 512 * gib)
        return "the virtio-mmio base is above 512 GiB";
    u64 cr3;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    u64 *pml4 = (u64 *)(unsigned long)(cr3 & addr_mask);
    if (!(pml4[0] & 1))
        return "no PML4 entry for the low 512 GiB";
    u64 *pdpt = (u64 *)(unsigned long)(pml4[0] & addr_mask);
    u64 slot = base / gib;
    if (pdpt[slot] & 1)
        return 0;
    for (u64 i = 0; i < 512; i++)
        mmio_pd[i] = (slot * gib + (i << 21)) | 0x80 /* PS */ | 0x10 /* PCD */ | 0x8 /* PWT */ |
                     0x2 /* RW */ | 0x1 /* P */;
    pdpt[slot] = (u64)(unsigned long)mmio_pd | 0x3;
    __asm__ volatile("mov %0, %%cr3" ::"r"(cr3) : "memory");
    return 0;
}

void probe_main(const struct vdr_probe_params *p)
{
    serial_port = 0x3f8;
    exit_port = 0xf4;
    if (p->magic != VDR_PROBE_MAGIC || p->version != VDR_PROBE_VERSION) {
        serial_init();
        error_line("bad parameter block (magic or version)");
        stop(EXIT_BAD_PARAMS);
    }
    serial_port = p->serial_port;
    exit_port = p->exit_port;
    serial_init();
    jl_begin("start");
    jl_u64("v", VDR_PROBE_VERSION);
    jl_end();

    static struct virtio_blk blk;
    const char *why = map_mmio(p->virtio_base);
    if (!why)
        why = virtio_blk_init(&blk, p->virtio_base, p->spin_limit);
    if (why) {
        error_line(why);
        stop(EXIT_NO_DEVICE);
    }
    struct probe_dev dev = {
        .sectors = blk.sectors,
        .read_only = blk.read_only,
        .max_io_sectors = blk.max_io_sectors,
        .read = virtio_blk_read,
        .write = virtio_blk_write,
        .ctx = &blk,
    };
    stop(probe_run(p, &dev));
}
