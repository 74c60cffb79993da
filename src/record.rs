//! The application record: its id, the keys the control plane registers, and the keys the agent owns.
//!
//! A record is kept as the control plane gave it (every key, in its order), beside the few keys the
//! agent owns: `workerNodeId`, `currentResourceMetrics`, `lastExit` and `updatedAt`. The documented
//! keys are type-checked on registration so that a record always answers in the documented shape.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest app id accepted.
pub const MAX_APP_ID_LEN: usize = 128;

/// An application id: 1–128 characters from `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(String);

impl AppId {
    /// Checks `raw` against the id grammar. `.` and `..` are refused too: they are URL dot-segments,
    /// which clients and proxies rewrite, so no request could name such an app reliably.
    pub fn parse(raw: &str) -> Result<AppId, RecordError> {
        let ok = !raw.is_empty()
            && raw != "."
            && raw != ".."
            && raw.len() <= MAX_APP_ID_LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(AppId(raw.to_owned()))
        } else {
            Err(RecordError::BadAppId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AppId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a registration body or an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("an app id is 1 to {MAX_APP_ID_LEN} characters from [A-Za-z0-9._-], and not . or ..")]
    BadAppId,
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("`containerId` is required: the Docker container name or id of the app")]
    MissingContainerId,
    #[error("`containerId` must be a Docker container name or id, not {0:?}")]
    BadContainerId(String),
    #[error("`_id` is {body:?} but the path names app {path:?}")]
    IdMismatch { body: String, path: String },
    #[error("`{key}` must be {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
    },
    #[error("`workerNodeId._id` is {given:?} but this is node {node:?}")]
    WrongNode { given: String, node: String },
}

/// This node as the records name it (`workerNodeId`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerNode {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "nodeName")]
    pub node_name: String,
}

/// `currentResourceMetrics`: the container's last sample, as `docker stats` computes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceMetrics {
    /// When the sample was taken (or the state observed).
    #[serde(with = "rfc3339_millis")]
    pub timestamp: DateTime<Utc>,
    /// Whether the container runs.
    pub online: bool,
    /// Whole seconds from the container's start to now, or to its exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime: Option<u64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rfc3339_millis::option",
        default
    )]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_usage_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_usage_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_rx_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_tx_bytes: Option<u64>,
    /// Where the sample's figures were read: `cgroup` (the container's cgroup files, read by the
    /// agent at the moment of the sample) or `engine` (the engine's stats).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sample_source: Option<crate::stats::SampleSource>,
}

/// `engineUnavailable`: present on a record read while the engine could not be asked. The record
/// is then the one stored, its `currentResourceMetrics` the last the agent knew (sampled at their
/// `timestamp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineUnavailable {
    /// Since when the engine has not answered.
    #[serde(with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub since: DateTime<Utc>,
    /// Why, as the last attempt to reach it failed.
    pub message: String,
}

/// `engineUnavailable.message` of a record whose container the agent has not seen yet.
pub const UNSEEN: &str = "the container has not been seen yet: the engine could not be asked \
     when the record was registered; the record is made true once it answers";

impl AppRecord {
    /// The record as answered, with `engineUnavailable` when the engine could not be asked.
    pub fn to_json_marked(&self, node: &WorkerNode, away: Option<&EngineUnavailable>) -> Value {
        let mut out = self.to_json(node);
        if let (Some(away), Value::Object(map)) = (away, &mut out) {
            map.insert("engineUnavailable".into(), json_of(away));
        }
        out
    }
}

/// `lastExit`: how the container's last run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastExit {
    /// The exit code Docker reports; 128 + n when signal n ended the process.
    pub exit_code: i64,
    /// The signal that ended the process, when the exit code says one did (`SIGKILL`, `SIGTERM`…).
    pub signal: Option<String>,
    /// Whether the process was killed with SIGKILL (by the agent after the grace period, or otherwise).
    pub killed: bool,
    /// Whether the kernel's OOM killer ended it.
    pub oom_killed: bool,
    #[serde(with = "rfc3339_millis::option", default)]
    pub finished_at: Option<DateTime<Utc>>,
}

/// Where the agent's last stop of the app stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopOutcome {
    /// Accepted and under way: the intent, written before the engine is touched.
    Stopping,
    /// The agent stopped the container.
    Stopped,
    /// The container was not running when the stop came to it.
    AlreadyStopped,
    /// The stop failed; `error` says why, and the container's state is in the metrics.
    Failed,
    /// The agent itself died during the stop; at its next start the record was made true again.
    Interrupted,
}

/// Why the node, not a caller's own ask, stopped or started an app: `lastStop.reason` and
/// `lastStart.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NodeReason {
    /// An operator drained the node (`POST /v1/node/drain`).
    Drain,
    /// The node was shutting down.
    NodeShutdown,
    /// The node booted again after a shutdown that stopped it.
    NodeBoot,
}

impl NodeReason {
    /// As in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeReason::Drain => "drain",
            NodeReason::NodeShutdown => "node-shutdown",
            NodeReason::NodeBoot => "node-boot",
        }
    }
}

/// The agent's last operation of one kind on an app, and how it ended: the record's `lastStop`
/// (`O` = [`StopOutcome`]) and `lastStart` (`O` = [`StartOutcome`]). Written as an intent (its
/// outcome under way) before the engine is touched, and closed with the outcome once it ends, so
/// that an agent that dies meanwhile leaves an intent the next start closes as interrupted.
///
/// Its JSON is exactly the documented `lastStop` and `lastStart`: a stop only ever sets
/// `previousRestartPolicy`, a start only `restoredRestartPolicy`, and an unset key is left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastOp<O> {
    pub outcome: O,
    /// The token name that asked for it.
    pub by: String,
    #[serde(with = "rfc3339_millis")]
    pub requested_at: DateTime<Utc>,
    #[serde(
        with = "rfc3339_millis::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed; or, beside a success, what it could not do (give a restart policy back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A stop's: the restart policy the container had before the stop set it to `no`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_restart_policy: Option<String>,
    /// A start's: the restart policy it gave back (the one the last stop set aside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_restart_policy: Option<String>,
    /// Why the node did it (a drain, a shutdown, a boot); unset when a caller asked for it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<NodeReason>,
}

/// The outcomes of one kind of operation, and where the record keeps its [`LastOp`].
pub trait OpOutcome: Copy + Eq + Send + Sync + 'static {
    /// Accepted and under way: the intent.
    const UNDER_WAY: Self;
    /// The agent itself died during the operation.
    const INTERRUPTED: Self;
    /// The record's last operation of this kind.
    fn last_of(record: &AppRecord) -> Option<&LastOp<Self>>;
    /// The slot of this kind, of the two `stop` and `start` slots of a record or an observation.
    fn slot<'a>(
        stop: &'a mut Option<LastOp<StopOutcome>>,
        start: &'a mut Option<LastOp<StartOutcome>>,
    ) -> &'a mut Option<LastOp<Self>>;
}

impl OpOutcome for StopOutcome {
    const UNDER_WAY: Self = StopOutcome::Stopping;
    const INTERRUPTED: Self = StopOutcome::Interrupted;
    fn last_of(record: &AppRecord) -> Option<&LastOp<Self>> {
        record.last_stop.as_ref()
    }
    fn slot<'a>(
        stop: &'a mut Option<LastOp<StopOutcome>>,
        _: &'a mut Option<LastOp<StartOutcome>>,
    ) -> &'a mut Option<LastOp<Self>> {
        stop
    }
}

impl OpOutcome for StartOutcome {
    const UNDER_WAY: Self = StartOutcome::Starting;
    const INTERRUPTED: Self = StartOutcome::Interrupted;
    fn last_of(record: &AppRecord) -> Option<&LastOp<Self>> {
        record.last_start.as_ref()
    }
    fn slot<'a>(
        _: &'a mut Option<LastOp<StopOutcome>>,
        start: &'a mut Option<LastOp<StartOutcome>>,
    ) -> &'a mut Option<LastOp<Self>> {
        start
    }
}

impl<O: OpOutcome> LastOp<O> {
    /// The intent of an operation `by` asked for at `requested_at`.
    pub fn intent(by: &str, requested_at: DateTime<Utc>) -> LastOp<O> {
        LastOp {
            outcome: O::UNDER_WAY,
            by: by.to_owned(),
            requested_at,
            finished_at: None,
            error: None,
            previous_restart_policy: None,
            restored_restart_policy: None,
            reason: None,
        }
    }

    /// Whether this is the intent of an operation that has not ended.
    pub fn under_way(&self) -> bool {
        self.outcome == O::UNDER_WAY
    }

    /// This operation, closed at `now` with `outcome` (and `error`, if given).
    pub fn closed(self, outcome: O, now: DateTime<Utc>, error: Option<String>) -> LastOp<O> {
        LastOp {
            outcome,
            finished_at: Some(now),
            error,
            ..self
        }
    }
}

/// The documented schema of `lastStop` ([`LastOp`] with a [`StopOutcome`]), for the OpenAPI
/// document only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastStop {
    pub outcome: StopOutcome,
    /// The token name that asked for it.
    pub by: String,
    #[serde(with = "rfc3339_millis")]
    pub requested_at: DateTime<Utc>,
    #[serde(
        with = "rfc3339_millis::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The restart policy the container had before the stop set it to `no`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_restart_policy: Option<String>,
    /// `drain` or `node-shutdown` when the node stopped the app; left out when a caller did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<NodeReason>,
}

/// Where the agent's last start of the app stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartOutcome {
    /// Accepted and under way: the intent, written before the engine is touched.
    Starting,
    /// The engine started the container and it was running when the start ended.
    Started,
    /// The engine started the container, but it exited at once (a crash at boot); `lastExit` says how.
    Exited,
    /// The start failed; `error` says why, and the container's state is in the metrics.
    Failed,
    /// The agent itself died during the start; at its next start the record was made true again.
    Interrupted,
}

/// The documented schema of `lastStart` ([`LastOp`] with a [`StartOutcome`]), for the OpenAPI
/// document only: the agent's last start of this app (by `/start`, or as the second half of a
/// `/restart`) and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastStart {
    pub outcome: StartOutcome,
    /// The token name that asked for it.
    pub by: String,
    #[serde(with = "rfc3339_millis")]
    pub requested_at: DateTime<Utc>,
    #[serde(
        with = "rfc3339_millis::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_at: Option<DateTime<Utc>>,
    /// Why the start failed; or, beside `started`, what it could not do (give a restart policy back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The restart policy the start gave back to the container (the one the last stop set aside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_restart_policy: Option<String>,
    /// `node-boot` when the node started the app again after a shutdown; left out when a caller
    /// did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<NodeReason>,
}

/// An application record.
#[derive(Debug, Clone, PartialEq)]
pub struct AppRecord {
    pub id: AppId,
    /// Every key the control plane registered except the ones the agent owns, in its order.
    pub registered: Map<String, Value>,
    pub metrics: Option<ResourceMetrics>,
    pub last_exit: Option<LastExit>,
    pub last_stop: Option<LastOp<StopOutcome>>,
    pub last_start: Option<LastOp<StartOutcome>>,
    /// How many times the engine's restart policy restarted the container (`RestartCount`), as
    /// last seen; `None` before it was seen.
    pub restart_count: Option<u64>,
    pub updated_at: DateTime<Utc>,
    /// Drawn from the node's one counter, which only goes up, in the transaction of the record's
    /// last change: a higher generation is always the newer state.
    pub generation: u64,
}

#[cfg(test)]
impl AppRecord {
    /// A record of app `a` with `registered` and nothing observed, for unit tests.
    pub fn for_tests(registered: Map<String, Value>) -> AppRecord {
        AppRecord {
            id: AppId::parse("a").expect("id"),
            registered,
            metrics: None,
            last_exit: None,
            last_stop: None,
            last_start: None,
            restart_count: None,
            updated_at: Utc::now(),
            generation: 1,
        }
    }
}

/// Keys whose values the agent owns; a registration may carry them but they are replaced.
const AGENT_OWNED: [&str; 8] = [
    "workerNodeId",
    "currentResourceMetrics",
    "lastExit",
    "lastStop",
    "lastStart",
    "restartCount",
    "updatedAt",
    "generation",
];

/// The type a documented key of a registration must have; the API document is drawn from these
/// too, so that it says exactly what a registration is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Str,
    NullableStr,
    Int,
    NullableInt,
    Bool,
    Array,
    NullableObject,
    DateTime,
    Status,
    Team,
}

impl Shape {
    fn expected(self) -> &'static str {
        match self {
            Shape::Str => "a string",
            Shape::NullableStr => "a string or null",
            Shape::Int => "an integer",
            Shape::NullableInt => "an integer or null",
            Shape::Bool => "a boolean",
            Shape::Array => "an array",
            Shape::NullableObject => "an object or null",
            Shape::DateTime => "an RFC 3339 date-time string",
            Shape::Status => "one of \"active\", \"creating\", \"suspended\"",
            Shape::Team => {
                "a team id string, null, or a team object with a string `owner` and a `members` array"
            }
        }
    }

    fn accepts(self, v: &Value) -> bool {
        match self {
            Shape::Str => v.is_string(),
            Shape::NullableStr => v.is_string() || v.is_null(),
            Shape::Int => as_integer(v).is_some(),
            Shape::NullableInt => as_integer(v).is_some() || v.is_null(),
            Shape::Bool => v.is_boolean(),
            Shape::Array => v.is_array(),
            Shape::NullableObject => v.is_object() || v.is_null(),
            // RFC 3339's date-time, with `T` between date and time as JSON Schema's `date-time`
            // has it (chrono also takes a space).
            Shape::DateTime => v.as_str().is_some_and(|s| {
                matches!(s.as_bytes().get(10), Some(b'T' | b't'))
                    && DateTime::parse_from_rfc3339(s).is_ok()
            }),
            Shape::Status => matches!(v.as_str(), Some("active" | "creating" | "suspended")),
            Shape::Team => match v {
                Value::Null | Value::String(_) => true,
                Value::Object(team) => {
                    team.get("owner").is_none_or(Value::is_string)
                        && team.get("members").is_none_or(valid_members)
                }
                _ => false,
            },
        }
    }
}

/// An integer as JSON Schema counts them (138 or 138.0) that fits an i64 or a u64, written as an
/// integer. A number written with a fraction or an exponent is read as a double, so it counts only
/// below 2^53, where doubles are exact integers; even there, a literal with more digits than a
/// double holds (`1.0000000000000001`) reads as the integer it rounds to.
pub fn as_integer(v: &Value) -> Option<Value> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if v.is_i64() || v.is_u64() {
        return Some(v.clone());
    }
    let f = v.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < EXACT)?;
    // In range, and integral: the conversion is exact.
    Some(Value::from(f as i64))
}

fn valid_members(members: &Value) -> bool {
    members.as_array().is_some_and(|list| {
        list.iter().all(|m| {
            m.get("user").is_some_and(Value::is_string)
                && m.get("permissions").is_none_or(Value::is_object)
        })
    })
}

/// The documented keys and their types (the CamposCloud document and SDK).
pub const DOCUMENTED: [(&str, Shape); 21] = [
    ("containerId", Shape::Str),
    ("teamId", Shape::Team),
    ("restartRequired", Shape::Bool),
    ("userId", Shape::Str),
    ("name", Shape::Str),
    ("allocatedMemoryMB", Shape::Int),
    ("allocatedVCpu", Shape::Int),
    ("containerImage", Shape::Str),
    ("exposedViaWeb", Shape::Bool),
    ("internalPort", Shape::NullableInt),
    ("assignedSubdomain", Shape::NullableStr),
    ("startupCommand", Shape::Str),
    ("installDependenciesCmd", Shape::NullableStr),
    ("runtimeEnvironment", Shape::Str),
    ("autoRestartEnabled", Shape::Bool),
    ("status", Shape::Status),
    ("createdAt", Shape::DateTime),
    ("githubDeploys", Shape::Array),
    ("externalPort", Shape::NullableInt),
    ("repository", Shape::NullableObject),
    ("environmentVariables", Shape::Array),
];

/// Docker container names are `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, and ids are hex; nothing else can reach
/// an engine URL.
fn valid_container_ref(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && s.len() <= 255
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A registration body, checked: what `PUT /v1/apps/{appId}` stores.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub registered: Map<String, Value>,
}

impl Registration {
    /// Checks a registration body for `id` on node `node`.
    pub fn parse(id: &AppId, body: Value, node: &WorkerNode) -> Result<Registration, RecordError> {
        let Value::Object(mut fields) = body else {
            return Err(RecordError::NotAnObject);
        };
        match fields.get("_id") {
            None => {}
            Some(Value::String(given)) if given == id.as_str() => {}
            Some(Value::String(given)) => {
                return Err(RecordError::IdMismatch {
                    body: given.clone(),
                    path: id.to_string(),
                });
            }
            Some(_) => {
                return Err(RecordError::WrongType {
                    key: "_id",
                    expected: "a string equal to the app id in the path",
                });
            }
        }
        if let Some(given) = fields.get("workerNodeId") {
            match given.get("_id").and_then(Value::as_str) {
                Some(given) if given != node.id => {
                    return Err(RecordError::WrongNode {
                        given: given.to_owned(),
                        node: node.id.clone(),
                    });
                }
                _ => {}
            }
        }
        match fields.get("containerId") {
            None | Some(Value::Null) => return Err(RecordError::MissingContainerId),
            Some(Value::String(c)) if !valid_container_ref(c) => {
                return Err(RecordError::BadContainerId(c.clone()));
            }
            _ => {}
        }
        for (key, shape) in DOCUMENTED {
            let Some(v) = fields.get_mut(key) else {
                continue;
            };
            if !shape.accepts(v) {
                return Err(RecordError::WrongType {
                    key,
                    expected: shape.expected(),
                });
            }
            // JSON does not tell 138 from 138.0; the record keeps the integer.
            if matches!(shape, Shape::Int | Shape::NullableInt)
                && let Some(n) = as_integer(v)
            {
                *v = n;
            }
        }
        fields.shift_remove("_id");
        for key in AGENT_OWNED {
            fields.shift_remove(key);
        }
        Ok(Registration { registered: fields })
    }

    pub fn container_id(&self) -> &str {
        container_id_of(&self.registered)
    }
}

fn container_id_of(registered: &Map<String, Value>) -> &str {
    registered
        .get("containerId")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

impl AppRecord {
    /// The Docker container name or id of this app.
    pub fn container_id(&self) -> &str {
        container_id_of(&self.registered)
    }

    /// Whether a stop by the agent is recorded as under way: the intent of a stop that has not ended.
    pub fn stop_pending(&self) -> bool {
        self.last_stop.as_ref().is_some_and(LastOp::under_way)
    }

    /// Whether a start by the agent is recorded as under way: the intent of a start that has not ended.
    pub fn start_pending(&self) -> bool {
        self.last_start.as_ref().is_some_and(LastOp::under_way)
    }

    /// The restart policy the last stop set aside, while no start has given it back since.
    pub fn restart_policy_set_aside(&self) -> Option<&str> {
        let stop = self.last_stop.as_ref()?;
        let given_back = self.last_start.as_ref().is_some_and(|s| {
            s.requested_at >= stop.requested_at && s.restored_restart_policy.is_some()
        });
        if given_back {
            return None;
        }
        stop.previous_restart_policy
            .as_deref()
            .filter(|p| !p.is_empty() && *p != "no")
    }

    /// Whether the agent's own stop ended the container's current exit: the record says offline, the
    /// agent's last stop succeeded, and the container has not been started since.
    pub fn stopped_by_agent(&self) -> bool {
        let Some(stop) = self
            .last_stop
            .as_ref()
            .filter(|s| s.outcome == StopOutcome::Stopped)
        else {
            return false;
        };
        let started_since = match (&self.metrics, stop.finished_at) {
            (Some(m), Some(done)) => m.started_at.is_some_and(|s| s > done),
            _ => false,
        };
        !self.online() && !started_since
    }

    /// Whether the record's last observation says the container runs.
    pub fn online(&self) -> bool {
        self.metrics.as_ref().is_some_and(|m| m.online)
    }

    /// A registered string key, such as `userId`.
    pub fn str_key(&self, key: &str) -> Option<&str> {
        self.registered.get(key).and_then(Value::as_str)
    }

    /// The record in the documented shape: `_id` first, the registered keys in their order, then the
    /// agent's own keys.
    pub fn to_json(&self, node: &WorkerNode) -> Value {
        let mut out = Map::with_capacity(self.registered.len() + 6);
        out.insert("_id".into(), Value::String(self.id.to_string()));
        for (k, v) in &self.registered {
            out.insert(k.clone(), v.clone());
        }
        out.insert("workerNodeId".into(), json_of(node));
        match &self.metrics {
            Some(metrics) => {
                out.insert("currentResourceMetrics".into(), json_of(metrics));
            }
            // The engine could not be asked when the record was registered: `online` (which the
            // shape requires) is not known to be true, and the record says why it is not known.
            None => {
                let unseen = ResourceMetrics {
                    timestamp: self.updated_at,
                    ..ResourceMetrics::default()
                };
                out.insert("currentResourceMetrics".into(), json_of(&unseen));
                out.insert(
                    "engineUnavailable".into(),
                    json_of(&EngineUnavailable {
                        since: self.updated_at,
                        message: UNSEEN.to_owned(),
                    }),
                );
            }
        }
        if let Some(e) = &self.last_exit {
            out.insert("lastExit".into(), json_of(e));
        }
        if let Some(s) = &self.last_stop {
            out.insert("lastStop".into(), json_of(s));
        }
        if let Some(s) = &self.last_start {
            out.insert("lastStart".into(), json_of(s));
        }
        if let Some(n) = self.restart_count {
            out.insert("restartCount".into(), Value::from(n));
        }
        out.insert(
            "updatedAt".into(),
            Value::String(format_time(self.updated_at)),
        );
        out.insert("generation".into(), Value::from(self.generation));
        Value::Object(out)
    }
}

fn json_of<T: Serialize>(v: &T) -> Value {
    // These types serialize infallibly: plain structs of strings, numbers and booleans.
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// RFC 3339 UTC with milliseconds and `Z`, as the documents write times.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Serde for times in the documents' format.
pub mod rfc3339_millis {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            let s: Option<String> = Option::deserialize(d)?;
            s.map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> WorkerNode {
        WorkerNode {
            id: "n1".into(),
            node_name: "ODIN".into(),
        }
    }

    #[test]
    fn app_ids() {
        for good in [
            "a",
            "60c72b2f9b1e8d001c8e4f3a",
            "my-app_1.2",
            &"x".repeat(128),
        ] {
            assert!(AppId::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "%2e",
            "é",
            "a\0",
            &"x".repeat(129),
        ] {
            assert_eq!(AppId::parse(bad), Err(RecordError::BadAppId), "{bad:?}");
        }
    }

    #[test]
    fn registration_keeps_keys_in_order_and_drops_agent_keys() {
        let id = AppId::parse("a1").expect("id");
        let body = json!({
            "_id": "a1", "containerId": "web-1", "zeta": 1, "name": "x",
            "currentResourceMetrics": {"online": true}, "updatedAt": "2020-01-01T00:00:00Z",
            "teamId": null, "internalPort": null,
        });
        let reg = Registration::parse(&id, body, &node()).expect("valid");
        let keys: Vec<_> = reg.registered.keys().cloned().collect();
        assert_eq!(
            keys,
            ["containerId", "zeta", "name", "teamId", "internalPort"]
        );
        assert_eq!(reg.container_id(), "web-1");
    }

    #[test]
    fn registration_errors() {
        let id = AppId::parse("a1").expect("id");
        let cases = [
            (json!([]), RecordError::NotAnObject),
            (json!({}), RecordError::MissingContainerId),
            (
                json!({"containerId": "../etc"}),
                RecordError::BadContainerId("../etc".into()),
            ),
            (
                json!({"containerId": "c", "_id": "b2"}),
                RecordError::IdMismatch {
                    body: "b2".into(),
                    path: "a1".into(),
                },
            ),
            (
                json!({"containerId": "c", "status": "stopped"}),
                RecordError::WrongType {
                    key: "status",
                    expected: Shape::Status.expected(),
                },
            ),
            (
                json!({"containerId": 5}),
                RecordError::WrongType {
                    key: "containerId",
                    expected: "a string",
                },
            ),
            (
                json!({"containerId": "c", "workerNodeId": {"_id": "other"}}),
                RecordError::WrongNode {
                    given: "other".into(),
                    node: "n1".into(),
                },
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                Registration::parse(&id, body.clone(), &node()),
                Err(want),
                "{body}"
            );
        }
        // -2^63 - 1 reads as a double that rounds to -2^63: not the number sent.
        let beyond: Value = serde_json::from_str("-9223372036854775809").expect("number");
        let created_with_a_space = json!({"containerId": "c", "createdAt": "2024-01-01 00:00:00Z"});
        assert_eq!(
            Registration::parse(&id, created_with_a_space, &node()),
            Err(RecordError::WrongType {
                key: "createdAt",
                expected: Shape::DateTime.expected(),
            })
        );
        for bad in [
            json!(1.5),
            json!(1e30),
            json!(9_007_199_254_740_992.0),
            json!("5"),
            beyond,
        ] {
            assert_eq!(
                Registration::parse(
                    &id,
                    json!({"containerId": "c", "allocatedVCpu": bad}),
                    &node()
                ),
                Err(RecordError::WrongType {
                    key: "allocatedVCpu",
                    expected: "an integer",
                }),
                "{bad}"
            );
        }
    }

    #[test]
    fn integral_numbers_are_kept_as_integers() {
        let id = AppId::parse("a1").expect("id");
        let parsed = Registration::parse(
            &id,
            json!({"containerId": "c", "allocatedMemoryMB": 256.0, "allocatedVCpu": -2.0,
                   "internalPort": 8080, "externalPort": null, "zeta": 1.0}),
            &node(),
        )
        .expect("valid");
        assert_eq!(parsed.registered["allocatedMemoryMB"], json!(256));
        assert!(parsed.registered["allocatedMemoryMB"].is_i64());
        assert!(parsed.registered["allocatedVCpu"].is_i64());
        assert_eq!(parsed.registered["internalPort"], json!(8080));
        assert_eq!(parsed.registered["externalPort"], json!(null));
        // Keys the agent does not know are kept exactly as given.
        assert!(parsed.registered["zeta"].is_f64());
    }

    #[test]
    fn record_json_has_documented_shape() {
        let id = AppId::parse("a1").expect("id");
        let reg = Registration::parse(
            &id,
            json!({"containerId": "c", "status": "active"}),
            &node(),
        )
        .expect("valid");
        let t = DateTime::parse_from_rfc3339("2025-07-19T17:57:05.069Z")
            .expect("time")
            .with_timezone(&Utc);
        let record = AppRecord {
            id,
            registered: reg.registered,
            last_stop: None,
            last_start: None,
            restart_count: None,
            metrics: Some(ResourceMetrics {
                timestamp: t,
                online: false,
                uptime: Some(3),
                started_at: Some(t),
                cpu_usage_percent: Some(0.5),
                memory_usage_bytes: Some(1),
                memory_limit_bytes: Some(2),
                network_rx_bytes: Some(3),
                network_tx_bytes: Some(4),
                sample_source: Some(crate::stats::SampleSource::Cgroup),
            }),
            last_exit: None,
            updated_at: t,
            generation: 7,
        };
        let v = record.to_json(&node());
        assert_eq!(v["generation"], 7);
        assert_eq!(v["_id"], "a1");
        assert_eq!(v["workerNodeId"], json!({"_id": "n1", "nodeName": "ODIN"}));
        assert_eq!(v["currentResourceMetrics"]["online"], false);
        assert_eq!(
            v["currentResourceMetrics"]["timestamp"],
            "2025-07-19T17:57:05.069Z"
        );
        assert_eq!(v["currentResourceMetrics"]["cpuUsagePercent"], 0.5);
        assert_eq!(v["updatedAt"], "2025-07-19T17:57:05.069Z");
        let back: ResourceMetrics =
            serde_json::from_value(v["currentResourceMetrics"].clone()).expect("round trip");
        assert_eq!(Some(back), record.metrics);
    }
}
