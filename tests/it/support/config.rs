//! The configuration writer: the agent's configuration file, tokens files and private files, and
//! the tokens they hold.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{AgentOptions, NODE_ID, NODE_NAME};

/// The bearer token an agent under test sends with its reports.
pub const REPORT_TOKEN: &str = "report-token-for-tests";

pub const OPERATOR_TOKEN_NAME: &str = "test-operator";

/// Writes a tokens file: (name, token, role, user_id).
pub fn write_tokens(path: &Path, tokens: &[(&str, &str, &str, Option<&str>)]) {
    let mut text = String::new();
    for (name, token, role, user) in tokens {
        text.push_str(&format!(
            "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\n",
            hex::encode(Sha256::digest(token.as_bytes()))
        ));
        if let Some(u) = user {
            text.push_str(&format!("user_id = \"{u}\"\n"));
        }
    }
    write_private(path, &text);
}

/// Writes `text` to a file only its owner may read (mode 0600).
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The operator token of [`write_config`]'s tokens file.
pub const STANDALONE_TOKEN: &str = "standalone-operator-token";

/// A configuration file in `dir` listening on `listen`, with a tokens file of its own (one operator,
/// [`STANDALONE_TOKEN`]), more `[http]` lines and more sections; for runs outside [`AgentProcess`].
pub fn write_config(dir: &Path, listen: &str, http_extra: &str, extra: &str) -> PathBuf {
    let tokens = dir.join("tokens.toml");
    write_tokens(
        &tokens,
        &[(OPERATOR_TOKEN_NAME, STANDALONE_TOKEN, "operator", None)],
    );
    let config = format!(
        "[node]\nid = \"{NODE_ID}\"\nname = \"{NODE_NAME}\"\n\n[http]\nlisten = \"{listen}\"\n{http_extra}\n\
         [store]\npath = \"{}\"\n\n[auth]\ntokens_file = \"{}\"\n\n{extra}",
        dir.join("state/node-agent.db").display(),
        tokens.display(),
    );
    let path = dir.join("node-agent.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// The configuration of an agent under test in `dir`: its node, a listener (a free loopback port
/// unless asked), its store and tokens file there, and what `options` add; with a report token
/// file beside it when it reports.
pub fn agent_config(dir: &Path, options: &AgentOptions) -> String {
    let mut http = String::new();
    if let Some(n) = options.max_connections {
        http.push_str(&format!("max_connections = {n}\n"));
    }
    if let Some(t) = options.header_timeout_secs {
        http.push_str(&format!("header_timeout_secs = {t}\n"));
    }
    http.push_str(&options.http_extra);
    let listen = options.listen.as_deref().unwrap_or("127.0.0.1:0");
    let mut config = format!(
        "[node]\nid = \"{NODE_ID}\"\nname = \"{NODE_NAME}\"\n\n[http]\nlisten = \"{listen}\"\n{http}\n[store]\npath = \"{}\"\n\n[auth]\ntokens_file = \"{}\"\n{}",
        dir.join("state/node-agent.db").display(),
        dir.join("tokens.toml").display(),
        options.auth_extra,
    );
    if let Some(host) = &options.docker_host {
        config.push_str(&format!("\n[docker]\nhost = \"{host}\"\n"));
    }
    let mut stop = String::new();
    if let Some(t) = options.default_timeout {
        stop.push_str(&format!("default_timeout_secs = {t}\n"));
    }
    if let Some(t) = options.shutdown_drain_secs {
        stop.push_str(&format!("shutdown_drain_secs = {t}\n"));
    }
    if !stop.is_empty() {
        config.push_str(&format!("\n[stop]\n{stop}"));
    }
    if let Some(url) = &options.report_url {
        let token = dir.join("report-token");
        write_private(&token, &format!("{REPORT_TOKEN}\n"));
        config.push_str(&format!(
            "\n[report]\nurl = \"{url}\"\ntoken_file = \"{}\"\n",
            token.display()
        ));
        if let Some(secs) = options.report_resync_secs {
            config.push_str(&format!("resync_secs = {secs}\n"));
        }
        if let Some(ca) = &options.report_ca_file {
            config.push_str(&format!("ca_file = \"{}\"\n", ca.display()));
        }
        if let Some((cert, key)) = &options.report_identity {
            config.push_str(&format!(
                "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
                cert.display(),
                key.display()
            ));
        }
    }
    // An empty section is left out: a build from before `[shutdown]` refuses the key.
    match options.shutdown.as_deref().unwrap_or("inhibit = false\n") {
        "" => {}
        shutdown => config.push_str(&format!("\n[shutdown]\n{shutdown}")),
    }
    config.push('\n');
    config.push_str(&options.extra_config);
    config
}

/// A path as configuration text takes it.
pub fn path_str(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}
