//! guest-init's settings, read from the kernel command line (`skiff.<key>=<value>`).

/// Errors in the settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("skiff.exit={0:?} is not an exit status (0-255)")]
    ExitStatus(String),
    #[error("unknown setting skiff.{0}")]
    Unknown(String),
    #[error("skiff.mount={0:?}: expected DEVICE:PATH[:FSTYPE[:ro|rw]] with absolute paths")]
    Mount(String),
    #[error("skiff.run={0:?}: expected an absolute path")]
    Run(String),
}

/// A filesystem to mount (`skiff.mount=DEVICE:PATH[:FSTYPE[:ro|rw]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub device: String,
    pub path: String,
    pub fstype: String,
    pub read_only: bool,
}

impl std::str::FromStr for MountSpec {
    type Err = SettingsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SettingsError::Mount(s.to_owned());
        let parts: Vec<&str> = s.split(':').collect();
        let (device, path) = match parts.as_slice() {
            [d, p, ..] if d.starts_with('/') && p.starts_with('/') => (*d, *p),
            _ => return Err(bad()),
        };
        let fstype = parts
            .get(2)
            .copied()
            .filter(|f| !f.is_empty())
            .unwrap_or("ext4");
        let read_only = match parts.get(3).copied() {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(_) => return Err(bad()),
        };
        if parts.len() > 4 || path.split('/').any(|c| c == "..") {
            return Err(bad());
        }
        Ok(MountSpec {
            device: device.to_owned(),
            path: path.to_owned(),
            fstype: fstype.to_owned(),
            read_only,
        })
    }
}

/// What guest-init was asked to do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Exit status to report when done (`skiff.exit`), for testing the VMM's exit path.
    pub exit_status: u8,
    /// Panic on purpose (`skiff.panic`), for testing that a crashing init is reported.
    pub panic: bool,
    /// Filesystems to mount before running anything, in order (`skiff.mount`, repeatable).
    pub mounts: Vec<MountSpec>,
    /// Program to run; its exit status becomes the guest's (`skiff.run`).
    pub run: Option<String>,
}

/// Splits a command line into words; double quotes group words containing spaces.
fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

impl Settings {
    /// Parses the `skiff.*` words of a kernel command line; other words are the kernel's.
    pub fn from_cmdline(cmdline: &str) -> Result<Self, SettingsError> {
        let mut settings = Settings::default();
        for word in words(cmdline) {
            let Some(setting) = word.strip_prefix("skiff.") else {
                continue;
            };
            let (key, value) = setting.split_once('=').unwrap_or((setting, ""));
            match key {
                "exit" => {
                    settings.exit_status = value
                        .parse()
                        .map_err(|_| SettingsError::ExitStatus(value.to_owned()))?
                }
                "panic" => settings.panic = true,
                "mount" => settings.mounts.push(value.parse()?),
                "run" if value.starts_with('/') => settings.run = Some(value.to_owned()),
                "run" => return Err(SettingsError::Run(value.to_owned())),
                _ => return Err(SettingsError::Unknown(key.to_owned())),
            }
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_skiff_settings_and_ignores_kernel_words() {
        let s = Settings::from_cmdline("console=ttyS0 reboot=k skiff.exit=7 quiet").unwrap();
        assert_eq!(s.exit_status, 7);
        assert_eq!(
            Settings::from_cmdline("quiet").unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn rejects_bad_values_and_unknown_keys() {
        assert_eq!(
            Settings::from_cmdline("skiff.exit=300"),
            Err(SettingsError::ExitStatus("300".into()))
        );
        assert_eq!(
            Settings::from_cmdline("skiff.exti=3"),
            Err(SettingsError::Unknown("exti".into()))
        );
    }

    #[test]
    fn mounts_and_run_are_parsed() {
        let s = Settings::from_cmdline(
            "skiff.mount=/dev/vda:/mnt/a skiff.mount=/dev/vdb:/data:ext4:ro skiff.run=/t.sh",
        )
        .unwrap();
        assert_eq!(s.mounts.len(), 2);
        assert_eq!(s.mounts[0].fstype, "ext4");
        assert!(!s.mounts[0].read_only);
        assert_eq!(
            (s.mounts[1].path.as_str(), s.mounts[1].read_only),
            ("/data", true)
        );
        assert_eq!(s.run.as_deref(), Some("/t.sh"));
        for bad in [
            "vda:/mnt",
            "/dev/vda",
            "/dev/vda:/mnt:ext4:maybe",
            "/dev/vda:/a/../b",
        ] {
            assert!(
                matches!(
                    Settings::from_cmdline(&format!("skiff.mount={bad}")),
                    Err(SettingsError::Mount(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            Settings::from_cmdline("skiff.run=t.sh"),
            Err(SettingsError::Run(_))
        ));
    }

    #[test]
    fn quotes_group_words() {
        assert_eq!(words(r#"a "b c" d"#), vec!["a", "b c", "d"]);
        assert_eq!(words(r#"x="" y"#), vec!["x=", "y"]);
    }
}
