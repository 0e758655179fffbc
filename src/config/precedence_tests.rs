//! Loading in figment's `Jail`: the precedence of the sources (file < `CONSUL_*` < `LOCKWRAP_*`
//! < flags), the token-file rule, provenance, and what each mode's config carries.

use std::time::Duration;

use clap::Parser;
use figment::Jail;

use super::sources::{gather, Source};
use super::{load, Config, Task};
use crate::backend::consul::env::{CONSULLOCK_ENV, CONSUL_ENV};
use crate::cli::Cli;
use crate::exit::Result;

/// Runs `f` in a `Jail` (a temporary directory and env restored afterwards, one test at a
/// time) with every `LOCKWRAP_*` and `CONSUL_*` variable of the test process unset.
// `Jail` fixes the closure's error type (figment's, which is large); it is never built here.
#[allow(clippy::result_large_err)]
pub(super) fn jailed(f: impl FnOnce(&mut Jail)) {
    Jail::expect_with(|jail| {
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            let consul = CONSUL_ENV
                .iter()
                .chain(CONSULLOCK_ENV)
                .any(|(var, _)| *var == name);
            if name.starts_with("LOCKWRAP_") || consul {
                // Registers the variable with the jail, which restores it when dropped.
                jail.set_env(&name, "");
                std::env::remove_var(&name);
            }
        }
        f(jail);
        Ok(())
    });
}

pub(super) fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("lockwrap").chain(args.iter().copied()))
        .expect("clap accepts the arguments")
}

pub(super) fn load_args(args: &[&str]) -> Result<Config> {
    load(cli(args))
}

/// Writes `lockwrap.yaml` in the jail and returns its absolute path.
pub(super) fn yaml(jail: &Jail, text: &str) -> String {
    jail.create_file("lockwrap.yaml", text).expect("write yaml");
    jail.directory().join("lockwrap.yaml").display().to_string()
}

fn address(args: &[&str]) -> String {
    load_args(args).expect("valid").consul.address
}

fn ttl(args: &[&str]) -> Option<Duration> {
    match load_args(args).expect("valid").task {
        Task::Lock(lock) => lock.request.session.ttl,
        other => panic!("expected lock, got {other:?}"),
    }
}

#[test]
fn each_source_overrides_the_one_below_it() {
    jailed(|jail| {
        let file = yaml(jail, "consul_addr: file:1\n");
        let args = ["--config", file.as_str(), "lock", "k"];
        assert_eq!(address(&args), "file:1");
        jail.set_env("CONSUL_HTTP_ADDR", "consul:2");
        assert_eq!(address(&args), "consul:2");
        jail.set_env("LOCKWRAP_CONSUL_ADDR", "lockwrap:3");
        assert_eq!(address(&args), "lockwrap:3");
        let flagged = ["--config", &file, "--consul-addr", "flag:4", "lock", "k"];
        assert_eq!(address(&flagged), "flag:4");
    });
}

#[test]
fn consullock_scheme_and_dc_variables_are_honoured_like_consuls_own() {
    jailed(|jail| {
        let consul = |args: &[&str]| load_args(args).expect("valid").consul;
        jail.set_env("CONSUL_SCHEME", "https");
        jail.set_env("CONSUL_DC", "dc7");
        let c = consul(&["lock", "k"]);
        assert!(c.ssl, "CONSUL_SCHEME=https means HTTPS");
        assert_eq!(c.datacenter.as_deref(), Some("dc7"));
        // The same value from both names is no contradiction; flags still win.
        jail.set_env("CONSUL_DATACENTER", "dc7");
        jail.set_env("CONSUL_HTTP_SSL", "T");
        assert_eq!(consul(&["lock", "k"]).datacenter.as_deref(), Some("dc7"));
        let c = consul(&["--datacenter", "dc9", "--consul-ssl", "F", "lock", "k"]);
        assert_eq!(c.datacenter.as_deref(), Some("dc9"));
        assert!(!c.ssl);
    });
}

#[test]
fn consuls_boolean_spellings_are_accepted_in_its_variables() {
    jailed(|jail| {
        for (text, want) in [
            ("T", true),
            ("True", true),
            ("1", true),
            ("F", false),
            ("FALSE", false),
            ("0", false),
        ] {
            jail.set_env("CONSUL_HTTP_SSL", text);
            jail.set_env("CONSUL_HTTP_SSL_VERIFY", text);
            let c = load_args(&["lock", "k"]).expect("valid").consul;
            assert_eq!((c.ssl, c.ssl_verify), (want, want), "{text}");
        }
    });
}

#[test]
fn lockwrap_settings_go_file_then_env_then_flag_and_accept_dashed_yaml_keys() {
    jailed(|jail| {
        let file = yaml(jail, "session-ttl: 20\n");
        let args = ["--config", file.as_str(), "lock", "k"];
        assert_eq!(ttl(&args), Some(Duration::from_secs(20)));
        jail.set_env("LOCKWRAP_SESSION_TTL", "30s");
        assert_eq!(ttl(&args), Some(Duration::from_secs(30)));
        let flagged = ["--config", &file, "lock", "--session-ttl", "1m", "k"];
        assert_eq!(ttl(&flagged), Some(Duration::from_secs(60)));
    });
}

#[test]
fn the_config_file_comes_from_lockwrap_config_and_unrelated_variables_are_ignored() {
    jailed(|jail| {
        let file = yaml(jail, "session_ttl: 25\n");
        jail.set_env("LOCKWRAP_CONFIG", &file);
        jail.set_env("LOCKWRAP_BIN", "/usr/local/bin/lockwrap");
        assert_eq!(ttl(&["lock", "k"]), Some(Duration::from_secs(25)));
    });
}

#[test]
fn a_token_file_wins_unless_the_inline_token_has_higher_precedence() {
    jailed(|jail| {
        jail.create_file("token", "from-file\n").expect("token");
        let token_file = jail.directory().join("token").display().to_string();
        let token = |args: &[&str]| load_args(args).expect("valid").consul.token;
        // Same rank (both Consul's own variables): the file wins, as in Consul's CLI.
        jail.set_env("CONSUL_HTTP_TOKEN_FILE", &token_file);
        jail.set_env("CONSUL_HTTP_TOKEN", "consul-inline");
        assert_eq!(token(&["lock", "k"]).as_deref(), Some("from-file"));
        // LOCKWRAP_CONSUL_TOKEN outranks CONSUL_HTTP_TOKEN_FILE.
        jail.set_env("LOCKWRAP_CONSUL_TOKEN", "lockwrap-inline");
        assert_eq!(token(&["lock", "k"]).as_deref(), Some("lockwrap-inline"));
        // A token file flag outranks every env token.
        let flagged = ["--consul-token-file", token_file.as_str(), "lock", "k"];
        assert_eq!(token(&flagged).as_deref(), Some("from-file"));
        // A token flag outranks the token file from env.
        let flagged = ["--consul-token", "flag-inline", "lock", "k"];
        assert_eq!(token(&flagged).as_deref(), Some("flag-inline"));
    });
}

#[test]
fn a_file_token_loses_to_a_token_file_from_env() {
    jailed(|jail| {
        jail.create_file("token", "from-file\n").expect("token");
        let token_file = jail.directory().join("token").display().to_string();
        let file = yaml(jail, "consul_token: yaml-inline\n");
        jail.set_env("CONSUL_HTTP_TOKEN_FILE", &token_file);
        let config = load_args(&["--config", &file, "lock", "k"]).expect("valid");
        assert_eq!(config.consul.token.as_deref(), Some("from-file"));
    });
}

#[test]
fn provenance_names_the_variable_the_flag_or_the_file() {
    jailed(|jail| {
        let file = yaml(jail, "session_ttl: 20\nlock_delay: 1\nkey: from/file\n");
        jail.set_env("CONSUL_HTTP_TOKEN", "t");
        jail.set_env("LOCKWRAP_LOCK_DELAY", "2");
        let cli = cli(&["run", "--timeout", "5", "--", "true"]);
        let (_, provenance) = gather(Some(std::path::Path::new(&file)), &cli).expect("valid");
        assert_eq!(
            provenance.source("consul_token"),
            Source::Env("CONSUL_HTTP_TOKEN".into())
        );
        assert_eq!(
            provenance.source("lock_delay"),
            Source::Env("LOCKWRAP_LOCK_DELAY".into())
        );
        assert_eq!(provenance.source("timeout"), Source::Flag);
        assert_eq!(
            provenance.source("session_ttl"),
            Source::File(file.clone().into())
        );
        assert_eq!(provenance.source("kill_grace"), Source::Default);
    });
}

#[test]
fn switches_count_only_when_given() {
    jailed(|jail| {
        jail.set_env("LOCKWRAP_EXIT_ON_LOSS", "yes");
        let config = load_args(&["sidecar", "--key", "k"]).expect("valid");
        let Task::Sidecar(job) = config.task else {
            panic!("expected sidecar");
        };
        // The absent --exit-on-loss switch does not override the env's `yes`.
        assert!(job.supervision.exit_on_loss);
    });
}

#[test]
fn each_mode_carries_only_its_own_settings() {
    jailed(|_| {
        let Task::Status(query) = load_args(&["status", "-r", "jobs/.*"]).expect("ok").task else {
            panic!("expected status");
        };
        assert!(query.regex);
        assert_eq!(query.key, "jobs/.*");
        let Task::Execute(job) = load_args(&["execute", "k", "echo hi"]).expect("ok").task else {
            panic!("expected execute");
        };
        assert!(job.supervision.shell);
        assert_eq!(job.supervision.command, vec!["echo hi"]);
        let config = load_args(&["run", "--key", "k", "--subreaper", "--", "true"]).expect("ok");
        assert!(config.supervising());
        let config = load_args(&["lock", "k"]).expect("ok");
        assert!(matches!(config.task, Task::Lock(_)));
        assert!(!config.supervising());
    });
}
