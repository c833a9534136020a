//! skiffd's configuration: a TOML file (every key optional) and flags that override it.
//!
//! ```toml
//! data_dir = "/var/lib/skiff"            # state.db, images/, tasks/
//! socket = "/run/skiff/skiffd.sock"
//! listen = "127.0.0.1:7070"              # optional TCP listener
//! retention_seconds = 3600               # how long STOPPED tasks are kept
//!
//! [capacity]                             # default: the host less a reserve
//! cpu = 3072                             # CPU units (1024 = one vCPU)
//! memory_mib = 14336
//!
//! [executor]
//! kernel = "/var/lib/skiff/vmlinux"
//! initramfs = "/var/lib/skiff/initramfs.cpio"
//! jailer = "/usr/local/bin/skiff-jailer" # default: beside skiffd; vmm must be the static build
//! # jailed = false                       # development only: VMMs run unjailed, as root
//! uid_base = 100000                      # jail uids: uid_base .. uid_base + uid_count
//! uid_count = 10000
//!
//! [[tenants]]
//! name = "alice"
//! token_sha256 = "9f86d0…"                # sha256 of the bearer token, hex
//! max_tasks = 20
//!
//! [registries."127.0.0.1:5000"]
//! plain_http = true
//!
//! [credentials.private-registry]         # repositoryCredentials.credentialsParameter
//! username = "u"
//! password = "p"
//! registry = "registry.example:5000"     # sent to this registry only
//! tenants = ["alice"]                    # who may use them
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::Digest as _;

use crate::service::Tenant;

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityConfig {
    pub cpu: Option<u64>,
    pub memory_mib: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    pub vmm: Option<PathBuf>,
    pub monitor: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
    pub initramfs: Option<PathBuf>,
    /// `skiff-jailer` (default: beside skiffd).
    pub jailer: Option<PathBuf>,
    /// Tasks run jailed unless this is false (development only: the VMM then runs as root).
    pub jailed: Option<bool>,
    pub chroot_base: Option<PathBuf>,
    pub uid_base: Option<u32>,
    pub uid_count: Option<u32>,
    pub boot_timeout_seconds: Option<u64>,
    pub log_max_mib: Option<u64>,
    pub vmm_overhead_mib: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    /// sha256 of the bearer token, hex.
    pub token_sha256: String,
    pub max_cpu: Option<u64>,
    pub max_memory_mib: Option<u64>,
    pub max_tasks: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default)]
    pub plain_http: bool,
    pub ca_file: Option<PathBuf>,
}

/// Named registry credentials: sent only to `registry`, usable only by `tenants`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    pub username: String,
    pub password: String,
    /// The one registry (`host[:port]`) they are for.
    pub registry: String,
    /// The tenants that may use them (none listed: the default tenant only).
    #[serde(default)]
    pub tenants: Vec<String>,
}

impl std::fmt::Debug for CredentialConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CredentialConfig({}, <redacted>)", self.username)
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub listen: Option<std::net::SocketAddr>,
    pub retention_seconds: Option<u64>,
    #[serde(default)]
    pub capacity: CapacityConfig,
    #[serde(default)]
    pub executor: ExecutorConfig,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    #[serde(default)]
    pub registries: HashMap<String, RegistryConfig>,
    #[serde(default)]
    pub credentials: HashMap<String, CredentialConfig>,
}

pub const DEFAULT_DATA_DIR: &str = "/var/lib/skiff";
pub const DEFAULT_SOCKET: &str = "/run/skiff/skiffd.sock";
/// The tenant of a skiffd configured without tenants (reachable on its Unix socket only).
pub const DEFAULT_TENANT: &str = "default";

/// The hex sha256 of a token, as the configuration stores it.
pub fn token_hash(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Config {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.check()?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        let mut tokens = std::collections::HashSet::new();
        for t in &self.tenants {
            if !tokens.insert(t.token_sha256.to_ascii_lowercase()) {
                return Err(ConfigError::Invalid(format!(
                    "tenant {}: its token is another tenant's too",
                    t.name
                )));
            }
            crate::service::validate::check_name("tenant name", &t.name)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if !names.insert(&t.name) {
                return Err(ConfigError::Invalid(format!(
                    "tenant {} appears twice",
                    t.name
                )));
            }
            let hex =
                t.token_sha256.len() == 64 && t.token_sha256.chars().all(|c| c.is_ascii_hexdigit());
            if !hex {
                return Err(ConfigError::Invalid(format!(
                    "tenant {}: token_sha256 must be 64 hex digits (sha256sum of the token)",
                    t.name
                )));
            }
        }
        if self.listen.is_some() && self.tenants.is_empty() {
            return Err(ConfigError::Invalid(
                "a TCP listener needs tenants with tokens (without tenants skiffd serves its Unix socket only)".into(),
            ));
        }
        if self.executor.uid_base.is_some_and(|b| b == 0) {
            return Err(ConfigError::Invalid(
                "executor.uid_base must not be 0 (root)".into(),
            ));
        }
        Ok(())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into())
    }

    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into())
    }

    /// The tenants, and the token hash → tenant map.
    pub fn tenants(&self) -> HashMap<String, Tenant> {
        self.tenants
            .iter()
            .map(|t| {
                (
                    t.token_sha256.to_ascii_lowercase(),
                    Tenant {
                        name: t.name.clone(),
                        max_cpu: t.max_cpu,
                        max_memory: t.max_memory_mib,
                        max_tasks: t.max_tasks,
                    },
                )
            })
            .collect()
    }
}

/// The host's CPUs and memory (MiB).
pub fn host_resources() -> (u64, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(1024, |kib| kib / 1024);
    (cpus, memory)
}

/// Default capacity: the host's CPUs and memory less a reserve for the host (one CPU when it
/// has more than one; 1 GiB or a quarter of memory, whichever is smaller).
pub fn default_capacity() -> (u64, u64) {
    let (cpus, memory) = host_resources();
    let cpu = if cpus > 1 { (cpus - 1) * 1024 } else { 1024 };
    let reserve = (memory / 4).min(1024);
    (cpu, memory.saturating_sub(reserve))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_configuration_parses_and_checks() {
        let text = format!(
            r#"
            data_dir = "/tmp/x"
            listen = "127.0.0.1:7070"
            [capacity]
            cpu = 2048
            [executor]
            uid_base = 100000
            [[tenants]]
            name = "alice"
            token_sha256 = "{}"
            max_tasks = 2
            [registries."127.0.0.1:5000"]
            plain_http = true
            [credentials.reg]
            username = "u"
            password = "p"
            registry = "127.0.0.1:5000"
            tenants = ["alice"]
            "#,
            token_hash("secret")
        );
        let config: Config = toml::from_str(&text).unwrap();
        config.check().unwrap();
        let tenants = config.tenants();
        assert_eq!(tenants[&token_hash("secret")].name, "alice");
        assert!(!format!("{:?}", config.credentials).contains("\"p\""));
    }

    #[test]
    fn mistakes_are_named() {
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        let c: Config = toml::from_str("listen = \"127.0.0.1:1\"").unwrap();
        assert!(c.check().unwrap_err().to_string().contains("tenants"));
        let c: Config =
            toml::from_str("[[tenants]]\nname = \"a\"\ntoken_sha256 = \"xyz\"").unwrap();
        assert!(c.check().unwrap_err().to_string().contains("64 hex"));
        let (cpu, memory) = default_capacity();
        assert!(cpu >= 1024 && memory > 0);
    }
}
