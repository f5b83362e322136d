//! `docs/retry.md`: the decision algorithm, from `templates/retry.md` with every number
//! read from the crates and one heading per `Step`, in `Step::ALL`'s order.

use std::fmt::Write as _;

use overten_errors::{
    Advice, ApiError, ErrorCode, FALLBACK, MAX_ID_BYTES, MAX_MESSAGE_BYTES, MAX_SAFE_INTEGER,
    RATE_LIMIT_DEFAULT_WAIT_SECONDS, RetryBudget, RetryPolicy, RetryRule, SYNC_TIMEOUT_SECONDS,
    Step, UNKNOWN_TASK_CODE_STATUS,
};

use crate::GENERATED;
use crate::markdown::cell;

/// The template, prose only: numbers and step headings are `{{...}}` placeholders.
pub(crate) const TEMPLATE: &str = include_str!("../templates/retry.md");

/// The placeholder of a step's heading.
pub(crate) fn step_placeholder(step: Step) -> String {
    format!("{{{{step {}}}}}", step.as_str())
}

fn step_heading(step: Step) -> String {
    let inputs: Vec<String> = step.inputs().iter().map(|i| format!("`{i}`")).collect();
    format!(
        "### Step {}: `{}`\n\n*Reads:* {}. *Can return:* {}.\n",
        step.number(),
        step.as_str(),
        inputs.join(", "),
        step.returns()
    )
}

fn fallback_table() -> String {
    let mut out = String::from("| statuses | rule | why |\n|---|---|---|\n");
    for r in FALLBACK {
        let range = if r.from == r.to {
            r.from.to_string()
        } else {
            format!("{}–{}", r.from, r.to)
        };
        let rule = match r.rule {
            RetryRule::Wait { min_ms, max_ms } => format!("`wait` {min_ms}–{max_ms} ms"),
            other => format!("`{}`", other.action()),
        };
        let _ = writeln!(out, "| {range} | {rule} | {} |", cell(r.why));
    }
    let _ = write!(
        out,
        "| any other | `{}` | not an error status |",
        RetryRule::for_status(0).action()
    );
    out
}

/// The backoff base of each attempt from 1 while it still grows, then the cap once.
fn backoff_bases(policy: &RetryPolicy) -> String {
    let unbounded = policy
        .to_builder()
        .max_attempts(u32::MAX)
        .build()
        .unwrap_or(*policy);
    let err = ApiError::from(ErrorCode::InternalError);
    let mut bases = Vec::new();
    for attempt in 1..=64 {
        // A draw of 0 gives the base itself.
        let Advice::Retry { after, .. } =
            unbounded.decide(&err, attempt, std::time::SystemTime::UNIX_EPOCH, &mut || 0)
        else {
            break;
        };
        let ms = after.as_millis();
        let capped = ms == policy.max_delay().as_millis();
        bases.push(ms.to_string());
        if capped {
            break;
        }
    }
    format!("{}, …", bases.join(", "))
}

/// The page.
/// The default schedule's waits before jitter, poll by poll, until they stop growing.
fn poll_schedule(poll: &overten_errors::PollSchedule) -> String {
    let mut top = || 0u64;
    let mut waits = Vec::new();
    for n in 1..=16 {
        let ms = poll.delay(n, &mut top).as_millis();
        let repeated = waits.last() == Some(&ms);
        waits.push(ms);
        if repeated {
            break;
        }
    }
    let shown: Vec<String> = waits.iter().map(u128::to_string).collect();
    format!("{}, …", shown.join(", "))
}

pub(crate) fn retry_md() -> String {
    let policy = RetryPolicy::default();
    let budget = RetryBudget::default();
    let poll = overten_errors::PollSchedule::default();
    let (window_min, window_max) = match ErrorCode::ServiceUnavailable.retry() {
        RetryRule::Wait { min_ms, max_ms } => (min_ms, max_ms),
        _ => (0, 0),
    };
    let ms = |d: std::time::Duration| d.as_millis().to_string();
    let values: Vec<(&str, String)> = vec![
        ("initial_delay_ms", ms(policy.initial_delay())),
        ("multiplier", policy.multiplier().to_string()),
        ("max_delay_ms", ms(policy.max_delay())),
        ("jitter", policy.jitter().to_string()),
        ("max_attempts", policy.max_attempts().to_string()),
        (
            "last_retried_attempt",
            policy.max_attempts().saturating_sub(1).to_string(),
        ),
        ("min_wait_ms", ms(policy.min_wait())),
        ("max_wait_ms", ms(policy.max_wait())),
        (
            "rate_limit_window_ms",
            (overten_errors::RATE_LIMIT_WINDOW_SECONDS * 1000).to_string(),
        ),
        (
            "max_pacing_waits",
            overten_errors::Pacer::MAX_WAITS.to_string(),
        ),
        (
            "rate_limit_default_wait_ms",
            (RATE_LIMIT_DEFAULT_WAIT_SECONDS * 1000).to_string(),
        ),
        ("budget_capacity", budget.capacity().to_string()),
        ("budget_retry_cost", budget.retry_cost().to_string()),
        ("budget_window_cost", budget.window_cost().to_string()),
        ("budget_success_refill", budget.success_refill().to_string()),
        ("budget_storm_wait_min_ms", ms(budget.storm_wait().0)),
        ("budget_storm_wait_max_ms", ms(budget.storm_wait().1)),
        (
            "budget_retries",
            (budget.capacity() / budget.retry_cost().max(1)).to_string(),
        ),
        (
            "budget_window_retries",
            (budget.capacity() / budget.window_cost().max(1)).to_string(),
        ),
        ("max_safe_integer", MAX_SAFE_INTEGER.to_string()),
        (
            "unknown_task_code_status",
            UNKNOWN_TASK_CODE_STATUS.to_string(),
        ),
        ("sync_timeout_s", SYNC_TIMEOUT_SECONDS.to_string()),
        ("poll_first_ms", poll.first_ms.to_string()),
        ("poll_multiplier", poll.multiplier.to_string()),
        ("poll_max_ms", poll.max_ms.to_string()),
        ("poll_jitter", poll.jitter.to_string()),
        ("poll_give_up_ms", poll.give_up_after_ms.to_string()),
        ("poll_schedule", poll_schedule(&poll)),
        (
            "max_task_body_mib",
            (overten_errors::MAX_TASK_BODY_BYTES / (1024 * 1024)).to_string(),
        ),
        ("window_min_ms", window_min.to_string()),
        ("window_max_ms", window_max.to_string()),
        ("backoff_bases", backoff_bases(&policy)),
        ("fallback_table", fallback_table()),
        ("not_an_error", not_an_error()),
        ("max_id_bytes", MAX_ID_BYTES.to_string()),
        (
            "not_replay_safe",
            overten_errors::NOT_REPLAY_SAFE.to_owned(),
        ),
        ("max_message_bytes", MAX_MESSAGE_BYTES.to_string()),
        (
            "max_body_kib",
            (overten_errors_http::MAX_BODY_BYTES / 1024).to_string(),
        ),
        (
            "max_body_bytes",
            overten_errors_http::MAX_BODY_BYTES.to_string(),
        ),
        ("max_body_depth", overten_errors::MAX_BODY_DEPTH.to_string()),
        ("wait_spread", policy.wait_spread().to_string()),
        (
            "wait_spread_max_ms",
            policy.wait_spread_max().as_millis().to_string(),
        ),
    ];
    let mut text = TEMPLATE.to_owned();
    for step in Step::ALL {
        text = text.replace(&step_placeholder(*step), &step_heading(*step));
    }
    for (name, value) in values {
        text = text.replace(&format!("{{{{{name}}}}}"), &value);
    }
    format!("<!-- {GENERATED} -->\n\n{text}")
}

/// The reason a 2xx (a status in no row) stops with, read from the decision itself.
pub(crate) fn not_an_error() -> String {
    let err = ApiError::received(overten_errors::Code::Missing, 200, "m");
    match RetryPolicy::default().decide(&err, 1, std::time::SystemTime::UNIX_EPOCH, &mut || 0) {
        Advice::Stop(overten_errors::StopReason::Permanent { fix }) => fix.to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_names_every_step_once_in_order() {
        let mut at = 0;
        for step in Step::ALL {
            let placeholder = step_placeholder(*step);
            assert_eq!(TEMPLATE.matches(&placeholder).count(), 1, "{step:?}");
            let found = TEMPLATE.find(&placeholder).unwrap_or_default();
            assert!(found > at, "{step:?} is out of order in templates/retry.md");
            at = found;
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        let page = retry_md();
        assert!(
            !page.contains("{{"),
            "unfilled placeholder in docs/retry.md"
        );
        for step in Step::ALL {
            assert!(page.contains(&format!("### Step {}: `{}`", step.number(), step.as_str())));
        }
        assert!(page.contains("1000, 2000, 4000, 8000, 16000, 32000, …"));
    }
}
