# Shared by the Skiff-against-QEMU device benchmarks (bench-net.sh, bench-vsock.sh); sourced.
#   bench_prepare NAME GUEST_COMMAND   builds what the benchmark needs and writes a guest
#                                      initramfs whose /bench.sh execs GUEST_COMMAND; sets
#                                      $static and $work (removed on exit)
#   bench_nested                       runs the script on stdin in a nested test host holding
#                                      skiff-vmm, skiff-probe, QEMU and that initramfs; the
#                                      console also goes to $work/out
#   bench_table TITLE SKIFF QEMU       prints the table head (column titles of the two peers)
#   bench_row LABEL METRIC             a row: Skiff's and QEMU's medians of METRIC and their ratio

bench_prepare() {
    local name=$1 guest_command=$2
    for f in target/guest/vmlinux target/test-host/vmlinux; do
        [ -f "$f" ] || { echo "$name: $f is missing: run scripts/setup.sh first" >&2; exit 1; }
    done
    static=target/x86_64-unknown-linux-gnu/release
    cargo build -q --release -p skiff-tests -p images --bins
    RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target x86_64-unknown-linux-gnu -p vmm -p guest-init --bins
    RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target x86_64-unknown-linux-gnu -p skiff-tests --bin skiff-probe
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    printf '#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexec %s\n' "$guest_command" > "$work/bench.sh"
    chmod +x "$work/bench.sh"
    target/release/skiff-initramfs --init "$static/skiff-init" \
        --binary /bin/busybox=/bin/busybox --binary "$static/skiff-probe=/bin/skiff-probe" \
        --binary "$work/bench.sh=/bench.sh" --out "$work/initramfs.cpio"
}

bench_nested() {
    target/release/skiff-nested \
        --binary "$static/skiff-vmm=/skiff/skiff-vmm" \
        --binary "$static/skiff-probe=/skiff/skiff-probe" \
        --binary "$(command -v qemu-system-x86_64)"=/usr/bin/qemu-system-x86_64 \
        --file /usr/share/qemu/bios-microvm.bin=/usr/share/qemu/bios-microvm.bin \
        --file /usr/share/qemu/qboot.rom=/usr/share/qemu/qboot.rom \
        --file target/guest/vmlinux=/skiff/vmlinux \
        --file "$work/initramfs.cpio=/skiff/bench.cpio" \
        --memory-mib 3072 --timeout 600 \
        - | tee "$work/out"
}

bench_val() {
    grep "^bench $1 $2 " "$work/out" | awk '{print $4}' | sort -n \
        | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'
}

bench_table() {
    echo
    echo "| $1 | $2 | $3 | Skiff / QEMU |"
    echo "|---|---|---|---|"
}

bench_row() {
    local skiff qemu
    skiff=$(bench_val skiff "$2")
    qemu=$(bench_val qemu "$2")
    echo "| $1 | $skiff | $qemu | $(awk -v a="$skiff" -v b="$qemu" 'BEGIN {printf "%.2f", a/b}') |"
}
