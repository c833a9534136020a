#!/usr/bin/env bash
# Fuzzes the virtio-blk request parser for a bounded time (default 60 s):
#   scripts/fuzz.sh [SECONDS]
# Uses cargo-fuzz (installed from crates.io if missing) with libFuzzer. The toolchain here is
# stable, so RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its sanitizer flags.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install --locked -q cargo-fuzz
cd "$root/fuzz"
mkdir -p corpus/block_request
RUSTC_BOOTSTRAP=1 cargo fuzz run block_request corpus/block_request -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 2>&1 | tail -n 25
