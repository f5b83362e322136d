//! The Python package's tables (`python/src/overten_errors/_catalog.py`), written from the
//! same data as `docs/catalog.json`, so that the package and the crates cannot drift.

use std::fmt::Write as _;

use overten_errors::{PollSchedule, TaskStatus};
use serde_json::Value;

use crate::GENERATED;

/// Where the generated module goes, relative to the workspace root.
pub(crate) const PATH: &str = "python/src/overten_errors/_catalog.py";

/// A JSON value as a Python literal: JSON's string escapes are Python's too.
fn literal(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(literal).collect();
            format!("({},)", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", literal(&Value::String(k.clone())), literal(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

fn text(s: &str) -> String {
    literal(&Value::String(s.to_owned()))
}

/// A float as a Python literal: Rust's `{:?}` of a finite `f64` always has a `.` or an
/// exponent (`2.0`, `1e300`); the others are spelled out.
fn float(x: f64) -> String {
    if x.is_finite() {
        format!("{x:?}")
    } else if x.is_nan() {
        "float(\"nan\")".into()
    } else if x.is_sign_positive() {
        "float(\"inf\")".into()
    } else {
        "-float(\"inf\")".into()
    }
}

/// A JSON number as a Python literal (`serde_json` writes a float with its `.0`).
fn num(v: &Value) -> String {
    literal(v)
}

fn rule(v: &Value) -> String {
    let action = v["action"].as_str().unwrap_or("never");
    if action == "wait" {
        format!(
            "Rule({}, min_ms={}, max_ms={})",
            text(action),
            num(&v["min_ms"]),
            num(&v["max_ms"])
        )
    } else {
        format!("Rule({})", text(action))
    }
}

/// `name(field=value, …)` over `fields`, read from `object`, one per line.
fn call(name: &str, object: &Value, fields: &[&str], indent: &str) -> String {
    let mut out = format!("{name}(\n");
    for field in fields {
        let _ = writeln!(out, "{indent}    {field}={},", num(&object[*field]));
    }
    let _ = write!(out, "{indent})");
    out
}

/// The module's text.
pub(crate) fn module(catalog: &Value, not_replay_safe: &str, not_an_error: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {GENERATED}");
    out.push_str(
        "\"\"\"The error model's tables, generated from the Rust crates (the data of\n\
         `docs/catalog.json`). Do not edit: `cargo xtask docs` writes this file and\n\
         `cargo xtask docs --check` fails when it is stale.\"\"\"\n\n\
         from __future__ import annotations\n\n\
         from typing import Final\n\n\
         from ._types import (\n    BudgetSettings,\n    Code,\n    Limits,\n    PacingNumbers,\n    \
         PollNumbers,\n    PolicyNumbers,\n    Rule,\n    Status,\n    StatusRule,\n    Tier,\n)\n\n",
    );
    let _ = writeln!(
        out,
        "#: The version of the crates this table was written from."
    );
    let _ = writeln!(out, "VERSION: Final = {}\n", literal(&catalog["version"]));

    tables(&mut out, catalog);
    let _ = writeln!(
        out,
        "#: The rule of a status in no row.\nOTHER_STATUSES: Final = {}\n",
        rule(&catalog["fallback"]["otherwise"])
    );
    let _ = writeln!(
        out,
        "#: The fix of a stop for a status in no row (1xx, 2xx, 3xx).\nNOT_AN_ERROR: Final = {}\n",
        text(not_an_error)
    );
    let _ = writeln!(
        out,
        "#: The fix of a stop for a request that was sent and may not be replayed.\n\
         NOT_REPLAY_SAFE: Final = {}\n",
        text(not_replay_safe)
    );

    numbers(&mut out, catalog);
    let _ = writeln!(
        out,
        "#: The default pacing (`docs/retry.md`, *Pacing*).\nPACING: Final = {}\n",
        call(
            "PacingNumbers",
            &catalog["pacing"],
            &["mode", "max_waits"],
            ""
        )
    );
    out
}

/// The codes, the status table and the status rule.
fn tables(out: &mut String, catalog: &Value) {
    out.push_str("#: Every error code of the reference page, in the page's order.\n");
    out.push_str("CODES: Final[tuple[Code, ...]] = (\n");
    for code in catalog["codes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            *out,
            "    Code(\n        code={},\n        category={},\n        status={},\n        \
             when={},\n        fix={},\n        retry={},\n    ),",
            text(code["code"].as_str().unwrap_or_default()),
            text(code["category"].as_str().unwrap_or_default()),
            num(&code["status"]),
            text(code["when"].as_str().unwrap_or_default()),
            text(code["fix"].as_str().unwrap_or_default()),
            rule(&code["retry"]),
        );
    }
    out.push_str(")\n\n");

    out.push_str("#: The page's status table.\n");
    out.push_str("STATUSES: Final[tuple[Status, ...]] = (\n");
    for s in catalog["statuses"].as_array().into_iter().flatten() {
        let _ = writeln!(
            *out,
            "    Status(status={}, category={}, scenario={}, kind={}),",
            num(&s["status"]),
            text(s["category"].as_str().unwrap_or_default()),
            text(s["scenario"].as_str().unwrap_or_default()),
            text(s["kind"].as_str().unwrap_or_default()),
        );
    }
    out.push_str(")\n\n");

    out.push_str(
        "#: The status rule (`docs/retry.md`, *The rules*): the first row whose range holds\n\
         #: the status wins.\n",
    );
    out.push_str("STATUS_RULES: Final[tuple[StatusRule, ...]] = (\n");
    for r in catalog["fallback"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            *out,
            "    StatusRule(\n        first={},\n        last={},\n        retry={},\n        \
             why={},\n    ),",
            num(&r["from"]),
            num(&r["to"]),
            rule(&r["retry"]),
            text(r["why"].as_str().unwrap_or_default()),
        );
    }
    out.push_str(")\n\n");
}

/// The tiers, limits, the policy, budget and poll defaults, the task states.
fn numbers(out: &mut String, catalog: &Value) {
    out.push_str("#: The plans' limits.\nTIERS: Final[tuple[Tier, ...]] = (\n");
    for t in catalog["tiers"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "    Tier(tier={}, requests_per_minute={}, concurrent_runs={}),",
            text(t["tier"].as_str().unwrap_or_default()),
            num(&t["requests_per_minute"]),
            num(&t["concurrent_runs"]),
        );
    }
    out.push_str(")\n\n");

    let _ = writeln!(
        out,
        "#: The reading rules' bounds and the page's limits.\nLIMITS: Final = {}\n",
        call(
            "Limits",
            &catalog["limits"],
            &[
                "max_body_bytes",
                "max_body_depth",
                "max_id_bytes",
                "max_message_bytes",
                "rate_limit_window_ms",
                "retention_ms",
                "sync_timeout_ms",
            ],
            ""
        )
    );
    let _ = writeln!(
        out,
        "#: The default retry policy's numbers (`docs/retry.md`, *Policy defaults*).\n\
         POLICY: Final = {}\n",
        call(
            "PolicyNumbers",
            &catalog["backoff"],
            &[
                "initial_delay_ms",
                "multiplier",
                "max_delay_ms",
                "jitter",
                "max_attempts",
                "min_wait_ms",
                "max_wait_ms",
                "rate_limit_default_wait_ms",
                "wait_spread",
                "wait_spread_max_ms",
            ],
            ""
        )
    );
    let _ = writeln!(
        out,
        "#: The default retry budget (`docs/retry.md`, step 10).\nBUDGET: Final = {}\n",
        call(
            "BudgetSettings",
            &catalog["retry_budget"],
            &[
                "capacity",
                "retry_cost",
                "window_cost",
                "success_refill",
                "storm_wait_min_ms",
                "storm_wait_max_ms",
            ],
            ""
        )
    );
    let poll = PollSchedule::default();
    let _ = writeln!(
        out,
        "#: The default poll schedule (`docs/retry.md`, *Polling a task*).\n\
         POLL: Final = PollNumbers(\n    first_ms={},\n    multiplier={},\n    max_ms={},\n    \
         jitter={},\n    give_up_after_ms={},\n)\n",
        poll.first_ms,
        float(poll.multiplier),
        poll.max_ms,
        float(poll.jitter),
        poll.give_up_after_ms
    );
    let states: Vec<String> = TaskStatus::ALL.iter().map(|s| text(s.as_str())).collect();
    let _ = writeln!(
        out,
        "#: A task's states, in order; the last two are final.\n\
         TASK_STATUSES: Final = ({},)\n",
        states.join(", ")
    );
    let _ = writeln!(
        out,
        "#: The status of a failed task whose code this version does not know.\n\
         UNKNOWN_TASK_CODE_STATUS: Final = {}\n",
        overten_errors::UNKNOWN_TASK_CODE_STATUS
    );
    let _ = writeln!(
        out,
        "#: The largest task body (a result included) a client reads.\n\
         MAX_TASK_BODY_BYTES: Final = {}",
        overten_errors::MAX_TASK_BODY_BYTES
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_literals() {
        assert_eq!(float(2.0), "2.0");
        assert_eq!(float(0.25), "0.25");
        assert_eq!(float(1e300), "1e300");
        assert_eq!(float(f64::INFINITY), "float(\"inf\")");
        assert_eq!(float(f64::NEG_INFINITY), "-float(\"inf\")");
        assert_eq!(float(f64::NAN), "float(\"nan\")");
        assert_eq!(num(&serde_json::json!(2.0)), "2.0");
        assert_eq!(num(&serde_json::json!(5)), "5");
        assert_eq!(
            literal(&serde_json::json!({"a": [null, true, false, "é\"\n"]})),
            "{\"a\": (None, True, False, \"é\\\"\\n\",)}"
        );
    }
}
