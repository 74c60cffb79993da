//! Unit tests of the sender: the backoff, the body, and the loop against a receiver on loopback
//! that answers as a test scripts it, with the scripted engine behind the agent.

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use serde_json::json;

use super::*;
use crate::agent::{Agent, Limits};
use crate::auth::{Access, Principal};
use crate::record::AppId;
use crate::runtime::fake::FakeRuntime;

#[test]
fn backoff_doubles_from_a_quarter_second_to_thirty_with_jitter() {
    let mut b = Backoff::default();
    let mut steps = Vec::new();
    for _ in 0..20 {
        steps.push(b.next_wait());
    }
    assert!(
        steps[0] >= Duration::from_millis(125) && steps[0] <= BACKOFF_FIRST,
        "{steps:?}"
    );
    assert!(steps[1] >= Duration::from_millis(250) && steps[1] <= Duration::from_millis(500));
    for s in &steps {
        assert!(*s <= BACKOFF_CAP, "{s:?}");
    }
    assert!(steps[19] >= BACKOFF_CAP / 2, "{steps:?}");
    b.reset();
    assert!(b.next_wait() <= BACKOFF_FIRST);
}

fn operator() -> Principal {
    Principal {
        name: "op".into(),
        access: Access::Operator,
    }
}

/// A status to answer with, and the `Retry-After` to send with it.
type Scripted = (StatusCode, Option<&'static str>);

/// What the receiver answers, in turn; once the script is spent, 200.
#[derive(Debug, Clone, Default)]
struct Receiver {
    script: Arc<Mutex<Vec<Scripted>>>,
    bodies: Arc<Mutex<Vec<(StatusCode, Value)>>>,
}

impl Receiver {
    async fn serve(&self) -> String {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/reports",
            axum::routing::post(move |body: axum::body::Bytes| {
                let me = me.clone();
                async move {
                    let next = {
                        let mut script = me.script.lock().expect("lock");
                        if script.is_empty() {
                            (StatusCode::OK, None)
                        } else {
                            script.remove(0)
                        }
                    };
                    let value: Value = serde_json::from_slice(&body).expect("JSON body");
                    me.bodies.lock().expect("lock").push((next.0, value));
                    let mut answer = axum::response::Response::new(axum::body::Body::from("{}"));
                    *answer.status_mut() = next.0;
                    if let Some(after) = next.1 {
                        answer
                            .headers_mut()
                            .insert("retry-after", after.parse().expect("header"));
                    }
                    answer
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/reports")
    }

    /// Every change the receiver took (answered 2xx), in order: (app, generation, deleted).
    fn taken(&self) -> Vec<(String, u64, bool)> {
        self.answered(|s| s.is_success())
    }

    /// The changes of the reports answered with a status that `which` picks.
    fn answered(&self, which: impl Fn(StatusCode) -> bool) -> Vec<(String, u64, bool)> {
        self.bodies
            .lock()
            .expect("lock")
            .iter()
            .filter(|(s, _)| which(*s))
            .flat_map(|(_, b)| b["changes"].as_array().cloned().unwrap_or_default())
            .map(|c| {
                (
                    c["appId"].as_str().unwrap_or_default().to_owned(),
                    c["generation"].as_u64().unwrap_or_default(),
                    c["deleted"] == true,
                )
            })
            .collect()
    }
}

struct Fixture {
    agent: Agent,
    _dir: tempfile::TempDir,
}

async fn fixture(url: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("a.db")).expect("store");
    let fake = FakeRuntime::new(true);
    for c in ["ca", "cb"] {
        fake.add_running(c, &["SIGTERM"]);
    }
    let node = WorkerNode {
        id: "n1".into(),
        node_name: "ODIN".into(),
    };
    let background = crate::background::Background::new();
    let agent = Agent::new(
        Arc::new(fake),
        store,
        node,
        Limits::default(),
        background.clone(),
    );
    let token = dir.path().join("report-token");
    std::fs::write(&token, "tok-1\n").expect("token");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("mode");
    let config = ReportConfig {
        url: Some(url.to_owned()),
        token_file: Some(token),
        ..ReportConfig::default()
    };
    let reporting = Reporting::load(&config).expect("load").expect("configured");
    // The sender runs until the test's runtime ends.
    reporting.spawn(agent.report_sources(), &background);
    Fixture { agent, _dir: dir }
}

async fn register(agent: &Agent, app: &str, container: &str) -> u64 {
    agent
        .register(
            &operator(),
            &AppId::parse(app).expect("id"),
            json!({"containerId": container, "name": app}),
        )
        .await
        .expect("register")
        .record
        .generation
}

/// Waits until nothing is pending, failing after 20 s.
async fn drained(agent: &Agent) {
    for _ in 0..400 {
        let outbox = agent.store().outbox();
        if outbox.pending == 0 && outbox.acknowledged == outbox.head {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the outbox did not drain: {:?}", agent.store().outbox());
}

#[tokio::test]
async fn changes_arrive_in_order_through_failures_and_a_rejection_drops_only_its_batch() {
    let receiver = Receiver::default();
    let url = receiver.serve().await;
    // Refused with 400 first, then twice unavailable (once with Retry-After), then taken.
    *receiver.script.lock().expect("lock") = vec![
        (StatusCode::BAD_REQUEST, None),
        (StatusCode::SERVICE_UNAVAILABLE, Some("0")),
        (StatusCode::TOO_MANY_REQUESTS, None),
    ];
    let f = fixture(&url).await;
    register(&f.agent, "a", "ca").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Changes after the rejected batch still go out, through the failures.
    let mut last_a = register(&f.agent, "a", "ca").await;
    let b = register(&f.agent, "b", "cb").await;
    for _ in 0..5 {
        last_a = register(&f.agent, "a", "ca").await;
    }
    drained(&f.agent).await;
    let taken = receiver.taken();
    // What the first report carried (the registration, and perhaps its first sighting if it was
    // written after that report left) is not sent again.
    let rejected = receiver.answered(|s| s == StatusCode::BAD_REQUEST);
    assert!(!rejected.is_empty());
    assert!(
        !taken.iter().any(|change| rejected.contains(change)),
        "the rejected batch is dropped: {rejected:?} then {taken:?}"
    );
    assert!(taken.contains(&("a".into(), last_a, false)), "{taken:?}");
    assert!(taken.contains(&("b".into(), b, false)), "{taken:?}");
    // A burst of changes to one app is sent as few reports of its latest state, never going back.
    let of_a: Vec<u64> = taken
        .iter()
        .filter(|(id, _, _)| id == "a")
        .map(|(_, g, _)| *g)
        .collect();
    assert!(of_a.windows(2).all(|w| w[0] <= w[1]), "{of_a:?}");
    assert!(
        of_a.len() < 6,
        "a burst was sent change by change: {of_a:?}"
    );
    let telemetry = f.agent.telemetry().report_status(&f.agent.store().outbox());
    assert!(telemetry.last_success_at.is_some());
    assert!(
        telemetry
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("429")),
        "{telemetry:?}"
    );

    // A deletion is a tombstone until it is acknowledged, then forgotten.
    f.agent
        .delete(&operator(), &AppId::parse("b").expect("id"))
        .await
        .expect("delete");
    drained(&f.agent).await;
    let taken = receiver.taken();
    let (_, g, deleted) = taken.last().cloned().expect("a change");
    assert!(deleted && g > b, "{taken:?}");
    assert_eq!(
        f.agent
            .store()
            .tombstone(&AppId::parse("b").expect("id"))
            .await
            .expect("read"),
        None
    );
}

#[tokio::test]
async fn the_body_is_the_documented_shape() {
    let receiver = Receiver::default();
    let url = receiver.serve().await;
    let f = fixture(&url).await;
    let g = register(&f.agent, "a", "ca").await;
    drained(&f.agent).await;
    let bodies = receiver.bodies.lock().expect("lock").clone();
    let (_, body) = bodies.last().expect("a report");
    assert_eq!(body["nodeId"], "n1");
    assert_eq!(body["nodeName"], "ODIN");
    assert!(
        body["sentAt"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    let change = &body["changes"][0];
    assert_eq!(change["appId"], "a");
    assert!(change["generation"].as_u64() >= Some(g));
    assert_eq!(change["record"]["_id"], "a");
    assert_eq!(change["record"]["generation"], change["generation"]);
    assert_eq!(change["record"]["workerNodeId"]["nodeName"], "ODIN");
}
