#!/usr/bin/env bash
# Benchmark of `vdr verify`, in the same run as its peer:
#   - probe mode on /dev/kvm (target: the report in under 1 s wall);
#   - appliance mode through the qemu backend (TCG) against libguestfs on the same image:
#     `guestfish --ro -a IMAGE run` (what the issue names: starting the appliance) and
#     `guestfish --ro -a IMAGE run : fsck ext4 /dev/sda1 : mount-ro /dev/sda1 / : cat
#     /etc/os-release` (the same work vdr's appliance does).
#
# Image: a 512 MiB GPT disk (sfdisk) with one ext4 partition made by `mkfs.ext4 -d` from a
# small root (etc/os-release, etc/fstab, 64 MiB of files), as qcow2. Runs alternate
# vdr, guestfish, ...; the table shows median wall seconds.
#
# libguestfs needs a kernel and its modules under /lib/modules; on a machine without a
# /boot kernel (like the CI machines) this script points supermin at the kernel
# scripts/guest-kernel unpacked and, as root, copies its modules to /lib/modules/VERSION
# (supermin reads modules.dep there). guestfish is skipped, with a line saying so, when
# libguestfs-tools is not installed (apt-get install libguestfs-tools).
#
# Environment: VDR_BENCH_RUNS (3), VDR_BENCH_OUT (bench/out), VDR_BIN (a vdr binary to
# measure instead of building target/release/vdr), VDR_GUEST_KERNEL_DIR.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${VDR_BENCH_OUT:-$root/bench/out}/verify
runs=${VDR_BENCH_RUNS:-3}
kdir=${VDR_GUEST_KERNEL_DIR:-/var/cache/vdr/linux-image}

for tool in qemu-img sfdisk mkfs.ext4 python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found" >&2; exit 2; }
done
if [ -n "${VDR_BIN:-}" ]; then
    vdr=$VDR_BIN
else
    (cd "$root" && cargo build --release --quiet)
    vdr=${CARGO_TARGET_DIR:-$root/target}/release/vdr
fi
mkdir -p "$out"

img=$out/ext4-gpt.qcow2
if [ ! -f "$img" ]; then
    echo "bench: generating $img"
    rootdir=$out/rootdir
    rm -rf "$rootdir" && mkdir -p "$rootdir/etc" "$rootdir/data"
    printf 'PRETTY_NAME="vdr bench"\nNAME="vdr"\nVERSION_ID="1"\nID=vdrbench\n' > "$rootdir/etc/os-release"
    printf 'LABEL=benchroot / ext4 defaults 0 1\n' > "$rootdir/etc/fstab"
    for i in $(seq 64); do head -c 1M /dev/urandom > "$rootdir/data/f$i"; done
    part=$out/part.img
    rm -f "$part" && truncate -s 500M "$part"
    mkfs.ext4 -q -F -L benchroot -d "$rootdir" "$part"
    raw=$out/disk.raw
    rm -f "$raw" && truncate -s 512M "$raw"
    printf 'label: gpt\nstart=2048, size=1024000, type=L\n' | sfdisk -q "$raw"
    dd if="$part" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
    qemu-img convert -f raw -O qcow2 "$raw" "$img"
    rm -f "$raw" "$part"
    rm -rf "$rootdir"
fi

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# time_once RESULT_FILE CMD...: one run; appends its wall seconds (the command's exit
# status is kept in $status)
time_once() {
    local result=$1
    shift
    local start end
    start=$(date +%s.%N)
    status=0
    "$@" >/dev/null 2>"$out/last.err" || status=$?
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f\n", b - a }' >> "$result"
}

rp=$(mktemp); ra=$(mktemp); rg=$(mktemp); rgw=$(mktemp)
trap 'rm -f "$rp" "$ra" "$rg" "$rgw"' EXIT

# probe mode
if [ -c /dev/kvm ]; then
    for _ in $(seq "$runs"); do
        time_once "$rp" "$vdr" verify "$img" --mode probe --json
        [ "$status" = 0 ] || { echo "bench: probe exited $status:" >&2; cat "$out/last.err" >&2; exit 1; }
    done
    "$vdr" verify "$img" --mode probe --json > "$out/probe.json"
    python3 - "$out/probe.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["probe"]["timings"]
print(f"probe inside vdr: vm setup {t.get('vm_setup_ms')} ms, first guest line {t.get('first_line_ms')} ms, total {t.get('total_ms')} ms")
EOF
else
    echo "bench: SKIP probe: no /dev/kvm"
fi

# guestfish setup
have_guestfish=no
if command -v guestfish >/dev/null; then
    have_guestfish=yes
    if ! ls /boot/vmlinuz-* >/dev/null 2>&1; then
        kernel=$(ls "$kdir"/boot/vmlinuz-* 2>/dev/null | sort -V | tail -1 || true)
        if [ -z "$kernel" ]; then
            echo "bench: no kernel for libguestfs (run scripts/guest-kernel)"
            have_guestfish=no
        else
            version=${kernel##*/vmlinuz-}
            if [ ! -f "/lib/modules/$version/modules.dep" ]; then
                if [ "$(id -u)" = 0 ]; then
                    mkdir -p /lib/modules
                    cp -a "$kdir/lib/modules/$version" /lib/modules/
                    depmod -a "$version"
                else
                    echo "bench: libguestfs needs /lib/modules/$version (run as root)"
                    have_guestfish=no
                fi
            fi
            export SUPERMIN_KERNEL=$kernel SUPERMIN_KERNEL_VERSION=$version \
                SUPERMIN_MODULES=/lib/modules/$version
        fi
    fi
    # this machine's /dev/kvm cannot run libguestfs' kernel either: use TCG like vdr's
    # qemu backend, so both emulate the same way
    export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg
    # the appliance is built once and cached; build it before timing
    [ "$have_guestfish" = yes ] && guestfish --ro -a "$img" run >/dev/null 2>&1 || true
else
    echo "bench: SKIP guestfish: libguestfs-tools is not installed"
fi

for _ in $(seq "$runs"); do
    time_once "$ra" "$vdr" verify "$img" --mode appliance --backend qemu --json
    [ "$status" = 0 ] || { echo "bench: appliance exited $status:" >&2; cat "$out/last.err" >&2; exit 1; }
    if [ "$have_guestfish" = yes ]; then
        time_once "$rg" guestfish --ro -a "$img" run
        time_once "$rgw" guestfish --ro -a "$img" run : fsck ext4 /dev/sda1 : mount-ro /dev/sda1 / : cat /etc/os-release
    fi
done
"$vdr" verify "$img" --mode appliance --backend qemu --json > "$out/appliance.json"
python3 - "$out/appliance.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
a = r["appliance"]
print("appliance timeline (ms since the VM started): " + ", ".join(f"{s['stage']} {s['at_ms']}" for s in a.get("timeline", [])))
EOF

echo
echo "| what | median wall s ($runs runs) |"
echo "|---|---|"
[ -s "$rp" ] && echo "| vdr verify --mode probe (KVM) | $(median < "$rp") |"
echo "| vdr verify --mode appliance --backend qemu | $(median < "$ra") |"
if [ "$have_guestfish" = yes ]; then
    echo "| guestfish --ro -a IMG run | $(median < "$rg") |"
    echo "| guestfish --ro -a IMG run : fsck : mount-ro : cat os-release | $(median < "$rgw") |"
    awk -v a="$(median < "$ra")" -v g="$(median < "$rg")" -v w="$(median < "$rgw")" \
        'BEGIN { printf "vdr appliance takes %.2fx the time of guestfish run, %.2fx of guestfish doing the same checks\n", a / g, a / w }'
fi
