#!/usr/bin/env bash
# Network benchmark, inside one nested test host: guest<->host TCP throughput (a 100 MiB echo,
# every byte checked, RUNS times) and ping round-trip latency, for skiff-vmm and for QEMU
# `-M microvm` with virtio-net-device on an equivalent tap, same guest kernel and guest program.
#   scripts/bench-net.sh [RUNS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-3}
. scripts/bench-peer-lib.sh
bench_prepare bench-net "/bin/skiff-probe tcp-echo 7000"

bench_nested <<SCRIPT
cat > /tmp/bench.sh <<'NETNS'
ip link set lo up
measure() {
    name=\$1; addr=\$2
    i=0; until ping -c 1 -W 1 \$addr >/dev/null 2>&1; do i=\$((i+1)); [ \$i -gt 300 ] && { echo "\$name: guest unreachable"; return 1; }; done
    i=0; until skiff-probe tcp-streams \$addr 7000 1 65536 >/dev/null 2>&1; do i=\$((i+1)); [ \$i -gt 60 ] && { echo "\$name: no echo server"; return 1; }; sleep 1; done
    for r in \$(seq $runs); do
        skiff-probe tcp-streams \$addr 7000 1 104857600 | sed -n "s/.*(\\(.*\\) MiB\\/s each way)/bench \$name tput \\1/p"
    done
    ping -c 20 -i 0.2 \$addr | sed -n "s/.*= [0-9.]*\\/\\([0-9.]*\\)\\/.*/bench \$name rtt \\1/p"
}
args='console=ttyS0 reboot=k panic=-1 quiet skiff.run=/bench.sh'
skiff-probe tap-add tap0; ip addr add 172.16.0.1/30 dev tap0; ip link set tap0 up
skiff-vmm --kernel /skiff/vmlinux --initrd /skiff/bench.cpio --memory-mib 256 --serial-out none \
    --net tap=tap0 --cmdline "\$args skiff.ip=172.16.0.2/30" &
vmm=\$!
measure skiff 172.16.0.2
kill \$vmm; wait \$vmm
skiff-probe tap-add tap1; ip addr add 172.16.1.1/30 dev tap1; ip link set tap1 up
qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off -enable-kvm -cpu host \
    -nodefaults -no-user-config -display none -no-reboot -serial file:/tmp/qemu-guest.log -L /usr/share/qemu \
    -m 256 -kernel /skiff/vmlinux -initrd /skiff/bench.cpio \
    -netdev tap,id=n0,ifname=tap1,script=no,downscript=no -device virtio-net-device,netdev=n0 \
    -append "\$args skiff.ip=172.16.1.2/30 reboot=t" &
qemu=\$!
measure qemu 172.16.1.2 || tail -20 /tmp/qemu-guest.log
kill \$qemu; wait \$qemu
NETNS
unshare -n sh /tmp/bench.sh
SCRIPT

bench_table "guest<->host TCP (nested, median of $runs)" Skiff "QEMU microvm"
bench_row "100 MiB echo, MiB/s each way" tput
bench_row "ping RTT, ms (avg of 20)" rtt
