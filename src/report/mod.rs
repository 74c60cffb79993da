//! Reports to the control plane: the sender that pushes every change of a record, in generation
//! order, until the control plane acknowledges it.
//!
//! The outbox is the store itself ([`Store::changes_after`]): each batch is read afresh from the
//! records and tombstones above a cursor, so a burst of changes to one app is sent as its latest
//! state, a retry never sends anything older than what it replaces, and what was not acknowledged
//! before a crash is still there after it. One task sends, one batch at a time, so the generations
//! a receiver sees for one app only go up. At start-up and every `resync_secs` the cursor goes back
//! to zero, and every record is sent again. Nothing here is awaited by a request, a stop or a
//! start: a control plane that hangs or is down costs the node only a growing outbox.

mod transport;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::auth::TokensError;
use crate::background::Background;
use crate::config::ReportConfig;
use crate::pem::TlsError;
use crate::record::{AppId, WorkerNode, format_time};
use crate::store::{Change, Store, StoreError};
use crate::telemetry::{ReportOutcome, Telemetry};
pub use transport::{Answered, Credentials, retry_after};
use transport::{Transport, client_tls, no_tls, read_token};

/// Most changes in one report.
pub const MAX_BATCH: usize = 250;

/// The events one report carries, past which its batch ends (after the change that reached it).
pub const MAX_BATCH_EVENTS: usize = 2_000;
/// Least time from one report to the next: changes that come faster are gathered into one.
pub const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// The first backoff after a failure, and the longest.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(250);
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Why the `[report]` settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report.url: {0}")]
    Url(String),
    #[error(transparent)]
    TokenFile(#[from] TokensError),
    #[error("report token file {path} cannot be used: {message}")]
    BadToken { path: PathBuf, message: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("report CA file {path} cannot be used: {message}")]
    BadCa { path: PathBuf, message: String },
    #[error(
        "report.url is https, report.ca_file is unset, and the system has no CA certificates: \
         set report.ca_file to the control plane's CA"
    )]
    NoRoots,
}

/// The report sender's settings, read and checked: where, with which token, over which TLS.
#[derive(Clone)]
pub struct Reporting {
    transport: Transport,
    credentials: Credentials,
    token_file: PathBuf,
    /// `host:port` of the control plane, for the node report and the logs.
    host: String,
    resync: Duration,
}

impl std::fmt::Debug for Reporting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporting")
            .field("host", &self.host)
            .field("resync", &self.resync)
            .finish_non_exhaustive()
    }
}

impl Reporting {
    /// Reads the files `[report]` names; `None` when no `url` is set.
    pub fn load(config: &ReportConfig) -> Result<Option<Reporting>, ReportError> {
        let Some(endpoint) = config.endpoint().map_err(ReportError::Url)? else {
            return Ok(None);
        };
        let token_file = config
            .token_file
            .clone()
            .ok_or_else(|| ReportError::Url("report.token_file is required with it".into()))?;
        let credentials = Credentials::new(read_token(&token_file)?);
        let tls = if endpoint.https {
            let identity = config
                .client_cert_file
                .as_deref()
                .zip(config.client_key_file.as_deref());
            client_tls(config.ca_file.as_deref(), identity)?
        } else {
            no_tls()?
        };
        let port = endpoint
            .uri
            .port_u16()
            .unwrap_or(if endpoint.https { 443 } else { 80 });
        let host = match endpoint.host.contains(':') {
            true => format!("[{}]:{port}", endpoint.host),
            false => format!("{}:{port}", endpoint.host),
        };
        Ok(Some(Reporting {
            transport: Transport::new(endpoint.uri, tls, credentials.clone()),
            credentials,
            token_file,
            host,
            resync: Duration::from_secs(config.resync_secs),
        }))
    }

    /// Reads the token file again (at SIGHUP); a file that cannot be used leaves the token in
    /// force.
    pub fn reload_token(&self) -> Result<(), ReportError> {
        self.credentials.replace(read_token(&self.token_file)?);
        Ok(())
    }

    /// Starts the sender in `background`; it runs until that is shut down. What is not
    /// acknowledged by then stays in the store, and is sent after the next start.
    pub fn spawn(self, from: ReportSources, background: &Background) {
        from.telemetry.reporting_to(self.host.clone());
        tracing::info!(host = %self.host, resync_secs = self.resync.as_secs(), "reporting changes to the control plane");
        background.spawn(Sender::new(self, from).run());
    }
}

/// What the report sender reads: the store (its outbox), the telemetry it counts reports in, and
/// the node the reports speak for.
#[derive(Debug, Clone)]
pub struct ReportSources {
    pub store: Store,
    pub telemetry: Arc<Telemetry>,
    pub node: WorkerNode,
}

/// The one task that sends reports.
struct Sender {
    reporting: Reporting,
    from: ReportSources,
    /// Changes above this generation are still to be sent in this pass.
    cursor: u64,
    backoff: Backoff,
}

impl Sender {
    fn new(reporting: Reporting, from: ReportSources) -> Sender {
        Sender {
            reporting,
            from,
            // Start-up is a resync: every record is sent again.
            cursor: 0,
            backoff: Backoff::default(),
        }
    }

    async fn run(mut self) {
        let store = self.from.store.clone();
        let mut head = store.head();
        let mut next_resync = Instant::now() + self.reporting.resync;
        let mut last_sent: Option<Instant> = None;
        loop {
            if Instant::now() >= next_resync {
                tracing::debug!("resync: sending every record again");
                self.cursor = 0;
                next_resync = Instant::now() + self.reporting.resync;
            }
            // Marked seen before the outbox is read: a commit after this wakes the wait below.
            head.borrow_and_update();
            if store.changes_after(self.cursor, 1).is_empty() {
                tokio::select! {
                    _ = head.changed() => {}
                    () = tokio::time::sleep_until(next_resync) => {}
                }
                continue;
            }
            if let Some(at) = last_sent {
                tokio::time::sleep_until(at + MIN_INTERVAL).await;
            }
            // Read after the pause, so that the batch carries the latest state of each app.
            let mut batch = store.changes_after(self.cursor, MAX_BATCH);
            if let Err(e) = with_events(&store, &mut batch).await {
                tracing::error!(error = %e, "the events of a report could not be read; it waits");
                tokio::time::sleep(self.backoff.next_wait()).await;
                continue;
            }
            let Some(upto) = batch.last().map(|c| c.generation) else {
                continue;
            };
            last_sent = Some(Instant::now());
            match self.send(&batch).await {
                Sent::Done => {
                    self.cursor = upto;
                    self.backoff.reset();
                    if let Err(e) = store.acknowledge_batch(upto, delivered_by(&batch)).await {
                        // The changes are sent again after a restart: at least once still holds.
                        tracing::error!(error = %e, "the acknowledgement could not be stored");
                    }
                }
                Sent::Again(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// POSTs one batch, logs and counts how it ended.
    async fn send(&mut self, batch: &[Change]) -> Sent {
        let body = report_body(&self.from.node, batch);
        let telemetry = &self.from.telemetry;
        let (first, last) = (batch[0].generation, batch[batch.len() - 1].generation);
        match self.reporting.transport.post(body).await {
            Answered::Acknowledged => {
                telemetry.reported(ReportOutcome::Acknowledged, batch.len(), None);
                tracing::debug!(changes = batch.len(), first, last, "report acknowledged");
                Sent::Done
            }
            Answered::Rejected(error) => {
                // The control plane will never take this batch; holding it would hold every later
                // change too. Dropped, loudly; a later change of these apps, or the next resync,
                // sends their state again.
                tracing::error!(
                    changes = batch.len(), first, last, %error,
                    "report rejected by the control plane; its changes are dropped"
                );
                telemetry.reported(ReportOutcome::Rejected, batch.len(), Some(error));
                Sent::Done
            }
            Answered::Transient {
                outcome,
                error,
                retry_after,
            } => {
                // Never sooner than the control plane asked, nor than the backoff allows.
                let backoff = self.backoff.next_wait();
                let wait = retry_after.map_or(backoff, |asked| asked.max(backoff));
                tracing::warn!(
                    changes = batch.len(), first, last, %error,
                    retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "report not delivered; it will be sent again"
                );
                telemetry.reported(outcome, batch.len(), Some(error));
                Sent::Again(wait)
            }
        }
    }
}

/// What to do after a report.
enum Sent {
    /// Acknowledged, or dropped: go on from its last generation.
    Done,
    /// Send again after this long.
    Again(Duration),
}

/// Gives each change of `batch` its app's undelivered events up to its own generation (a later
/// change of the app brings the rest), and cuts the batch after the change that brings it to
/// [`MAX_BATCH_EVENTS`] (one change always goes, however many events it has): a change's events
/// go whole with it, and only the events of the changes sent are marked delivered
/// ([`delivered_by`]), so acknowledging the batch never acknowledges an event not sent.
async fn with_events(store: &Store, batch: &mut Vec<Change>) -> Result<(), StoreError> {
    let changes = batch.iter().map(|c| (c.id.clone(), c.generation)).collect();
    let events = store.undelivered_events(changes, MAX_BATCH_EVENTS).await?;
    batch.truncate(events.len());
    for (change, events) in batch.iter_mut().zip(events) {
        change.events = events;
    }
    Ok(())
}

/// What acknowledging `batch` delivers: each app's undelivered events up to its change's
/// generation.
fn delivered_by(batch: &[Change]) -> Vec<(AppId, u64)> {
    batch.iter().map(|c| (c.id.clone(), c.generation)).collect()
}

/// The body of a report, as the contract gives it.
pub fn report_body(node: &WorkerNode, batch: &[Change]) -> Vec<u8> {
    let changes: Vec<Value> = batch
        .iter()
        .map(|c| {
            let mut change = match &c.record {
                Some(record) => json!({
                    "appId": c.id.as_str(),
                    "generation": c.generation,
                    "record": record.to_json(node),
                }),
                None => {
                    json!({"appId": c.id.as_str(), "generation": c.generation, "deleted": true})
                }
            };
            if !c.events.is_empty() {
                change["events"] = json!(c.events);
            }
            change
        })
        .collect();
    let body = json!({
        "nodeId": node.id,
        "nodeName": node.node_name,
        "sentAt": format_time(Utc::now()),
        "changes": changes,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Exponential backoff with jitter: from [`BACKOFF_FIRST`], doubling, to [`BACKOFF_CAP`]; each
/// wait is drawn between half and all of its step, so that nodes that failed together do not
/// retry together.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let step = BACKOFF_FIRST
            .saturating_mul(2u32.saturating_pow(self.failures.min(16)))
            .min(BACKOFF_CAP);
        self.failures = self.failures.saturating_add(1);
        let half = step / 2;
        let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        let jitter = getrandom::u64().unwrap_or(0) % spread;
        half + Duration::from_millis(jitter)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
