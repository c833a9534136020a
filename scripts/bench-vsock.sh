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
. scripts/bench-peer-lib.sh
bench_prepare bench-vsock "/bin/skiff-probe guest-echo 5000"

bench_nested <<SCRIPT
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

bench_table "host<->guest vsock (nested, median of $runs)" "Skiff (hybrid, Unix socket)" "QEMU microvm (vhost-vsock)"
bench_row "$streams x $bytes B echo, MiB/s each way" tput
bench_row "connect + 1-byte echo, median us (200)" connect
