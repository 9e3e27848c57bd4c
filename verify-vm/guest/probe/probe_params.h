/*
 * The probe guest's parameter block: the host (src/probe/params.rs) writes it into guest
 * memory at layout::CMDLINE_START and passes its address in rdi. Little-endian, no
 * implicit padding; the offsets below are asserted here and mirrored by the Rust writer
 * (a unit test compiles this header and compares).
 */
#ifndef VDR_PROBE_PARAMS_H
#define VDR_PROBE_PARAMS_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define VDR_PROBE_MAGIC 0x50524456u /* "VDRP" */
#define VDR_PROBE_VERSION 1u
#define VDR_PROBE_MAX_SAMPLES 64u

/* flags */
#define VDR_PROBE_OVERLAY_TEST 1u

struct vdr_probe_sample {
    u64 lba;
    u32 sectors;
    u32 reserved;
};

struct vdr_probe_params {
    u32 magic;              /* 0 */
    u32 version;            /* 4 */
    u64 virtio_base;        /* 8: the virtio-mmio device's registers */
    u16 serial_port;        /* 16: a 16550's base port */
    u16 exit_port;          /* 18: a status byte written here stops the VM */
    u32 flags;              /* 20 */
    u64 overlay_lba;        /* 24: the sector the overlay test writes */
    u32 sample_count;       /* 32: entries used in samples[] */
    u32 max_sample_sectors; /* 36: longest sample read */
    u32 max_partitions;     /* 40: partitions analysed at most */
    u32 reserved;           /* 44 */
    u64 spin_limit;         /* 48: polls of the used ring per request before giving up */
    struct vdr_probe_sample samples[VDR_PROBE_MAX_SAMPLES]; /* 56 */
};

#define VDR_PROBE_PARAMS_SIZE (56u + 16u * VDR_PROBE_MAX_SAMPLES)

_Static_assert(sizeof(struct vdr_probe_sample) == 16, "sample size");
_Static_assert(__builtin_offsetof(struct vdr_probe_params, spin_limit) == 48, "spin_limit");
_Static_assert(__builtin_offsetof(struct vdr_probe_params, samples) == 56, "samples");
_Static_assert(sizeof(struct vdr_probe_params) == VDR_PROBE_PARAMS_SIZE, "params size");

#endif
