//! A store outage, logged as one story: its start, a count every [`REPORT_EVERY`], its end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::store::StoreError;

/// How often an outage that goes on is reported, with the failures since the last report.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(10);

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

/// A line of an outage's story, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    /// The first failure after a success.
    Started,
    /// Failures since the last line, every [`REPORT_EVERY`].
    GoesOn {
        failures: u64,
        total: u64,
        down_for: Duration,
    },
    /// The first success after failures.
    Ended { failures: u64, down_for: Duration },
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

    /// A call to the store failed at `now`: logs what the outage's story needs, and
    /// returns it.
    pub(crate) fn failed(&self, err: &StoreError, now: Instant) -> Option<Report> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.failures = s.failures.saturating_add(1);
        let report = match (s.since, s.reported_at) {
            (None, _) => {
                s.since = Some(now);
                s.reported_at = Some(now);
                s.reported = s.failures;
                self.down.store(true, Ordering::Relaxed);
                crate::metrics::outage(self.store, true);
                Report::Started
            }
            (Some(since), Some(at)) if now.saturating_duration_since(at) >= REPORT_EVERY => {
                let failures = s.failures - s.reported;
                s.reported_at = Some(now);
                s.reported = s.failures;
                Report::GoesOn {
                    failures,
                    total: s.failures,
                    down_for: now.saturating_duration_since(since),
                }
            }
            _ => return None,
        };
        drop(s);
        match report {
            Report::Started => tracing::error!(
                store = self.store,
                error = %err,
                "store outage started: requests are answered by the store-failure policy until it is back"
            ),
            Report::GoesOn {
                failures,
                total,
                down_for,
            } => tracing::warn!(
                store = self.store,
                failures,
                total,
                down_for_s = down_for.as_secs(),
                error = %err,
                "store outage goes on"
            ),
            Report::Ended { .. } => {}
        }
        Some(report)
    }

    /// A call to the store succeeded at `now`: the outage's end, if there was one.
    pub(crate) fn succeeded(&self, now: Instant) -> Option<Report> {
        if !self.down.load(Ordering::Relaxed) {
            return None;
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let since = s.since.take()?;
        self.down.store(false, Ordering::Relaxed);
        crate::metrics::outage(self.store, false);
        let report = Report::Ended {
            failures: s.failures,
            down_for: now.saturating_duration_since(since),
        };
        *s = State::default();
        drop(s);
        if let Report::Ended { failures, down_for } = report {
            tracing::warn!(
                store = self.store,
                failures,
                down_for_ms = u64::try_from(down_for.as_millis()).unwrap_or(u64::MAX),
                "store outage ended: counting in the store again"
            );
        }
        Some(report)
    }

    /// Whether the store is down, as last seen.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// The failures of the outage going on (0 when none is).
    #[cfg(test)]
    pub(crate) fn failures(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failures
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
        let ms = Duration::from_millis;
        assert_eq!(o.succeeded(t0), None, "no outage, nothing to say");
        assert!(!o.is_down());
        assert_eq!(o.failed(&err(), t0), Some(Report::Started));
        assert!(o.is_down());
        for i in 1..100 {
            assert_eq!(o.failed(&err(), t0 + ms(i)), None, "one line to start");
        }
        // Past REPORT_EVERY: one line, counting the failures since the last one.
        assert_eq!(
            o.failed(&err(), t0 + REPORT_EVERY),
            Some(Report::GoesOn {
                failures: 100,
                total: 101,
                down_for: REPORT_EVERY
            })
        );
        // Just short of the next line: none; at it, the count since the last line.
        let next = t0 + REPORT_EVERY + REPORT_EVERY;
        let just_short = t0 + REPORT_EVERY + REPORT_EVERY.saturating_sub(ms(1));
        assert_eq!(o.failed(&err(), just_short), None);
        assert_eq!(
            o.failed(&err(), next),
            Some(Report::GoesOn {
                failures: 2,
                total: 103,
                down_for: REPORT_EVERY * 2
            })
        );
        assert_eq!(
            o.succeeded(t0 + REPORT_EVERY * 3),
            Some(Report::Ended {
                failures: 103,
                down_for: REPORT_EVERY * 3
            })
        );
        assert!(!o.is_down());
        assert_eq!(o.succeeded(t0 + REPORT_EVERY * 4), None, "said once");
        // The next outage counts afresh.
        assert_eq!(
            o.failed(&err(), t0 + REPORT_EVERY * 5),
            Some(Report::Started)
        );
        assert_eq!(
            o.succeeded(t0 + REPORT_EVERY * 5 + ms(7)),
            Some(Report::Ended {
                failures: 1,
                down_for: ms(7)
            })
        );
    }
}
