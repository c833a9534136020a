#!/usr/bin/env bash
# Jailer start-up benchmark, inside one nested test host: time from exec to guest init for
# skiff-vmm run directly and started by skiff-jailer (own jail, cgroup, namespaces, seccomp),
# RUNS times each alternating (default 10), then PARALLEL of each at once (default 10), in 3
# alternating rounds (batches vary a lot from one to the next under emulation).
# The nested host's KVM runs without its TDP MMU here: with it, ten concurrent VMs oopsed the
# nested host kernel (mmu_try_to_unsync_pages) under QEMU's emulated SVM.
#   scripts/bench-jailer.sh [RUNS] [PARALLEL]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-10}
parallel=${2:-10}

for f in target/guest/vmlinux target/guest/initramfs.cpio target/test-host/vmlinux; do
    [ -f "$f" ] || { echo "bench-jailer: $f is missing: run scripts/setup.sh first" >&2; exit 1; }
done
cargo build -q --release -p skiff-tests --bins
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target x86_64-unknown-linux-gnu -p vmm --bins
static=target/x86_64-unknown-linux-gnu/release

target/release/skiff-nested \
    --binary "$static/skiff-vmm=/skiff/skiff-vmm" \
    --binary "$static/skiff-jailer=/skiff/skiff-jailer" \
    --binary target/release/skiff-bootbench=/skiff/skiff-bootbench \
    --file target/guest/vmlinux=/skiff/vmlinux \
    --file target/guest/initramfs.cpio=/skiff/initramfs.cpio \
    --memory-mib 4096 --append kvm.tdp_mmu=0 \
    - <<SCRIPT
mkdir -p /srv/jailer
skiff-bootbench --runs $runs --parallel $parallel --jailer /skiff/skiff-jailer
SCRIPT
