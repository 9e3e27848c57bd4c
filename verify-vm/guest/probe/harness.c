/*
 * Host test harness for the probe's analysis (not part of the guest): the same analyze.c,
 * fs.c and out.c over an image file read with pread, printing the same VDRPROBE lines.
 * Usage: harness IMAGE [--sample LBA:N]... [--overlay LBA] [--ro]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "probe.h"

static int fd;

void plat_write(const char *s, u32 n) { fwrite(s, 1, n, stdout); }

static int file_read(void *ctx, u64 lba, u32 count, void *buf)
{
    (void)ctx;
    ssize_t want = (ssize_t)count * 512;
    return pread(fd, buf, want, (off_t)(lba * 512)) == want ? IO_OK : IO_ERR;
}

static int file_write(void *ctx, u64 lba, u32 count, const void *buf)
{
    (void)ctx;
    ssize_t want = (ssize_t)count * 512;
    return pwrite(fd, buf, want, (off_t)(lba * 512)) == want ? IO_OK : IO_ERR;
}

int main(int argc, char **argv)
{
    static struct vdr_probe_params p;
    int ro = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: %s IMAGE [--sample LBA:N]... [--overlay LBA] [--ro]\n", argv[0]);
        return 64;
    }
    p.magic = VDR_PROBE_MAGIC;
    p.version = VDR_PROBE_VERSION;
    p.max_sample_sectors = 2048;
    p.max_partitions = 128;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--sample") && i + 1 < argc && p.sample_count < VDR_PROBE_MAX_SAMPLES) {
            char *colon;
            p.samples[p.sample_count].lba = strtoull(argv[++i], &colon, 0);
            p.samples[p.sample_count].sectors = *colon == ':' ? (u32)strtoul(colon + 1, 0, 0) : 1;
            p.sample_count++;
        } else if (!strcmp(argv[i], "--overlay") && i + 1 < argc) {
            p.flags |= VDR_PROBE_OVERLAY_TEST;
            p.overlay_lba = strtoull(argv[++i], 0, 0);
        } else if (!strcmp(argv[i], "--ro")) {
            ro = 1;
        } else {
            fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 64;
        }
    }
    fd = open(argv[1], ro ? O_RDONLY : O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        perror(argv[1]);
        return 66;
    }
    struct probe_dev dev = {
        .sectors = (u64)st.st_size / 512,
        .read_only = ro,
        .max_io_sectors = 128,
        .read = file_read,
        .write = file_write,
        .ctx = 0,
    };
    int status = probe_run(&p, &dev);
    fflush(stdout);
    return status;
}
