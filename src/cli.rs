//! Command-line definitions (clap). Flags are raw strings here; they serialize (only those
//! given) as one of `config`'s figment sources, which types and validates them together with
//! the environment and the YAML file.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};
use serde::Serialize;

use crate::backend::defaults::{help, Setting};

/// lockwrap: run a program only while holding a distributed lock in Consul.
#[derive(Debug, Parser, Serialize)]
#[command(
    name = "lockwrap",
    version,
    about = "Run a program only while holding a distributed lock in Consul",
    long_about = "Run a program only while holding a distributed lock in Consul (sessions + KV).\n\
                  Container ENTRYPOINT wrapper and PID 1, Kubernetes leader-election sidecar, and a \
                  consullock-compatible CLI. JSON on stdout, logs on stderr.",
    after_help = crate::exit::exit_code_help()
)]
pub(crate) struct Cli {
    /// Increase log verbosity on stderr (-v info of every transition, -vv debug, -vvv trace).
    #[arg(short = 'v', action = ArgAction::Count, global = true)]
    #[serde(skip)]
    pub verbose: u8,

    /// Quieter stderr: warnings and errors only, without the lines that say whom a waiting
    /// contender waits for.
    #[arg(short = 'q', long, global = true, conflicts_with = "verbose")]
    #[serde(skip)]
    pub quiet: bool,

    /// Log format on stderr: text or json (env LOCKWRAP_LOG_FORMAT).
    #[arg(long, global = true, value_name = "text|json")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,

    /// YAML config file (env LOCKWRAP_CONFIG); flags override env, env overrides the file.
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    pub consul: ConsulArgs,

    #[command(subcommand)]
    #[serde(flatten)]
    pub command: Command,
}

/// Consul connection flags; each also reads Consul's own environment variable.
#[derive(Debug, Args, Default, Clone, Serialize)]
pub(crate) struct ConsulArgs {
    /// Consul agent address: host:port, http://…, https://… or unix:///path/consul.sock [env CONSUL_HTTP_ADDR; default 127.0.0.1:8500]
    #[arg(long, global = true, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consul_addr: Option<String>,
    /// Use HTTPS when the address has no scheme [env CONSUL_HTTP_SSL]
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consul_ssl: Option<String>,
    /// ACL token, sent as X-Consul-Token and never logged [env CONSUL_HTTP_TOKEN]
    #[arg(long, global = true, value_name = "TOKEN", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consul_token: Option<String>,
    /// File holding the ACL token [env CONSUL_HTTP_TOKEN_FILE]
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consul_token_file: Option<String>,
    /// CA certificate file (PEM) to verify Consul's TLS certificate [env CONSUL_CACERT]
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consul_cacert: Option<String>,
    /// Directory of CA certificates (PEM) [env CONSUL_CAPATH]
    #[arg(long, global = true, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consul_capath: Option<String>,
    /// Client certificate for mutual TLS [env CONSUL_CLIENT_CERT]
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consul_client_cert: Option<String>,
    /// Client key for mutual TLS [env CONSUL_CLIENT_KEY]
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consul_client_key: Option<String>,
    /// Server name (SNI) expected in Consul's certificate [env CONSUL_TLS_SERVER_NAME]
    #[arg(long, global = true, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consul_tls_server_name: Option<String>,
    /// Verify Consul's TLS certificate (default true) [env CONSUL_HTTP_SSL_VERIFY]
    #[arg(long, global = true, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consul_ssl_verify: Option<String>,
    /// Consul datacenter to use [env CONSUL_DATACENTER]
    #[arg(long, global = true, value_name = "DC")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    /// HTTP basic auth for a proxy in front of Consul, never logged [env CONSUL_HTTP_AUTH]
    #[arg(
        long,
        global = true,
        value_name = "USER:PASSWORD",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consul_http_auth: Option<String>,
    /// Consul Enterprise namespace for every KV, session and check request [env CONSUL_NAMESPACE]
    #[arg(long, global = true, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Consul Enterprise admin partition for every request [env CONSUL_PARTITION]
    #[arg(long, global = true, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
}

#[derive(Debug, Subcommand, Serialize)]
// Serialized without the variant name: the flags of the chosen subcommand sit beside the global
// ones, under their setting names.
#[serde(untagged)]
pub(crate) enum Command {
    /// Acquire a lock and leave it held (consullock `lock`); prints the lock as JSON.
    #[command(
        after_help = "Example:\n  lockwrap lock --session-ttl 600 --metadata '{\"job\":42}' my/lock\n  \
                            lockwrap lock --non-blocking my/lock || echo \"taken (exit $?)\""
    )]
    Lock(LockCmd),
    /// Release a lock, or every lock matching a regex with -r; prints what was released.
    #[command(after_help = "Example:\n  lockwrap unlock my/lock\n  lockwrap unlock -r 'jobs/.*'")]
    Unlock(UnlockCmd),
    /// Run a shell string while holding the lock (consullock `execute`); exits with its code.
    #[command(
        after_help = "Example:\n  lockwrap execute --timeout 300 deploy/prod './deploy.sh --all'"
    )]
    Execute(ExecuteCmd),
    /// Show who holds a lock (or every lock matching a regex with -r) as JSON.
    #[command(after_help = "Example:\n  lockwrap status my/lock\n  lockwrap status -r 'jobs/.*'")]
    Status(StatusCmd),
    /// Run a command only while holding the lock: the container ENTRYPOINT / PID 1 mode.
    #[command(
        after_help = "Example:\n  lockwrap run --key service/billing/leader --http-addr :8080 -- ./billing --serve\n  \
                            LOCKWRAP_KEY=cron/report lockwrap run --shell -- 'make report && upload'"
    )]
    Run(RunCmd),
    /// Campaign for leadership with no command; report it over HTTP and a status file.
    #[command(
        after_help = "Example:\n  lockwrap sidecar --key service/app/leader --http-addr 0.0.0.0:8080 \\\n    \
                            --status-file /var/run/lockwrap/status.json --on-acquired /hooks/promote"
    )]
    Sidecar(SidecarCmd),
    /// Copy this binary to DEST (a directory gets DEST/lockwrap): for init containers that share
    /// lockwrap with the application container through a volume.
    #[command(after_help = "Example (Kubernetes init container):\n  /lockwrap install /shared")]
    Install(InstallCmd),
}

/// Options shared by every command that acquires a lock.
#[derive(Debug, Args, Default, Clone, Serialize)]
pub(crate) struct LockArgs {
    // The help of every flag with a per-mode default is rendered from the defaults table.
    // A negative value reaches validation (exit 7, as consullock answers) instead of clap.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, help = help(Setting::SessionTtl))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_ttl: Option<String>,
    #[arg(long, value_name = "DURATION", help = help(Setting::LockDelay))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_delay: Option<String>,
    #[arg(long, value_name = "release|delete", help = help(Setting::SessionBehavior))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_behavior: Option<String>,
    #[arg(long, value_name = "none|CHECK,…", help = help(Setting::SessionChecks))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_checks: Option<String>,
    /// Session name (default "lockwrap <key> on <hostname> pid <pid>")
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
    /// Register an agent TTL check kept passing while lockwrap is healthy and bind the session to it: a crashed holder's lock is freed ~this long after the crash
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_ttl: Option<String>,
    /// Do not wait: exit 100 if the lock is taken
    #[arg(long, action = ArgAction::SetTrue)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub non_blocking: bool,
    /// Give up waiting after this long (exit 5); 0 = never
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Poll every DURATION instead of waiting with blocking queries (consullock's -i)
    #[arg(short = 'i', long = "poll-interval", value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
    /// Extra JSON stored with the lock (visible to `status` and other holders)
    #[arg(long, value_name = "JSON")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Executable(s) run as `EXE <key>` before every acquire attempt; failures ignored
    #[arg(long, value_name = "EXE", num_args = 1.., action = ArgAction::Append)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_before_lock: Vec<String>,
    /// Executable(s) run as `EXE <key>` after every attempt that found the lock taken
    #[arg(long, value_name = "EXE", num_args = 1.., action = ArgAction::Append)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_already_locked: Vec<String>,
    /// Key layout: default (consullock: the key is the lock) or consul-lock (`<prefix>/.lock`, interoperates with `consul lock`)
    #[arg(long, value_name = "default|consul-lock")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// Number of holders allowed; more than 1 uses Consul's semaphore recipe (like `consul lock -n`)
    #[arg(short = 'n', long = "limit", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// Wait in a fair queue: waiters get the lock in arrival order, and a handoff wakes only the next one
    #[arg(long, action = ArgAction::SetTrue)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub queue: bool,
}

/// Options of the supervising commands (execute, run, sidecar).
#[derive(Debug, Args, Default, Clone, Serialize)]
pub(crate) struct SupervisorArgs {
    #[arg(long, value_name = "DURATION", help = help(Setting::KillGrace))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_grace: Option<String>,
    #[arg(long, value_name = "DURATION", help = help(Setting::TakeoverDelay))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub takeover_delay: Option<String>,
    /// Executable(s) run as `EXE <key>` once the lock is held
    #[arg(long, value_name = "EXE", num_args = 1.., action = ArgAction::Append)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_acquired: Vec<String>,
    /// Executable(s) run as `EXE <key>` when the lock is lost (started as the command is stopped)
    #[arg(long, value_name = "EXE", num_args = 1.., action = ArgAction::Append)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_lost: Vec<String>,
    /// Executable(s) run as `EXE <key>` after the lock was released
    #[arg(long, value_name = "EXE", num_args = 1.., action = ArgAction::Append)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_released: Vec<String>,
    /// Upper bound for each hook run and webhook call (default 30s)
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook_timeout: Option<String>,
    /// URL receiving every lock event as a JSON POST (in the background)
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Give the lock up early after N consecutive failed watch reads (default: never; only the lease deadline ends a hold)
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor_retry: Option<String>,
    /// Accept timing settings that let another holder start before this command has stopped on some failure path (logged as a warning); see docs/timing.md
    #[arg(long, action = ArgAction::SetTrue)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unsafe_allow_overlap: bool,
    /// Kept for compatibility: run, execute and sidecar are always child subreapers (PR_SET_CHILD_SUBREAPER) now
    #[arg(long, action = ArgAction::SetTrue)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub subreaper: bool,
    /// Serve /healthz, /readyz, /leader and /metrics on this address (e.g. 0.0.0.0:8080 or :8080)
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,
    /// /readyz answers 200 on standbys too (for pods whose traffic should not follow the lock)
    #[arg(long, action = ArgAction::SetTrue)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ready_always: bool,
    /// Write the leadership state as JSON to this file on every change (atomically)
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_file: Option<String>,
}

#[derive(Debug, Args, Serialize)]
pub(crate) struct LockCmd {
    #[command(flatten)]
    #[serde(flatten)]
    pub lock: LockArgs,
    /// The lock key
    #[serde(skip)]
    pub key: Option<String>,
}

#[derive(Debug, Args, Serialize)]
pub(crate) struct UnlockCmd {
    /// Treat KEY as a regular expression that must match whole keys; release every match
    #[arg(short = 'r', long = "regex", action = ArgAction::SetTrue)]
    #[serde(skip)]
    pub regex: bool,
    /// Key layout: default or consul-lock
    #[arg(long, value_name = "default|consul-lock")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// The lock key (or regex with -r)
    #[serde(skip)]
    pub key: Option<String>,
}

#[derive(Debug, Args, Serialize)]
pub(crate) struct InstallCmd {
    /// Destination directory or file path; written atomically, mode 0755
    #[serde(skip)]
    pub dest: PathBuf,
}

#[derive(Debug, Args, Serialize)]
pub(crate) struct StatusCmd {
    /// Treat KEY as a regular expression that must match whole keys
    #[arg(short = 'r', long = "regex", action = ArgAction::SetTrue)]
    #[serde(skip)]
    pub regex: bool,
    /// Key layout: default or consul-lock
    #[arg(long, value_name = "default|consul-lock")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// The lock key (or regex with -r)
    #[serde(skip)]
    pub key: Option<String>,
}

#[derive(Debug, Args, Serialize)]
pub(crate) struct ExecuteCmd {
    #[command(flatten)]
    #[serde(flatten)]
    pub lock: LockArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub supervisor: SupervisorArgs,
    /// The lock key
    #[serde(skip)]
    pub key: Option<String>,
    /// Shell string run with /bin/sh -c while the lock is held
    #[serde(skip)]
    pub executable: Option<String>,
    /// Exit with this code instead of 100 (--non-blocking) or 5 (--timeout) when the lock is taken and the wait gives up, e.g. 0 for a scheduled job whose skipped run is not a failure
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_exit_code: Option<String>,
}

#[derive(Debug, Args, Serialize)]
pub(crate) struct RunCmd {
    /// The lock key [env LOCKWRAP_KEY]
    #[arg(long, value_name = "KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub lock: LockArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub supervisor: SupervisorArgs,
    /// Run the command through /bin/sh -c (the arguments are joined with spaces)
    #[arg(long, action = ArgAction::SetTrue)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shell: bool,
    /// Exit with this code instead of 100 (--non-blocking) or 5 (--timeout) when the lock is taken and the wait gives up, e.g. 0 for a scheduled job whose skipped run is not a failure
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_exit_code: Option<String>,
    /// The command and its arguments (after `--`)
    #[arg(trailing_var_arg = true, value_name = "CMD")]
    #[serde(skip)]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args, Serialize)]
pub(crate) struct SidecarCmd {
    /// The lock key [env LOCKWRAP_KEY]
    #[arg(long, value_name = "KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub lock: LockArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub supervisor: SupervisorArgs,
    /// Exit 101 when the lock is lost instead of campaigning again
    #[arg(long, action = ArgAction::SetTrue)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exit_on_loss: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_per_mode_default_in_help_is_the_tables() {
        let cli = Cli::command();
        let mut seen = 0;
        for sub in cli.get_subcommands() {
            for setting in Setting::ALL {
                let Some(arg) = sub
                    .get_arguments()
                    .find(|a| a.get_long() == Some(setting.flag()))
                else {
                    continue;
                };
                let shown = arg.get_help().map(ToString::to_string);
                assert_eq!(
                    shown,
                    Some(help(setting)),
                    "{} --{}",
                    sub.get_name(),
                    setting.flag()
                );
                assert!(arg.get_long_help().is_none(), "--{}", setting.flag());
                seen += 1;
            }
        }
        // lock: 4 session flags; execute, run, sidecar: those and kill grace, takeover delay.
        assert_eq!(seen, 4 + 3 * 6);
    }

    #[test]
    fn run_takes_the_command_after_double_dash() {
        let cli = Cli::try_parse_from(["lockwrap", "run", "--key", "k", "--", "sleep", "-x", "1"])
            .unwrap();
        match cli.command {
            Command::Run(run) => {
                assert_eq!(run.key.as_deref(), Some("k"));
                assert_eq!(run.command, vec!["sleep", "-x", "1"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hooks_take_several_values_before_double_dash() {
        let cli = Cli::try_parse_from([
            "lockwrap",
            "lock",
            "--on-before-lock",
            "a",
            "b",
            "--",
            "my/lock",
        ])
        .unwrap();
        match cli.command {
            Command::Lock(lock) => {
                assert_eq!(lock.lock.on_before_lock, vec!["a", "b"]);
                assert_eq!(lock.key.as_deref(), Some("my/lock"));
            }
            other => panic!("{other:?}"),
        }
    }
}
