//! What the gateway records through the `metrics` facade (feature `metrics`; without it
//! every function here is empty and compiles away). Names follow OpenTelemetry's semantic
//! conventions where one exists (`http.server.request.duration`, its attributes
//! `http.request.method` and `http.response.status_code`, `error.type`; a Prometheus
//! exporter writes the dots as underscores); the others are this crate's, named as
//! Prometheus names them (`overten_…`, counters ending `_total`, durations `_seconds`), so
//! `promtool check metrics` passes the mock's `/metrics` as it is.
//!
//! Labels hold only values from fixed sets (tiers, methods, statuses, the catalog's error
//! codes, store and outcome names): never a key, a key's hash, an org or a path.

use overten_errors::Tier;
#[cfg(feature = "metrics")]
use overten_errors::{ApiError, Code};

/// `http.server.request.duration`: seconds from the request reaching the gateway to its
/// response head, by method, status, tier and error code.
pub const REQUEST_DURATION: &str = "http.server.request.duration";
/// `overten_gateway_rate_limited_total`: 429s by reason (`rate`, `runs`), tier and source
/// (`store`, `near_cache`).
pub const RATE_LIMITED: &str = "overten_gateway_rate_limited_total";
/// `overten_store_operation_duration_seconds`: seconds a store call took, by store (`gateway`,
/// `idempotency`), operation and outcome (`ok`, `error`).
pub const STORE_DURATION: &str = "overten_store_operation_duration_seconds";
/// `overten_store_failures_total`: failed store calls by store and reason (`timeout`, `full`,
/// `failed`).
pub const STORE_FAILURES: &str = "overten_store_failures_total";
/// `overten_store_outage`: 1 while the store is failing as this replica sees it, else 0.
pub const STORE_OUTAGE: &str = "overten_store_outage";
/// `overten_gateway_runs_in_progress`: run permits this replica holds, by tier.
pub const RUNS_IN_PROGRESS: &str = "overten_gateway_runs_in_progress";
/// `overten_idempotency_requests_total`: keyed requests by outcome (`first`, `replayed`,
/// `conflict`, `in_progress`, `refused`).
pub const IDEMPOTENCY: &str = "overten_idempotency_requests_total";
/// `overten_tasks_total`: async tasks by what became of them (`created`, `succeeded`,
/// `failed`, `abandoned`: dropped by its handler unfinished, `reaped`: its replica stopped
/// renewing it, marked failed by a reader).
pub const TASKS: &str = "overten_tasks_total";

/// Gives every metric above its description and unit: call once after installing a
/// recorder (the names appear in an exporter's output only once recorded).
pub fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_histogram!(
            REQUEST_DURATION,
            Unit::Seconds,
            "Duration of HTTP server requests, to the response head"
        );
        describe_counter!(RATE_LIMITED, "Requests answered 429 by the gateway");
        describe_histogram!(STORE_DURATION, Unit::Seconds, "Duration of store calls");
        describe_counter!(STORE_FAILURES, "Store calls that failed");
        describe_gauge!(STORE_OUTAGE, "1 while the store is failing");
        describe_gauge!(RUNS_IN_PROGRESS, "Run permits held by this replica");
        describe_counter!(IDEMPOTENCY, "Requests with an Idempotency-Key, by outcome");
        describe_counter!(TASKS, "Async tasks, by what became of them");
    }
}

/// A stopwatch for a recorded duration: without the feature, nothing (no clock read).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timer {
    #[cfg(feature = "metrics")]
    started: std::time::Instant,
}

impl Timer {
    pub(crate) fn start() -> Timer {
        Timer {
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
        }
    }

    /// Seconds since [`Timer::start`] (0 without the feature).
    #[cfg_attr(not(feature = "metrics"), allow(clippy::unused_self))]
    pub(crate) fn seconds(self) -> f64 {
        #[cfg(feature = "metrics")]
        return self.started.elapsed().as_secs_f64();
        #[cfg(not(feature = "metrics"))]
        0.0
    }
}

pub(crate) fn tier_label(tier: Option<Tier>) -> &'static str {
    match tier {
        Some(Tier::Free) => "free",
        Some(Tier::Pro) => "pro",
        Some(Tier::Enterprise) => "enterprise",
        Some(_) => "other",
        None => "none",
    }
}

/// A request's response head: its duration and labels.
#[cfg(feature = "metrics")]
pub(crate) fn request(
    method: &http::Method,
    status: http::StatusCode,
    tier: Option<Tier>,
    error: Option<&ApiError>,
    seconds: f64,
) {
    {
        let method = match *method {
            http::Method::GET => "GET",
            http::Method::POST => "POST",
            http::Method::PUT => "PUT",
            http::Method::DELETE => "DELETE",
            http::Method::PATCH => "PATCH",
            http::Method::HEAD => "HEAD",
            http::Method::OPTIONS => "OPTIONS",
            _ => "_OTHER",
        };
        let error_type = match error.map(ApiError::code) {
            Some(Code::Known(code)) => code.as_str(),
            Some(_) => "_OTHER",
            // OpenTelemetry: without another error, the status code itself.
            None if status.as_u16() >= 400 => status_label(status),
            None => "",
        };
        let status = status_label(status);
        let tier = tier_label(tier);
        if error_type.is_empty() {
            metrics::histogram!(REQUEST_DURATION,
                "http.request.method" => method,
                "http.response.status_code" => status,
                "overten.tier" => tier)
            .record(seconds);
        } else {
            metrics::histogram!(REQUEST_DURATION,
                "http.request.method" => method,
                "http.response.status_code" => status,
                "overten.tier" => tier,
                "error.type" => error_type)
            .record(seconds);
        }
    }
}

/// A status as a label, from a fixed set of strings.
#[cfg(feature = "metrics")]
fn status_label(status: http::StatusCode) -> &'static str {
    // Every status the catalog or the frameworks send is listed; anything else by class.
    match status.as_u16() {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        501 => "501",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => status_class(status),
    }
}

#[cfg(feature = "metrics")]
fn status_class(status: http::StatusCode) -> &'static str {
    match status.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// A 429 by the gateway.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn rate_limited(reason: &'static str, tier: Tier, near_cache: bool) {
    #[cfg(feature = "metrics")]
    metrics::counter!(RATE_LIMITED,
        "reason" => reason,
        "tier" => tier_label(Some(tier)),
        "source" => if near_cache { "near_cache" } else { "store" })
    .increment(1);
}

/// A store call of `store` (`gateway`, `idempotency`), its outcome.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn store_call(
    store: &'static str,
    operation: &'static str,
    failure: Option<&crate::store::StoreError>,
    seconds: f64,
) {
    #[cfg(feature = "metrics")]
    {
        use crate::store::StoreError;
        let outcome = if failure.is_some() { "error" } else { "ok" };
        metrics::histogram!(STORE_DURATION,
            "store" => store, "operation" => operation, "outcome" => outcome)
        .record(seconds);
        if let Some(err) = failure {
            let reason = match err {
                StoreError::Timeout(_) => "timeout",
                StoreError::Full => "full",
                _ => "failed",
            };
            metrics::counter!(STORE_FAILURES, "store" => store, "reason" => reason).increment(1);
        }
    }
}

/// The store `store` is failing (`true`) or answering again.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn outage(store: &'static str, down: bool) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(STORE_OUTAGE, "store" => store).set(if down { 1.0 } else { 0.0 });
}

/// A run permit taken (`+1`) or given back (`-1`).
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn runs(tier: &'static str, delta: f64) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(RUNS_IN_PROGRESS, "tier" => tier).increment(delta);
}

/// A keyed request's outcome.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn idempotency(outcome: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(IDEMPOTENCY, "outcome" => outcome).increment(1);
}

/// An async task's step.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn task(outcome: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(TASKS, "outcome" => outcome).increment(1);
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_fixed_sets() {
        assert_eq!(status_label(http::StatusCode::IM_A_TEAPOT), "4xx");
        assert_eq!(status_label(http::StatusCode::TOO_MANY_REQUESTS), "429");
        assert_eq!(tier_label(None), "none");
        assert_eq!(tier_label(Some(Tier::Pro)), "pro");
    }
}
