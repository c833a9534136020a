//! Names the host puts on the guest's kernel command line, checked the same way on both sides
//! (a value with a space would smuggle in another parameter).

/// Linux's limit on a hostname (`HOST_NAME_MAX`).
pub const MAX_HOSTNAME_LEN: usize = 64;

/// Why `name` is not a valid hostname (RFC 1123 labels, at most 64 characters), if it is not.
pub fn hostname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty");
    }
    if name.len() > MAX_HOSTNAME_LEN {
        return Some("longer than 64 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Some("empty label (leading, trailing or double '.')");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Some("a character other than a letter, digit, '-' or '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("a label starts or ends with '-'");
        }
        if label.len() > 63 {
            return Some("a label is longer than 63 characters");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_follow_rfc_1123() {
        assert_eq!(hostname_problem("task-7.example"), None);
        for bad in ["", "a b", "x skiff.panic", "-a", "a..b", &"a".repeat(65)] {
            assert!(hostname_problem(bad).is_some(), "{bad:?}");
        }
    }
}
