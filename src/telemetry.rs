//! The agent's own figures for Prometheus: stops, starts and restarts by route and outcome, their
//! durations, the age of
//! final samples, HTTP answers by status, engine reachability and records, and the reports to the
//! control plane (sent by outcome, pending, the age of the oldest, and the sender's state for
//! `/v1/node`). Counters are bumped where things happen; gauges that describe the present are set
//! when `/metrics` is scraped.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::lifecycle::Operation;
use crate::stats::{SamplePurpose as Purpose, SampleSource};

/// The route an operation came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/apps/{appId}/stop` (`/start`, `/restart`), answered when the operation is done.
    V1,
    /// `POST /api/apps/{id}/stop/` (`/start/`), answered at once and done in the background.
    Okeanos,
    /// The node's own: a drain's stops, and the starts of its end.
    Node,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::V1 => "v1",
            Route::Okeanos => "okeanos",
            Route::Node => "node",
        }
    }
}

/// Outcomes a stop request is counted under. The container was stopped:
pub const STOPPED: &str = "stopped";
/// It was not running (any more).
pub const ALREADY_STOPPED: &str = "already_stopped";
/// A stop of the same app was under way.
pub const IN_PROGRESS: &str = "in_progress";
/// A start or restart refused while the node is draining or drained.
pub const NODE_DRAINING: &str = "node_draining";
/// Refused before the engine was asked anything: a bad or missing token, a malformed request, an
/// app the caller may not see or stop.
pub const REFUSED: &str = "refused";
/// The engine could not be reached.
pub const ENGINE_UNAVAILABLE: &str = "engine_unavailable";
/// The engine refused, or the store or the agent failed.
pub const FAILED: &str = "failed";
/// A start (or a restart's start) left the container running:
pub const STARTED: &str = "started";
/// The container runs already (a start).
pub const ALREADY_RUNNING: &str = "already_running";
/// The container no longer exists (a start or a restart).
pub const CONTAINER_MISSING: &str = "container_missing";
/// The engine started the container, and it exited at once.
pub const EXITED: &str = "exited";

/// How a report (one POST of a batch of changes) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// A 2xx: the batch is acknowledged.
    Acknowledged,
    /// Any other 4xx but 408 and 429: the batch is dropped, and later changes go on.
    Rejected,
    /// A 5xx, 408 or 429: sent again after a backoff.
    Retried,
    /// No answer within the time limit: sent again after a backoff.
    TimedOut,
    /// No connection, or a TLS or network error: sent again after a backoff.
    Unreachable,
}

impl ReportOutcome {
    pub const ALL: [ReportOutcome; 5] = [
        ReportOutcome::Acknowledged,
        ReportOutcome::Rejected,
        ReportOutcome::Retried,
        ReportOutcome::TimedOut,
        ReportOutcome::Unreachable,
    ];

    /// Whether the batch leaves the outbox: acknowledged, or dropped.
    pub fn ends_batch(self) -> bool {
        matches!(self, ReportOutcome::Acknowledged | ReportOutcome::Rejected)
    }

    pub fn label(self) -> &'static str {
        match self {
            ReportOutcome::Acknowledged => "acknowledged",
            ReportOutcome::Rejected => "rejected",
            ReportOutcome::Retried => "retried",
            ReportOutcome::TimedOut => "timeout",
            ReportOutcome::Unreachable => "unreachable",
        }
    }
}

/// The report sender's state, as `GET /v1/node` shows it.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportStatus {
    /// Whether `[report] url` is set.
    pub enabled: bool,
    /// The control plane's host and port (never the path or the token).
    pub host: Option<String>,
    /// When a report was last acknowledged.
    #[serde(with = "crate::record::rfc3339_millis::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_success_at: Option<DateTime<Utc>>,
    /// Why the last report that failed failed.
    pub last_error: Option<String>,
    #[serde(with = "crate::record::rfc3339_millis::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_error_at: Option<DateTime<Utc>>,
    /// Changes not yet acknowledged (one per app at most).
    pub pending: usize,
    /// Age of the oldest change not yet acknowledged.
    pub oldest_pending_age_seconds: Option<f64>,
    /// The highest generation acknowledged, and the latest committed.
    pub acknowledged_generation: u64,
    pub generation: u64,
}

/// The outcomes each operation is counted under; every series exists from the start.
fn outcomes(op: Operation) -> &'static [&'static str] {
    match op {
        Operation::Stop => &[
            STOPPED,
            ALREADY_STOPPED,
            IN_PROGRESS,
            REFUSED,
            ENGINE_UNAVAILABLE,
            FAILED,
        ],
        Operation::Start => &[
            STARTED,
            EXITED,
            ALREADY_RUNNING,
            CONTAINER_MISSING,
            IN_PROGRESS,
            NODE_DRAINING,
            REFUSED,
            ENGINE_UNAVAILABLE,
            FAILED,
        ],
        Operation::Restart => &[
            STARTED,
            EXITED,
            CONTAINER_MISSING,
            IN_PROGRESS,
            NODE_DRAINING,
            REFUSED,
            ENGINE_UNAVAILABLE,
            FAILED,
        ],
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    route: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    code: u16,
}

/// A label of one outcome: a report's, or an app's in the node's drain.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReportLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SampleLabels {
    source: &'static str,
    purpose: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

/// Upper bounds of the duration buckets, in seconds: a start or a SIGKILL takes a fraction of a
/// second, a stop that waits out its grace period takes that period, up to an hour.
const STOP_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 600.0, 3600.0,
];

/// Upper bounds of the final-sample age buckets, in seconds: a reading of the host's files is a
/// millisecond old or less, one of the engine's stream under 1.5 s.
const AGE_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0,
];

/// The agent's figures, shared by the core and the HTTP layer.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    /// By operation, in the order of [`Operation::ALL`].
    counts: [Family<OutcomeLabels, Counter>; 3],
    seconds: [Family<RouteLabels, Histogram>; 3],
    sample_age: Histogram,
    samples: Family<SampleLabels, Counter>,
    sample_fallbacks: Counter,
    followed: Family<SourceLabels, Gauge>,
    http: Family<StatusLabels, Counter>,
    engine_up: Gauge,
    records: Family<StateLabels, Gauge>,
    stops_in_progress: Gauge,
    waits_in_progress: Gauge,
    uptime: Gauge<f64, std::sync::atomic::AtomicU64>,
    reports: Family<ReportLabels, Counter>,
    reported_changes: Family<ReportLabels, Counter>,
    report_pending: Gauge,
    report_oldest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    report_status: Mutex<ReportStatus>,
    events: Family<TypeLabels, Counter>,
    events_dropped: Counter,
    drain_state: Family<StateLabels, Gauge>,
    drain_apps: Family<ReportLabels, Gauge>,
    drain_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    shutdown_lock_held: Gauge,
    shutdown_cut_short: Gauge,
    shutdown_drain_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    shutdown_began: Gauge<f64, std::sync::atomic::AtomicU64>,
    shutdown_apps: Family<ReportLabels, Gauge>,
    started: Instant,
}

/// The states of the node's drain, as `/metrics` labels them.
const DRAIN_STATES: [&str; 4] = ["none", "draining", "drained", "ended"];

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let mut registry = Registry::with_prefix("node_agent");
        let counts = Operation::ALL.map(|op| {
            let family = Family::<OutcomeLabels, Counter>::default();
            // Every series exists from the start, at 0, so that rates and alerts see the first one.
            for route in [Route::V1, Route::Okeanos] {
                if op == Operation::Restart && route == Route::Okeanos {
                    continue;
                }
                for outcome in outcomes(op) {
                    let _created = family.get_or_create(&OutcomeLabels {
                        route: route.label(),
                        outcome,
                    });
                }
            }
            registry.register(
                format!("{}s", op.verb()),
                format!(
                    "{} requests, by route and outcome ({})",
                    capitalized(op.verb()),
                    outcomes(op).join(", ")
                ),
                family.clone(),
            );
            family
        });
        let seconds = Operation::ALL.map(|op| {
            let family = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(STOP_BUCKETS)
            });
            registry.register(
                format!("{}_duration_seconds", op.verb()),
                format!(
                    "Time from a {0}'s admission to its recorded end ({0}s refused at admission are not timed)",
                    op.verb()
                ),
                family.clone(),
            );
            family
        });
        let sample_age = Histogram::new(AGE_BUCKETS);
        registry.register(
            "final_sample_age_seconds",
            "Age of the final resource sample when the stop signal was sent",
            sample_age.clone(),
        );
        let samples = Family::<SampleLabels, Counter>::default();
        for source in [SampleSource::Cgroup, SampleSource::Engine] {
            for purpose in [Purpose::Final, Purpose::Read] {
                let _created = samples.get_or_create(&SampleLabels {
                    source: source.label(),
                    purpose: purpose.label(),
                });
            }
        }
        registry.register(
            "samples",
            "Resource samples taken, by where their figures were read (cgroup: the host's files; engine: the engine's stats) and what for (final: a stop's; read: a read's fresh figures)",
            samples.clone(),
        );
        let sample_fallbacks = Counter::default();
        registry.register(
            "sample_fallbacks",
            "Containers whose figures had to come from the engine's stats because the host's files could not give them (the log says why)",
            sample_fallbacks.clone(),
        );
        let followed = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "followed_containers",
            "Running containers whose figures are followed, by source (cgroup: read on the host once a second; engine: the engine's stats stream)",
            followed.clone(),
        );
        let http = Family::<StatusLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by status code",
            http.clone(),
        );
        let engine_up = Gauge::default();
        registry.register(
            "engine_up",
            "1 when the Docker engine answered a ping at the last scrape, else 0",
            engine_up.clone(),
        );
        let records = Family::<StateLabels, Gauge>::default();
        registry.register(
            "records",
            "App records in the store, by whether the app is online",
            records.clone(),
        );
        let stops_in_progress = Gauge::default();
        registry.register(
            "stops_in_progress",
            "Stops under way at the last scrape",
            stops_in_progress.clone(),
        );
        let waits_in_progress = Gauge::default();
        registry.register(
            "waits_in_progress",
            "Waits (GET /v1/apps/{appId}/wait) under way, of every token",
            waits_in_progress.clone(),
        );
        let uptime = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "uptime_seconds",
            "Seconds since the agent started",
            uptime.clone(),
        );
        let reports = Family::<ReportLabels, Counter>::default();
        let reported_changes = Family::<ReportLabels, Counter>::default();
        for outcome in ReportOutcome::ALL {
            let labels = ReportLabels {
                outcome: outcome.label(),
            };
            let _created = reports.get_or_create(&labels);
            if outcome.ends_batch() {
                let _created = reported_changes.get_or_create(&labels);
            }
        }
        registry.register(
            "reports",
            "Reports POSTed to the control plane, by outcome (acknowledged; rejected: a 4xx, \
             dropped; retried: 5xx, 408 or 429; timeout; unreachable)",
            reports.clone(),
        );
        registry.register(
            "reported_changes",
            "Changes in reports the control plane acknowledged, or rejected (dropped)",
            reported_changes.clone(),
        );
        let report_pending = Gauge::default();
        registry.register(
            "report_pending_changes",
            "Changes not yet acknowledged by the control plane, at the last scrape",
            report_pending.clone(),
        );
        let report_oldest_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "report_oldest_pending_age_seconds",
            "Age of the oldest change not yet acknowledged (0 when none is pending)",
            report_oldest_age.clone(),
        );
        let events = Family::<TypeLabels, Counter>::default();
        for t in crate::events::EventType::ALL {
            let _created = events.get_or_create(&TypeLabels { r#type: t.as_str() });
        }
        registry.register(
            "events",
            "Events written to the apps' histories, by type (`exited`: an app's process ended on its own)",
            events.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "events_dropped",
            "Events dropped before the control plane acknowledged them: an app past the most it keeps undelivered",
            events_dropped.clone(),
        );
        let drain_state = Family::<StateLabels, Gauge>::default();
        for state in DRAIN_STATES {
            let _created = drain_state.get_or_create(&StateLabels { state });
        }
        registry.register(
            "drain_state",
            "The node's drain: 1 for the state it is in (none, draining, drained, ended), else 0",
            drain_state.clone(),
        );
        let drain_apps = Family::<ReportLabels, Gauge>::default();
        registry.register(
            "drain_apps",
            "Apps of the node's last drain, by outcome (stopped, already_stopped, \
             killed_at_deadline, failed)",
            drain_apps.clone(),
        );
        let drain_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "drain_duration_seconds",
            "How long the node's last finished drain took, from its start to its last stop",
            drain_seconds.clone(),
        );
        let shutdown_lock_held = Gauge::default();
        registry.register(
            "shutdown_lock_held",
            "1 while the agent holds systemd-logind's delay lock on shutdown, else 0",
            shutdown_lock_held.clone(),
        );
        let shutdown_cut_short = Gauge::default();
        registry.register(
            "shutdown_budget_cut_short",
            "1 when logind's InhibitDelayMaxUSec is shorter than [shutdown] grace_secs + report_secs",
            shutdown_cut_short.clone(),
        );
        let shutdown_drain_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "shutdown_drain_seconds",
            "How long the drain of the node's last shutdown took",
            shutdown_drain_seconds.clone(),
        );
        let shutdown_began = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "shutdown_last_timestamp_seconds",
            "When the node's last shutdown began (Unix time), 0 when it never shut down with the lock",
            shutdown_began.clone(),
        );
        let shutdown_apps = Family::<ReportLabels, Gauge>::default();
        registry.register(
            "shutdown_apps",
            "Apps of the node's last shutdown, by outcome (stopped, killed_at_deadline)",
            shutdown_apps.clone(),
        );
        Telemetry {
            registry,
            shutdown_lock_held,
            shutdown_cut_short,
            shutdown_drain_seconds,
            shutdown_began,
            shutdown_apps,
            drain_state,
            drain_apps,
            drain_seconds,
            reports,
            reported_changes,
            report_pending,
            report_oldest_age,
            report_status: Mutex::default(),
            events,
            events_dropped,
            counts,
            seconds,
            sample_age,
            samples,
            sample_fallbacks,
            followed,
            http,
            engine_up,
            records,
            stops_in_progress,
            waits_in_progress,
            uptime,
            started: Instant::now(),
        }
    }

    /// A request for `op` ended, in the outcome named.
    pub fn ended(&self, op: Operation, route: Route, outcome: &'static str) {
        self.counts[index(op)]
            .get_or_create(&OutcomeLabels {
                route: route.label(),
                outcome,
            })
            .inc();
    }

    /// An admitted `op` took this long, from admission to its recorded end.
    pub fn took(&self, op: Operation, route: Route, seconds: f64) {
        self.seconds[index(op)]
            .get_or_create(&RouteLabels {
                route: route.label(),
            })
            .observe(seconds);
    }

    /// A stop's final sample was this old when the stop began.
    pub fn final_sample_age(&self, seconds: f64) {
        self.sample_age.observe(seconds.max(0.0));
    }

    /// A sample's figures were read from `source`, for `purpose`.
    pub fn sampled(&self, source: SampleSource, purpose: Purpose) {
        self.samples
            .get_or_create(&SampleLabels {
                source: source.label(),
                purpose: purpose.label(),
            })
            .inc();
    }

    /// A container's figures could not be read from the host's files.
    pub fn sample_fallback(&self) {
        self.sample_fallbacks.inc();
    }

    /// An HTTP request was answered with this status.
    pub fn http_answered(&self, status: u16) {
        self.http
            .get_or_create(&StatusLabels { code: status })
            .inc();
    }

    /// A report of `changes` changes ended in `outcome`; `error` says why when it failed.
    pub fn reported(&self, outcome: ReportOutcome, changes: usize, error: Option<String>) {
        let labels = ReportLabels {
            outcome: outcome.label(),
        };
        self.reports.get_or_create(&labels).inc();
        if outcome.ends_batch() {
            self.reported_changes
                .get_or_create(&labels)
                .inc_by(u64::try_from(changes).unwrap_or(u64::MAX));
        }
        let mut status = self.report_status.lock().unwrap_or_else(|p| p.into_inner());
        let now = Utc::now();
        match error {
            None => status.last_success_at = Some(now),
            Some(e) => {
                status.last_error = Some(e);
                status.last_error_at = Some(now);
            }
        }
    }

    /// The report sender is configured to send to `host`.
    pub fn reporting_to(&self, host: String) {
        let mut status = self.report_status.lock().unwrap_or_else(|p| p.into_inner());
        status.enabled = true;
        status.host = Some(host);
    }

    /// The sender's state, with the outbox as `outbox` describes it. Without a sender nothing is
    /// pending: nothing is meant to be sent.
    pub fn report_status(&self, outbox: &crate::store::OutboxState) -> ReportStatus {
        let mut status = self
            .report_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        status.acknowledged_generation = outbox.acknowledged;
        status.generation = outbox.head;
        if !status.enabled {
            return status;
        }
        status.pending = outbox.pending;
        status.oldest_pending_age_seconds = outbox.oldest_age_secs(Utc::now());
        status
    }

    /// Seconds since the agent started.
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The figures in Prometheus' text format, with the present described by `now`.
    pub fn render(&self, now: &Present) -> String {
        self.engine_up.set(i64::from(now.engine_up));
        self.records
            .get_or_create(&StateLabels { state: "online" })
            .set(i64::try_from(now.online).unwrap_or(i64::MAX));
        self.records
            .get_or_create(&StateLabels { state: "offline" })
            .set(i64::try_from(now.offline).unwrap_or(i64::MAX));
        self.stops_in_progress
            .set(i64::try_from(now.stops_in_progress).unwrap_or(i64::MAX));
        self.waits_in_progress
            .set(i64::try_from(now.waits_in_progress).unwrap_or(i64::MAX));
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let drain = &now.drain;
        for state in DRAIN_STATES {
            self.drain_state
                .get_or_create(&StateLabels { state })
                .set(i64::from(state == drain.state));
        }
        for (outcome, n) in [
            ("stopped", drain.stopped),
            ("already_stopped", drain.already_stopped),
            ("killed_at_deadline", drain.killed_at_deadline),
            ("failed", drain.failed),
        ] {
            self.drain_apps
                .get_or_create(&ReportLabels { outcome })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.drain_seconds.set(drain.duration_secs.unwrap_or(0.0));
        let shutdown = &now.shutdown;
        self.shutdown_lock_held.set(i64::from(shutdown.lock_held));
        self.shutdown_cut_short.set(i64::from(shutdown.cut_short));
        self.shutdown_drain_seconds.set(shutdown.drain_secs);
        self.shutdown_began.set(
            shutdown
                .began_at
                .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0),
        );
        for (outcome, n) in [
            ("stopped", shutdown.stopped),
            ("killed_at_deadline", shutdown.killed_at_deadline),
        ] {
            self.shutdown_apps
                .get_or_create(&ReportLabels { outcome })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        for (t, n) in crate::events::EventType::ALL.iter().zip(now.events_written) {
            let counter = self
                .events
                .get_or_create(&TypeLabels { r#type: t.as_str() });
            counter.inc_by(n.saturating_sub(counter.get()));
        }
        self.events_dropped
            .inc_by(now.events_dropped.saturating_sub(self.events_dropped.get()));
        self.report_pending
            .set(i64::try_from(now.report_pending).unwrap_or(i64::MAX));
        self.report_oldest_age.set(now.report_oldest_age_secs);
        for (source, n) in [
            (SampleSource::Cgroup, now.followed_on_host),
            (SampleSource::Engine, now.followed_streams),
        ] {
            self.followed
                .get_or_create(&SourceLabels {
                    source: source.label(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            // Encoding into a String cannot fail; should it, the scrape says so rather than lie.
            out.clear();
            let _ = writeln!(out, "# the agent could not encode its metrics");
        }
        out
    }
}

fn index(op: Operation) -> usize {
    match op {
        Operation::Stop => 0,
        Operation::Start => 1,
        Operation::Restart => 2,
    }
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// What `/metrics` reports about the present moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Present {
    pub engine_up: bool,
    pub online: usize,
    pub offline: usize,
    pub stops_in_progress: usize,
    /// Waits under way, of every token.
    pub waits_in_progress: usize,
    /// Changes not yet acknowledged by the control plane, and the age of the oldest.
    pub report_pending: usize,
    pub report_oldest_age_secs: f64,
    /// Running containers followed on the host's files, and through the engine's stream.
    pub followed_on_host: usize,
    pub followed_streams: usize,
    /// The node's drain.
    pub drain: DrainFigures,
    /// The node's shutdown.
    pub shutdown: ShutdownFigures,
    /// Events written to the histories since the agent started, in `EventType::ALL`'s order.
    pub events_written: [u64; crate::events::EventType::ALL.len()],
    /// Events dropped before the control plane had them, since the agent started.
    pub events_dropped: u64,
}

/// Figures of the node's shutdown: logind's lock, and the last shutdown's drain.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShutdownFigures {
    pub lock_held: bool,
    pub cut_short: bool,
    /// When the last shutdown began, if the node was ever shut down with the agent's lock.
    pub began_at: Option<chrono::DateTime<chrono::Utc>>,
    pub drain_secs: f64,
    pub stopped: usize,
    pub killed_at_deadline: usize,
}

/// Figures of the node's drain.
#[derive(Debug, Clone, Copy)]
pub struct DrainFigures {
    /// `draining`, `drained`, `ended`, or `none` when the node was never drained.
    pub state: &'static str,
    pub stopped: usize,
    pub already_stopped: usize,
    pub killed_at_deadline: usize,
    pub failed: usize,
    /// How long the last drain that finished took, in seconds.
    pub duration_secs: Option<f64>,
}

impl Default for DrainFigures {
    fn default() -> Self {
        DrainFigures {
            state: "none",
            stopped: 0,
            already_stopped: 0,
            killed_at_deadline: 0,
            failed: 0,
            duration_secs: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_in_prometheus_text() {
        let t = Telemetry::new();
        t.ended(Operation::Stop, Route::V1, "stopped");
        t.ended(Operation::Stop, Route::Okeanos, "refused");
        t.took(Operation::Stop, Route::V1, 0.3);
        t.ended(Operation::Start, Route::Okeanos, STARTED);
        t.ended(Operation::Restart, Route::V1, EXITED);
        t.took(Operation::Restart, Route::V1, 1.2);
        t.final_sample_age(0.8);
        t.sampled(SampleSource::Cgroup, Purpose::Final);
        t.sample_fallback();
        t.http_answered(200);
        t.http_answered(401);
        t.http_answered(401);
        t.reported(ReportOutcome::Acknowledged, 3, None);
        t.reported(ReportOutcome::Rejected, 2, Some("400".into()));
        t.reported(ReportOutcome::TimedOut, 4, Some("timeout".into()));
        let text = t.render(&Present {
            engine_up: true,
            online: 3,
            offline: 1,
            stops_in_progress: 0,
            waits_in_progress: 2,
            report_pending: 2,
            report_oldest_age_secs: 1.5,
            followed_on_host: 7,
            followed_streams: 1,
            drain: DrainFigures {
                state: "drained",
                stopped: 4,
                killed_at_deadline: 1,
                duration_secs: Some(2.5),
                ..DrainFigures::default()
            },
            shutdown: ShutdownFigures {
                lock_held: true,
                drain_secs: 4.5,
                stopped: 3,
                ..ShutdownFigures::default()
            },
            events_written: [0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0],
            events_dropped: 2,
        });
        for line in [
            "node_agent_samples_total{source=\"cgroup\",purpose=\"final\"} 1",
            "node_agent_samples_total{source=\"engine\",purpose=\"read\"} 0",
            "node_agent_sample_fallbacks_total 1",
            "node_agent_followed_containers{source=\"cgroup\"} 7",
            "node_agent_waits_in_progress 2",
            "node_agent_followed_containers{source=\"engine\"} 1",
            "node_agent_stops_total{route=\"v1\",outcome=\"stopped\"} 1",
            "node_agent_drain_state{state=\"drained\"} 1",
            "node_agent_drain_state{state=\"draining\"} 0",
            "node_agent_drain_apps{outcome=\"stopped\"} 4",
            "node_agent_drain_apps{outcome=\"killed_at_deadline\"} 1",
            "node_agent_drain_duration_seconds 2.5",
            "node_agent_events_total{type=\"exited\"} 3",
            "node_agent_events_total{type=\"stopped\"} 0",
            "node_agent_events_dropped_total 2",
            "node_agent_shutdown_lock_held 1",
            "node_agent_shutdown_budget_cut_short 0",
            "node_agent_shutdown_drain_seconds 4.5",
            "node_agent_shutdown_apps{outcome=\"stopped\"} 3",
            "node_agent_stops_total{route=\"okeanos\",outcome=\"refused\"} 1",
            "node_agent_stop_duration_seconds_bucket{le=\"0.5\",route=\"v1\"} 1",
            "node_agent_stop_duration_seconds_count{route=\"v1\"} 1",
            "node_agent_starts_total{route=\"okeanos\",outcome=\"started\"} 1",
            "node_agent_starts_total{route=\"v1\",outcome=\"already_running\"} 0",
            "node_agent_restarts_total{route=\"v1\",outcome=\"exited\"} 1",
            "node_agent_restart_duration_seconds_bucket{le=\"2.5\",route=\"v1\"} 1",
            "node_agent_final_sample_age_seconds_count 1",
            "node_agent_http_requests_total{code=\"401\"} 2",
            "node_agent_engine_up 1",
            "node_agent_records{state=\"online\"} 3",
            "node_agent_records{state=\"offline\"} 1",
            "node_agent_reports_total{outcome=\"acknowledged\"} 1",
            "node_agent_reports_total{outcome=\"rejected\"} 1",
            "node_agent_reports_total{outcome=\"timeout\"} 1",
            "node_agent_reports_total{outcome=\"unreachable\"} 0",
            "node_agent_reported_changes_total{outcome=\"acknowledged\"} 3",
            "node_agent_reported_changes_total{outcome=\"rejected\"} 2",
            "node_agent_report_pending_changes 2",
            "node_agent_report_oldest_pending_age_seconds 1.5",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
