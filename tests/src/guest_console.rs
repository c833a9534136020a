//! Reading what guest-init prints on the console.

/// The value of `key` in guest-init's banner (`skiff-init: Linux 6.1.0 cpus=2 memory=1000KiB`).
pub fn banner_value<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    let line = console
        .lines()
        .find(|l| l.starts_with("skiff-init: Linux "))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The guest's memory in KiB, from the banner.
pub fn banner_memory_kib(console: &str) -> Option<u64> {
    banner_value(console, "memory")?
        .strip_suffix("KiB")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_values_are_found() {
        let console = "noise\nskiff-init: Linux 6.1.192 cpus=2 memory=501416KiB\nmore\n";
        assert_eq!(banner_value(console, "cpus"), Some("2"));
        assert_eq!(banner_memory_kib(console), Some(501_416));
        assert_eq!(banner_value("skiff-init: started", "cpus"), None);
    }
}
