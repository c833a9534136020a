//! skiffd in the nested test host: the binaries (`skiffd`, `skiff-monitor`, `skiff`, the static
//! `skiff-vmm` and `skiff-jailer`), an image store filled from the test images at `/data/images`,
//! a configuration with two tenants, and shell functions to start it and call it.

use std::path::Path;

use api::config::token_hash;

use crate::artefacts::{bin_dir, Artefact};
use crate::containers::ContainerHostError;
use crate::nested::NestedHost;

/// The tenants' tokens.
pub const TOKEN_A: &str = "token-of-tenant-a";
pub const TOKEN_B: &str = "token-of-tenant-b";

/// Capacity the nested skiffd offers: ten of the smallest tasks.
pub const CAPACITY_CPU: u32 = 2560;

/// The tenants' AWS access keys (id, secret) and account ids for the ECS front end (the
/// clients in `tests/ecs/common.py` use the same).
pub const ECS_KEY_A: (&str, &str) = ("AKIASKIFFTENANTA0001", "tenant-a-secret/0123456789+abc");
pub const ECS_KEY_B: (&str, &str) = ("AKIASKIFFTENANTB0001", "tenant-b-secret/0123456789+abc");
/// Where the nested skiffd answers ECS (on the nested host's NIC, see `nested_live`).
pub const ECS_PORT: u16 = 7071;

/// The ECS section and a tenant's access key, when ECS is on.
fn ecs_parts(ecs: bool) -> (String, String, String) {
    if !ecs {
        return Default::default();
    }
    let key = |(id, secret): (&str, &str), account: &str| {
        format!("account_id = \"{account}\"\n[[tenants.access_keys]]\nid = \"{id}\"\nsecret = \"{secret}\"\n")
    };
    (
        format!(
            "[ecs]\nregion = \"eu-west-1\"\nlisten = \"{}:{ECS_PORT}\"\nallow_remote = true\n",
            crate::nested_live::GUEST_ADDR
        ),
        key(ECS_KEY_A, "111111111111"),
        key(ECS_KEY_B, "222222222222"),
    )
}

/// skiffd's configuration in the nested host (with the ECS front end when `ecs`).
pub fn config(jailed: bool, ecs: bool) -> String {
    let jailer = if jailed {
        "jailer = \"/skiff/skiff-jailer\"\n"
    } else {
        ""
    };
    let (ecs_section, keys_a, keys_b) = ecs_parts(ecs);
    format!(
        r#"data_dir = "/data"
socket = "/run/skiff/skiffd.sock"
listen = "127.0.0.1:7070"
retention_seconds = 3600

[capacity]
cpu = {CAPACITY_CPU}
memory_mib = 65536

[executor]
vmm = "/skiff/skiff-vmm"
monitor = "/skiff/skiff-monitor"
kernel = "/skiff/vmlinux"
initramfs = "/skiff/initramfs.cpio"
{jailer}boot_timeout_seconds = 300

{ecs_section}
[[tenants]]
name = "a"
token_sha256 = "{}"
{keys_a}
[[tenants]]
name = "b"
token_sha256 = "{}"
max_tasks = 2
{keys_b}"#,
        token_hash(TOKEN_A),
        token_hash(TOKEN_B)
    )
}

/// Shell functions for nested scripts: `start_skiffd` (in the background, waiting until it
/// answers; its pid in `/tmp/skiffd.pid`, since cases run in subshells), `kill_skiffd [SIGNAL]`,
/// `skiff` (tenant a's CLI), `as_b` (tenant b's), `wait_log ID TEXT` (until the task's log shows
/// TEXT), `pid_of TEXT` (the pids whose command line contains TEXT; busybox here has no pgrep).
pub fn prelude() -> String {
    format!(
        r#"mkdir -p /run/skiff /etc/skiff
echo 1 > /proc/sys/kernel/printk
export SKIFF_HOST=unix:///run/skiff/skiffd.sock SKIFF_TOKEN={TOKEN_A}
skiff() {{ /skiff/skiff "$@"; }}
as_b() {{ SKIFF_TOKEN={TOKEN_B} /skiff/skiff "$@"; }}
start_skiffd() {{
    /skiff/skiffd --config /etc/skiff/skiffd.toml >> /tmp/skiffd.log 2>&1 &
    echo $! > /tmp/skiffd.pid
    i=0; until skiff capacity > /dev/null 2>&1 || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done
}}
kill_skiffd() {{
    p=$(cat /tmp/skiffd.pid); kill -${{1:-KILL}} $p
    i=0; while [ -d /proc/$p ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
}}
pid_of() {{
    for d in /proc/[0-9]*; do
        tr '\0' ' ' < $d/cmdline 2>/dev/null | grep -q -- "$1" && echo ${{d#/proc/}}
    done | grep -v "^$$\$" || true
}}
wait_log() {{
    i=0; until skiff logs "$1" 2>/dev/null | grep -q "$2" || [ $i -ge 600 ]; do sleep 0.2; i=$((i+1)); done
}}
"#
    )
}

/// A nested host with skiffd and the images in `store` (ECS on when `ecs`).
pub fn skiffd_host(
    store: &Path,
    jailed: bool,
    ecs: bool,
) -> Result<NestedHost, ContainerHostError> {
    let mut host = NestedHost::with_skiff()?;
    host.binary("skiff/skiffd", &bin_dir().join("skiffd"))?
        .binary("skiff/skiff-monitor", &Artefact::SkiffMonitor.path())?
        .binary("skiff/skiff", &bin_dir().join("skiff"))?
        .binary("skiff/skiff-jailer", &Artefact::SkiffJailer.path())?
        .binary("sbin/mkfs.ext4", Path::new("/sbin/mkfs.ext4"))?
        .dir("data/images", store)?
        .bytes(
            "etc/skiff/skiffd.toml",
            0o600,
            config(jailed, ecs).as_bytes(),
        )?;
    Ok(host)
}
