//! `overten-errors explain`.

use std::fmt::Write as _;

use overten_errors::{ErrorCode, FallbackRule, HeaderUse, RetryRule, headers, status_info};

/// The explanation of a code or a status, or why `what` is neither.
pub(crate) fn explain(what: &str) -> Result<String, String> {
    if let Ok(status) = what.parse::<u16>() {
        if (100..=599).contains(&status) {
            return Ok(status_text(status));
        }
        return Err(format!("{status} is not an HTTP status (100 to 599)"));
    }
    if let Some(code) = ErrorCode::from_wire(what) {
        return Ok(code_text(code));
    }
    let snake = what.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && what.len() <= 64
        && what
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if snake {
        return Ok(unknown_text(what));
    }
    Err(format!(
        "{:?} is neither an error code (snake_case) nor an HTTP status",
        what.chars().take(64).collect::<String>()
    ))
}

fn rule_text(rule: RetryRule) -> String {
    match rule {
        RetryRule::Never => "never: retrying the same request will not help".to_owned(),
        RetryRule::Backoff => {
            "backoff: retry with exponential backoff and jitter (a valid Retry-After wins)"
                .to_owned()
        }
        RetryRule::RetryAfter => format!(
            "retry_after: wait what Retry-After says; else until X-RateLimit-Reset when none \
             remain; else {} s",
            overten_errors::RATE_LIMIT_DEFAULT_WAIT_SECONDS
        ),
        RetryRule::ResubmitAsync => {
            "resubmit_async: not a retry; send the work again with async: true and poll \
             /tasks/{id}"
                .to_owned()
        }
        other => format!("{other} (a valid Retry-After wins)"),
    }
}

fn code_text(code: ErrorCode) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({} {})",
        code.as_str(),
        code.status(),
        category(code)
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "When it occurs: {}", code.when());
    let _ = writeln!(out, "How to fix it:  {}", code.fix());
    let _ = writeln!(out, "Retry:          {}", rule_text(code.retry()));
    let _ = writeln!(out);
    let _ = writeln!(out, "Headers that matter:");
    for h in headers::ALL {
        let note = if h.name == headers::RETRY_AFTER.name {
            match code.retry().retry_after_header() {
                HeaderUse::Always => "always sent with this code",
                HeaderUse::WhenKnown => "sent when the delay is known",
                HeaderUse::Never => continue,
            }
        } else if h.name == headers::REQUEST_ID.name && code == ErrorCode::InternalError {
            "quote it in your support ticket"
        } else {
            h.sent
        };
        let _ = writeln!(out, "  {}: {} ({note})", h.name, h.description);
    }
    out
}

fn category(code: ErrorCode) -> &'static str {
    code.category().title()
}

fn status_text(status: u16) -> String {
    let mut out = String::new();
    match status_info(status) {
        Some(info) => {
            let _ = writeln!(out, "{status} {}: {}", info.category, info.scenario);
        }
        None => {
            let _ = writeln!(out, "{status}: not in the reference page's status table");
        }
    }
    let rule = RetryRule::for_status(status);
    let why = FallbackRule::find(status).map_or("not an error status", |r| r.why);
    let _ = writeln!(out, "Retry: {} ({why})", rule_text(rule));
    let codes: Vec<&str> = ErrorCode::ALL
        .iter()
        .filter(|c| c.status() == status)
        .map(|c| c.as_str())
        .collect();
    if !codes.is_empty() {
        let _ = writeln!(out, "Codes sent with it: {}", codes.join(", "));
    }
    out
}

fn unknown_text(code: &str) -> String {
    let mut out = format!(
        "{code}: not a code of this version's table.\n\nA client keeps it as sent and decides \
         by the HTTP status it came with (the first matching row wins):\n"
    );
    for r in overten_errors::FALLBACK {
        let range = if r.from == r.to {
            r.from.to_string()
        } else {
            format!("{}-{}", r.from, r.to)
        };
        let _ = writeln!(out, "  {range:<8} {}: {}", r.rule.action(), r.why);
    }
    let _ = writeln!(out, "  other    never: not an error status");
    out
}
