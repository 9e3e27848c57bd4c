/*
 * The probe guest's platform: port I/O, the 16550 console (polled THRE), the exit port,
 * and the switch to user mode.
 *
 * Why user mode: under kvm_pvm (this machine's software-only KVM) guest code at CPL 0 is
 * emulated instruction by instruction (~10 us per loop iteration measured), while CPL 3
 * code runs natively, ~1000x faster. probe_main() therefore only checks the parameter
 * block, sets the U/S bit on the page-table entries that map the probe, its parameter
 * block and the virtio-mmio registers, loads a GDT with DPL 3 segments and irets to
 * user_main() with IOPL 3 (port I/O stays allowed) and interrupts off. On hardware KVM the
 * switch costs nothing measurable. There is no IDT: a fault ends in a triple fault, which
 * the VMM reports as a reset.
 */
#include "probe.h"
#include "virtio_blk.h"

/* Initialised, so in .data: set before .bss is zeroed. */
static u16 serial_port = 0x3f8;
static u16 exit_port = 0xf4;

extern char _start[], __bss_start[], __bss_end[], __user_stack_top[], __image_end[];

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
        __asm__ volatile("pause");
}

static void error_line(const char *what)
{
    jl_begin("error");
    jl_str("what", what);
    jl_end();
}

#define PTE_PRESENT 0x1ull
#define PTE_WRITABLE 0x2ull
#define PTE_USER 0x4ull
#define PTE_PWT 0x8ull
#define PTE_PCD 0x10ull
#define PTE_HUGE 0x80ull
#define PTE_ADDR 0x000ffffffffff000ull
#define GIB (1ull << 30)

/* A page directory for an MMIO base above what the VMM maps; outside .bss (see probe.ld)
 * so zeroing .bss later does not unmap the device. */
static u64 mmio_pd[512] __attribute__((aligned(4096), section(".probe_pd")));

static u64 *root_table(void)
{
    u64 cr3;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    return (u64 *)(unsigned long)(cr3 & PTE_ADDR);
}

/* The VMM identity-maps at least the first 1 GiB with 2 MiB pages (Firecracker's boot
 * tables); an MMIO base in a GiB it left unmapped gets an uncached directory here. */
static const char *map_mmio(u64 base)
{
    if (base >= 512 * GIB)
        return "the virtio-mmio base is above 512 GiB";
    u64 *pml4 = root_table();
    if (!(pml4[0] & PTE_PRESENT))
        return "no PML4 entry for the low 512 GiB";
    u64 *pdpt = (u64 *)(unsigned long)(pml4[0] & PTE_ADDR);
    u64 slot = base / GIB;
    if (pdpt[slot] & PTE_PRESENT)
        return 0;
    for (u64 i = 0; i < 512; i++)
        mmio_pd[i] = (slot * GIB + (i << 21)) | PTE_HUGE | PTE_PCD | PTE_PWT | PTE_WRITABLE | PTE_PRESENT;
    pdpt[slot] = (u64)(unsigned long)mmio_pd | PTE_WRITABLE | PTE_PRESENT;
    return 0;
}

/* Sets U/S on every paging level that maps `vaddr` (2 MiB or 4 KiB pages). */
static const char *allow_user(u64 vaddr)
{
    u64 *table = root_table();
    for (int level = 3; level >= 0; level--) {
        u64 *entry = &table[(vaddr >> (12 + 9 * level)) & 511];
        if (!(*entry & PTE_PRESENT))
            return "an address the probe needs is not mapped";
        *entry |= PTE_USER;
        if (level == 0 || (level <= 2 && (*entry & PTE_HUGE)))
            return 0;
        table = (u64 *)(unsigned long)(*entry & PTE_ADDR);
    }
    return 0;
}

/* null, ring-0 code and data (the VMM's selectors 0x08/0x10), ring-3 data 0x18, code 0x20. */
static u64 gdt[5] __attribute__((aligned(16))) = {
    0,
    0x00af9a000000ffffull,
    0x00cf92000000ffffull,
    0x00cff2000000ffffull,
    0x00affa000000ffffull,
};

static void user_main(const struct vdr_probe_params *p);

static __attribute__((noreturn)) void enter_user(const struct vdr_probe_params *p)
{
    struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } gdtr = {sizeof(gdt) - 1, (u64)(unsigned long)gdt};
    /* As if called: the return-address slot keeps the ABI's stack alignment. */
    u64 stack = (u64)(unsigned long)__user_stack_top - 8;
    u64 cr3;
    __asm__ volatile("mov %%cr3, %0\n\tmov %0, %%cr3" : "=r"(cr3)::"memory"); /* flush the TLB */
    __asm__ volatile("lgdt %0" ::"m"(gdtr));
    __asm__ volatile("mov %2, %%rdi\n\t"
                     "pushq $0x1b\n\t"   /* SS: ring-3 data */
                     "pushq %0\n\t"      /* RSP */
                     "pushq $0x3002\n\t" /* RFLAGS: IOPL 3, IF 0 */
                     "pushq $0x23\n\t"   /* CS: ring-3 code */
                     "pushq %1\n\t"      /* RIP */
                     "iretq" ::"r"(stack),
                     "r"((u64)(unsigned long)user_main), "r"((u64)(unsigned long)p)
                     : "rdi", "memory");
    __builtin_unreachable();
}

/* Ring 0, called by entry.S: .bss is not zeroed yet, so only .data and locals are used. */
void probe_main(const struct vdr_probe_params *p)
{
    if (p->magic != VDR_PROBE_MAGIC || p->version != VDR_PROBE_VERSION) {
        serial_init();
        error_line("bad parameter block (magic or version)");
        stop(EXIT_BAD_PARAMS);
    }
    serial_port = p->serial_port;
    exit_port = p->exit_port;
    serial_init();
    outb(0x21, 0xff); /* mask both 8259s: there is no IDT to take an interrupt */
    outb(0xa1, 0xff);
    const char *why = map_mmio(p->virtio_base);
    u64 first = (u64)(unsigned long)_start & ~0x1fffffull;
    for (u64 a = first; !why && a < (u64)(unsigned long)__image_end; a += 0x200000)
        why = allow_user(a);
    if (!why)
        why = allow_user((u64)(unsigned long)p);
    if (!why)
        why = allow_user((u64)(unsigned long)p + sizeof(*p) - 1);
    if (!why)
        why = allow_user(p->virtio_base);
    if (why) {
        error_line(why);
        stop(EXIT_NO_DEVICE);
    }
    enter_user(p);
}

static void user_main(const struct vdr_probe_params *p)
{
    unsigned long bss_len = (unsigned long)(__bss_end - __bss_start);
    void *bss = __bss_start;
    __asm__ volatile("rep stosb" : "+D"(bss), "+c"(bss_len) : "a"(0) : "memory");

    jl_begin("start");
    jl_u64("v", VDR_PROBE_VERSION);
    jl_end();

    static struct virtio_blk blk;
    const char *why = virtio_blk_init(&blk, p->virtio_base, p->spin_limit);
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
