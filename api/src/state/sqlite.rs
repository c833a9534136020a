//! The embedded state store: SQLite (WAL, `synchronous=FULL`: a transaction that returned is on
//! disk, so an answer sent after it survives SIGKILL and power loss). Records are JSON bodies
//! with the columns queries need beside them; the schema is versioned and migrated forward.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{
    Admission, DefinitionFilter, FamilyStatus, Page, Refusal, StateError, StateStore, TaskFilter,
    Usage,
};
use crate::service::model::{DefinitionStatus, Millis, Tag, Task, TaskDefinition, TaskEvent};

/// Schema migrations, in order; the database's `user_version` is how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: task definitions, tasks, events.
    "CREATE TABLE task_definitions (
        tenant TEXT NOT NULL, family TEXT NOT NULL, revision INTEGER NOT NULL,
        status TEXT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (tenant, family, revision));
     CREATE TABLE tasks (
        id TEXT PRIMARY KEY, tenant TEXT NOT NULL, family TEXT NOT NULL,
        desired_status TEXT NOT NULL, last_status TEXT NOT NULL, started_by TEXT,
        created_at INTEGER NOT NULL, stopped_at INTEGER, cpu INTEGER NOT NULL,
        memory INTEGER NOT NULL, jail_uid INTEGER NOT NULL, version INTEGER NOT NULL,
        body TEXT NOT NULL);
     CREATE INDEX tasks_by_tenant ON tasks (tenant, created_at, id);
     CREATE INDEX tasks_by_status ON tasks (last_status);
     CREATE TABLE task_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, body TEXT NOT NULL);
     CREATE INDEX task_events_by_task ON task_events (task_id, seq);",
    // 2: images pulled with a tenant's registry credentials are that tenant's.
    "CREATE TABLE image_owners (image TEXT NOT NULL, tenant TEXT NOT NULL,
        PRIMARY KEY (image, tenant));",
    // 3: RunTask's idempotency token (ECS's clientToken), on every task it started.
    "ALTER TABLE tasks ADD COLUMN client_token TEXT;
     CREATE INDEX tasks_by_client_token ON tasks (tenant, client_token);",
];

/// The SQLite state store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn corrupt(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> StateError {
    let what = what.into();
    move |source| StateError::Corrupt { what, source }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StateError> {
    serde_json::to_string(value).map_err(corrupt("a record to store"))
}

fn stored_task(tenant: String, body: String) -> Result<Task, StateError> {
    let mut task: Task = serde_json::from_str(&body).map_err(corrupt("task"))?;
    task.tenant = tenant;
    Ok(task)
}

/// Reads a stored task including its internal fields (the body omits them when serialised for
/// the API, so they travel in columns).
fn task_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, u32)> {
    Ok((row.get("tenant")?, row.get("body")?, row.get("jail_uid")?))
}

fn finish_task((tenant, body, uid): (String, String, u32)) -> Result<Task, StateError> {
    let mut task = stored_task(tenant, body)?;
    task.jail_uid = uid;
    Ok(task)
}

const TASK_COLUMNS: &str = "tenant, body, jail_uid";

impl SqliteStore {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let open_err = |source| StateError::Open {
            path: path.to_owned(),
            source,
        };
        // Tenants' task definitions (environment variables) are in it: root's eyes only.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    open_err(rusqlite::Error::InvalidPath(
                        format!("{}: {e}", path.display()).into(),
                    ))
                })?;
        }
        let conn = Connection::open(path).map_err(open_err)?;
        Self::init(conn).map_err(|e| match e {
            StateError::Sql(source) => open_err(source),
            other => other,
        })
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Self, StateError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, StateError> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StateError::SchemaTooNew {
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (its transaction rolls back).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn usage_in(conn: &Connection, tenant: Option<&str>) -> Result<Usage, StateError> {
    let (cpu, memory, tasks, running, pending): (i64, i64, i64, i64, i64) = conn.query_row(
        "SELECT COALESCE(SUM(cpu), 0), COALESCE(SUM(memory), 0), COUNT(*),
                COALESCE(SUM(last_status = 'RUNNING'), 0),
                COALESCE(SUM(last_status IN ('PROVISIONING', 'PENDING', 'ACTIVATING')), 0)
         FROM tasks WHERE last_status != 'STOPPED' AND (?1 IS NULL OR tenant = ?1)",
        params![tenant],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )?;
    Ok(Usage {
        cpu: cpu as u64,
        memory: memory as u64,
        tasks: tasks as u64,
        running: running as u64,
        pending: pending as u64,
    })
}

/// Whether `tasks` fit `admission` on top of what is in use.
fn admit(
    all: Usage,
    tenant: Usage,
    cpu: u64,
    memory: u64,
    count: u64,
    admission: &Admission,
) -> Result<(), Refusal> {
    if all.cpu + cpu > admission.cpu {
        return Err(Refusal::Capacity {
            resource: "RESOURCE:CPU",
            needed: cpu,
            free: admission.cpu.saturating_sub(all.cpu),
        });
    }
    if all.memory + memory > admission.memory {
        return Err(Refusal::Capacity {
            resource: "RESOURCE:MEMORY",
            needed: memory,
            free: admission.memory.saturating_sub(all.memory),
        });
    }
    for (what, limit, used, needed) in [
        ("CPU units", admission.tenant_cpu, tenant.cpu, cpu),
        ("memory MiB", admission.tenant_memory, tenant.memory, memory),
        ("tasks", admission.tenant_tasks, tenant.tasks, count),
    ] {
        if let Some(limit) = limit {
            if used + needed > limit {
                return Err(Refusal::Quota {
                    what,
                    limit,
                    used,
                    needed,
                });
            }
        }
    }
    Ok(())
}

fn insert_event(conn: &Connection, id: &str, event: &TaskEvent) -> Result<(), StateError> {
    conn.execute(
        "INSERT INTO task_events (task_id, body) VALUES (?1, ?2)",
        params![id, to_json(event)?],
    )?;
    Ok(())
}

impl SqliteStore {
    /// Reads a revision, lets `change` modify it and stores it when `change` says it did.
    fn change_definition(
        &self,
        tenant: &str,
        family: &str,
        revision: u32,
        change: impl FnOnce(&mut TaskDefinition) -> bool,
    ) -> Result<Option<TaskDefinition>, StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let body: Option<String> = tx
            .query_row(
                "SELECT body FROM task_definitions WHERE tenant = ?1 AND family = ?2 AND revision = ?3",
                params![tenant, family, revision],
                |r| r.get(0),
            )
            .optional()?;
        let Some(body) = body else { return Ok(None) };
        let mut def: TaskDefinition =
            serde_json::from_str(&body).map_err(corrupt("task definition"))?;
        if change(&mut def) {
            tx.execute(
                "UPDATE task_definitions SET status = ?4, body = ?5
                 WHERE tenant = ?1 AND family = ?2 AND revision = ?3",
                params![
                    tenant,
                    family,
                    revision,
                    def.status.as_str(),
                    to_json(&def)?
                ],
            )?;
        }
        tx.commit()?;
        Ok(Some(def))
    }
}

impl StateStore for SqliteStore {
    fn register_task_definition(
        &self,
        tenant: &str,
        mut def: TaskDefinition,
    ) -> Result<TaskDefinition, StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let last: Option<u32> = tx.query_row(
            "SELECT MAX(revision) FROM task_definitions WHERE tenant = ?1 AND family = ?2",
            params![tenant, def.family],
            |r| r.get(0),
        )?;
        def.revision = last.unwrap_or(0) + 1;
        tx.execute(
            "INSERT INTO task_definitions (tenant, family, revision, status, body)
             VALUES (?1, ?2, ?3, 'ACTIVE', ?4)",
            params![tenant, def.family, def.revision, to_json(&def)?],
        )?;
        tx.commit()?;
        Ok(def)
    }

    fn task_definition(
        &self,
        tenant: &str,
        family: &str,
        revision: Option<u32>,
    ) -> Result<Option<TaskDefinition>, StateError> {
        let conn = self.conn();
        let body: Option<String> = match revision {
            Some(rev) => conn
                .query_row(
                    "SELECT body FROM task_definitions
                     WHERE tenant = ?1 AND family = ?2 AND revision = ?3",
                    params![tenant, family, rev],
                    |r| r.get(0),
                )
                .optional()?,
            None => conn
                .query_row(
                    "SELECT body FROM task_definitions
                     WHERE tenant = ?1 AND family = ?2 AND status = 'ACTIVE'
                     ORDER BY revision DESC LIMIT 1",
                    params![tenant, family],
                    |r| r.get(0),
                )
                .optional()?,
        };
        body.map(|b| serde_json::from_str(&b).map_err(corrupt("task definition")))
            .transpose()
    }

    fn list_task_definitions(
        &self,
        tenant: &str,
        filter: &DefinitionFilter,
        page: &Page,
    ) -> Result<Vec<TaskDefinition>, StateError> {
        let (after_family, after_rev) = match page.after.as_deref().and_then(|a| a.rsplit_once(':'))
        {
            Some((f, r)) => (Some(f.to_owned()), r.parse::<u32>().unwrap_or(u32::MAX)),
            None => (None, 0),
        };
        let (after, order) = if filter.descending {
            (
                "(family, revision) < (?4, ?5)",
                "family DESC, revision DESC",
            )
        } else {
            ("(family, revision) > (?4, ?5)", "family, revision")
        };
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT body FROM task_definitions
             WHERE tenant = ?1 AND (?2 IS NULL OR family = ?2)
               AND (?3 IS NULL OR status = ?3)
               AND (?4 IS NULL OR {after})
             ORDER BY {order} LIMIT ?6"
        ))?;
        let rows = stmt.query_map(
            params![
                tenant,
                filter.family,
                filter.status.map(DefinitionStatus::as_str),
                after_family,
                after_rev,
                page.limit as i64
            ],
            |r| r.get::<_, String>(0),
        )?;
        rows.map(|body| serde_json::from_str(&body?).map_err(corrupt("task definition")))
            .collect()
    }

    fn list_families(
        &self,
        tenant: &str,
        prefix: Option<&str>,
        status: FamilyStatus,
        page: &Page,
    ) -> Result<Vec<String>, StateError> {
        let having = match status {
            FamilyStatus::Active => "MAX(status = 'ACTIVE') = 1",
            FamilyStatus::Inactive => "MAX(status = 'ACTIVE') = 0",
            FamilyStatus::All => "1",
        };
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT family FROM task_definitions
             WHERE tenant = ?1 AND (?2 IS NULL OR substr(family, 1, length(?2)) = ?2)
               AND (?3 IS NULL OR family > ?3)
             GROUP BY family HAVING {having} ORDER BY family LIMIT ?4"
        ))?;
        let rows = stmt.query_map(
            params![tenant, prefix, page.after, page.limit as i64],
            |r| r.get::<_, String>(0),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn retag_task_definition(
        &self,
        tenant: &str,
        family: &str,
        revision: u32,
        change: &mut dyn FnMut(&[Tag]) -> Option<Vec<Tag>>,
    ) -> Result<Option<TaskDefinition>, StateError> {
        self.change_definition(tenant, family, revision, |def| match change(&def.tags) {
            Some(tags) => {
                def.tags = tags;
                true
            }
            None => false,
        })
    }

    fn deregister_task_definition(
        &self,
        tenant: &str,
        family: &str,
        revision: u32,
        at: Millis,
    ) -> Result<Option<TaskDefinition>, StateError> {
        self.change_definition(tenant, family, revision, |def| {
            if def.status != DefinitionStatus::Active {
                return false;
            }
            def.status = DefinitionStatus::Inactive;
            def.deregistered_at = Some(at);
            true
        })
    }

    fn create_tasks(
        &self,
        mut tasks: Vec<Task>,
        admission: &Admission,
        event: &str,
    ) -> Result<Result<Vec<Task>, Refusal>, StateError> {
        let Some(tenant) = tasks.first().map(|t| t.tenant.clone()) else {
            return Ok(Ok(tasks));
        };
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(token) = tasks.first().and_then(|t| t.client_token.clone()) {
            let used: i64 = tx.query_row(
                "SELECT COUNT(*) FROM tasks WHERE tenant = ?1 AND client_token = ?2",
                params![tenant, token],
                |r| r.get(0),
            )?;
            if used > 0 {
                return Ok(Err(Refusal::ClientTokenUsed));
            }
        }
        let cpu: u64 = tasks.iter().map(|t| u64::from(t.cpu)).sum();
        let memory: u64 = tasks.iter().map(|t| u64::from(t.memory)).sum();
        let all = usage_in(&tx, None)?;
        let mine = usage_in(&tx, Some(&tenant))?;
        if let Err(refusal) = admit(all, mine, cpu, memory, tasks.len() as u64, admission) {
            return Ok(Err(refusal));
        }
        let used: std::collections::HashSet<u32> = {
            let mut stmt =
                tx.prepare("SELECT jail_uid FROM tasks WHERE last_status != 'STOPPED'")?;
            let rows = stmt.query_map([], |r| r.get::<_, u32>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut free = (0..admission.uid_count)
            .map(|i| admission.uid_base.saturating_add(i))
            .filter(|uid| !used.contains(uid));
        for task in &mut tasks {
            let Some(uid) = free.next() else {
                return Ok(Err(Refusal::Uids));
            };
            task.jail_uid = uid;
            tx.execute(
                "INSERT INTO tasks (id, tenant, family, desired_status, last_status, started_by,
                    created_at, stopped_at, cpu, memory, jail_uid, version, body, client_token)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    task.task_id,
                    task.tenant,
                    task.family,
                    task.desired_status.as_str(),
                    task.last_status.as_str(),
                    task.started_by,
                    task.created_at.unwrap_or(0),
                    task.cpu,
                    task.memory,
                    task.jail_uid,
                    task.version as i64,
                    to_json(task)?,
                    task.client_token,
                ],
            )?;
            insert_event(
                &tx,
                &task.task_id,
                &TaskEvent {
                    at: task.created_at,
                    last_status: task.last_status,
                    desired_status: task.desired_status,
                    message: event.to_owned(),
                },
            )?;
        }
        tx.commit()?;
        Ok(Ok(tasks))
    }

    fn task(&self, tenant: Option<&str>, id: &str) -> Result<Option<Task>, StateError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)"),
                params![id, tenant],
                task_from_row,
            )
            .optional()?;
        row.map(finish_task).transpose()
    }

    fn list_tasks(
        &self,
        tenant: &str,
        filter: &TaskFilter,
        page: &Page,
    ) -> Result<Vec<Task>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks
             WHERE tenant = ?1 AND (?2 IS NULL OR family = ?2)
               AND (?3 IS NULL OR desired_status = ?3) AND (?4 IS NULL OR started_by = ?4)
               AND (?5 IS NULL OR (created_at, id) >
                    (SELECT created_at, id FROM tasks WHERE id = ?5 AND tenant = ?1))
             ORDER BY created_at, id LIMIT ?6"
        ))?;
        let rows = stmt.query_map(
            params![
                tenant,
                filter.family,
                filter.desired_status.map(|d| d.as_str()),
                filter.started_by,
                page.after,
                page.limit as i64
            ],
            task_from_row,
        )?;
        rows.map(|r| finish_task(r?)).collect()
    }

    fn update_task(&self, task: &Task, event: Option<&TaskEvent>) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE tasks SET desired_status = ?2, last_status = ?3, stopped_at = ?4,
                version = ?5, body = ?6
             WHERE id = ?1 AND version = ?7",
            params![
                task.task_id,
                task.desired_status.as_str(),
                task.last_status.as_str(),
                task.stopped_at,
                task.version as i64,
                to_json(task)?,
                task.version as i64 - 1,
            ],
        )?;
        if changed == 0 {
            let exists: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM tasks WHERE id = ?1",
                    params![task.task_id],
                    |r| r.get(0),
                )
                .optional()?;
            return Err(match exists {
                Some(_) => StateError::Conflict(task.task_id.clone()),
                None => StateError::NoSuchTask(task.task_id.clone()),
            });
        }
        if let Some(event) = event {
            insert_event(&tx, &task.task_id, event)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn events(&self, id: &str) -> Result<Vec<TaskEvent>, StateError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT body FROM task_events WHERE task_id = ?1 ORDER BY seq")?;
        let rows = stmt.query_map(params![id], |r| r.get::<_, String>(0))?;
        rows.map(|body| serde_json::from_str(&body?).map_err(corrupt("task event")))
            .collect()
    }

    fn unfinished_tasks(&self) -> Result<Vec<Task>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE last_status != 'STOPPED' ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([], task_from_row)?;
        rows.map(|r| finish_task(r?)).collect()
    }

    fn stopped_before(&self, before: Millis) -> Result<Vec<String>, StateError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id FROM tasks WHERE last_status = 'STOPPED' AND stopped_at < ?1")?;
        let rows = stmt.query_map(params![before], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn delete_task(&self, id: &str) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM task_events WHERE task_id = ?1", params![id])?;
        tx.execute("DELETE FROM tasks WHERE id = ?1", params![id])?;
        tx.commit()?;
        Ok(())
    }

    fn tasks_with_client_token(&self, tenant: &str, token: &str) -> Result<Vec<Task>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE tenant = ?1 AND client_token = ?2
             ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map(params![tenant, token], task_from_row)?;
        rows.map(|r| finish_task(r?)).collect()
    }

    fn usage(&self, tenant: Option<&str>) -> Result<Usage, StateError> {
        usage_in(&self.conn(), tenant)
    }

    fn image_owners(&self, image: &str) -> Result<Vec<String>, StateError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT tenant FROM image_owners WHERE image = ?1 ORDER BY tenant")?;
        let rows = stmt.query_map(params![image], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_image_owner(&self, image: &str, tenant: &str) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT OR IGNORE INTO image_owners (image, tenant) VALUES (?1, ?2)",
            params![image, tenant],
        )?;
        Ok(())
    }

    fn forget_image_owners(&self, image: &str) -> Result<(), StateError> {
        self.conn()
            .execute("DELETE FROM image_owners WHERE image = ?1", params![image])?;
        Ok(())
    }
}

/// Records for tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use crate::service::model::*;

    pub(crate) fn task(id: &str, tenant: &str, cpu: u32, memory: u32) -> Task {
        Task {
            task_id: id.into(),
            tenant: tenant.into(),
            task_definition: "f:1".into(),
            family: "f".into(),
            revision: 1,
            cpu,
            memory,
            ephemeral_storage: EphemeralStorage { size_in_gi_b: 20 },
            last_status: TaskStatus::Provisioning,
            desired_status: DesiredStatus::Running,
            started_by: None,
            tags: vec![],
            overrides: TaskOverrides::default(),
            containers: vec![],
            attachments: vec![],
            stop_code: None,
            stopped_reason: None,
            created_at: Some(now_ms()),
            pull_started_at: None,
            pull_stopped_at: None,
            started_at: None,
            stopping_at: None,
            stopped_at: None,
            jail_uid: 0,
            client_token: None,
            version: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::task;
    use super::*;
    use crate::service::model::*;

    fn admission() -> Admission {
        Admission {
            cpu: 1024,
            memory: 4096,
            tenant_cpu: None,
            tenant_memory: None,
            tenant_tasks: Some(3),
            uid_base: 100_000,
            uid_count: 100,
        }
    }

    #[test]
    fn capacity_and_quotas_are_enforced_in_the_transaction() {
        let store = SqliteStore::in_memory().unwrap();
        let a = admission();
        let got = store
            .create_tasks(
                vec![task("t1", "a", 512, 1024), task("t2", "a", 256, 512)],
                &a,
                "x",
            )
            .unwrap()
            .unwrap();
        assert_eq!(got[0].jail_uid, 100_000);
        assert_eq!(got[1].jail_uid, 100_001);
        let refused = store
            .create_tasks(vec![task("t3", "b", 512, 1024)], &a, "x")
            .unwrap();
        assert!(matches!(
            refused,
            Err(Refusal::Capacity {
                resource: "RESOURCE:CPU",
                free: 256,
                ..
            })
        ));
        let refused = store
            .create_tasks(vec![task("t3", "b", 256, 4096)], &a, "x")
            .unwrap();
        assert!(matches!(
            refused,
            Err(Refusal::Capacity {
                resource: "RESOURCE:MEMORY",
                ..
            })
        ));
        store
            .create_tasks(vec![task("t3", "a", 256, 512)], &a, "x")
            .unwrap()
            .unwrap();
        assert_eq!(
            store.usage(None).unwrap(),
            Usage {
                cpu: 1024,
                memory: 2048,
                tasks: 3,
                running: 0,
                pending: 3,
            }
        );
        // Stopping one frees its capacity and its uid.
        let mut t1 = store.task(None, "t1").unwrap().unwrap();
        t1.last_status = TaskStatus::Stopped;
        t1.version += 1;
        store.update_task(&t1, None).unwrap();
        let again = store
            .create_tasks(vec![task("t4", "b", 512, 512)], &a, "x")
            .unwrap()
            .unwrap();
        assert_eq!(again[0].jail_uid, 100_000);
        // The tenant's quota of tasks.
        let refused = store
            .create_tasks(
                vec![task("t5", "a", 256, 512), task("t6", "a", 256, 512)],
                &a,
                "x",
            )
            .unwrap();
        assert!(matches!(
            refused,
            Err(Refusal::Capacity { .. }) | Err(Refusal::Quota { .. })
        ));
    }

    #[test]
    fn updates_are_compare_and_swap_on_the_version() {
        let store = SqliteStore::in_memory().unwrap();
        store
            .create_tasks(vec![task("t1", "a", 256, 512)], &admission(), "created")
            .unwrap()
            .unwrap();
        let mut t = store.task(Some("a"), "t1").unwrap().unwrap();
        assert!(
            store.task(Some("b"), "t1").unwrap().is_none(),
            "another tenant's task is invisible"
        );
        t.version += 1;
        t.last_status = TaskStatus::Running;
        let ev = TaskEvent {
            at: Some(1),
            last_status: TaskStatus::Running,
            desired_status: DesiredStatus::Running,
            message: "up".into(),
        };
        store.update_task(&t, Some(&ev)).unwrap();
        assert!(matches!(
            store.update_task(&t, None),
            Err(StateError::Conflict(_))
        ));
        let events = store.events("t1").unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].message, "up");
    }

    #[test]
    fn revisions_count_up_per_family_and_tenant_and_lists_page() {
        let store = SqliteStore::in_memory().unwrap();
        let def = crate::service::validate::task_definition(
            serde_json::from_value(serde_json::json!({"family": "web", "containerDefinitions": [{"name": "app", "image": "busybox"}]})).unwrap(),
        )
        .unwrap();
        for _ in 0..3 {
            store.register_task_definition("a", def.clone()).unwrap();
        }
        let other = store.register_task_definition("b", def.clone()).unwrap();
        assert_eq!(other.revision, 1);
        assert_eq!(
            store
                .task_definition("a", "web", None)
                .unwrap()
                .unwrap()
                .revision,
            3
        );
        store
            .deregister_task_definition("a", "web", 3, 5)
            .unwrap()
            .unwrap();
        assert_eq!(
            store
                .task_definition("a", "web", None)
                .unwrap()
                .unwrap()
                .revision,
            2
        );
        let d3 = store.task_definition("a", "web", Some(3)).unwrap().unwrap();
        assert_eq!(d3.status, DefinitionStatus::Inactive);
        let page1 = store
            .list_task_definitions(
                "a",
                &DefinitionFilter::default(),
                &Page {
                    after: None,
                    limit: 2,
                },
            )
            .unwrap();
        assert_eq!(page1.iter().map(|d| d.revision).collect::<Vec<_>>(), [1, 2]);
        let page2 = store
            .list_task_definitions(
                "a",
                &DefinitionFilter::default(),
                &Page {
                    after: Some(page1[1].key()),
                    limit: 2,
                },
            )
            .unwrap();
        assert_eq!(page2.iter().map(|d| d.revision).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn private_images_have_owners() {
        let store = SqliteStore::in_memory().unwrap();
        assert!(store.image_owners("r:5000/x:1").unwrap().is_empty());
        store.add_image_owner("r:5000/x:1", "b").unwrap();
        store.add_image_owner("r:5000/x:1", "b").unwrap();
        assert_eq!(store.image_owners("r:5000/x:1").unwrap(), ["b"]);
        store.forget_image_owners("r:5000/x:1").unwrap();
        assert!(store.image_owners("r:5000/x:1").unwrap().is_empty());
    }

    #[test]
    fn a_database_of_schema_2_migrates_with_its_tasks() {
        let dir = std::env::temp_dir().join(format!("skiff-state-v2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.db");
        {
            // What a skiffd of schema 2 left: a task, written without a client token column.
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..2] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 2).unwrap();
            let t = task("old", "a", 256, 512);
            conn.execute(
                "INSERT INTO tasks (id, tenant, family, desired_status, last_status, started_by,
                    created_at, stopped_at, cpu, memory, jail_uid, version, body)
                 VALUES ('old', 'a', 'web', 'RUNNING', 'PROVISIONING', NULL, 1, NULL, 256, 512,
                    100000, 1, ?1)",
                params![to_json(&t).unwrap()],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert!(
            store.task(Some("a"), "old").unwrap().is_some(),
            "the task survives"
        );
        assert!(store.tasks_with_client_token("a", "x").unwrap().is_empty());
        let mut t = task("new", "a", 256, 512);
        t.client_token = Some("x".into());
        store
            .create_tasks(vec![t.clone()], &admission(), "x")
            .unwrap()
            .unwrap();
        assert_eq!(store.tasks_with_client_token("a", "x").unwrap().len(), 1);
        t.task_id = "again".into();
        assert_eq!(
            store.create_tasks(vec![t], &admission(), "x").unwrap(),
            Err(Refusal::ClientTokenUsed)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_database_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("skiff-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            store
                .create_tasks(vec![task("t1", "a", 256, 512)], &admission(), "x")
                .unwrap()
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.unfinished_tasks().unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn definitions_filter_by_prefix_and_status_sort_down_and_tags_change() {
        let store = SqliteStore::in_memory().unwrap();
        let def = |family: &str| {
            crate::service::validate::task_definition(
                serde_json::from_value(serde_json::json!({"family": family, "containerDefinitions": [{"name": "app", "image": "busybox"}]})).unwrap(),
            )
            .unwrap()
        };
        for family in ["web", "web", "worker", "db"] {
            store.register_task_definition("a", def(family)).unwrap();
        }
        store.deregister_task_definition("a", "db", 1, 5).unwrap();
        let all = |filter: &DefinitionFilter| {
            store
                .list_task_definitions(
                    "a",
                    filter,
                    &Page {
                        after: None,
                        limit: 10,
                    },
                )
                .unwrap()
                .iter()
                .map(TaskDefinition::key)
                .collect::<Vec<_>>()
        };
        let web = DefinitionFilter {
            family: Some("web".into()),
            ..Default::default()
        };
        assert_eq!(all(&web), ["web:1", "web:2"]);
        let down = DefinitionFilter {
            descending: true,
            ..Default::default()
        };
        assert_eq!(all(&down), ["worker:1", "web:2", "web:1", "db:1"]);
        let page = Page {
            after: Some("web:2".into()),
            limit: 10,
        };
        let next = store.list_task_definitions("a", &down, &page).unwrap();
        assert_eq!(
            next.iter().map(TaskDefinition::key).collect::<Vec<_>>(),
            ["web:1", "db:1"]
        );
        let inactive = DefinitionFilter {
            status: Some(DefinitionStatus::Inactive),
            ..Default::default()
        };
        assert_eq!(all(&inactive), ["db:1"]);

        let families = |prefix: Option<&str>, status, after: Option<&str>| {
            store
                .list_families(
                    "a",
                    prefix,
                    status,
                    &Page {
                        after: after.map(Into::into),
                        limit: 10,
                    },
                )
                .unwrap()
        };
        assert_eq!(
            families(None, FamilyStatus::Active, None),
            ["web", "worker"]
        );
        assert_eq!(families(None, FamilyStatus::Inactive, None), ["db"]);
        assert_eq!(
            families(None, FamilyStatus::All, Some("db")),
            ["web", "worker"]
        );
        assert_eq!(families(Some("wo"), FamilyStatus::All, None), ["worker"]);
        assert!(
            families(Some("%"), FamilyStatus::All, None).is_empty(),
            "a prefix is no LIKE pattern"
        );
        assert!(store
            .list_families(
                "b",
                None,
                FamilyStatus::All,
                &Page {
                    after: None,
                    limit: 10
                }
            )
            .unwrap()
            .is_empty());

        let tags = [Tag {
            key: "team".into(),
            value: "a".into(),
        }];
        let tagged = store
            .retag_task_definition("a", "web", 2, &mut |_| Some(tags.to_vec()))
            .unwrap()
            .unwrap();
        assert_eq!(tagged.tags, tags);
        assert_eq!(
            store
                .task_definition("a", "web", Some(2))
                .unwrap()
                .unwrap()
                .tags,
            tags
        );
        assert!(
            store
                .retag_task_definition("b", "web", 2, &mut |_| Some(tags.to_vec()))
                .unwrap()
                .is_none(),
            "another tenant's revision"
        );
    }
}
