#!/usr/bin/env bash
# vsock benchmark, inside one nested test host: host<->guest stream throughput (STREAMS
# concurrent echoed streams of 100/STREAMS MiB, every byte checked, RUNS times) and connect
# latency (200 connections in turn, each echoing one byte), for skiff-vmm's hybrid vsock (host
# side: the VMM's Unix socket and a CONNECT line) and for QEMU `-M microvm` with
# vhost-vsock-device (host side: kernel AF_VSOCK), same guest kernel and guest program.
#   scripts/bench-vsock.sh [RUNS] [STREAMS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-3}
streams=${2:-4}
bytes=$((104857600 / streams))
for f in target/guest/vmlinux target/test-host/vmlinux; do
    [ -f "$f" ] || { echo "bench-vsock: $f is missing: run scripts/setup.sh first" >&2; exit 1; }
done
static=target/x86_64-unknown-linux-gnu/release
cargo build -q --release -p skiff-tests -p images --bins
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target x86_64-unknown-linux-gnu -p vmm -p guest-init --bins
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target x86_64-unknown-linux-gnu -p skiff-tests --bin skiff-probe

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexec /bin/skiff-probe guest-echo 5000\n' > "$work/bench.sh"
chmod +x "$work/bench.sh"
target/release/skiff-initramfs --init "$static/skiff-init" \
    --binary /bin/busybox=/bin/busybox --binary "$static/skiff-probe=/bin/skiff-probe" \
    --binary "$work/bench.sh=/bench.sh" --out "$work/initramfs.cpio"

target/release/skiff-nested \
    --binary "$static/skiff-vmm=/skiff/skiff-vmm" \
    --binary "$static/skiff-probe=/skiff/skiff-probe" \
    --binary "$(command -v qemu-system-x86_64)"=/usr/bin/qemu-system-x86_64 \
    --file /usr/share/qemu/bios-microvm.bin=/usr/share/qemu/bios-microvm.bin \
    --file /usr/share/qemu/qboot.rom=/usr/share/qemu/qboot.rom \
    --file target/guest/vmlinux=/skiff/vmlinux \
    --file "$work/initramfs.cpio=/skiff/bench.cpio" \
    --memory-mib 3072 --timeout 600 \
    - <<SCRIPT | tee "$work/out"
measure() { # name kind target: kind is uds (target: the VMM's socket) or vsock (target: a cid)
    name=\$1; kind=\$2; target=\$3
    i=0; until skiff-probe \$kind-connects \$target 5000 1 >/dev/null 2>&1; do
        i=\$((i+1)); [ \$i -gt 120 ] && { echo "\$name: no echo server in the guest"; return 1; }; sleep 1
    done
    for r in \$(seq $runs); do
        skiff-probe \$kind-streams \$target 5000 $streams $bytes | sed -n "s/.*(\\(.*\\) MiB\\/s each way)/bench \$name tput \\1/p"
    done
    skiff-probe \$kind-connects \$target 5000 200 | sed -n "s/.*median \\([0-9]*\\) us.*/bench \$name connect \\1/p"
}
args='console=ttyS0 reboot=k panic=-1 quiet skiff.run=/bench.sh'
skiff-vmm --kernel /skiff/vmlinux --initrd /skiff/bench.cpio --memory-mib 256 --serial-out none \
    --vsock cid=3,uds=/tmp/v.sock --cmdline "\$args" &
vmm=\$!
measure skiff uds /tmp/v.sock
kill \$vmm; wait \$vmm
qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off -enable-kvm -cpu host \
    -nodefaults -no-user-config -display none -no-reboot -serial file:/tmp/qemu-guest.log -L /usr/share/qemu \
    -m 256 -kernel /skiff/vmlinux -initrd /skiff/bench.cpio \
    -device vhost-vsock-device,guest-cid=4 -append "\$args reboot=t" &
qemu=\$!
measure qemu vsock 4 || tail -20 /tmp/qemu-guest.log
kill \$qemu; wait \$qemu
SCRIPT

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
val() { grep "^bench $1 $2 " "$work/out" | awk '{print $4}' | median; }
st=$(val skiff tput); qt=$(val qemu tput); sc=$(val skiff connect); qc=$(val qemu connect)
echo
echo "| host<->guest vsock (nested, median of $runs) | Skiff (hybrid, Unix socket) | QEMU microvm (vhost-vsock) | Skiff / QEMU |"
echo "|---|---|---|---|"
echo "| $streams x $bytes B echo, MiB/s each way | $st | $qt | $(awk -v a="$st" -v b="$qt" 'BEGIN {printf "%.2f", a/b}') |"
echo "| connect + 1-byte echo, median us (200) | $sc | $qc | $(awk -v a="$sc" -v b="$qc" 'BEGIN {printf "%.2f", a/b}') |"
