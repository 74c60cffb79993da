//! The command line: `check-config` exit codes (the package's placeholder ids and a remote plain
//! TCP engine among them), environment overrides, and `token new`.

use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn node_agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_node-agent"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run node-agent")
}

fn check(config: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).unwrap();
    let out = node_agent(&["check-config", "--config", path.to_str().unwrap()], env);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap(), text)
}

const MINIMAL: &str = "[node]\nid = \"n1\"\nname = \"ODIN\"\n";

#[test]
fn check_config_accepts_the_shipped_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/node-agent.toml");
    let out = node_agent(&["check-config", "--config", path], &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn check_config_exits_78_naming_the_bad_key_or_value() {
    for (config, named) in [
        (
            format!("{MINIMAL}[http]\nlisten = \"127.0.0.1:1\"\nport = 80\n"),
            "port",
        ),
        (format!("{MINIMAL}[stopp]\n"), "stopp"),
        (
            format!("{MINIMAL}[http]\nlisten = \"everywhere\"\n"),
            "http.listen",
        ),
        (
            format!("{MINIMAL}[stop]\ndefault_timeout_secs = -5\n"),
            "default_timeout_secs",
        ),
        ("[node]\nname = \"x\"\n".to_owned(), "id"),
        ("not toml at all [".to_owned(), "c.toml"),
    ] {
        let (code, text) = check(&config, &[]);
        assert_eq!(code, 78, "{config}: {text}");
        assert!(text.contains(named), "{named} not named in: {text}");
    }
    let out = node_agent(
        &["check-config", "--config", "/nonexistent/node-agent.toml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn check_config_also_checks_the_tokens_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        "[[token]]\nname = \"x\"\nsha256 = \"not-a-hash\"\nrole = \"operator\"\n",
    )
    .unwrap();
    // Private, as the agent requires, so that only the content is at fault.
    std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = format!("{MINIMAL}[auth]\ntokens_file = \"{}\"\n", tokens.display());
    let (code, text) = check(&config, &[]);
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("sha256"), "{text}");
}

#[test]
fn the_packages_configuration_is_refused_until_the_node_is_set() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/debian/node-agent.toml");
    for args in [
        vec!["check-config", "--config", shipped],
        vec!["--config", shipped],
    ] {
        let out = node_agent(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {stderr}");
        assert!(
            stderr.contains("key `node.id`") && stderr.contains("\"unset-node-id\""),
            "{args:?}: the key to set is named: {stderr}"
        );
    }
    let text = std::fs::read_to_string(shipped).unwrap();
    let id_set = text.replace("\"unset-node-id\"", "\"60c72b2f9b1e8d001c8e4f3c\"");
    let (code, out) = check(&id_set, &[]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("key `node.name`"), "{out}");
    let (code, out) = check(
        &id_set,
        &[
            ("NODE_AGENT__NODE__NAME", "ODIN"),
            ("NODE_AGENT__AUTH__TOKENS_FILE", "/nonexistent/t"),
        ],
    );
    assert_eq!(code, 0, "set as the install steps set it: {out}");
}

#[test]
fn a_plain_tcp_engine_off_loopback_is_refused_unless_allowed() {
    let remote = format!("{MINIMAL}[docker]\nhost = \"tcp://192.0.2.10:2375\"\n");
    let (code, text) = check(&remote, &[]);
    assert_eq!(code, 78, "{text}");
    assert!(
        text.contains("docker.host") && text.contains("docker.allow_insecure_tcp"),
        "{text}"
    );
    let (code, text) = check(&format!("{remote}allow_insecure_tcp = true\n"), &[]);
    assert_eq!(code, 0, "allowed explicitly: {text}");
    let (code, text) = check(
        &format!("{MINIMAL}[docker]\nhost = \"tcp://127.0.0.1:2375\"\n"),
        &[],
    );
    assert_eq!(code, 0, "loopback: {text}");
    let (code, text) = check(MINIMAL, &[("DOCKER_HOST", "tcp://192.0.2.10:2375")]);
    assert_eq!(code, 78, "from DOCKER_HOST too: {text}");
}

#[test]
fn environment_variables_override_the_file() {
    let (code, text) = check(MINIMAL, &[("NODE_AGENT__HTTP__LISTEN", "not-an-address")]);
    assert_eq!(code, 78, "{text}");
    assert!(text.contains("http.listen"), "{text}");
    let (code, text) = check(
        &format!("{MINIMAL}[http]\nlisten = \"bad\"\n"),
        &[("NODE_AGENT__HTTP__LISTEN", "127.0.0.1:9")],
    );
    assert_eq!(code, 0, "{text}");
    let (code, text) = check(MINIMAL, &[("NODE_AGENT__HTTP__LISTENN", "127.0.0.1:9")]);
    assert_eq!(
        code, 78,
        "an unknown key from the environment is refused too: {text}"
    );
}

#[test]
fn serving_with_a_bad_config_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, format!("{MINIMAL}[extra]\n")).unwrap();
    let out = node_agent(&["--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("extra"));
}

#[test]
fn token_new_prints_a_fresh_token_and_its_hashed_entry() {
    let out = node_agent(
        &[
            "token",
            "new",
            "--name",
            "control-plane",
            "--role",
            "operator",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text.lines().next().unwrap();
    assert!(
        token.len() >= 64 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "{token}"
    );
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    assert!(text.contains(&format!("sha256 = \"{hash}\"")), "{text}");
    assert!(
        text.contains("name = \"control-plane\"") && text.contains("role = \"operator\""),
        "{text}"
    );
    assert_eq!(text.matches(token).count(), 1, "the token is printed once");

    let again = node_agent(&["token", "new", "--name", "x", "--role", "operator"], &[]);
    assert_ne!(
        String::from_utf8(again.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
        token,
        "fresh each time"
    );

    let user = node_agent(
        &[
            "token",
            "new",
            "--name",
            "keven",
            "--role",
            "user",
            "--user-id",
            "u1",
        ],
        &[],
    );
    assert_eq!(user.status.code(), Some(0));
    assert!(
        String::from_utf8(user.stdout)
            .unwrap()
            .contains("user_id = \"u1\"")
    );
    let missing = node_agent(&["token", "new", "--name", "keven", "--role", "user"], &[]);
    assert_ne!(missing.status.code(), Some(0));
}
