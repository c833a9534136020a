#!/usr/bin/env bash
# Runs nested end-to-end tests N times each, as a user would (one at a time), and reports per
# test how often each run passed at once, passed only after the harness retried an emulation
# failure, failed because the emulation crashed or froze, or failed for real (a bug to fix, not
# to retry). Logs of every run stay in target/flake-rate/.
#   scripts/flake-rate.sh [N] [TEST ...]      (default: 3 runs of every nested_* test)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-3}
shift || true
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
    for f in tests/tests/nested_*.rs; do tests+=("$(basename "$f" .rs)"); done
fi
out=target/flake-rate
mkdir -p "$out"
cargo test -q -p skiff-tests --no-run --tests 2>/dev/null

printf '%-20s %5s %6s %13s %15s %11s\n' test runs passed after-retry emulation-fail real-fail
for t in "${tests[@]}"; do
    passed=0 retried=0 emulation=0 real=0
    for i in $(seq 1 "$runs"); do
        log="$out/$t-$i.log"
        if cargo test -q -p skiff-tests --test "$t" -- --nocapture >"$log" 2>&1; then
            if grep -q "^RETRY nested host" "$log"; then retried=$((retried + 1)); else passed=$((passed + 1)); fi
        elif grep -qE "emulation crashed|froze|went silent|reset itself|Hardware name: QEMU|triple fault" "$log"; then
            emulation=$((emulation + 1))
        else
            real=$((real + 1))
        fi
    done
    printf '%-20s %5s %6s %13s %15s %11s\n' "$t" "$runs" "$passed" "$retried" "$emulation" "$real"
done
