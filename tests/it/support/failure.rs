//! Which tests have failed: a panic hook marks the test whose thread panicked, so that the agents
//! it started stop echoing their logs and the failure's message is not buried under the cleanup's.

use std::collections::BTreeSet;
use std::sync::{Mutex, Once};

static FAILED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static HOOK: Once = Once::new();

/// The name of the test running on this thread (libtest names each test's thread after it), with
/// the panic hook installed that marks it when it fails.
pub fn current_test() -> String {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(name) = std::thread::current().name() {
                FAILED
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_owned());
            }
            previous(info);
        }));
    });
    std::thread::current().name().unwrap_or("").to_owned()
}

/// Whether the test named `test` has panicked.
pub fn has_failed(test: &str) -> bool {
    FAILED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(test)
}
