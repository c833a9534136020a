#!/usr/bin/env bash
# The project's test command: set-up (cached, so quick when nothing changed), format and lint
# checks, a short fuzzing run of every fuzz target (scripts/fuzz.sh), then every test of the
# verification ladder: unit tests, tiny guests on /dev/kvm, the guest under QEMU TCG, and real
# guests on skiff-vmm inside the nested test host. Ends with one "N passed, N failed" line.
# Tests that need /dev/kvm or QEMU fail when those are missing, unless SKIFF_ALLOW_SKIP=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

scripts/setup.sh
echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy -q --workspace --all-targets -- -D warnings
echo "test: fuzzing each parser of untrusted input (15 s each)"
scripts/fuzz.sh 15
echo "test: cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Binaries the end-to-end tests run come from target/release (built by setup.sh).
status=0
cargo test --workspace --no-fail-fast --lib --bins --tests -- --test-threads=2 2>&1 | tee "$log" || status=$?
passed=$(sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\1/p' "$log" | paste -sd+ | bc)
failed=$(sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\2/p' "$log" | paste -sd+ | bc)
skipped=$(grep -c 'SKIPPED ' "$log" || true)
echo "tests: ${passed:-0} passed, ${failed:-0} failed, $skipped skipped"
exit "$status"
