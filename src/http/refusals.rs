//! Refusals that anyone who reaches a port can cause (a missing or unknown token, a connection over
//! its peer's cap): each is logged at debug by its caller, and summed up here at info at most once
//! per [`INTERVAL`], so that a flood of them cannot flood the log; and the clipping of any text a
//! client chose before it is logged.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest client-given text (a path, an id, a header value) written into a log line, in bytes.
pub const MAX_LOGGED_TEXT: usize = 160;

/// The shortest time between two summary lines of one kind of refusal.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// The refusals summed up.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// A request without a well-formed, known token.
    Unauthorized,
    /// A TCP connection from an address that holds its cap of connections already.
    PeerCap,
}

impl Refusal {
    fn summary(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "requests refused as unauthorized",
            Refusal::PeerCap => "connections refused: their address held its cap of connections",
        }
    }

    fn counter(self) -> &'static Counter {
        static UNAUTHORIZED: Counter = Counter::new();
        static PEER_CAP: Counter = Counter::new();
        match self {
            Refusal::Unauthorized => &UNAUTHORIZED,
            Refusal::PeerCap => &PEER_CAP,
        }
    }
}

/// Refusals of one kind since its last summary line, and when the next line may be written.
struct Counter {
    since_last_line: AtomicU64,
    /// Milliseconds since [`epoch`]; 0 lets the first refusal be logged at once.
    next_line_at: AtomicU64,
}

impl Counter {
    const fn new() -> Counter {
        Counter {
            since_last_line: AtomicU64::new(0),
            next_line_at: AtomicU64::new(0),
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Counts one refusal of `kind`; when no summary of that kind was written within [`INTERVAL`],
/// writes one at info with the number refused since the last and `last` (called only then,
/// clipped) describing this one.
pub fn note(kind: Refusal, last: impl FnOnce() -> String) {
    let counter = kind.counter();
    counter.since_last_line.fetch_add(1, Ordering::Relaxed);
    let now = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
    let due = counter.next_line_at.load(Ordering::Relaxed);
    if now < due {
        return;
    }
    let next = now.saturating_add(u64::try_from(INTERVAL.as_millis()).unwrap_or(u64::MAX));
    // One thread wins the line; the others only counted.
    if counter
        .next_line_at
        .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    let refused = counter.since_last_line.swap(0, Ordering::Relaxed);
    let last = last();
    tracing::info!(
        refused,
        within_secs = INTERVAL.as_secs(),
        last = %clip(&last),
        "{} (each one at debug; at most one such line per interval)",
        kind.summary()
    );
}

/// `text` cut to [`MAX_LOGGED_TEXT`] bytes (on a character boundary), saying how long it was.
pub fn clip(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_LOGGED_TEXT {
        return Cow::Borrowed(text);
    }
    let mut end = MAX_LOGGED_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes)", &text[..end], text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_clipped_on_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(1000);
        let clipped = clip(&long);
        assert!(clipped.len() < MAX_LOGGED_TEXT + 20, "{clipped}");
        assert!(clipped.ends_with("… (2000 bytes)"), "{clipped}");
    }
}
