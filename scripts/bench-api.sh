#!/usr/bin/env bash
# API benchmark, inside one nested test host: skiffd (jailed tasks, as deployed) against
# `skiff-run` of the same task in the same run: 1 vCPU (1024 CPU units, whose jail gets a whole
# CPU's quota) and 2048 MiB. (A 256-unit task's jail gets a quarter CPU, as on Fargate, and
# boots about 4x slower under that quota.)
#   - RunTask -> RUNNING (startedAt) and -> STOPPED (stoppedAt) for busybox `true`, p50/p90, as a
#     ratio to skiff-run's container start and VMM exit (RUNS runs each, alternating);
#   - tasks launched per second with 1, 5 and 10 concurrent clients (LAUNCHES tasks each);
#   - idle skiffd RSS, per-task monitor RSS;
#   - DescribeTasks latency p50/p99 (2000 requests, 4 clients, over the Unix socket).
# Targets: API + monitor + jailer overhead on top of skiff-run <= 10 % (p50 to STOPPED), monitor
# RSS <= 2 MiB, no failed or lost launch. Times in the nested host are emulated: ratios count.
#   scripts/bench-api.sh [RUNS] [LAUNCHES]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-8}
launches=${2:-10}

for f in target/guest/vmlinux target/guest/initramfs.cpio target/test-host/vmlinux \
    target/test-images/busybox/index.json; do
    [ -f "$f" ] || { echo "bench-api: $f is missing: run scripts/setup.sh first" >&2; exit 1; }
done
static=target/x86_64-unknown-linux-gnu/release
cargo build -q --release -p skiff-tests -p images -p api --bins
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target x86_64-unknown-linux-gnu -p vmm --bins
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target x86_64-unknown-linux-gnu -p api --bin skiff-monitor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/skiff-image --store "$work/store" import target/test-images/busybox busybox:latest >/dev/null
store_files=()
while IFS= read -r f; do store_files+=(--file "$work/store/$f=/data/images/$f"); done \
    < <(cd "$work/store" && find . -type f | sed 's|^\./||')
token=bench-token
cat > "$work/skiffd.toml" <<TOML
data_dir = "/data"
socket = "/run/skiff/skiffd.sock"
[capacity]
cpu = 10240
memory_mib = 65536
[executor]
vmm = "/skiff/skiff-vmm"
monitor = "/skiff/skiff-monitor"
kernel = "/skiff/vmlinux"
initramfs = "/skiff/initramfs.cpio"
jailer = "/skiff/skiff-jailer"
boot_timeout_seconds = 600
[[tenants]]
name = "bench"
token_sha256 = "$(printf %s "$token" | sha256sum | cut -d' ' -f1)"
TOML

target/release/skiff-nested \
    --binary "$static/skiff-vmm=/skiff/skiff-vmm" \
    --binary "$static/skiff-jailer=/skiff/skiff-jailer" \
    --binary target/release/skiffd=/skiff/skiffd \
    --binary "$static/skiff-monitor=/skiff/skiff-monitor" \
    --binary target/release/skiff=/skiff/skiff \
    --binary target/release/skiff-run=/skiff/skiff-run \
    --binary target/release/skiff-apibench=/skiff/skiff-apibench \
    --binary "$(command -v mkfs.ext4)=/sbin/mkfs.ext4" \
    --file target/guest/vmlinux=/skiff/vmlinux \
    --file target/guest/initramfs.cpio=/skiff/initramfs.cpio \
    --file "$work/skiffd.toml=/etc/skiff/skiffd.toml" \
    "${store_files[@]}" \
    --memory-mib 4096 --timeout 3000 --append kvm.tdp_mmu=0 \
    - <<SCRIPT | tee "$work/out"
echo 1 > /proc/sys/kernel/printk
mkdir -p /run/skiff /tmp/runs
export SKIFF_TOKEN=$token SKIFF_HOST=unix:///run/skiff/skiffd.sock
pid_of() { for d in /proc/[0-9]*; do tr '\\0' ' ' < \$d/cmdline 2>/dev/null | grep -q -- "\$1" && echo \${d#/proc/}; done | head -n 1; }
/skiff/skiffd --config /etc/skiff/skiffd.toml 2> /tmp/skiffd.log &
i=0; until /skiff/skiff capacity > /dev/null 2>&1 || [ \$i -ge 300 ]; do sleep 0.1; i=\$((i+1)); done
echo bench rss skiffd-idle \$(grep VmRSS /proc/\$(pid_of "/skiff/skiffd --config")/status | awk '{print \$2}')
for i in \$(seq $runs); do
    /skiff/skiff-run --store /data/images --vmm /skiff/skiff-vmm --kernel /skiff/vmlinux \
        --initramfs /skiff/initramfs.cpio --image busybox:latest --cpus 1 --memory-mib 2048 \
        --run-dir /tmp/runs --timings -- true 2>&1 \
        | sed -n 's/.*timings: vmm spawn [0-9.]* ms, hello [0-9.]* ms, started \([0-9.]*\) ms, exited [0-9.]* ms, vmm exit \([0-9.]*\) ms.*/bench run running \1\nbench run stopped \2/p'
    /skiff/skiff-apibench launch --clients 1 --tasks 1 busybox:latest -- true \
        | sed -n 's/^bench launch 1 running \([0-9]*\) stopped \([0-9]*\)/bench api running \1\nbench api stopped \2/p'
done
for c in 1 5 10; do /skiff/skiff-apibench launch --clients \$c --tasks $launches busybox:latest -- true | grep -E '^bench (rate|failures)'; done
ID=\$(/skiff/skiff run -d --init busybox:latest -- sleep 600)
/skiff/skiff wait --status RUNNING \$ID > /dev/null
echo bench rss monitor \$(grep VmRSS /proc/\$(pid_of "skiff-monitor --task-dir /data/tasks/\$ID")/status | awk '{print \$2}')
/skiff/skiff-apibench describe --clients 4 --requests 2000 \$ID
/skiff/skiff stop \$ID > /dev/null; /skiff/skiff wait \$ID > /dev/null || true
SCRIPT

pct() { # "label metric" percentile
    grep "^bench $1 " "$work/out" | awk '{print $NF}' | sort -n \
        | awk -v p="$2" '{a[NR]=$1} END {if (NR == 0) {print "-"; exit} i = int((NR - 1) * p / 100 + 0.5) + 1; print a[i]}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a/b; else print "-"}'; }
echo
echo "| busybox \`true\`, nested, ms ($runs runs each) | skiff-run p50 / p90 | skiffd RunTask p50 / p90 | ratio (p50) |"
echo "|---|---|---|---|"
for m in running stopped; do
    echo "| to $(tr a-z A-Z <<< "$m") | $(pct "run $m" 50) / $(pct "run $m" 90) | $(pct "api $m" 50) / $(pct "api $m" 90) | $(ratio "$(pct "api $m" 50)" "$(pct "run $m" 50)") |"
done
echo
echo "| concurrent clients | tasks launched per second (to STOPPED) | failed |"
echo "|---|---|---|"
for c in 1 5 10; do
    echo "| $c | $(grep "^bench rate $c " "$work/out" | awk '{print $4}') | $(grep "^bench failures $c " "$work/out" | awk '{print $4}') |"
done
grep '^bench describe' "$work/out" | awk '{print $3}' > "$work/describe"
echo
echo "idle skiffd RSS: $(grep '^bench rss skiffd-idle' "$work/out" | awk '{print $4}') KiB; monitor RSS: $(grep '^bench rss monitor' "$work/out" | awk '{print $4}') KiB (target <= 2048)"
echo "DescribeTasks (4 clients, $(wc -l < "$work/describe") requests, $(grep -c 'failed$' "$work/out" || true) failed): p50 $(sort -n "$work/describe" | awk '{a[NR]=$1} END {print a[int(NR*0.5)+1]}') us, p99 $(sort -n "$work/describe" | awk '{a[NR]=$1} END {print a[int(NR*0.99)]}') us"
