//! Every refusal of a setting: each bad value, from each kind of source, gives its one-line
//! message (naming the setting and where it came from) and its exit code (README, "Exit codes").

use super::precedence_tests::{jailed, load_args, yaml};

/// One bad input. `{file}` in `message` stands for the config file's path.
struct Bad {
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    yaml: Option<&'static str>,
    code: i32,
    message: &'static str,
}

const fn flags(args: &'static [&'static str], code: i32, message: &'static str) -> Bad {
    Bad {
        args,
        env: &[],
        yaml: None,
        code,
        message,
    }
}

const fn env(
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    code: i32,
    message: &'static str,
) -> Bad {
    Bad {
        args,
        env,
        yaml: None,
        code,
        message,
    }
}

const fn file(args: &'static [&'static str], yaml: &'static str, message: &'static str) -> Bad {
    Bad {
        args,
        env: &[],
        yaml: Some(yaml),
        code: 2,
        message,
    }
}

const LOCK: &[&str] = &["lock", "k"];
const RUN: &[&str] = &["run", "--key", "k", "--", "true"];

fn cases() -> Vec<Bad> {
    vec![
        // Value types: each refusal text, from flags (3), env (2) and the file (2).
        flags(&["lock", "--session-ttl", "-1", "k"], 7, "invalid --session-ttl: a negative TTL is outside 10s…86400s (or 0 for no TTL)"),
        env(LOCK, &[("LOCKWRAP_SESSION_TTL", "-5s")], 7, "invalid environment variable LOCKWRAP_SESSION_TTL: a negative TTL is outside 10s…86400s (or 0 for no TTL)"),
        Bad { code: 7, ..file(LOCK, "session_ttl: -3\n", "invalid `session_ttl` in config file {file}: a negative TTL is outside 10s…86400s (or 0 for no TTL)") },
        flags(&["lock", "--session-ttl", "5", "k"], 7, "invalid --session-ttl: 5s is outside 10s…86400s (or 0 for no TTL)"),
        Bad { code: 7, ..file(LOCK, "session_ttl: 90000\n", "invalid `session_ttl` in config file {file}: 90000s is outside 10s…86400s (or 0 for no TTL)") },
        flags(&["lock", "--timeout", "abc", "k"], 3, "invalid --timeout: invalid duration `abc` (use seconds like `1.5` or units like `500ms`, `15s`, `2m`)"),
        env(LOCK, &[("LOCKWRAP_LOCK_DELAY", "")], 2, "invalid environment variable LOCKWRAP_LOCK_DELAY: empty duration"),
        file(LOCK, "timeout: -1\n", "invalid `timeout` in config file {file}: `-1` is not a valid duration"),
        file(&["run", "--key", "k", "--", "true"], "kill_grace: [1, 2]\n", "invalid `kill_grace` in config file {file}: expected a duration, got [1,2]"),
        env(LOCK, &[("LOCKWRAP_NON_BLOCKING", "maybe")], 2, "invalid environment variable LOCKWRAP_NON_BLOCKING: `maybe` is not a boolean (true/false)"),
        file(LOCK, "queue: 2\n", "invalid `queue` in config file {file}: `2` is not a boolean (true/false)"),
        flags(&["lock", "--consul-ssl", "maybe", "k"], 3, "invalid --consul-ssl: `maybe` is not a boolean (true/false)"),
        env(LOCK, &[("CONSUL_HTTP_SSL_VERIFY", "perhaps")], 2, "invalid environment variable CONSUL_HTTP_SSL_VERIFY: `perhaps` is not a boolean (true/false)"),
        flags(&["lock", "--limit", "abc", "k"], 3, "invalid --limit: `abc` is not a non-negative integer"),
        env(RUN, &[("LOCKWRAP_MONITOR_RETRY", "-1")], 2, "invalid environment variable LOCKWRAP_MONITOR_RETRY: `-1` is not a non-negative integer"),
        file(LOCK, "limit: [1]\n", "invalid `limit` in config file {file}: expected a string, got [1]"),
        env(RUN, &[("LOCKWRAP_ON_ACQUIRED", "5")], 2, "invalid environment variable LOCKWRAP_ON_ACQUIRED: expected a list, got 5"),
        file(RUN, "on_lost: [1]\n", "invalid `on_lost` in config file {file}: expected strings, got 1"),
        env(LOCK, &[("LOCKWRAP_SESSION_CHECKS", "5")], 2, "invalid environment variable LOCKWRAP_SESSION_CHECKS: expected a list, got 5"),
        file(&["run", "--", "true"], "key: [a]\n", "invalid `key` in config file {file}: expected a string, got [\"a\"]"),
        flags(&["lock", "--metadata", "{bad", "k"], 3, "invalid --metadata: not valid JSON (key must be a string at line 1 column 2): {bad"),
        env(LOCK, &[("LOCKWRAP_METADATA", "[1,")], 2, "invalid environment variable LOCKWRAP_METADATA: not valid JSON (EOF while parsing a value at line 1 column 3): [1,"),
        env(LOCK, &[("CONSUL_SCHEME", "ftp")], 2, "invalid environment variable CONSUL_SCHEME: `ftp` is not http or https"),
        env(LOCK, &[("CONSUL_SCHEME", "https"), ("CONSUL_HTTP_SSL", "f")], 2, "invalid environment variable CONSUL_SCHEME: `https` contradicts CONSUL_HTTP_SSL=`f`; set one of them"),
        env(LOCK, &[("CONSUL_DC", "dc1"), ("CONSUL_DATACENTER", "dc2")], 2, "invalid environment variable CONSUL_DC: `dc1` contradicts CONSUL_DATACENTER=`dc2`; set one of them"),
        env(LOCK, &[("CONSUL_HTTP_AUTH", "no-colon")], 2, "invalid environment variable CONSUL_HTTP_AUTH: expected USER:PASSWORD but found no `:` (value not shown)"),
        flags(&["lock", "--consul-http-auth", ":pw", "k"], 3, "invalid --consul-http-auth: the user before `:` is empty (value not shown)"),
        file(LOCK, "consul_http_auth: [secret]\n", "invalid `consul_http_auth` in config file {file}: expected a USER:PASSWORD string (value not shown)"),
        // Checks on the typed values.
        flags(&["--log-format", "xml", "lock", "k"], 3, "invalid --log-format: `xml` is not text or json"),
        env(&["status", "k"], &[("LOCKWRAP_LAYOUT", "weird")], 2, "invalid environment variable LOCKWRAP_LAYOUT: `weird` is not default or consul-lock"),
        flags(&["lock", "--session-behavior", "maybe", "k"], 3, "invalid --session-behavior: `maybe` is not release or delete"),
        flags(&["run", "--key", "k", "--session-behavior", "delete", "--", "true"], 3, "invalid --session-behavior: `delete` cannot be held safely by run, execute or sidecar: a session that ends while its holder cannot hear would delete the key, and the next holder would take it for never used and skip its takeover wait (docs/timing.md, \"First use\"); use release (the default)"),
        env(LOCK, &[("LOCKWRAP_LOCK_DELAY", "2m")], 2, "invalid environment variable LOCKWRAP_LOCK_DELAY: 120s is more than 60s"),
        flags(&["lock", "-i", "0", "k"], 3, "invalid --poll-interval: must be greater than 0"),
        flags(&["run", "--key", "k", "--hook-timeout", "0", "--", "true"], 3, "invalid --hook-timeout: must be greater than 0"),
        env(RUN, &[("LOCKWRAP_HEALTH_CHECK_TTL", "100ms")], 2, "invalid environment variable LOCKWRAP_HEALTH_CHECK_TTL: 100ms is below 1s; Consul's check reaper runs about once a second"),
        flags(&["lock", "-n", "0", "k"], 3, "invalid --limit: must be at least 1"),
        flags(&["run", "--key", "k", "--monitor-retry", "0", "--", "true"], 3, "invalid --monitor-retry: must be at least 1 (leave it unset to never give up early)"),
        env(&["lock", "--limit", "2", "k"], &[("LOCKWRAP_QUEUE", "1")], 3, "invalid --limit: --queue orders waiters for a single holder; it cannot be combined with -n 2 (the semaphore)"),
        env(&["lock", "--queue", "k"], &[("LOCKWRAP_LIMIT", "2")], 3, "invalid --queue: --queue orders waiters for a single holder; it cannot be combined with -n 2 (the semaphore)"),
        flags(&["run", "--key", "k", "--webhook", "ftp://x", "--", "true"], 3, "invalid --webhook: `ftp://x` is not an http(s) URL"),
        env(&["sidecar", "--key", "k"], &[("LOCKWRAP_HTTP_ADDR", "localhost")], 2, "invalid environment variable LOCKWRAP_HTTP_ADDR: `localhost` is not HOST:PORT (e.g. 0.0.0.0:8080 or :8080)"),
        env(LOCK, &[("CONSUL_NAMESPACE", "")], 2, "invalid environment variable CONSUL_NAMESPACE: the namespace is empty; leave it unset for the default namespace"),
        file(&["status", "k"], "partition: team/a\n", "invalid `partition` in config file {file}: `team/a` is not a Consul partition name (letters, digits, `-` and `_`, starting and ending with a letter or digit, at most 64)"),
        env(LOCK, &[("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/token")], 2, "invalid environment variable CONSUL_HTTP_TOKEN_FILE: cannot read token file /nonexistent/token: No such file or directory (os error 2)"),
        flags(&["lock", "--consul-addr", "ftp://x", "k"], 3, "invalid --consul-addr: invalid Consul address \"ftp://x\": the scheme must be http, https or unix"),
        flags(&["run", "--key", "k", "--session-checks", "serfHealth", "--session-ttl", "0", "--", "true"], 3, ""),
        // Missing and malformed keys and commands.
        flags(&["run", "--", "true"], 1, "no lock key: give --key KEY, LOCKWRAP_KEY or `key:` in the config file"),
        flags(&["lock"], 1, "no lock key given (the KEY argument)"),
        flags(&["run", "--key", "k"], 1, "no command given: lockwrap run [options] -- CMD ARGS…"),
        flags(&["execute", "k"], 1, "no command given: lockwrap execute KEY 'SHELL STRING'"),
        env(&["run", "--", "true"], &[("LOCKWRAP_KEY", "a/./b")], 6, ""),
        // The file itself.
        file(LOCK, "favourite-colour: blue\n", "config file {file}: unknown setting `favourite-colour` (see examples/lockwrap.yaml for every setting)"),
        file(LOCK, "- a\n- b\n", "config file {file} is not valid YAML: invalid type: sequence, expected a map"),
        env(LOCK, &[("LOCKWRAP_CONFIG", "/nonexistent/lockwrap.yaml")], 2, "config file /nonexistent/lockwrap.yaml does not exist or is not a file"),
    ]
}

#[test]
fn every_bad_setting_is_refused_with_its_message_and_exit_code() {
    let mut wrong = Vec::new();
    for bad in cases() {
        jailed(|jail| {
            for (name, value) in bad.env {
                jail.set_env(name, value);
            }
            let mut args: Vec<&str> = Vec::new();
            let path = bad.yaml.map(|text| yaml(jail, text));
            if let Some(path) = &path {
                args.extend(["--config", path.as_str()]);
            }
            args.extend(bad.args);
            let expected = bad.message.replace("{file}", path.as_deref().unwrap_or(""));
            match load_args(&args) {
                Ok(_) => wrong.push(format!("{args:?} {:?}: accepted", bad.env)),
                Err(err)
                    if err.kind.exit_code() != bad.code
                        || (!expected.is_empty() && err.message != expected) =>
                {
                    wrong.push(format!(
                        "{args:?} {:?}:\n  got  {} {}\n  want {} {expected}",
                        bad.env,
                        err.kind.exit_code(),
                        err.message,
                        bad.code
                    ))
                }
                Err(_) => {}
            }
        });
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_non_utf8_variable_is_refused_by_name() {
    use std::os::unix::ffi::OsStringExt;
    jailed(|jail| {
        for var in ["LOCKWRAP_KEY", "CONSUL_HTTP_TOKEN"] {
            // Registered with the jail so it is restored, then set to bytes `set_env` cannot take.
            jail.set_env(var, "");
            std::env::set_var(var, std::ffi::OsString::from_vec(b"k\xff".to_vec()));
            let err = load_args(RUN).expect_err("refused");
            assert_eq!(
                err.message,
                format!("invalid environment variable {var}: not valid UTF-8")
            );
            assert_eq!(err.kind.exit_code(), 2);
            std::env::remove_var(var);
        }
    });
}
