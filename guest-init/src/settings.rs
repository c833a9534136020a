//! guest-init's settings, read from the kernel command line (`skiff.<key>=<value>`).

/// Errors in the settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("skiff.exit={0:?} is not an exit status (0-255)")]
    ExitStatus(String),
    #[error("unknown setting skiff.{0}")]
    Unknown(String),
}

/// What guest-init was asked to do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Exit status to report when done (`skiff.exit`), for testing the VMM's exit path.
    pub exit_status: u8,
    /// Panic on purpose (`skiff.panic`), for testing that a crashing init is reported.
    pub panic: bool,
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
    fn quotes_group_words() {
        assert_eq!(words(r#"a "b c" d"#), vec!["a", "b c", "d"]);
        assert_eq!(words(r#"x="" y"#), vec!["x=", "y"]);
    }
}
