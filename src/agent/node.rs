//! What `GET /v1/node` reports: this node's identity, the host's figures, the engine, the apps and
//! the agent itself.

use serde::{Deserialize, Serialize};

use super::Agent;
use crate::host::{self, DiskFigures, HostFigures};
use crate::lifecycle::Operation;
use crate::runtime::{RuntimeError, probe};
use crate::telemetry::ReportStatus;

/// The node as the agent sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// `node.id`: `workerNodeId._id` in every record.
    #[serde(rename = "_id")]
    pub id: String,
    /// `node.name`: `workerNodeId.nodeName`.
    pub node_name: String,
    #[serde(flatten)]
    pub host: HostFigures,
    /// The filesystem holding the engine's root directory, measured at that path. Null when the
    /// engine is away or on another host, or the path is not to be seen from the agent.
    pub docker_disk: Option<DiskFigures>,
    pub docker: EngineReport,
    pub apps: AppCounts,
    pub agent: AgentReport,
    /// The reports to the control plane: where they go, how the last went, what is pending.
    pub report: ReportStatus,
    /// The node's drain and its progress; null when the node was never drained.
    pub drain: Option<super::DrainSummary>,
    /// The node's shutdown: the logind delay lock, and the last shutdown's figures.
    pub shutdown: ShutdownReport,
}

/// The node's shutdown as the agent follows it: whether it holds logind's delay lock (and why not),
/// whether logind would cut its budget short, and how the last shutdown went.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShutdownReport {
    /// `[shutdown] inhibit`.
    pub inhibit: bool,
    /// Whether the agent holds logind's delay lock at this moment.
    pub lock_held: bool,
    /// Why it does not, when it does not.
    pub lock_error: Option<String>,
    /// What the lock may hold the shutdown back: `grace_secs` + `report_secs`.
    pub budget_secs: u64,
    /// logind's `InhibitDelayMaxUSec`, in seconds, once read.
    pub delay_max_secs: Option<f64>,
    /// True when logind would release the shutdown before the budget is spent.
    pub cut_short: bool,
    /// The last shutdown this agent drained the node for; kept in the store, so that it is still
    /// there after the boot that follows.
    pub last: Option<LastShutdown>,
}

/// How a node's shutdown went, from `PrepareForShutdown(true)` to the lock's release.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastShutdown {
    #[serde(with = "crate::record::rfc3339_millis")]
    pub began_at: chrono::DateTime<chrono::Utc>,
    /// Seconds the drain took.
    pub drain_secs: f64,
    /// Seconds spent pushing the final records after it.
    pub report_secs: f64,
    /// Changes the control plane had not acknowledged when the lock was released.
    pub unreported: usize,
    pub stopped: usize,
    pub killed_at_deadline: usize,
}

/// The engine, or why it could not be asked.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineReport {
    pub reachable: bool,
    pub version: Option<String>,
    /// The newest API version the engine speaks.
    pub api_version: Option<String>,
    /// The API version the agent speaks with it: the engine's, capped at the newest the agent
    /// knows.
    pub negotiated_api_version: Option<String>,
    pub root_dir: Option<String>,
    /// Why the engine did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppCounts {
    pub registered: usize,
    pub online: usize,
    pub stopping: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    pub version: &'static str,
    pub uptime_seconds: u64,
}

impl Agent {
    /// The node's report. The engine's part says so when the engine is away; the rest is always
    /// there.
    pub async fn node_report(&self) -> NodeReport {
        let docker = self.engine_report().await;
        // A remote engine's root directory is a path on its host, not on this one.
        let root = docker
            .root_dir
            .clone()
            .filter(|_| self.runtime().is_local());
        let figures = tokio::task::spawn_blocking(move || {
            let disk = root.as_deref().and_then(|r| host::disk_of(r.as_ref()));
            (host::read(), disk)
        })
        .await;
        let (host, docker_disk) = match figures {
            Ok(f) => f,
            // Reading /proc panicked: say nothing rather than something false.
            Err(e) => {
                tracing::error!(error = %e, "reading the host's figures failed");
                (host::read_nothing(), None)
            }
        };
        let (registered, online) = self.store().counts();
        NodeReport {
            id: self.node().id.clone(),
            node_name: self.node().node_name.clone(),
            host,
            docker_disk,
            docker,
            apps: AppCounts {
                registered,
                online,
                stopping: self.under_way_of_kind(Operation::Stop),
            },
            agent: AgentReport {
                version: env!("CARGO_PKG_VERSION"),
                uptime_seconds: self.telemetry().uptime_secs(),
            },
            report: self.telemetry().report_status(&self.store().outbox()),
            drain: self.drain_summary(),
            shutdown: self.shutdown_report(),
        }
    }

    async fn engine_report(&self) -> EngineReport {
        let runtime = self.runtime();
        let asked = probe(async {
            runtime.ping().await?;
            let info = runtime.engine().await?;
            let root = runtime.root_dir().await?;
            Ok::<_, RuntimeError>((info, root))
        });
        match asked.await {
            Ok((info, root_dir)) => EngineReport {
                reachable: true,
                version: Some(info.version),
                api_version: Some(info.api_version),
                negotiated_api_version: Some(info.negotiated_api_version),
                root_dir,
                error: None,
            },
            Err(e) => EngineReport {
                reachable: false,
                version: None,
                api_version: None,
                negotiated_api_version: None,
                root_dir: None,
                error: Some(e.to_string()),
            },
        }
    }
}

impl Agent {
    /// The node's shutdown's figures for `/metrics`.
    pub fn shutdown_figures(&self) -> crate::telemetry::ShutdownFigures {
        let r = self.shutdown_report();
        let last = r.last.as_ref();
        crate::telemetry::ShutdownFigures {
            lock_held: r.lock_held,
            cut_short: r.cut_short,
            began_at: last.map(|l| l.began_at),
            drain_secs: last.map_or(0.0, |l| l.drain_secs),
            stopped: last.map_or(0, |l| l.stopped),
            killed_at_deadline: last.map_or(0, |l| l.killed_at_deadline),
        }
    }
}
