//! TLS on the TCP listener, against the real binary: HTTPS serving, client certificates, SIGHUP
//! reloads of the certificate and key, bad TLS files at start-up, and the refusal of plain HTTP on a
//! non-loopback address. `curl` is the HTTPS client.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::support::config::path_str;
use crate::support::pki::{Ca, Files};
use crate::support::{AgentOptions, AgentProcess, run_to_exit, write_config};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};

/// A `[tls]` section.
fn tls_section(cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    let mut s = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    if let Some(ca) = client_ca {
        s.push_str(&format!("client_ca_file = \"{}\"\n", ca.display()));
    }
    s
}

/// An agent serving HTTPS with `tls` as its `[tls]` section.
fn tls_agent(tls: String) -> AgentProcess {
    AgentProcess::start_with(AgentOptions {
        extra_config: tls,
        ..Default::default()
    })
}

/// The agent's TCP port, from the address it logged.
fn port(agent: &AgentProcess) -> u16 {
    agent
        .base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {}", agent.base))
}

/// What curl made of one request.
#[derive(Debug)]
struct Curl {
    /// The HTTP status, or None when no HTTP answer came (curl says 000).
    status: Option<u16>,
    /// curl's exit code.
    exit: Option<i32>,
    stderr: String,
}

/// curl's exit code when it does not trust the server's certificate (CURLE_PEER_FAILED_VERIFICATION).
const UNTRUSTED: &[i32] = &[60];
/// curl's exit codes when the server ends the handshake: a TLS 1.2 handshake failure
/// (CURLE_SSL_CONNECT_ERROR), or a TLS 1.3 alert read after curl's side was done (CURLE_RECV_ERROR).
const REFUSED_BY_SERVER: &[i32] = &[35, 56];

impl Curl {
    /// Asserts that the request got no HTTP answer, and that curl exited with one of `exits`.
    fn assert_no_answer(&self, exits: &[i32], what: &str) {
        assert!(
            self.status.is_none() && self.exit.is_some_and(|e| exits.contains(&e)),
            "{what}: expected no HTTP answer and a curl exit in {exits:?}, got status {:?}, exit \
             {:?}: {}",
            self.status,
            self.exit,
            self.stderr
        );
    }
}

/// Runs curl on `url` with `args`, always resolving `localhost` to 127.0.0.1 (where the agent
/// listens) so that an IPv6 `localhost` does not get in the way.
fn curl(agent: &AgentProcess, url: &str, args: &[&str]) -> Curl {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["--max-time", "30", "--connect-timeout", "20"])
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", port(agent)))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "these tests need curl on the PATH (apt-get install curl); running it failed: {e}"
            )
        });
    let code: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    Curl {
        status: (code != 0).then_some(code),
        exit: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `https://localhost:PORT{path}`.
fn https(agent: &AgentProcess, path: &str) -> String {
    format!("https://localhost:{}{path}", port(agent))
}

/// The `Authorization` header for the agent's operator token.
fn bearer(agent: &AgentProcess) -> String {
    format!("Authorization: Bearer {}", agent.token)
}

#[test]
fn https_serves_the_api_and_plain_http_gets_no_answer() {
    let ca = Ca::new("serving CA");
    let files = Files::new();
    let (cert, key) = files.pair("server", &ca.server("agent"));
    let ca_file = files.write("ca.pem", &ca.pem);
    let agent = tls_agent(tls_section(&cert, &key, None));
    assert!(
        !agent.logged(&["listening", "scheme=https"]).is_empty(),
        "{}",
        agent.log_text()
    );
    let cacert = ["--cacert", path_str(&ca_file)];

    let apps = curl(
        &agent,
        &https(&agent, "/v1/apps"),
        &[&cacert[..], &["-H", &bearer(&agent)]].concat(),
    );
    assert_eq!(apps.status, Some(200), "{apps:?}");

    let health = curl(&agent, &https(&agent, "/healthz"), &cacert);
    assert_eq!(health.status, Some(200), "{health:?}");

    // The token is still required over TLS.
    let anonymous = curl(&agent, &https(&agent, "/v1/apps"), &cacert);
    assert_eq!(anonymous.status, Some(401), "{anonymous:?}");

    // A client that does not trust the agent's CA refuses the connection.
    let untrusted = curl(&agent, &https(&agent, "/healthz"), &[]);
    untrusted.assert_no_answer(UNTRUSTED, "a client without the CA");
    agent.wait_logged(&["TLS handshake refused"], 1);

    // Plain HTTP on the TLS port gets no HTTP answer at all.
    let plain_url = format!("http://127.0.0.1:{}/healthz", port(&agent));
    let plain = curl(&agent, &plain_url, &["-H", &bearer(&agent)]);
    assert_ne!(plain.status, Some(200), "{plain:?}");
    assert_ne!(plain.exit, Some(0), "{plain:?}");
    agent.wait_logged(&["TLS handshake refused"], 2);

    // The agent goes on serving HTTPS after that.
    let again = curl(&agent, &https(&agent, "/healthz"), &cacert);
    assert_eq!(again.status, Some(200), "{again:?}");
}

#[test]
fn client_certificates_from_the_client_ca_are_required() {
    let server_ca = Ca::new("serving CA");
    let client_ca = Ca::new("client CA");
    let other_ca = Ca::new("another CA");
    let files = Files::new();
    let (cert, key) = files.pair("server", &server_ca.server("agent"));
    let ca_file = files.write("ca.pem", &server_ca.pem);
    let client_ca_file = files.write("client-ca.pem", &client_ca.pem);
    let (member_cert, member_key) = files.pair("member", &client_ca.client("member"));
    let (stranger_cert, stranger_key) = files.pair("stranger", &other_ca.client("stranger"));
    // A certificate of the serving CA is no client certificate either: only the client CA counts.
    let (server_ca_client_cert, server_ca_client_key) =
        files.pair("server-ca-client", &server_ca.client("wrong CA"));
    let agent = tls_agent(tls_section(&cert, &key, Some(&client_ca_file)));
    assert!(
        !agent
            .logged(&["listening", "client_certificates=true"])
            .is_empty(),
        "{}",
        agent.log_text()
    );
    let url = https(&agent, "/v1/apps");
    let auth = bearer(&agent);
    let cacert = ["--cacert", path_str(&ca_file)];

    let none = curl(&agent, &url, &[&cacert[..], &["-H", &auth]].concat());
    none.assert_no_answer(REFUSED_BY_SERVER, "no client certificate");
    agent.wait_logged(&["TLS handshake refused"], 1);

    let member = [
        "--cert",
        path_str(&member_cert),
        "--key",
        path_str(&member_key),
    ];
    let admitted = curl(
        &agent,
        &url,
        &[&cacert[..], &member, &["-H", &auth]].concat(),
    );
    assert_eq!(admitted.status, Some(200), "{admitted:?}");
    let health = curl(
        &agent,
        &https(&agent, "/healthz"),
        &[&cacert[..], &member].concat(),
    );
    assert_eq!(health.status, Some(200), "{health:?}");

    // A client certificate does not stand in for the token.
    let tokenless = curl(&agent, &url, &[&cacert[..], &member].concat());
    assert_eq!(tokenless.status, Some(401), "{tokenless:?}");

    for (what, cert, key) in [
        ("another CA", &stranger_cert, &stranger_key),
        (
            "the serving CA",
            &server_ca_client_cert,
            &server_ca_client_key,
        ),
    ] {
        let refused = curl(
            &agent,
            &url,
            &[
                &cacert[..],
                &["--cert", path_str(cert), "--key", path_str(key)],
                &["-H", &auth],
            ]
            .concat(),
        );
        refused.assert_no_answer(REFUSED_BY_SERVER, &format!("client certificate of {what}"));
    }
    agent.wait_logged(&["TLS handshake refused"], 3);
}

/// A kept-alive HTTPS connection to the agent, trusting only `ca`.
async fn kept_connection(
    port: u16,
    ca: &Ca,
) -> (
    hyper::client::conn::http1::SendRequest<Empty<&'static [u8]>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the agent");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    (sender, tokio::spawn(conn))
}

/// `GET /healthz` on a kept connection; returns the status.
async fn kept_healthz(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<&'static [u8]>>,
) -> u16 {
    sender.ready().await.expect("the kept connection is open");
    let request = hyper::Request::get("/healthz")
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
        .await
        .expect("an answer on the kept connection in time")
        .expect("an answer on the kept connection");
    let status = response.status().as_u16();
    http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_keeps_it_when_the_new_files_are_broken() {
    let ca1 = Ca::new("first CA");
    let ca2 = Ca::new("second CA");
    let files = Files::new();
    let (cert, key) = files.pair("server", &ca1.server("agent, first"));
    let ca1_file = files.write("ca1.pem", &ca1.pem);
    let ca2_file = files.write("ca2.pem", &ca2.pem);
    let agent = AgentProcess::start_with(AgentOptions {
        extra_config: tls_section(&cert, &key, None),
        // The kept-alive connection below idles across the reloads; do not let the header read
        // timeout close it on a slow machine.
        header_timeout_secs: Some(300),
        ..Default::default()
    });
    let url = https(&agent, "/v1/apps");
    let auth = bearer(&agent);
    let with_ca1 = ["--cacert", path_str(&ca1_file), "-H", &auth];
    let with_ca2 = ["--cacert", path_str(&ca2_file), "-H", &auth];

    let before = curl(&agent, &url, &with_ca1);
    assert_eq!(before.status, Some(200), "{before:?}");
    let not_yet = curl(&agent, &url, &with_ca2);
    not_yet.assert_no_answer(UNTRUSTED, "the second CA before the reload");

    // A connection made before the reload, which must survive it.
    let (mut kept, kept_task) = kept_connection(port(&agent), &ca1).await;
    assert_eq!(kept_healthz(&mut kept).await, 200);

    // Renewal by another CA: both files replaced, then SIGHUP.
    files.pair("server", &ca2.server("agent, second"));
    agent.signal("-HUP");
    agent.wait_logged(&["TLS certificate and key reloaded"], 1);

    let renewed = curl(&agent, &url, &with_ca2);
    assert_eq!(renewed.status, Some(200), "{renewed:?}");
    let old = curl(&agent, &url, &with_ca1);
    old.assert_no_answer(UNTRUSTED, "the first CA after the reload");

    assert!(!kept_task.is_finished(), "the reload closed a connection");
    assert_eq!(kept_healthz(&mut kept).await, 200);

    // A broken key file: the reload is refused and the second certificate stays in force.
    files.write("server.key", "this is not a key\n");
    agent.signal("-HUP");
    agent.wait_logged(&["TLS files not reloaded"], 1);
    let refused = agent.logged(&["TLS files not reloaded"]);
    assert!(
        refused[0].contains(path_str(&key)),
        "the log does not name the key file: {refused:?}"
    );
    assert!(
        agent.logged(&["TLS certificate and key reloaded"]).len() == 1,
        "{}",
        agent.log_text()
    );

    let kept_on = curl(&agent, &url, &with_ca2);
    assert_eq!(kept_on.status, Some(200), "{kept_on:?}");
    let still_old = curl(&agent, &url, &with_ca1);
    still_old.assert_no_answer(UNTRUSTED, "the first CA after the refused reload");

    assert!(
        !kept_task.is_finished(),
        "the failed reload closed a connection"
    );
    assert_eq!(kept_healthz(&mut kept).await, 200);
    drop(kept);
}

#[test]
fn unusable_tls_files_stop_start_up_and_fail_check_config_with_exit_78_naming_the_file() {
    let ca = Ca::new("serving CA");
    let files = Files::new();
    let (cert, key) = files.pair("server", &ca.server("agent"));
    let missing = files.path("missing.pem");
    let garbage = files.write("garbage.pem", "this is not a certificate\n");
    let garbage_key = files.write_key("garbage.key", "this is not a key\n");
    let (_, other_key) = files.pair("other", &ca.server("another server"));
    // A good key that other users may read: whoever reads it may pose as the agent.
    let (_, exposed_key) = files.pair("exposed", &ca.server("agent"));
    std::fs::set_permissions(&exposed_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_, group_writable_key) = files.pair("group-writable", &ca.server("agent"));
    std::fs::set_permissions(&group_writable_key, std::fs::Permissions::from_mode(0o660)).unwrap();
    let whole = ca.server("truncated").cert;
    let truncated = files.write("truncated.pem", &whole[..whole.len() / 2]);
    for (what, tls, named) in [
        (
            "missing certificate",
            tls_section(&missing, &key, None),
            &missing,
        ),
        (
            "garbage certificate",
            tls_section(&garbage, &key, None),
            &garbage,
        ),
        (
            "truncated certificate",
            tls_section(&truncated, &key, None),
            &truncated,
        ),
        (
            "garbage key",
            tls_section(&cert, &garbage_key, None),
            &garbage_key,
        ),
        (
            "key of another certificate",
            tls_section(&cert, &other_key, None),
            &other_key,
        ),
        (
            "missing client CA",
            tls_section(&cert, &key, Some(&missing)),
            &missing,
        ),
        (
            "key others may read",
            tls_section(&cert, &exposed_key, None),
            &exposed_key,
        ),
        (
            "key its group may write",
            tls_section(&cert, &group_writable_key, None),
            &group_writable_key,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), "127.0.0.1:0", "", &tls);
        let (code, _, stderr) = run_to_exit(&["--config", path_str(&config)]);
        assert_eq!(code, Some(78), "{what}: {stderr}");
        assert!(
            stderr.contains(path_str(named)),
            "{what}: {} is not named in: {stderr}",
            named.display()
        );
        assert!(
            !stderr.contains("listening"),
            "{what}: the agent listened: {stderr}"
        );
        if named == &exposed_key || named == &group_writable_key {
            let mode = if named == &exposed_key {
                "0644"
            } else {
                "0660"
            };
            assert!(
                stderr.contains(&format!(
                    "TLS private key {} has mode {mode}",
                    named.display()
                )),
                "{what}: the mode is not named: {stderr}"
            );
        }
        // check-config reads the same files, and says the same.
        let (code, _, stderr) = run_to_exit(&["check-config", "--config", path_str(&config)]);
        assert_eq!(code, Some(78), "check-config, {what}: {stderr}");
        assert!(
            stderr.contains(path_str(named)),
            "check-config, {what}: {stderr}"
        );
    }
}

#[test]
fn plain_http_on_a_non_loopback_address_is_refused_unless_allowed_or_tls() {
    // Refused: by the agent itself and by check-config, naming the key and the way out.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "0.0.0.0:0", "", "");
    let config = path_str(&config);
    for args in [
        &["--config", config][..],
        &["check-config", "--config", config][..],
    ] {
        let (code, _, stderr) = run_to_exit(args);
        assert_eq!(code, Some(78), "{args:?}: {stderr}");
        for named in ["http.listen", "allow_insecure_http"] {
            assert!(stderr.contains(named), "{args:?}: {named} not in: {stderr}");
        }
        assert!(!stderr.contains("listening"), "{args:?}: {stderr}");
    }

    // Allowed explicitly: plain HTTP on every address.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "0.0.0.0:0", "allow_insecure_http = true\n", "");
    let (code, _, stderr) = run_to_exit(&["check-config", "--config", path_str(&config)]);
    assert_eq!(code, Some(0), "{stderr}");
    let mut agent = AgentProcess::start_with(AgentOptions {
        http_extra: "allow_insecure_http = true\n".into(),
        env: vec![("NODE_AGENT__HTTP__LISTEN".into(), "0.0.0.0:0".into())],
        ..Default::default()
    });
    assert!(
        agent.base.starts_with("http://0.0.0.0:"),
        "not listening on every address: {}",
        agent.base
    );
    let plain = curl(
        &agent,
        &format!("http://127.0.0.1:{}/v1/apps", port(&agent)),
        &["-H", &bearer(&agent)],
    );
    assert_eq!(plain.status, Some(200), "{plain:?}");
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log_text());

    // With TLS: no exception needed.
    let ca = Ca::new("serving CA");
    let files = Files::new();
    let (cert, key) = files.pair("server", &ca.server("agent"));
    let ca_file = files.write("ca.pem", &ca.pem);
    let tls = tls_section(&cert, &key, None);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "0.0.0.0:0", "", &tls);
    let (code, _, stderr) = run_to_exit(&["check-config", "--config", path_str(&config)]);
    assert_eq!(code, Some(0), "{stderr}");
    let mut agent = AgentProcess::start_with(AgentOptions {
        extra_config: tls,
        env: vec![("NODE_AGENT__HTTP__LISTEN".into(), "0.0.0.0:0".into())],
        ..Default::default()
    });
    assert!(
        agent.base.starts_with("http://0.0.0.0:"),
        "not listening on every address: {}",
        agent.base
    );
    let secure = curl(
        &agent,
        &https(&agent, "/v1/apps"),
        &["--cacert", path_str(&ca_file), "-H", &bearer(&agent)],
    );
    assert_eq!(secure.status, Some(200), "{secure:?}");
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log_text());
}
