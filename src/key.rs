//! Lock key rules (README, "Key layouts"): not empty, no leading `/`, no `//`, no `.` or `..` segments.

use crate::exit::{Error, ErrorKind};

/// Checks a lock key (or consul-lock/semaphore prefix) and names the rule it breaks.
pub(crate) fn validate(key: &str) -> Result<(), Error> {
    let problem = if key.is_empty() {
        Some("it is empty")
    } else if key.starts_with('/') {
        Some("it starts with `/`")
    } else if key.contains("//") {
        Some("it contains `//`")
    } else if key
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        Some("it has a `.` or `..` segment")
    } else if key.chars().any(char::is_control) {
        Some("it contains control characters")
    } else {
        None
    };
    match problem {
        Some(why) => Err(Error::new(
            ErrorKind::InvalidKey,
            format!("invalid key {key:?}: {why}"),
        )),
        None => Ok(()),
    }
}

/// Percent-encodes a key for a `/v1/kv/<key>` URL path, keeping `/` as the separator.
pub(crate) fn url_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_keys_with_exit_6() {
        for bad in ["", "/a", "a//b", "a/./b", "a/../b", ".", "..", "a/.."] {
            let err = validate(bad).unwrap_err();
            assert_eq!(err.kind.exit_code(), 6, "{bad}");
        }
    }

    #[test]
    fn accepts_normal_keys() {
        for good in ["a", "a/b", "service/x/leader", "a.b", "a/..b", "a/"] {
            validate(good).unwrap();
        }
    }

    #[test]
    fn encodes_paths() {
        assert_eq!(url_path("a b/c?d"), "a%20b/c%3Fd");
    }
}
