//! A task's privileges as its user names them — Docker's `--cap-add`, `--cap-drop`, `--ulimit`
//! and `--security-opt no-new-privileges`; ECS's `linuxParameters.capabilities`, `ulimits` and
//! `dockerSecurityOptions` — and their resolution into what guest-init applies
//! ([`skiff_protocol::privileges`]).

use serde::{Deserialize, Serialize};
use skiff_protocol::privileges::{self, PrivilegeError, Privileges};

/// What the container's process may do, by name. The default is Docker's capability set, no new
/// privileges, and Fargate's `nofile` limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivilegeSettings {
    /// Capabilities added to Docker's defaults (`ALL` for every one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities removed (`ALL` to start from none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// `PR_SET_NO_NEW_PRIVS` for the container's process (on unless the task turns it off).
    #[serde(default = "on")]
    pub no_new_privileges: bool,
    /// Resource limits; `nofile` is 65535 unless given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<UlimitSetting>,
}

fn on() -> bool {
    true
}

impl Default for PrivilegeSettings {
    fn default() -> Self {
        Self {
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            no_new_privileges: true,
            ulimits: Vec::new(),
        }
    }
}

/// One resource limit by ECS's name (`nofile`, `nproc`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UlimitSetting {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

impl PrivilegeSettings {
    /// The capability set, flag and limits guest-init applies; an unknown name or a soft limit
    /// above its hard one is an error naming it.
    pub fn resolve(&self) -> Result<Privileges, PrivilegeError> {
        Ok(Privileges {
            capabilities: privileges::capability_set(&self.cap_add, &self.cap_drop)?,
            no_new_privileges: self.no_new_privileges,
            ulimits: privileges::ulimits(
                self.ulimits
                    .iter()
                    .map(|u| (u.name.as_str(), u.soft, u.hard)),
            )?,
        })
    }
}

/// Docker's `--ulimit NAME=SOFT[:HARD]` (the hard limit is the soft one when not given;
/// `unlimited` or -1 is no limit).
pub fn parse_ulimit(spec: &str) -> Result<UlimitSetting, String> {
    let bad = || format!("ulimit {spec:?}: expected NAME=SOFT[:HARD], e.g. nofile=1024:4096");
    let (name, limits) = spec.split_once('=').ok_or_else(bad)?;
    let value = |v: &str| match v {
        "unlimited" | "-1" => Ok(u64::MAX),
        _ => v.parse::<u64>().map_err(|_| bad()),
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((soft, hard)) => (value(soft)?, value(hard)?),
        None => {
            let v = value(limits)?;
            (v, v)
        }
    };
    Ok(UlimitSetting {
        name: name.to_owned(),
        soft,
        hard,
    })
}

/// Whether a Docker `--security-opt` (ECS `dockerSecurityOptions`) entry turns
/// `no-new-privileges` on or off: `no-new-privileges`, or with `=` or `:` and `true`/`false`.
/// Skiff knows no other option (no AppArmor or SELinux in the guest).
pub fn parse_security_opt(option: &str) -> Result<bool, String> {
    let (name, value) = match option.split_once(['=', ':']) {
        Some((name, value)) => (name, Some(value)),
        None => (option, None),
    };
    if name != "no-new-privileges" {
        return Err(format!(
            "security option {option:?}: Skiff knows only no-new-privileges[=true|false]"
        ));
    }
    match value {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(format!(
            "security option {option:?}: {other:?} is not true or false"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_resolve_with_docker_and_fargate_defaults() {
        let default = PrivilegeSettings::default().resolve().unwrap();
        assert_eq!(default, Privileges::default());
        let settings: PrivilegeSettings = serde_json::from_str(
            r#"{"cap_add": ["SYS_PTRACE"], "cap_drop": ["NET_RAW"], "no_new_privileges": false,
                "ulimits": [{"name": "nofile", "soft": 1024, "hard": 2048}]}"#,
        )
        .unwrap();
        let resolved = settings.resolve().unwrap();
        assert!(!resolved.no_new_privileges);
        assert_ne!(resolved.capabilities & 1 << 19, 0);
        assert_eq!(resolved.capabilities & 1 << 13, 0);
        assert_eq!(
            (resolved.ulimits[0].soft, resolved.ulimits[0].hard),
            (1024, 2048)
        );
        // An older launch spec without the field gets the defaults.
        let empty: PrivilegeSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, PrivilegeSettings::default());
        let bad = PrivilegeSettings {
            cap_add: vec!["SYS_WIZARD".into()],
            ..PrivilegeSettings::default()
        };
        assert!(bad
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("SYS_WIZARD"));
    }

    #[test]
    fn docker_flags_parse() {
        assert_eq!(
            parse_ulimit("nofile=1024:4096").unwrap(),
            UlimitSetting {
                name: "nofile".into(),
                soft: 1024,
                hard: 4096
            }
        );
        let core = parse_ulimit("core=unlimited").unwrap();
        assert_eq!((core.soft, core.hard), (u64::MAX, u64::MAX));
        for bad in ["nofile", "nofile=x", "nofile=1:y"] {
            assert!(parse_ulimit(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_security_opt("no-new-privileges"), Ok(true));
        assert_eq!(parse_security_opt("no-new-privileges:false"), Ok(false));
        assert_eq!(parse_security_opt("no-new-privileges=true"), Ok(true));
        assert!(parse_security_opt("no-new-privileges=maybe").is_err());
        assert!(parse_security_opt("apparmor=unconfined")
            .unwrap_err()
            .contains("apparmor"));
    }
}
