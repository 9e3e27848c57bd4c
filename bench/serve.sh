#!/usr/bin/env bash
# Benchmark of `vdr serve --nbd`: `qemu-img convert -O raw nbd://...` reading from vdr serve,
# against `qemu-img convert -O raw FILE` reading the same qcow2 directly, in the same run.
#
# Image: the qcow2 bench/convert.sh caches under bench/out/ (VDR_BENCH_SIZE virtual bytes,
# default 4G, about half of it data; bench/gen-disk.py), generated here the same way when
# missing. Target: through NBD at least 0.8x the direct speed (time ratio <= 1.25).
# Runs alternate (nbd, direct, nbd, ...); the table shows median wall seconds. As root
# the page cache is dropped before every run (cold cache: the server reads the disk too);
# otherwise the figures are warm-cache and say so. Only the qemu-img convert is timed;
# each run gets a fresh `vdr serve --once` on an ephemeral port.
#
# Two server settings are timed: the default (block status reports every hole map()
# reports) and --min-hole 1M (holes under 1 MiB between data reported as data: fewer
# round trips, reads still send holes as holes).
# For reference, the same copy from qemu-nbd serving the same file over TCP is timed too
# (when qemu-nbd is installed): it shows what the NBD round trips themselves cost here.
#
# Environment: VDR_BENCH_SIZE (4G), VDR_BENCH_RUNS (3), VDR_BENCH_OUT (bench/out),
# VDR_BIN (a vdr binary to measure instead of building target/release/vdr).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${VDR_BENCH_OUT:-$root/bench/out}
size=${VDR_BENCH_SIZE:-4G}
runs=${VDR_BENCH_RUNS:-3}

for tool in qemu-img python3 numfmt; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found" >&2; exit 2; }
done
if [ -n "${VDR_BIN:-}" ]; then
    vdr=$VDR_BIN
else
    (cd "$root" && cargo build --release --quiet)
    vdr=${CARGO_TARGET_DIR:-$root/target}/release/vdr
fi
mkdir -p "$out/tmp"

img=$out/disk-$size.qcow2
if [ ! -f "$img" ]; then
    echo "bench: generating $img ($size virtual, about half data)"
    python3 "$root/bench/gen-disk.py" "$out/disk-$size.raw" "$(numfmt --from=iec "$size")"
    qemu-img convert -f raw -O qcow2 "$out/disk-$size.raw" "$img.part"
    rm -f "$out/disk-$size.raw"
    mv "$img.part" "$img"
fi

if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/drop_caches ]; then
    cache=cold
    drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
else
    cache=warm
    drop_caches() { :; }
fi

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

server_pid=
log=$out/tmp/serve.log
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap 'stop_server; [ -z "${qemu_nbd_pid:-}" ] || kill "$qemu_nbd_pid" 2>/dev/null || true' EXIT

# start_server [ARGS]: a fresh `vdr serve --once [ARGS]` on an ephemeral port; sets $uri
start_server() {
    : > "$log"
    "$vdr" serve "$img" --nbd 127.0.0.1:0 --once "$@" 2>"$log" &
    server_pid=$!
    uri=
    for _ in $(seq 100); do
        uri=$(sed -n 's/^serving .* as //p' "$log")
        [ -n "$uri" ] && return
        sleep 0.05
    done
    echo "bench: vdr serve did not start:" >&2
    cat "$log" >&2
    exit 1
}

# time_once RESULT_FILE CMD...: one run; appends its wall seconds
time_once() {
    local result=$1
    shift
    local start end
    start=$(date +%s.%N)
    "$@"
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f\n", b - a }' >> "$result"
}

# start_qemu_nbd: qemu-nbd serving the image read-only on a free port; sets $quri
qemu_nbd_pid=
start_qemu_nbd() {
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    qemu-nbd -r -t -f qcow2 -b 127.0.0.1 -p "$port" -x disk "$img" &
    qemu_nbd_pid=$!
    quri=nbd://127.0.0.1:$port/disk
    for _ in $(seq 100); do
        qemu-img info "$quri" >/dev/null 2>&1 && return
        sleep 0.05
    done
    echo "bench: qemu-nbd did not start" >&2
    exit 1
}
have_qemu_nbd=$(command -v qemu-nbd >/dev/null && echo yes || echo no)

o=$out/tmp/serve-out.raw
rn=$(mktemp); rm1=$(mktemp); rd=$(mktemp); rq=$(mktemp)
echo "bench: qemu-img convert from vdr serve vs from the file ($runs runs each, $cache cache)"
for _ in $(seq "$runs"); do
    rm -f "$o"
    drop_caches
    start_server
    time_once "$rn" qemu-img convert -f raw -O raw "$uri" "$o"
    stop_server
    rm -f "$o"
    drop_caches
    start_server --min-hole 1048576
    time_once "$rm1" qemu-img convert -f raw -O raw "$uri" "$o"
    stop_server
    rm -f "$o"
    drop_caches
    time_once "$rd" qemu-img convert -O raw "$img" "$o"
    if [ "$have_qemu_nbd" = yes ]; then
        rm -f "$o"
        start_qemu_nbd # (its probe connection ends before the cache is dropped)
        drop_caches
        time_once "$rq" qemu-img convert -f raw -O raw "$quri" "$o"
        kill "$qemu_nbd_pid" 2>/dev/null || true
        wait "$qemu_nbd_pid" 2>/dev/null || true
    fi
done
# the NBD outputs must hold the image's content
for args in "" "--min-hole 1048576"; do
    rm -f "$o"
    # shellcheck disable=SC2086 # the empty setting must vanish
    start_server $args
    qemu-img convert -f raw -O raw "$uri" "$o"
    stop_server
    qemu-img compare -q -f qcow2 -F raw "$img" "$o" || { echo "bench: NBD output differs ($args)" >&2; exit 1; }
done
rm -f "$o"

n=$(median < "$rn")
m=$(median < "$rm1")
d=$(median < "$rd")
q=$( [ -s "$rq" ] && median < "$rq" || echo -)
rm -f "$rn" "$rm1" "$rd" "$rq"
echo
echo "qemu-img $(qemu-img --version | head -n 1 | awk '{ print $3 }') convert -O raw, image $size" \
    "virtual ($(du -hL "$img" | cut -f1) qcow2), $runs runs each, medians, $cache cache, $(nproc) cores;" \
    "direct from the file: ${d}s; from qemu-nbd serving the file: ${q}s"
printf '%-36s %9s %7s %7s  %-16s %s\n' source "via nbd" "time" speed target verdict
row() {
    local ratio speed verdict
    ratio=$(awk -v a="$2" -v b="$d" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    speed=$(awk -v a="$2" -v b="$d" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }')
    verdict=$(awk -v r="$ratio" 'BEGIN { print ((r <= 1.25) ? "met" : "NOT met") }')
    printf '%-36s %8ss %6sx %6sx  %-16s %s\n' "$1" "$2" "$ratio" "$speed" ">= 0.80x speed" "$verdict"
}
row "vdr serve" "$n"
row "vdr serve --min-hole 1048576" "$m"
