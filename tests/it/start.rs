//! The start and the restart on `/v1`, end to end: the real agent over HTTP, starting and restarting
//! real containers on the real engine, with their restart policies given back, the records of the
//! new runs, the refusals, and who may do it.

use std::time::{Duration, Instant};

use crate::support;
use crate::support::record::{assert_error, metrics, time};
use crate::support::team::{
    CAN, CANNOT, LEAD, OWNER, STRANGER, agent_with_users, as_user, team, token_name,
};
use crate::support::{
    AgentProcess, Answer, Client, NODE_ID, NODE_NAME, OPERATOR_TOKEN_NAME, Workload, app_body,
    app_id,
};
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// The figures a start does not wait for: left out until a reading comes.
const FIGURES: [&str; 5] = [
    "cpuUsagePercent",
    "memoryUsageBytes",
    "memoryLimitBytes",
    "networkRxBytes",
    "networkTxBytes",
];

/// Creates the container with restart policy `policy`.
fn with_policy(policy: RestartPolicyNameEnum) -> impl FnOnce(&mut ContainerCreateBody) {
    with_policy_retries(policy, None)
}

/// A restart policy with its maximum retry count (`on-failure:N`).
fn with_policy_retries(
    policy: RestartPolicyNameEnum,
    maximum_retry_count: Option<i64>,
) -> impl FnOnce(&mut ContainerCreateBody) {
    move |body| {
        body.host_config
            .get_or_insert_with(HostConfig::default)
            .restart_policy = Some(RestartPolicy {
            name: Some(policy),
            maximum_retry_count,
        });
    }
}

/// The maximum retry count of the container's restart policy, as the engine has it.
async fn retries_of(w: &Workload) -> Option<i64> {
    w.inspect()
        .await
        .and_then(|c| c.host_config)
        .and_then(|h| h.restart_policy)
        .and_then(|p| p.maximum_retry_count)
}

/// The restart policy the engine has for the container.
async fn policy_of(w: &Workload) -> Option<RestartPolicyNameEnum> {
    w.inspect()
        .await
        .and_then(|c| c.host_config)
        .and_then(|h| h.restart_policy)
        .and_then(|p| p.name)
}

/// When the engine says the container's current (or last) run started.
async fn engine_started_at(w: &Workload) -> DateTime<Utc> {
    let s = w
        .inspect()
        .await
        .and_then(|c| c.state)
        .and_then(|s| s.started_at)
        .expect("the engine knows when it started");
    DateTime::parse_from_rfc3339(&s)
        .unwrap()
        .with_timezone(&Utc)
}

/// The record's `startedAt` is the engine's, to the millisecond the record keeps.
async fn assert_started_at_is_the_engines(record: &Value, w: &Workload) {
    let recorded = time(&metrics(record)["startedAt"]);
    let engine = engine_started_at(w).await;
    let apart = (engine - recorded).num_microseconds().unwrap().abs();
    assert!(
        apart < 1000,
        "startedAt {recorded} is the engine's {engine}: {record:#}"
    );
}

/// A record of a run just started: online, no figures yet.
fn assert_fresh_run(record: &Value) {
    let m = metrics(record);
    assert_eq!(m["online"], true, "{record:#}");
    time(&m["timestamp"]);
    time(&m["startedAt"]);
    assert!(m["uptime"].is_u64(), "{m}");
    for key in FIGURES {
        assert!(
            m.get(key).is_none(),
            "{key}: a start does not wait for a stats sample: {m}"
        );
    }
}

/// `lastStart` of a start that ended in `outcome`, asked for by `by`.
fn assert_last_start(record: &Value, outcome: &str, by: &str) {
    let s = &record["lastStart"];
    assert_eq!(s["outcome"], outcome, "{record:#}");
    assert_eq!(s["by"], by, "{record:#}");
    let requested = time(&s["requestedAt"]);
    let finished = time(&s["finishedAt"]);
    assert!(requested <= finished, "{s}");
    assert!(s.get("error").is_none(), "{s}");
}

/// A 409 of an operation: the code, and the current record under `"app"`.
fn assert_conflict(a: &Answer, code: &str, id: &str) {
    assert_eq!(a.status, 409, "{a:?}");
    assert_eq!(a.body["status"], 409, "{a:?}");
    assert_eq!(a.body["error"], code, "{a:?}");
    assert!(a.body["message"].is_string(), "{a:?}");
    assert_eq!(a.body["app"]["_id"], id, "{a:?}");
    assert!(
        a.body["app"]["currentResourceMetrics"]["online"].is_boolean(),
        "{a:?}"
    );
}

/// A workload registered as a fresh app, then stopped through the agent; with the stop's answer.
async fn stopped_app(client: &Client, w: Workload) -> (Workload, String, Value) {
    let id = app_id();
    client.register(&id, &w.name).await;
    let a = client.stop(&id).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(metrics(&a.body)["online"], false);
    assert!(!w.running().await);
    (w, id, a.body)
}

/// `POST /v1/apps/{id}/{verb}` with a JSON body.
async fn operate_body(client: &Client, id: &str, verb: &str, body: &str) -> Answer {
    client
        .send(
            client
                .authed(reqwest::Method::POST, &format!("/v1/apps/{id}/{verb}"))
                .header("Content-Type", "application/json")
                .body(body.to_owned()),
        )
        .await
}

fn spawn_operate(
    client: &Client,
    id: &str,
    verb: &'static str,
    query: &'static str,
) -> tokio::task::JoinHandle<Answer> {
    let (client, id) = (client.clone(), id.to_owned());
    tokio::spawn(async move { client.operate(&id, verb, query).await })
}

#[tokio::test]
async fn a_start_runs_a_new_run_and_gives_the_restart_policy_back() {
    let agent = AgentProcess::start();
    let client = agent.client();
    // The whole policy comes back: `on-failure:3` keeps its limit of three retries.
    for (policy, retries, name) in [
        (
            RestartPolicyNameEnum::UNLESS_STOPPED,
            None,
            "unless-stopped",
        ),
        (RestartPolicyNameEnum::ALWAYS, None, "always"),
        (RestartPolicyNameEnum::ON_FAILURE, Some(3), "on-failure:3"),
    ] {
        let w = Workload::start_with("exit", with_policy_retries(policy, retries)).await;
        let id = app_id();
        client.register(&id, &w.name).await;
        let before = client.get(&format!("/v1/apps/{id}")).await;
        assert_eq!(metrics(&before.body)["online"], true, "{before:?}");
        let old_run = time(&metrics(&before.body)["startedAt"]);

        // The stop sets the policy aside, so that nothing brings the app back.
        let stopped = client.stop(&id).await;
        assert_eq!(stopped.status, 200, "{name}: {stopped:?}");
        assert_eq!(
            stopped.body["lastStop"]["previousRestartPolicy"],
            support::set_aside(name).await,
            "{stopped:?}"
        );
        assert_eq!(
            policy_of(&w).await,
            Some(support::policy_while_stopped(policy).await)
        );
        assert!(!w.running().await);

        let a = client.start(&id).await;
        assert_eq!(a.status, 200, "{name}: {a:?}");
        let r = &a.body;
        assert_fresh_run(r);
        let new_run = time(&metrics(r)["startedAt"]);
        assert!(new_run > old_run, "a new run: {new_run} after {old_run}");
        assert!(w.running().await, "{name}: the container really runs");
        assert_started_at_is_the_engines(r, &w).await;
        // The policy is back, and the record says so.
        assert_eq!(policy_of(&w).await, Some(policy), "{name}");
        if let Some(retries) = retries {
            assert_eq!(retries_of(&w).await, Some(retries), "{name}");
        }
        assert_eq!(
            r["lastStart"]["restoredRestartPolicy"],
            support::set_aside(name).await,
            "{r:#}"
        );
        assert_last_start(r, "started", OPERATOR_TOKEN_NAME);
        assert!(
            time(&r["lastStart"]["requestedAt"]) >= time(&stopped.body["lastStop"]["finishedAt"]),
            "{r:#}"
        );
        // The old run's stop and exit are still there.
        assert_eq!(r["lastStop"], stopped.body["lastStop"], "{r:#}");
        assert_eq!(r["lastStop"]["outcome"], "stopped");
        assert_eq!(r["lastExit"], stopped.body["lastExit"], "{r:#}");
        assert_eq!(r["lastExit"]["exitCode"], 0);
        assert_eq!(r["status"], "active", "status keeps its documented value");

        // A read agrees.
        let got = client.get(&format!("/v1/apps/{id}")).await;
        assert_eq!(got.status, 200);
        assert_eq!(metrics(&got.body)["online"], true, "{got:?}");
        assert_eq!(metrics(&got.body)["startedAt"], metrics(r)["startedAt"]);
        assert_eq!(got.body["lastStart"], r["lastStart"]);
    }
}

#[tokio::test]
async fn a_start_of_a_running_app_is_409_already_running() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (w, id) = client.running_app("exit").await;
    let started_at = engine_started_at(&w).await;
    let a = client.start(&id).await;
    assert_conflict(&a, "already_running", &id);
    assert_eq!(a.body["app"]["currentResourceMetrics"]["online"], true);
    assert!(w.running().await);
    assert_eq!(
        engine_started_at(&w).await,
        started_at,
        "the run is left be"
    );

    // Started by hand after a stop through the agent: the record follows, and the answer says so.
    assert_eq!(client.stop(&id).await.status, 200);
    w.start_by_hand().await;
    let a = client.start(&id).await;
    assert_conflict(&a, "already_running", &id);
    assert_eq!(
        a.body["app"]["currentResourceMetrics"]["online"], true,
        "{a:?}"
    );
    let got = client.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(metrics(&got.body)["online"], true, "{got:?}");
    assert!(w.running().await);
}

#[tokio::test]
async fn a_start_or_restart_of_a_removed_container_is_409_container_missing() {
    let agent = AgentProcess::start();
    let client = agent.client();

    // Removed while it ran.
    let (w, id) = client.running_app("exit").await;
    w.remove().await;
    for verb in ["start", "restart"] {
        let a = client.operate(&id, verb, "").await;
        assert_conflict(&a, "container_missing", &id);
        assert_eq!(
            a.body["app"]["currentResourceMetrics"]["online"], false,
            "{verb}: {a:?}"
        );
    }

    // Removed after a stop through the agent.
    let (w, id, _) = stopped_app(&client, Workload::start("exit").await).await;
    w.remove().await;
    for verb in ["start", "restart"] {
        let a = client.operate(&id, verb, "").await;
        assert_conflict(&a, "container_missing", &id);
        assert_eq!(
            a.body["app"]["currentResourceMetrics"]["online"], false,
            "{verb}: {a:?}"
        );
        assert_eq!(a.body["app"]["lastStop"]["outcome"], "stopped", "{a:?}");
    }
    let got = client.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(got.status, 200, "the record is kept");
    assert_eq!(metrics(&got.body)["online"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_operation_at_a_time_and_the_one_under_way_is_named() {
    let agent = AgentProcess::start();
    let client = agent.client();

    // A start and a restart while a stop is under way.
    let (w, id) = client.running_app("ignore").await;
    let stopping = spawn_operate(&client, &id, "stop", "?timeout=5");
    // The stop has begun once the workload has its SIGTERM; it holds for the grace period.
    w.wait_logs("signal 15", Duration::from_secs(30)).await;
    let (start, restart) = tokio::join!(client.start(&id), client.restart(&id));
    assert_conflict(&start, "stop_in_progress", &id);
    assert_conflict(&restart, "stop_in_progress", &id);
    let stopped = stopping.await.unwrap();
    assert_eq!(stopped.status, 200, "the stop went on: {stopped:?}");
    assert_eq!(stopped.body["lastExit"]["killed"], true);
    assert!(!w.running().await, "neither refusal started it");

    // A stop, a start and a restart while a restart is under way.
    let (w, id) = client.running_app("ignore").await;
    let restarting = spawn_operate(&client, &id, "restart", "?timeout=5");
    w.wait_logs("signal 15", Duration::from_secs(30)).await;
    let (stop, start, restart) =
        tokio::join!(client.stop(&id), client.start(&id), client.restart(&id));
    for a in [&stop, &start, &restart] {
        assert_conflict(a, "restart_in_progress", &id);
    }
    let restarted = restarting.await.unwrap();
    assert_eq!(restarted.status, 200, "the restart went on: {restarted:?}");
    assert_eq!(metrics(&restarted.body)["online"], true, "{restarted:?}");
    assert_last_start(&restarted.body, "started", OPERATOR_TOKEN_NAME);
    assert!(w.running().await, "the refused stop did not stop it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_starts_of_one_app_exactly_one_succeeds() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (w, id, _) = stopped_app(&client, Workload::start("exit").await).await;
    // Eight connections open beforehand, so that the starts leave together.
    for a in futures_util::future::join_all((0..8).map(|_| client.get("/healthz"))).await {
        assert_eq!(a.status, 200);
    }
    let answers = futures_util::future::join_all((0..8).map(|_| client.start(&id))).await;
    let ok: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    assert_eq!(ok.len(), 1, "{answers:#?}");
    assert_fresh_run(&ok[0].body);
    for a in answers.iter().filter(|a| a.status != 200) {
        assert_conflict(a, "start_in_progress", &id);
    }
    assert!(w.running().await);
}

#[tokio::test]
async fn a_restart_kills_a_workload_that_ignores_sigterm_and_runs_it_again() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let w =
        Workload::start_with("ignore", with_policy(RestartPolicyNameEnum::UNLESS_STOPPED)).await;
    let id = app_id();
    client.register(&id, &w.name).await;
    let before = client.get(&format!("/v1/apps/{id}")).await;
    let old_run = time(&metrics(&before.body)["startedAt"]);

    let a = client.operate(&id, "restart", "?timeout=1").await;
    assert_eq!(a.status, 200, "{a:?}");
    let r = &a.body;
    // The old run was killed after its grace period.
    assert_eq!(r["lastExit"]["exitCode"], 137, "{r:#}");
    assert_eq!(r["lastExit"]["killed"], true);
    assert_eq!(r["lastExit"]["signal"], "SIGKILL");
    time(&r["lastExit"]["finishedAt"]);
    assert!(
        w.logs().await.contains("signal 15"),
        "SIGTERM was sent first"
    );
    // Then it runs again, in a new run.
    assert_fresh_run(r);
    let new_run = time(&metrics(r)["startedAt"]);
    assert!(new_run > old_run, "a new run: {new_run} after {old_run}");
    assert!(time(&r["lastExit"]["finishedAt"]) <= new_run, "{r:#}");
    assert!(w.running().await);
    assert_started_at_is_the_engines(r, &w).await;
    // Both halves are recorded, and the policy the stop set aside is back.
    assert_eq!(r["lastStop"]["outcome"], "stopped", "{r:#}");
    assert_eq!(r["lastStop"]["by"], OPERATOR_TOKEN_NAME);
    let unless_stopped = support::set_aside("unless-stopped").await;
    assert_eq!(r["lastStop"]["previousRestartPolicy"], unless_stopped);
    assert_last_start(r, "started", OPERATOR_TOKEN_NAME);
    assert_eq!(r["lastStart"]["restoredRestartPolicy"], unless_stopped);
    assert!(time(&r["lastStop"]["finishedAt"]) <= time(&r["lastStart"]["finishedAt"]));
    assert_eq!(
        policy_of(&w).await,
        Some(RestartPolicyNameEnum::UNLESS_STOPPED)
    );

    let got = client.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(metrics(&got.body)["online"], true, "{got:?}");
    assert_eq!(got.body["lastExit"], r["lastExit"]);
    assert_eq!(got.body["lastStop"], r["lastStop"]);
    assert_eq!(got.body["lastStart"], r["lastStart"]);
}

#[tokio::test]
async fn a_restart_sends_the_signal_asked_for() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (w, id) = client.running_app("ignore").await;

    // From the query, with the SIG prefix.
    let a = client
        .operate(&id, "restart", "?signal=SIGUSR1&timeout=5")
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body["lastExit"]["exitCode"],
        64 + 10,
        "the old run saw SIGUSR1: {a:?}"
    );
    assert_eq!(a.body["lastExit"]["killed"], false);
    assert!(w.logs().await.contains("signal 10\n"));
    assert_fresh_run(&a.body);
    assert_last_start(&a.body, "started", OPERATOR_TOKEN_NAME);
    assert!(w.running().await, "it runs again");

    // From a JSON body, without the prefix (the logs hold every run's lines).
    let a = operate_body(&client, &id, "restart", r#"{"signal": "USR2"}"#).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body["lastExit"]["exitCode"],
        64 + 12,
        "the old run saw SIGUSR2: {a:?}"
    );
    assert!(w.logs().await.contains("signal 12\n"));
    assert_fresh_run(&a.body);
    assert!(w.running().await, "it runs again");
}

#[tokio::test]
async fn a_restart_of_a_stopped_app_starts_it() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let w = Workload::start_with("exit", with_policy(RestartPolicyNameEnum::ALWAYS)).await;
    let (w, id, stopped) = stopped_app(&client, w).await;
    let always = support::set_aside("always").await;
    assert_eq!(stopped["lastStop"]["previousRestartPolicy"], always);
    let stopped_run = time(&metrics(&stopped)["startedAt"]);

    let a = client.restart(&id).await;
    assert_eq!(a.status, 200, "{a:?}");
    let r = &a.body;
    assert_fresh_run(r);
    assert!(time(&metrics(r)["startedAt"]) > stopped_run);
    assert!(w.running().await);
    assert_last_start(r, "started", OPERATOR_TOKEN_NAME);
    assert_eq!(r["lastStart"]["restoredRestartPolicy"], always);
    assert_eq!(policy_of(&w).await, Some(RestartPolicyNameEnum::ALWAYS));
    // Nothing was stopped: the last stop and exit are the earlier ones.
    assert_eq!(r["lastStop"], stopped["lastStop"], "{r:#}");
    assert_eq!(r["lastExit"], stopped["lastExit"], "{r:#}");
}

/// How many times a test starts a workload that exits at once before it gives up on the boot check
/// seeing one exit. The check waits only a few milliseconds for an exit; on a loaded machine the
/// crash at boot may come after it, and is then the watcher's to record, as any crash.
const BOOT_ATTEMPTS: usize = 5;

/// A start of a workload that exits at once answered as running: the crash came after the boot
/// check. The answer must then say started (not a made-up exit), and the crash is recorded soon.
async fn crash_after_the_boot_check(client: &Client, id: &str, answer: &Value) {
    assert_eq!(metrics(answer)["online"], true, "{answer:#}");
    assert_last_start(answer, "started", OPERATOR_TOKEN_NAME);
    eprintln!("the crash of {id} came after the boot check; waiting for the watcher");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = client.get(&format!("/v1/apps/{id}")).await;
        if metrics(&got.body)["online"] == false {
            assert_eq!(got.body["lastExit"]["exitCode"], 3, "{got:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the crash after the boot check was never recorded: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The record of a start whose new run exited at once with code 3, and a read that agrees.
async fn assert_exited_at_once(client: &Client, id: &str, w: &Workload, r: &Value) {
    assert_eq!(
        metrics(r)["online"],
        false,
        "not reported as running: {r:#}"
    );
    assert_last_start(r, "exited", OPERATOR_TOKEN_NAME);
    assert_eq!(r["lastExit"]["exitCode"], 3, "{r:#}");
    assert_eq!(r["lastExit"]["killed"], false);
    time(&r["lastExit"]["finishedAt"]);
    for key in FIGURES {
        assert!(
            metrics(r).get(key).is_none(),
            "{key}: the run before's figures are not this run's: {r:#}"
        );
    }
    assert!(!w.running().await);
    assert_eq!(w.exit_code().await, Some(3));
    let got = client.get(&format!("/v1/apps/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(metrics(&got.body)["online"], false, "{got:?}");
    assert_eq!(got.body["lastStart"], r["lastStart"], "{got:?}");
    assert_eq!(got.body["lastExit"]["exitCode"], 3, "{got:?}");
}

#[tokio::test]
async fn a_start_of_a_workload_that_exits_at_once_is_answered_as_exited() {
    let agent = AgentProcess::start();
    let client = agent.client();
    // The container's first run works; every later start of it exits at once with 3.
    let (w, id, _) = stopped_app(&client, Workload::start("once").await).await;
    for _ in 0..BOOT_ATTEMPTS {
        let a = client.start(&id).await;
        assert_eq!(a.status, 200, "{a:?}");
        if metrics(&a.body)["online"] == false {
            assert_exited_at_once(&client, &id, &w, &a.body).await;
            return;
        }
        crash_after_the_boot_check(&client, &id, &a.body).await;
    }
    panic!("in {BOOT_ATTEMPTS} starts, the boot check never saw the workload exit at once");
}

#[tokio::test]
async fn a_restart_of_a_workload_that_exits_at_once_is_answered_as_exited() {
    let agent = AgentProcess::start();
    let client = agent.client();
    for _ in 0..BOOT_ATTEMPTS {
        // A restart of the running first run: the stop works, the new run exits at once.
        let (w, id) = client.running_app("once").await;
        let a = client.restart(&id).await;
        assert_eq!(a.status, 200, "{a:?}");
        let r = &a.body;
        assert_eq!(r["lastStop"]["outcome"], "stopped", "{r:#}");
        assert!(w.logs().await.contains("signal 15"), "the stop came first");
        if metrics(r)["online"] == false {
            assert_exited_at_once(&client, &id, &w, r).await;
            return;
        }
        crash_after_the_boot_check(&client, &id, r).await;
    }
    panic!("in {BOOT_ATTEMPTS} restarts, the boot check never saw the workload exit at once");
}

/// The documented record shape, with every registered key kept as given.
fn assert_record_shape(record: &Value, id: &str, container: &str) {
    for (key, value) in app_body(id, container).as_object().unwrap() {
        assert_eq!(&record[key], value, "{key} kept as registered: {record:#}");
    }
    assert_eq!(record["_id"], id);
    assert_eq!(
        record["workerNodeId"],
        json!({"_id": NODE_ID, "nodeName": NODE_NAME})
    );
    assert!(metrics(record)["online"].is_boolean(), "{record:#}");
    time(&record["updatedAt"]);
    assert!(record["lastStart"].is_object(), "{record:#}");
}

#[tokio::test]
async fn the_sdks_request_is_answered_with_the_record_and_bad_input_is_refused() {
    let agent = AgentProcess::start();
    let client = agent.client();
    let (w, id, _) = stopped_app(&client, Workload::start("exit").await).await;

    // Bad input, refused before the container is touched.
    assert_error(
        &client.operate(&id, "start", "?timeout=5").await,
        400,
        "bad_request",
    );
    assert_error(
        &operate_body(&client, &id, "start", r#"{"x": 1}"#).await,
        400,
        "bad_request",
    );
    assert_error(
        &operate_body(&client, &id, "start", "[1]").await,
        400,
        "bad_request",
    );
    for query in ["?timeout=3601", "?timeout=-1", "?signal=SIGFOO", "?x=1"] {
        assert_error(
            &client.operate(&id, "restart", query).await,
            400,
            "bad_request",
        );
    }
    let long = "a".repeat(129);
    for verb in ["start", "restart"] {
        assert_error(&client.operate(&long, verb, "").await, 400, "bad_request");
        assert_error(
            &client.operate("no-such-app", verb, "").await,
            404,
            "app_not_found",
        );
        // No token, and an unknown one.
        let url = client.url(&format!("/v1/apps/{id}/{verb}"));
        for req in [
            client.http.post(&url),
            client.http.post(&url).bearer_auth("not-a-token"),
        ] {
            let a = client
                .send(req.header("Content-Type", "application/json"))
                .await;
            assert_error(&a, 401, "unauthorized");
            assert_eq!(a.headers["www-authenticate"], "Bearer");
        }
    }
    assert!(!w.running().await, "no refused request started it");

    // The SDK's exact request: POST, a bearer token, a JSON content type, no body.
    let a = client.start(&id).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_record_shape(&a.body, &id, &w.name);
    assert_eq!(metrics(&a.body)["online"], true);
    let a = client.restart(&id).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_record_shape(&a.body, &id, &w.name);
    assert_eq!(metrics(&a.body)["online"], true);
    assert_eq!(a.body["lastStop"]["outcome"], "stopped");

    // The Token scheme, and the bodies `{}` and `null`, are as good.
    let a = client
        .send(
            client
                .http
                .post(client.url(&format!("/v1/apps/{id}/restart")))
                .header("Authorization", format!("Token {}", client.token))
                .header("Content-Type", "application/json"),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    for body in ["{}", "null"] {
        assert_eq!(client.stop(&id).await.status, 200);
        let a = operate_body(&client, &id, "start", body).await;
        assert_eq!(a.status, 200, "{body}: {a:?}");
        assert_record_shape(&a.body, &id, &w.name);
    }
    assert!(w.running().await);
}

/// A container registered as an app of `OWNER` in `team()`, stopped by the operator.
async fn stopped_team_app(client: &Client) -> (Workload, String) {
    let w = Workload::start("exit").await;
    let id = app_id();
    let mut body = app_body(&id, &w.name);
    body["userId"] = json!(OWNER);
    body["teamId"] = team();
    client.register_body(&id, body).await;
    assert_eq!(client.stop(&id).await.status, 200);
    (w, id)
}

#[tokio::test]
async fn owners_team_owners_and_permitted_members_may_start_and_restart() {
    let agent = agent_with_users();
    let client = agent.client();
    for user in [OWNER, LEAD, CAN] {
        let (w, id) = stopped_team_app(&client).await;
        let c = as_user(&client, user);
        let a = c.start(&id).await;
        assert_eq!(a.status, 200, "{user}: {a:?}");
        assert_eq!(metrics(&a.body)["online"], true);
        assert_last_start(&a.body, "started", &token_name(user));
        assert!(w.running().await, "{user}");
        let a = c.restart(&id).await;
        assert_eq!(a.status, 200, "{user}: {a:?}");
        assert_eq!(metrics(&a.body)["online"], true);
        assert_eq!(a.body["lastStop"]["by"], token_name(user).as_str());
        assert_last_start(&a.body, "started", &token_name(user));
        assert!(w.running().await, "{user}");
        // Both are logged with the token's name.
        let app = format!("app={id} ");
        let token = format!("token={}", token_name(user));
        agent.wait_logged(&[": started ", &app, &token], 1);
        agent.wait_logged(&[": restarted ", &app, &token], 1);
    }
    assert!(
        !agent.log_text().contains("token-of-"),
        "no token is ever logged"
    );
}

/// A start and a restart of `id` by each user who may not: 403 for the member without the
/// permission (who sees the app), 404 for the stranger (who does not).
async fn refuse_all(client: &Client, id: &str) {
    for verb in ["start", "restart"] {
        let a = as_user(client, CANNOT).operate(id, verb, "").await;
        assert_error(&a, 403, "forbidden");
        let a = as_user(client, STRANGER).operate(id, verb, "").await;
        assert_error(&a, 404, "app_not_found");
    }
}

#[tokio::test]
async fn refused_users_leave_the_container_as_it_was() {
    let agent = agent_with_users();
    let client = agent.client();
    let (w, id) = stopped_team_app(&client).await;
    refuse_all(&client, &id).await;
    assert!(!w.running().await, "no refused caller started it");

    // Running: a refused restart does not restart it.
    assert_eq!(client.start(&id).await.status, 200);
    let run = engine_started_at(&w).await;
    refuse_all(&client, &id).await;
    assert!(w.running().await);
    assert_eq!(engine_started_at(&w).await, run, "the same run");

    let app = format!("app={id} ");
    for user in [CANNOT, STRANGER] {
        let token = format!("token={}", token_name(user));
        let lines = agent.wait_logged(&[": start refused", &app, &token], 2);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let lines = agent.wait_logged(&[": restart refused", &app, &token], 2);
        assert_eq!(lines.len(), 2, "{lines:?}");
    }
    assert!(
        !agent.log_text().contains("token-of-"),
        "no token is ever logged"
    );
    agent.wait_logged(
        &[": started ", &app, &format!("token={OPERATOR_TOKEN_NAME}")],
        1,
    );
}
