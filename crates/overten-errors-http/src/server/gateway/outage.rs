//! A store outage, logged as one story: its start, a count every [`REPORT_EVERY`], its end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::store::StoreError;

/// How often an outage that goes on is reported, with the failures since the last report.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Marks a response answered by the store-failure policy: the outage is logged by
/// [`Outage`], so the envelope layer logs this response at debug, not once per request at
/// error.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutageAnswer;

/// The state of one store, as its callers saw it: up, or down since an instant.
///
/// Every call that fails reports here; the first failure after a success logs one ERROR
/// line (the outage starts, with its cause), then at most one WARN line each
/// [`REPORT_EVERY`] with the failures counted since the last, and the first success after
/// failures one WARN line (the outage ends, with its length and count). A success while up
/// costs one relaxed atomic load.
#[derive(Debug)]
pub(crate) struct Outage {
    /// Which store, for the log lines: `"gateway"`, `"idempotency"`.
    store: &'static str,
    down: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    since: Option<Instant>,
    failures: u64,
    reported_at: Option<Instant>,
    reported: u64,
}

impl Outage {
    pub(crate) fn new(store: &'static str) -> Outage {
        Outage {
            store,
            down: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        }
    }

    /// A call to the store failed at `now`.
    pub(crate) fn failed(&self, err: &StoreError, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.failures = s.failures.saturating_add(1);
        match (s.since, s.reported_at) {
            (None, _) => {
                s.since = Some(now);
                s.reported_at = Some(now);
                s.reported = s.failures;
                self.down.store(true, Ordering::Relaxed);
                tracing::error!(
                    store = self.store,
                    error = %err,
                    "store outage started: requests are answered by the store-failure policy until it is back"
                );
            }
            (Some(since), Some(at)) if now.saturating_duration_since(at) >= REPORT_EVERY => {
                let new = s.failures - s.reported;
                s.reported_at = Some(now);
                s.reported = s.failures;
                tracing::warn!(
                    store = self.store,
                    failures = new,
                    total = s.failures,
                    down_for_s = now.saturating_duration_since(since).as_secs(),
                    error = %err,
                    "store outage goes on"
                );
            }
            _ => {}
        }
    }

    /// A call to the store succeeded at `now`.
    pub(crate) fn succeeded(&self, now: Instant) {
        if !self.down.load(Ordering::Relaxed) {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(since) = s.since.take() {
            self.down.store(false, Ordering::Relaxed);
            tracing::warn!(
                store = self.store,
                failures = s.failures,
                down_for_ms = u64::try_from(now.saturating_duration_since(since).as_millis())
                    .unwrap_or(u64::MAX),
                "store outage ended: counting in the store again"
            );
            *s = State::default();
        }
    }

    /// Whether the store is down, as last seen.
    #[cfg(test)]
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err() -> StoreError {
        StoreError::Timeout(Duration::from_millis(250))
    }

    #[test]
    fn an_outage_starts_is_reported_and_ends() {
        let o = Outage::new("gateway");
        let t0 = Instant::now();
        o.succeeded(t0);
        assert!(!o.is_down());
        o.failed(&err(), t0);
        assert!(o.is_down());
        for i in 1..100 {
            o.failed(&err(), t0 + Duration::from_millis(i));
        }
        {
            let s = o.state.lock().unwrap();
            assert_eq!((s.failures, s.reported, s.since), (100, 1, Some(t0)));
        }
        // Past REPORT_EVERY: one report, counting from the last one.
        o.failed(&err(), t0 + REPORT_EVERY);
        {
            let s = o.state.lock().unwrap();
            assert_eq!((s.failures, s.reported), (101, 101));
            assert_eq!(s.reported_at, Some(t0 + REPORT_EVERY));
        }
        // Just short of the next report: none.
        o.failed(
            &err(),
            t0 + REPORT_EVERY + REPORT_EVERY.saturating_sub(Duration::from_millis(1)),
        );
        assert_eq!(o.state.lock().unwrap().reported, 101);
        o.succeeded(t0 + REPORT_EVERY * 3);
        assert!(!o.is_down());
        let s = o.state.lock().unwrap();
        assert_eq!(
            (s.failures, s.since),
            (0, None),
            "the next outage counts afresh"
        );
    }
}
