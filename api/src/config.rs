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
//! token_sha256 = "9f86d0…"                # sha256 of the bearer token, hex (for /v1)
//! max_tasks = 20
//! account_id = "111122223333"            # in the tenant's ECS ARNs (default: from its name)
//! [[tenants.access_keys]]                # AWS access keys for the ECS front end
//! id = "AKIAALICE0000000001"
//! secret = "…"
//!
//! [ecs]                                  # the ECS JSON 1.1 front end (needs access keys)
//! region = "us-east-1"                   # requests must be signed for it
//! listen = "127.0.0.1:7071"              # its own listener; else `POST /` on `listen`
//! # allow_remote = true                  # let `listen` be a non-loopback address (plain HTTP)
//!
//! [registries."127.0.0.1:5000"]
//! plain_http = true
//! # token_hosts = ["auth.example"]       # other hosts whose token service may get credentials
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

use crate::http::ecs::{AccessKey, Keys};
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
    /// sha256 of the `/v1` bearer token, hex.
    pub token_sha256: Option<String>,
    pub max_cpu: Option<u64>,
    pub max_memory_mib: Option<u64>,
    pub max_tasks: Option<u64>,
    /// The account id in the tenant's ECS ARNs (12 digits).
    pub account_id: Option<String>,
    /// AWS access keys (ECS front end).
    #[serde(default)]
    pub access_keys: Vec<AccessKeyConfig>,
}

/// An AWS access key of a tenant.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKeyConfig {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for AccessKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessKeyConfig({}, <redacted>)", self.id)
    }
}

/// The ECS front end.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcsConfig {
    /// The region requests are signed for (default `us-east-1`).
    pub region: Option<String>,
    /// A listener of its own (else ECS answers `POST /` on `listen`).
    pub listen: Option<std::net::SocketAddr>,
    /// `listen` may be a non-loopback address (plain HTTP: for a trusted network or behind a
    /// TLS proxy).
    #[serde(default)]
    pub allow_remote: bool,
}

/// The region of the ECS front end when none is configured.
pub const DEFAULT_REGION: &str = "us-east-1";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default)]
    pub plain_http: bool,
    pub ca_file: Option<PathBuf>,
    /// Hosts besides the registry's own whose token service may receive its credentials (over
    /// HTTPS), e.g. `["auth.docker.io"]`.
    #[serde(default)]
    pub token_hosts: Vec<String>,
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
    #[serde(default)]
    pub ecs: EcsConfig,
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
        let mut key_ids = std::collections::HashSet::new();
        let mut accounts = std::collections::HashSet::new();
        for t in &self.tenants {
            crate::service::validate::check_name("tenant name", &t.name)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if !names.insert(&t.name) {
                return Err(ConfigError::Invalid(format!(
                    "tenant {} appears twice",
                    t.name
                )));
            }
            check_access(t, &mut key_ids)?;
            let account = t
                .account_id
                .clone()
                .unwrap_or_else(|| default_account_id(&t.name));
            if !accounts.insert(account.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "tenant {}: account_id {account} is another tenant's too",
                    t.name
                )));
            }
            let Some(token) = &t.token_sha256 else {
                continue;
            };
            if !tokens.insert(token.to_ascii_lowercase()) {
                return Err(ConfigError::Invalid(format!(
                    "tenant {}: its token is another tenant's too",
                    t.name
                )));
            }
            let hex = token.len() == 64 && token.chars().all(|c| c.is_ascii_hexdigit());
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
        if let Some(addr) = self.listen.filter(|a| !a.ip().is_loopback()) {
            return Err(ConfigError::Invalid(format!(
                "listen {addr}: the /v1 listener is plain HTTP carrying bearer tokens, so it \
                 serves loopback only (put a TLS proxy in front for remote callers)"
            )));
        }
        if let Some(addr) = self
            .ecs
            .listen
            .filter(|a| !a.ip().is_loopback() && !self.ecs.allow_remote)
        {
            return Err(ConfigError::Invalid(format!(
                "ecs.listen {addr}: plain HTTP beyond loopback needs ecs.allow_remote = true \
                 (SigV4 keeps the secret off the wire, but answers travel in clear and a \
                 captured request can be replayed for 15 minutes: put TLS in front)"
            )));
        }
        if self.ecs.listen.is_some() && key_ids.is_empty() {
            return Err(ConfigError::Invalid(
                "ecs.listen needs tenants with access_keys".into(),
            ));
        }
        if let Some(region) = &self.ecs.region {
            let valid = (1..=32).contains(&region.len())
                && region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !valid {
                return Err(ConfigError::Invalid(format!(
                    "ecs.region {region:?}: lowercase letters, digits and '-' (like us-east-1)"
                )));
            }
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

    /// The token hash → tenant map (tenants with a `/v1` token).
    pub fn tenants(&self) -> HashMap<String, Tenant> {
        self.tenants
            .iter()
            .filter_map(|t| Some((t.token_sha256.as_ref()?.to_ascii_lowercase(), t.tenant())))
            .collect()
    }

    /// The ECS front end's access keys and region.
    pub fn ecs_keys(&self) -> Keys {
        let mut keys = HashMap::new();
        for t in &self.tenants {
            let account = t
                .account_id
                .clone()
                .unwrap_or_else(|| default_account_id(&t.name));
            for k in &t.access_keys {
                keys.insert(
                    k.id.clone(),
                    AccessKey {
                        secret: k.secret.clone(),
                        tenant: t.tenant(),
                        account: account.clone(),
                    },
                );
            }
        }
        Keys {
            region: self
                .ecs
                .region
                .clone()
                .unwrap_or_else(|| DEFAULT_REGION.to_owned()),
            keys,
        }
    }
}

impl TenantConfig {
    fn tenant(&self) -> Tenant {
        Tenant {
            name: self.name.clone(),
            max_cpu: self.max_cpu,
            max_memory: self.max_memory_mib,
            max_tasks: self.max_tasks,
        }
    }
}

/// A tenant's account id when none is configured: 12 digits from the sha256 of its name.
pub fn default_account_id(tenant: &str) -> String {
    sha2::Sha256::digest(tenant.as_bytes())
        .iter()
        .take(12)
        .map(|b| char::from(b'0' + b % 10))
        .collect()
}

/// A tenant's way in (a token or access keys) and its keys' shape; key ids unique.
fn check_access(
    t: &TenantConfig,
    key_ids: &mut std::collections::HashSet<String>,
) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(format!("tenant {}: {m}", t.name)));
    if t.token_sha256.is_none() && t.access_keys.is_empty() {
        return invalid("needs token_sha256 or access_keys".into());
    }
    if let Some(a) = &t.account_id {
        if a.len() != 12 || !a.chars().all(|c| c.is_ascii_digit()) {
            return invalid(format!("account_id {a:?} must be 12 digits"));
        }
    }
    for k in &t.access_keys {
        let id_ok =
            (16..=128).contains(&k.id.len()) && k.id.chars().all(|c| c.is_ascii_alphanumeric());
        if !id_ok {
            return invalid(format!(
                "access key id {:?} must be 16-128 letters and digits",
                k.id
            ));
        }
        if k.secret.len() < 16 || k.secret.chars().any(|c| c.is_control()) {
            return invalid(format!(
                "the secret of access key {} must be at least 16 printable characters",
                k.id
            ));
        }
        if !key_ids.insert(k.id.clone()) {
            return invalid(format!("access key id {} appears twice", k.id));
        }
    }
    Ok(())
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

#[cfg(test)]
mod ecs_tests {
    use super::*;

    #[test]
    fn access_keys_make_ecs_keys_with_accounts() {
        let text = r#"
            [ecs]
            region = "eu-west-1"
            listen = "127.0.0.1:7071"
            [[tenants]]
            name = "alice"
            account_id = "111122223333"
            [[tenants.access_keys]]
            id = "AKIAALICE0000000001"
            secret = "0123456789abcdef/+x"
            [[tenants]]
            name = "bob"
            token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            [[tenants.access_keys]]
            id = "AKIABOB00000000001"
            secret = "fedcba9876543210"
        "#;
        let config: Config = toml::from_str(text).unwrap();
        config.check().unwrap();
        let keys = config.ecs_keys();
        assert_eq!(keys.region, "eu-west-1");
        assert_eq!(keys.keys["AKIAALICE0000000001"].account, "111122223333");
        let bob = &keys.keys["AKIABOB00000000001"];
        assert_eq!(bob.tenant.name, "bob");
        assert_eq!(bob.account, default_account_id("bob"));
        assert_eq!(bob.account.len(), 12);
        assert_ne!(default_account_id("bob"), default_account_id("alice"));
        assert_eq!(config.tenants().len(), 1, "only bob has a /v1 token");
        assert!(
            !format!("{config:?}").contains("fedcba9876543210"),
            "secrets stay out of logs"
        );
    }

    #[test]
    fn bad_keys_and_regions_are_named() {
        for (text, needle) in [
            ("[[tenants]]\nname = \"a\"", "token_sha256 or access_keys"),
            ("[[tenants]]\nname = \"a\"\naccount_id = \"12\"\n[[tenants.access_keys]]\nid = \"AKIAALICE0000000001\"\nsecret = \"0123456789abcdef\"", "12 digits"),
            ("[[tenants]]\nname = \"a\"\n[[tenants.access_keys]]\nid = \"short\"\nsecret = \"0123456789abcdef\"", "16-128"),
            ("[[tenants]]\nname = \"a\"\n[[tenants.access_keys]]\nid = \"AKIAALICE0000000001\"\nsecret = \"x\"", "at least 16"),
            ("[ecs]\nlisten = \"127.0.0.1:1\"", "access_keys"),
            ("[ecs]\nregion = \"US East\"", "ecs.region"),
            ("[ecs]\nlisten = \"10.0.0.1:7071\"\n[[tenants]]\nname = \"a\"\n[[tenants.access_keys]]\nid = \"AKIAALICE0000000001\"\nsecret = \"0123456789abcdef\"", "allow_remote"),
            ("[[tenants]]\nname = \"a\"\ntoken_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n[[tenants]]\nname = \"a\"\n[[tenants.access_keys]]\nid = \"AKIAALICE0000000001\"\nsecret = \"0123456789abcdef\"", "appears twice"),
            ("[[tenants]]\nname = \"a\"\naccount_id = \"111111111111\"\n[[tenants.access_keys]]\nid = \"AKIAALICE0000000001\"\nsecret = \"0123456789abcdef\"\n[[tenants]]\nname = \"b\"\naccount_id = \"111111111111\"\n[[tenants.access_keys]]\nid = \"AKIAALICE0000000002\"\nsecret = \"0123456789abcdef\"", "another tenant's too"),
            ("listen = \"0.0.0.0:7070\"\n[[tenants]]\nname = \"a\"\ntoken_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"", "loopback only"),
        ] {
            let c: Config = toml::from_str(text).unwrap();
            let e = c.check().unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let twice = "[[tenants]]\nname = \"a\"\n[[tenants.access_keys]]\nid = \"AKIAALICE0000000001\"\nsecret = \"0123456789abcdef\"\n[[tenants]]\nname = \"b\"\n[[tenants.access_keys]]\nid = \"AKIAALICE0000000001\"\nsecret = \"0123456789abcdef\"";
        let c: Config = toml::from_str(twice).unwrap();
        assert!(c.check().unwrap_err().to_string().contains("twice"));
    }
}
