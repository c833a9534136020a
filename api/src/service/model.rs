//! The service's objects: task definitions, tasks, their statuses and events. They serialise in
//! the `/v1` API's JSON shape (camelCase, as ECS names its fields; times as RFC 3339); the ECS
//! front end maps them to its own shapes.

use serde::{Deserialize, Serialize};

use crate::executor::privileges::{self, PrivilegeSettings, UlimitSetting};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Times as RFC 3339 (UTC, milliseconds) in JSON.
pub mod rfc3339 {
    use super::Millis;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn format(ms: Millis) -> String {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
        humantime::format_rfc3339_millis(t).to_string()
    }

    /// Parses RFC 3339, or a number of seconds since the epoch.
    pub fn parse(text: &str) -> Option<Millis> {
        if let Ok(secs) = text.parse::<f64>() {
            return (0.0..1e12)
                .contains(&secs)
                .then_some((secs * 1000.0) as i64);
        }
        let t = humantime::parse_rfc3339_weak(text).ok()?;
        let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
        i64::try_from(d.as_millis()).ok()
    }

    pub fn serialize<S: Serializer>(value: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(ms) => s.serialize_str(&format(*ms)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        match text {
            None => Ok(None),
            Some(t) => parse(&t)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("{t:?} is not an RFC 3339 time"))),
        }
    }
}

/// A task's observed status, in the order ECS moves through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    Provisioning,
    Pending,
    Activating,
    Running,
    Deactivating,
    Stopping,
    Deprovisioning,
    Stopped,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 8] = [
        TaskStatus::Provisioning,
        TaskStatus::Pending,
        TaskStatus::Activating,
        TaskStatus::Running,
        TaskStatus::Deactivating,
        TaskStatus::Stopping,
        TaskStatus::Deprovisioning,
        TaskStatus::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Provisioning => "PROVISIONING",
            TaskStatus::Pending => "PENDING",
            TaskStatus::Activating => "ACTIVATING",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Deactivating => "DEACTIVATING",
            TaskStatus::Stopping => "STOPPING",
            TaskStatus::Deprovisioning => "DEPROVISIONING",
            TaskStatus::Stopped => "STOPPED",
        }
    }

    pub fn parse(text: &str) -> Option<TaskStatus> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// What the user wants of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DesiredStatus {
    Running,
    Stopped,
}

impl DesiredStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredStatus::Running => "RUNNING",
            DesiredStatus::Stopped => "STOPPED",
        }
    }

    pub fn parse(text: &str) -> Option<DesiredStatus> {
        match text {
            "RUNNING" => Some(DesiredStatus::Running),
            "STOPPED" => Some(DesiredStatus::Stopped),
            _ => None,
        }
    }
}

/// Why a task stopped, as ECS says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopCode {
    TaskFailedToStart,
    EssentialContainerExited,
    UserInitiated,
    ServiceSchedulerInitiated,
}

/// A key-value tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// An environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// A container port the task publishes (used by task networking).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMapping {
    pub container_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

fn default_protocol() -> String {
    "tcp".into()
}

/// Credentials for a private registry: the name of a credential in skiffd's configuration (the
/// secret itself never enters the state store or the API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepositoryCredentials {
    pub credentials_parameter: String,
}

/// One container of a task definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerDefinition {
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_point: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
    /// Seconds between SIGTERM and SIGKILL when the task is stopped (2-120; 30 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<u32>,
    #[serde(default = "yes")]
    pub essential: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_credentials: Option<RepositoryCredentials>,
    /// Container-level reservations (stored; the task-level values size the VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
    /// Capabilities added to or dropped from Docker's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux_parameters: Option<LinuxParameters>,
    /// Resource limits (`nofile` is 65535 unless given, as on Fargate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
    /// `no-new-privileges[=true|false]`: on unless the task turns it off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub docker_security_options: Vec<String>,
}

/// `linuxParameters`: what Skiff applies of it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinuxParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<KernelCapabilities>,
    /// An init process runs the program as its child (forwarding signals, reaping orphans);
    /// otherwise the program is PID 1 of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_process_enabled: Option<bool>,
}

/// `linuxParameters.capabilities`: names as in capabilities(7) without `CAP_`, or `ALL`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelCapabilities {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
}

/// One `ulimits` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ulimit {
    pub name: String,
    pub soft_limit: u64,
    pub hard_limit: u64,
}

impl ContainerDefinition {
    /// Whether the program runs under an init process (`linuxParameters.initProcessEnabled`).
    pub fn init_process(&self) -> bool {
        self.linux_parameters
            .as_ref()
            .and_then(|p| p.init_process_enabled)
            .unwrap_or(false)
    }

    /// What the container's process may do, by name (checked by [`PrivilegeSettings::resolve`]).
    pub fn privileges(&self) -> Result<PrivilegeSettings, String> {
        let caps = self
            .linux_parameters
            .as_ref()
            .and_then(|p| p.capabilities.clone())
            .unwrap_or_default();
        let mut no_new_privileges = true;
        for option in &self.docker_security_options {
            no_new_privileges = privileges::parse_security_opt(option)?;
        }
        Ok(PrivilegeSettings {
            cap_add: caps.add,
            cap_drop: caps.drop,
            no_new_privileges,
            ulimits: self
                .ulimits
                .iter()
                .map(|u| UlimitSetting {
                    name: u.name.clone(),
                    soft: u.soft_limit,
                    hard: u.hard_limit,
                })
                .collect(),
        })
    }
}

fn yes() -> bool {
    true
}

/// `ephemeralStorage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EphemeralStorage {
    pub size_in_gi_b: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DefinitionStatus {
    Active,
    Inactive,
}

impl DefinitionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DefinitionStatus::Active => "ACTIVE",
            DefinitionStatus::Inactive => "INACTIVE",
        }
    }
}

/// A registered revision of a task definition family (immutable but for its status).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefinition {
    pub family: String,
    pub revision: u32,
    pub status: DefinitionStatus,
    /// CPU units (1024 = one vCPU).
    pub cpu: u32,
    /// MiB.
    pub memory: u32,
    pub ephemeral_storage: EphemeralStorage,
    pub container_definitions: Vec<ContainerDefinition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    #[serde(with = "rfc3339")]
    pub registered_at: Option<Millis>,
    #[serde(default, with = "rfc3339", skip_serializing_if = "Option::is_none")]
    pub deregistered_at: Option<Millis>,
}

impl TaskDefinition {
    /// `family:revision`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.family, self.revision)
    }
}

/// Overrides of one container at RunTask.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerOverride {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
}

/// Overrides at RunTask.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskOverrides {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_overrides: Vec<ContainerOverride>,
    /// Task CPU units and memory (MiB), replacing the definition's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
}

impl TaskOverrides {
    pub fn is_empty(&self) -> bool {
        self == &TaskOverrides::default()
    }
}

/// A task's container, as observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    pub last_status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A state change of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskEvent {
    #[serde(with = "rfc3339")]
    pub at: Option<Millis>,
    pub last_status: TaskStatus,
    pub desired_status: DesiredStatus,
    pub message: String,
}

/// A task's network attachment (filled by task networking; empty until then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    #[serde(default)]
    pub details: Vec<Tag>,
}

/// A task: one run of a task definition in its own microVM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub task_id: String,
    /// The tenant that owns it (never shown by the API).
    #[serde(skip_serializing, default)]
    pub tenant: String,
    /// `family:revision`.
    pub task_definition: String,
    pub family: String,
    pub revision: u32,
    pub cpu: u32,
    pub memory: u32,
    pub ephemeral_storage: EphemeralStorage,
    pub last_status: TaskStatus,
    pub desired_status: DesiredStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    #[serde(default, skip_serializing_if = "TaskOverrides::is_empty")]
    pub overrides: TaskOverrides,
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<StopCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    #[serde(with = "rfc3339")]
    pub created_at: Option<Millis>,
    #[serde(default, with = "rfc3339", skip_serializing_if = "Option::is_none")]
    pub pull_started_at: Option<Millis>,
    #[serde(default, with = "rfc3339", skip_serializing_if = "Option::is_none")]
    pub pull_stopped_at: Option<Millis>,
    #[serde(default, with = "rfc3339", skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, with = "rfc3339", skip_serializing_if = "Option::is_none")]
    pub stopping_at: Option<Millis>,
    #[serde(default, with = "rfc3339", skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<Millis>,
    /// The jail's uid (and gid) the task's VMM runs as (internal).
    #[serde(skip_serializing, default)]
    pub jail_uid: u32,
    /// The RunTask's idempotency token (ECS's `clientToken`), if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    /// Bumped on every update (optimistic concurrency in the state store).
    pub version: u64,
}

impl Task {
    /// The container's exit code, once known.
    pub fn exit_code(&self) -> Option<i32> {
        self.containers.first().and_then(|c| c.exit_code)
    }

    pub fn is_stopped(&self) -> bool {
        self.last_status == TaskStatus::Stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_as_rfc3339() {
        let ms = 1_764_453_600_123;
        let text = rfc3339::format(ms);
        assert_eq!(text, "2025-11-29T22:00:00.123Z");
        assert_eq!(rfc3339::parse(&text), Some(ms));
        assert_eq!(rfc3339::parse("1764453600"), Some(1_764_453_600_000));
        assert_eq!(rfc3339::parse("yesterday"), None);
        assert_eq!(rfc3339::parse("-5"), None);
    }

    #[test]
    fn statuses_are_ordered_as_the_lifecycle() {
        assert!(TaskStatus::Provisioning < TaskStatus::Running);
        assert!(TaskStatus::Deprovisioning < TaskStatus::Stopped);
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
