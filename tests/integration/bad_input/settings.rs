//! The bad-input table, part 1: settings lockwrap must refuse (TTL, durations, keys, metadata,
//! YAML) and `run` refusing its settings before running its command.

use std::path::Path;

use super::{case, Case};

/// A command for the supervising cases: it marks that it ran (no rejected invocation may run it).
fn touch_ran(dir: &Path) -> String {
    format!("touch '{}'", dir.join("ran").display())
}

/// The cases. `dir` holds the files some cases point at.
pub fn cases(dir: &Path) -> Vec<Case> {
    let p = |path: &Path| path.display().to_string();
    let missing_config = p(&dir.join("no-such-config.yaml"));
    let huge = format!("{{\"blob\":\"{}\"}}", "x".repeat(70 * 1024));
    // `lockwrap run` with settings it must refuse before running its command.
    let write_yaml = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write yaml");
        p(&path)
    };
    let unknown_yaml = write_yaml("unknown.yaml", "session_ttl: 15s\nfavourite_colour: blue\n");
    let wrong_type = write_yaml("wrong-type.yaml", "kill_grace: [1, 2]\n");
    let bad_yaml = write_yaml("bad.yaml", "key: [unclosed\n");
    let touch = touch_ran(dir);
    let run_case = |name: &'static str, code: i32, args: &[&str]| {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "sh", "-c", &touch]);
        case(name, code, &all)
    };

    vec![
        // ---- `run` refusing its settings (the command never runs) ----
        run_case(
            "run: unknown YAML key",
            2,
            &["--config", &unknown_yaml, "--key", "bad/k"],
        )
        .mentions(&["favourite_colour"]),
        run_case(
            "run: wrong YAML type",
            2,
            &["--config", &wrong_type, "--key", "bad/k"],
        )
        .mentions(&["kill_grace"]),
        run_case(
            "run: unparsable YAML",
            2,
            &["--config", &bad_yaml, "--key", "bad/k"],
        )
        .mentions(&["bad.yaml"]),
        run_case(
            "run: missing config file",
            2,
            &["--config", "/nonexistent/lockwrap.yaml", "--key", "bad/k"],
        )
        .mentions(&["/nonexistent/lockwrap.yaml"]),
        run_case("run: invalid env duration", 2, &["--key", "bad/k"])
            .env("LOCKWRAP_SESSION_TTL", "abc")
            .mentions(&["LOCKWRAP_SESSION_TTL"]),
        run_case("run: invalid env bool", 2, &["--key", "bad/k"])
            .env("LOCKWRAP_SUBREAPER", "maybe")
            .mentions(&["LOCKWRAP_SUBREAPER"]),
        run_case(
            "run: invalid flag duration",
            3,
            &["--key", "bad/k", "--kill-grace", "abc"],
        )
        .mentions(&["--kill-grace"]),
        run_case(
            "run: unknown flag",
            3,
            &["--key", "bad/k", "--no-such-option"],
        )
        .mentions(&["--no-such-option"]),
        run_case(
            "run: lock delay over 60 s",
            3,
            &["--key", "bad/k", "--lock-delay", "61s"],
        )
        .mentions(&["--lock-delay"]),
        run_case("run: limit 0", 3, &["--key", "bad/k", "-n", "0"]).mentions(&["limit"]),
        run_case(
            "run: unknown layout",
            3,
            &["--key", "bad/k", "--layout", "zookeeper"],
        )
        .mentions(&["--layout"]),
        run_case(
            "run: TTL below 10 s",
            7,
            &["--key", "bad/k", "--session-ttl", "5s"],
        )
        .mentions(&["--session-ttl"]),
        run_case(
            "run: serfHealth-bound session with too short a lock-delay",
            3,
            &[
                "--key",
                "bad/k",
                "--session-checks",
                "serfHealth",
                "--lock-delay",
                "1s",
                "--takeover-delay",
                "6s",
            ],
        )
        // says what would fit
        .mentions(&[
            "--lock-delay 2s or more",
            "--session-checks none",
            "--kill-grace 4s or less",
            "--unsafe-allow-overlap",
        ]),
        run_case("run: invalid key", 6, &["--key", "/leading/slash"]).mentions(&["/leading/slash"]),
        run_case("run: no key", 1, &[]).mentions(&["key"]),
        // No command at all is a missing setting too.
        case("run: no command", 1, &["run", "--key", "bad/k"]),
        // ---- session TTL (exit 7, whatever the source) ----
        case(
            "ttl below 10s (flag)",
            7,
            &["lock", "--session-ttl", "5", "bad/k"],
        )
        .mentions(&["--session-ttl", "5s"]),
        case(
            "ttl above 86400s (flag)",
            7,
            &["lock", "--session-ttl", "90000", "bad/k"],
        )
        .mentions(&["--session-ttl", "90000s"]),
        case(
            "ttl negative (flag)",
            7,
            &["lock", "--session-ttl=-1", "bad/k"],
        )
        .mentions(&["--session-ttl", "negative"]),
        case(
            "ttl negative, separate argument (consullock style)",
            7,
            &["lock", "--session-ttl", "-1", "bad/k"],
        )
        .mentions(&["--session-ttl", "negative"]),
        case(
            "ttl 9.5s (flag)",
            7,
            &[
                "run",
                "--key",
                "bad/k",
                "--session-ttl",
                "9.5",
                "--",
                "true",
            ],
        )
        .mentions(&["--session-ttl", "9.5s"]),
        case(
            "ttl below 10s (env)",
            7,
            &["run", "--key", "bad/k", "--", "true"],
        )
        .env("LOCKWRAP_SESSION_TTL", "5s")
        .mentions(&["LOCKWRAP_SESSION_TTL", "5s"]),
        case("ttl above 86400s (yaml)", 7, &["lock", "bad/k"])
            .yaml("session_ttl: 90000\n")
            .mentions(&["session_ttl", "90000s"]),
        // ---- durations ----
        case(
            "timeout not a duration",
            3,
            &["lock", "--timeout", "abc", "bad/k"],
        )
        .mentions(&["--timeout", "abc"]),
        case("timeout negative", 3, &["lock", "--timeout=-5", "bad/k"])
            .mentions(&["--timeout", "-5"]),
        case(
            "kill-grace unknown unit",
            3,
            &["run", "--key", "bad/k", "--kill-grace", "5x", "--", "true"],
        )
        .mentions(&["--kill-grace", "5x"]),
        case("lock-delay env not a duration", 2, &["lock", "bad/k"])
            .env("LOCKWRAP_LOCK_DELAY", "zz")
            .mentions(&["LOCKWRAP_LOCK_DELAY", "zz"]),
        case(
            "lock-delay above 60s (flag)",
            3,
            &["lock", "--lock-delay", "61s", "bad/k"],
        )
        .mentions(&["--lock-delay", "61s"]),
        case("lock-delay above 60s (env)", 2, &["lock", "bad/k"])
            .env("LOCKWRAP_LOCK_DELAY", "2m")
            .mentions(&["LOCKWRAP_LOCK_DELAY", "120s"]),
        case("poll interval zero", 3, &["lock", "-i", "0", "bad/k"]).mentions(&["--poll-interval"]),
        case(
            "hook timeout zero",
            3,
            &["run", "--key", "bad/k", "--hook-timeout", "0", "--", "true"],
        )
        .mentions(&["--hook-timeout"]),
        case(
            "health-check ttl 100ms (env)",
            2,
            &["run", "--key", "bad/k", "--", "true"],
        )
        .env("LOCKWRAP_HEALTH_CHECK_TTL", "100ms")
        .mentions(&["LOCKWRAP_HEALTH_CHECK_TTL", "100ms"]),
        case(
            "takeover delay shorter than the kill grace (flags)",
            3,
            &[
                "run",
                "--key",
                "bad/k",
                "--session-ttl",
                "10",
                "--kill-grace",
                "9",
                "--takeover-delay",
                "2",
                "--",
                "true",
            ],
        )
        .mentions(&["--takeover-delay 10s"]),
        case(
            "serfHealth without lock-delay cannot be held (env)",
            2,
            &["run", "--key", "bad/k", "--", "true"],
        )
        .env("LOCKWRAP_SESSION_CHECKS", "serfHealth")
        .env("LOCKWRAP_LOCK_DELAY", "0")
        .env("LOCKWRAP_TAKEOVER_DELAY", "6s")
        .mentions(&["LOCKWRAP_LOCK_DELAY", "--lock-delay"]),
        // A node force-left while its holder cannot reach the agent ends the session at any
        // moment: lock-delay + takeover delay must leave room to stop (docs/timing.md).
        run_case(
            "run: no lock-delay and a takeover delay too short for a blind holder",
            3,
            &[
                "--key",
                "bad/k",
                "--lock-delay",
                "0",
                "--takeover-delay",
                "6s",
            ],
        )
        .mentions(&[
            "force-leave",
            "--takeover-delay 8s",
            "--unsafe-allow-overlap",
        ]),
        case(
            "no TTL and no checks in a supervising mode",
            3,
            &["execute", "--session-ttl", "0", "bad/k", "true"],
        )
        .mentions(&["--session-ttl", "crashed holder"]),
        case(
            "no TTL with serfHealth in a supervising mode",
            3,
            &[
                "execute",
                "--session-ttl",
                "0",
                "--session-checks",
                "serfHealth",
                "bad/k",
                "true",
            ],
        )
        .mentions(&["--session-ttl"]),
        // ---- keys (exit 6) and regex ----
        case("key with leading slash", 6, &["lock", "/abs/key"]).mentions(&["/abs/key"]),
        case("key with //", 6, &["lock", "a//b"]).mentions(&["a//b"]),
        case("key with .. segment", 6, &["unlock", "a/../b"]).mentions(&["a/../b"]),
        case("empty key", 6, &["lock", ""]).mentions(&["empty"]),
        case("key with control character", 6, &["status", "a\u{1}b"]).mentions(&["control"]),
        case("key from env with . segment", 6, &["run", "--", "true"])
            .env("LOCKWRAP_KEY", "a/./b")
            .mentions(&["a/./b"]),
        case("key from yaml with //", 6, &["sidecar"])
            .yaml("key: \"x//y\"\n")
            .mentions(&["x//y"]),
        case("unlock regex does not compile", 3, &["unlock", "-r", "("]).mentions(&["("]),
        case("status regex does not compile", 3, &["status", "-r", "a[b"]).mentions(&["a[b"]),
        // ---- metadata ----
        case(
            "metadata not JSON (flag)",
            3,
            &["lock", "--metadata", "{bad", "bad/k"],
        )
        .mentions(&["--metadata", "{bad"]),
        case("metadata not JSON (env)", 2, &["lock", "bad/k"])
            .env("LOCKWRAP_METADATA", "[1,")
            .mentions(&["LOCKWRAP_METADATA"]),
        case(
            "metadata over 64 KiB",
            3,
            &["lock", "--metadata", &huge, "bad/k"],
        )
        .mentions(&["--metadata", "bytes"]),
        // ---- YAML config file (exit 2) ----
        case("yaml unknown key", 2, &["lock", "bad/k"])
            .yaml("sesion_ttl: 15s\n")
            .mentions(&["sesion_ttl"]),
        case("yaml session_ttl is a list", 2, &["lock", "bad/k"])
            .yaml("session_ttl: [1]\n")
            .mentions(&["session_ttl"]),
        case("yaml non_blocking: maybe", 2, &["lock", "bad/k"])
            .yaml("non_blocking: maybe\n")
            .mentions(&["non_blocking", "maybe"]),
        case("yaml syntax error", 2, &["lock", "bad/k"])
            .yaml("key: [unclosed\n")
            .mentions(&["YAML"]),
        case("yaml not a mapping", 2, &["lock", "bad/k"])
            .yaml("- just\n- a list\n")
            .mentions(&["config"]),
        case("yaml not UTF-8", 2, &["lock", "bad/k"])
            .yaml(b"key: \"\xff\xfe\"\n".to_vec())
            .mentions(&["config"]),
        case(
            "config file missing (flag)",
            2,
            &["--config", &missing_config, "lock", "bad/k"],
        )
        .mentions(&[&missing_config]),
        case("config file missing (env)", 2, &["lock", "bad/k"])
            .env("LOCKWRAP_CONFIG", &missing_config)
            .mentions(&[&missing_config]),
        case(
            "config file is a directory",
            2,
            &["--config", &p(dir), "lock", "bad/k"],
        )
        .mentions(&[&p(dir)]),
    ]
}
