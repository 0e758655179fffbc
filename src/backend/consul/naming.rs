//! How lockwrap names its sessions, and how it recognises them again: every name carries the
//! key, so a contender can tell whether a holder of a key whose entry is gone may still be
//! stopping its command (docs/timing.md, "First use"), and the takeover delay it announced, so
//! a successor with a shorter one still waits for that holder's command to stop (docs/timing.md,
//! "Contenders with different settings").

use std::time::Duration;

/// How every default session name starts, before the key.
const NAME_START: &str = "lockwrap ";
/// How the tag on a name the user chose starts, before the key.
const CUSTOM_START: &str = " [lockwrap ";

/// The start of every default session name lockwrap gives for `key`.
pub(crate) fn name_prefix(key: &str) -> String {
    format!("{NAME_START}{key} on ")
}

/// The tag lockwrap appends to a name the user chose (`--session-name`).
fn custom_tag(key: &str) -> String {
    format!("{CUSTOM_START}{key}]")
}

/// Where the takeover delay a holder announces starts in its session name.
const TAKEOVER_TAG: &str = " [takeover ";

/// The session name: `lockwrap <key> on <host> pid <pid>`, or the user's name tagged with the
/// key; then ` [takeover <ms>ms]` when the holder supervises a command (`takeover`: how long a
/// successor must wait after an unclean end of this holder's hold).
pub(crate) fn session_name(
    custom: Option<&str>,
    key: &str,
    hostname: &str,
    pid: u32,
    takeover: Option<Duration>,
) -> String {
    let base = match custom {
        Some(name) => format!("{name}{}", custom_tag(key)),
        None => format!("{}{hostname} pid {pid}", name_prefix(key)),
    };
    match takeover {
        Some(delay) => format!("{base}{TAKEOVER_TAG}{}ms]", delay.as_millis()),
        None => base,
    }
}

/// `name` without the create attempt's marker (` [attempt …]`, see `session::attempt_name`).
fn without_attempt(name: &str) -> &str {
    name.rfind(" [attempt ").map_or(name, |at| &name[..at])
}

/// `name` without the markers lockwrap appends: the create attempt's and the announced takeover
/// delay.
fn base_name(name: &str) -> &str {
    let name = without_attempt(name);
    match name.rfind(TAKEOVER_TAG) {
        Some(at) if name.ends_with("ms]") => &name[..at],
        _ => name,
    }
}

/// Whether a session named `name` was created by lockwrap for `key`, however many trailing
/// slashes either spelling has: `jobs` and `jobs/` share a semaphore and a consul-lock prefix
/// (both trim them), so a contender must see the other spelling's holders too. For the default
/// layout, where they are two keys, this only makes a contender more careful.
pub(crate) fn names_key(name: &str, key: &str) -> bool {
    let base = base_name(name);
    let key = key.trim_end_matches('/');
    // What follows `key` and its slashes in a name for it.
    fn after_key<'a>(tail: &'a str, key: &str) -> Option<&'a str> {
        tail.strip_prefix(key)
            .map(|rest| rest.trim_start_matches('/'))
    }
    let default_name = base
        .strip_prefix(NAME_START)
        .and_then(|rest| after_key(rest, key))
        .is_some_and(|rest| rest.starts_with(" on "));
    let custom_name = base
        .rfind(CUSTOM_START)
        .and_then(|at| after_key(&base[at + CUSTOM_START.len()..], key))
        .is_some_and(|rest| rest == "]");
    default_name || custom_name
}

/// The takeover delay the holder that created the session named `name` announced, if any.
pub(crate) fn announced_takeover(name: &str) -> Option<Duration> {
    let name = without_attempt(name);
    let digits = name.get(name.rfind(TAKEOVER_TAG)? + TAKEOVER_TAG.len()..)?;
    let millis = digits.strip_suffix("ms]")?.parse().ok()?;
    Some(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_recognised_per_key() {
        let name = session_name(None, "a/b", "host", 7, None);
        assert_eq!(name, "lockwrap a/b on host pid 7");
        assert_eq!(announced_takeover(&name), None);
        assert!(names_key(&name, "a/b"));
        assert!(!names_key(&name, "a"));
        let custom = session_name(Some("deploy"), "a/b", "host", 7, None);
        assert_eq!(custom, "deploy [lockwrap a/b]");
        assert!(names_key(&custom, "a/b"));
        assert!(!names_key(&custom, "b"));
        assert!(!names_key("Consul API Lock", "a/b"));
        assert!(names_key("deploy [lockwrap a/b] [attempt 00ff]", "a/b"));
        assert!(names_key("lockwrap a/b on h pid 1 [attempt 00ff]", "a/b"));
    }

    #[test]
    fn both_spellings_of_a_prefix_see_each_others_sessions() {
        let slash = session_name(None, "jobs/", "host", 7, Some(Duration::from_secs(6)));
        assert!(names_key(&slash, "jobs") && names_key(&slash, "jobs/"));
        let plain = session_name(Some("deploy"), "jobs", "host", 7, None);
        assert!(names_key(&plain, "jobs//") && names_key(&plain, "jobs"));
        assert!(!names_key(&slash, "job") && !names_key(&slash, "jobs/x"));
        assert!(!names_key("lockwrap jobsx on h pid 1", "jobs"));
        assert!(!names_key("deploy [lockwrap jobs/x]", "jobs"));
    }

    #[test]
    fn the_takeover_delay_travels_in_the_name() {
        let delay = Some(Duration::from_millis(8_250));
        let name = session_name(None, "a/b", "host", 7, delay);
        assert_eq!(name, "lockwrap a/b on host pid 7 [takeover 8250ms]");
        let attempt = format!("{name} [attempt 00ff]");
        assert!(names_key(&attempt, "a/b"));
        assert!(!names_key(&attempt, "a"));
        assert_eq!(announced_takeover(&attempt), delay);
        let custom = format!(
            "{} [attempt 01]",
            session_name(Some("deploy"), "a/b", "h", 1, delay)
        );
        assert!(names_key(&custom, "a/b"));
        assert_eq!(announced_takeover(&custom), delay);
        assert_eq!(announced_takeover("x [takeover soon] [attempt 01]"), None);
    }
}
