//! `kill -9` of the agent at any instant of a stop, a start or a restart loses nothing and leaves
//! no record untrue, on every engine; and a chaos run (clients through both APIs, changes behind
//! the agent's back, kills of the agent) ends with every record true, no operation left open, and
//! the control plane told the last word.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support;
use crate::support::held::HeldEngine;
use crate::support::{AgentOptions, AgentProcess, Client, NODE_ID, Workload, stored};
use serde_json::Value;

/// Whether every record is true against the engine: its container's state matches `online`, an
/// offline app has its exit (unless its container is gone), and no stop or start is left under way;
/// with `final_samples`, an app the agent stopped kept the sample taken before its stop.
async fn all_true(
    client: &Client,
    containers: &[(String, String)],
    final_samples: bool,
) -> Result<(), String> {
    let list = client.get("/v1/apps?limit=500").await;
    if list.status != 200 {
        return Err(format!("list answered {}", list.status));
    }
    let records = list.body["applications"].as_array().unwrap().clone();
    if records.len() != containers.len() {
        return Err(format!(
            "{} records for {} apps",
            records.len(),
            containers.len()
        ));
    }
    let docker = support::docker().await;
    for (id, container) in containers {
        let record = records
            .iter()
            .find(|r| r["_id"] == id.as_str())
            .ok_or(format!("{id} lost"))?;
        if record["lastStop"]["outcome"] == "stopping" {
            return Err(format!("{id}: a stop is still recorded as under way"));
        }
        let start = &record["lastStart"];
        match start["outcome"].as_str() {
            _ if start.is_null() => {}
            Some("starting") => {
                return Err(format!("{id}: a start is still recorded as under way"));
            }
            Some("started" | "exited" | "failed" | "interrupted") => {}
            other => return Err(format!("{id}: a start ended as {other:?}: {record}")),
        }
        let running = docker
            .inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.running)
            .unwrap_or(false);
        let online = record["currentResourceMetrics"]["online"].as_bool();
        if online != Some(running) {
            return Err(format!(
                "{id}: online {online:?} but running {running}: {record}"
            ));
        }
        if !running && !record["lastExit"].is_object() {
            return Err(format!("{id}: offline without its exit: {record}"));
        }
        // A stop that began (its intent was written) kept its final sample, unless a start came
        // after it (a restart's start has the stop's request time): a new run's figures are its own.
        let began = matches!(
            record["lastStop"]["outcome"].as_str(),
            Some("stopped" | "interrupted" | "already_stopped")
        );
        let started_since = start["requestedAt"]
            .as_str()
            .is_some_and(|s| Some(s) >= record["lastStop"]["requestedAt"].as_str());
        if final_samples
            && began
            && !started_since
            && !record["currentResourceMetrics"]["memoryUsageBytes"].is_u64()
        {
            return Err(format!("{id}: its final sample was lost: {record}"));
        }
    }
    Ok(())
}

/// A seed, printed so that a failing run can be told apart (`NODE_AGENT_TEST_SEED` gives one to
/// replay), and a small generator of numbers below a bound drawn from it.
fn random_source() -> (u64, impl FnMut(u64) -> u64 + Send) {
    let seed = match std::env::var("NODE_AGENT_TEST_SEED") {
        Ok(s) => s.parse().expect("NODE_AGENT_TEST_SEED is a number"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("kill -9 loop seed {seed} (NODE_AGENT_TEST_SEED={seed} replays its choices)");
    (seed, generator(seed))
}

/// Numbers below a bound, drawn from `seed`.
fn generator(seed: u64) -> impl FnMut(u64) -> u64 + Send {
    let mut rng = seed;
    move |bound: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % bound
    }
}

/// The kill -9 loops drive the engine hard, with dozens of containers each: side by side on a small
/// machine, the engine's answers slow down past the agent's call timeout (a 503 that is no fault of
/// the agent's), so they take turns.
static ENGINE_HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits (up to 20 s) until [`all_true`] holds, failing with `what` and the last reason.
async fn wait_all_true(
    client: &Client,
    apps: &[(String, String)],
    final_samples: bool,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match all_true(client, apps, final_samples).await {
            Ok(()) => return,
            Err(why) if Instant::now() > deadline => panic!("{what}: {why}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Kills the agent `wait` ms from now (the power-off), starts it again, and waits until every
/// record is true with its final samples.
async fn kill_9_after(agent: &mut AgentProcess, wait: u64, apps: &[(String, String)], what: &str) {
    tokio::time::sleep(Duration::from_millis(wait)).await;
    agent.kill9();
    agent.restart();
    let what = format!("{what}: killed after {wait} ms");
    wait_all_true(&agent.client(), apps, true, &what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_of_stops_loses_nothing() {
    let rounds = rounds(14);
    let _turn = ENGINE_HEAVY.lock().await;
    let (seed, mut next) = random_source();
    let mut agent = AgentProcess::start();
    let mut workloads: Vec<Workload> = Vec::new();
    let mut apps: Vec<(String, String)> = Vec::new();
    for round in 0..rounds {
        let client = agent.client();
        let mut ids = Vec::new();
        for mode in ["ignore", "slow=400", "exit"] {
            let (w, id) = client.running_app(mode).await;
            apps.push((id.clone(), w.name.clone()));
            ids.push(id);
            workloads.push(w);
        }
        for id in &ids {
            let (client, id) = (client.clone(), id.clone());
            tokio::spawn(async move {
                let _ = client
                    .send(client.authed(
                        reqwest::Method::POST,
                        &format!("/v1/apps/{id}/stop?timeout=1"),
                    ))
                    .await;
            });
        }
        let what = format!("round {round}, seed {seed}");
        kill_9_after(&mut agent, next(3000), &apps, &what).await;
    }
    // Every record still reads whole, in the documented shape.
    let client = agent.client();
    for (id, _) in &apps {
        read_whole(&client, id).await;
    }
}

/// The record of `id`, which must read whole, in the documented shape.
async fn read_whole(client: &Client, id: &str) -> Value {
    let r: Value = client.get(&format!("/v1/apps/{id}")).await.body;
    assert_eq!(r["_id"], id);
    assert!(
        r["currentResourceMetrics"]["timestamp"].is_string(),
        "{r:#}"
    );
    assert_eq!(r["environmentVariables"][0]["key"], "API_PORT");
    r
}

/// `POST path` in the background, through /v1 as the SDK sends it or through ~okeanos with this
/// node's instance id; whatever comes back is ignored, since the agent may die under it.
fn fire(client: &Client, path: String, okeanos: bool) {
    let client = client.clone();
    tokio::spawn(async move {
        let req = client.http.post(client.url(&path));
        let req = if okeanos {
            req.header("Authorization", format!("Token {}", client.token))
                .form(&[("lambda_instance_id", NODE_ID)])
        } else {
            req.bearer_auth(&client.token)
                .header("Content-Type", "application/json")
        };
        let _ = req.send().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_of_starts_and_restarts_loses_nothing() {
    let rounds = rounds(6);
    let _turn = ENGINE_HEAVY.lock().await;
    let (seed, mut next) = random_source();
    let mut agent = AgentProcess::start();
    let mut workloads: Vec<Workload> = Vec::new();
    let mut apps: Vec<(String, String)> = Vec::new();
    let mut fired = [0usize; 4];
    for round in 0..rounds {
        let client = agent.client();
        // Each round brings two running apps, and two that the agent stopped: `once` exits at
        // every start after its first run, as a container that crashes at boot.
        for mode in ["ignore", "slow=400", "exit", "once"] {
            let (w, id) = client.running_app(mode).await;
            apps.push((id, w.name.clone()));
            workloads.push(w);
        }
        let stops = apps[apps.len() - 2..].iter().map(|(id, _)| {
            let (client, id) = (client.clone(), id.clone());
            tokio::spawn(async move { client.stop_query(&id, "?timeout=1").await })
        });
        for stop in futures_util::future::join_all(stops).await {
            let stop = stop.unwrap();
            assert_eq!(stop.status, 200, "{stop:?}");
        }
        // Every app of this round and of the rounds before gets a stop, a start or a restart
        // (some are left alone): a stopped app is started through either route, a running one
        // restarted or stopped, with a one-second grace so that kills land in every phase.
        for (w, (id, _)) in workloads.iter().zip(&apps) {
            if next(4) == 0 {
                continue;
            }
            let (kind, path, okeanos) = if w.running().await {
                match next(3) {
                    0 => (0, format!("/v1/apps/{id}/stop?timeout=1"), false),
                    _ => (1, format!("/v1/apps/{id}/restart?timeout=1"), false),
                }
            } else {
                match next(2) {
                    0 => (2, format!("/v1/apps/{id}/start"), false),
                    _ => (3, format!("/api/apps/{id}/start/"), true),
                }
            };
            fired[kind] += 1;
            fire(&client, path, okeanos);
        }
        let what = format!("round {round}, seed {seed}");
        kill_9_after(&mut agent, next(2500), &apps, &what).await;
    }
    // Every record still reads whole, in the documented shape; the starts ended one way or another.
    let client = agent.client();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for (id, _) in &apps {
        let r = read_whole(&client, id).await;
        if let Some(outcome) = r["lastStart"]["outcome"].as_str() {
            assert!(r["lastStart"]["finishedAt"].is_string(), "{r:#}");
            *outcomes.entry(outcome.to_owned()).or_default() += 1;
        }
    }
    eprintln!(
        "fired {} stops, {} restarts, {} /v1 starts, {} ~okeanos starts; last starts: {outcomes:?}",
        fired[0], fired[1], fired[2], fired[3]
    );
    assert!(!outcomes.is_empty(), "no start ever began (seed {seed})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_start_or_a_restart_closes_it_as_interrupted() {
    let engine = HeldEngine::start();
    let mut agent = AgentProcess::start_with(AgentOptions {
        docker_host: Some(engine.url()),
        ..Default::default()
    });
    let client = agent.client();
    // Two apps the agent stopped, whose starts (one through each route) the engine holds back, and
    // one running app whose restart is in its stop half: its container ignores SIGTERM, and the
    // grace period outlasts the test.
    let (w1, id1) = client.running_app("exit").await;
    let (w2, id2) = client.running_app("exit").await;
    let (w3, id3) = client.running_app("ignore").await;
    for id in [&id1, &id2] {
        let stopped = client.stop_query(id, "?timeout=1").await;
        assert_eq!(stopped.status, 200, "{stopped:?}");
    }
    let hold = engine.hold_starts().await;
    fire(&client, format!("/v1/apps/{id1}/start"), false);
    fire(&client, format!("/api/apps/{id2}/start/"), true);
    fire(
        &client,
        format!("/v1/apps/{id3}/restart?timeout=120"),
        false,
    );
    engine.wait_starts(2).await;
    w3.wait_logs("signal 15", Duration::from_secs(30)).await;
    for id in [&id1, &id2] {
        assert_eq!(
            stored(&client, id).await["lastStart"]["outcome"],
            "starting"
        );
    }
    let intent = stored(&client, &id3).await;
    assert_eq!(intent["lastStop"]["outcome"], "stopping", "{intent:#}");
    assert_eq!(intent["lastStart"]["outcome"], "starting", "{intent:#}");

    agent.kill9();
    agent.restart();
    let client = agent.client();
    let apps: Vec<(String, String)> = [(&id1, &w1), (&id2, &w2), (&id3, &w3)]
        .iter()
        .map(|(id, w)| (id.to_string(), w.name.clone()))
        .collect();
    wait_all_true(
        &client,
        &apps,
        true,
        "after kill -9 during starts and a restart",
    )
    .await;
    // The starts never reached the engine: the apps are offline, as their stops left them.
    for (id, w) in [(&id1, &w1), (&id2, &w2)] {
        let r = stored(&client, id).await;
        assert_eq!(r["lastStart"]["outcome"], "interrupted", "{r:#}");
        assert!(r["lastStart"]["finishedAt"].is_string(), "{r:#}");
        assert_eq!(r["lastStop"]["outcome"], "stopped", "{r:#}");
        assert_eq!(r["currentResourceMetrics"]["online"], false, "{r:#}");
        assert!(r["lastExit"].is_object(), "{r:#}");
        assert!(!w.running().await);
    }
    // The restart died in its stop: both halves are closed. Docker keeps the container running
    // until the grace period ends; Podman carries on the stop of a client that went away, and
    // shows the container as not running from its beginning. The record says what the engine says.
    let r = stored(&client, &id3).await;
    assert_eq!(r["lastStop"]["outcome"], "interrupted", "{r:#}");
    assert_eq!(r["lastStart"]["outcome"], "interrupted", "{r:#}");
    assert_eq!(r["lastStart"]["requestedAt"], r["lastStop"]["requestedAt"]);
    // Its history says so: both asked, both failed, as interrupted.
    let h = client.get(&format!("/v1/apps/{id3}/events?limit=4")).await;
    let kinds: Vec<(&str, &str)> = h.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["details"]["outcome"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("stop_failed", "interrupted"))
            && kinds.contains(&("start_failed", "interrupted")),
        "{h:?}"
    );
    let running = !support::engine_is_podman().await;
    assert_eq!(r["currentResourceMetrics"]["online"], running, "{r:#}");
    assert_eq!(w3.running().await, running);
    // The held starts of the dead agent must not reach the containers once let through.
    for w in [&w1, &w2, &w3] {
        w.remove().await;
    }
    drop(hold);
}

/// How many rounds a kill -9 loop runs: `full`, or a third of it (at least 2) under
/// `NODE_AGENT_KILL9_SHORT=1`, which `tests/engines.sh` sets for the extra engines to keep CI's
/// time: the machine's own engine runs them in full.
fn rounds(full: u64) -> u64 {
    if std::env::var("NODE_AGENT_KILL9_SHORT").is_ok_and(|v| v == "1") {
        (full / 3).max(2)
    } else {
        full
    }
}

/// How long the chaos run lasts: `NODE_AGENT_CHAOS_SECS`, else 30 s.
fn chaos_duration() -> Duration {
    let secs = std::env::var("NODE_AGENT_CHAOS_SECS")
        .map(|s| s.parse().expect("NODE_AGENT_CHAOS_SECS is whole seconds"))
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// One request of a chaos client, with a time limit of its own: `None` when the agent did not
/// answer (it may have just been killed).
async fn try_send(req: reqwest::RequestBuilder) -> Option<(u16, Value)> {
    let resp = req.timeout(Duration::from_secs(20)).send().await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    Some((status, body))
}

/// What a chaos client may do to an app, and how often (in twelfths).
const ACTIONS: [(&str, u64); 9] = [
    ("v1 stop", 2),
    ("v1 start", 2),
    ("v1 restart", 1),
    ("okeanos stop", 1),
    ("okeanos start", 1),
    ("docker stop", 1),
    ("docker start", 1),
    ("read", 2),
    ("wait", 1),
];

/// A chaos client: until `until`, random operations on random apps through the agent found at
/// `base` (which changes when it is restarted), and behind its back; returns what it did and how
/// each was answered, e.g. `("v1 stop", 409, "already_stopped")`.
async fn chaos_client(
    mut next: impl FnMut(u64) -> u64 + Send,
    base: std::sync::Arc<std::sync::RwLock<String>>,
    token: String,
    apps: std::sync::Arc<Vec<(String, String)>>,
    until: Instant,
) -> Vec<(&'static str, u16, String)> {
    let http = reqwest::Client::new();
    let docker = support::docker().await;
    let mut done = Vec::new();
    while Instant::now() < until {
        let (id, container) = &apps[next(apps.len() as u64) as usize];
        let mut pick = next(ACTIONS.iter().map(|(_, w)| w).sum());
        let action = ACTIONS
            .iter()
            .find(|(_, w)| {
                let here = pick < *w;
                pick = pick.saturating_sub(*w);
                here
            })
            .unwrap()
            .0;
        let url = |path: String| format!("{}{path}", base.read().unwrap());
        let v1 = |path: String| {
            http.post(url(path))
                .bearer_auth(&token)
                .header("Content-Type", "application/json")
        };
        let okeanos = |verb: &str| {
            http.post(url(format!("/api/apps/{id}/{verb}/")))
                .header("Authorization", format!("Token {token}"))
                .form(&[("lambda_instance_id", NODE_ID)])
        };
        let timeout = next(3);
        let answer = match action {
            "v1 stop" => try_send(v1(format!("/v1/apps/{id}/stop?timeout={timeout}"))).await,
            "v1 start" => try_send(v1(format!("/v1/apps/{id}/start"))).await,
            "v1 restart" => try_send(v1(format!("/v1/apps/{id}/restart?timeout={timeout}"))).await,
            "okeanos stop" => try_send(okeanos("stop")).await,
            "okeanos start" => try_send(okeanos("start")).await,
            "docker stop" => {
                let options = bollard::query_parameters::StopContainerOptions {
                    t: Some(1),
                    ..Default::default()
                };
                let _ = docker.stop_container(container, Some(options)).await;
                None
            }
            "docker start" => {
                let _ = docker
                    .start_container(
                        container,
                        None::<bollard::query_parameters::StartContainerOptions>,
                    )
                    .await;
                None
            }
            "read" => try_send(http.get(url(format!("/v1/apps/{id}"))).bearer_auth(&token)).await,
            _ => {
                let online = next(2) == 0;
                try_send(
                    http.get(url(format!("/v1/apps/{id}/wait?online={online}&timeout=1")))
                        .bearer_auth(&token),
                )
                .await
            }
        };
        if let Some((status, body)) = answer {
            // A fault is kept with its message, to be told apart.
            let mut code = body["error"].as_str().unwrap_or_default().to_owned();
            if status >= 500 {
                code = format!("{code}: {}", body["message"].as_str().unwrap_or_default());
            }
            done.push((action, status, code));
        }
        tokio::time::sleep(Duration::from_millis(next(150))).await;
    }
    done
}

/// The keys of a record that say where its app stands, as the control plane must last have heard.
fn standing(record: &Value) -> Value {
    serde_json::json!({
        "generation": record["generation"],
        "online": record["currentResourceMetrics"]["online"],
        "startedAt": record["currentResourceMetrics"]["startedAt"],
        "lastExit": record["lastExit"],
        "lastStop": record["lastStop"],
        "lastStart": record["lastStart"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_kills_ends_true_closed_and_reported() {
    const APPS: usize = 16;
    const CLIENTS: u64 = 8;
    const KILLS: u32 = 4;
    let _turn = ENGINE_HEAVY.lock().await;
    let (seed, mut next) = random_source();
    let receiver = support::receiver::Receiver::start().await;
    let mut agent = AgentProcess::start_with(AgentOptions {
        report_url: Some(receiver.url()),
        ..Default::default()
    });
    let client = agent.client();
    let made = (0..APPS).map(|i| client.running_app(["ignore", "slow=400", "exit"][i % 3]));
    let (workloads, ids): (Vec<Workload>, Vec<String>) = futures_util::future::join_all(made)
        .await
        .into_iter()
        .unzip();
    let apps: Vec<(String, String)> = ids
        .into_iter()
        .zip(&workloads)
        .map(|(id, w)| (id, w.name.clone()))
        .collect();
    let apps = std::sync::Arc::new(apps);
    let base = std::sync::Arc::new(std::sync::RwLock::new(agent.base.clone()));
    let length = chaos_duration();
    let began = Instant::now();
    let until = began + length;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(chaos_client(
                generator(seed.wrapping_add(c + 1)),
                base.clone(),
                agent.token.clone(),
                apps.clone(),
                until,
            ))
        })
        .collect();
    // The kills, one in each of KILLS equal slices of the run, at a random moment of it.
    let slice = length / (KILLS + 1);
    for k in 0..KILLS {
        let jitter = Duration::from_millis(next(slice.as_millis() as u64));
        let at = began + slice * (k + 1) - slice / 2 + jitter;
        tokio::time::sleep_until(at.into()).await;
        agent.kill9();
        agent.restart();
        *base.write().unwrap() = agent.base.clone();
        eprintln!("kill {k} at {} ms", at.duration_since(began).as_millis());
    }
    let mut tally = std::collections::BTreeMap::<(&str, u16, String), usize>::new();
    for c in clients {
        for answer in c.await.unwrap() {
            *tally.entry(answer).or_default() += 1;
        }
    }
    eprintln!("seed {seed}, answers: {tally:?}");
    // Podman refuses to start a container that someone else is stopping ("container state
    // improper"), where Docker waits for the stop: a true answer of the engine, told as 502.
    let faults: Vec<_> = tally
        .keys()
        .filter(|(_, status, why)| {
            matches!(status, 500 | 502) && !why.contains("container state improper")
        })
        .collect();
    assert!(
        faults.is_empty(),
        "faults answered (seed {seed}): {faults:?}"
    );

    // Once idle, every record matches its container and no operation is left open.
    let client = agent.client();
    let what = format!("after the chaos run (seed {seed})");
    wait_all_true(&client, &apps, false, &what).await;

    // The control plane's last word on each app is its record. The engine's events of the run
    // may still be coming in (the last restart replays them), each a later change of the history:
    // a record read before the last of them is compared with the change that carries it, or read
    // again once a later one has come.
    let records = |list: Value| -> Vec<Value> { list["applications"].as_array().unwrap().clone() };
    let records = records(client.get("/v1/apps?limit=500").await.body);
    for record in &records {
        let id = record["_id"].as_str().unwrap();
        let mut record = record.clone();
        let mut reads = 0;
        let told = loop {
            let generation = record["generation"].as_u64().unwrap();
            let (g, told) = receiver
                .wait(|| receiver.latest(id).filter(|(g, _)| *g >= generation))
                .await;
            reads += 1;
            if g == generation || reads == 20 {
                break told;
            }
            record = client.get(&format!("/v1/apps/{id}")).await.body;
        };
        assert_eq!(
            standing(&told["record"]),
            standing(&record),
            "{id}: the control plane's last word is not the record (seed {seed})"
        );
    }
    receiver.assert_in_order();

    // A fresh stop or start of every app is accepted, not refused as under way.
    let fresh = apps.iter().zip(&workloads).map(|((id, _), w)| {
        let client = client.clone();
        async move {
            let running = w.running().await;
            let answer = if running {
                client.stop_query(id, "?timeout=1").await
            } else {
                client.start(id).await
            };
            (id, running, answer)
        }
    });
    for (id, running, answer) in futures_util::future::join_all(fresh).await {
        assert_eq!(
            answer.status, 200,
            "{id} (running {running}, seed {seed}): {answer:?}"
        );
    }
    wait_all_true(&client, &apps, false, &what).await;
}
