#!/usr/bin/env bash
# Builds the container images the tests run, as OCI image layouts in target/test-images/<name>/,
# from Debian's busybox-static and small files of ours, with our own skiff-mkimage (no Docker, no
# registry). Every layout is checked by the repository's importer (skiff-image import) and by
# `skopeo inspect` where skopeo is installed.
#
#   scripts/build-test-images.sh
#
# Cached in ${SKIFF_CACHE:-~/.cache/skiff}/test-images/<key>/, keyed by the hash of this script,
# skiff-mkimage's source and the busybox-static version: unchanged, it only hard-links (or copies)
# the cached layouts into target/test-images. Older keys are pruned. Every entry's mtime is
# 1700000000, so the blobs are reproducible: the busybox base layer is the same blob everywhere.
#
# The images (every layout's index.json names its image `latest`; every entry root-owned unless
# said; config Env starts with PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin):
#
#   busybox  one gzip layer: /bin/busybox (0755) and a symlink /bin/APPLET -> busybox for every
#            applet of `busybox --list` (sh, echo, id, cat, sleep, true, ls, env, pwd, dd, head,
#            yes, httpd, wget, ...); /etc/passwd (root 0:0 /root, app 1000:1000 /home/app,
#            nobody 65534:65534 /nonexistent), /etc/group (root 0, app 1000, nogroup 65534),
#            /tmp (1777), /root (0700), /home/app (0755, 1000:1000). Config: Cmd ["sh"].
#   httpd    the busybox layer + a gzip layer with /www/index.html = "hello from skiff httpd\n".
#            Config: Cmd ["httpd","-f","-v","-p","8080","-h","/www"], ExposedPorts 8080/tcp.
#   layers   three layers, for the layer semantics:
#              1 (gzip) the busybox tree + /data/keep "v1", /data/gone "x", /data/dir/a "a",
#                /data/dir/b "b", /data/orig "orig";
#              2 (zstd) /data/.wh.gone (whiteout), /data/dir/.wh..wh..opq (opaque) + /data/dir/c
#                "c", /data/hl-src and /data/hl-dst hard-linked ("hardlinked"; in the tar hl-src
#                is a hard-link entry to hl-dst, which sorts first), /data/sym -> keep (symlink);
#              3 (uncompressed tar) /data/keep "v3", /data/owned "owned" 1000:1000 mode 0640.
#            Config: Cmd ["sh"], WorkingDir /data, Env [PATH, FOO=from-image].
#            Expected /data once unpacked (the file contents have no newline):
#              /data/keep       "v3"
#              /data/orig       "orig"
#              /data/dir/c      "c"            (dir/a, dir/b gone: opaque dir)
#              /data/hl-src     "hardlinked"   same inode as /data/hl-dst (link count 2)
#              /data/hl-dst     "hardlinked"
#              /data/sym        symlink -> keep
#              /data/owned      "owned", uid 1000, gid 1000, mode 0640
#              no /data/gone, and no .wh.* file anywhere
#   evil     the busybox layer + a gzip layer of two raw entries named "../escaped" and
#            "/../../escaped2" (content "escaped\n"): running it must fail cleanly, writing
#            nothing outside the root. Config: Cmd ["sh"].
#   caps     the busybox layer + a gzip layer with /capbin/grep, a copy of busybox (0755) carrying
#            the file capability cap_net_raw+ep (xattr security.capability, VFS_CAP_REVISION_2)
#            and user.skiff = "file-caps" (PAX SCHILY.xattr records). Config: Cmd ["sh"].
#   large    the busybox layer + 4 gzip layers, each /data/ + /data/random-N (N = 1..4) of 55 MiB
#            of pseudo-random bytes (seed N): about 220 MiB compressed. Config: Cmd ["sh"].
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cache=${SKIFF_CACHE:-$HOME/.cache/skiff}
out=target/test-images
images=(busybox httpd layers evil caps large)
say() { echo "test-images: $*"; }

busybox_version=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null) \
    || { echo "test-images: busybox-static is not installed (run scripts/setup.sh)" >&2; exit 1; }
key=$( { cat "$0" tests/src/bin/skiff-mkimage.rs; echo "busybox-static=$busybox_version"; } \
    | sha256sum | cut -c1-16)
cached="$cache/test-images/$key"

if [ ! -f "$cached/.complete" ]; then
    start=$(date +%s)
    say "building (key $key) ..."
    cargo build -q --release -p skiff-tests --bin skiff-mkimage
    cargo build -q --release -p images --bin skiff-image
    mkimage=target/release/skiff-mkimage
    busybox=$(dpkg -L busybox-static | grep -m 1 '/bin/busybox$')
    mkdir -p "$cache/test-images"
    work=$(mktemp -d "$cache/test-images/.build-XXXXXX")
    trap 'rm -rf "$work"' EXIT
    trees="$work/trees" layouts="$work/layouts"
    mkdir -p "$trees" "$layouts"
    path_env='"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"'
    mk() {  # NAME CONFIG-JSON LAYER...
        local name=$1 config=$2
        shift 2
        local layers=()
        for layer in "$@"; do layers+=(--layer "$layer"); done
        "$mkimage" --out "$layouts/$name" --ref latest --mtime 1700000000 --config "$config" \
            "${layers[@]}" >/dev/null
    }

    # The busybox tree.
    t="$trees/busybox"
    mkdir -p "$t/bin" "$t/etc" "$t/tmp" "$t/root" "$t/home/app"
    install -m 0755 "$busybox" "$t/bin/busybox"
    for applet in $("$busybox" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$t/bin/$applet"
    done
    printf '%s\n' "root:x:0:0:root:/root:/bin/sh" "app:x:1000:1000:app:/home/app:/bin/sh" \
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false" >"$t/etc/passwd"
    printf '%s\n' "root:x:0:" "app:x:1000:" "nogroup:x:65534:" >"$t/etc/group"
    chmod 0644 "$t/etc/passwd" "$t/etc/group"
    chmod 0755 "$t" "$t/bin" "$t/etc" "$t/home" "$t/home/app"
    chmod 1777 "$t/tmp"
    chmod 0700 "$t/root"
    base="gzip:$t,owner=0:0,chown=home/app:1000:1000"
    mk busybox "{\"Cmd\":[\"sh\"],\"Env\":[$path_env]}" "$base"

    # httpd
    t="$trees/httpd"
    mkdir -p "$t/www"
    echo "hello from skiff httpd" >"$t/www/index.html"
    chmod 0755 "$t/www" && chmod 0644 "$t/www/index.html"
    mk httpd "{\"Cmd\":[\"httpd\",\"-f\",\"-v\",\"-p\",\"8080\",\"-h\",\"/www\"],\"Env\":[$path_env],
        \"ExposedPorts\":{\"8080/tcp\":{}}}" "$base" "gzip:$t,owner=0:0"

    # layers
    l1="$trees/layers-1" l2="$trees/layers-2" l3="$trees/layers-3"
    cp -a "$trees/busybox" "$l1"
    mkdir -p "$l1/data/dir" "$l2/data/dir" "$l3/data"
    printf v1 >"$l1/data/keep"
    printf x >"$l1/data/gone"
    printf a >"$l1/data/dir/a"
    printf b >"$l1/data/dir/b"
    printf orig >"$l1/data/orig"
    : >"$l2/data/.wh.gone"
    : >"$l2/data/dir/.wh..wh..opq"
    printf c >"$l2/data/dir/c"
    printf hardlinked >"$l2/data/hl-src"
    ln "$l2/data/hl-src" "$l2/data/hl-dst"
    ln -s keep "$l2/data/sym"
    printf v3 >"$l3/data/keep"
    printf owned >"$l3/data/owned"
    chmod 0755 "$l1/data" "$l1/data/dir" "$l2/data" "$l2/data/dir" "$l3/data"
    find "$l1/data" "$l2/data" "$l3/data" -type f -exec chmod 0644 {} +
    chmod 0640 "$l3/data/owned"
    mk layers "{\"Cmd\":[\"sh\"],\"WorkingDir\":\"/data\",\"Env\":[$path_env,\"FOO=from-image\"]}" \
        "gzip:$l1,owner=0:0,chown=home/app:1000:1000" "zstd:$l2,owner=0:0" \
        "none:$l3,owner=0:0,chown=data/owned:1000:1000"

    # evil
    mk evil "{\"Cmd\":[\"sh\"],\"Env\":[$path_env]}" "$base" \
        "gzip:,owner=0:0,raw=../escaped,raw=/../../escaped2"

    # caps: cap_net_raw (bit 13) permitted and effective on a copy of busybox.
    t="$trees/caps"
    mkdir -p "$t/capbin" && chmod 0755 "$t/capbin"
    install -m 0755 "$busybox" "$t/capbin/grep"
    cap_net_raw_ep=0100000200200000000000000000000000000000
    mk caps "{\"Cmd\":[\"sh\"],\"Env\":[$path_env]}" "$base" \
        "gzip:$t,owner=0:0,xattr=capbin/grep:security.capability:$cap_net_raw_ep,xattr=capbin/grep:user.skiff:66696c652d63617073"

    # large: 4 x 55 MiB of incompressible bytes.
    t="$trees/large"
    mkdir -p "$t/data" && chmod 0755 "$t/data"
    large=()
    for n in 1 2 3 4; do large+=("gzip:$t,owner=0:0,random=data/random-$n:57671680:$n"); done
    mk large "{\"Cmd\":[\"sh\"],\"Env\":[$path_env]}" "$base" "${large[@]}"
    large_bytes=$(du -sb "$layouts/large/blobs" | cut -f1)
    [ "$large_bytes" -ge $((200 << 20)) ] \
        || { echo "test-images: large is only $large_bytes bytes" >&2; exit 1; }

    # Check every layout with our importer (and skopeo where installed).
    for name in "${images[@]}"; do
        target/release/skiff-image --store "$work/store" import "$layouts/$name" "test-$name:latest" \
            >/dev/null || { echo "test-images: skiff-image refuses $name" >&2; exit 1; }
        if command -v skopeo >/dev/null; then
            skopeo inspect "oci:$layouts/$name:latest" >/dev/null \
                || { echo "test-images: skopeo refuses $name" >&2; exit 1; }
        fi
    done

    rm -rf "$cached"
    mv "$layouts" "$cached"
    touch "$cached/.complete"
    for old in "$cache"/test-images/*; do
        [ "$old" = "$cached" ] || rm -rf "$old"
    done
    say "built in $(( $(date +%s) - start )) s -> $cached"
fi

mkdir -p "$out"
installed=1
for name in "${images[@]}"; do [ -f "$out/$name/index.json" ] || installed=0; done
if [ "$installed" = 0 ] || [ "$(cat "$out/.key" 2>/dev/null)" != "$key" ]; then
    rm -f "$out/.key"
    for name in "${images[@]}"; do
        rm -rf "${out:?}/$name"
        cp -al "$cached/$name" "$out/$name" 2>/dev/null || cp -a "$cached/$name" "$out/$name"
    done
    echo "$key" >"$out/.key"
fi
for name in "${images[@]}"; do
    say "$out/$name ($(du -sh "$out/$name" | cut -f1))"
done
