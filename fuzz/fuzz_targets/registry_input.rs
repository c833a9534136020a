//! Fuzzes what a registry or a user hands the image store as text: `WWW-Authenticate`
//! challenges (from any registry a pull reaches) and image references (API input). Neither may
//! panic; an accepted name stays within the grammar's bounds.
#![no_main]

use images::store::name::{check_name, MAX_NAME_LEN};
use images::store::registry::parse_challenge;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (scheme, params) = parse_challenge(text);
    assert_eq!(scheme, scheme.to_ascii_lowercase());
    for key in params.keys() {
        assert_eq!(key, &key.to_ascii_lowercase());
    }
    if check_name(text).is_ok() {
        // Repository, ':' tag, '@sha256:' digest at most; never an option, a path or controls.
        assert!(!text.is_empty() && text.len() <= MAX_NAME_LEN + 1 + 128 + 1 + 71, "{text:?}");
        assert!(!text.starts_with(['-', '/', '.']), "{text:?}");
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(!text.split('/').any(|part| part == ".."), "{text:?}");
    }
});
