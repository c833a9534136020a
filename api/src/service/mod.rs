//! The service layer: task definitions, tasks, capacity and tenants — what skiffd does, with no
//! HTTP in sight. Front ends (`/v1`, later ECS) call it; it keeps its state in a
//! [`StateStore`] and makes tasks real through an [`Executor`]. Every acknowledged change is in
//! the store before the call returns.

pub mod lifecycle;
pub mod model;
pub mod validate;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::executor::{ExecError, Executor, LogFiles};
use crate::state::{
    Admission, DefinitionFilter, FamilyStatus, Page, Refusal, StateError, StateStore, TaskFilter,
    Usage,
};
use model::{
    now_ms, Container, DesiredStatus, StopCode, Tag, Task, TaskDefinition, TaskEvent,
    TaskOverrides, TaskStatus,
};
use validate::{Invalid, TaskDefinitionInput};

/// Errors of the service, each a kind a front end maps to its own answer.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Refused(Refusal),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Executor(ExecError),
}

/// A tenant: who owns task definitions and tasks, and its quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    pub max_cpu: Option<u64>,
    pub max_memory: Option<u64>,
    pub max_tasks: Option<u64>,
}

impl Tenant {
    /// A tenant without quotas.
    pub fn unlimited(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            max_cpu: None,
            max_memory: None,
            max_tasks: None,
        }
    }
}

/// The service's settings.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// What tasks may use in all: CPU units (1024 per vCPU) and MiB.
    pub capacity_cpu: u64,
    pub capacity_memory: u64,
    /// Jail uids (and gids) come from `uid_base .. uid_base + uid_count`.
    pub uid_base: u32,
    pub uid_count: u32,
    /// How long STOPPED tasks are kept.
    pub retention: Duration,
    /// Named registry credentials: who may use them, for which registry.
    pub credentials: std::collections::HashMap<String, CredentialRule>,
}

/// Who may use named registry credentials, and where they may be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRule {
    /// `host[:port]`.
    pub registry: String,
    pub tenants: Vec<String>,
}

/// The registry host a reference names (`HOST[:PORT]/…`), if it names one.
fn registry_of(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains(['.', ':']) || first == "localhost").then_some(first)
}

/// RunTask.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunTaskInput {
    /// `family`, `family:revision`.
    pub task_definition: String,
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub started_by: Option<String>,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default)]
    pub overrides: TaskOverrides,
    /// Idempotency: a RunTask repeated with the same token answers the tasks the first one
    /// started (1-64 printable characters).
    #[serde(default)]
    pub client_token: Option<String>,
}

/// A change of a resource's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagChange {
    /// Adds these, replacing tags of the same keys.
    Add(Vec<Tag>),
    /// Removes the tags of these keys.
    Remove(Vec<String>),
}

impl TagChange {
    /// `tags` after the change, checked against the tag limits.
    fn apply(&self, tags: &[Tag]) -> Result<Vec<Tag>, Invalid> {
        let mut out = tags.to_vec();
        match self {
            TagChange::Add(new) => {
                validate::check_tags("tags", new)?;
                for tag in new {
                    match out.iter_mut().find(|t| t.key == tag.key) {
                        Some(t) => t.value = tag.value.clone(),
                        None => out.push(tag.clone()),
                    }
                }
            }
            TagChange::Remove(keys) => out.retain(|t| !keys.contains(&t.key)),
        }
        validate::check_tags("tags", &out)?;
        Ok(out)
    }
}

/// Capacity: the host's, what tasks hold, what is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Capacity {
    pub total: Resources,
    pub used: Resources,
    pub free: Resources,
    /// Tasks that are not STOPPED.
    pub tasks: u64,
}

/// CPU units and MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Resources {
    pub cpu: u64,
    pub memory: u64,
}

/// The service.
pub struct Service<E: Executor> {
    pub(crate) store: Box<dyn StateStore>,
    pub(crate) executor: E,
    pub(crate) settings: ServiceSettings,
    /// Read-modify-write of tasks in this process, one at a time (the store's version check
    /// guards against anyone else).
    pub(crate) updates: Mutex<()>,
    /// Told the id of every task that changed (waiters and log followers listen).
    pub(crate) changes: tokio::sync::broadcast::Sender<String>,
}

/// A page (of 1-100) asked of the store with one item more: the extra one says there is more.
fn one_more(page: Page) -> (Page, usize) {
    let limit = page.limit.clamp(1, 100);
    let ask = Page {
        after: page.after,
        limit: limit + 1,
    };
    (ask, limit)
}

/// The page of `items` (asked with [`one_more`]) and the key to continue after, if any.
fn paged<T>(
    mut items: Vec<T>,
    limit: usize,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let next = (items.len() > limit)
        .then(|| {
            items.truncate(limit);
            items.last().map(&key)
        })
        .flatten();
    (items, next)
}

/// `family` or `family:revision`.
fn parse_definition_ref(text: &str) -> Result<(&str, Option<u32>), Invalid> {
    let (family, revision) = match text.rsplit_once(':') {
        Some((f, r)) => (
            f,
            Some(
                r.parse::<u32>()
                    .ok()
                    .filter(|r| *r > 0)
                    .ok_or_else(|| Invalid {
                        field: "taskDefinition".into(),
                        message: format!("{text:?}: the revision must be a number from 1"),
                    })?,
            ),
        ),
        None => (text, None),
    };
    validate::check_name("taskDefinition", family)?;
    Ok((family, revision))
}

impl<E: Executor> Service<E> {
    pub fn new(store: Box<dyn StateStore>, executor: E, settings: ServiceSettings) -> Arc<Self> {
        let (changes, _) = tokio::sync::broadcast::channel(1024);
        Arc::new(Self {
            store,
            executor,
            settings,
            updates: Mutex::new(()),
            changes,
        })
    }

    /// Subscribes to task changes (ids).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    pub fn register_task_definition(
        &self,
        tenant: &Tenant,
        input: TaskDefinitionInput,
    ) -> Result<TaskDefinition, ServiceError> {
        let mut def = validate::task_definition(input)?;
        def.registered_at = Some(now_ms());
        Ok(self.store.register_task_definition(&tenant.name, def)?)
    }

    /// `family` (its latest ACTIVE revision) or `family:revision`.
    pub fn task_definition(
        &self,
        tenant: &Tenant,
        reference: &str,
    ) -> Result<TaskDefinition, ServiceError> {
        let (family, revision) = parse_definition_ref(reference)?;
        self.store
            .task_definition(&tenant.name, family, revision)?
            .ok_or_else(|| ServiceError::NotFound(format!("task definition {reference}")))
    }

    /// Task definitions (one page) and the key to continue after.
    pub fn list_task_definitions(
        &self,
        tenant: &Tenant,
        filter: &DefinitionFilter,
        page: Page,
    ) -> Result<(Vec<TaskDefinition>, Option<String>), ServiceError> {
        if let Some(f) = &filter.family {
            validate::check_name("family", f)?;
        }
        let (ask, limit) = one_more(page);
        let items = self
            .store
            .list_task_definitions(&tenant.name, filter, &ask)?;
        Ok(paged(items, limit, TaskDefinition::key))
    }

    /// Task definition families (one page) and the key to continue after.
    pub fn list_families(
        &self,
        tenant: &Tenant,
        prefix: Option<&str>,
        status: FamilyStatus,
        page: Page,
    ) -> Result<(Vec<String>, Option<String>), ServiceError> {
        if let Some(p) = prefix {
            validate::check_name("familyPrefix", p)?;
        }
        let (ask, limit) = one_more(page);
        let items = self
            .store
            .list_families(&tenant.name, prefix, status, &ask)?;
        Ok(paged(items, limit, String::clone))
    }

    /// Adds `tags` to a task definition revision (replacing same-keyed ones) or, with
    /// `remove`, drops the tags with these keys — applied to the tags as stored, in the update.
    pub fn retag_task_definition(
        &self,
        tenant: &Tenant,
        reference: &str,
        change: &TagChange,
    ) -> Result<TaskDefinition, ServiceError> {
        let (family, revision) = parse_definition_ref(reference)?;
        let revision = revision.ok_or_else(|| Invalid {
            field: "resourceArn".into(),
            message: format!("{reference:?}: tagging needs family:revision"),
        })?;
        let mut refused = None;
        let def =
            self.store
                .retag_task_definition(&tenant.name, family, revision, &mut |tags| {
                    change.apply(tags).map_err(|e| refused = Some(e)).ok()
                })?;
        if let Some(e) = refused {
            return Err(e.into());
        }
        def.ok_or_else(|| ServiceError::NotFound(format!("task definition {reference}")))
    }

    /// Changes a task's tags (see [`Service::retag_task_definition`]).
    pub fn retag_task(
        &self,
        tenant: &Tenant,
        id: &str,
        change: &TagChange,
    ) -> Result<Task, ServiceError> {
        let task = self.task(tenant, id)?;
        let mut refused = None;
        let task = self.modify(&task.task_id, |t| match change.apply(&t.tags) {
            Ok(tags) => {
                t.tags = tags;
                Some(String::new())
            }
            Err(e) => {
                refused = Some(e);
                None
            }
        })?;
        match refused {
            Some(e) => Err(e.into()),
            None => Ok(task),
        }
    }

    pub fn deregister_task_definition(
        &self,
        tenant: &Tenant,
        reference: &str,
    ) -> Result<TaskDefinition, ServiceError> {
        let (family, revision) = parse_definition_ref(reference)?;
        let revision = revision.ok_or_else(|| Invalid {
            field: "taskDefinition".into(),
            message: format!("{reference:?}: deregistering needs family:revision"),
        })?;
        self.store
            .deregister_task_definition(&tenant.name, family, revision, now_ms())?
            .ok_or_else(|| ServiceError::NotFound(format!("task definition {reference}")))
    }

    /// RunTask: all `count` tasks are admitted and stored, or none; they start in the
    /// background.
    pub fn run_task(
        self: &Arc<Self>,
        tenant: &Tenant,
        input: RunTaskInput,
    ) -> Result<Vec<Task>, ServiceError> {
        let count = validate::count(input.count.unwrap_or(1))?;
        if let Some(s) = &input.started_by {
            validate::started_by(s)?;
        }
        validate::check_tags("tags", &input.tags)?;
        if let Some(token) = &input.client_token {
            let printable = token.chars().all(|c| c.is_ascii_graphic());
            if !(1..=64).contains(&token.len()) || !printable {
                return Err(Invalid {
                    field: "clientToken".into(),
                    message: "1-64 printable characters".into(),
                }
                .into());
            }
        }
        let def = self.task_definition(tenant, &input.task_definition)?;
        if def.status != model::DefinitionStatus::Active {
            return Err(Invalid {
                field: "taskDefinition".into(),
                message: format!("{} is INACTIVE", def.key()),
            }
            .into());
        }
        let (cpu, memory) = validate::overrides(&def, &input.overrides)?;
        let container = &def.container_definitions[0];
        let credentials = container
            .repository_credentials
            .as_ref()
            .map(|c| c.credentials_parameter.as_str());
        self.check_image_access(tenant, &container.image, credentials)?;
        let now = now_ms();
        let tasks: Vec<Task> = (0..count)
            .map(|_| Task {
                task_id: uuid::Uuid::new_v4().simple().to_string(),
                tenant: tenant.name.clone(),
                task_definition: def.key(),
                family: def.family.clone(),
                revision: def.revision,
                cpu,
                memory,
                ephemeral_storage: def.ephemeral_storage,
                last_status: TaskStatus::Provisioning,
                desired_status: DesiredStatus::Running,
                started_by: input.started_by.clone(),
                tags: input.tags.clone(),
                overrides: input.overrides.clone(),
                containers: vec![Container {
                    name: container.name.clone(),
                    image: container.image.clone(),
                    last_status: TaskStatus::Pending,
                    exit_code: None,
                    reason: None,
                }],
                attachments: vec![],
                stop_code: None,
                stopped_reason: None,
                created_at: Some(now),
                pull_started_at: None,
                pull_stopped_at: None,
                started_at: None,
                stopping_at: None,
                stopped_at: None,
                jail_uid: 0,
                client_token: input.client_token.clone(),
                version: 1,
            })
            .collect();
        let admission = Admission {
            cpu: self.settings.capacity_cpu,
            memory: self.settings.capacity_memory,
            tenant_cpu: tenant.max_cpu,
            tenant_memory: tenant.max_memory,
            tenant_tasks: tenant.max_tasks,
            uid_base: self.settings.uid_base,
            uid_count: self.settings.uid_count,
        };
        let tasks = match self
            .store
            .create_tasks(tasks, &admission, "RunTask accepted")?
        {
            Ok(tasks) => tasks,
            Err(Refusal::ClientTokenUsed) => {
                let token = input.client_token.as_deref().unwrap_or_default();
                return Ok(self.store.tasks_with_client_token(&tenant.name, token)?);
            }
            Err(refusal) => return Err(ServiceError::Refused(refusal)),
        };
        for task in &tasks {
            self.notify(&task.task_id);
            lifecycle::spawn_launch(self.clone(), task.task_id.clone());
        }
        Ok(tasks)
    }

    /// A task of the tenant.
    pub fn task(&self, tenant: &Tenant, id: &str) -> Result<Task, ServiceError> {
        let valid = (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric());
        let found = if valid {
            self.store.task(Some(&tenant.name), id)?
        } else {
            None
        };
        found.ok_or_else(|| ServiceError::NotFound(format!("task {id}")))
    }

    pub fn list_tasks(
        &self,
        tenant: &Tenant,
        filter: &TaskFilter,
        page: Page,
    ) -> Result<(Vec<Task>, Option<String>), ServiceError> {
        if let Some(f) = &filter.family {
            validate::check_name("family", f)?;
        }
        let (ask, limit) = one_more(page);
        let items = self.store.list_tasks(&tenant.name, filter, &ask)?;
        Ok(paged(items, limit, |t| t.task_id.clone()))
    }

    pub fn events(&self, tenant: &Tenant, id: &str) -> Result<Vec<TaskEvent>, ServiceError> {
        let task = self.task(tenant, id)?;
        Ok(self.store.events(&task.task_id)?)
    }

    /// StopTask: the wish is stored first, then the monitor told.
    pub fn stop_task(
        &self,
        tenant: &Tenant,
        id: &str,
        reason: Option<String>,
        code: StopCode,
    ) -> Result<Task, ServiceError> {
        let task = self.task(tenant, id)?;
        if let Some(r) = &reason {
            if r.len() > 1024 {
                return Err(Invalid {
                    field: "reason".into(),
                    message: "longer than 1024 characters".into(),
                }
                .into());
            }
        }
        if task.desired_status == DesiredStatus::Stopped {
            return Ok(task);
        }
        let task = self.modify(&task.task_id, |t| {
            if t.desired_status == DesiredStatus::Stopped {
                return None;
            }
            t.desired_status = DesiredStatus::Stopped;
            t.stop_code.get_or_insert(code);
            t.stopped_reason.get_or_insert(
                reason
                    .clone()
                    .unwrap_or_else(|| "Task stopped by user".to_owned()),
            );
            t.stopping_at.get_or_insert(now_ms());
            Some("stop requested".to_owned())
        })?;
        // The monitor may not be up yet: the launch checks the wish once it started it.
        let _ = self.executor.stop(&task.task_id);
        Ok(task)
    }

    /// The container log's files of a task of the tenant.
    pub fn log_files(&self, tenant: &Tenant, id: &str) -> Result<LogFiles, ServiceError> {
        let task = self.task(tenant, id)?;
        Ok(self.executor.log_files(&task.task_id))
    }

    pub fn capacity(&self) -> Result<Capacity, ServiceError> {
        let Usage {
            cpu, memory, tasks, ..
        } = self.store.usage(None)?;
        let total = Resources {
            cpu: self.settings.capacity_cpu,
            memory: self.settings.capacity_memory,
        };
        Ok(Capacity {
            total,
            used: Resources { cpu, memory },
            free: Resources {
                cpu: total.cpu.saturating_sub(cpu),
                memory: total.memory.saturating_sub(memory),
            },
            tasks,
        })
    }

    /// What the tenant's tasks that are not STOPPED hold, and how many are RUNNING or not yet.
    pub fn tenant_usage(&self, tenant: &Tenant) -> Result<Usage, ServiceError> {
        Ok(self.store.usage(Some(&tenant.name))?)
    }

    /// Whether `tenant` may run `image` (with the named credentials): a private image of
    /// another tenant looks like a missing one; credentials must be the tenant's and for the
    /// image's registry.
    pub fn check_image_access(
        &self,
        tenant: &Tenant,
        image: &str,
        credentials: Option<&str>,
    ) -> Result<(), ServiceError> {
        let unknown = || {
            ServiceError::Unprocessable(
                ExecError::UnknownImage {
                    image: image.to_owned(),
                }
                .to_string(),
            )
        };
        let owners = self.store.image_owners(image)?;
        if !owners.is_empty() && !owners.contains(&tenant.name) {
            return Err(unknown());
        }
        if let Some(name) = credentials {
            let field = "repositoryCredentials.credentialsParameter";
            let rule = self
                .settings
                .credentials
                .get(name)
                .filter(|r| r.tenants.contains(&tenant.name))
                .ok_or_else(|| Invalid {
                    field: field.into(),
                    message: format!("no registry credentials {name:?} for this tenant"),
                })?;
            if registry_of(image) != Some(rule.registry.as_str()) {
                return Err(Invalid {
                    field: field.into(),
                    message: format!(
                        "credentials {name:?} are for registry {}, which {image} does not name",
                        rule.registry
                    ),
                }
                .into());
            }
        }
        self.executor.check_image(image).map_err(|_| unknown())
    }

    /// Makes sure `image` is stored, pulling it with the named credentials if missing; an image
    /// pulled with a tenant's credentials becomes that tenant's.
    pub(crate) fn prepare_image(
        &self,
        tenant: &str,
        image: &str,
        credentials: Option<&str>,
    ) -> Result<(), ServiceError> {
        let was_stored = self.executor.has_image(image);
        self.executor
            .prepare_image(image, credentials)
            .map_err(ServiceError::Executor)?;
        if !was_stored && credentials.is_some() {
            self.store.add_image_owner(image, tenant)?;
        }
        Ok(())
    }

    /// The images the tenant may use: public ones and its private ones.
    pub fn images(&self, tenant: &Tenant) -> Result<Vec<crate::executor::ImageInfo>, ServiceError> {
        let mut images = self.executor.images().map_err(ServiceError::Executor)?;
        let mut visible = Vec::with_capacity(images.len());
        for image in images.drain(..) {
            let owners = self.store.image_owners(&image.name)?;
            if owners.is_empty() || owners.contains(&tenant.name) {
                visible.push(image);
            }
        }
        Ok(visible)
    }

    /// Pulls `image` (unless stored) with the named credentials of skiffd's configuration.
    pub fn pull_image(
        &self,
        tenant: &Tenant,
        image: &str,
        credentials: Option<&str>,
    ) -> Result<crate::executor::ImageInfo, ServiceError> {
        validate::check_image("image", image)?;
        if let Some(c) = credentials {
            validate::check_name("credentialsParameter", c)?;
        }
        self.check_image_access(tenant, image, credentials)?;
        self.prepare_image(&tenant.name, image, credentials)
            .map_err(|e| ServiceError::Unprocessable(e.to_string()))?;
        self.images(tenant)?
            .into_iter()
            .find(|i| i.name == image)
            .ok_or_else(|| ServiceError::NotFound(format!("image {image}")))
    }

    /// Removes one of the tenant's private images; shared images are the host operator's
    /// (`skiff-image remove`).
    pub fn remove_image(&self, tenant: &Tenant, name: &str) -> Result<(), ServiceError> {
        validate::check_image("image", name)?;
        let owners = self.store.image_owners(name)?;
        if owners.is_empty() {
            if !self.executor.has_image(name) {
                return Err(ServiceError::NotFound(format!("image {name}")));
            }
            return Err(ServiceError::Conflict(format!(
                "image {name} is shared by every tenant: the host's operator removes it (skiff-image remove)"
            )));
        }
        if !owners.contains(&tenant.name) {
            return Err(ServiceError::NotFound(format!("image {name}")));
        }
        self.executor.remove_image(name).map_err(|e| match e {
            ExecError::NoSuchImage(_) => ServiceError::NotFound(format!("image {name}")),
            other => ServiceError::Executor(other),
        })?;
        self.store.forget_image_owners(name)?;
        Ok(())
    }

    pub(crate) fn notify(&self, id: &str) {
        let _ = self.changes.send(id.to_owned());
    }

    /// Reads a task, applies `change` and stores it (with the event `change` names) when it
    /// returns one.
    pub(crate) fn modify(
        &self,
        id: &str,
        change: impl FnOnce(&mut Task) -> Option<String>,
    ) -> Result<Task, ServiceError> {
        let _one_at_a_time = self.updates.lock().unwrap_or_else(|p| p.into_inner());
        let mut task = self
            .store
            .task(None, id)?
            .ok_or_else(|| ServiceError::NotFound(format!("task {id}")))?;
        let before = (task.last_status, task.desired_status);
        let Some(message) = change(&mut task) else {
            return Ok(task);
        };
        task.version += 1;
        let event = (before != (task.last_status, task.desired_status) || !message.is_empty())
            .then(|| TaskEvent {
                at: Some(now_ms()),
                last_status: task.last_status,
                desired_status: task.desired_status,
                message,
            });
        // A passing storage error (a busy or briefly full disk) is retried: giving up would
        // leave the task in a state no thread drives any more.
        let mut delay = Duration::from_millis(50);
        loop {
            match self.store.update_task(&task, event.as_ref()) {
                Err(StateError::Sql(e)) if delay < Duration::from_secs(5) => {
                    eprintln!("skiffd: task {id}: storing its change failed ({e}); retrying");
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                result => break result?,
            }
        }
        drop(_one_at_a_time);
        self.notify(id);
        Ok(task)
    }
}

#[cfg(test)]
pub(crate) mod tests;
