//! How lockwrap names its sessions, and how it recognises them again: every name carries the
//! key, so a contender can tell whether a holder of a key whose entry is gone may still be
//! stopping its command (docs/timing.md, "First use").

/// The start of every default session name lockwrap gives for `key`.
pub(crate) fn name_prefix(key: &str) -> String {
    format!("lockwrap {key} on ")
}

/// The tag lockwrap appends to a name the user chose (`--session-name`).
fn custom_tag(key: &str) -> String {
    format!(" [lockwrap {key}]")
}

/// The session name: `lockwrap <key> on <host> pid <pid>`, or the user's name tagged with the
/// key.
pub(crate) fn session_name(custom: Option<&str>, key: &str, hostname: &str, pid: u32) -> String {
    match custom {
        Some(name) => format!("{name}{}", custom_tag(key)),
        None => format!("{}{hostname} pid {pid}", name_prefix(key)),
    }
}

/// Whether a session named `name` was created by lockwrap for `key` (each create attempt adds
/// its own ` [attempt …]` marker after the name; see `session::attempt_name`).
pub(crate) fn names_key(name: &str, key: &str) -> bool {
    let base = name.rfind(" [attempt ").map_or(name, |at| &name[..at]);
    base.starts_with(&name_prefix(key)) || base.ends_with(&custom_tag(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_recognised_per_key() {
        let name = session_name(None, "a/b", "host", 7);
        assert_eq!(name, "lockwrap a/b on host pid 7");
        assert!(names_key(&name, "a/b"));
        assert!(!names_key(&name, "a"));
        let custom = session_name(Some("deploy"), "a/b", "host", 7);
        assert_eq!(custom, "deploy [lockwrap a/b]");
        assert!(names_key(&custom, "a/b"));
        assert!(!names_key(&custom, "b"));
        assert!(!names_key("Consul API Lock", "a/b"));
        assert!(names_key("deploy [lockwrap a/b] [attempt 00ff]", "a/b"));
        assert!(names_key("lockwrap a/b on h pid 1 [attempt 00ff]", "a/b"));
    }
}
