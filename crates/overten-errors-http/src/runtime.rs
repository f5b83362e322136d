//! What both sides use and neither owns: the wait of a retry loop or a ceiling ([`Sleep`],
//! [`TokioSleep`] with feature `tokio`) and a seed that differs per process
//! ([`process_seed`]).

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::time::Duration;

/// How the loop waits. Any `Fn(Duration) -> impl Future<Output = ()>` is one, so tests pass
/// a recorder that never really waits; `TokioSleep` (feature `tokio`) is tokio's timer.
pub trait Sleep: Send + Sync {
    /// Waits `duration`.
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

impl<F, Fut> Sleep for F
where
    F: Fn(Duration) -> Fut + Send + Sync,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self(duration))
    }
}

/// `tokio::time::sleep`.
#[cfg(feature = "tokio")]
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioSleep;

#[cfg(feature = "tokio")]
impl Sleep for TokioSleep {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        // Lazy: the timer is made when first polled, inside the runtime, so the future can
        // be built anywhere.
        Box::pin(async move { tokio::time::sleep(duration).await })
    }
}

/// A seed that differs in every process (and every call): std's per-process random hasher
/// keys, which the standard library draws from the operating system. Two clients never
/// jitter in lockstep because they were built alike.
pub fn process_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(u64::from(std::process::id()));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "tokio")]
    #[test]
    fn tokio_sleep_waits() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        rt.block_on(TokioSleep.sleep(Duration::from_millis(30)));
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn seeds_differ_between_calls() {
        let seeds: std::collections::HashSet<u64> = (0..16).map(|_| process_seed()).collect();
        assert!(seeds.len() > 1, "RandomState keys vary");
    }
}
