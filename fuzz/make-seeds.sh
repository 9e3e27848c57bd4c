#!/usr/bin/env bash
# Generates the seed corpus of the qcow2 fuzz target with qemu-img/qemu-io: small v2, v3,
# compressed (deflate, zstd), extended-L2, snapshot, backing-file and zero-cluster images.
# Each image is written twice, prefixed with a mode byte (0 = salvage, 1 = strict), as the
# target reads it. Seeds are generated, not committed.
#
#   usage: fuzz/make-seeds.sh [OUT_DIR]     (default: fuzz/corpus/qcow2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/corpus/qcow2}
command -v qemu-img >/dev/null || { echo "make-seeds: qemu-img not found" >&2; exit 2; }
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/vdr-seeds.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

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

for f in *.qcow2; do
    { printf '\0'; cat "$f"; } > "$out/salvage-$f"
    { printf '\1'; cat "$f"; } > "$out/strict-$f"
done
echo "make-seeds: $(ls "$out" | wc -l) seeds in $out ($(du -sh "$out" | cut -f1))"
