//! The near-cache: keys known to be over their rate limit in the current window, answered
//! 429 by this replica without a store call until the window's reset.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::key::KeyHash;

/// Shards, picked by the key hash's first byte: requests of different keys rarely wait on
/// one lock.
const SHARDS: usize = 16;

/// The over-limit keys of one window, bounded: at most [`NearCache::MAX_KEYS`] (a key past
/// the bound is simply not cached: its requests go to the store as before). A new window
/// empties a shard the first time the shard is used in it.
#[derive(Debug)]
pub(crate) struct NearCache {
    shards: [Mutex<Shard>; SHARDS],
}

#[derive(Debug, Default)]
struct Shard {
    window: u64,
    /// Key → the limit it went over (an account moved to another tier meanwhile is asked
    /// of the store again).
    over: HashMap<KeyHash, u32>,
}

impl Default for NearCache {
    fn default() -> Self {
        NearCache {
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
        }
    }
}

impl NearCache {
    /// The most keys cached at once, over every shard.
    pub(crate) const MAX_KEYS: usize = 65_536;

    fn shard(&self, key: &KeyHash) -> std::sync::MutexGuard<'_, Shard> {
        let i = usize::from(key.first_byte()) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `key` went over `limit` in `window`.
    pub(crate) fn is_over(&self, key: &KeyHash, window: u64, limit: u32) -> bool {
        let mut shard = self.shard(key);
        if shard.window != window {
            if window > shard.window {
                shard.window = window;
                shard.over.clear();
            }
            return false;
        }
        shard.over.get(key) == Some(&limit)
    }

    /// `key` went over `limit` in `window`.
    pub(crate) fn went_over(&self, key: &KeyHash, window: u64, limit: u32) {
        let mut shard = self.shard(key);
        if shard.window < window {
            shard.window = window;
            shard.over.clear();
        }
        if shard.window == window && shard.over.len() < Self::MAX_KEYS / SHARDS {
            shard.over.insert(*key, limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_over_for_its_window_and_limit_only() {
        let near = NearCache::default();
        let (a, b) = (KeyHash::of("a"), KeyHash::of("b"));
        assert!(!near.is_over(&a, 5, 10));
        near.went_over(&a, 5, 10);
        assert!(near.is_over(&a, 5, 10));
        assert!(!near.is_over(&b, 5, 10), "another key");
        assert!(
            !near.is_over(&a, 5, 100),
            "another limit: the account changed tier"
        );
        assert!(!near.is_over(&a, 6, 10), "the next window starts afresh");
        assert!(!near.is_over(&a, 5, 10), "and the old one is gone");
        // A late report for an ended window is not kept.
        near.went_over(&a, 4, 10);
        assert!(!near.is_over(&a, 4, 10));
    }

    #[test]
    fn the_bound_holds() {
        let near = NearCache::default();
        for i in 0..NearCache::MAX_KEYS * 2 {
            near.went_over(&KeyHash::of(&i.to_string()), 1, 10);
        }
        let held: usize = near
            .shards
            .iter()
            .map(|s| s.lock().unwrap().over.len())
            .sum();
        assert!(held <= NearCache::MAX_KEYS, "{held}");
        assert!(held > NearCache::MAX_KEYS / 2, "{held}");
    }
}
