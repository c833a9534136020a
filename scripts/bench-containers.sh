#!/usr/bin/env bash
# Container task benchmark, inside one nested test host: `skiff-run` running busybox `true`
# RUNS times (default 10) and the large test image (>= 200 MiB of layers) LARGE_RUNS times
# (default 3; the first builds its image disk), against the bare boot-to-init time of the same
# guest kernel and initramfs on skiff-vmm (the foundation benchmark's measure), RUNS times.
# Prints p50/p90 of: runner start -> VMM start (disks ready), -> guest-init's hello, -> the
# container's first instruction, -> its exit, -> the VMM's exit; and the VMM's memory beyond
# guest RAM. Target: busybox `true` end to end (start -> VMM exit) p50 <= 2 x bare boot-to-init.
# Times in the nested host are emulated: only ratios count.
#   scripts/bench-containers.sh [RUNS] [LARGE_RUNS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-10}
large_runs=${2:-3}

for f in target/guest/vmlinux target/guest/initramfs.cpio target/test-host/vmlinux \
    target/test-images/busybox/index.json target/test-images/large/index.json; do
    [ -f "$f" ] || { echo "bench-containers: $f is missing: run scripts/setup.sh first" >&2; exit 1; }
done
static=target/x86_64-unknown-linux-gnu/release
cargo build -q --release -p skiff-tests -p images -p api --bins
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target x86_64-unknown-linux-gnu -p vmm --bins
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for image in busybox large; do
    target/release/skiff-image --store "$work/store" import "target/test-images/$image" "$image:latest" >/dev/null
done
store_files=()
while IFS= read -r f; do store_files+=(--file "$work/store/$f=/store/$f"); done \
    < <(cd "$work/store" && find . -type f | sed 's|^\./||')

target/release/skiff-nested \
    --binary "$static/skiff-vmm=/skiff/skiff-vmm" \
    --binary target/release/skiff-run=/skiff/skiff-run \
    --binary "$(command -v mkfs.ext4)=/sbin/mkfs.ext4" \
    --file target/guest/vmlinux=/skiff/vmlinux \
    --file target/guest/initramfs.cpio=/skiff/initramfs.cpio \
    "${store_files[@]}" \
    --memory-mib 4096 --timeout 3000 \
    - <<SCRIPT | tee "$work/out"
echo 1 > /proc/sys/kernel/printk
mkdir -p /run/skiff
task() { # label image memory scratch
    /skiff/skiff-run --store /store --vmm /skiff/skiff-vmm --kernel /skiff/vmlinux \
        --initramfs /skiff/initramfs.cpio --image \$2 --memory-mib \$3 \
        --ephemeral-storage-mib \$4 --timings -- true 2>&1 \
        | sed -n 's/.*timings: vmm spawn \([0-9.]*\) ms, hello \([0-9.]*\) ms, started \([0-9.]*\) ms, exited \([0-9.]*\) ms, vmm exit \([0-9.]*\) ms; vmm peak rss [0-9]* KiB, overhead \([0-9]*\) KiB; status Code(0)/\1 \2 \3 \4 \5 \6/p' \
        | while read -r spawn hello started exited vmmexit overhead; do
            for m in spawn hello started exited vmmexit overhead; do eval "echo bench \$1 \$m \\\$\$m"; done
        done
}
for i in \$(seq $runs); do
    /skiff/skiff-vmm --kernel /skiff/vmlinux --initrd /skiff/initramfs.cpio --memory-mib 256 \
        --serial-out none 2>&1 | sed -n 's/^boot: guest init after \([0-9.]*\) ms.*/bench boot init \1/p'
    task busybox busybox:latest 256 1024
done
task large-cold large:latest 512 1024
for i in \$(seq \$(($large_runs - 1))); do task large large:latest 512 1024; done
SCRIPT

pct() { # label metric percentile
    grep "^bench $1 $2 " "$work/out" | awk '{print $4}' | sort -n \
        | awk -v p="$3" '{a[NR]=$1} END {if (NR == 0) {print "-"; exit} i = int((NR - 1) * p / 100 + 0.5) + 1; print a[i]}'
}
row() { # title label
    printf '| %s | %s / %s | %s / %s | %s / %s | %s / %s | %s / %s | %s |\n' "$1" \
        "$(pct "$2" spawn 50)" "$(pct "$2" spawn 90)" "$(pct "$2" hello 50)" "$(pct "$2" hello 90)" \
        "$(pct "$2" started 50)" "$(pct "$2" started 90)" "$(pct "$2" exited 50)" "$(pct "$2" exited 90)" \
        "$(pct "$2" vmmexit 50)" "$(pct "$2" vmmexit 90)" "$(pct "$2" overhead 50)"
}
echo
echo "| task (nested, ms, p50 / p90) | VMM started | guest-init hello | container started | container exited | VMM exited | VMM overhead KiB |"
echo "|---|---|---|---|---|---|---|"
row "busybox \`true\` ($runs runs)" busybox
row "large image, first run (builds its image disk)" large-cold
row "large image ($((large_runs - 1)) more runs)" large
boot=$(pct boot init 50)
e2e=$(pct busybox vmmexit 50)
echo
echo "bare boot-to-init p50 (skiff-vmm, same kernel and initramfs, $runs runs): $boot ms (p90 $(pct boot init 90) ms)"
echo "busybox true end to end p50 / bare boot-to-init p50: $(awk -v a="$e2e" -v b="$boot" 'BEGIN {printf "%.2f", a/b}') (target <= 2)"
