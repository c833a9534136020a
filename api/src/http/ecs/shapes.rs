//! The one place that maps between ECS's JSON shapes and the service's types: ARNs, task and
//! task definition outputs (times as epoch seconds, sizes as strings, as botocore's model has
//! them), and a field-by-field reader of request objects that names every field it cannot take.

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use super::error::EcsError;
use crate::service::model::{Container, Millis, Tag, Task, TaskDefinition};

/// The cluster every task is in.
pub const CLUSTER: &str = "default";

/// ARNs of one account in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arns {
    pub region: String,
    pub account: String,
}

/// What an ARN (or a bare name or id) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Task(String),
    /// `family` or `family:revision`.
    TaskDefinition(String),
    Cluster(String),
}

impl Arns {
    fn prefix(&self) -> String {
        format!("arn:aws:ecs:{}:{}:", self.region, self.account)
    }

    pub fn cluster(&self) -> String {
        format!("{}cluster/{CLUSTER}", self.prefix())
    }

    pub fn task(&self, id: &str) -> String {
        format!("{}task/{CLUSTER}/{id}", self.prefix())
    }

    pub fn task_definition(&self, key: &str) -> String {
        format!("{}task-definition/{key}", self.prefix())
    }

    pub fn container(&self, task_id: &str, name: &str) -> String {
        format!("{}container/{CLUSTER}/{task_id}/{name}", self.prefix())
    }

    /// What `arn` names, if it is an ECS ARN of this account and region; `Err` for an ARN of
    /// another account or region, or one that names nothing Skiff has.
    pub fn parse(&self, arn: &str) -> Result<Resource, EcsError> {
        let rest = arn
            .strip_prefix("arn:aws:ecs:")
            .ok_or_else(|| EcsError::invalid(format!("{arn:?} is not an ECS ARN")))?;
        let mut parts = rest.splitn(3, ':');
        let (region, account, resource) = match (parts.next(), parts.next(), parts.next()) {
            (Some(r), Some(a), Some(res)) => (r, a, res),
            _ => return Err(EcsError::invalid(format!("{arn:?} is not an ECS ARN"))),
        };
        if region != self.region || account != self.account {
            return Err(EcsError::access_denied(format!(
                "{arn} belongs to another account or region than the caller's \
                 ({}, {})",
                self.account, self.region
            )));
        }
        let (kind, path) = resource
            .split_once('/')
            .ok_or_else(|| EcsError::invalid(format!("{arn:?} names no resource")))?;
        match kind {
            "task" => {
                let id = match path.split_once('/') {
                    Some((cluster, id)) => {
                        self.check_cluster(Some(cluster))?;
                        id
                    }
                    None => path,
                };
                Ok(Resource::Task(id.to_owned()))
            }
            "task-definition" => Ok(Resource::TaskDefinition(path.to_owned())),
            "cluster" => Ok(Resource::Cluster(path.to_owned())),
            other => Err(EcsError::invalid(format!(
                "{arn}: Skiff has no {other} resources"
            ))),
        }
    }

    /// A task id from an id or a task ARN.
    pub fn task_id(&self, reference: &str) -> Result<String, EcsError> {
        if !reference.starts_with("arn:") {
            return Ok(reference.to_owned());
        }
        match self.parse(reference)? {
            Resource::Task(id) => Ok(id),
            _ => Err(EcsError::invalid(format!("{reference} is not a task ARN"))),
        }
    }

    /// `family[:revision]` from itself or a task definition ARN.
    pub fn definition_ref(&self, reference: &str) -> Result<String, EcsError> {
        if !reference.starts_with("arn:") {
            return Ok(reference.to_owned());
        }
        match self.parse(reference)? {
            Resource::TaskDefinition(key) => Ok(key),
            _ => Err(EcsError::invalid(format!(
                "{reference} is not a task definition ARN"
            ))),
        }
    }

    /// Whether `cluster` (a name or ARN; none: the default) is the one cluster.
    pub fn check_cluster(&self, cluster: Option<&str>) -> Result<(), EcsError> {
        match cluster {
            None | Some(CLUSTER) => Ok(()),
            Some(arn) if arn == self.cluster() => Ok(()),
            Some(_) => Err(EcsError::cluster_not_found()),
        }
    }
}

/// Milliseconds → epoch seconds (a JSON number, as botocore reads timestamps).
fn seconds(ms: Option<Millis>) -> Value {
    ms.map_or(Value::Null, |ms| json!(ms as f64 / 1000.0))
}

pub fn tags(tags: &[Tag]) -> Value {
    Value::Array(
        tags.iter()
            .map(|t| json!({"key": t.key, "value": t.value}))
            .collect(),
    )
}

/// Drops null members, as AWS leaves unset fields out.
pub fn compact(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, compact(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(compact).collect()),
        other => other,
    }
}

/// A task definition as `DescribeTaskDefinition` returns it.
pub fn task_definition(def: &TaskDefinition, arns: &Arns) -> Value {
    let containers: Vec<Value> = def
        .container_definitions
        .iter()
        .map(|c| {
            let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
            if let Some(map) = v.as_object_mut() {
                // ECS lists these even when empty.
                for key in ["environment", "portMappings"] {
                    map.entry(key).or_insert_with(|| json!([]));
                }
                map.insert("essential".into(), json!(c.essential));
            }
            v
        })
        .collect();
    compact(json!({
        "taskDefinitionArn": arns.task_definition(&def.key()),
        "family": def.family,
        "revision": def.revision,
        "status": def.status.as_str(),
        "containerDefinitions": containers,
        "cpu": def.cpu.to_string(),
        "memory": def.memory.to_string(),
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "compatibilities": ["FARGATE"],
        "ephemeralStorage": {"sizeInGiB": def.ephemeral_storage.size_in_gi_b},
        "runtimePlatform": {"cpuArchitecture": "X86_64", "operatingSystemFamily": "LINUX"},
        "volumes": [],
        "placementConstraints": [],
        "registeredAt": seconds(def.registered_at),
        "deregisteredAt": seconds(def.deregistered_at),
    }))
}

fn container(task: &Task, c: &Container, arns: &Arns) -> Value {
    json!({
        "containerArn": arns.container(&task.task_id, &c.name),
        "taskArn": arns.task(&task.task_id),
        "name": c.name,
        "image": c.image,
        "lastStatus": c.last_status.as_str(),
        "exitCode": c.exit_code,
        "reason": c.reason,
        "networkInterfaces": [],
        "cpu": "0",
    })
}

/// A task as `DescribeTasks` returns it (tags only when asked for, as ECS).
pub fn task(task: &Task, arns: &Arns, with_tags: bool) -> Value {
    let overrides = &task.overrides;
    let container_overrides: Vec<Value> = overrides
        .container_overrides
        .iter()
        .map(|o| {
            json!({
                "name": o.name,
                "command": o.command,
                "environment": o.environment.iter().map(|e| json!({"name": e.name, "value": e.value})).collect::<Vec<_>>(),
                "cpu": o.cpu,
                "memory": o.memory,
            })
        })
        .collect();
    let attachments: Vec<Value> = task
        .attachments
        .iter()
        .map(|a| {
            json!({
                "id": a.id,
                "type": a.kind,
                "status": a.status,
                "details": a.details.iter().map(|d| json!({"name": d.key, "value": d.value})).collect::<Vec<_>>(),
            })
        })
        .collect();
    compact(json!({
        "taskArn": arns.task(&task.task_id),
        "clusterArn": arns.cluster(),
        "taskDefinitionArn": arns.task_definition(&task.task_definition),
        "lastStatus": task.last_status.as_str(),
        "desiredStatus": task.desired_status.as_str(),
        "cpu": task.cpu.to_string(),
        "memory": task.memory.to_string(),
        "containers": task.containers.iter().map(|c| container(task, c, arns)).collect::<Vec<_>>(),
        "startedBy": task.started_by,
        "group": format!("family:{}", task.family),
        "launchType": "FARGATE",
        "platformVersion": "1.4.0",
        "platformFamily": "Linux",
        "connectivity": if task.started_at.is_some() { json!("CONNECTED") } else { Value::Null },
        "stopCode": task.stop_code.map(|c| serde_json::to_value(c).unwrap_or(Value::Null)),
        "stoppedReason": task.stopped_reason,
        "createdAt": seconds(task.created_at),
        "pullStartedAt": seconds(task.pull_started_at),
        "pullStoppedAt": seconds(task.pull_stopped_at),
        "startedAt": seconds(task.started_at),
        "stoppingAt": seconds(task.stopping_at),
        "executionStoppedAt": seconds(task.stopped_at),
        "stoppedAt": seconds(task.stopped_at),
        "version": task.version,
        "overrides": {
            "containerOverrides": container_overrides,
            "cpu": overrides.cpu.map(|c| c.to_string()),
            "memory": overrides.memory.map(|m| m.to_string()),
        },
        "attachments": attachments,
        "ephemeralStorage": {"sizeInGiB": task.ephemeral_storage.size_in_gi_b},
        "tags": if with_tags { tags(&task.tags) } else { Value::Null },
    }))
}

/// Reads a request object field by field; [`Fields::finish`] names any field left unread.
pub struct Fields {
    path: String,
    map: Map<String, Value>,
}

impl Fields {
    /// `value` must be an object (`path` names it in errors).
    pub fn new(path: &str, value: Value) -> Result<Self, EcsError> {
        match value {
            Value::Object(map) => Ok(Self {
                path: path.to_owned(),
                map,
            }),
            Value::Null => Ok(Self {
                path: path.to_owned(),
                map: Map::new(),
            }),
            _ => Err(EcsError::serialization(format!(
                "{} must be a JSON object",
                if path.is_empty() { "the request" } else { path }
            ))),
        }
    }

    fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// An optional field (JSON null counts as absent).
    pub fn optional<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, EcsError> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| EcsError::invalid(format!("{}: {e}", self.name(key)))),
        }
    }

    pub fn required<T: DeserializeOwned>(&mut self, key: &str) -> Result<T, EcsError> {
        let name = self.name(key);
        self.optional(key)?
            .ok_or_else(|| EcsError::invalid(format!("{name} is required")))
    }

    /// A raw field.
    pub fn value(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    /// Fields ECS knows that Skiff accepts and does not act on.
    pub fn ignore(&mut self, keys: &[&str]) {
        for k in keys {
            self.map.remove(*k);
        }
    }

    /// Fields Skiff accepts only when empty (or false).
    pub fn only_empty(&mut self, keys: &[&str]) -> Result<(), EcsError> {
        for k in keys {
            match self.map.remove(*k) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                Some(Value::Array(a)) if a.is_empty() => {}
                Some(Value::Object(o)) if o.is_empty() => {}
                Some(_) => {
                    return Err(EcsError::invalid(format!(
                        "{} is not supported by Skiff",
                        self.name(k)
                    )))
                }
            }
        }
        Ok(())
    }

    /// Fails naming the first field nobody read.
    pub fn finish(self) -> Result<(), EcsError> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(EcsError::invalid(format!(
                "{} is not supported by Skiff",
                self.name(k)
            ))),
        }
    }
}

/// A size ECS sends as a string (`"512"`) or a number.
pub fn size(field: &str, value: Option<Value>) -> Result<Option<u32>, EcsError> {
    let bad = || EcsError::invalid(format!("{field} must be a whole number"));
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(bad),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

/// `maxResults` (1-100; 100 by default) and `nextToken` of a listing.
pub fn page(fields: &mut Fields) -> Result<crate::state::Page, EcsError> {
    let limit: Option<i64> = fields.optional("maxResults")?;
    let limit = match limit {
        None => 100,
        Some(n @ 1..=100) => n as usize,
        Some(n) => {
            return Err(EcsError::invalid(format!(
                "maxResults must be from 1 to 100, not {n}"
            )))
        }
    };
    let after: Option<String> = fields.optional("nextToken")?;
    if after.as_ref().is_some_and(|t| t.len() > 1024) {
        return Err(EcsError::invalid("nextToken is too long"));
    }
    Ok(crate::state::Page { after, limit })
}
