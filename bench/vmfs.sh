#!/usr/bin/env bash
# Benchmark of vdr on VMFS datastores, against dd in the same run.
#
# Volumes (cached under bench/out/vmfs/, gitignored), built by the fixture builder
# (fixtures/examples/vmfs_bench.rs): VMFS5 and VMFS6 images holding one fully written
# thick file of VDR_BENCH_MIB (default 2048) MiB, and VMFS5 and VMFS6 images with a
# directory of 10,000 files.
#
# Operations:
#   extract5 / extract6  `vdr extract IMG /vm/disk-flat.vmdk OUT` vs `dd` reading the same
#                        number of bytes of the image sequentially (bs=4M) from where the
#                        file's data starts; target: vdr's throughput >= 80% of dd's
#   ls5 / ls6            `vdr ls -l IMG /many` (10,000 entries); target: < 1 s
#   lost5 / lost6        `vdr ls --deleted IMG` on the 10,000-file volume: every FD slot
#                        read and the live tree's blocks claimed (no target; reported)
#   gone5 / gone6        the same on a volume where 5,000 of the 10,000 files were deleted
# Runs alternate (vdr, dd, vdr, ...); medians of VDR_BENCH_RUNS (3). As root the page
# cache is dropped before every extract/dd run (cold cache); ls runs warm.
#
# Environment: VDR_BENCH_MIB, VDR_BENCH_RUNS, VDR_BIN (a vdr binary instead of building).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/bench/out/vmfs
mib=${VDR_BENCH_MIB:-2048}
runs=${VDR_BENCH_RUNS:-3}
mkdir -p "$out"

if [ -n "${VDR_BIN:-}" ]; then
    vdr=$VDR_BIN
else
    (cd "$root" && cargo build -q --release)
    vdr=$root/target/release/vdr
fi
if [ ! -f "$out/thick5.offset" ] || [ ! -f "$out/gone6.img" ] || [ "$(cat "$out/mib" 2>/dev/null)" != "$mib" ]; then
    echo "bench: building the volumes ($mib MiB thick file)"
    (cd "$root" && cargo run -q --release -p vdr-fixtures --example vmfs_bench -- "$out" "$mib")
    echo "$mib" >"$out/mib"
fi

cold=no
drop() { [ "$cold" = yes ] && sync && echo 3 >/proc/sys/vm/drop_caches || true; }
[ "$(id -u)" = 0 ] && cold=yes

# wall seconds of one run of the command
timed() {
    local s e
    s=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    e=$(date +%s.%N)
    echo "$e - $s" | bc -l
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-10s %10s %10s %10s %10s  %s\n' op vdr_s peer_s vdr_MB/s peer_MB/s verdict
for v in 5 6; do
    img=$out/thick$v.img
    # Where the file's data starts in the image (written by the builder): dd reads from
    # there, rounded down to its 4 MiB blocks.
    start=$(cat "$out/thick$v.offset")
    bytes=$((mib << 20))
    vt=(); dt=()
    for _ in $(seq "$runs"); do
        rm -f "$out/extracted"
        drop; vt+=("$(timed "$vdr" extract "$img" /vm/disk-flat.vmdk "$out/extracted")")
        drop; dt+=("$(timed dd if="$img" of=/dev/null bs=4M skip=$((start / 4194304)) count=$((bytes / 4194304)))")
    done
    rm -f "$out/extracted"
    vm=$(printf '%s\n' "${vt[@]}" | median); dm=$(printf '%s\n' "${dt[@]}" | median)
    vr=$(echo "$bytes / $vm / 1000000" | bc -l); dr=$(echo "$bytes / $dm / 1000000" | bc -l)
    ok=$(echo "$vr >= 0.8 * $dr" | bc -l)
    printf '%-10s %10.2f %10.2f %10.0f %10.0f  %s (%.2f of dd)\n' "extract$v" "$vm" "$dm" "$vr" "$dr" \
        "$([ "$ok" = 1 ] && echo MET || echo MISSED)" "$(echo "$vr / $dr" | bc -l)"
done
for v in 5 6; do
    img=$out/many$v.img
    lt=()
    "$vdr" ls -l "$img" /many >/dev/null # warm up
    for _ in $(seq "$runs"); do lt+=("$(timed "$vdr" ls -l "$img" /many)"); done
    lm=$(printf '%s\n' "${lt[@]}" | median)
    n=$("$vdr" ls "$img" /many | wc -l)
    printf '%-10s %10.3f %10s %10s %10s  %s (%s entries)\n' "ls$v" "$lm" - - - \
        "$([ "$(echo "$lm < 1" | bc -l)" = 1 ] && echo MET || echo MISSED)" "$n"
done
for op in lost gone; do
    for v in 5 6; do
        img=$out/many$v.img
        [ "$op" = gone ] && img=$out/gone$v.img
        lt=()
        for _ in $(seq "$runs"); do lt+=("$(timed "$vdr" ls --deleted "$img")"); done
        lm=$(printf '%s\n' "${lt[@]}" | median)
        printf '%-10s %10.3f %10s %10s %10s  %s\n' "$op$v" "$lm" - - - \
            "$("$vdr" ls --deleted "$img" 2>&1 >/dev/null | tail -1)"
    done
done
echo "cache: $([ "$cold" = yes ] && echo 'cold (dropped before each extract/dd run)' || echo 'warm (not root)')"
