#!/usr/bin/env bash
# The main job, end to end: skiffd started, busybox pulled into its store, a task launched with
# `skiff run` (its output streamed, its exit code returned), then the task's final state and
# events. On a host whose /dev/kvm boots Linux guests this runs directly; on one that cannot (a
# nested or emulated KVM, like the project's CI machines) the same demo runs inside the nested
# test host (our KVM kernel under QEMU TCG). Run scripts/setup.sh first.
#   scripts/demo.sh [direct|nested]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
static=target/x86_64-unknown-linux-gnu/release
for f in target/guest/vmlinux target/guest/initramfs.cpio target/test-images/busybox/index.json \
    "$static/skiff-vmm" "$static/skiff-jailer" "$static/skiff-monitor" target/release/skiffd; do
    [ -f "$f" ] || { echo "demo: $f is missing: run scripts/setup.sh first" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mode=${1:-}
if [ -z "$mode" ]; then
    # Does this /dev/kvm boot our guest kernel to guest-init? (An emulation-based nested KVM
    # fails in early boot within seconds.)
    if [ -e /dev/kvm ] && timeout 60 "$static/skiff-vmm" --kernel target/guest/vmlinux \
        --initrd target/guest/initramfs.cpio --serial-out none \
        --cmdline "console=ttyS0 reboot=k panic=-1 quiet skiff.exit=0" >/dev/null 2>&1; then
        mode=direct
    else
        mode=nested
        echo "demo: this host's /dev/kvm cannot run Linux guests: running the demo inside the nested test host"
    fi
fi

# The demo itself, with the binaries and files at $BIN, $DATA (the image store is filled first).
demo_script() {
    cat <<SCRIPT
set -e
export SKIFF_HOST=unix://\$DATA/skiffd.sock
\$BIN/skiffd --data-dir \$DATA --socket \$DATA/skiffd.sock --config \$DATA/skiffd.toml 2> \$DATA/skiffd.log &
SKIFFD=\$!
i=0; until \$BIN/skiff capacity > /dev/null 2>&1 || [ \$i -ge 300 ]; do sleep 0.1; i=\$((i+1)); done
echo '$ skiff capacity'; \$BIN/skiff capacity
echo '$ skiff run busybox:latest -- sh -c "echo hello from a microVM; uname -r; exit 3"'
set +e; \$BIN/skiff run busybox:latest -- sh -c 'echo hello from a microVM; uname -r; exit 3'; echo "(exit code \$?)"; set -e
echo '$ skiff ps -a'; \$BIN/skiff ps -a
ID=\$(\$BIN/skiff --json ps -a | grep -o '"taskId": *"[0-9a-f]*"' | head -n 1 | grep -o '[0-9a-f]\{32\}')
echo "\$ skiff describe \$ID"; \$BIN/skiff describe \$ID
kill -TERM \$SKIFFD; wait \$SKIFFD || true
SCRIPT
}

config() { # kernel initramfs vmm monitor jailer
    cat <<TOML
[executor]
kernel = "$1"
initramfs = "$2"
vmm = "$3"
monitor = "$4"
jailer = "$5"
TOML
}

if [ "$mode" = direct ]; then
    data="$work/data"
    mkdir -p "$data"
    target/release/skiff-image --store "$data/images" import target/test-images/busybox busybox:latest >/dev/null
    config "$root/target/guest/vmlinux" "$root/target/guest/initramfs.cpio" "$root/$static/skiff-vmm" \
        "$root/$static/skiff-monitor" "$root/$static/skiff-jailer" > "$data/skiffd.toml"
    BIN=$root/target/release DATA=$data bash -c "$(demo_script)"
else
    target/release/skiff-image --store "$work/store" import target/test-images/busybox busybox:latest >/dev/null
    files=()
    while IFS= read -r f; do files+=(--file "$work/store/$f=/data/images/$f"); done \
        < <(cd "$work/store" && find . -type f | sed 's|^\./||')
    config /skiff/vmlinux /skiff/initramfs.cpio /skiff/skiff-vmm /skiff/skiff-monitor /skiff/skiff-jailer > "$work/skiffd.toml"
    { echo "echo 1 > /proc/sys/kernel/printk; BIN=/skiff DATA=/data"; demo_script; } > "$work/demo.sh"
    target/release/skiff-nested \
        --binary "$static/skiff-vmm=/skiff/skiff-vmm" \
        --binary "$static/skiff-jailer=/skiff/skiff-jailer" \
        --binary target/release/skiffd=/skiff/skiffd \
        --binary "$static/skiff-monitor=/skiff/skiff-monitor" \
        --binary target/release/skiff=/skiff/skiff \
        --binary "$(command -v mkfs.ext4)=/sbin/mkfs.ext4" \
        --file target/guest/vmlinux=/skiff/vmlinux \
        --file target/guest/initramfs.cpio=/skiff/initramfs.cpio \
        --file "$work/skiffd.toml=/data/skiffd.toml" \
        "${files[@]}" --memory-mib 2048 --timeout 900 \
        "$work/demo.sh"
fi
