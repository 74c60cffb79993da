//! The boot check of a start: how long a container must go on running after the engine has
//! started it before the start reports it running, and the look at it that ends the check.
//!
//! The engine answers a start as soon as the process exists; a process that dies at once (a bad
//! command line, a missing file, a crash at boot) is gone within a moment, and the engine's record
//! of its exit lags by the same kind of delay as its answer to the start. So the window scales with
//! the engine's own start call: a few per cent of it, at least [`SHORTEST`] (an engine that
//! answers in a few milliseconds still takes some to record an exit), at most [`LONGEST`].

use std::time::{Duration, Instant};

use crate::runtime::{ContainerRuntime, ContainerState, RuntimeError};

/// The window, as a share of the engine's start call: 1/25, 4 %.
const SHARE: u32 = 25;
/// The shortest window: an engine records an exit some milliseconds after the process is gone,
/// whatever its start call took. With 5 ms, Docker 26 let a workload that exits at once be
/// reported running in 5 restarts of 5; 20 ms is the fixed window the check began with.
const SHORTEST: Duration = Duration::from_millis(20);
/// The longest window, for an engine that took seconds to start the container.
const LONGEST: Duration = Duration::from_millis(100);

/// How long the container must go on running after a start call that took `start_call`.
pub(super) fn window(start_call: Duration) -> Duration {
    (start_call / SHARE).clamp(SHORTEST, LONGEST)
}

/// Waits out the boot window after a start call that took `start_call`, with `beside` (the
/// restart policy given back) going on meanwhile, and says how the container stands at the end of
/// both. The look at the container runs during the window: when the window passes without an exit,
/// that look saw the container running and it began once `beside` was done, the run it saw is the
/// one the start began, it has gone on through the window and nothing was pending after the look:
/// that look is the answer. Otherwise (an exit within the window, a wait that failed, a look that
/// saw no running container, `beside` still going on when the look began) the container is looked
/// at again once everything is over, as the check always did.
pub(super) async fn check<F: Future>(
    runtime: &dyn ContainerRuntime,
    container: &str,
    start_call: Duration,
    beside: F,
) -> (Result<ContainerState, RuntimeError>, F::Output) {
    let beside = async {
        let out = beside.await;
        (out, Instant::now())
    };
    let look = async {
        let began = Instant::now();
        (runtime.inspect(container).await, began)
    };
    let ((out, beside_done), exited, (looked, look_began)) = tokio::join!(
        beside,
        runtime.wait_exit(container, window(start_call)),
        look
    );
    let state = match (exited, looked) {
        (Ok(false), Ok(state)) if state.running && beside_done <= look_began => Ok(state),
        _ => runtime.inspect(container).await,
    };
    (state, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_scales_with_the_start_call_within_its_bounds() {
        assert_eq!(
            window(Duration::from_millis(1000)),
            Duration::from_millis(40)
        );
        assert_eq!(window(Duration::from_millis(250)), SHORTEST);
        assert_eq!(window(Duration::from_secs(10)), LONGEST);
    }
}
