//! The agent's own figures for Prometheus: stops, starts and restarts by route and outcome, their
//! durations, the age of
//! final samples, HTTP answers by status, engine reachability and records. Counters are bumped where
//! things happen; gauges that describe the present are set when `/metrics` is scraped.

use std::fmt::Write as _;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::operation::Operation;

/// The route an operation came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/apps/{appId}/stop` (`/start`, `/restart`), answered when the operation is done.
    V1,
    /// `POST /api/apps/{id}/stop/` (`/start/`), answered at once and done in the background.
    Okeanos,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::V1 => "v1",
            Route::Okeanos => "okeanos",
        }
    }
}

/// Outcomes a stop request is counted under. The container was stopped:
pub const STOPPED: &str = "stopped";
/// It was not running (any more).
pub const ALREADY_STOPPED: &str = "already_stopped";
/// A stop of the same app was under way.
pub const IN_PROGRESS: &str = "in_progress";
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
            REFUSED,
            ENGINE_UNAVAILABLE,
            FAILED,
        ],
        Operation::Restart => &[
            STARTED,
            EXITED,
            CONTAINER_MISSING,
            IN_PROGRESS,
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// Upper bounds of the duration buckets, in seconds: a start or a SIGKILL takes a fraction of a
/// second, a stop that waits out its grace period takes that period, up to an hour.
const STOP_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 600.0, 3600.0,
];

/// Upper bounds of the final-sample age buckets, in seconds: a streamed reading is under 1.5 s old.
const AGE_BUCKETS: [f64; 9] = [0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0];

/// The agent's figures, shared by the core and the HTTP layer.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    /// By operation, in the order of [`Operation::ALL`].
    counts: [Family<OutcomeLabels, Counter>; 3],
    seconds: [Family<RouteLabels, Histogram>; 3],
    sample_age: Histogram,
    http: Family<StatusLabels, Counter>,
    engine_up: Gauge,
    records: Family<StateLabels, Gauge>,
    stops_in_progress: Gauge,
    uptime: Gauge<f64, std::sync::atomic::AtomicU64>,
    started: Instant,
}

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
        let uptime = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "uptime_seconds",
            "Seconds since the agent started",
            uptime.clone(),
        );
        Telemetry {
            registry,
            counts,
            seconds,
            sample_age,
            http,
            engine_up,
            records,
            stops_in_progress,
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

    /// An HTTP request was answered with this status.
    pub fn http_answered(&self, status: u16) {
        self.http
            .get_or_create(&StatusLabels { code: status })
            .inc();
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
        self.uptime.set(self.started.elapsed().as_secs_f64());
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
        t.http_answered(200);
        t.http_answered(401);
        t.http_answered(401);
        let text = t.render(&Present {
            engine_up: true,
            online: 3,
            offline: 1,
            stops_in_progress: 0,
        });
        for line in [
            "node_agent_stops_total{route=\"v1\",outcome=\"stopped\"} 1",
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
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
