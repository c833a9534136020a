#!/usr/bin/env bash
# Installs and builds everything Skiff needs on a fresh Debian 12 machine (idempotent):
#   - Debian packages (kernel source and build tools, QEMU, busybox-static, ...);
#   - the guest kernel and the nested test-host kernel (cached in ~/.cache/skiff by config hash);
#   - guest-init (static) and the guest initramfs;
#   - the release binaries (skiff-vmm, test and benchmark tools);
#   - Debian's stock cloud kernel, unpacked, for the product-against-product benchmark;
#   - the AWS CLI and boto3 (PyPI) in target/ecs-venv, for the ECS end-to-end test.
# Leaves target/guest/{vmlinux,initramfs.cpio}, target/test-host/vmlinux, target/stock/vmlinuz,
# and the static skiff-vmm, skiff-jailer and skiff-init in target/x86_64-unknown-linux-gnu/release/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cache=${SKIFF_CACHE:-$HOME/.cache/skiff}

say() { echo "setup: $*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

packages=(
    build-essential binutils bc bison flex libelf-dev cpio xz-utils linux-source-6.1
    qemu-system-x86 qemu-system-data busybox-static strace e2fsprogs iproute2
    docker-registry skopeo openssl python3 python3-venv
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust) is required" >&2; exit 1; }
for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" \
        || rustup component add "$component" 2>/dev/null || true
done

say "kernels"
scripts/build-kernel.sh guest target/guest/vmlinux
scripts/build-kernel.sh test-host target/test-host/vmlinux

# guest-init runs in the guest's initramfs; skiff-vmm and skiff-jailer run in an empty jail; the
# skiff-probe test tool runs in test guests: all static (target/x86_64-unknown-linux-gnu/release/).
say "static binaries: skiff-init, skiff-vmm, skiff-jailer, skiff-probe, skiff-monitor"
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build -q -p guest-init -p vmm --bins --release --target x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build -q -p skiff-tests --bin skiff-probe --release --target x86_64-unknown-linux-gnu
# skiffd's per-task monitor, static too: its resident memory stays under 2 MiB.
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build -q -p api --bin skiff-monitor --release --target x86_64-unknown-linux-gnu
say "release binaries"
cargo build -q --release --workspace --bins
target/release/skiff-initramfs \
    --init target/x86_64-unknown-linux-gnu/release/skiff-init \
    --out target/guest/initramfs.cpio
say "guest initramfs -> target/guest/initramfs.cpio ($(du -h target/guest/initramfs.cpio | cut -f1))"
say "container test images -> target/test-images/ (cached in $cache/test-images)"
scripts/build-test-images.sh
say "ECS clients (the AWS CLI and boto3 from PyPI) -> target/ecs-venv"
scripts/ecs-clients.sh

# Debian's stock cloud kernel (what a user would otherwise boot under QEMU microvm).
stock_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
    | sed -n 's/.*Depends: \(linux-image-[0-9].*-cloud-amd64\(-unsigned\)\?\)$/\1/p' | head -n 1)
if [ -z "$stock_pkg" ]; then
    as_root apt-get update -q
    stock_pkg=$(apt-cache depends linux-image-cloud-amd64 \
        | sed -n 's/.*Depends: \(linux-image-[0-9].*-cloud-amd64\(-unsigned\)\?\)$/\1/p' | head -n 1)
fi
[ -n "$stock_pkg" ] || { echo "setup: cannot find Debian's cloud kernel package" >&2; exit 1; }
stock_dir="$cache/stock-kernel/$stock_pkg"
if [ ! -f "$stock_dir/vmlinuz" ]; then
    say "downloading $stock_pkg"
    tmp=$(mktemp -d) && chmod 755 "$tmp"  # apt downloads as the _apt user
    (cd "$tmp" && apt-get download -q "$stock_pkg" >/dev/null)
    dpkg-deb -x "$tmp"/*.deb "$tmp/x"
    mkdir -p "$stock_dir"
    cp "$tmp"/x/boot/vmlinuz-* "$stock_dir/vmlinuz.tmp" && mv "$stock_dir/vmlinuz.tmp" "$stock_dir/vmlinuz"
    rm -rf "$tmp"
fi
mkdir -p target/stock
cp "$stock_dir/vmlinuz" target/stock/vmlinuz
say "stock kernel $stock_pkg -> target/stock/vmlinuz"
say "done"
