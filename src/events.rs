//! An app's event history: the event types, their JSON shape, and the events a change of a record
//! makes (derived from the record before and after, in the store's transaction of that change).
//!
//! Every change in an app's life is an event: the agent's own (registration, deletion, the intents
//! and outcomes of stops and starts, the node's drain, shutdown and boot) are read off the change
//! of `lastStop` and `lastStart`; the engine's (an exit on its own, a start behind the agent's
//! back) come from its event stream, each keyed so that one the engine sends twice is kept once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::record::{
    AppRecord, LastExit, LastOp, NodeReason, OpOutcome, StartOutcome, StopOutcome, format_time,
};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The control plane registered the app (or registered it again).
    Registered,
    /// The app was deleted.
    Deleted,
    /// A caller asked for a stop.
    StopRequested,
    /// The agent stopped the container (or found it stopped).
    Stopped,
    /// A stop failed, or the agent died during it.
    StopFailed,
    /// A caller asked for a start (or the second half of a restart).
    StartRequested,
    /// The agent started the container and it ran.
    Started,
    /// A start failed: the engine refused, the container crashed at boot, or the agent died.
    StartFailed,
    /// The container's process ended on its own (or behind the agent's back).
    Exited,
    /// The container was started by the engine's restart policy, or by hand, not by the agent.
    StartedByEngine,
    /// The node's drain stopped the app.
    Drained,
    /// The node's shutdown stopped the app.
    NodeShutdown,
    /// The node's boot started the app again after a shutdown.
    Resumed,
}

impl EventType {
    pub const ALL: [EventType; 13] = [
        EventType::Registered,
        EventType::Deleted,
        EventType::StopRequested,
        EventType::Stopped,
        EventType::StopFailed,
        EventType::StartRequested,
        EventType::Started,
        EventType::StartFailed,
        EventType::Exited,
        EventType::StartedByEngine,
        EventType::Drained,
        EventType::NodeShutdown,
        EventType::Resumed,
    ];

    /// As in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Registered => "registered",
            EventType::Deleted => "deleted",
            EventType::StopRequested => "stop_requested",
            EventType::Stopped => "stopped",
            EventType::StopFailed => "stop_failed",
            EventType::StartRequested => "start_requested",
            EventType::Started => "started",
            EventType::StartFailed => "start_failed",
            EventType::Exited => "exited",
            EventType::StartedByEngine => "started_by_engine",
            EventType::Drained => "drained",
            EventType::NodeShutdown => "node_shutdown",
            EventType::Resumed => "resumed",
        }
    }

    /// The type of its JSON name.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// `by` of what the engine did by itself.
pub const BY_ENGINE: &str = "engine";

/// An event as kept and answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppEvent {
    /// Drawn from the node's counter in the transaction of the change; the record's generation
    /// after the change is this one or a later one.
    pub generation: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(with = "crate::record::rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub at: DateTime<Utc>,
    /// The token name that asked, `engine`, or the node's own name for what the node did.
    pub by: String,
    /// What explains it: the exit (code, signal, OOM), the outcome, the error, the final sample.
    #[schema(value_type = Object)]
    pub details: Value,
}

/// An event to be written with a change; the store gives it its generation.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: EventType,
    pub at: DateTime<Utc>,
    pub by: String,
    pub details: Value,
    /// For an event the engine reported: what makes it one (the container and the engine's time),
    /// so that the same event reported twice is kept once.
    pub key: Option<String>,
}

impl NewEvent {
    pub fn new(kind: EventType, at: DateTime<Utc>, by: &str, details: Value) -> NewEvent {
        NewEvent {
            kind,
            at,
            by: by.to_owned(),
            details,
            key: None,
        }
    }
}

/// The details of an exit.
pub fn exit_details(exit: &LastExit) -> Value {
    json!({
        "exitCode": exit.exit_code,
        "signal": exit.signal,
        "oomKilled": exit.oom_killed,
        "killed": exit.killed,
        "finishedAt": exit.finished_at.map(format_time),
    })
}

/// The events that the change of a record from `before` to `after` makes, in order: the stop's,
/// then the start's (a restart writes both intents at once).
pub fn derive(before: &AppRecord, after: &AppRecord, at: DateTime<Utc>) -> Vec<NewEvent> {
    let mut out = Vec::new();
    op_events(
        before.last_stop.as_ref(),
        after.last_stop.as_ref(),
        at,
        &mut out,
        |op| match op.reason {
            Some(NodeReason::Drain) => EventType::Drained,
            Some(NodeReason::NodeShutdown) => EventType::NodeShutdown,
            _ => EventType::StopRequested,
        },
        |op| {
            let mut d = Map::new();
            d.insert("outcome".into(), json!(op.outcome));
            match op.outcome {
                StopOutcome::Stopped | StopOutcome::AlreadyStopped => {
                    if let Some(exit) = &after.last_exit {
                        d.insert("exit".into(), exit_details(exit));
                    }
                    if let Some(m) = &after.metrics {
                        d.insert("finalSample".into(), json!(m));
                    }
                    EventType::Stopped
                }
                _ => EventType::StopFailed,
            }
            .with(d)
        },
    );
    op_events(
        before.last_start.as_ref(),
        after.last_start.as_ref(),
        at,
        &mut out,
        |op| match op.reason {
            Some(NodeReason::NodeBoot) => EventType::Resumed,
            _ => EventType::StartRequested,
        },
        |op| {
            let mut d = Map::new();
            d.insert("outcome".into(), json!(op.outcome));
            match op.outcome {
                StartOutcome::Started => {
                    if let Some(started) = after.metrics.as_ref().and_then(|m| m.started_at) {
                        d.insert("startedAt".into(), json!(format_time(started)));
                    }
                    EventType::Started
                }
                StartOutcome::Exited => {
                    if let Some(exit) = &after.last_exit {
                        d.insert("exit".into(), exit_details(exit));
                    }
                    EventType::StartFailed
                }
                _ => EventType::StartFailed,
            }
            .with(d)
        },
    );
    out
}

/// `(type, details)` of a closed operation.
type Closing = (EventType, Map<String, Value>);

trait With {
    fn with(self, details: Map<String, Value>) -> Closing;
}

impl With for EventType {
    fn with(self, details: Map<String, Value>) -> Closing {
        (self, details)
    }
}

/// The events of one kind of operation between two states of its slot: its intent, when one was
/// written, and its end, when it ended.
fn op_events<O: OpOutcome + Serialize>(
    before: Option<&LastOp<O>>,
    after: Option<&LastOp<O>>,
    at: DateTime<Utc>,
    out: &mut Vec<NewEvent>,
    intent_type: impl Fn(&LastOp<O>) -> EventType,
    closing: impl Fn(&LastOp<O>) -> Closing,
) {
    let Some(after) = after else { return };
    let same_op = before.is_some_and(|b| b.requested_at == after.requested_at && b.by == after.by);
    let common = |d: &mut Map<String, Value>| {
        if let Some(reason) = after.reason {
            d.insert("reason".into(), json!(reason.as_str()));
        }
        d.insert("requestedAt".into(), json!(format_time(after.requested_at)));
    };
    // Its intent, once: an operation closed without an intent written before (none does so today)
    // still gets its request.
    if !same_op {
        let mut d = Map::new();
        common(&mut d);
        out.push(NewEvent::new(
            intent_type(after),
            after.requested_at,
            &after.by,
            Value::Object(d),
        ));
    }
    let closed_before = same_op && before.is_some_and(|b| !b.under_way());
    if !after.under_way() && !closed_before {
        let (kind, mut d) = closing(after);
        common(&mut d);
        if let Some(e) = &after.error {
            d.insert("error".into(), json!(e));
        }
        if let Some(p) = &after.previous_restart_policy {
            d.insert("previousRestartPolicy".into(), json!(p));
        }
        if let Some(p) = &after.restored_restart_policy {
            d.insert("restoredRestartPolicy".into(), json!(p));
        }
        out.push(NewEvent::new(
            kind,
            after.finished_at.unwrap_or(at),
            &after.by,
            Value::Object(d),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AppRecord {
        AppRecord::for_tests(Map::new())
    }

    fn types(events: &[NewEvent]) -> Vec<&'static str> {
        events.iter().map(|e| e.kind.as_str()).collect()
    }

    #[test]
    fn a_stop_makes_its_request_then_its_end_once_each() {
        let now = Utc::now();
        let before = record();
        let mut intent = before.clone();
        intent.last_stop = Some(LastOp::intent("cp", now));
        assert_eq!(types(&derive(&before, &intent, now)), ["stop_requested"]);
        // Writing the intent again (the final sample added) makes nothing.
        assert!(derive(&intent, &intent.clone(), now).is_empty());
        let mut done = intent.clone();
        done.last_stop = intent
            .last_stop
            .clone()
            .map(|s| s.closed(StopOutcome::Stopped, now, None));
        assert_eq!(types(&derive(&intent, &done, now)), ["stopped"]);
        assert!(derive(&done, &done.clone(), now).is_empty());
        let mut failed = intent.clone();
        failed.last_stop = intent
            .last_stop
            .clone()
            .map(|s| s.closed(StopOutcome::Failed, now, Some("no".into())));
        let e = derive(&intent, &failed, now);
        assert_eq!(types(&e), ["stop_failed"]);
        assert_eq!(e[0].details["error"], "no");
    }

    #[test]
    fn a_restart_asks_for_both_and_the_node_names_its_reason() {
        let now = Utc::now();
        let before = record();
        let mut both = before.clone();
        both.last_stop = Some(LastOp::intent("cp", now));
        both.last_start = Some(LastOp::intent("cp", now));
        assert_eq!(
            types(&derive(&before, &both, now)),
            ["stop_requested", "start_requested"]
        );
        let mut drained = before.clone();
        drained.last_stop = Some(LastOp {
            reason: Some(NodeReason::Drain),
            ..LastOp::intent("op", now)
        });
        assert_eq!(types(&derive(&before, &drained, now)), ["drained"]);
        let mut shut = before.clone();
        shut.last_stop = Some(LastOp {
            reason: Some(NodeReason::NodeShutdown),
            ..LastOp::intent("node", now)
        });
        assert_eq!(types(&derive(&before, &shut, now)), ["node_shutdown"]);
        let mut resumed = before.clone();
        resumed.last_start = Some(LastOp {
            reason: Some(NodeReason::NodeBoot),
            ..LastOp::intent("node", now)
        });
        let e = derive(&before, &resumed, now);
        assert_eq!(types(&e), ["resumed"]);
        assert_eq!(e[0].details["reason"], "node-boot");
    }

    #[test]
    fn a_crash_at_boot_is_a_failed_start_with_its_exit() {
        let now = Utc::now();
        let mut intent = record();
        intent.last_start = Some(LastOp::intent("cp", now));
        let mut crashed = intent.clone();
        crashed.last_start = intent
            .last_start
            .clone()
            .map(|s| s.closed(StartOutcome::Exited, now, None));
        crashed.last_exit = Some(LastExit {
            exit_code: 3,
            signal: None,
            killed: false,
            oom_killed: false,
            finished_at: Some(now),
        });
        let e = derive(&intent, &crashed, now);
        assert_eq!(types(&e), ["start_failed"]);
        assert_eq!(e[0].details["outcome"], "exited");
        assert_eq!(e[0].details["exit"]["exitCode"], 3);
    }

    #[test]
    fn every_event_type_reads_back_as_written() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(json!(t), json!(t.as_str()));
        }
    }
}
