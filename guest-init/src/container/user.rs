//! The container's user: `uid`, `uid:gid`, `name`, `name:group` or `uid:group`, with names looked
//! up in the image's `/etc/passwd` and `/etc/group` (as Docker and runc do). A numeric uid that
//! is not in `/etc/passwd` is fine (gid 0 unless given, home `/`); a name that is not there fails
//! the task.

/// Why a user could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?}: no such user in the image's /etc/passwd")]
    NoSuchUser(String),
    #[error("group {0:?}: no such group in the image's /etc/group")]
    NoSuchGroup(String),
    #[error("user {0:?}: expected uid, uid:gid, name or name:group")]
    Malformed(String),
}

/// Who the container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: those of `/etc/group` that list the user's name.
    pub groups: Vec<u32>,
    /// The home directory, for `HOME` when the task does not set it.
    pub home: String,
}

/// One `/etc/passwd` line: name, uid, gid, home.
fn passwd_entries(passwd: &str) -> impl Iterator<Item = (&str, u32, u32, &str)> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        match f.as_slice() {
            [name, _, uid, gid, _, home, ..] => {
                Some((*name, uid.parse().ok()?, gid.parse().ok()?, *home))
            }
            _ => None,
        }
    })
}

/// One `/etc/group` line: name, gid, members.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        match f.as_slice() {
            [name, _, gid, members, ..] => Some((
                *name,
                gid.parse().ok()?,
                members.split(',').filter(|m| !m.is_empty()).collect(),
            )),
            [name, _, gid] => Some((*name, gid.parse().ok()?, Vec::new())),
            _ => None,
        }
    })
}

/// Resolves `spec` (empty: root) against the image's passwd and group files (empty if absent).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Credentials, UserError> {
    let spec = spec.trim();
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() && grp.is_some() || grp == Some("") || user.contains(char::is_whitespace) {
        return Err(UserError::Malformed(spec.to_owned()));
    }
    let user = if user.is_empty() { "0" } else { user };
    let (uid, mut gid, home, name) = match user.parse::<u32>() {
        Ok(uid) => match passwd_entries(passwd).find(|e| e.1 == uid) {
            Some((name, _, gid, home)) => (uid, gid, home.to_owned(), Some(name)),
            None => (uid, 0, "/".to_owned(), None),
        },
        Err(_) => {
            let (name, uid, gid, home) = passwd_entries(passwd)
                .find(|e| e.0 == user)
                .ok_or_else(|| UserError::NoSuchUser(user.to_owned()))?;
            (uid, gid, home.to_owned(), Some(name))
        }
    };
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|e| e.0 == g)
                .map(|e| e.1)
                .ok_or_else(|| UserError::NoSuchGroup(g.to_owned()))?,
        };
    }
    let mut groups: Vec<u32> = match (name, grp) {
        // An explicit group replaces the supplementary ones, as in Docker.
        (Some(name), None) => group_entries(group)
            .filter(|e| e.2.contains(&name))
            .map(|e| e.1)
            .collect(),
        _ => Vec::new(),
    };
    if !groups.contains(&gid) {
        groups.insert(0, gid);
    }
    groups.dedup();
    Ok(Credentials {
        uid,
        gid,
        groups,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          app:x:1000:1000:App:/home/app:/bin/sh\n\
                          broken line\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:app,root\napp:x:1000:\nstaff:x:50:app\n";

    fn creds(uid: u32, gid: u32, groups: &[u32], home: &str) -> Credentials {
        Credentials {
            uid,
            gid,
            groups: groups.to_vec(),
            home: home.into(),
        }
    }

    #[test]
    fn numeric_and_named_users_resolve() {
        assert_eq!(
            resolve("", PASSWD, GROUP),
            Ok(creds(0, 0, &[0, 10], "/root"))
        );
        assert_eq!(
            resolve("1000:1000", PASSWD, GROUP),
            Ok(creds(1000, 1000, &[1000], "/home/app"))
        );
        assert_eq!(
            resolve("app", PASSWD, GROUP),
            Ok(creds(1000, 1000, &[1000, 10, 50], "/home/app"))
        );
        assert_eq!(
            resolve("app:staff", PASSWD, GROUP),
            Ok(creds(1000, 50, &[50], "/home/app"))
        );
        assert_eq!(
            resolve("4242", PASSWD, GROUP),
            Ok(creds(4242, 0, &[0], "/"))
        );
        assert_eq!(resolve("4242:7", "", ""), Ok(creds(4242, 7, &[7], "/")));
        assert_eq!(
            resolve("nobody", PASSWD, GROUP),
            Ok(creds(65534, 65534, &[65534], "/nonexistent"))
        );
    }

    #[test]
    fn unknown_names_and_malformed_specs_fail_clearly() {
        assert_eq!(
            resolve("ghost", PASSWD, GROUP),
            Err(UserError::NoSuchUser("ghost".into()))
        );
        assert_eq!(
            resolve("app:ghosts", PASSWD, GROUP),
            Err(UserError::NoSuchGroup("ghosts".into()))
        );
        assert!(matches!(
            resolve(":5", PASSWD, GROUP),
            Err(UserError::Malformed(_))
        ));
        assert!(matches!(
            resolve("app:", PASSWD, GROUP),
            Err(UserError::Malformed(_))
        ));
        assert!(matches!(
            resolve("a b", PASSWD, GROUP),
            Err(UserError::Malformed(_))
        ));
        // Names need a passwd file; numbers do not.
        assert!(resolve("app", "", "").is_err());
    }
}
