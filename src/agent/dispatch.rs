//! The one entry point of the operations on an app from the API families: a handler parses its
//! request into an [`OpRequest`] (who, which app, which action, waiting or in the background, and
//! which family asked) and hands it over; the core counts and logs every refusal, its own and the
//! ones a handler met while parsing ([`Agent::refused_unparsed`]).

use super::{Agent, AgentError};
use crate::auth::Principal;
use crate::lifecycle::Operation;
use crate::record::{AppId, AppRecord};
use crate::stop::StopRequest;
use crate::telemetry::{REFUSED, Route};

/// Whether the caller waits for the operation's end, or is answered once it is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answered with the record once the operation has ended (`/v1`).
    Wait,
    /// Answered once the operation is admitted and the container is in the state it needs; the
    /// outcome lands in the record (~okeanos).
    Background,
}

/// An operation on an app, as a handler parsed it.
#[derive(Debug, Clone)]
pub struct OpRequest {
    pub principal: Principal,
    pub app: AppId,
    pub action: Operation,
    /// A stop's and a restart's `timeout` and `signal`; a start takes none.
    pub params: StopRequest,
    pub mode: Mode,
    /// The API family that asked, for the agent's metrics.
    pub route: Route,
}

/// What a dispatched operation answers.
#[derive(Debug)]
pub enum Dispatched {
    /// It ended ([`Mode::Wait`]): the updated record.
    Done(Box<AppRecord>),
    /// It was admitted and runs on ([`Mode::Background`]).
    Accepted,
}

impl Agent {
    /// Runs `req`: the one way the API families ask for a stop, a start or a restart.
    pub async fn dispatch(&self, req: OpRequest) -> Result<Dispatched, AgentError> {
        let OpRequest {
            principal,
            app,
            action,
            params,
            mode,
            route,
        } = req;
        let (p, id) = (&principal, &app);
        let done = |record| Dispatched::Done(Box::new(record));
        match (mode, action) {
            (Mode::Wait, Operation::Stop) => self.stop(p, id, params, route).await.map(done),
            (Mode::Wait, Operation::Start) => self.start(p, id, route).await.map(done),
            (Mode::Wait, Operation::Restart) => self.restart(p, id, params, route).await.map(done),
            (Mode::Background, Operation::Stop) => {
                self.stop_in_background(p, id, params, route).await?;
                Ok(Dispatched::Accepted)
            }
            (Mode::Background, Operation::Start) => {
                self.start_in_background(p, id, route).await?;
                Ok(Dispatched::Accepted)
            }
            (Mode::Background, Operation::Restart) => {
                let e = AgentError::Internal(
                    "a restart is answered only once it has ended; it does not run in the background"
                        .to_owned(),
                );
                self.refused(action, route, p, id, &e);
                Err(e)
            }
        }
    }

    /// Counts and logs a refusal of `action` that a handler met before it could dispatch it (a bad
    /// token, path or body). `token` is the caller's name once known: a refusal without one is
    /// logged where the token was checked.
    pub fn refused_unparsed(
        &self,
        action: Operation,
        route: Route,
        token: Option<&str>,
        path: &str,
        why: &str,
    ) {
        self.telemetry().ended(action, route, REFUSED);
        if let Some(token) = token {
            tracing::info!(path = %path, token, outcome = %why, "{}", action.refused());
        }
    }
}
