#!/usr/bin/env bash
# Builds one of our kernels from Debian's linux-source-6.1 with a config of ours and leaves its
# uncompressed vmlinux at the given output path.
#
#   scripts/build-kernel.sh guest     target/guest/vmlinux
#   scripts/build-kernel.sh test-host target/test-host/vmlinux
#
# The config is images/kernel/<name>.config, applied on top of `allnoconfig`. Builds are cached
# outside the clone (${SKIFF_CACHE:-~/.cache/skiff}/kernels/<name>-<hash>), keyed by the hash of the
# config, the kernel source package version and this recipe: an unchanged config never rebuilds.
set -euo pipefail

name=${1:?usage: build-kernel.sh <guest|test-host> <output vmlinux path>}
out=${2:?usage: build-kernel.sh <guest|test-host> <output vmlinux path>}
root=$(cd "$(dirname "$0")/.." && pwd)
config="$root/images/kernel/$name.config"
[ -f "$config" ] || { echo "build-kernel: no config $config" >&2; exit 1; }

tarball=/usr/src/linux-source-6.1.tar.xz
[ -f "$tarball" ] || { echo "build-kernel: $tarball missing; run scripts/setup.sh (installs linux-source-6.1)" >&2; exit 1; }
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
recipe_version=1

cache=${SKIFF_CACHE:-$HOME/.cache/skiff}
key=$( { cat "$config"; echo "source=$src_version recipe=$recipe_version"; } | sha256sum | cut -c1-16)
cached="$cache/kernels/$name-$key"

if [ ! -f "$cached/vmlinux" ]; then
    src="$cache/src/linux-$src_version"
    if [ ! -f "$src/.skiff-extracted" ]; then
        echo "build-kernel: extracting $tarball"
        rm -rf "$src"; mkdir -p "$src"
        tar -xJf "$tarball" -C "$src" --strip-components=1
        touch "$src/.skiff-extracted"
    fi
    build="$cache/build/$name"
    rm -rf "$build"; mkdir -p "$build"
    echo "build-kernel: configuring $name ($key)"
    make -s -C "$src" O="$build" KCONFIG_ALLCONFIG="$config" allnoconfig >/dev/null
    # Every option we asked for must have survived dependency resolution.
    missing=0
    while IFS= read -r line; do
        case "$line" in CONFIG_*=*) ;; *) continue ;; esac
        if ! grep -qxF "$line" "$build/.config"; then
            echo "build-kernel: $name.config asks for '$line' but the resolved config has: $(grep -E "^(# )?${line%%=*}[= ]" "$build/.config" || echo nothing)" >&2
            missing=1
        fi
    done < "$config"
    [ "$missing" = 0 ] || exit 1
    echo "build-kernel: building $name vmlinux with $(nproc) jobs (several minutes)"
    start=$(date +%s)
    make -s -C "$src" O="$build" -j"$(nproc)" vmlinux
    echo "build-kernel: $name built in $(( $(date +%s) - start )) s"
    mkdir -p "$cached.tmp"
    cp "$build/vmlinux" "$build/.config" "$cached.tmp/"
    rm -rf "$cached"; mv "$cached.tmp" "$cached"
    rm -rf "$build"
fi

mkdir -p "$(dirname "$out")"
cp "$cached/vmlinux" "$out.tmp" && mv "$out.tmp" "$out"
cp "$cached/.config" "$(dirname "$out")/kernel.config"
echo "build-kernel: $name -> $out ($(du -h "$out" | cut -f1), cached as $cached)"
