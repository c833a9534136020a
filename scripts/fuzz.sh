#!/usr/bin/env bash
# Fuzzes every parser of untrusted input that has a target in fuzz/fuzz_targets/, each for a
# bounded time (default 60 s each):
#   scripts/fuzz.sh [SECONDS] [TARGET ...]
#     block_request      virtio-blk requests: descriptor chains and guest memory (hostile guest)
#     control_frames     the control channel's frames and messages, both ends (hostile guest)
#     image_disk_header  the image disk's header block as guest-init reads it
#     registry_input     WWW-Authenticate challenges (any registry) and image names (API input)
# Uses cargo-fuzz (installed from crates.io if missing) with libFuzzer. The toolchain here is
# stable, so RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its sanitizer flags. Each target's corpus
# grows in fuzz/corpus/<target>/ (not committed). Any crash fails the script, naming the target.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(block_request control_frames image_disk_header registry_input)
command -v cargo-fuzz >/dev/null || cargo install --locked -q cargo-fuzz
cd "$root/fuzz"
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "fuzz: $target for ${seconds}s"
    if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 >"corpus/$target.log" 2>&1; then
        tail -n 40 "corpus/$target.log"
        echo "fuzz: $target FAILED (log: fuzz/corpus/$target.log)" >&2
        exit 1
    fi
    grep -E "^(#[0-9]+.*DONE|Done|stat::number_of_executed_units|stat::peak_rss_mb)" \
        "corpus/$target.log" | tail -n 3
done
