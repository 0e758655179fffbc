//! The bad-input table, part 2: enums, numbers and addresses, the Consul connection (unix sockets,
//! basic auth, namespace, partition, TLS, tokens), missing settings, the command, non-UTF-8
//! input and bad Consul answers.

use std::net::TcpListener;
use std::path::Path;

use super::{case, non_utf8, os, Case, Target, FILE_SECRET, SECRET};

/// The cases. `dir` holds the files some cases point at.
pub fn cases(dir: &Path) -> Vec<Case> {
    use std::os::unix::fs::PermissionsExt;
    let garbage_pem = dir.join("garbage-ca.pem");
    std::fs::write(
        &garbage_pem,
        "-----BEGIN CERTIFICATE-----\nthis is not base64 at all!!\n-----END CERTIFICATE-----\n",
    )
    .expect("write pem");
    let empty_pem = dir.join("empty-ca.pem");
    std::fs::write(&empty_pem, "just some text, no PEM blocks\n").expect("write pem");
    // A directory cannot be read as a file, even by root (the tests may run as root).
    let token_dir = dir.join("token-is-a-directory");
    std::fs::create_dir_all(&token_dir).expect("token dir");
    let empty_token = dir.join("empty-token");
    std::fs::write(&empty_token, "  \n").expect("write token");
    let not_executable = dir.join("not-executable.sh");
    std::fs::write(&not_executable, format!("#!/bin/sh\necho {FILE_SECRET}\n")).expect("write");
    std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let p = |path: &Path| path.display().to_string();
    // A port that stays taken for the whole suite.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    std::mem::forget(taken);
    let missing_socket = format!("unix://{}", p(&dir.join("no-such-consul.sock")));
    vec![
        // ---- enums, numbers, addresses ----
        case("layout weird", 3, &["lock", "--layout", "weird", "bad/k"])
            .mentions(&["--layout", "weird"]),
        case("layout weird (env)", 2, &["status", "bad/k"])
            .env("LOCKWRAP_LAYOUT", "weird")
            .mentions(&["LOCKWRAP_LAYOUT", "weird"]),
        case(
            "session-behavior maybe",
            3,
            &["lock", "--session-behavior", "maybe", "bad/k"],
        )
        .mentions(&["--session-behavior", "maybe"]),
        case("limit zero", 3, &["lock", "-n", "0", "bad/k"]).mentions(&["--limit"]),
        case(
            "limit not a number",
            3,
            &["lock", "--limit", "abc", "bad/k"],
        )
        .mentions(&["--limit", "abc"]),
        case(
            "monitor-retry not a number",
            3,
            &[
                "run",
                "--key",
                "bad/k",
                "--monitor-retry",
                "x",
                "--",
                "true",
            ],
        )
        .mentions(&["--monitor-retry"]),
        case(
            "http-addr nonsense",
            3,
            &[
                "run",
                "--key",
                "bad/k",
                "--http-addr",
                "nonsense",
                "--",
                "true",
            ],
        )
        .mentions(&["--http-addr", "nonsense"]),
        case(
            "http-addr port out of range",
            3,
            &[
                "sidecar",
                "--key",
                "bad/k",
                "--http-addr",
                "127.0.0.1:99999",
            ],
        )
        .mentions(&["--http-addr", "99999"]),
        case(
            "http-addr already in use",
            3,
            &["sidecar", "--key", "bad/k", "--http-addr", &taken_addr],
        )
        .mentions(&["--http-addr", &taken_addr]),
        case(
            "LOCKWRAP_HTTP_ADDR nonsense",
            2,
            &["sidecar", "--key", "bad/k"],
        )
        .env("LOCKWRAP_HTTP_ADDR", "localhost")
        .mentions(&["LOCKWRAP_HTTP_ADDR", "localhost"]),
        case(
            "status-file in a missing directory",
            3,
            &[
                "sidecar",
                "--key",
                "bad/k",
                "--status-file",
                "/no/such/dir/status.json",
            ],
        )
        .mentions(&["--status-file", "/no/such/dir"]),
        case(
            "webhook ftp URL",
            3,
            &[
                "run",
                "--key",
                "bad/k",
                "--webhook",
                "ftp://x",
                "--",
                "true",
            ],
        )
        .mentions(&["--webhook", "ftp://x"]),
        case(
            "log-format xml (flag)",
            3,
            &["--log-format", "xml", "lock", "bad/k"],
        )
        .mentions(&["--log-format", "xml"]),
        case("log-format xml (env)", 2, &["lock", "bad/k"])
            .env("LOCKWRAP_LOG_FORMAT", "xml")
            .mentions(&["LOCKWRAP_LOG_FORMAT", "xml"]),
        case("non_blocking env maybe", 2, &["lock", "bad/k"])
            .env("LOCKWRAP_NON_BLOCKING", "maybe")
            .mentions(&["LOCKWRAP_NON_BLOCKING", "maybe"]),
        case(
            "consul-ssl maybe",
            3,
            &["lock", "--consul-ssl", "maybe", "bad/k"],
        )
        .mentions(&["--consul-ssl", "maybe"]),
        case("CONSUL_HTTP_SSL_VERIFY perhaps", 2, &["lock", "bad/k"])
            .env("CONSUL_HTTP_SSL_VERIFY", "perhaps")
            .mentions(&["CONSUL_HTTP_SSL_VERIFY", "perhaps"]),
        // consullock's variables: a scheme other than http/https, or one contradicting Consul's own.
        case("CONSUL_SCHEME ftp", 2, &["lock", "bad/k"])
            .env("CONSUL_SCHEME", "ftp")
            .mentions(&["CONSUL_SCHEME", "ftp"]),
        case("CONSUL_DC against CONSUL_DATACENTER", 2, &["lock", "bad/k"])
            .env("CONSUL_DC", "dc1")
            .env("CONSUL_DATACENTER", "dc2")
            .mentions(&["CONSUL_DC", "CONSUL_DATACENTER"]),
        // ---- Consul connection settings ----
        case(
            "consul-addr ftp scheme",
            3,
            &["lock", "--consul-addr", "ftp://x", "bad/k"],
        )
        .mentions(&["ftp://x"]),
        // ---- unix sockets, basic auth, namespace and partition ----
        case(
            "unix socket path does not exist (env)",
            2,
            &["lock", "bad/k"],
        )
        .env("CONSUL_HTTP_ADDR", "unix:///x")
        .mentions(&["CONSUL_HTTP_ADDR", "unix:///x"]),
        case(
            "unix socket path does not exist (flag)",
            3,
            &[
                "run",
                "--consul-addr",
                &missing_socket,
                "--key",
                "bad/k",
                "--",
                "true",
            ],
        )
        .mentions(&["--consul-addr", &missing_socket]),
        case(
            "unix socket path is a plain file (env)",
            2,
            &["lock", "bad/k"],
        )
        // LOCKWRAP_CONSUL_ADDR: it outranks the suite's CONSUL_HTTP_ADDR (a YAML value would not).
        .env("LOCKWRAP_CONSUL_ADDR", format!("unix://{}", p(&empty_pem)))
        .mentions(&["LOCKWRAP_CONSUL_ADDR", &p(&empty_pem), "not a unix socket"]),
        case("basic auth without `:` (env)", 2, &["lock", "bad/k"])
            .env("CONSUL_HTTP_AUTH", SECRET)
            .mentions(&["CONSUL_HTTP_AUTH", "USER:PASSWORD"]),
        case(
            "basic auth with an empty user (flag)",
            3,
            &["lock", "--consul-http-auth", &format!(":{SECRET}"), "bad/k"],
        )
        .mentions(&["--consul-http-auth", "user"]),
        case("basic auth not a string (yaml)", 2, &["lock", "bad/k"])
            .yaml(format!("consul_http_auth: [{SECRET}]\n"))
            .mentions(&["consul_http_auth"]),
        case("credentials in the address (env)", 2, &["lock", "bad/k"])
            .env(
                "CONSUL_HTTP_ADDR",
                format!("http://u:{SECRET}@127.0.0.1:8500"),
            )
            .mentions(&["CONSUL_HTTP_ADDR", "CONSUL_HTTP_AUTH"]),
        case("empty namespace (env)", 2, &["lock", "bad/k"])
            .env("CONSUL_NAMESPACE", "")
            .mentions(&["CONSUL_NAMESPACE", "empty"]),
        case(
            "empty namespace (flag)",
            3,
            &["run", "--namespace", "", "--key", "bad/k", "--", "true"],
        )
        .mentions(&["--namespace", "empty"]),
        case("namespace with a slash (yaml)", 2, &["status", "bad/k"])
            .yaml("namespace: team/a\n")
            .mentions(&["namespace", "team/a"]),
        case("empty partition (env)", 2, &["unlock", "bad/k"])
            .env("LOCKWRAP_PARTITION", " ")
            .mentions(&["LOCKWRAP_PARTITION", "empty"]),
        case(
            "namespace on open-source Consul",
            8,
            &[
                "run",
                "--namespace",
                "team-a",
                "--key",
                "bad/k",
                "--",
                "true",
            ],
        )
        .mentions(&["team-a", "Enterprise"]),
        case(
            "partition with a token that cannot read the agent",
            4,
            &["lock", "--partition", "part-b", "bad/k"],
        )
        .target(Target::AclReadOnly)
        .mentions(&["part-b", "agent:read"]),
        case("partition on Consul 1.8.7", 8, &["lock", "bad/k"])
            .env("CONSUL_PARTITION", "part-b")
            .mentions(&["part-b", "1.8.7", "1.11"]),
        case(
            "consul-addr with a path",
            3,
            &["lock", "--consul-addr", "http://127.0.0.1:8500/v1", "bad/k"],
        )
        .mentions(&["--consul-addr", "127.0.0.1:8500/v1"]),
        case(
            "token file unreadable (flag)",
            3,
            &["lock", "--consul-token-file", &p(&token_dir), "bad/k"],
        )
        .mentions(&["--consul-token-file", &p(&token_dir)]),
        case("token file missing (env)", 2, &["lock", "bad/k"])
            .env("CONSUL_HTTP_TOKEN_FILE", dir.join("no-such-token"))
            .mentions(&["CONSUL_HTTP_TOKEN_FILE", "no-such-token"]),
        case("token file empty (env)", 2, &["lock", "bad/k"])
            .env("CONSUL_HTTP_TOKEN_FILE", &empty_token)
            .mentions(&["CONSUL_HTTP_TOKEN_FILE", "empty"]),
        case(
            "CA file garbage PEM (flag)",
            3,
            &["lock", "--consul-cacert", &p(&garbage_pem), "bad/k"],
        )
        .mentions(&["--consul-cacert", &p(&garbage_pem)]),
        case("CA file garbage PEM (env)", 2, &["lock", "bad/k"])
            .env("CONSUL_CACERT", &garbage_pem)
            .mentions(&["CONSUL_CACERT", &p(&garbage_pem)]),
        case("CA file without certificates (env)", 2, &["lock", "bad/k"])
            .env("CONSUL_CACERT", &empty_pem)
            .mentions(&["CONSUL_CACERT", &p(&empty_pem)]),
        case(
            "CA file missing (flag)",
            3,
            &["lock", "--consul-cacert", "/no/such/ca.pem", "bad/k"],
        )
        .mentions(&["--consul-cacert", "/no/such/ca.pem"]),
        case(
            "client cert without key",
            3,
            &["lock", "--consul-client-cert", &p(&garbage_pem), "bad/k"],
        )
        .mentions(&["--consul-client"]),
        // ---- missing settings (exit 1) ----
        case("run without a command", 1, &["run", "--key", "bad/k"]).mentions(&["command"]),
        case("run without a key", 1, &["run", "--", "true"]).mentions(&["key"]),
        case("sidecar without a key", 1, &["sidecar"]).mentions(&["key"]),
        case("lock without a key", 1, &["lock"]).mentions(&["key"]),
        case("execute without a shell string", 1, &["execute", "bad/k"]).mentions(&["command"]),
        // ---- the command (126 / 127): refused before taking the lock ----
        case(
            "run missing executable (path)",
            127,
            &["run", "--key", "bad/k", "--", "/no/such/program"],
        )
        .mentions(&["/no/such/program"]),
        case(
            "run missing executable (PATH lookup)",
            127,
            &["run", "--key", "bad/k", "--", "no-such-program-xyz"],
        )
        .mentions(&["no-such-program-xyz"]),
        case(
            "run non-executable file",
            126,
            &["run", "--key", "bad/k", "--", &p(&not_executable)],
        )
        .mentions(&[&p(&not_executable)]),
        case(
            "run a directory",
            126,
            &["run", "--key", "bad/k", "--", &p(dir)],
        )
        .mentions(&[&p(dir)]),
        // ---- non-UTF-8 input: a clean error, never a panic ----
        case("non-UTF-8 positional key", 3, &[])
            .os_args(vec!["lock".into(), non_utf8("k")])
            .mentions(&["UTF-8"]),
        case("non-UTF-8 --key", 3, &[])
            .os_args(vec![
                "run".into(),
                "--key".into(),
                non_utf8("k"),
                "--".into(),
                "true".into(),
            ])
            .mentions(&["UTF-8"]),
        case("non-UTF-8 LOCKWRAP_KEY", 2, &["run", "--", "true"])
            .env("LOCKWRAP_KEY", non_utf8("k"))
            .mentions(&["LOCKWRAP_KEY"]),
        case("non-UTF-8 --metadata", 3, &[])
            .os_args({
                let mut a = os(&["lock", "--metadata"]);
                a.push(non_utf8("{"));
                a.push("bad/k".into());
                a
            })
            .mentions(&["UTF-8"]),
        // ---- Consul answers ----
        case("consul unreachable (closed port)", 8, &["lock", "bad/k"]).target(Target::Closed),
        case(
            "consul unreachable, run",
            8,
            &["run", "--key", "bad/k", "--", "true"],
        )
        .target(Target::Closed),
        case("not consul: HTML answers", 8, &["lock", "bad/k"]).target(Target::Garbage),
        case("ACL denied: lock", 4, &["lock", "bad/k"])
            .target(Target::Acl)
            .mentions(&["ACL"]),
        case(
            "ACL denied: run",
            4,
            &["run", "--key", "bad/k", "--", "true"],
        )
        .target(Target::Acl)
        .mentions(&["ACL"]),
        case("ACL read-only token: lock", 4, &["lock", "bad/k"])
            .target(Target::AclReadOnly)
            .mentions(&["ACL"]),
        case(
            "ACL read-only token: run",
            4,
            &["run", "--key", "bad/k", "--", "true"],
        )
        .target(Target::AclReadOnly)
        .mentions(&["ACL"]),
        case("ACL denied: status", 4, &["status", "bad/k"])
            .target(Target::Acl)
            .mentions(&["ACL"]),
        case("ACL denied: unlock -r", 4, &["unlock", "-r", "bad/.*"])
            .target(Target::Acl)
            .mentions(&["ACL"]),
        case(
            "unknown datacenter",
            8,
            &["lock", "--datacenter", "nosuchdc", "bad/k"],
        )
        .or_code(3)
        .mentions(&["nosuchdc"]),
        case(
            "session check does not exist",
            3,
            &["lock", "--session-checks", "nosuchcheck", "bad/k"],
        )
        .or_code(8)
        .mentions(&["nosuchcheck"]),
    ]
}
