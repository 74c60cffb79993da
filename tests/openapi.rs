//! The described API: `GET /openapi.json` from the running agent, and schemathesis (from PyPI)
//! fuzzing every route with an operator token: no 5xx, and every answer matches the document. The
//! agent reaches the engine through a guard that hides every container but the test's own, so
//! generated records cannot touch anything else on the machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::guard::EngineGuard;
use common::{AgentOptions, AgentProcess, Workload};

/// The schemathesis release the test runs.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// The schemathesis command: `$SCHEMATHESIS` if set, else a virtual environment under `target/`,
/// made (with pip, from PyPI) the first time.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/schemathesis");
    let bin = venv.join("bin/schemathesis");
    if bin.exists() {
        return bin;
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status();
    assert!(
        made.is_ok_and(|s| s.success()),
        "cannot make a Python virtual environment at {}: install python3 with its venv module \
         (Debian: python3-venv), or set SCHEMATHESIS to a schemathesis command",
        venv.display()
    );
    let installed = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", SCHEMATHESIS])
        .status();
    assert!(
        installed.is_ok_and(|s| s.success()),
        "pip could not install {SCHEMATHESIS} from PyPI into {}",
        venv.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let guard = EngineGuard::start();
    let agent = AgentProcess::start_with(AgentOptions {
        docker_host: Some(guard.url()),
        default_timeout: Some(1),
        log_filter: Some("info".into()),
        ..Default::default()
    });
    let client = agent.client();
    // One real app, running, that the fuzzer may read and stop.
    let workload = Workload::start("exit").await;
    guard.allow(&workload.name);
    let registered = client.register("fuzzed-app", &workload.name).await;
    assert_eq!(registered.status, 201, "{registered:?}");

    let document = reqwest::Client::new()
        .get(agent.url("/openapi.json"))
        .bearer_auth(&agent.token)
        .send()
        .await
        .unwrap();
    assert_eq!(document.status(), 200);
    let text = document.text().await.unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(parsed["openapi"].as_str().unwrap().starts_with("3."));
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("openapi.json");
    std::fs::write(&schema, &text).unwrap();

    let st = tokio::task::spawn_blocking(schemathesis).await.unwrap();
    let base = agent.base.clone();
    let token = agent.token.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&st)
            .arg("run")
            .arg(&schema)
            .args(["--url", &base])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance",
            ])
            .args(["--max-examples", "10", "--seed", "20261123", "--no-color"])
            .args(["--request-timeout", "30", "--max-time", "120"])
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{report}");
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}"
    );
    assert!(
        report.contains("Tested: 12"),
        "every operation tested:\n{report}"
    );
    // The agent served the whole run without a fault of its own.
    assert!(
        agent.logged(&["panicked"]).is_empty(),
        "{}",
        agent.log_text()
    );
}
