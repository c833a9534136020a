#!/usr/bin/env bash
# Boot benchmark, inside one nested test host: boots the guest RUNS times (default 10) on each of
#   skiff-vmm with Skiff's guest kernel,
#   QEMU -M microvm (KVM) with the same kernel and initramfs        -> comparison (a), the VMM's cost
#   QEMU -M microvm (KVM) with Debian's stock cloud kernel          -> comparison (b), product vs product
# alternating, same vCPUs, memory, initramfs and command line, timing each to the same guest event
# (guest-init printing "skiff-init: started"). Prints p50/p90 time to init, VMM RSS minus guest
# memory, and the Skiff/QEMU ratios. Times in the nested host are emulated: only ratios count.
#   scripts/bench-boot.sh [RUNS] [VCPUS] [MEMORY_MIB]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-10}
vcpus=${2:-1}
memory=${3:-128}

for f in target/guest/vmlinux target/guest/initramfs.cpio target/test-host/vmlinux target/stock/vmlinuz; do
    [ -f "$f" ] || { echo "bench-boot: $f is missing: run scripts/setup.sh first" >&2; exit 1; }
done
cargo build -q --release -p skiff-tests --bins
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target x86_64-unknown-linux-gnu -p vmm --bins

target/release/skiff-nested \
    --binary target/x86_64-unknown-linux-gnu/release/skiff-vmm=/skiff/skiff-vmm \
    --binary target/release/skiff-bootbench=/skiff/skiff-bootbench \
    --binary "$(command -v qemu-system-x86_64)"=/usr/bin/qemu-system-x86_64 \
    --file /usr/share/qemu/bios-microvm.bin=/usr/share/qemu/bios-microvm.bin \
    --file target/guest/vmlinux=/skiff/vmlinux \
    --file target/guest/initramfs.cpio=/skiff/initramfs.cpio \
    --file target/stock/vmlinuz=/skiff/vmlinuz-stock \
    - <<SCRIPT
skiff-bootbench --runs $runs --vcpus $vcpus --memory-mib $memory --stock-kernel /skiff/vmlinuz-stock
SCRIPT
