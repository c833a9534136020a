#!/usr/bin/env bash
# Block benchmark, inside one nested test host: the same guest (Skiff kernel, 1 vCPU, 256 MiB)
# runs skiff-blkbench (O_DIRECT: sequential write and read in 1 MiB requests, 4 KiB random reads)
# against a virtio-blk disk backed by the same host file, on skiff-vmm and on QEMU -M microvm
# (virtio-blk-device; acpi=off so QEMU announces it on the kernel command line, as Skiff does),
# alternating RUNS times (default 3). Prints the medians and Skiff/QEMU.
#   scripts/bench-block.sh [RUNS] [SEQ_MIB] [RAND_OPS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-3}
seq_mib=${2:-64}
rand_ops=${3:-4000}

for f in target/guest/vmlinux target/test-host/vmlinux target/x86_64-unknown-linux-gnu/release/skiff-init; do
    [ -f "$f" ] || { echo "bench-block: $f is missing: run scripts/setup.sh first" >&2; exit 1; }
done
cargo build -q --release -p images -p skiff-tests --bins
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target x86_64-unknown-linux-gnu -p vmm --bins
work=target/bench-block
mkdir -p "$work"
printf '#!/bin/busybox sh\n/bin/skiff-blkbench /dev/vda --seq-mib %s --rand-ops %s\n' "$seq_mib" "$rand_ops" > "$work/guest.sh"
chmod 755 "$work/guest.sh"
target/release/skiff-initramfs --init target/x86_64-unknown-linux-gnu/release/skiff-init \
    --file /bin/busybox=/bin/busybox --file "$work/guest.sh=/test.sh" \
    --binary target/release/skiff-blkbench=/bin/skiff-blkbench --out "$work/initramfs.cpio"

cat > "$work/nested.sh" <<SCRIPT
dd if=/dev/zero of=/tmp/disk.img bs=1M count=$((seq_mib + 8)) 2>/dev/null
for i in \$(seq 1 $runs); do
    skiff-vmm --kernel /skiff/vmlinux --initrd /skiff/bench.cpio --memory-mib 256 \
        --disk path=/tmp/disk.img \
        --cmdline "console=ttyS0 reboot=k panic=-1 quiet skiff.run=/test.sh" 2>&1 \
        | grep '^blkbench:' | sed 's/^/skiff /'
    qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off -enable-kvm -cpu host \
        -m 256 -smp 1 -nodefaults -no-user-config -nographic -no-reboot -serial stdio \
        -kernel /skiff/vmlinux -initrd /skiff/bench.cpio \
        -drive id=d0,file=/tmp/disk.img,format=raw,if=none -device virtio-blk-device,drive=d0 \
        -append "console=ttyS0 reboot=t panic=-1 quiet skiff.run=/test.sh" 2>&1 \
        | grep '^blkbench:' | sed 's/^/qemu /'
done
SCRIPT

target/release/skiff-nested \
    --binary target/x86_64-unknown-linux-gnu/release/skiff-vmm=/skiff/skiff-vmm \
    --binary "$(command -v qemu-system-x86_64)"=/usr/bin/qemu-system-x86_64 \
    --file /usr/share/qemu/bios-microvm.bin=/usr/share/qemu/bios-microvm.bin \
    --file /usr/share/qemu/qboot.rom=/usr/share/qemu/qboot.rom \
    --file target/guest/vmlinux=/skiff/vmlinux \
    --file "$work/initramfs.cpio=/skiff/bench.cpio" \
    "$work/nested.sh" | tr -d '\r' | tee "$work/console.log" | grep -E '^(skiff|qemu) blkbench:' || true

awk -v runs="$runs" '
    /^(skiff|qemu) blkbench:/ {
        vmm = $1
        for (i = 3; i <= NF; i++) { split($i, kv, "="); v[vmm, kv[1], ++n[vmm, kv[1]]] = kv[2] }
    }
    function median(vmm, key,   k, a, m, t, i, j) {
        m = n[vmm, key]
        if (m == 0) return 0
        for (i = 1; i <= m; i++) a[i] = v[vmm, key, i]
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return a[int((m + 1) / 2)]
    }
    END {
        printf "\nBlock I/O in the guest (median of %d runs each, inside the nested test host: compare ratios)\n", runs
        print "| metric | skiff-vmm | QEMU microvm | Skiff / QEMU |"
        print "|---|---:|---:|---:|"
        split("seq-write-mibs seq-read-mibs rand-read-iops", keys, " ")
        split("sequential write (MiB/s)|sequential read (MiB/s)|4 KiB random read (IOPS)", names, "|")
        for (k = 1; k <= 3; k++) {
            s = median("skiff", keys[k]); q = median("qemu", keys[k])
            printf "| %s | %.1f | %.1f | %.2f |\n", names[k], s, q, (q > 0 ? s / q : 0)
        }
    }' "$work/console.log"
