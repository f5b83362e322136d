//! `docs/errors.md`: the error reference rebuilt from the tables.

use std::fmt::Write as _;

use overten_errors::{
    Category, Envelope, ErrorCode, FALLBACK, Failed, RATE_LIMIT_WINDOW_SECONDS, RETENTION_DAYS,
    RetryBudget, RetryPolicy, RetryRule, STATUSES, SYNC_TIMEOUT_SECONDS, TaskError, TaskFailure,
    Tier, headers,
};

use crate::GENERATED;

/// Escapes the characters that would break a table cell or start emphasis.
pub(crate) fn cell(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('*', "\\*")
}

fn json_block(out: &mut String, value: &impl serde::Serialize) {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    let _ = write!(out, "```json\n{text}\n```\n\n");
}

fn retry_parameters(rule: RetryRule, policy: &RetryPolicy) -> String {
    match rule.action() {
        "backoff" => format!(
            "{} ms × {}ⁿ, cap {} ms, jitter {}",
            policy.initial_delay().as_millis(),
            policy.multiplier(),
            policy.max_delay().as_millis(),
            policy.jitter()
        ),
        "retry_after" => format!(
            "Retry-After, else X-RateLimit-Reset (none remaining), else {} s; waits {}–{} s honored",
            overten_errors::RATE_LIMIT_DEFAULT_WAIT_SECONDS,
            policy.min_wait().as_secs(),
            policy.max_wait().as_secs()
        ),
        // `RetryRule`'s Display carries a window's bounds ("wait 30–60 s").
        "wait" => format!("{rule}, unless Retry-After says otherwise"),
        "resubmit_async" => "resubmit with `async: true`, poll `/tasks/{id}`".to_owned(),
        _ => "fix the request first".to_owned(),
    }
}

/// The whole page.
#[allow(
    clippy::too_many_lines,
    reason = "one section after another, in page order"
)]
pub(crate) fn errors_md() -> String {
    let policy = RetryPolicy::default();
    let budget = RetryBudget::default();
    let mut out = String::new();
    let _ = write!(
        out,
        "<!-- {GENERATED} -->\n\n# Overten API error reference\n\n\
         Every error response from the Overten API has the same JSON shape. The HTTP status gives \
         the broad category, `error` the exact machine-readable reason, and `message` a \
         human-readable text that is safe to show to end users: it never contains stack traces \
         or internal details.\n\n"
    );
    let envelope = Envelope::new("rate_limit_exceeded", ErrorCode::RateLimitExceeded.when());
    let _ = write!(
        out,
        "Members, in this order: `success` (always `false`), `error` (one of the codes below), \
         `message`. Example:\n\n```json\n{}\n```\n\n",
        String::from_utf8_lossy(&envelope.to_json())
    );

    out.push_str("## HTTP status codes\n\n| Code | Category | Typical scenario | Kind |\n|---|---|---|---|\n");
    for s in STATUSES {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            s.status,
            cell(s.category),
            cell(s.scenario),
            s.kind().as_str()
        );
    }

    out.push_str("\n## Error codes\n\n");
    for &category in Category::ALL {
        let _ = write!(
            out,
            "### {}\n\n| Code | Status | When it occurs | How to fix it |\n|---|---|---|---|\n",
            category.title()
        );
        for code in category.codes() {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} |",
                code.as_str(),
                code.status(),
                cell(code.when()),
                cell(code.fix())
            );
        }
        out.push('\n');
    }

    out.push_str(
        "## Retrying\n\nWhat a client does with each code. `RetryPolicy::decide` in \
         `overten-errors` implements this table; `docs/catalog.json` has it as data.\n\n\
         The decision, step by step in the order the code takes it, is `docs/retry.md`.\n\n\
         | Code | Status | Action | Parameters |\n|---|---|---|---|\n",
    );
    for &code in ErrorCode::ALL {
        let rule = code.retry();
        let _ = writeln!(
            out,
            "| `{}` | {} | `{}` | {} |",
            code.as_str(),
            code.status(),
            rule.action(),
            cell(&retry_parameters(rule, &policy))
        );
    }
    out.push_str(
        "\nActions: `never`: do not retry, fix the request; `backoff`: exponential backoff with \
         jitter; `retry_after`: honor `Retry-After` (an HTTP-date or delta-seconds), else \
         `X-RateLimit-Reset` when no requests remain, else wait the page's default; `wait`: wait \
         a random time in the window, unless `Retry-After` says otherwise; \
         `resubmit_async`: not a retry, resubmit with `async: true` and poll `/tasks/{id}`. \
         A valid `Retry-After` is honoured on any retried error.\n\n\
         ### When the status decides\n\nA client keeps an unknown code as it was sent \
         and decides by HTTP status; so it does when the body carries no code, or a known code \
         with another status than its own (the code is kept). The first matching row wins; for \
         every code above, its status's row gives the code's own action.\n\n\
         | Statuses | Action | Why |\n|---|---|---|\n",
    );
    for r in FALLBACK {
        let range = if r.from == r.to {
            r.from.to_string()
        } else {
            format!("{}–{}", r.from, r.to)
        };
        let _ = writeln!(out, "| {range} | `{}` | {} |", r.rule.action(), cell(r.why));
    }
    let _ = writeln!(
        out,
        "| any other | `{}` | not an error status |",
        RetryRule::for_status(0).action()
    );
    let _ = write!(
        out,
        "\n### Defaults\n\n| Setting | Default |\n|---|---|\n\
         | initial delay | {} ms |\n| multiplier | {} |\n| maximum delay | {} ms |\n\
         | jitter | {} (delay drawn from [(1 − jitter)·d, d]) |\n| maximum attempts | {} |\n\
         | shortest server-named wait | {} ms |\n| longest wait ever advised (else stop) | {} ms |\n\
         | retry budget | {} tokens, {} per retry, {} back per success |\n\n",
        policy.initial_delay().as_millis(),
        policy.multiplier(),
        policy.max_delay().as_millis(),
        policy.jitter(),
        policy.max_attempts(),
        policy.min_wait().as_millis(),
        policy.max_wait().as_millis(),
        budget.capacity(),
        budget.retry_cost(),
        budget.success_refill(),
    );

    out.push_str(
        "## Handling errors in code\n\nBranch on the `error` field. Treat 5xx responses as \
         transient and retry with exponential backoff, except `not_implemented` (501), which \
         never succeeds on retry. Treat 4xx responses as permanent, except 408 (resubmit with \
         `async: true`) and 429 (honor `Retry-After`): retrying without changing the request \
         will not help.\n\n",
    );

    let failure = TaskFailure {
        task_id: "task_...".to_owned(),
        status: Failed,
        error: TaskError {
            code: ErrorCode::InternalError.into(),
            message: "AgentLoopError: max_tool_calls=30 exceeded".to_owned(),
        },
        credits_used: 0,
        duration_ms: 45123,
    };
    out.push_str(
        "## Debugging failed runs\n\nCapture `run_id` and `task_id` from every response and \
         include both in support tickets. An async task that fails carries the structured \
         failure in `error` on `GET /tasks/{task_id}`:\n\n",
    );
    json_block(&mut out, &failure);
    let _ = write!(
        out,
        "For `internal_error`, include the `{}` response header in the ticket: it maps to the \
         server-side trace.\n\n",
        headers::REQUEST_ID.name
    );

    out.push_str("## Rate limits\n\n| Header | Carries | Sent on |\n|---|---|---|\n");
    for h in headers::ALL {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} |",
            h.name,
            cell(h.description),
            cell(h.sent)
        );
    }
    let _ = write!(
        out,
        "\nLimits are enforced per API key, per minute ({RATE_LIMIT_WINDOW_SECONDS} s), at the \
         gateway, before any work starts; hitting one deducts no credits.\n\n\
         | Tier | Requests per minute | Concurrent runs |\n|---|---|---|\n"
    );
    for &t in Tier::ALL {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            t.as_str(),
            t.requests_per_minute(),
            t.concurrent_runs()
        );
    }
    let _ = write!(
        out,
        "\n## Other limits\n\n| Limit | Value |\n|---|---|\n\
         | sync request ceiling (then 408 `sync_timeout_upgrade_async`) | {SYNC_TIMEOUT_SECONDS} s |\n\
         | retention window (then 410 `gone`) | {RETENTION_DAYS} days |\n"
    );
    out
}
