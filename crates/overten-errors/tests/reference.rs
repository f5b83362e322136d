//! Every table of the published reference page, compared with the crate's data.
//!
//! The page (`tests/data/error-reference.txt`, a verbatim copy of the published text) runs
//! its table cells together with no separator, so each row is checked as the exact
//! concatenation of the crate's cells, in page order, with no row missing or extra.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on broken fixtures"
)]

use std::time::{Duration, SystemTime};

use overten_errors::{
    ApiError, Category, Envelope, ErrorCode, FALLBACK, RATE_LIMIT_WINDOW_SECONDS, RETENTION_DAYS,
    RetryRule, STATUSES, SYNC_TIMEOUT_SECONDS, StatusKind, TaskFailure, Tier, headers,
};

const PAGE: &str = include_str!("data/error-reference.txt");

fn lines() -> Vec<&'static str> {
    PAGE.lines().collect()
}

/// The rows of the table whose header line is `header`: every line up to the next blank one.
fn table(header: &str) -> Vec<&'static str> {
    let lines = lines();
    let start = lines
        .iter()
        .position(|l| *l == header)
        .unwrap_or_else(|| panic!("no table headed {header:?} on the page"));
    lines[start + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .copied()
        .collect()
}

#[test]
fn vendored_page_matches_shared_spec_when_present() {
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/spec/error-reference.txt"
    );
    match std::fs::read_to_string(shared) {
        Ok(published) => assert_eq!(published, PAGE, "tests/data copy differs from {shared}"),
        Err(e) => eprintln!("skipping: {shared} not readable ({e})"),
    }
}

#[test]
fn status_table_matches_page() {
    let rows = table("CodeCategoryTypical scenario");
    assert_eq!(rows.len(), 20, "the page lists 20 statuses");
    assert_eq!(rows.len(), STATUSES.len());
    for (row, info) in rows.iter().zip(STATUSES) {
        assert_eq!(
            *row,
            format!("{}{}{}", info.status, info.category, info.scenario)
        );
    }
    let kinds: Vec<_> = STATUSES
        .iter()
        .map(overten_errors::StatusInfo::kind)
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == StatusKind::Success).count(),
        4
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == StatusKind::Redirect).count(),
        1
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == StatusKind::ClientError)
            .count(),
        11
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == StatusKind::ServerError)
            .count(),
        4
    );
}

/// The code tables: (category heading, row) in page order.
fn code_rows() -> Vec<(&'static str, &'static str)> {
    let lines = lines();
    let from = lines.iter().position(|l| *l == "Error codes").unwrap();
    let to = lines
        .iter()
        .position(|l| *l == "Handling errors in code")
        .unwrap();
    let mut out = Vec::new();
    let mut heading = "";
    let mut in_table = false;
    for line in &lines[from + 1..to] {
        if line.trim().is_empty() {
            in_table = false;
        } else if *line == "CodeWhen it occursHow to fix it" {
            in_table = true;
        } else if in_table {
            out.push((heading, *line));
        } else {
            heading = line;
        }
    }
    out
}

#[test]
fn code_tables_match_page_row_for_row() {
    let rows = code_rows();
    assert_eq!(rows.len(), 16, "the page lists 16 codes");
    assert_eq!(rows.len(), ErrorCode::ALL.len());
    for ((heading, row), code) in rows.iter().zip(ErrorCode::ALL) {
        assert_eq!(*heading, code.category().title(), "{code}");
        assert_eq!(
            *row,
            format!("{}{}{}", code.as_str(), code.when(), code.fix())
        );
        // The cell boundary: a lowercase wire string, then a capitalised sentence.
        let next = row[code.as_str().len()..].chars().next().unwrap();
        assert!(next.is_uppercase(), "{code}: row continues with {next:?}");
    }
    let headings: Vec<_> = Category::ALL.iter().map(|c| c.title()).collect();
    let mut page_headings: Vec<_> = rows.iter().map(|(h, _)| *h).collect();
    page_headings.dedup();
    assert_eq!(page_headings, headings);
}

#[test]
fn code_statuses_follow_the_status_table() {
    // Read off the page: each code's status is the status-table row whose text names its
    // situation. The phrase is checked against that row, so the reading is checked too.
    let expected: &[(&str, u16, &str)] = &[
        ("invalid_api_key", 401, "Bad or missing API key"),
        ("forbidden", 403, "Key valid but not permitted"),
        ("insufficient_credits", 402, "Out of credits"),
        ("invalid_request", 400, "Validation"),
        (
            "validation_error",
            422,
            "Field-level rejection on the request body",
        ),
        ("preflight_failed", 400, "preflight"),
        ("payload_too_large", 413, "Upload exceeds tier limit"),
        ("not_found", 404, "doesn’t exist or belongs to another org"),
        ("gone", 410, "Resource existed but was deleted or expired"),
        ("conflict", 409, "Idempotency key collision"),
        ("sync_timeout_upgrade_async", 408, "Sync ceiling exceeded"),
        ("rate_limit_exceeded", 429, "Retry-After"),
        ("internal_error", 500, "Unhandled exception"),
        (
            "upstream_error",
            502,
            "model provider, storage, or rendering pipeline",
        ),
        (
            "service_unavailable",
            503,
            "Capacity exhausted or scheduled maintenance",
        ),
        ("not_implemented", 501, "the feature isn’t live yet"),
    ];
    assert_eq!(expected.len(), ErrorCode::ALL.len());
    let status_rows = table("CodeCategoryTypical scenario");
    for (wire, status, phrase) in expected {
        let row = status_rows
            .iter()
            .find(|r| r.starts_with(&status.to_string()))
            .unwrap();
        assert!(
            row.contains(phrase),
            "{status} row {row:?} lacks {phrase:?}"
        );
        let code = ErrorCode::from_wire(wire).unwrap();
        assert_eq!(code.status(), *status, "{wire}");
    }
}

/// The page's handling rules, applied to each row's own text.
#[test]
fn retry_rules_follow_the_page() {
    for &code in ErrorCode::ALL {
        let status = code.status();
        let fix = code.fix();
        let want = match status {
            408 => {
                assert!(fix.contains("async: true"), "{code}");
                RetryRule::ResubmitAsync
            }
            429 => {
                assert!(fix.contains("Retry-After"), "{code}");
                RetryRule::RetryAfter
            }
            // "Treat 4xx responses (other than 408 and 429) as permanent".
            400..=499 => RetryRule::Never,
            // The page's not_implemented row: the feature is not there; contact support.
            501 => {
                assert!(fix.contains("Contact support"), "{code}");
                RetryRule::Never
            }
            // "Treat 5xx responses as transient": a stated window, or backoff.
            500..=599 => match seconds_window(fix) {
                Some((min, max)) => RetryRule::Wait {
                    min_ms: min * 1000,
                    max_ms: max * 1000,
                },
                None => RetryRule::Backoff,
            },
            _ => panic!("{code}: status {status} is not an error"),
        };
        assert_eq!(code.retry(), want, "{code}");
    }
}

/// "Retry after 30–60 seconds" -> (30, 60).
fn seconds_window(text: &str) -> Option<(u64, u64)> {
    let end = text.find(" seconds")?;
    let head = &text[..end];
    let start = head.rfind(' ').map_or(0, |i| i + 1);
    let (a, b) = head[start..].split_once('–')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[test]
fn fallback_is_the_page_general_rule() {
    // The 503 window, from the page's service_unavailable row ("Retry after 30–60 seconds").
    let fix = lines()
        .into_iter()
        .find(|l| l.starts_with("service_unavailable"))
        .expect("the page has a service_unavailable row");
    let (min, max) = seconds_window(fix).expect("the page states a window for 503");
    for status in 400..=599u16 {
        let want = match status {
            408 => RetryRule::ResubmitAsync,
            429 => RetryRule::RetryAfter,
            501 => RetryRule::Never,
            503 => RetryRule::Wait {
                min_ms: min * 1000,
                max_ms: max * 1000,
            },
            500..=599 => RetryRule::Backoff,
            _ => RetryRule::Never,
        };
        assert_eq!(RetryRule::for_status(status), want, "{status}");
    }
    for status in [0, 100, 200, 302, 600, u16::MAX] {
        assert_eq!(RetryRule::for_status(status), RetryRule::Never);
    }
    assert!(FALLBACK.iter().all(|r| !r.why.is_empty() && r.from <= r.to));
}

#[test]
fn tiers_match_page() {
    // The page's last table runs into the closing paragraph with no blank line: its rows
    // are the lines that start with a lowercase tier name.
    let rows: Vec<_> = table("TierRequests per minuteConcurrent runs")
        .into_iter()
        .take_while(|l| l.starts_with(|c: char| c.is_ascii_lowercase()))
        .collect();
    assert_eq!(rows.len(), 3, "the page lists 3 tiers");
    assert_eq!(rows.len(), Tier::ALL.len());
    for (row, tier) in rows.iter().zip(Tier::ALL) {
        assert_eq!(
            *row,
            format!(
                "{}{}{}",
                tier,
                tier.requests_per_minute(),
                tier.concurrent_runs()
            )
        );
    }
}

#[test]
fn headers_and_numbers_match_page() {
    for h in [
        headers::RATE_LIMIT_LIMIT,
        headers::RATE_LIMIT_REMAINING,
        headers::RATE_LIMIT_RESET,
        headers::RETRY_AFTER,
    ] {
        let prefix = format!("{}: ", h.name);
        assert!(
            PAGE.lines().any(|l| l.starts_with(&prefix)),
            "no sample line {prefix:?} on the page"
        );
    }
    assert!(PAGE.contains(&format!("the {} header", headers::REQUEST_ID.name)));
    assert_eq!(headers::ALL.len(), 5);
    assert!(PAGE.contains(&format!("hit the {SYNC_TIMEOUT_SECONDS}-second ceiling")));
    assert!(PAGE.contains(&format!("the {RETENTION_DAYS}-day retention window")));
    assert_eq!(RATE_LIMIT_WINDOW_SECONDS, 60);
    assert!(PAGE.contains("per API key, per minute"));
}

/// The JSON block that starts on the line after the one containing `after`.
fn json_block(after: &str) -> &'static str {
    let at = PAGE.find(after).unwrap() + after.len();
    let rest = &PAGE[at..];
    let start = rest.find("\n{").unwrap() + 1;
    let end = rest[start..].find("\n}").unwrap() + start + 2;
    &rest[start..end]
}

#[test]
fn envelope_matches_page_example() {
    let block = json_block("follows a consistent JSON shape.");
    let page: serde_json::Value = serde_json::from_str(block).unwrap();
    let ours = Envelope::new("<error_code>", "<human_readable>").to_json();
    let ours_value: serde_json::Value = serde_json::from_slice(&ours).unwrap();
    assert_eq!(ours_value, page);
    // Same member order as the page.
    let order = |s: &str| {
        ["\"success\"", "\"error\"", "\"message\""]
            .map(|k| s.find(k).unwrap())
            .to_vec()
    };
    let ours = String::from_utf8(ours).unwrap();
    let (a, b) = (order(block), order(&ours));
    assert!(a.is_sorted() && b.is_sorted());
}

#[test]
fn task_failure_matches_page_example() {
    let block = json_block("carries the full structured failure:");
    let failure: TaskFailure = serde_json::from_str(block).unwrap();
    assert_eq!(failure.task_id, "task_...");
    assert_eq!(failure.error.code, ErrorCode::InternalError);
    assert_eq!(
        failure.error.message,
        "AgentLoopError: max_tool_calls=30 exceeded"
    );
    assert_eq!((failure.credits_used, failure.duration_ms), (0, 45123));
    let back = serde_json::to_value(&failure).unwrap();
    assert_eq!(
        back,
        serde_json::from_str::<serde_json::Value>(block).unwrap()
    );

    let err = ApiError::from(failure);
    assert_eq!(err.status(), 500);
    assert_eq!(err.task_id(), Some("task_..."));
    // A client handles it like the HTTP 500 it stands for: backoff.
    assert_eq!(err.retry_rule(), RetryRule::Backoff);
}

#[test]
fn rate_limit_sample_is_read() {
    // The page's sample: X-RateLimit-Reset: 1713312345, "a Unix timestamp in seconds (UTC)".
    let rl = overten_errors::RateLimit {
        limit: 60,
        remaining: 42,
        reset: 1_713_312_345,
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_713_312_300);
    assert_eq!(rl.reset_in(now), Duration::from_secs(45));
}

#[test]
fn serialized_names_match_as_str() {
    for &c in Category::ALL {
        assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
    }
    for status in [100, 200, 302, 404, 503, 700] {
        let kind = StatusKind::of(status);
        assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
    }
    for &code in ErrorCode::ALL {
        let rule = code.retry();
        assert_eq!(serde_json::to_value(rule).unwrap()["action"], rule.action());
    }
    for &basis in overten_errors::Basis::ALL {
        assert_eq!(serde_json::to_value(basis).unwrap(), basis.as_str());
    }
    assert_eq!(
        serde_json::to_value(ErrorCode::ServiceUnavailable.retry()).unwrap(),
        serde_json::json!({"action": "wait", "min_ms": 30_000, "max_ms": 60_000})
    );
}

/// A client that sees only the status decides as one that read the code: for every row,
/// the status rule is the code's rule.
#[test]
fn the_status_alone_gives_each_codes_rule() {
    for &code in ErrorCode::ALL {
        assert_eq!(RetryRule::for_status(code.status()), code.retry(), "{code}");
    }
}

/// The page's sample client: `int(resp.headers.get("Retry-After", "30"))`.
#[test]
fn the_default_rate_limit_wait_is_the_pages() {
    let page = PAGE;
    let at = page
        .find(r#"resp.headers.get("Retry-After", ""#)
        .expect("the page's sample reads Retry-After with a default");
    let rest = &page[at + r#"resp.headers.get("Retry-After", ""#.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    assert_eq!(
        digits.parse::<u64>().unwrap(),
        overten_errors::RATE_LIMIT_DEFAULT_WAIT_SECONDS
    );
}
