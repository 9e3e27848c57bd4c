#!/usr/bin/env bash
# Generates the seed corpus of one fuzz target. Seeds are generated, not committed.
#   qcow2            qemu-img/qemu-io: small v2, v3, compressed (deflate, zstd),
#                    extended-L2, snapshot, backing-file and zero-cluster images
#   vmdk_sparse      qemu-img/qemu-io: monolithicSparse (plain, compat6, hwversion, zeroed
#                    grains), streamOptimized, the -s001 extent of twoGbMaxExtentSparse
#   vmdk_cowd        the fixture builders (fixtures/examples/vmdk_seeds.rs): COWD extents
#   vmdk_sesparse    the fixture builders: seSparse extents
#   vmfs             sparse-image records of VMFS volumes (corpus samples, fixture builder)
#   partition        sfdisk-made GPT (also with the primary header zeroed) and MBR tables
#   vmdk_descriptor  text descriptors of every subformat (qemu-img and the fixture
#                    builders) and the descriptors embedded in qemu's sparse extents
#   virtio_blk       hand-made driver sessions (python3): initialisation, reads, writes,
#                    GET_ID, flush, indirect chains, damaged sectors, a raw register-level
#                    set-up over a ring laid out in the memory image
#   guest_reports    console transcripts: the probe's VDRPROBE lines, an appliance report
#                    document (wrapped by the target), the guest-kernel test consoles
# Images are written twice, prefixed with a mode byte (0 = salvage, 1 = strict), as the
# targets read them; descriptors are written as they are.
#
#   usage: fuzz/make-seeds.sh [TARGET [OUT_DIR]]   (default: qcow2, fuzz/corpus/TARGET)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=${1:-qcow2}
out=${2:-$here/corpus/$target}
need_qemu() {
    command -v qemu-img >/dev/null && command -v qemu-io >/dev/null ||
        { echo "make-seeds: qemu-img/qemu-io not found" >&2; exit 2; }
}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/vdr-seeds.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

# Writes every FILE as two seeds, one per mode byte.
both_modes() {
    local f
    for f in "$@"; do
        { printf '\0'; cat "$f"; } > "$out/salvage-$(basename "$f")"
        { printf '\1'; cat "$f"; } > "$out/strict-$(basename "$f")"
    done
}

# COWD and seSparse layers (with descriptors and flat bases) from the fixture builders.
fixture_seeds() {
    (cd "$here/.." && cargo run -q -p vdr-fixtures --example vmdk_seeds -- "$work/fx")
}

qcow2_seeds() {
    need_qemu
    io() { qemu-io -f qcow2 "$@" >/dev/null; }
    fill() { # image: a few patterns, a zero cluster, a discard
        io -c 'write -P 0x11 0 0x1200' -c 'write -P 0x22 0x7e00 0x400' \
           -c 'write -z 0x10000 0x1000' -c 'discard 0x0 0x200' "$1"
    }
    qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 v2-512.qcow2 256K
    fill v2-512.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=4096 v3-4k.qcow2 256K
    fill v3-4k.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=4096,refcount_bits=1 v3-refcount1.qcow2 128K
    fill v3-refcount1.qcow2
    qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16384 ext-l2.qcow2 256K
    fill ext-l2.qcow2
    qemu-img create -q -f raw src.raw 256K
    qemu-io -f raw -c 'write -P 0x41 0 0x8000' -c 'write -P 0x42 0x20000 0x1000' src.raw >/dev/null
    qemu-img convert -c -O qcow2 -o cluster_size=4096,compression_type=zlib src.raw deflate.qcow2
    qemu-img convert -c -O qcow2 -o cluster_size=4096,compression_type=zstd src.raw zstd.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=4096 snap.qcow2 128K
    fill snap.qcow2
    qemu-img snapshot -c s1 snap.qcow2
    io -c 'write -P 0x33 0x1000 0x1000' snap.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=4096 -b v3-4k.qcow2 -F qcow2 overlay.qcow2 256K
    io -c 'write -P 0x44 0x3000 0x800' overlay.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=4096,data_file=ext.data,data_file_raw=on datafile.qcow2 64K
    both_modes *.qcow2
}

# qemu's vmdk images, small: one or two 64 KiB grains written, a zeroed grain.
vmdk_images() {
    need_qemu
    io() { qemu-io -f vmdk "$@" >/dev/null; }
    fill() {
        io -c 'write -P 0x11 0 0x1200' -c 'write -P 0x22 0x2fc00 0x200' "$1"
    }
    mkdir -p vm && cd vm
    qemu-img create -q -f vmdk mono.vmdk 1M
    fill mono.vmdk
    qemu-img create -q -f vmdk -o compat6=on mono-compat6.vmdk 1M
    fill mono-compat6.vmdk
    qemu-img create -q -f vmdk -o hwversion=4,adapter_type=ide mono-hw4.vmdk 1M
    fill mono-hw4.vmdk
    qemu-img create -q -f vmdk -o zeroed_grain=on mono-zeroed.vmdk 1M
    fill mono-zeroed.vmdk
    io -c 'write -z 0x10000 0x10000' mono-zeroed.vmdk
    qemu-img create -q -f vmdk -b mono.vmdk -F vmdk child.vmdk 1M
    io -c 'write -P 0x33 0x8000 0x200' child.vmdk
    qemu-img create -q -f raw src.raw 1M
    qemu-io -f raw -c 'write -P 0x41 0 0x8000' -c 'write -P 0x42 0x90000 0x1000' src.raw >/dev/null
    qemu-img convert -O vmdk -o subformat=streamOptimized src.raw stream.vmdk
    qemu-img create -q -f vmdk -o subformat=streamOptimized stream-empty.vmdk 1M
    qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse split.vmdk 1M
    fill split.vmdk
    qemu-img create -q -f vmdk -o subformat=monolithicFlat flat.vmdk 64K
    qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentFlat split-flat.vmdk 64K
    cd ..
}

vmdk_sparse_seeds() {
    vmdk_images
    both_modes vm/mono*.vmdk vm/child.vmdk vm/stream*.vmdk vm/split-s001.vmdk
}

# VMFS volumes as sparse-image records (fuzz/vmfs-seed.py): the real ESXi-made samples
# from ../shared/corpus/vmfs when present, and the fixture builder's synthetic volumes.
vmfs_seeds() {
    local corpus=$here/../../shared/corpus/vmfs
    mkdir -p vmfs
    for gz in "$corpus"/*.gz; do
        [ -f "$gz" ] || continue
        gunzip -c "$gz" | cp --sparse=always /dev/stdin vmfs/img
        for mode in 0 1; do
            "$here/vmfs-seed.py" vmfs/img $mode "$out/$(basename "$gz" .gz)-$mode"
        done
        rm -f vmfs/img
    done
    if (cd "$here/.." && cargo run -q --release -p vdr-fixtures --example vmfs_seeds -- "$work/vmfs") 2>/dev/null; then
        # Selector bit 1 adds recovery's deleted/orphaned search (the seeds hold a
        # deleted file).
        for img in vmfs/*.img; do
            for mode in 0 1 2 3; do
                "$here/vmfs-seed.py" "$img" $mode "$out/$(basename "$img" .img)-$mode"
            done
        done
    fi
    ls "$out" | grep -q . || { echo "make-seeds: no VMFS images found" >&2; exit 2; }
}

vmdk_cowd_seeds() {
    fixture_seeds
    both_modes fx/*-delta.vmdk
}

vmdk_sesparse_seeds() {
    fixture_seeds
    both_modes fx/*-sesparse.vmdk
}

vmdk_descriptor_seeds() {
    vmdk_images
    fixture_seeds
    local f
    for f in vm/flat.vmdk vm/split.vmdk vm/split-flat.vmdk fx/*.vmdk; do
        [ "$(head -c 4 "$f")" = "# Di" ] && cp "$f" "$out/desc-$(basename "$f")"
    done
    # The embedded descriptor: qemu writes it from sector 1 (header descriptorOffset).
    for f in vm/mono.vmdk vm/child.vmdk vm/stream.vmdk; do
        dd if="$f" bs=512 skip=1 count=20 status=none | tr -d '\0' > "$out/embedded-$(basename "$f")"
    done
    # A Latin-1 file name and CRLF line ends.
    sed 's/"flat-flat.vmdk"/"fl\xe4t.vmdk"/; s/$/\r/' vm/flat.vmdk > "$out/desc-latin1-crlf.vmdk"
}

# Small disks with sfdisk-made tables: GPT (and the same with its primary header zeroed,
# so the backup path runs), MBR with an extended partition and two logical ones.
partition_seeds() {
    command -v sfdisk >/dev/null || { echo "make-seeds: sfdisk (fdisk) not found" >&2; exit 2; }
    truncate -s 100K gpt.raw
    printf 'label: gpt\nfirst-lba: 34\nstart=40, size=60, type=L\nstart=100, size=50, type=S\n' |
        sfdisk --quiet gpt.raw
    cp gpt.raw gpt-backup.raw
    dd if=/dev/zero of=gpt-backup.raw bs=512 seek=1 count=1 conv=notrunc status=none
    truncate -s 64K mbr.raw
    printf 'label: dos\nstart=1, size=20, type=83\nstart=21, size=100, type=5\nstart=23, size=30, type=83\nstart=55, size=20, type=82\n' |
        sfdisk --quiet mbr.raw
    cp gpt.raw gpt-backup.raw mbr.raw "$out/"
}

# Driver sessions in the input layout of fuzz_targets/virtio_blk.rs (see its module doc):
# flags, unreadable-range byte, op-stream length, ops, guest memory image.
virtio_blk_seeds() {
    command -v python3 >/dev/null || { echo "make-seeds: python3 not found" >&2; exit 2; }
    python3 - "$out" <<'PY'
import struct, sys
out = sys.argv[1]
NONE = 0xff                                  # no unreadable range
def init(size_log2=4, features=0xffffffff):  # op 5: the macro's §3.1.1 initialisation
    return bytes([5, size_log2]) + struct.pack('<I', features)
def req(kind, sector=0, sectors=1, head=0, slot=0, indirect=False, odd=0):
    # op 7: a request; kind 0 IN, 1 OUT, 2 FLUSH, 3 GET_ID, 6 DISCARD, 7 unknown
    a = kind | (8 if indirect else 0)
    b = sector | (odd << 4)
    c = sectors | (8 if odd else 0)
    return bytes([7, a, b, c, head | (slot << 4)])
def reg(offset, value):                      # op 0: a 32-bit register write
    return bytes([0, offset // 4]) + struct.pack('<I', value)
def notify(queue=0):                         # op 3
    return bytes([3, 0 if queue == 0 else (queue << 1) | 1])
def read(offset, width_log2=2):              # op 2
    return bytes([2 | (width_log2 << 3)]) + struct.pack('<H', offset)
def seed(name, flags, bad, ops, image=b''):
    with open(f'{out}/{name}', 'wb') as f:
        f.write(bytes([flags, bad]) + struct.pack('<H', len(ops)) + ops + image)

probe = b''.join(read(o) for o in (0, 4, 8, 0xc, 0x10, 0x34, 0x70, 0x100, 0x108))
seed('ro-read', 0, NONE, probe + init() + req(0, 0, 1) + req(0, 7, 1, head=3, slot=1)
     + req(3, head=6, slot=2) + req(2, head=8) + req(1, 2, 1, head=10, slot=3))
seed('ro-damaged', 0, 3, init() + req(0, 2, 3) + req(0, 0, 2, head=3, slot=1)
     + req(0, 3, 1, head=6, slot=2, indirect=True))
seed('overlay-write-read', 1 | 6, NONE, init(8) + req(1, 2, 2) + req(0, 1, 4, head=3, slot=1)
     + req(2, head=6) + req(1, 7, 1, head=9, slot=2) + req(0, 7, 1, head=12, slot=3))
seed('overlay-small-cap', 1 | 2, 0x0a, init(3) + req(1, 0, 4) + req(1, 4, 4, head=3, slot=1)
     + req(1, 2, 1, head=6, slot=2) + req(0, 0, 7, head=1, slot=3))
seed('indirect', 0, NONE, init(2) + req(0, 1, 2, indirect=True) + req(3, head=1, slot=1,
     indirect=True) + req(6, head=2, slot=2) + req(7, head=3, slot=3))
seed('odd-lengths', 1 | 6 | 8, NONE, init(5) + req(0, 8, 1) + req(0, 0, 1, odd=5, head=4)
     + req(1, 8, 1, head=8, slot=1) + req(0, 0x80 >> 0, 1, head=12, slot=2))
seed('hole', 0x10 | 1 | 6, NONE, init(4) + req(0, 0, 1, slot=10) + req(0, 0, 1, head=3,
     slot=11) + req(1, 1, 1, head=6, slot=12))

# A driver that sets up the queue register by register (Linux virtio_mmio.c's order)
# over a ring laid out in the memory image: 4 descriptors at 0, avail ring at 0x40,
# used ring at 0x80; one IN request of 1024 bytes from sector 1.
image = bytearray(0x1000)
def desc(i, addr, length, flags, nxt):
    struct.pack_into('<QIHH', image, 16 * i, addr, length, flags, nxt)
desc(0, 0x800, 16, 1, 1)                     # header, NEXT
desc(1, 0xa00, 1024, 3, 2)                   # data, NEXT | WRITE
desc(2, 0x810, 1, 2, 0)                      # status, WRITE
struct.pack_into('<HHH', image, 0x40, 0, 1, 0)   # avail: flags, idx 1, ring[0] = 0
struct.pack_into('<IIQ', image, 0x800, 0, 0, 1)  # IN, sector 1
ops = (reg(0x70, 0) + reg(0x70, 1) + reg(0x70, 3) + reg(0x24, 1) + reg(0x20, 1)
       + reg(0x24, 0) + reg(0x20, 0x10000200) + reg(0x70, 0xb) + read(0x70)
       + reg(0x30, 0) + read(0x34) + reg(0x38, 4) + reg(0x80, 0) + reg(0x84, 0)
       + reg(0x90, 0x40) + reg(0x94, 0) + reg(0xa0, 0x80) + reg(0xa4, 0) + reg(0x44, 1)
       + reg(0x70, 0xf) + notify() + read(0x60) + reg(0x64, 1))
seed('raw-registers', 0, NONE, ops, bytes(image))
seed('raw-registers-damaged', 0, 0x01, ops, bytes(image))
PY
}

# Console text for the guest-output parsers: mode byte 0 = text only, 1 = text, NUL, the
# appliance's JSON document (the target base64-wraps it as the guest does).
guest_reports_seeds() {
    command -v python3 >/dev/null || { echo "make-seeds: python3 not found" >&2; exit 2; }
    local f
    for f in "$here"/../verify-vm/src/guest_kernel/testdata/*.console; do
        [ -f "$f" ] && { printf '\0'; cat "$f"; } > "$out/kernel-$(basename "$f" .console)"
    done
    python3 - "$out" <<'PY'
import base64, json, sys
out = sys.argv[1]
b64 = lambda t: base64.b64encode(t.encode()).decode()
def seed(name, text, document=None):
    with open(f'{out}/{name}', 'wb') as f:
        if document is None:
            f.write(b'\0' + text.encode())
        else:
            f.write(b'\1' + text.encode() + b'\0' + json.dumps(document).encode())
probe = '\n'.join('VDRPROBE ' + json.dumps(fact) for fact in [
    {'t': 'start', 'v': 1}, {'t': 'disk', 'sectors': 8192, 'ro': True},
    {'t': 'mbr', 'signature': True, 'boot_code': False},
    {'t': 'table', 'scheme': 'gpt', 'crc_ok': True, 'primary_ok': True},
    {'t': 'part', 'i': 1, 'start': 2048, 'sectors': 2048,
     'type': '0FC63DAF-8483-4772-8E79-3D69D8477DE4', 'name': 'root'},
    {'t': 'part', 'i': 2, 'start': 4096, 'sectors': 2048,
     'type': '0FC63DAF-8483-4772-8E79-3D69D8477DE4', 'name': 'root'},
    {'t': 'fs', 'part': 1, 'kind': 'ext4', 'label': 'root', 'uuid': 'abc',
     'vbr_signature': False, 'boot_code': False},
    {'t': 'sample', 'lba': 0, 'n': 8, 'crc': '12345678'},
    {'t': 'sample', 'lba': 2048, 'n': 16, 'crc': 'ioerr'},
    {'t': 'overlay', 'lba': 100, 'before_crc': '00000000', 'write': 'ok', 'matched': True},
    {'t': 'note', 'what': 'a damaged structure', 'lba': 7}, {'t': 'done'}])
seed('probe', 'probe guest v1\n' + probe + '\n')
seed('probe-error', 'VDRPROBE {"t":"start","v":1}\nVDRPROBE {"t":"error","what":"no disk"}\n')
os_release = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
fstab = ('UUID=0b5f2a3c-58c5-4c1b-9bd5-1d2c3e4f5a6b / ext4 errors=remount-ro 0 1\n'
         'PARTUUID=11111111-2222-3333-4444-555555555555 /boot vfat defaults 0 2\n'
         'LABEL=root /srv ext4 defaults 0 0\n/dev/sdb1 /data xfs defaults 0 0\n# comment\n')
document = {'version': 1, 'stages': [{'stage': 'modules', 'at': 1.5},
                                     {'stage': 'checked vda1', 'at': 2.25}],
            'devices': 'vda vda1 vda2', 'insmod_failed': b64('btrfs: -2\n'),
            'partitions': [
                {'device': 'vda1', 'fs': 'ext4', 'present': True,
                 'fsck': {'ran': True, 'exit': 0, 'out': b64('clean\n')}, 'mounted': True,
                 'mount_error': '', 'os_release': b64(os_release), 'fstab': b64(fstab)},
                {'device': 'vda2', 'fs': 'vfat', 'present': True,
                 'fsck': {'ran': False}, 'mounted': False,
                 'mount_error': b64('mount: wrong fs type'), 'os_release': None,
                 'fstab': None}],
            'dmesg': b64('[    0.000000] Linux version 6.1.0\n')}
seed('appliance', '[    1.0] virtio_blk virtio0: [vda] 8192 512-byte logical blocks\n', document)
seed('os-release', os_release)
seed('fstab', fstab)
seed('grub', 'menuentry "Debian" {\n\tlinux /boot/vmlinuz-6.1.0 root=UUID=abc ro quiet -- single\n}\n')
PY
}

case "$target" in
    qcow2) qcow2_seeds ;;
    vmdk_sparse) vmdk_sparse_seeds ;;
    vmdk_cowd) vmdk_cowd_seeds ;;
    vmdk_sesparse) vmdk_sesparse_seeds ;;
    vmdk_descriptor) vmdk_descriptor_seeds ;;
    vmfs) vmfs_seeds ;;
    partition) partition_seeds ;;
    virtio_blk) virtio_blk_seeds ;;
    guest_reports) guest_reports_seeds ;;
    *) echo "make-seeds: unknown target $target" >&2; exit 2 ;;
esac
echo "make-seeds: $(ls "$out" | wc -l) seeds in $out ($(du -sh "$out" | cut -f1))"
