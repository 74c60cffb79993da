//! The three operations that change whether an app runs (stop, start, restart), and the names by
//! which answers, logs and metrics call them.

/// An operation on an app's container. One app has at most one under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Stop,
    Start,
    Restart,
}

impl Operation {
    /// The verb, as answers and log lines say it: `stop`, `start`, `restart`.
    pub fn verb(self) -> &'static str {
        match self {
            Operation::Stop => "stop",
            Operation::Start => "start",
            Operation::Restart => "restart",
        }
    }

    /// What the log says once the operation succeeded: `stopped`, `started`, `restarted`.
    pub fn done(self) -> &'static str {
        match self {
            Operation::Stop => "stopped",
            Operation::Start => "started",
            Operation::Restart => "restarted",
        }
    }

    /// What the log says once it ended without success: `stop not done`…
    pub fn not_done(self) -> &'static str {
        match self {
            Operation::Stop => "stop not done",
            Operation::Start => "start not done",
            Operation::Restart => "restart not done",
        }
    }

    /// What the log says when it is refused: `stop refused`…
    pub fn refused(self) -> &'static str {
        match self {
            Operation::Stop => "stop refused",
            Operation::Start => "start refused",
            Operation::Restart => "restart refused",
        }
    }

    /// What the log says when a background one is accepted: `stop accepted`…
    pub fn accepted(self) -> &'static str {
        match self {
            Operation::Stop => "stop accepted",
            Operation::Start => "start accepted",
            Operation::Restart => "restart accepted",
        }
    }

    pub const ALL: [Operation; 3] = [Operation::Stop, Operation::Start, Operation::Restart];
}
