//! Places held per key (connections per peer address, waits per token): a count per key, capped,
//! given back when the place is dropped. Depends on nothing else of the crate.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// How many places each key holds, at most `cap` each for a capped holder.
#[derive(Debug)]
pub struct Quota<K: Eq + Hash + Clone> {
    cap: usize,
    held: Mutex<HashMap<K, usize>>,
}

/// One place of `key`; dropping it gives the place back.
#[derive(Debug)]
pub struct Place<K: Eq + Hash + Clone> {
    quota: Arc<Quota<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Quota<K> {
    /// A quota of at least one place per key.
    pub fn new(cap: usize) -> Arc<Quota<K>> {
        Arc::new(Quota {
            cap: cap.max(1),
            held: Mutex::default(),
        })
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// One more place for `key`: `None` when it holds its cap already and `capped` says the cap
    /// applies to it (an uncapped holder is counted all the same).
    pub fn take(self: &Arc<Self>, key: &K, capped: bool) -> Option<Place<K>> {
        let mut held = self.lock();
        let count = held.entry(key.clone()).or_insert(0);
        if capped && *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Place {
            quota: self.clone(),
            key: key.clone(),
        })
    }

    /// The places held at this moment, of every key.
    pub fn total(&self) -> usize {
        self.lock().values().sum()
    }

    /// Held for a few statements, never across an `.await`.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<K: Eq + Hash + Clone> Drop for Place<K> {
    fn drop(&mut self) {
        let mut held = self.quota.lock();
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_capped_per_key_and_given_back() {
        let quota = Quota::new(2);
        let a1 = quota.take(&"a", true).expect("first");
        let _a2 = quota.take(&"a", true).expect("second");
        assert!(quota.take(&"a", true).is_none(), "over the cap");
        let _b = quota
            .take(&"b", true)
            .expect("another key has its own places");
        let uncapped = quota.take(&"a", false).expect("uncapped, but counted");
        assert_eq!(quota.total(), 4);
        drop(a1);
        drop(uncapped);
        assert_eq!(quota.total(), 2);
        assert!(
            quota.take(&"a", true).is_some(),
            "a place given back is free again"
        );
        assert_eq!(quota.total(), 2, "the place taken was dropped at once");
        assert_eq!(Quota::<u8>::new(0).cap(), 1);
    }
}
