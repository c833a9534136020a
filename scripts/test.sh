#!/usr/bin/env bash
# The project's test command: set-up (cached, so quick when nothing changed), format and lint
# checks, then every test of the verification ladder: unit tests, tiny guests on /dev/kvm, the
# guest under QEMU TCG, and real guests on skiff-vmm inside the nested test host; then a short
# fuzzing run of the virtio-blk request parser.
# Tests that need /dev/kvm or QEMU fail when those are missing, unless SKIFF_ALLOW_SKIP=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

scripts/setup.sh
echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy -q --workspace --all-targets -- -D warnings
echo "test: cargo test"
# Binaries the end-to-end tests run come from target/release (built by setup.sh).
cargo test --workspace -- --test-threads=2
echo "test: fuzzing the virtio-blk request parser (20 s)"
scripts/fuzz.sh 20
