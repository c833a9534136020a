//! Image names as the store keeps them: OCI references (the grammar of the distribution spec's
//! reference package), so that a name is never a path, an option or a control character.
//!
//! ```text
//! name       := [host '/'] component ('/' component)* [':' tag] ['@' digest]
//! host       := label ('.' label)* [':' port]  |  '[' ipv6 ']' [':' port]
//! label      := [A-Za-z0-9] | [A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]
//! component  := [a-z0-9]+ (separator [a-z0-9]+)*
//! separator  := '.' | '_' | '__' | '-'+
//! tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest     := 'sha256:' [a-f0-9]{64}
//! ```
//!
//! The part before the tag (host and path) is at most [`MAX_NAME_LEN`] characters. The first of
//! several components may be a registry host; a lone component is always a repository.

use super::Digest;

/// Most characters of the repository name (host and path, without tag or digest).
pub const MAX_NAME_LEN: usize = 255;
/// Most characters of a tag.
pub const MAX_TAG_LEN: usize = 128;

/// A name the store refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image name {name:?}: {why}")]
pub struct NameError {
    /// The name (its first 200 characters).
    pub name: String,
    pub why: &'static str,
}

/// Checks that `name` is an OCI image reference (see the module documentation).
pub fn check_name(name: &str) -> Result<(), NameError> {
    let bad = |why| NameError {
        name: name.chars().take(200).collect(),
        why,
    };
    let (rest, digest) = match name.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (name, None),
    };
    if digest.is_some_and(|d| d.parse::<Digest>().is_err()) {
        return Err(bad("the digest must be sha256:<64 lowercase hex digits>"));
    }
    // A colon after the last '/' starts the tag; one before it belongs to a host's port.
    let (repository, tag) = match rest.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
        _ => (rest, None),
    };
    if tag.is_some_and(|t| !tag_ok(t)) {
        return Err(bad(
            "the tag must be 1 to 128 letters, digits, _ . and - (not starting with . or -)",
        ));
    }
    if repository.is_empty() {
        return Err(bad("the name is empty"));
    }
    if repository.len() > MAX_NAME_LEN {
        return Err(bad("the name (without tag) is longer than 255 characters"));
    }
    let mut components: Vec<&str> = repository.split('/').collect();
    if components.len() > 1 && !component_ok(components[0]) {
        if !host_ok(components[0]) {
            return Err(bad(
                "the first component is neither a repository component nor a registry \
                 HOST[:PORT]",
            ));
        }
        components.remove(0);
    }
    if !components.into_iter().all(component_ok) {
        return Err(bad(
            "each repository component must be lowercase letters and digits, separated \
             inside by one . or _, two _, or dashes (no empty component, no `..`)",
        ));
    }
    Ok(())
}

/// `[a-z0-9]+ (separator [a-z0-9]+)*`
fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |i: usize| {
        b.get(i)
            .is_some_and(|x| x.is_ascii_lowercase() || x.is_ascii_digit())
    };
    let mut i = 0;
    loop {
        if !alnum(i) {
            return false;
        }
        while alnum(i) {
            i += 1;
        }
        match b.get(i) {
            None => return true,
            Some(b'.') => i += 1,
            Some(b'_') if b.get(i + 1) == Some(&b'_') => i += 2,
            Some(b'_') => i += 1,
            Some(b'-') => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            Some(_) => return false,
        }
    }
}

/// `label ('.' label)* [':' port]` or `'[' ipv6 ']' [':' port]`
fn host_ok(c: &str) -> bool {
    let port_ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = c.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        return v6.parse::<std::net::Ipv6Addr>().is_ok()
            && (after.is_empty() || after.strip_prefix(':').is_some_and(port_ok));
    }
    let (host, port) = match c.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (c, None),
    };
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    port.is_none_or(port_ok) && host.split('.').all(label_ok)
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn tag_ok(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    (1..=MAX_TAG_LEN).contains(&b.len())
        && word(b[0])
        && b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_of_the_oci_grammar_are_accepted() {
        let hex = "a".repeat(64);
        let long_tag = format!("v{}", "1".repeat(127));
        let long_name = format!("a/{}", "b".repeat(MAX_NAME_LEN - 2));
        let mut names: Vec<String> = [
            "busybox",
            "busybox:latest",
            "img:1",
            "test-evil:latest",
            "library/busybox:1.36.1",
            "a/b/c/d",
            "my_image__x--y.z:V1.0-rc_2",
            "localhost/foo:bar",
            "localhost:5000/foo/bar:baz",
            "127.0.0.1:5000/x:y",
            "[::1]:5000/x:y",
            "Registry.Example.com/team/app:_x",
        ]
        .map(String::from)
        .to_vec();
        names.push(format!("docker.io/library/alpine@sha256:{hex}"));
        names.push(format!("docker.io/library/alpine:3.19@sha256:{hex}"));
        names.push(format!("x:{long_tag}"));
        names.push(long_tag);
        names.push(long_name);
        for name in &names {
            assert_eq!(check_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn paths_uppercase_and_malformed_names_are_refused_with_the_reason() {
        let names = [
            ("", "empty"),
            (":latest", "empty"),
            ("../evil", "first component"),
            ("a/../b", "repository component"),
            ("a/./b", "repository component"),
            ("/abs", "first component"),
            ("a//b", "repository component"),
            ("a/", "repository component"),
            ("..", "repository component"),
            ("Busybox:latest", "repository component"),
            ("docker.io/library/Alpine", "repository component"),
            ("a..b", "repository component"),
            ("a___b", "repository component"),
            ("-a", "repository component"),
            ("a-", "repository component"),
            ("a b", "repository component"),
            ("a\nb", "repository component"),
            ("--help", "repository component"),
            ("a:", "tag"),
            ("a:.x", "tag"),
            ("a:-x", "tag"),
            ("a:x y", "tag"),
            ("a@sha256:abc", "digest"),
            ("a@md5:00", "digest"),
            ("bad_host:5000/x", "first component"),
            ("host:port/x", "first component"),
            ("[zz]/x", "first component"),
        ];
        for (name, why) in names {
            let err = check_name(name).unwrap_err();
            assert!(err.why.contains(why), "{name:?}: {err}");
            assert!(err.to_string().starts_with("invalid image name"), "{err}");
        }
        // Too long: the repository, and the tag.
        let err = check_name(&format!("a/{}", "b".repeat(MAX_NAME_LEN - 1))).unwrap_err();
        assert!(err.why.contains("longer than 255"), "{err}");
        // The message quotes at most 200 characters of the name.
        assert_eq!(err.name.chars().count(), 200);
        let err = check_name(&format!("a:{}", "t".repeat(MAX_TAG_LEN + 1))).unwrap_err();
        assert!(err.why.contains("tag"), "{err}");
    }
}
