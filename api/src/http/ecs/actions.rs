//! The ECS actions: each reads its request's fields, calls the service and shapes the answer.

use std::sync::Arc;

use serde_json::{json, Value};

use super::error::EcsError;
use super::shapes::{self, Arns, Fields, Resource};
use crate::executor::Executor;
use crate::service::model::{
    ContainerOverride, DefinitionStatus, DesiredStatus, EnvVar, StopCode, Tag, TaskOverrides,
};
use crate::service::validate::TaskDefinitionInput;
use crate::service::{RunTaskInput, Service, ServiceError, TagChange, Tenant};
use crate::state::{DefinitionFilter, FamilyStatus, Refusal, TaskFilter};

/// Who calls, and the service they call.
pub struct Ctx<E: Executor> {
    pub service: Arc<Service<E>>,
    pub tenant: Tenant,
    pub arns: Arns,
}

/// The actions Skiff answers.
pub const SUPPORTED: [&str; 17] = [
    "RegisterTaskDefinition",
    "DescribeTaskDefinition",
    "ListTaskDefinitions",
    "ListTaskDefinitionFamilies",
    "DeregisterTaskDefinition",
    "RunTask",
    "DescribeTasks",
    "ListTasks",
    "StopTask",
    "ListClusters",
    "DescribeClusters",
    "TagResource",
    "UntagResource",
    "ListTagsForResource",
    "ListAccountSettings",
    "ListServices",
    "DescribeCapacityProviders",
];

/// Runs `action`; `None` when Skiff does not have it.
pub fn dispatch<E: Executor>(
    ctx: &Ctx<E>,
    action: &str,
    f: Fields,
) -> Option<Result<Value, EcsError>> {
    let result = match action {
        "RegisterTaskDefinition" => register_task_definition(ctx, f),
        "DescribeTaskDefinition" => describe_task_definition(ctx, f),
        "ListTaskDefinitions" => list_task_definitions(ctx, f),
        "ListTaskDefinitionFamilies" => list_task_definition_families(ctx, f),
        "DeregisterTaskDefinition" => deregister_task_definition(ctx, f),
        "RunTask" => run_task(ctx, f),
        "DescribeTasks" => describe_tasks(ctx, f),
        "ListTasks" => list_tasks(ctx, f),
        "StopTask" => stop_task(ctx, f),
        "ListClusters" => list_clusters(ctx, f),
        "DescribeClusters" => describe_clusters(ctx, f),
        "TagResource" => tag_resource(ctx, f),
        "UntagResource" => untag_resource(ctx, f),
        "ListTagsForResource" => list_tags_for_resource(ctx, f),
        "ListAccountSettings" => Ok(json!({"settings": []})),
        "ListServices" => list_services(ctx, f),
        "DescribeCapacityProviders" => Ok(json!({
            "capacityProviders": [{"name": "FARGATE", "status": "ACTIVE"}], "failures": []
        })),
        _ => return None,
    };
    Some(result)
}

fn cluster<E: Executor>(ctx: &Ctx<E>, f: &mut Fields) -> Result<(), EcsError> {
    let cluster: Option<String> = f.optional("cluster")?;
    ctx.arns.check_cluster(cluster.as_deref())
}

fn include_tags(f: &mut Fields) -> Result<bool, EcsError> {
    let include: Option<Vec<String>> = f.optional("include")?;
    Ok(include.is_some_and(|i| i.iter().any(|x| x == "TAGS")))
}

/// One container definition: the fields Skiff runs with, those it accepts and does not act on,
/// and an error naming any other.
fn container_definition(index: usize, value: Value) -> Result<Value, EcsError> {
    let mut f = Fields::new(&format!("containerDefinitions[{index}]"), value)?;
    let mut out = serde_json::Map::new();
    for key in [
        "name",
        "image",
        "entryPoint",
        "command",
        "environment",
        "workingDirectory",
        "user",
        "stopTimeout",
        "essential",
        "repositoryCredentials",
        "cpu",
        "memory",
        "ulimits",
        "dockerSecurityOptions",
    ] {
        if let Some(v) = f.value(key) {
            out.insert(key.into(), v);
        }
    }
    if let Some(Value::Array(mappings)) = f.value("portMappings") {
        let mappings: Vec<Value> = mappings
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let mut m = Fields::new(
                    &format!("containerDefinitions[{index}].portMappings[{i}]"),
                    m,
                )?;
                let mut kept = serde_json::Map::new();
                for key in ["containerPort", "hostPort", "protocol"] {
                    if let Some(v) = m.value(key) {
                        kept.insert(key.into(), v);
                    }
                }
                m.ignore(&["name", "appProtocol"]);
                m.finish()?;
                Ok(Value::Object(kept))
            })
            .collect::<Result<_, EcsError>>()?;
        out.insert("portMappings".into(), Value::Array(mappings));
    }
    if let Some(params) = f.value("linuxParameters") {
        let mut p = Fields::new(
            &format!("containerDefinitions[{index}].linuxParameters"),
            params,
        )?;
        let mut kept = serde_json::Map::new();
        if let Some(caps) = p.value("capabilities") {
            kept.insert("capabilities".into(), caps);
        }
        if let Some(init) = p.value("initProcessEnabled") {
            kept.insert("initProcessEnabled".into(), init);
        }
        p.only_empty(&[
            "devices",
            "sharedMemorySize",
            "tmpfs",
            "maxSwap",
            "swappiness",
        ])?;
        p.finish()?;
        out.insert("linuxParameters".into(), Value::Object(kept));
    }
    // Logs are always kept (read them with `skiff logs` or /v1); labels and reservations are
    // recorded by ECS for schedulers Skiff does not have.
    f.ignore(&[
        "logConfiguration",
        "memoryReservation",
        "dockerLabels",
        "interactive",
        "pseudoTerminal",
    ]);
    f.only_empty(&[
        "mountPoints",
        "volumesFrom",
        "systemControls",
        "links",
        "dependsOn",
        "secrets",
        "environmentFiles",
        "extraHosts",
        "dnsServers",
        "dnsSearchDomains",
        "readonlyRootFilesystem",
        "privileged",
    ])?;
    f.finish()?;
    Ok(Value::Object(out))
}

fn register_task_definition<E: Executor>(ctx: &Ctx<E>, mut f: Fields) -> Result<Value, EcsError> {
    let family: String = f.required("family")?;
    let containers: Vec<Value> = f.required("containerDefinitions")?;
    let containers = containers
        .into_iter()
        .enumerate()
        .map(|(i, c)| container_definition(i, c))
        .collect::<Result<Vec<_>, _>>()?;
    let cpu = f.value("cpu");
    let memory = f.value("memory");
    let ephemeral: Option<Value> = f.value("ephemeralStorage");
    let tags: Option<Vec<Tag>> = f.optional("tags")?;
    let compat: Option<Vec<String>> = f.optional("requiresCompatibilities")?;
    if let Some(other) = compat.iter().flatten().find(|c| *c != "FARGATE") {
        return Err(EcsError::invalid(format!(
            "requiresCompatibilities: Skiff runs FARGATE tasks only, not {other}"
        )));
    }
    let network: Option<String> = f.optional("networkMode")?;
    if network.as_deref().is_some_and(|n| n != "awsvpc") {
        return Err(EcsError::invalid(
            "networkMode: Skiff's tasks use awsvpc (each its own interface)",
        ));
    }
    if let Some(platform) = f.value("runtimePlatform") {
        let mut p = Fields::new("runtimePlatform", platform)?;
        let arch: Option<String> = p.optional("cpuArchitecture")?;
        let os: Option<String> = p.optional("operatingSystemFamily")?;
        p.finish()?;
        if arch.is_some_and(|a| a != "X86_64") || os.is_some_and(|o| o != "LINUX") {
            return Err(EcsError::invalid(
                "runtimePlatform: Skiff runs LINUX on X86_64",
            ));
        }
    }
    f.ignore(&["executionRoleArn", "taskRoleArn"]);
    f.only_empty(&[
        "volumes",
        "placementConstraints",
        "proxyConfiguration",
        "inferenceAccelerators",
        "pidMode",
        "ipcMode",
        "enableFaultInjection",
    ])?;
    f.finish()?;
    let input: TaskDefinitionInput = serde_json::from_value(json!({
        "family": family,
        "cpu": cpu,
        "memory": memory,
        "ephemeralStorage": ephemeral,
        "containerDefinitions": containers,
        "tags": tags.unwrap_or_default(),
    }))
    .map_err(|e| EcsError::invalid(e.to_string()))?;
    let def = ctx.service.register_task_definition(&ctx.tenant, input)?;
    Ok(json!({
        "taskDefinition": shapes::task_definition(&def, &ctx.arns),
        "tags": shapes::tags(&def.tags),
    }))
}

fn describe_task_definition<E: Executor>(ctx: &Ctx<E>, mut f: Fields) -> Result<Value, EcsError> {
    let reference: String = f.required("taskDefinition")?;
    let with_tags = include_tags(&mut f)?;
    f.finish()?;
    let reference = ctx.arns.definition_ref(&reference)?;
    let def = ctx
        .service
        .task_definition(&ctx.tenant, &reference)
        .map_err(|e| match e {
            ServiceError::NotFound(_) => EcsError::client("Unable to describe task definition."),
            other => other.into(),
        })?;
    let mut out = json!({"taskDefinition": shapes::task_definition(&def, &ctx.arns)});
    if with_tags {
        out["tags"] = shapes::tags(&def.tags);
    }
    Ok(out)
}

fn list_task_definitions<E: Executor>(ctx: &Ctx<E>, mut f: Fields) -> Result<Value, EcsError> {
    // Despite its name, ECS matches `familyPrefix` here as the whole family name.
    let family: Option<String> = f.optional("familyPrefix")?;
    let status = match f.optional::<String>("status")?.as_deref() {
        None | Some("ACTIVE") => Some(DefinitionStatus::Active),
        Some("INACTIVE") => Some(DefinitionStatus::Inactive),
        Some(other) => {
            return Err(EcsError::invalid(format!(
                "status {other:?}: ACTIVE or INACTIVE"
            )))
        }
    };
    let descending = match f.optional::<String>("sort")?.as_deref() {
        None | Some("ASC") => false,
        Some("DESC") => true,
        Some(other) => return Err(EcsError::invalid(format!("sort {other:?}: ASC or DESC"))),
    };
    let page = shapes::page(&mut f)?;
    f.finish()?;
    let filter = DefinitionFilter {
        family,
        status,
        descending,
    };
    let (defs, next) = ctx
        .service
        .list_task_definitions(&ctx.tenant, &filter, page)?;
    Ok(json!({
        "taskDefinitionArns": defs.iter().map(|d| ctx.arns.task_definition(&d.key())).collect::<Vec<_>>(),
        "nextToken": next,
    }))
}

fn list_task_definition_families<E: Executor>(
    ctx: &Ctx<E>,
    mut f: Fields,
) -> Result<Value, EcsError> {
    let prefix: Option<String> = f.optional("familyPrefix")?;
    let status = match f.optional::<String>("status")?.as_deref() {
        Some("ACTIVE") => FamilyStatus::Active,
        Some("INACTIVE") => FamilyStatus::Inactive,
        None | Some("ALL") => FamilyStatus::All,
        Some(other) => {
            return Err(EcsError::invalid(format!(
                "status {other:?}: ACTIVE, INACTIVE or ALL"
            )))
        }
    };
    let page = shapes::page(&mut f)?;
    f.finish()?;
    let (families, next) =
        ctx.service
            .list_families(&ctx.tenant, prefix.as_deref(), status, page)?;
    Ok(json!({"families": families, "nextToken": next}))
}

fn deregister_task_definition<E: Executor>(ctx: &Ctx<E>, mut f: Fields) -> Result<Value, EcsError> {
    let reference: String = f.required("taskDefinition")?;
    f.finish()?;
    let reference = ctx.arns.definition_ref(&reference)?;
    let def = ctx
        .service
        .deregister_task_definition(&ctx.tenant, &reference)?;
    Ok(json!({"taskDefinition": shapes::task_definition(&def, &ctx.arns)}))
}

fn overrides(value: Option<Value>) -> Result<TaskOverrides, EcsError> {
    let Some(value) = value else {
        return Ok(TaskOverrides::default());
    };
    let mut f = Fields::new("overrides", value)?;
    let containers: Vec<Value> = f.optional("containerOverrides")?.unwrap_or_default();
    let container_overrides = containers
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut c = Fields::new(&format!("overrides.containerOverrides[{i}]"), c)?;
            let o = ContainerOverride {
                name: c.required("name")?,
                command: c.optional("command")?,
                environment: c
                    .optional::<Vec<EnvVar>>("environment")?
                    .unwrap_or_default(),
                cpu: c.optional("cpu")?,
                memory: c.optional("memory")?,
            };
            c.ignore(&["memoryReservation"]);
            c.only_empty(&["environmentFiles", "resourceRequirements"])?;
            c.finish()?;
            Ok(o)
        })
        .collect::<Result<_, EcsError>>()?;
    let cpu = shapes::size("overrides.cpu", f.value("cpu"))?;
    let memory = shapes::size("overrides.memory", f.value("memory"))?;
    f.ignore(&["executionRoleArn", "taskRoleArn"]);
    f.only_empty(&["ephemeralStorage", "inferenceAcceleratorOverrides"])?;
    f.finish()?;
    Ok(TaskOverrides {
        container_overrides,
        cpu,
        memory,
    })
}

fn run_task<E: Executor>(ctx: &Ctx<E>, mut f: Fields) -> Result<Value, EcsError> {
    cluster(ctx, &mut f)?;
    let reference: String = f.required("taskDefinition")?;
    let reference = ctx.arns.definition_ref(&reference)?;
    let count: Option<u32> = f.optional("count")?;
    let started_by: Option<String> = f.optional("startedBy")?;
    let tags: Option<Vec<Tag>> = f.optional("tags")?;
    let overrides = overrides(f.value("overrides"))?;
    // botocore fills it with a fresh UUID when the caller does not: its retries are idempotent.
    let client_token: Option<String> = f.optional("clientToken")?;
    let launch: Option<String> = f.optional("launchType")?;
    if launch.as_deref().is_some_and(|l| l != "FARGATE") {
        return Err(EcsError::invalid(format!(
            "launchType {}: Skiff runs FARGATE tasks only",
            launch.unwrap_or_default()
        )));
    }
    let platform: Option<String> = f.optional("platformVersion")?;
    if platform
        .as_deref()
        .is_some_and(|p| p != "LATEST" && p != "1.4.0")
    {
        return Err(EcsError::invalid("platformVersion: LATEST or 1.4.0"));
    }
    // Applied once task networking exists; until then every task has the guest's own stack.
    f.ignore(&[
        "networkConfiguration",
        "enableECSManagedTags",
        "propagateTags",
        "group",
        "referenceId",
        "placementConstraints",
        "placementStrategy",
        "capacityProviderStrategy",
    ]);
    f.only_empty(&["enableExecuteCommand", "volumeConfigurations"])?;
    f.finish()?;
    let input = RunTaskInput {
        task_definition: reference,
        count,
        started_by,
        tags: tags.unwrap_or_default(),
        overrides,
        client_token,
    };
    match ctx.service.run_task(&ctx.tenant, input) {
        Ok(tasks) => Ok(json!({
            "tasks": tasks.iter().map(|t| shapes::task(t, &ctx.arns, true)).collect::<Vec<_>>(),
            "failures": [],
        })),
        Err(ServiceError::Refused(refusal)) => {
            let reason = match &refusal {
                Refusal::Capacity { resource, .. } => *resource,
                Refusal::Quota { what, .. } if what.contains("memory") => "RESOURCE:MEMORY",
                Refusal::Quota { what, .. } if what.contains("CPU") => "RESOURCE:CPU",
                Refusal::Quota { .. } | Refusal::Uids | Refusal::ClientTokenUsed => {
                    "RESOURCE:TASKS"
                }
            };
            Ok(json!({
                "tasks": [],
                "failures": [{"reason": reason, "detail": refusal.to_string()}],
            }))
        }
        Err(ServiceError::NotFound(_)) => Err(EcsError::client("TaskDefinition not found.")),
        Err(e) => Err(e.into()),
    }
}

fn describe_tasks<E: Executor>(ctx: &Ctx<E>, mut f: Fields) -> Result<Value, EcsError> {
    cluster(ctx, &mut f)?;
    let references: Vec<String> = f.required("tasks")?;
    let with_tags = include_tags(&mut f)?;
    f.finish()?;
    if references.len() > 100 {
        return Err(EcsError::invalid("tasks: at most 100"));
    }
    let (mut tasks, mut failures) = (Vec::new(), Vec::new());
    for reference in references {
        let found = ctx
            .arns
            .task_id(&reference)
            .ok()
            .map(|id| ctx.service.task(&ctx.tenant, &id));
        match found {
            Some(Ok(task)) => tasks.push(shapes::task(&task, &ctx.arns, with_tags)),
            Some(Err(ServiceError::NotFound(_))) | None => {
                failures.push(json!({"arn": reference, "reason": "MISSING"}))
            }
            Some(Err(e)) => return Err(e.into()),
        }
    }
    Ok(json!({"tasks": tasks, "failures": failures}))
}

fn list_tasks<E: Executor>(ctx: &Ctx<E>, mut f: Fields) -> Result<Value, EcsError> {
    cluster(ctx, &mut f)?;
    let family: Option<String> = f.optional("family")?;
    let started_by: Option<String> = f.optional("startedBy")?;
    let desired: Option<String> = f.optional("desiredStatus")?;
    let launch: Option<String> = f.optional("launchType")?;
    let service_name: Option<String> = f.optional("serviceName")?;
    let instance: Option<String> = f.optional("containerInstance")?;
    let page = shapes::page(&mut f)?;
    f.finish()?;
    // ECS lists the tasks desired RUNNING unless asked otherwise; none is ever desired
    // PENDING here, none runs on EC2, in a service or on a container instance.
    let desired_status = match desired.as_deref() {
        None | Some("RUNNING") => DesiredStatus::Running,
        Some("STOPPED") => DesiredStatus::Stopped,
        Some("PENDING") => return Ok(json!({"taskArns": []})),
        Some(other) => {
            return Err(EcsError::invalid(format!(
                "desiredStatus {other:?}: RUNNING, PENDING or STOPPED"
            )))
        }
    };
    if launch.is_some_and(|l| l != "FARGATE") || service_name.is_some() || instance.is_some() {
        return Ok(json!({"taskArns": []}));
    }
    let filter = TaskFilter {
        family,
        desired_status: Some(desired_status),
        started_by,
    };
    let (tasks, next) = ctx.service.list_tasks(&ctx.tenant, &filter, page)?;
    Ok(json!({
        "taskArns": tasks.iter().map(|t| ctx.arns.task(&t.task_id)).collect::<Vec<_>>(),
        "nextToken": next,
    }))
}

fn stop_task<E: Executor>(ctx: &Ctx<E>, mut f: Fields) -> Result<Value, EcsError> {
    cluster(ctx, &mut f)?;
    let reference: String = f.required("task")?;
    let reason: Option<String> = f.optional("reason")?;
    f.finish()?;
    let id = ctx.arns.task_id(&reference)?;
    let task = ctx
        .service
        .stop_task(&ctx.tenant, &id, reason, StopCode::UserInitiated)
        .map_err(|e| match e {
            ServiceError::NotFound(_) => EcsError::invalid("The referenced task was not found."),
            other => other.into(),
        })?;
    Ok(json!({"task": shapes::task(&task, &ctx.arns, false)}))
}

fn list_clusters<E: Executor>(ctx: &Ctx<E>, mut f: Fields) -> Result<Value, EcsError> {
    shapes::page(&mut f)?;
    f.finish()?;
    Ok(json!({"clusterArns": [ctx.arns.cluster()]}))
}

fn describe_clusters<E: Executor>(ctx: &Ctx<E>, mut f: Fields) -> Result<Value, EcsError> {
    let names: Vec<String> = f
        .optional("clusters")?
        .unwrap_or_else(|| vec![shapes::CLUSTER.to_owned()]);
    f.ignore(&["include"]);
    f.finish()?;
    let usage = ctx.service.tenant_usage(&ctx.tenant)?;
    let (mut clusters, mut failures) = (Vec::new(), Vec::new());
    for name in names {
        if ctx.arns.check_cluster(Some(&name)).is_ok() {
            clusters.push(json!({
                "clusterArn": ctx.arns.cluster(),
                "clusterName": shapes::CLUSTER,
                "status": "ACTIVE",
                "registeredContainerInstancesCount": 0,
                "runningTasksCount": usage.running,
                "pendingTasksCount": usage.pending,
                "activeServicesCount": 0,
                "capacityProviders": ["FARGATE"],
                "statistics": [],
                "tags": [],
            }));
        } else {
            failures.push(json!({"arn": name, "reason": "MISSING"}));
        }
    }
    Ok(json!({"clusters": clusters, "failures": failures}))
}

fn list_services<E: Executor>(ctx: &Ctx<E>, mut f: Fields) -> Result<Value, EcsError> {
    cluster(ctx, &mut f)?;
    shapes::page(&mut f)?;
    f.ignore(&["launchType", "schedulingStrategy"]);
    f.finish()?;
    Ok(json!({"serviceArns": []}))
}

/// Tags a resource has, after `change` when there is one.
fn retag<E: Executor>(
    ctx: &Ctx<E>,
    arn: &str,
    change: Option<TagChange>,
) -> Result<Vec<Tag>, EcsError> {
    let not_found = |e: ServiceError| match e {
        ServiceError::NotFound(_) => {
            EcsError::invalid(format!("The specified resource {arn} is not found."))
        }
        other => other.into(),
    };
    match ctx.arns.parse(arn)? {
        Resource::Task(id) => match change {
            Some(c) => Ok(ctx
                .service
                .retag_task(&ctx.tenant, &id, &c)
                .map_err(not_found)?
                .tags),
            None => Ok(ctx.service.task(&ctx.tenant, &id).map_err(not_found)?.tags),
        },
        Resource::TaskDefinition(key) => match change {
            Some(c) => Ok(ctx
                .service
                .retag_task_definition(&ctx.tenant, &key, &c)
                .map_err(not_found)?
                .tags),
            None => Ok(ctx
                .service
                .task_definition(&ctx.tenant, &key)
                .map_err(not_found)?
                .tags),
        },
        Resource::Cluster(_) => Err(EcsError::invalid(
            "the default cluster has no tags in Skiff",
        )),
    }
}

fn tag_resource<E: Executor>(ctx: &Ctx<E>, mut f: Fields) -> Result<Value, EcsError> {
    let arn: String = f.required("resourceArn")?;
    let tags: Vec<Tag> = f.required("tags")?;
    f.finish()?;
    retag(ctx, &arn, Some(TagChange::Add(tags)))?;
    Ok(json!({}))
}

fn untag_resource<E: Executor>(ctx: &Ctx<E>, mut f: Fields) -> Result<Value, EcsError> {
    let arn: String = f.required("resourceArn")?;
    let keys: Vec<String> = f.required("tagKeys")?;
    f.finish()?;
    retag(ctx, &arn, Some(TagChange::Remove(keys)))?;
    Ok(json!({}))
}

fn list_tags_for_resource<E: Executor>(ctx: &Ctx<E>, mut f: Fields) -> Result<Value, EcsError> {
    let arn: String = f.required("resourceArn")?;
    f.finish()?;
    Ok(json!({"tags": shapes::tags(&retag(ctx, &arn, None)?)}))
}
