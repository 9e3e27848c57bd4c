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
        for img in vmfs/*.img; do
            for mode in 0 1; do
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

case "$target" in
    qcow2) qcow2_seeds ;;
    vmdk_sparse) vmdk_sparse_seeds ;;
    vmdk_cowd) vmdk_cowd_seeds ;;
    vmdk_sesparse) vmdk_sesparse_seeds ;;
    vmdk_descriptor) vmdk_descriptor_seeds ;;
    vmfs) vmfs_seeds ;;
    partition) partition_seeds ;;
    *) echo "make-seeds: unknown target $target" >&2; exit 2 ;;
esac
echo "make-seeds: $(ls "$out" | wc -l) seeds in $out ($(du -sh "$out" | cut -f1))"
