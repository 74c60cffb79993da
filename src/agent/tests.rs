//! Unit tests of the core against the scripted engine: faults the real engine cannot show on demand.

use super::*;
use crate::auth::Access;
use crate::cgroup::recorded::{self as recorded_set, copy_tree};
use crate::lifecycle::Operation;
use crate::record::{NodeReason, StartOutcome, StopOutcome};
use crate::runtime::PROBE_LIMIT;
use crate::runtime::fake::FakeRuntime;
use crate::stats::SampleSource;
use crate::stop::{Signal, StopRequest};
use crate::telemetry::Route;
use chrono::SubsecRound;
use serde_json::json;

struct Fixture {
    agent: Agent,
    fake: FakeRuntime,
    _dir: tempfile::TempDir,
}

fn operator() -> Principal {
    Principal {
        name: "op".into(),
        access: Access::Operator,
    }
}

async fn fixture(stop_takes_signal: bool, apps: &[(&str, Value)]) -> Fixture {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("a.db")).expect("store");
    let fake = FakeRuntime::new(stop_takes_signal);
    let node = WorkerNode {
        id: "n".into(),
        node_name: "N".into(),
    };
    let agent = Agent::new(
        Arc::new(fake.clone()),
        store,
        node,
        Limits::default(),
        crate::background::Background::new(),
    );
    for (id, body) in apps {
        let id = AppId::parse(id).expect("id");
        fake.add_running(
            body["containerId"].as_str().expect("container"),
            &["SIGTERM"],
        );
        agent
            .register(&operator(), &id, body.clone())
            .await
            .expect("register");
    }
    fake.clear_calls();
    Fixture {
        agent,
        fake,
        _dir: dir,
    }
}

fn id(s: &str) -> AppId {
    AppId::parse(s).expect("id")
}

impl Fixture {
    async fn stop_as(
        &self,
        who: &Principal,
        app: &str,
        req: StopRequest,
    ) -> Result<AppRecord, AgentError> {
        self.agent.stop(who, &id(app), req, Route::V1).await
    }

    /// A default stop of `app` by an operator.
    async fn stop(&self, app: &str) -> Result<AppRecord, AgentError> {
        self.stop_as(&operator(), app, StopRequest::default()).await
    }

    async fn stored(&self, app: &str) -> Option<AppRecord> {
        self.agent.store().get(&id(app)).await.expect("get")
    }

    /// A fresh agent over the same engine and store: the next start of an agent that died.
    fn restarted(&self) -> Agent {
        Agent::new(
            Arc::new(self.fake.clone()),
            self.agent.store().clone(),
            self.agent.node().clone(),
            Limits::default(),
            crate::background::Background::new(),
        )
    }
}

#[tokio::test]
async fn a_stop_records_final_metrics_and_exit() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    let r = f.stop("a").await.expect("stopped");
    let m = r.metrics.expect("metrics");
    assert!(!m.online);
    assert_eq!(m.uptime, Some(42));
    assert_eq!(m.cpu_usage_percent, Some(20.0));
    assert_eq!(m.network_tx_bytes, Some(22));
    assert_eq!(r.last_exit.expect("exit").exit_code, 0);
    // Without a fresh reading from the followed stream, the sample is a stats call, before the stop.
    assert_eq!(
        f.fake.request_calls(),
        ["inspect ca", "stats ca", "stop ca - t=10", "inspect ca"]
    );
}

#[tokio::test]
async fn a_stop_takes_its_final_sample_from_the_followed_stream_without_waiting() {
    let f = followed_app(|fake| fake.stream_readings()).await;
    // Two readings make a CPU interval; the stream sends one every 20 ms.
    wait_for(|| f.agent.sampler().fresh_reading("ca").is_some()).await;
    let r = f.stop("a").await.expect("stopped");
    assert!(
        !f.fake.request_calls().iter().any(|c| c == "stats ca"),
        "{:?}",
        f.fake.calls()
    );
    let m = r.metrics.expect("metrics");
    assert_eq!(m.cpu_usage_percent, Some(20.0));
    assert_eq!(m.memory_usage_bytes, Some(4096));
}

#[tokio::test]
async fn readings_that_arrive_late_are_not_taken_for_fresh() {
    // The first reading comes on time; every later one was read three seconds before it arrives.
    let f = followed_app(|fake| fake.stream_readings_late(chrono::Duration::seconds(3))).await;
    wait_for(|| f.agent.sampler().has_reading("ca")).await;
    wait_for(|| f.agent.sampler().fresh_reading("ca").is_none()).await;
    f.stop("a").await.expect("stopped");
    assert_eq!(
        f.fake.request_calls(),
        // Registration's inspect, then the stop's.
        [
            "inspect ca",
            "inspect ca",
            "stats ca",
            "stop ca - t=10",
            "inspect ca"
        ],
        "the final sample is a stats call of its own"
    );
}

#[tokio::test]
async fn an_engine_clock_behind_this_hosts_does_not_make_readings_stale() {
    // A remote engine whose clock is three seconds behind, delivering on time.
    let f = followed_app(|fake| fake.stream_readings_skewed(chrono::Duration::seconds(3))).await;
    wait_for(|| f.agent.sampler().fresh_reading("ca").is_some()).await;
    // Several readings later, still fresh.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(f.agent.sampler().fresh_reading("ca").is_some());
    f.stop("a").await.expect("stopped");
    assert!(
        !f.fake.request_calls().iter().any(|c| c == "stats ca"),
        "{:?}",
        f.fake.calls()
    );
}

/// App `a` registered on running container `ca` (which exits on SIGTERM), its stats stream set up
/// by `streams` first.
async fn followed_app(streams: impl FnOnce(&FakeRuntime)) -> Fixture {
    let f = fixture(true, &[]).await;
    streams(&f.fake);
    f.fake.add_running("ca", &["SIGTERM"]);
    f.agent
        .register(&operator(), &id("a"), json!({"containerId": "ca"}))
        .await
        .expect("registered");
    f
}

fn recorded(snap: &str) -> std::path::PathBuf {
    crate::cgroup::recorded::set("v1-cgroupfs").join(snap)
}

/// App `a` on running container `ca`, whose host files are a copy of the recorded snapshot `a`.
async fn app_on_host_files() -> (Fixture, tempfile::TempDir) {
    app_on_host_files_with(|_| {}).await
}

/// [`app_on_host_files`], with the host's files changed by `prepare` before the agent sees them.
async fn app_on_host_files_with(
    prepare: impl FnOnce(&std::path::Path),
) -> (Fixture, tempfile::TempDir) {
    let host = tempfile::tempdir().expect("dir");
    copy_tree(&recorded("a"), host.path());
    prepare(host.path());
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("a.db")).expect("store");
    let fake = FakeRuntime::new(true);
    let node = WorkerNode {
        id: "n".into(),
        node_name: "N".into(),
    };
    let files = crate::cgroup::HostFiles::at(host.path()).expect("host files");
    let agent = Agent::with_host_files(
        Arc::new(fake.clone()),
        store,
        node,
        Limits::default(),
        crate::background::Background::new(),
        Some(files),
    );
    fake.add_running("ca", &["SIGTERM"]);
    fake.set_process("ca", recorded_set::ID, recorded_set::PID);
    agent
        .register(&operator(), &id("a"), json!({"containerId": "ca"}))
        .await
        .expect("registered");
    fake.clear_calls();
    let f = Fixture {
        agent,
        fake,
        _dir: dir,
    };
    (f, host)
}

#[tokio::test]
async fn a_stop_reads_its_final_sample_from_the_hosts_files_without_the_engines_stats() {
    let (f, host) = app_on_host_files().await;
    assert!(f.agent.sampler().followed_on_host("ca"));
    // Long enough for /proc/stat's ticks to measure the interval, then the counters a second
    // later on the host (snapshot `b`).
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    copy_tree(&recorded("b"), host.path());
    let before = Utc::now();
    let r = f.stop("a").await.expect("stopped");
    let m = r.metrics.expect("metrics");
    assert_eq!(m.sample_source, Some(SampleSource::Cgroup));
    // Over the interval since registration's reading: the recorded 100.16 %.
    assert_eq!(m.cpu_usage_percent, Some(100.16));
    assert_eq!(m.memory_usage_bytes, Some(18_100_224 - 737_280));
    assert_eq!(m.memory_limit_bytes, Some(64 * 1024 * 1024));
    assert_eq!(m.network_rx_bytes, Some(736));
    assert!(m.timestamp >= before.trunc_subsecs(3), "read at the stop");
    assert_eq!(
        f.fake.request_calls(),
        ["inspect ca", "stop ca - t=10", "inspect ca"],
        "no stats call, no stream"
    );
    let text = f.agent.telemetry().render(&Default::default());
    assert!(
        text.contains("node_agent_samples_total{source=\"cgroup\",purpose=\"final\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_tick_reads_every_file_again_once_the_containers_cpu_or_memory_has_moved() {
    let (f, host) = app_on_host_files().await;
    let net_dev = format!("proc/{}/net/dev", recorded_set::PID);
    // Traffic the container never woke for: its CPU time and memory usage have not moved, and a
    // tick keeps the network counters it read last.
    std::fs::copy(recorded("b").join(&net_dev), host.path().join(&net_dev)).expect("copy");
    tokio::time::sleep(super::sampling::TICK * 2 + std::time::Duration::from_millis(300)).await;
    let last = f.agent.sampler().last_on_host("ca").expect("followed");
    assert_eq!(last.network_rx, 646);
    // It ran: the next tick reads everything.
    copy_tree(&recorded("b"), host.path());
    tokio::time::sleep(super::sampling::TICK + std::time::Duration::from_millis(300)).await;
    let last = f.agent.sampler().last_on_host("ca").expect("followed");
    assert_eq!(last.network_rx, 736);
    assert_eq!(last.memory_usage, 18_100_224);
    // A sample asked for reads every file at that moment, whatever the ticks read.
    copy_tree(&recorded("a"), host.path());
    std::fs::copy(recorded("b").join(&net_dev), host.path().join(&net_dev)).expect("copy");
    let r = f.agent.get(&operator(), &id("a")).await.expect("read");
    assert_eq!(r.metrics.expect("metrics").network_rx_bytes, Some(736));
}

#[tokio::test]
async fn a_read_answers_figures_from_the_hosts_files() {
    let (f, host) = app_on_host_files().await;
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    copy_tree(&recorded("b"), host.path());
    let r = f.agent.get(&operator(), &id("a")).await.expect("read");
    let m = r.metrics.expect("metrics");
    assert!(m.online);
    assert_eq!(m.sample_source, Some(SampleSource::Cgroup));
    assert_eq!(m.cpu_usage_percent, Some(100.16));
    assert!(
        !f.fake
            .request_calls()
            .iter()
            .any(|c| c.starts_with("stats"))
    );
}

#[tokio::test]
async fn host_files_that_cannot_be_read_give_way_to_the_engines_stats() {
    // memory.stat unreadable (a directory where the file was).
    let (f, _host) = app_on_host_files_with(|root| {
        let stat = root.join(format!(
            "sys/fs/cgroup/memory/docker/{}/memory.stat",
            recorded_set::ID
        ));
        std::fs::remove_file(&stat).expect("rm");
        std::fs::create_dir(&stat).expect("mkdir");
    })
    .await;
    let r = f.stop("a").await.expect("stopped");
    let m = r.metrics.expect("metrics");
    assert_eq!(m.sample_source, Some(SampleSource::Engine));
    // The fake engine's figures, not zeros from the broken file.
    assert_eq!(m.memory_usage_bytes, Some(4096));
    assert_eq!(m.cpu_usage_percent, Some(20.0));
    assert!(f.fake.request_calls().iter().any(|c| c == "stats ca"));
    assert!(!f.agent.sampler().followed_on_host("ca"));
    let text = f.agent.telemetry().render(&Default::default());
    assert!(
        text.contains("node_agent_sample_fallbacks_total 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_container_the_host_files_show_gone_is_not_sampled_as_zeros() {
    let (f, host) = app_on_host_files().await;
    std::fs::remove_dir_all(host.path().join(format!("proc/{}", recorded_set::PID))).expect("rm");
    // Gone from the host while the engine still said it runs: the container has ended, and the
    // stop takes no sample of it. No figures, rather than zeros.
    let r = f.stop("a").await.expect("stopped");
    let m = r.metrics.expect("metrics");
    assert!(!m.online);
    assert_eq!(m.memory_usage_bytes, None);
    assert_eq!(m.cpu_usage_percent, None);
    assert!(!f.fake.request_calls().iter().any(|c| c == "stats ca"));
}

/// Polls `done` every 10 ms until it holds, for at most ten seconds.
async fn wait_for(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "the condition never held"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_unreachable_engine_leaves_the_record_untouched() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    let before = f.stored("a").await;
    f.fake.set_engine_down(true);
    let err = f.stop("a").await;
    assert!(
        matches!(err, Err(AgentError::DockerUnavailable(_))),
        "{err:?}"
    );
    assert_eq!(f.stored("a").await, before);
    f.fake.set_engine_down(false);
    assert!(f.stop("a").await.is_ok(), "works again");
}

#[tokio::test]
async fn the_engine_dying_mid_stop_is_503_and_the_record_says_the_stop_failed() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    let before = f.stored("a").await.expect("record");
    f.fake
        .fail_next("stop", RuntimeError::Unavailable("connection reset".into()));
    let err = f.stop("a").await;
    assert!(
        matches!(err, Err(AgentError::DockerUnavailable(_))),
        "{err:?}"
    );
    let after = f.stored("a").await.expect("record");
    assert!(
        after.online(),
        "the container still runs, and the record says so"
    );
    assert_eq!(after.last_exit, before.last_exit);
    assert!(!after.stop_pending(), "no intent is left open");
    let stop = after.last_stop.expect("lastStop");
    assert_eq!(stop.outcome, StopOutcome::Failed);
    assert!(stop.error.expect("why").contains("connection reset"));
}

#[tokio::test]
async fn an_interrupted_stop_is_made_true_at_the_next_start() {
    let f = fixture(
        true,
        &[
            ("a", json!({"containerId": "ca"})),
            ("b", json!({"containerId": "cb"})),
        ],
    )
    .await;
    // The agent dies during both stops: the intent is written, the engine acts (or not), and the
    // final record never is. Simulated by a stop that hangs, then a fresh agent over the same store.
    f.fake.gate("stop");
    for app in ["a", "b"] {
        let agent = f.agent.clone();
        tokio::spawn(async move {
            agent
                .stop(&operator(), &id(app), StopRequest::default(), Route::V1)
                .await
        });
        f.fake.entered().await;
        assert!(
            f.stored(app).await.expect("record").stop_pending(),
            "intent first"
        );
    }
    // "a" did stop before the crash, "b" did not.
    f.fake.crash("ca", 143, false);
    let restarted = f.restarted();
    let changed = restarted.reconcile_all().await.expect("reconciled");
    assert_eq!(changed, 2);
    let a = f.stored("a").await.expect("a");
    assert!(!a.online());
    assert_eq!(a.last_exit.as_ref().expect("exit").exit_code, 143);
    assert_eq!(
        a.metrics.as_ref().expect("m").memory_usage_bytes,
        Some(4096),
        "the sample taken before the stop"
    );
    assert_eq!(
        a.last_stop.as_ref().expect("stop").outcome,
        StopOutcome::Interrupted
    );
    let b = f.stored("b").await.expect("b");
    assert!(b.online());
    assert_eq!(
        b.last_stop.as_ref().expect("stop").outcome,
        StopOutcome::Interrupted
    );
    f.fake.release();
}

#[tokio::test]
async fn containers_changing_behind_the_agents_back_update_their_records() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.agent.spawn_watcher();
    let wait_online = |want_online: bool| {
        let f = &f;
        async move {
            for _ in 0..200 {
                let r = f.stored("a").await.expect("record");
                if r.online() == want_online {
                    return r;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("the record never said online = {want_online}");
        }
    };
    // The watcher listens before the world changes.
    wait_for(|| f.fake.watchers() == 1).await;
    f.fake.crash("ca", 137, true);
    let r = wait_online(false).await;
    let exit = r.last_exit.expect("exit");
    assert!(exit.oom_killed);
    assert_eq!(exit.exit_code, 137);
    f.fake.start_by_hand("ca");
    let r = wait_online(true).await;
    assert!(r.metrics.expect("m").started_at.is_some());
}

#[tokio::test]
async fn on_podman_a_sweep_of_the_running_containers_keeps_records_true_without_events() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.fake.set_podman();
    f.agent.spawn_watcher();
    wait_for(|| f.fake.watchers() == 1).await;
    f.fake.crash("ca", 1, false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while f.stored("a").await.expect("record").online() {
        assert!(
            std::time::Instant::now() < deadline,
            "the crash was never seen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let r = f.stored("a").await.expect("record");
    assert_eq!(r.last_exit.expect("exit").exit_code, 1);
    f.fake.start_by_hand("ca");
    while !f.stored("a").await.expect("record").online() {
        assert!(
            std::time::Instant::now() < deadline,
            "the start was never seen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn on_podman_a_stop_keeps_the_restart_policy() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.fake.set_podman();
    f.fake.set_restart_policy("ca", "always");
    f.fake.clear_calls();
    let r = f.stop("a").await.expect("stopped");
    assert!(
        !f.fake.calls().iter().any(|c| c.starts_with("update")),
        "{:?}",
        f.fake.calls()
    );
    assert_eq!(
        r.last_stop.expect("stop").previous_restart_policy,
        None,
        "nothing was set aside"
    );
    assert_eq!(f.fake.state("ca").restart_policy.as_deref(), Some("always"));
}

#[tokio::test]
async fn a_stop_disables_the_restart_policy_first() {
    let f = fixture(false, &[("a", json!({"containerId": "ca"}))]).await;
    f.fake.set_restart_policy("ca", "always");
    let req = StopRequest {
        signal: Some(Signal::Usr1),
        timeout: Some(1),
    };
    f.stop_as(&operator(), "a", req).await.ok();
    let calls = f.fake.calls();
    let update = calls
        .iter()
        .position(|c| c.starts_with("update"))
        .expect("updated");
    let kill = calls
        .iter()
        .position(|c| c.starts_with("kill"))
        .expect("killed");
    assert!(update < kill, "{calls:?}");
    assert_eq!(f.fake.state("ca").restart_policy.as_deref(), Some("no"));
}

#[tokio::test]
async fn a_container_started_again_during_the_stop_overtakes_it_and_nothing_failed() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.fake.set_restart_policy("ca", "always");
    f.fake.start_after("stop", "ca");
    let err = f.stop("a").await;
    let Err(AgentError::StopOvertaken { record, .. }) = err else {
        panic!("{err:?}");
    };
    // The answer carries the record as stored: the container runs, the stop is closed.
    assert_eq!(Some(&*record), f.stored("a").await.as_ref());
    assert!(record.online());
    assert!(!record.stop_pending(), "{record:?}");
    let stop = record.last_stop.as_ref().expect("stop");
    assert_eq!(stop.outcome, StopOutcome::Stopped);
    assert_eq!(stop.error, None);
    assert_eq!(
        f.fake.state("ca").restart_policy.as_deref(),
        Some("always"),
        "a running container gets its restart policy back"
    );
    // Nothing is left under way: the next stop goes ahead.
    f.stop("a").await.expect("stopped");
}

#[tokio::test]
async fn a_stop_call_that_fails_because_the_container_runs_again_is_overtaken() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    // As Podman: the container is started again before the stop call ends, and the call fails.
    f.fake.start_after("stop", "ca");
    f.fake.fail_after(
        "stop",
        RuntimeError::Engine("is running or paused, refusing to clean up".into()),
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let err = f.stop("a").await;
    let Err(AgentError::StopOvertaken { record, .. }) = err else {
        panic!("{err:?}");
    };
    assert!(record.online());
    assert_eq!(
        record.last_stop.as_ref().expect("stop").outcome,
        StopOutcome::Stopped
    );
    // A stop call that fails with the same run still going is a failure.
    f.fake
        .fail_next("stop", RuntimeError::Engine("refused".into()));
    let err = f.stop("a").await;
    assert!(matches!(err, Err(AgentError::Engine(_))), "{err:?}");
}

#[tokio::test]
async fn a_restart_whose_stop_is_overtaken_starts_nothing_and_says_so() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.fake.start_after("stop", "ca");
    let err = f
        .agent
        .restart(&operator(), &id("a"), StopRequest::default(), Route::V1)
        .await;
    let Err(AgentError::StopOvertaken { record, .. }) = err else {
        panic!("{err:?}");
    };
    assert_eq!(Some(&*record), f.stored("a").await.as_ref());
    assert!(record.online());
    assert!(
        !record.stop_pending() && !record.start_pending(),
        "{record:?}"
    );
    assert!(
        !f.fake.calls().iter().any(|c| c.starts_with("start")),
        "{:?}",
        f.fake.calls()
    );
}

#[tokio::test]
async fn an_operation_admitted_first_closes_the_intents_of_an_agent_that_died() {
    let f = fixture(
        true,
        &[
            ("a", json!({"containerId": "ca"})),
            ("b", json!({"containerId": "cb"})),
        ],
    )
    .await;
    f.stopped("b", None).await;
    let restarted = f.restarted();
    // The agent dies during a stop of "a", which the engine finishes; before any reconciliation,
    // a start of "a" is admitted by the next agent: it closes the dead stop's intent.
    f.fake.gate("stop");
    let agent = f.agent.clone();
    tokio::spawn(async move {
        agent
            .stop(&operator(), &id("a"), StopRequest::default(), Route::V1)
            .await
    });
    f.fake.entered().await;
    f.fake.crash("ca", 143, false);
    let a = restarted
        .start(&operator(), &id("a"), Route::V1)
        .await
        .expect("started");
    assert_eq!(
        a.last_stop.as_ref().expect("stop").outcome,
        StopOutcome::Interrupted
    );
    assert_eq!(
        a.last_start.as_ref().expect("start").outcome,
        StartOutcome::Started
    );
    f.fake.release();
    // The same for a start of "b" the agent died in, and a stop admitted first.
    f.fake.gate("start");
    let agent = f.agent.clone();
    tokio::spawn(async move { agent.start(&operator(), &id("b"), Route::V1).await });
    f.fake.entered().await;
    f.fake.start_by_hand("cb");
    let b = restarted
        .stop(&operator(), &id("b"), StopRequest::default(), Route::V1)
        .await
        .expect("stopped");
    assert_eq!(
        b.last_start.as_ref().expect("start").outcome,
        StartOutcome::Interrupted
    );
    assert_eq!(
        b.last_stop.as_ref().expect("stop").outcome,
        StopOutcome::Stopped
    );
    f.fake.release();
}

#[tokio::test]
async fn a_container_vanishing_before_the_stop_call_is_already_stopped_as_gone() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.fake.vanish_after("stats", "ca");
    match f.stop("a").await {
        Err(AgentError::AlreadyStopped { how, record, .. }) => {
            assert_eq!(how, AlreadyStopped::Gone);
            let m = record.metrics.expect("metrics");
            assert!(!m.online);
            assert_eq!(
                m.memory_usage_bytes,
                Some(4096),
                "the sample taken before it vanished is kept"
            );
        }
        other => panic!("{other:?}"),
    }
    let stored = f.stored("a").await.expect("record");
    assert_eq!(
        stored.last_stop.expect("stop").outcome,
        StopOutcome::AlreadyStopped
    );
}

#[tokio::test]
async fn an_engine_that_acts_then_fails_to_answer_leaves_a_true_record() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.fake.set_restart_policy("ca", "always");
    f.fake
        .fail_after("stop", RuntimeError::Unavailable("connection reset".into()));
    let err = f.stop("a").await;
    assert!(
        matches!(err, Err(AgentError::DockerUnavailable(_))),
        "{err:?}"
    );
    let r = f.stored("a").await.expect("record");
    assert!(
        !r.online(),
        "the container did stop, and the record says so"
    );
    assert_eq!(r.last_exit.as_ref().expect("exit").exit_code, 0);
    assert_eq!(
        r.metrics.as_ref().expect("m").memory_usage_bytes,
        Some(4096)
    );
    let stop = r.last_stop.expect("stop");
    assert_eq!(stop.outcome, StopOutcome::Failed);
    assert_eq!(stop.previous_restart_policy.as_deref(), Some("always"));
    assert_eq!(
        f.fake.state("ca").restart_policy.as_deref(),
        Some("no"),
        "stopped: it stays stopped"
    );
}

#[tokio::test]
async fn a_failed_stop_of_a_running_container_gives_its_restart_policy_back() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.fake.set_restart_policy("ca", "unless-stopped");
    f.fake
        .fail_next("stop", RuntimeError::Engine("500 oops".into()));
    assert!(matches!(f.stop("a").await, Err(AgentError::Engine(_))));
    assert!(f.stored("a").await.expect("record").online());
    assert_eq!(
        f.fake.state("ca").restart_policy.as_deref(),
        Some("unless-stopped")
    );
}

#[tokio::test]
async fn a_stop_that_cannot_disable_the_restart_policy_does_not_go_ahead() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.fake.set_restart_policy("ca", "always");
    f.fake
        .fail_next("update", RuntimeError::Engine("500 oops".into()));
    assert!(matches!(f.stop("a").await, Err(AgentError::Engine(_))));
    assert!(f.fake.state("ca").running);
    assert!(
        !f.fake.calls().iter().any(|c| c.starts_with("stop")),
        "{:?}",
        f.fake.calls()
    );
}

#[tokio::test]
async fn a_container_vanishing_between_inspect_and_stats_is_already_stopped() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.fake.vanish_after("inspect", "ca");
    let err = f.stop("a").await;
    match err {
        Err(AgentError::AlreadyStopped { record, .. }) => assert!(!record.online()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn exiting_on_its_own_while_sampled_is_already_stopped_not_stopped() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.fake.exit_after("stats", "ca");
    match f.stop("a").await {
        Err(AgentError::AlreadyStopped { how, record, .. }) => {
            assert_eq!(how, AlreadyStopped::Unnoticed);
            assert_eq!(record.last_exit.expect("exit").exit_code, 1);
            let m = record.metrics.expect("metrics");
            assert!(!m.online);
            assert_eq!(m.memory_usage_bytes, Some(4096), "the sample is kept");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        f.stored("a")
            .await
            .expect("record")
            .last_exit
            .expect("exit")
            .exit_code,
        1
    );
}

#[tokio::test]
async fn a_stale_copy_never_overwrites_the_final_record() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    let stale = f.stored("a").await.expect("record");
    let stopped = f.stop("a").await.expect("stopped");
    // A read that looked before the stop settles afterwards: the stored final word stands.
    let state = f.fake.state("ca");
    let sighting = Sighting {
        at: stale.updated_at,
        state: Some(state),
    };
    let settled = f
        .agent
        .record_sighting(stale, sighting, Settler::Read, Vec::new())
        .await
        .expect("settled");
    assert_eq!(settled, stopped);
    assert_eq!(f.stored("a").await, Some(stopped));
}

#[tokio::test]
async fn registration_looks_at_the_container() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    assert!(
        f.stored("a").await.expect("record").online(),
        "seen running"
    );
    let out = f
        .agent
        .register(&operator(), &id("b"), json!({"containerId": "nowhere"}))
        .await
        .expect("registered");
    assert!(!out.record.online(), "gone: offline");
    f.fake.set_engine_down(true);
    let out = f
        .agent
        .register(&operator(), &id("c"), json!({"containerId": "cc"}))
        .await
        .expect("registered without the engine");
    assert!(out.record.metrics.is_none(), "not seen");
    let answered = out.record.to_json(f.agent.node());
    assert_eq!(
        answered["engineUnavailable"]["message"],
        crate::record::UNSEEN
    );
    assert_eq!(answered["currentResourceMetrics"]["online"], false);
}

#[tokio::test]
async fn a_registration_commits_what_it_saw_in_one_change() {
    let f = fixture(true, &[]).await;
    f.fake.add_running("ca", &["SIGTERM"]);
    let head = f.agent.store().head();
    let before = *head.borrow();
    let out = f
        .agent
        .register(&operator(), &id("a"), json!({"containerId": "ca"}))
        .await
        .expect("registered");
    // One commit, and it says what the engine said: no change ever reported it offline.
    assert!(out.record.online(), "{:?}", out.record);
    assert_eq!(out.record.generation, before + 1);
    assert_eq!(*head.borrow(), before + 1);
    // Registered again over the same running container: still one change, still online.
    let again = f
        .agent
        .register(
            &operator(),
            &id("a"),
            json!({"containerId": "ca", "name": "x"}),
        )
        .await
        .expect("registered again");
    assert!(again.record.online());
    assert_eq!(again.record.generation, before + 2);
    assert_eq!(*head.borrow(), before + 2);
}

#[tokio::test]
async fn exiting_before_the_signal_is_already_stopped() {
    let f = fixture(false, &[("a", json!({"containerId": "ca"}))]).await;
    f.fake
        .fail_next("kill", RuntimeError::NotRunning("ca".into()));
    let req = StopRequest {
        signal: Some(Signal::Usr1),
        timeout: Some(1),
    };
    let err = f.stop_as(&operator(), "a", req).await;
    assert!(
        matches!(err, Err(AgentError::AlreadyStopped { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_hanging_stop_excludes_only_its_own_app_and_survives_its_caller() {
    let f = fixture(
        true,
        &[
            ("a", json!({"containerId": "ca"})),
            ("b", json!({"containerId": "cb"})),
        ],
    )
    .await;
    f.fake.gate("stop");
    let agent = f.agent.clone();
    let first = tokio::spawn(async move {
        agent
            .stop(&operator(), &id("a"), StopRequest::default(), Route::V1)
            .await
    });
    f.fake.entered().await;
    let second = f.stop("a").await;
    assert!(
        matches!(
            second,
            Err(AgentError::InProgress {
                under_way: Operation::Stop,
                ..
            })
        ),
        "{second:?}"
    );
    // The caller of the first stop goes away; the stop itself goes on.
    first.abort();
    // Another app is not held up by the hanging stop.
    let agent = f.agent.clone();
    let other = tokio::spawn(async move {
        agent
            .stop(&operator(), &id("b"), StopRequest::default(), Route::V1)
            .await
    });
    f.fake.entered().await;
    f.fake.release();
    assert!(other.await.expect("join").is_ok());
    for _ in 0..1000 {
        let r = f
            .agent
            .store()
            .get(&id("a"))
            .await
            .expect("get")
            .expect("record");
        if r.metrics.as_ref().is_some_and(|m| !m.online) {
            assert!(!f.fake.state("ca").running);
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the abandoned stop never completed");
}

#[tokio::test]
async fn refused_callers_never_reach_the_engine() {
    let team = json!({"owner": "lead", "members": [{"user": "viewer", "permissions": {"canChangeStatusApplication": false}}]});
    let f = fixture(
        true,
        &[(
            "a",
            json!({"containerId": "ca", "userId": "owner", "teamId": team}),
        )],
    )
    .await;
    let user = |u: &str| Principal {
        name: u.into(),
        access: Access::User { user_id: u.into() },
    };
    let err = f
        .stop_as(&user("stranger"), "a", StopRequest::default())
        .await;
    assert!(matches!(err, Err(AgentError::NotFound(_))), "{err:?}");
    let err = f
        .stop_as(&user("viewer"), "a", StopRequest::default())
        .await;
    assert!(matches!(err, Err(AgentError::Forbidden(_))), "{err:?}");
    let err = f
        .agent
        .register(&user("owner"), &id("a"), json!({"containerId": "x"}))
        .await;
    assert!(matches!(err, Err(AgentError::Forbidden(_))), "{err:?}");
    assert!(f.fake.request_calls().is_empty(), "{:?}", f.fake.calls());
    assert!(
        f.stop_as(&user("owner"), "a", StopRequest::default())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn the_node_report_names_a_hanging_engine_within_the_probe_limit() {
    let f = fixture(true, &[]).await;
    // The engine answers the ping and its version, then hangs: the bound covers every call.
    f.fake.gate("info");
    let started = std::time::Instant::now();
    let report = tokio::time::timeout(
        PROBE_LIMIT + std::time::Duration::from_secs(2),
        f.agent.node_report(),
    )
    .await
    .expect("an answer soon after the probe limit");
    assert!(started.elapsed() >= PROBE_LIMIT, "{:?}", started.elapsed());
    assert!(!report.docker.reachable, "{report:?}");
    assert_eq!(
        report.docker.error.as_deref(),
        Some("the Docker engine is unreachable: no answer within 2s")
    );
    assert_eq!(report.docker.root_dir, None);
    assert_eq!(report.docker_disk, None);
    assert!(report.host.memory.total_bytes > 0, "{report:?}");
}

#[tokio::test]
async fn the_node_report_measures_the_root_dir_of_a_local_engine_only() {
    let f = fixture(true, &[]).await;
    let root = tempfile::tempdir().expect("dir");
    let root_dir = root.path().display().to_string();
    f.fake.set_root_dir(Some(root_dir.clone()));

    let report = f.agent.node_report().await;
    assert!(report.docker.reachable, "{report:?}");
    assert_eq!(report.docker.api_version.as_deref(), Some("1.47"));
    assert_eq!(
        report.docker.negotiated_api_version.as_deref(),
        Some("1.43")
    );
    let disk = report.docker_disk.clone().expect("a local engine's disk");
    let measured = crate::host::disk_of(root.path()).expect("measured here");
    assert_eq!(disk.path, root_dir);
    assert_eq!(disk.mount_point, measured.mount_point);
    assert_eq!(disk.total_bytes, measured.total_bytes);
    assert!(disk.mount_point.is_some(), "{disk:?}");
    // The host's uptime is named apart from the agent's.
    let json = serde_json::to_value(&report).expect("JSON");
    assert!(json["hostUptimeSeconds"].is_u64(), "{json}");
    assert!(json["agent"]["uptimeSeconds"].is_u64(), "{json}");
    assert_eq!(json.get("uptimeSeconds"), None, "{json}");
    assert_eq!(json["docker"]["negotiatedApiVersion"], "1.43", "{json}");

    // A remote engine names its root directory, on a disk the agent cannot see.
    f.fake.set_remote(true);
    let report = f.agent.node_report().await;
    assert_eq!(report.docker.root_dir.as_deref(), Some(root_dir.as_str()));
    assert_eq!(report.docker_disk, None);

    // A local engine's root directory the agent cannot see is not guessed at.
    f.fake.set_remote(false);
    f.fake
        .set_root_dir(Some(root.path().join("absent").display().to_string()));
    assert_eq!(f.agent.node_report().await.docker_disk, None);
}

impl Fixture {
    /// A registered app whose container the agent has stopped; `policy` is its restart policy
    /// before the stop.
    async fn stopped(&self, app: &str, policy: Option<&str>) {
        let container = format!("c{app}");
        if let Some(policy) = policy {
            self.fake.set_restart_policy(&container, policy);
        }
        self.stop(app).await.expect("stopped");
        self.fake.clear_calls();
    }

    async fn start(&self, app: &str) -> Result<AppRecord, AgentError> {
        self.agent.start(&operator(), &id(app), Route::V1).await
    }
}

#[tokio::test]
async fn a_start_runs_the_container_and_gives_its_restart_policy_back() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.stopped("a", Some("always")).await;
    assert_eq!(f.fake.state("ca").restart_policy.as_deref(), Some("no"));
    let before = f.stored("a").await.expect("record");
    let r = f.start("a").await.expect("started");
    assert!(r.online());
    let m = r.metrics.as_ref().expect("metrics");
    assert!(m.started_at > before.metrics.as_ref().expect("m").started_at);
    assert_eq!(m.memory_usage_bytes, None, "no reading of the new run yet");
    let start = r.last_start.as_ref().expect("lastStart");
    assert_eq!(start.outcome, StartOutcome::Started);
    assert_eq!(start.by, "op");
    assert_eq!(start.restored_restart_policy.as_deref(), Some("always"));
    assert_eq!(start.error, None);
    assert_eq!(f.fake.state("ca").restart_policy.as_deref(), Some("always"));
    // The old run's stop and exit stay on the record.
    assert_eq!(r.last_stop, before.last_stop);
    assert_eq!(r.last_exit, before.last_exit);
    assert_eq!(f.stored("a").await.as_ref(), Some(&r));
    // A second start after another stop gives nothing back twice, and a start without a set-aside
    // policy calls no update.
    f.stopped("a", None).await;
    f.start("a").await.expect("started again");
    assert!(
        f.fake
            .calls()
            .iter()
            .any(|c| c == "update ca restart=always"),
        "the second stop set `always` aside again: {:?}",
        f.fake.calls()
    );
}

#[tokio::test]
async fn a_start_that_cannot_give_the_policy_back_says_so() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.stopped("a", Some("unless-stopped")).await;
    f.fake
        .fail_next("update", RuntimeError::Engine("update refused".into()));
    let r = f.start("a").await.expect("started");
    assert!(r.online());
    let start = r.last_start.expect("lastStart");
    assert_eq!(start.outcome, StartOutcome::Started);
    assert_eq!(start.restored_restart_policy, None);
    let why = start.error.expect("the error is told");
    assert!(
        why.contains("unless-stopped") && why.contains("update refused"),
        "{why}"
    );
}

#[tokio::test]
async fn a_crash_at_boot_is_never_reported_as_running() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.stopped("a", None).await;
    f.fake.crash_at_boot("ca", 3);
    let r = f.start("a").await.expect("answered");
    assert!(!r.online());
    assert_eq!(
        r.last_start.as_ref().expect("lastStart").outcome,
        StartOutcome::Exited
    );
    assert_eq!(r.last_exit.as_ref().expect("exit").exit_code, 3);
    assert_eq!(
        r.metrics.as_ref().expect("m").memory_usage_bytes,
        None,
        "the figures of the run before are not this run's"
    );
}

#[tokio::test]
async fn starts_refused_for_running_missing_and_busy_apps() {
    let f = fixture(
        true,
        &[
            ("a", json!({"containerId": "ca"})),
            ("b", json!({"containerId": "cb"})),
        ],
    )
    .await;
    let running = f.start("a").await;
    assert!(
        matches!(
            running,
            Err(AgentError::AlreadyRunning {
                how: AlreadyRunning::Known,
                ..
            })
        ),
        "{running:?}"
    );
    f.fake.vanish_after("stats", "cb");
    f.stop("b").await.ok();
    let missing = f.start("b").await;
    assert!(
        matches!(missing, Err(AgentError::ContainerMissing { .. })),
        "{missing:?}"
    );
    let restart = f
        .agent
        .restart(&operator(), &id("b"), StopRequest::default(), Route::V1)
        .await;
    assert!(
        matches!(restart, Err(AgentError::ContainerMissing { .. })),
        "{restart:?}"
    );
    assert!(
        !f.fake.calls().iter().any(|c| c.starts_with("start")),
        "{:?}",
        f.fake.calls()
    );
    // One guard covers every operation: a start while a stop is under way is refused, naming it.
    f.fake.gate("stop");
    let agent = f.agent.clone();
    let stop = tokio::spawn(async move {
        agent
            .stop(&operator(), &id("a"), StopRequest::default(), Route::V1)
            .await
    });
    f.fake.entered().await;
    for (op, busy) in [
        ("start", f.start("a").await),
        (
            "restart",
            f.agent
                .restart(&operator(), &id("a"), StopRequest::default(), Route::V1)
                .await,
        ),
    ] {
        assert!(
            matches!(
                &busy,
                Err(AgentError::InProgress {
                    under_way: Operation::Stop,
                    record,
                    ..
                }) if record.stop_pending()
            ),
            "{op}: {busy:?}"
        );
    }
    f.fake.release();
    stop.await.expect("task").expect("stopped");
}

#[tokio::test]
async fn a_restart_stops_then_starts_under_one_guard() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.fake.set_restart_policy("ca", "always");
    let before = f.stored("a").await.expect("record");
    let req = StopRequest {
        timeout: Some(0),
        signal: None,
    };
    let r = f
        .agent
        .restart(&operator(), &id("a"), req, Route::V1)
        .await
        .expect("restarted");
    assert!(r.online());
    assert_eq!(
        r.last_stop.as_ref().expect("stop").outcome,
        StopOutcome::Stopped
    );
    assert_eq!(r.last_exit.as_ref().expect("exit").exit_code, 137);
    let start = r.last_start.as_ref().expect("start");
    assert_eq!(start.outcome, StartOutcome::Started);
    assert_eq!(
        start.requested_at,
        r.last_stop.as_ref().expect("s").requested_at
    );
    assert_eq!(start.restored_restart_policy.as_deref(), Some("always"));
    assert!(r.metrics.expect("m").started_at > before.metrics.expect("m").started_at);
    let calls = f.fake.calls();
    let stop = calls
        .iter()
        .position(|c| c.starts_with("stop"))
        .expect("stop");
    let started = calls
        .iter()
        .position(|c| c.starts_with("start"))
        .expect("start");
    assert!(stop < started, "{calls:?}");
    // A restart of a stopped app starts it.
    f.stopped("a", None).await;
    let r = f
        .agent
        .restart(&operator(), &id("a"), StopRequest::default(), Route::V1)
        .await
        .expect("restarted");
    assert!(r.online());
    assert!(
        !f.fake.calls().iter().any(|c| c.starts_with("stop")),
        "{:?}",
        f.fake.calls()
    );
}

#[tokio::test]
async fn a_restart_whose_stop_fails_starts_nothing() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.fake
        .fail_next("stop", RuntimeError::Engine("stop refused".into()));
    let err = f
        .agent
        .restart(&operator(), &id("a"), StopRequest::default(), Route::V1)
        .await;
    assert!(matches!(err, Err(AgentError::Engine(_))), "{err:?}");
    assert!(
        !f.fake.calls().iter().any(|c| c.starts_with("start")),
        "{:?}",
        f.fake.calls()
    );
    let r = f.stored("a").await.expect("record");
    assert!(r.online());
    assert_eq!(r.last_stop.expect("stop").outcome, StopOutcome::Failed);
    let start = r.last_start.expect("start");
    assert_eq!(start.outcome, StartOutcome::Failed);
    assert!(start.error.expect("why").contains("stop refused"));
}

#[tokio::test]
async fn a_restart_whose_start_fails_leaves_the_record_stopped_with_the_error() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.fake
        .fail_next("start", RuntimeError::Engine("no such image layer".into()));
    let err = f
        .agent
        .restart(&operator(), &id("a"), StopRequest::default(), Route::V1)
        .await;
    assert!(matches!(err, Err(AgentError::Engine(_))), "{err:?}");
    let r = f.stored("a").await.expect("record");
    assert!(!r.online());
    assert_eq!(r.last_stop.expect("stop").outcome, StopOutcome::Stopped);
    let start = r.last_start.expect("start");
    assert_eq!(start.outcome, StartOutcome::Failed);
    assert!(start.error.expect("why").contains("no such image layer"));
}

#[tokio::test]
async fn an_interrupted_start_is_made_true_at_the_next_start() {
    let f = fixture(
        true,
        &[
            ("a", json!({"containerId": "ca"})),
            ("b", json!({"containerId": "cb"})),
        ],
    )
    .await;
    f.stopped("a", Some("always")).await;
    f.stopped("b", Some("always")).await;
    // The agent dies during both starts: "a" after the engine started it, "b" before.
    f.fake.gate("start");
    for app in ["a", "b"] {
        let agent = f.agent.clone();
        tokio::spawn(async move { agent.start(&operator(), &id(app), Route::V1).await });
        f.fake.entered().await;
        assert!(
            f.stored(app).await.expect("record").start_pending(),
            "intent first"
        );
    }
    f.fake.start_by_hand("ca");
    let restarted = f.restarted();
    restarted.reconcile_all().await.expect("reconciled");
    let a = f.stored("a").await.expect("a");
    assert!(a.online());
    assert_eq!(
        a.last_start.as_ref().expect("start").outcome,
        StartOutcome::Interrupted
    );
    assert_eq!(f.fake.state("ca").restart_policy.as_deref(), Some("always"));
    let b = f.stored("b").await.expect("b");
    assert!(!b.online());
    assert_eq!(
        b.last_start.as_ref().expect("start").outcome,
        StartOutcome::Interrupted
    );
    assert_eq!(
        f.fake.state("cb").restart_policy.as_deref(),
        Some("no"),
        "a stopped app keeps `no`"
    );
    f.fake.release();
}

#[tokio::test]
async fn an_event_held_back_during_a_start_is_looked_at_once_it_ends() {
    let f = fixture(true, &[("a", json!({"containerId": "ca"}))]).await;
    f.stopped("a", Some("always")).await;
    f.agent.spawn_watcher();
    wait_for(|| f.fake.watchers() > 0).await;
    // The start is held while it gives the restart policy back: the container runs.
    f.fake.gate("update");
    let agent = f.agent.clone();
    let start = tokio::spawn(async move { agent.start(&operator(), &id("a"), Route::V1).await });
    f.fake.entered().await;
    // An event comes meanwhile; the watcher's observation of it is held back.
    f.fake.start_by_hand("ca");
    let missed = || {
        f.agent
            .inner
            .operations
            .lock()
            .get(&id("a"))
            .is_some_and(|u| u.missed)
    };
    wait_for(missed).await;
    // Let the watcher finish with both start events (the start's own and the one by hand).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The container dies right after the start's last look at it, and no event says so.
    f.fake.exit_after("inspect", "ca");
    f.fake.release();
    let r = start.await.expect("task").expect("started");
    assert!(r.online(), "the start saw it running");
    // Once the start ends, the held-back observation is made: the record says what the engine says.
    wait_for(|| !f.fake.state("ca").running).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = f.stored("a").await.expect("record");
        if !r.online() {
            assert_eq!(r.last_exit.expect("exit").exit_code, 1);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_drain_under_way_when_the_agent_died_goes_on_at_its_next_start() {
    let f = fixture(
        true,
        &[
            ("a", json!({"containerId": "ca"})),
            ("b", json!({"containerId": "cb"})),
        ],
    )
    .await;
    // The agent dies while its drain's stops are in the engine's hands.
    f.fake.gate("stop");
    let (summary, done) = f
        .agent
        .drain(
            &operator(),
            DrainRequest::default(),
            NodeReason::Drain,
            false,
        )
        .await
        .expect("drain");
    assert!(!done);
    assert_eq!(summary.state, DrainState::Draining);
    f.fake.entered().await;
    let restarted = f.restarted();
    restarted.take_up_drain().await.expect("taken up");
    let kept = restarted.drain_summary().expect("kept");
    assert_eq!(
        (kept.state, kept.started_at),
        (DrainState::Draining, summary.started_at)
    );
    // Starts are refused from the first request of the new agent.
    let refused = restarted.start(&operator(), &id("a"), Route::V1).await;
    assert!(
        matches!(refused, Err(AgentError::NodeDraining { .. })),
        "{refused:?}"
    );
    f.fake.release();
    wait_for(|| {
        restarted
            .drain_summary()
            .is_some_and(|s| s.state == DrainState::Drained)
    })
    .await;
    for app in ["a", "b"] {
        let r = f.stored(app).await.expect("record");
        assert!(!r.online(), "{app}: {r:?}");
        let stop = r.last_stop.expect("stop");
        assert_eq!(stop.reason, Some(NodeReason::Drain), "{app}");
        assert!(!stop.under_way(), "{app}");
    }
    // The end starts again exactly what the drain stopped.
    let ended = restarted.end_drain(&operator(), true).await.expect("ended");
    assert_eq!(ended.state, DrainState::Ended);
    assert_eq!(ended.apps.started_again, Some(2));
    assert!(f.stored("a").await.expect("a").online());
}
