//! Where settings come from: YAML file < environment < flags (README, "Configuration"), and
//! `examples/lockwrap.yaml` documents every setting and is valid.

use std::time::Duration;

use crate::consul::Consul;
use crate::harness::{
    assert_no_sessions, code, describe, lockwrap, run_bounded, stderr, unique_key, Dir,
};

fn write_yaml(dir: &Dir, name: &str, text: &str) -> String {
    let path = dir.path(name);
    std::fs::write(&path, text).expect("write yaml");
    path.display().to_string()
}

/// The key the child saw, with `yaml`, `env` and `flag` keys given or not.
fn key_seen(
    consul: &Consul,
    dir: &Dir,
    yaml: &str,
    env: Option<&str>,
    flag: Option<&str>,
) -> String {
    let out_file = dir.path("seen-key");
    let _ = std::fs::remove_file(&out_file);
    let config = write_yaml(dir, "key.yaml", &format!("key: {yaml}\nlock_delay: 0s\n"));
    let mut cmd = lockwrap(consul);
    cmd.args(["run", "--config", &config]);
    if let Some(flag) = flag {
        cmd.args(["--key", flag]);
    }
    if let Some(env) = env {
        cmd.env("LOCKWRAP_KEY", env);
    }
    cmd.args([
        "--",
        "sh",
        "-c",
        &format!("echo \"$LOCKWRAP_KEY\" >> '{}'", out_file.display()),
    ]);
    let out = run_bounded(cmd, Duration::from_secs(20));
    assert_eq!(code(&out), 0, "{}", describe(&out));
    dir.lines("seen-key").first().cloned().unwrap_or_default()
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/lockwrap.yaml");

/// Every setting name, from the settings struct itself, so the example cannot fall behind.
fn settings() -> Vec<String> {
    lockwrap::testing::setting_names()
        .iter()
        .map(|name| name.to_string())
        .collect()
}

#[test]
fn run_config_precedence_file_then_env_then_flags() {
    let consul = Consul::shared();
    let dir = Dir::new("run-config-precedence");
    let (from_file, from_env, from_flag) = (
        unique_key("cfg-file"),
        unique_key("cfg-env"),
        unique_key("cfg-flag"),
    );
    assert_eq!(key_seen(consul, &dir, &from_file, None, None), from_file);
    assert_eq!(
        key_seen(consul, &dir, &from_file, Some(&from_env), None),
        from_env
    );
    assert_eq!(
        key_seen(consul, &dir, &from_file, Some(&from_env), Some(&from_flag)),
        from_flag
    );

    // LOCKWRAP_CONFIG names the file when --config is absent.
    let key = unique_key("cfg-env-file");
    let config = write_yaml(
        &dir,
        "via-env.yaml",
        &format!("key: {key}\nlock_delay: 0\n"),
    );
    let mut cmd = lockwrap(consul);
    cmd.env("LOCKWRAP_CONFIG", &config).args([
        "run",
        "--",
        "sh",
        "-c",
        "test \"$LOCKWRAP_KEY\" = \"$0\"",
        &key,
    ]);
    let out = run_bounded(cmd, Duration::from_secs(20));
    assert_eq!(code(&out), 0, "{}", describe(&out));

    // Timing: a configuration the timing model refuses (serfHealth with no lock-delay) in the
    // file is named as the file's; env fixes it; a flag breaks it again and is named as the flag.
    let key = unique_key("cfg-timing");
    let config = write_yaml(
        &dir,
        "timing.yaml",
        &format!(
            "key: {key}\nsession_ttl: 10s\nsession_checks: serfHealth\nlock_delay: 0\ntakeover_delay: 6s\n"
        ),
    );
    let base = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = lockwrap(consul);
        cmd.args(["run", "--config", &config]).args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(["--", "true"]);
        run_bounded(cmd, Duration::from_secs(20))
    };
    let out = base(&[], &[]);
    assert_eq!(code(&out), 2, "{}", describe(&out));
    assert!(
        stderr(&out).contains(&config),
        "names the file: {}",
        describe(&out)
    );
    let out = base(&[], &[("LOCKWRAP_LOCK_DELAY", "5s")]);
    assert_eq!(code(&out), 0, "env overrides the file: {}", describe(&out));
    let out = base(&["--lock-delay", "0"], &[("LOCKWRAP_LOCK_DELAY", "5s")]);
    assert_eq!(code(&out), 3, "the flag overrides env: {}", describe(&out));
    assert!(stderr(&out).contains("--lock-delay"), "{}", describe(&out));
    let out = base(
        &["--session-ttl", "20s", "--lock-delay", "5s"],
        &[("LOCKWRAP_SESSION_TTL", "abc")],
    );
    assert_eq!(
        code(&out),
        0,
        "a flag hides a bad env value: {}",
        describe(&out)
    );
    let out = base(&[], &[("LOCKWRAP_SESSION_TTL", "5s")]);
    assert_eq!(code(&out), 7, "TTL out of range: {}", describe(&out));
    assert!(
        stderr(&out).contains("LOCKWRAP_SESSION_TTL"),
        "{}",
        describe(&out)
    );
    assert_no_sessions(consul, &key);

    // Consul's address: YAML < CONSUL_HTTP_ADDR < --consul-addr (127.0.0.1:1 refuses connections).
    let key = unique_key("cfg-addr");
    let config = write_yaml(
        &dir,
        "addr.yaml",
        &format!("key: {key}\nlock_delay: 0\nconsul_addr: 127.0.0.1:1\n"),
    );
    let mut cmd = lockwrap(consul);
    cmd.args(["run", "--config", &config, "--", "true"]);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(
        code(&out),
        0,
        "CONSUL_HTTP_ADDR beats the file: {}",
        describe(&out)
    );
    let mut cmd = lockwrap(consul);
    cmd.env("CONSUL_HTTP_ADDR", "127.0.0.1:1").args([
        "run",
        "--config",
        &config,
        "--consul-addr",
        &consul.addr(),
        "--",
        "true",
    ]);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(
        code(&out),
        0,
        "--consul-addr beats the env: {}",
        describe(&out)
    );
    assert_no_sessions(consul, &key);
}

#[test]
fn run_example_config_documents_every_setting_and_is_valid() {
    let text = std::fs::read_to_string(EXAMPLE).expect("examples/lockwrap.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let names = settings();
    assert!(names.len() > 30, "SETTINGS parsed: {names:?}");
    for name in &names {
        let index = lines
            .iter()
            .position(|l| l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("examples/lockwrap.yaml does not set `{name}`"));
        assert!(
            index > 0 && lines[index - 1].trim_start().starts_with('#'),
            "`{name}` in examples/lockwrap.yaml has no comment above it"
        );
    }

    let consul = Consul::shared();
    let key = unique_key("run-example-config");
    let mut cmd = lockwrap(consul);
    cmd.args([
        "run", "--config", EXAMPLE, "--key", &key, "--", "sh", "-c", "exit 5",
    ]);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(
        code(&out),
        5,
        "the example must be valid for `run`: {}",
        describe(&out)
    );
    assert_no_sessions(consul, &key);
}
