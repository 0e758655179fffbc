//! TLS to Consul (README, "Consul connection"): CA file and directory, client certificates, server name, and
//! verification, against an agent serving HTTPS with certificates from `consul tls`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::consul::{consul_binary, wait_until, Consul};
use crate::harness::{code, free_port, lockwrap, run_bounded, scratch, stderr, stdout, unique_key};

/// An agent with an HTTPS port that demands client certificates, and the files to reach it.
struct TlsAgent {
    consul: Consul,
    https_port: u16,
    dir: PathBuf,
}

impl TlsAgent {
    fn start() -> TlsAgent {
        let dir = scratch("tls");
        let tls = |args: &[&str]| {
            let status = Command::new(consul_binary())
                .args(["tls"])
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("consul tls");
            assert!(status.status.success(), "consul tls {args:?}: {status:?}");
        };
        tls(&["ca", "create"]);
        tls(&["cert", "create", "-server"]);
        tls(&["cert", "create", "-client"]);
        let https_port = free_port();
        let hcl = format!(
            r#"ports {{ https = {https_port} }}
ca_file = "{dir}/consul-agent-ca.pem"
cert_file = "{dir}/dc1-server-consul-0.pem"
key_file = "{dir}/dc1-server-consul-0-key.pem"
verify_incoming_https = true"#,
            dir = dir.display()
        );
        let consul = Consul::start_with(&["-hcl", &hcl]);
        let agent = TlsAgent {
            consul,
            https_port,
            dir,
        };
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                https_port
            ))
            .is_ok()),
            "HTTPS port never opened"
        );
        agent
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `lockwrap` aimed at the HTTPS port with the CA and client certificate set.
    fn lockwrap(&self, host: &str) -> Command {
        let mut cmd = lockwrap(&self.consul);
        cmd.env(
            "CONSUL_HTTP_ADDR",
            format!("https://{host}:{}", self.https_port),
        )
        .env("CONSUL_CACERT", self.file("consul-agent-ca.pem"))
        .env("CONSUL_CLIENT_CERT", self.file("dc1-client-consul-0.pem"))
        .env(
            "CONSUL_CLIENT_KEY",
            self.file("dc1-client-consul-0-key.pem"),
        );
        cmd
    }
}

fn lock_and_unlock(mut cmd: Command, key: &str, agent: &TlsAgent) -> std::process::Output {
    cmd.args(["lock", key]);
    let out = run_bounded(cmd, Duration::from_secs(30));
    if code(&out) == 0 {
        agent.consul.put(&format!("/v1/kv/{key}?release=x"), "");
        let mut unlock = agent.lockwrap("127.0.0.1");
        unlock.args(["unlock", key]);
        run_bounded(unlock, Duration::from_secs(30));
    }
    out
}

#[test]
fn tls_with_ca_file_and_client_certificate_locks() {
    let agent = TlsAgent::start();
    let key = unique_key("tls-ok");
    let out = lock_and_unlock(agent.lockwrap("127.0.0.1"), &key, &agent);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains(&key));
    assert!(agent.consul.sessions_for(&key).is_empty());
}

#[test]
fn tls_errors_name_the_problem_and_exit_8() {
    let agent = TlsAgent::start();
    let key = unique_key("tls-bad");

    // Without the CA, the agent's certificate is not trusted.
    let mut no_ca = agent.lockwrap("127.0.0.1");
    no_ca.env_remove("CONSUL_CACERT");
    let out = lock_and_unlock(no_ca, &key, &agent);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("https://127.0.0.1"),
        "{}",
        stderr(&out)
    );

    // Without a client certificate, the agent refuses the handshake.
    let mut no_client = agent.lockwrap("127.0.0.1");
    no_client
        .env_remove("CONSUL_CLIENT_CERT")
        .env_remove("CONSUL_CLIENT_KEY");
    let out = lock_and_unlock(no_client, &key, &agent);
    assert_eq!(code(&out), 8, "{}", stderr(&out));

    // A server name the certificate does not carry fails verification.
    let mut wrong_name = agent.lockwrap("localhost");
    wrong_name.env("CONSUL_TLS_SERVER_NAME", "not-consul.example");
    let out = lock_and_unlock(wrong_name, &key, &agent);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(agent.consul.keys("").iter().all(|k| !k.contains(&key)));
}

#[test]
fn tls_server_name_ca_path_and_disabled_verification_work() {
    let agent = TlsAgent::start();

    // The certificate names server.dc1.consul: reach 127.0.0.1 under that name.
    let key = unique_key("tls-sni");
    let mut by_name = agent.lockwrap("127.0.0.1");
    by_name.env("CONSUL_TLS_SERVER_NAME", "server.dc1.consul");
    let out = lock_and_unlock(by_name, &key, &agent);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // A directory of CA certificates instead of a file.
    let key = unique_key("tls-capath");
    let ca_dir = agent.dir.join("cas");
    std::fs::create_dir_all(&ca_dir).expect("ca dir");
    std::fs::copy(agent.file("consul-agent-ca.pem"), ca_dir.join("ca.pem")).expect("copy ca");
    let mut by_path = agent.lockwrap("127.0.0.1");
    by_path
        .env_remove("CONSUL_CACERT")
        .env("CONSUL_CAPATH", &ca_dir);
    let out = lock_and_unlock(by_path, &key, &agent);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // CONSUL_HTTP_SSL_VERIFY=false accepts the untrusted certificate.
    let key = unique_key("tls-noverify");
    let mut no_verify = agent.lockwrap("127.0.0.1");
    no_verify
        .env_remove("CONSUL_CACERT")
        .env("CONSUL_HTTP_SSL_VERIFY", "false");
    let out = lock_and_unlock(no_verify, &key, &agent);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // CONSUL_HTTP_SSL=true upgrades a scheme-less address to HTTPS.
    let key = unique_key("tls-ssl-env");
    let mut ssl_env = agent.lockwrap("127.0.0.1");
    ssl_env
        .env(
            "CONSUL_HTTP_ADDR",
            format!("127.0.0.1:{}", agent.https_port),
        )
        .env("CONSUL_HTTP_SSL", "true");
    let out = lock_and_unlock(ssl_env, &key, &agent);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // So do consullock's CONSUL_SCHEME=https and Consul's own spelling `T` (README, "Consul
    // connection"): against this HTTPS-only port, plain HTTP could not lock.
    for (var, value) in [("CONSUL_SCHEME", "https"), ("CONSUL_HTTP_SSL", "T")] {
        let key = unique_key("tls-ssl-spelling");
        let mut spelled = agent.lockwrap("127.0.0.1");
        spelled
            .env(
                "CONSUL_HTTP_ADDR",
                format!("127.0.0.1:{}", agent.https_port),
            )
            .env(var, value);
        let out = lock_and_unlock(spelled, &key, &agent);
        assert_eq!(code(&out), 0, "{var}={value}: {}", stderr(&out));
    }
}
