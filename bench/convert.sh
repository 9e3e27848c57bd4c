#!/usr/bin/env bash
# Benchmark of `vdr convert` against qemu-img on the same images, in the same run.
#
# Image (cached under bench/out/, gitignored): a qcow2 of VDR_BENCH_SIZE (default 4G)
# virtual bytes holding about half of it in data that compresses like a real disk (text,
# random and zero blocks; bench/gen-disk.py), and a compressed copy (qemu-img convert -c).
#
# Operations, each against qemu-img's default and its fastest setting (the VMDK inputs
# are made from the qcow2 by qemu-img and cached too):
#   qcow2 -> raw                     vs qemu-img convert -O raw      and  -C (copy offload)
#   compressed qcow2 -> raw (-t 2)   vs qemu-img convert -O raw      and  -W
#   qcow2 -> qcow2 -c (-t 2)         vs qemu-img convert -O qcow2 -c and  -c -W
#   qcow2 -> vmdk streamOptimized    vs qemu-img convert -O vmdk -o subformat=... and -W
#   vmdk stream -> raw (-t 2)        vs qemu-img convert -O raw      and  -W
#   vmdk monolithicSparse -> raw     vs qemu-img convert -O raw      and  -C
#   qcow2 -> vmdk streamOptimized    vs qemu-img convert -O vmdk -o subformat=streamOptimized
#     (-t 2)                            and the same with -W (qemu compresses vmdk grains in
#                                       its main loop either way); target: half qemu's time
# Runs alternate (vdr, qemu-img, qemu-img fast, vdr, ...) so drift hits all alike; the
# table shows median wall seconds, vdr/qemu-img ratios, the target (judged against the
# faster of qemu-img's two settings) and vdr's peak RSS
# (/usr/bin/time %M). As root the page cache is dropped before every run (cold cache);
# otherwise the figures are warm-cache and say so.
#
# Environment: VDR_BENCH_SIZE (4G; e.g. 256M for a quick check), VDR_BENCH_RUNS (3),
# VDR_BENCH_OPS (all; or a comma list of raw,compressed,qcow2c,vmdkstream), VDR_BIN (a vdr binary to
# measure instead of building target/release/vdr).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/bench/out
size=${VDR_BENCH_SIZE:-4G}
runs=${VDR_BENCH_RUNS:-3}
ops=${VDR_BENCH_OPS:-raw,compressed,qcow2c,vmdkstream,streamraw,sparseraw}
threads=2

for tool in qemu-img python3 numfmt; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found" >&2; exit 2; }
done
if [ ! -x /usr/bin/time ]; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time
    else
        echo "bench: /usr/bin/time missing (apt-get install time)" >&2
        exit 2
    fi
fi

if [ -n "${VDR_BIN:-}" ]; then
    vdr=$VDR_BIN # an installed build
else
    (cd "$root" && cargo build --release --quiet)
    vdr=${CARGO_TARGET_DIR:-$root/target}/release/vdr
fi
mkdir -p "$out/tmp"

bytes=$(numfmt --from=iec "$size")
img=$out/disk-$size.qcow2
cimg=$out/disk-$size-compressed.qcow2
if [ ! -f "$img" ]; then
    echo "bench: generating $img ($size virtual, about half data)"
    python3 "$root/bench/gen-disk.py" "$out/disk-$size.raw" "$bytes"
    qemu-img convert -f raw -O qcow2 "$out/disk-$size.raw" "$img.part"
    rm -f "$out/disk-$size.raw"
    mv "$img.part" "$img"
fi
if [ ! -f "$cimg" ]; then
    echo "bench: generating $cimg (qemu-img convert -c)"
    qemu-img convert -c -W -O qcow2 "$img" "$cimg.part"
    mv "$cimg.part" "$cimg"
fi

simg=$out/disk-$size-stream.vmdk
mimg=$out/disk-$size-sparse.vmdk
case ",$ops," in *,streamraw,*)
    if [ ! -f "$simg" ]; then
        echo "bench: generating $simg (qemu-img convert -o subformat=streamOptimized)"
        # Under its final name: the embedded descriptor names the file, and libvmdk
        # (bench/mount.sh's vmdkmount) follows that name, so a renamed .part fails there.
        qemu-img convert -O vmdk -o subformat=streamOptimized "$img" "$simg" || {
            rm -f "$simg"
            exit 1
        }
    fi ;;
esac
case ",$ops," in *,sparseraw,*)
    if [ ! -f "$mimg" ]; then
        echo "bench: generating $mimg (qemu-img convert -o subformat=monolithicSparse)"
        qemu-img convert -O vmdk -o subformat=monolithicSparse "$img" "$mimg" || {
            rm -f "$mimg"
            exit 1
        }
    fi ;;
esac

if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/drop_caches ]; then
    cache=cold
    drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
else
    cache=warm
    drop_caches() { :; }
fi

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# time_once RESULT_FILE OUTPUT CMD...: one cold (or warm) run; appends "seconds rss_kb"
time_once() {
    local result=$1 output=$2
    shift 2
    rm -f "$output"
    drop_caches
    local t
    t=$(mktemp)
    if ! /usr/bin/time -f '%e %M' -o "$t" "$@" >/dev/null 2>"$t.err"; then
        echo "bench: failed: $*" >&2
        cat "$t.err" >&2
        rm -f "$t" "$t.err"
        exit 1
    fi
    tail -n 1 "$t" >> "$result"
    rm -f "$t" "$t.err"
}

rows=()
# bench_op NAME TARGET_TEXT TARGET_RATIO INPUT OUT_EXT VDR_ARGS -- QEMU_ARGS -- QEMU_FAST_ARGS
bench_op() {
    local name=$1 target=$2 target_ratio=$3 input=$4 ext=$5
    shift 5
    local vdr_args=() qemu_args=() fast_args=()
    while [ "$1" != -- ]; do vdr_args+=("$1"); shift; done; shift
    while [ "$1" != -- ]; do qemu_args+=("$1"); shift; done; shift
    fast_args=("$@")
    local o=$out/tmp/out.$ext
    local rv rq rf
    rv=$(mktemp); rq=$(mktemp); rf=$(mktemp)
    echo "bench: $name ($runs runs each, $cache cache)"
    for _ in $(seq "$runs"); do
        time_once "$rv" "$o" "$vdr" convert "$input" "$o" "${vdr_args[@]}"
        time_once "$rq" "$o" qemu-img convert "${qemu_args[@]}" "$input" "$o"
        time_once "$rf" "$o" qemu-img convert "${fast_args[@]}" "$input" "$o"
    done
    # the last vdr output must hold the input's content
    "$vdr" convert "$input" "$o" "${vdr_args[@]}" --force >/dev/null
    qemu-img compare -q "$input" "$o" || { echo "bench: $name: vdr output differs" >&2; exit 1; }
    rm -f "$o"
    local v q f rss
    v=$(cut -d' ' -f1 "$rv" | median)
    q=$(cut -d' ' -f1 "$rq" | median)
    f=$(cut -d' ' -f1 "$rf" | median)
    rss=$(cut -d' ' -f2 "$rv" | sort -n | tail -n 1)
    rm -f "$rv" "$rq" "$rf"
    local ratio_q ratio_f verdict
    ratio_q=$(awk -v a="$v" -v b="$q" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    ratio_f=$(awk -v a="$v" -v b="$f" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    # the issue's targets are against qemu-img's default settings, and peak RSS <= 64 MiB;
    # the ratio against qemu-img's fastest setting is shown beside them
    verdict=$(awk -v r="$ratio_q" -v t="$target_ratio" -v m="$rss" \
        'BEGIN { print ((r <= t && m <= 65536) ? "met" : "NOT met") }')
    rows+=("$(printf '%-30s %8ss %8ss %6s %10ss %6s  %-22s %-7s %7s' \
        "$name" "$v" "$q" "${ratio_q}x" "$f" "${ratio_f}x" "$target" "$verdict" \
        "$((rss / 1024))MiB")")
}

case ",$ops," in *,raw,*)
    bench_op "qcow2 -> raw" "<= 1.00x qemu-img" 1.00 "$img" raw \
        -O raw -- -O raw -- -C -O raw ;;
esac
case ",$ops," in *,compressed,*)
    bench_op "compressed -> raw, 2 threads" "<= 0.60x qemu-img" 0.60 "$cimg" raw \
        -O raw --threads "$threads" -- -O raw -- -W -O raw ;;
esac
case ",$ops," in *,qcow2c,*)
    bench_op "qcow2 -> qcow2 -c, 2 threads" "<= 0.60x qemu-img -c" 0.60 "$img" qcow2 \
        -O qcow2 -c --threads "$threads" -- -O qcow2 -c -- -O qcow2 -c -W ;;
esac
case ",$ops," in *,vmdkstream,*)
    bench_op "qcow2 -> vmdk stream, 2 thr" "<= 0.50x qemu-img" 0.50 "$img" vmdk \
        -O vmdk --subformat streamOptimized --threads "$threads" \
        -- -O vmdk -o subformat=streamOptimized -- -W -O vmdk -o subformat=streamOptimized ;;
esac

case ",$ops," in *,streamraw,*)
    bench_op "vmdk stream -> raw, 2 thr" "<= 0.60x qemu-img" 0.60 "$simg" raw \
        -O raw --threads "$threads" -- -O raw -- -W -O raw ;;
esac
case ",$ops," in *,sparseraw,*)
    bench_op "vmdk sparse -> raw" "<= 1.00x qemu-img" 1.00 "$mimg" raw \
        -O raw -- -O raw -- -C -O raw ;;
esac

echo
echo "vdr convert vs qemu-img $(qemu-img --version | head -n 1 | awk '{ print $3 }'), image $size" \
    "virtual ($(du -h "$img" | cut -f1) qcow2, $(du -h "$cimg" | cut -f1) compressed)," \
    "$runs runs each, medians, $cache cache, $(nproc) cores"
printf '%-30s %9s %9s %7s %11s %7s  %-22s %-7s %7s\n' operation vdr qemu-img ratio \
    "qemu fast" ratio target verdict "vdr RSS"
printf '%s\n' "${rows[@]}"
