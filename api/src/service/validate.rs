//! Checks of what callers give the service: task definitions (Fargate's cpu/memory table, names,
//! storage, containers) and RunTask requests. Every refusal names the field.

use serde::{Deserialize, Serialize};
use skiff_protocol::privileges::PrivilegeError;

use super::model::{ContainerDefinition, EphemeralStorage, Tag, TaskDefinition, TaskOverrides};

/// A caller's mistake, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Ephemeral storage when none is given, and its range (GiB), as on Fargate.
pub const DEFAULT_EPHEMERAL_GIB: u32 = 20;
pub const MIN_EPHEMERAL_GIB: u32 = 21;
pub const MAX_EPHEMERAL_GIB: u32 = 200;
/// Task size when none is given: Fargate's smallest.
pub const DEFAULT_CPU: u32 = 256;
pub const DEFAULT_MEMORY: u32 = 512;
/// Default and allowed seconds between SIGTERM and SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: u32 = 30;
pub const MAX_STOP_TIMEOUT: u32 = 120;
/// Tasks one RunTask may start.
pub const MAX_COUNT: u32 = 10;
const MAX_TAGS: usize = 50;
const MAX_ARGS: usize = 1024;
const MAX_ARG_BYTES: usize = 64 << 10;
const MAX_ENV: usize = 1024;

/// A task definition as registered (before the service gives it a revision).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskDefinitionInput {
    pub family: String,
    /// CPU units: a number (`256`) or a string (`"256"`, `"1 vCPU"`, `"0.5 vcpu"`).
    #[serde(default)]
    pub cpu: Option<serde_json::Value>,
    /// MiB: a number (`512`) or a string (`"512"`, `"2 GB"`).
    #[serde(default)]
    pub memory: Option<serde_json::Value>,
    #[serde(default)]
    pub ephemeral_storage: Option<EphemeralStorage>,
    pub container_definitions: Vec<ContainerDefinition>,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// Fargate's valid task sizes: CPU units → the allowed memory (MiB) range and step.
const FARGATE_SIZES: [(u32, u32, u32, u32); 7] = [
    (256, 512, 2048, 512),
    (512, 1024, 4096, 1024),
    (1024, 2048, 8192, 1024),
    (2048, 4096, 16384, 1024),
    (4096, 8192, 30720, 1024),
    (8192, 16384, 61440, 4096),
    (16384, 32768, 122880, 8192),
];

/// Whether `cpu` units with `memory` MiB is one of Fargate's task sizes.
pub fn check_size(cpu: u32, memory: u32) -> Result<(), Invalid> {
    let Some(&(_, min, max, step)) = FARGATE_SIZES.iter().find(|s| s.0 == cpu) else {
        return Err(invalid(
            "cpu",
            format!(
                "{cpu} CPU units is not a task size; use 256, 512, 1024, 2048, 4096, 8192 or 16384"
            ),
        ));
    };
    // 256 units also allows 512 MiB, then 1024 and 2048 (step 1024 past 512).
    let ok = if cpu == 256 {
        matches!(memory, 512 | 1024 | 2048)
    } else {
        (min..=max).contains(&memory) && (memory - min) % step == 0
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "memory",
            format!(
                "{memory} MiB does not go with {cpu} CPU units; allowed: {min} to {max} MiB in steps of {}",
                if cpu == 256 { 512 } else { step }
            ),
        ))
    }
}

/// A whole quantity given as a number (`512`) or a string: plain (`"512"`, with an optional
/// `plain_suffix`) or in a larger unit (`"0.5 vcpu"`, `"2 gb"`: `unit_suffix`, times `scale`).
fn parse_quantity(
    field: &str,
    value: &serde_json::Value,
    unit_suffix: &str,
    plain_suffix: &str,
    scale: f64,
    example: &str,
) -> Result<u32, Invalid> {
    let bad = || invalid(field, format!("{value} is not {example}"));
    match value {
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(bad),
        serde_json::Value::String(s) => {
            let s = s.trim().to_ascii_lowercase();
            if let Some(v) = s.strip_suffix(unit_suffix) {
                let v: f64 = v.trim().parse().map_err(|_| bad())?;
                let whole = v * scale;
                (v.is_finite()
                    && (1.0..=f64::from(u32::MAX)).contains(&whole)
                    && whole.fract() == 0.0)
                    .then_some(whole as u32)
                    .ok_or_else(bad)
            } else {
                s.trim_end_matches(plain_suffix)
                    .trim()
                    .parse()
                    .map_err(|_| bad())
            }
        }
        _ => Err(bad()),
    }
}

/// `256`, `"256"`, `"1 vCPU"`, `"0.25 vcpu"` → CPU units.
fn parse_cpu(value: &serde_json::Value) -> Result<u32, Invalid> {
    parse_quantity(
        "cpu",
        value,
        "vcpu",
        "",
        1024.0,
        "CPU units (e.g. 256 or \"1 vCPU\")",
    )
}

/// `512`, `"512"`, `"512 MB"`, `"2 GB"` → MiB.
fn parse_memory(value: &serde_json::Value) -> Result<u32, Invalid> {
    parse_quantity(
        "memory",
        value,
        "gb",
        "mb",
        1024.0,
        "MiB (e.g. 512 or \"2 GB\")",
    )
}

/// A name of 1-255 letters, digits, `-` and `_` (ECS's rule for families and containers).
pub fn check_name(field: &str, name: &str) -> Result<(), Invalid> {
    let ok = (1..=255).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{name:?} must be 1-255 letters, digits, '-' or '_'"),
        ))
    }
}

fn check_strings(field: &str, items: &[String]) -> Result<(), Invalid> {
    if items.len() > MAX_ARGS {
        return Err(invalid(field, format!("more than {MAX_ARGS} items")));
    }
    if items.iter().map(String::len).sum::<usize>() > MAX_ARG_BYTES {
        return Err(invalid(field, format!("more than {MAX_ARG_BYTES} bytes")));
    }
    if items.iter().any(|s| s.contains('\0')) {
        return Err(invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

/// Checks environment variables (names as POSIX shells take them).
pub fn check_env(field: &str, env: &[super::model::EnvVar]) -> Result<(), Invalid> {
    if env.len() > MAX_ENV {
        return Err(invalid(field, format!("more than {MAX_ENV} variables")));
    }
    for var in env {
        let ok = !var.name.is_empty()
            && var.name.len() <= 255
            && !var.name.starts_with(|c: char| c.is_ascii_digit())
            && var
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(invalid(
                field,
                format!(
                    "{:?} is not a variable name (letters, digits, '_')",
                    var.name
                ),
            ));
        }
        if var.value.contains('\0') || var.value.len() > MAX_ARG_BYTES {
            return Err(invalid(
                field,
                format!("the value of {} is not usable", var.name),
            ));
        }
    }
    Ok(())
}

pub fn check_tags(field: &str, tags: &[Tag]) -> Result<(), Invalid> {
    if tags.len() > MAX_TAGS {
        return Err(invalid(field, format!("more than {MAX_TAGS} tags")));
    }
    for tag in tags {
        if tag.key.is_empty() || tag.key.len() > 128 || tag.value.len() > 256 {
            return Err(invalid(
                field,
                format!(
                    "tag {:?}: keys are 1-128 characters, values up to 256",
                    tag.key
                ),
            ));
        }
        if tag.key.to_ascii_lowercase().starts_with("aws:") {
            return Err(invalid(
                field,
                format!("tag {:?}: the aws: prefix is reserved", tag.key),
            ));
        }
    }
    Ok(())
}

/// An image name: a store name or a registry reference, without spaces or control characters.
pub fn check_image(field: &str, image: &str) -> Result<(), Invalid> {
    let ok = (1..=512).contains(&image.len())
        && !image.starts_with(['/', '.', '-'])
        && !image.contains("..")
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{image:?} is not an image reference (e.g. busybox:latest or registry:5000/app:1)"
            ),
        ))
    }
}

fn check_container(i: usize, c: &ContainerDefinition) -> Result<(), Invalid> {
    let field = |name: &str| format!("containerDefinitions[{i}].{name}");
    check_name(&field("name"), &c.name)?;
    check_image(&field("image"), &c.image)?;
    if let Some(e) = &c.entry_point {
        check_strings(&field("entryPoint"), e)?;
    }
    if let Some(cmd) = &c.command {
        check_strings(&field("command"), cmd)?;
    }
    check_env(&field("environment"), &c.environment)?;
    if let Some(dir) = &c.working_directory {
        if !dir.starts_with('/') || dir.contains('\0') || dir.len() > 4096 {
            return Err(invalid(
                field("workingDirectory"),
                format!("{dir:?} is not an absolute path"),
            ));
        }
    }
    if let Some(user) = &c.user {
        let ok = (1..=64).contains(&user.len())
            && user
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._-:".contains(ch));
        if !ok {
            return Err(invalid(
                field("user"),
                format!("{user:?} is not uid, uid:gid, user or user:group"),
            ));
        }
    }
    if let Some(t) = c.stop_timeout {
        if !(2..=MAX_STOP_TIMEOUT).contains(&t) {
            return Err(invalid(
                field("stopTimeout"),
                format!("{t} s: must be 2-{MAX_STOP_TIMEOUT}"),
            ));
        }
    }
    for (j, p) in c.port_mappings.iter().enumerate() {
        if p.container_port == 0
            || p.host_port == Some(0)
            || !matches!(p.protocol.as_str(), "tcp" | "udp")
        {
            return Err(invalid(
                format!("{}[{j}]", field("portMappings")),
                "ports are 1-65535 and the protocol tcp or udp",
            ));
        }
    }
    if !c.essential {
        return Err(invalid(
            field("essential"),
            "the task's one container must be essential",
        ));
    }
    if let Some(creds) = &c.repository_credentials {
        check_name(
            &field("repositoryCredentials.credentialsParameter"),
            &creds.credentials_parameter,
        )?;
    }
    let privileges = c
        .privileges()
        .map_err(|reason| invalid(field("dockerSecurityOptions"), reason))?;
    privileges.resolve().map_err(|e| {
        let name = match e {
            PrivilegeError::UnknownCapability(_) => "linuxParameters.capabilities",
            _ => "ulimits",
        };
        invalid(field(name), e.to_string())
    })?;
    Ok(())
}

/// Checks a task definition and fills in its defaults; returns it without revision and time.
pub fn task_definition(input: TaskDefinitionInput) -> Result<TaskDefinition, Invalid> {
    check_name("family", &input.family)?;
    let cpu = input
        .cpu
        .as_ref()
        .map(parse_cpu)
        .transpose()?
        .unwrap_or(DEFAULT_CPU);
    let memory = input
        .memory
        .as_ref()
        .map(parse_memory)
        .transpose()?
        .unwrap_or(DEFAULT_MEMORY);
    check_size(cpu, memory)?;
    let ephemeral_storage = match input.ephemeral_storage {
        None => EphemeralStorage {
            size_in_gi_b: DEFAULT_EPHEMERAL_GIB,
        },
        Some(e) if (MIN_EPHEMERAL_GIB..=MAX_EPHEMERAL_GIB).contains(&e.size_in_gi_b) => e,
        Some(e) => {
            return Err(invalid(
                "ephemeralStorage.sizeInGiB",
                format!(
                    "{} GiB: must be {MIN_EPHEMERAL_GIB}-{MAX_EPHEMERAL_GIB}",
                    e.size_in_gi_b
                ),
            ))
        }
    };
    match input.container_definitions.len() {
        0 => {
            return Err(invalid(
                "containerDefinitions",
                "a task needs one container",
            ))
        }
        1 => {}
        n => {
            return Err(invalid(
                "containerDefinitions",
                format!("{n} containers given; Skiff runs one container per task for now"),
            ))
        }
    }
    for (i, c) in input.container_definitions.iter().enumerate() {
        check_container(i, c)?;
    }
    check_tags("tags", &input.tags)?;
    Ok(TaskDefinition {
        family: input.family,
        revision: 0,
        status: super::model::DefinitionStatus::Active,
        cpu,
        memory,
        ephemeral_storage,
        container_definitions: input.container_definitions,
        tags: input.tags,
        registered_at: None,
        deregistered_at: None,
    })
}

/// Checks RunTask's overrides against the definition; returns the task's cpu and memory.
pub fn overrides(def: &TaskDefinition, o: &TaskOverrides) -> Result<(u32, u32), Invalid> {
    let cpu = o.cpu.unwrap_or(def.cpu);
    let memory = o.memory.unwrap_or(def.memory);
    check_size(cpu, memory).map_err(|e| invalid(format!("overrides.{}", e.field), e.message))?;
    for (i, c) in o.container_overrides.iter().enumerate() {
        let field = |name: &str| format!("overrides.containerOverrides[{i}].{name}");
        if !def.container_definitions.iter().any(|d| d.name == c.name) {
            return Err(invalid(
                field("name"),
                format!("the task definition has no container {:?}", c.name),
            ));
        }
        if let Some(cmd) = &c.command {
            check_strings(&field("command"), cmd)?;
        }
        check_env(&field("environment"), &c.environment)?;
    }
    Ok((cpu, memory))
}

/// Checks RunTask's count.
pub fn count(count: u32) -> Result<u32, Invalid> {
    if (1..=MAX_COUNT).contains(&count) {
        Ok(count)
    } else {
        Err(invalid("count", format!("{count}: must be 1-{MAX_COUNT}")))
    }
}

/// `startedBy`: up to 128 letters, digits, `-`, `_`, `.`, `:`, `/`.
pub fn started_by(value: &str) -> Result<(), Invalid> {
    let ok = (1..=128).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "startedBy",
            format!("{value:?}: up to 128 letters, digits, '-', '_', '.', ':', '/'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: serde_json::Value) -> Result<TaskDefinition, Invalid> {
        task_definition(serde_json::from_value(json).unwrap())
    }

    fn container() -> serde_json::Value {
        serde_json::json!({"name": "app", "image": "busybox:latest"})
    }

    #[test]
    fn fargate_sizes_are_enforced() {
        for (cpu, memory) in [
            (256, 512),
            (256, 2048),
            (512, 4096),
            (1024, 2048),
            (4096, 30720),
            (8192, 20480),
            (16384, 122880),
        ] {
            assert_eq!(check_size(cpu, memory), Ok(()), "{cpu}/{memory}");
        }
        for (cpu, memory) in [
            (256, 4096),
            (256, 1536),
            (100, 512),
            (512, 512),
            (8192, 17408),
            (16384, 36864),
        ] {
            assert!(check_size(cpu, memory).is_err(), "{cpu}/{memory}");
        }
    }

    #[test]
    fn sizes_accept_ecs_strings() {
        let d = input(serde_json::json!({"family": "f", "cpu": "1 vCPU", "memory": "2 GB", "containerDefinitions": [container()]})).unwrap();
        assert_eq!((d.cpu, d.memory), (1024, 2048));
        let d = input(serde_json::json!({"family": "f", "cpu": "256", "memory": 512, "containerDefinitions": [container()]})).unwrap();
        assert_eq!(
            (d.cpu, d.memory, d.ephemeral_storage.size_in_gi_b),
            (256, 512, 20)
        );
        let e = input(serde_json::json!({"family": "f", "cpu": "lots", "containerDefinitions": [container()]})).unwrap_err();
        assert_eq!(e.field, "cpu");
    }

    #[test]
    fn bad_definitions_name_the_field() {
        let cases = [
            (
                serde_json::json!({"family": "a b", "containerDefinitions": [container()]}),
                "family",
            ),
            (
                serde_json::json!({"family": "f", "containerDefinitions": []}),
                "containerDefinitions",
            ),
            (
                serde_json::json!({"family": "f", "containerDefinitions": [container(), container()]}),
                "containerDefinitions",
            ),
            (
                serde_json::json!({"family": "f", "ephemeralStorage": {"sizeInGiB": 500}, "containerDefinitions": [container()]}),
                "ephemeralStorage.sizeInGiB",
            ),
            (
                serde_json::json!({"family": "f", "containerDefinitions": [{"name": "app", "image": "../x"}]}),
                "containerDefinitions[0].image",
            ),
            (
                serde_json::json!({"family": "f", "containerDefinitions": [{"name": "app", "image": "b", "stopTimeout": 500}]}),
                "containerDefinitions[0].stopTimeout",
            ),
            (
                serde_json::json!({"family": "f", "containerDefinitions": [{"name": "app", "image": "b", "environment": [{"name": "1X", "value": ""}]}]}),
                "containerDefinitions[0].environment",
            ),
            (
                serde_json::json!({"family": "f", "containerDefinitions": [{"name": "app", "image": "b", "workingDirectory": "rel"}]}),
                "containerDefinitions[0].workingDirectory",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(input(json.clone()).unwrap_err().field, field, "{json}");
        }
        assert!(serde_json::from_value::<TaskDefinitionInput>(
            serde_json::json!({"family": "f", "containerDefinitions": [], "bogus": 1})
        )
        .is_err());
    }

    #[test]
    fn overrides_are_checked_against_the_definition() {
        let def = input(serde_json::json!({"family": "f", "containerDefinitions": [container()]}))
            .unwrap();
        let mut o = TaskOverrides {
            cpu: Some(1024),
            memory: Some(2048),
            ..Default::default()
        };
        assert_eq!(overrides(&def, &o), Ok((1024, 2048)));
        o.memory = Some(512);
        assert_eq!(overrides(&def, &o).unwrap_err().field, "overrides.memory");
        let o = TaskOverrides {
            container_overrides: vec![super::super::model::ContainerOverride {
                name: "nope".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            overrides(&def, &o).unwrap_err().field,
            "overrides.containerOverrides[0].name"
        );
        assert!(count(0).is_err() && count(11).is_err() && count(10).is_ok());
    }
}
