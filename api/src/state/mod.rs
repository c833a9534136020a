//! The state store: where task definitions, tasks and their events live, durably. A trait, so
//! that the embedded SQLite store ([`sqlite::SqliteStore`]) can be joined later by one several
//! hosts share (etcd): every write that must not race is one call here — a revision taken, tasks
//! admitted against capacity and quotas, a task updated only from the version it was read at.

pub mod sqlite;

use crate::service::model::{
    DefinitionStatus, DesiredStatus, Millis, Tag, Task, TaskDefinition, TaskEvent,
};

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database holds a record it cannot read ({what}): {source}")]
    Corrupt {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("state database schema version {found} is newer than this skiffd knows ({known})")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("task {0} was changed meanwhile")]
    Conflict(String),
    #[error("task {0} does not exist")]
    NoSuchTask(String),
}

/// What tasks that are not STOPPED hold, in all and for one tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu: u64,
    pub memory: u64,
    pub tasks: u64,
    /// Of `tasks`: those RUNNING, and those not yet (PROVISIONING, PENDING, ACTIVATING).
    pub running: u64,
    pub pending: u64,
}

/// The limits a RunTask is admitted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Host capacity: CPU units and MiB.
    pub cpu: u64,
    pub memory: u64,
    /// The tenant's quota (None: no limit).
    pub tenant_cpu: Option<u64>,
    pub tenant_memory: Option<u64>,
    pub tenant_tasks: Option<u64>,
    /// Jail uids are taken from `uid_base .. uid_base + uid_count`.
    pub uid_base: u32,
    pub uid_count: u32,
}

/// Why tasks were not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Host capacity: `RESOURCE:CPU` or `RESOURCE:MEMORY`.
    Capacity {
        resource: &'static str,
        needed: u64,
        free: u64,
    },
    /// The tenant's quota.
    Quota {
        what: &'static str,
        limit: u64,
        used: u64,
        needed: u64,
    },
    /// No jail uid is free.
    Uids,
    /// The RunTask's client token started tasks already (they are the answer).
    ClientTokenUsed,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Capacity {
                resource,
                needed,
                free,
            } => write!(
                f,
                "{resource}: the host has {free} {} free, the tasks need {needed}",
                if *resource == "RESOURCE:CPU" {
                    "CPU units"
                } else {
                    "MiB"
                }
            ),
            Refusal::Quota {
                what,
                limit,
                used,
                needed,
            } => write!(
                f,
                "tenant quota: {what} limit {limit}, {used} in use, {needed} more asked"
            ),
            Refusal::Uids => write!(
                f,
                "no jail uid is free (the configured uid range is used up)"
            ),
            Refusal::ClientTokenUsed => write!(f, "the client token started tasks already"),
        }
    }
}

/// Filters of ListTasks.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub family: Option<String>,
    pub desired_status: Option<DesiredStatus>,
    pub started_by: Option<String>,
}

/// Filters of ListTaskDefinitions.
#[derive(Debug, Clone, Default)]
pub struct DefinitionFilter {
    pub family: Option<String>,
    pub status: Option<DefinitionStatus>,
    /// Newest family and revision first (`after` then counts down).
    pub descending: bool,
}

/// Which families ListTaskDefinitionFamilies lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FamilyStatus {
    /// Families with an ACTIVE revision.
    #[default]
    Active,
    /// Families with no ACTIVE revision.
    Inactive,
    All,
}

/// A page of a listing: where to start (exclusive) and how many.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub after: Option<String>,
    pub limit: usize,
}

/// The state store.
pub trait StateStore: Send + Sync + 'static {
    /// Stores a new revision of `def.family` (the next number) for `tenant`.
    fn register_task_definition(
        &self,
        tenant: &str,
        def: TaskDefinition,
    ) -> Result<TaskDefinition, StateError>;
    /// A revision, or the latest ACTIVE one when `revision` is None.
    fn task_definition(
        &self,
        tenant: &str,
        family: &str,
        revision: Option<u32>,
    ) -> Result<Option<TaskDefinition>, StateError>;
    /// Task definitions, by family then revision; `after` is a `family:revision` key.
    fn list_task_definitions(
        &self,
        tenant: &str,
        filter: &DefinitionFilter,
        page: &Page,
    ) -> Result<Vec<TaskDefinition>, StateError>;
    /// Family names, in order; `after` is a family.
    fn list_families(
        &self,
        tenant: &str,
        prefix: Option<&str>,
        status: FamilyStatus,
        page: &Page,
    ) -> Result<Vec<String>, StateError>;
    /// Replaces a revision's tags with what `change` makes of them (nothing changes when it
    /// gives None), in one transaction.
    fn retag_task_definition(
        &self,
        tenant: &str,
        family: &str,
        revision: u32,
        change: &mut dyn FnMut(&[Tag]) -> Option<Vec<Tag>>,
    ) -> Result<Option<TaskDefinition>, StateError>;
    /// Marks a revision INACTIVE.
    fn deregister_task_definition(
        &self,
        tenant: &str,
        family: &str,
        revision: u32,
        at: Millis,
    ) -> Result<Option<TaskDefinition>, StateError>;

    /// Stores `tasks` if, with them, the tasks that are not STOPPED fit `admission`; gives each
    /// a free jail uid. All or none.
    fn create_tasks(
        &self,
        tasks: Vec<Task>,
        admission: &Admission,
        event: &str,
    ) -> Result<Result<Vec<Task>, Refusal>, StateError>;
    /// A task (of `tenant`, when given).
    fn task(&self, tenant: Option<&str>, id: &str) -> Result<Option<Task>, StateError>;
    /// Tasks of `tenant`, oldest first; `after` is a task id.
    fn list_tasks(
        &self,
        tenant: &str,
        filter: &TaskFilter,
        page: &Page,
    ) -> Result<Vec<Task>, StateError>;
    /// Replaces a task, which must still be at `task.version - 1`, and records `event`.
    fn update_task(&self, task: &Task, event: Option<&TaskEvent>) -> Result<(), StateError>;
    /// A task's events, oldest first.
    fn events(&self, id: &str) -> Result<Vec<TaskEvent>, StateError>;
    /// Every task that is not STOPPED (for reconciliation at start).
    fn unfinished_tasks(&self) -> Result<Vec<Task>, StateError>;
    /// Ids of tasks STOPPED before `before`.
    fn stopped_before(&self, before: Millis) -> Result<Vec<String>, StateError>;
    /// Forgets a task and its events.
    fn delete_task(&self, id: &str) -> Result<(), StateError>;
    /// The tasks a RunTask with this client token started.
    fn tasks_with_client_token(&self, tenant: &str, token: &str) -> Result<Vec<Task>, StateError>;
    /// What tasks that are not STOPPED hold: all, and the tenant's.
    fn usage(&self, tenant: Option<&str>) -> Result<Usage, StateError>;
    /// The tenants a private image (pulled with their credentials) belongs to; none: public.
    fn image_owners(&self, image: &str) -> Result<Vec<String>, StateError>;
    fn add_image_owner(&self, image: &str, tenant: &str) -> Result<(), StateError>;
    fn forget_image_owners(&self, image: &str) -> Result<(), StateError>;
}
