//! The JSON Schemas an SDK author's test suite reads: a golden fixture of `docs/fixtures/`
//! and the one object `overten-errors classify --json` prints.
//!
//! Both are written by hand from `docs/README.md` (the fixture format) and the CLI's help
//! (the output): what an implementation in another language parses. The step names come
//! from the core's [`Step::ALL`], so a step added to the algorithm is added here too.

use overten_errors::Step;
use serde_json::{Value, json};

use crate::schemas::DIALECT;

/// A non-negative integer exact in a JavaScript `Number` (`docs/retry.md`, *Numbers in JSON*).
fn safe_integer(minimum: u64) -> Value {
    json!({"type": "integer", "minimum": minimum, "maximum": overten_errors::MAX_SAFE_INTEGER})
}

fn step_names() -> Vec<&'static str> {
    // `rule` never decides: the first step that can is `permanent`.
    Step::ALL.iter().skip(1).map(|s| s.as_str()).collect()
}

const BASES: [&str; 5] = [
    "retry_after",
    "rate_limit_reset",
    "rate_limit_default",
    "wait_window",
    "backoff",
];

/// The advice: `docs/README.md`, *`expect.action`*. `ranged` admits the fixture's form of a
/// jittered retry (`min_ms`, `max_ms`), which a client's own advice never has.
fn action(ranged: bool) -> Value {
    let mut variants = vec![
        json!({
            "description": "Retry after an exact delay.",
            "type": "object",
            "properties": {
                "action": {"const": "retry"},
                "after_ms": safe_integer(0),
                "basis": {"enum": BASES},
            },
            "required": ["action", "after_ms", "basis"],
            "additionalProperties": false,
        }),
        json!({
            "description": "Send the same work again with async: true and poll /tasks/{id}.",
            "type": "object",
            "properties": {"action": {"const": "resubmit_async"}},
            "required": ["action"],
            "additionalProperties": false,
        }),
        json!({
            "description": "Stop: the error is permanent.",
            "type": "object",
            "properties": {
                "action": {"const": "stop"},
                "reason": {"const": "permanent"},
                "fix": {"type": "string", "minLength": 1},
            },
            "required": ["action", "reason", "fix"],
            "additionalProperties": false,
        }),
        json!({
            "description": "Stop: max_attempts reached.",
            "type": "object",
            "properties": {
                "action": {"const": "stop"},
                "reason": {"const": "attempts_exhausted"},
                "attempts": safe_integer(1),
            },
            "required": ["action", "reason", "attempts"],
            "additionalProperties": false,
        }),
        json!({
            "description": "Stop: the wait named is longer than max_wait_ms.",
            "type": "object",
            "properties": {
                "action": {"const": "stop"},
                "reason": {"const": "wait_too_long"},
                "requested_ms": safe_integer(0),
                "max_ms": safe_integer(0),
            },
            "required": ["action", "reason", "requested_ms", "max_ms"],
            "additionalProperties": false,
        }),
        json!({
            "description": "Stop: the retry budget cannot pay for a retry.",
            "type": "object",
            "properties": {
                "action": {"const": "stop"},
                "reason": {"const": "budget_exhausted"},
            },
            "required": ["action", "reason"],
            "additionalProperties": false,
        }),
    ];
    if ranged {
        variants.insert(
            1,
            json!({
                "description": "Retry after a jittered delay: any delay from min_ms to max_ms (both included) conforms.",
                "type": "object",
                "properties": {
                    "action": {"const": "retry"},
                    "basis": {"enum": BASES},
                    "min_ms": safe_integer(0),
                    "max_ms": safe_integer(0),
                },
                "required": ["action", "basis", "min_ms", "max_ms"],
                "additionalProperties": false,
            }),
        );
    }
    json!({"oneOf": variants})
}

fn nullable_string() -> Value {
    json!({"type": ["string", "null"]})
}

/// What a client reads from a response (every kind but `transport_failure` and `success`).
fn read_fields() -> serde_json::Map<String, Value> {
    let fields = json!({
        "status": {"type": "integer", "minimum": 100, "maximum": 999, "description": "The status the error is decided with (for a task failure, its code's status)."},
        "code": {"type": ["string", "null"], "minLength": 1, "description": "The code kept, known or not; null when the body carries none."},
        "known": {"type": "boolean", "description": "Whether catalog.json lists the code."},
        "message": {"type": "string", "description": "The public message: the body's, the code's `when`, or the status message."},
        "request_id": {"type": ["string", "null"], "description": "The X-Request-Id header's id, trimmed; null when absent or dropped."},
        "run_id": {"type": ["string", "null"], "description": "The body's run_id, trimmed; null when absent or dropped."},
        "task_id": {"type": ["string", "null"], "description": "The body's (or failed task's) task_id, trimmed; null when absent or dropped."},
        "body_is_envelope": {"type": "boolean"},
        "message_from_body": {"type": "boolean"},
        "status_mismatch": {"type": ["integer", "null"], "description": "The code's own status when a known code came with another, else null."},
        "header_problems": {
            "type": "array",
            "items": {"enum": ["retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-request-id"]},
            "uniqueItems": true,
            "description": "The headers malformed and so counted as not sent, in docs/retry.md's order.",
        },
    });
    match fields {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

const READ_REQUIRED: [&str; 11] = [
    "status",
    "code",
    "known",
    "message",
    "request_id",
    "run_id",
    "task_id",
    "body_is_envelope",
    "message_from_body",
    "status_mismatch",
    "header_problems",
];

fn request() -> Value {
    json!({
        "type": "object",
        "description": "What the decision assumes besides the response.",
        "properties": {
            "now_unix": {"type": "integer", "minimum": 0, "maximum": 253_402_300_799_u64, "description": "The clock, in Unix seconds (at most 9999-12-31T23:59:59Z)."},
            "attempt": {"type": "integer", "minimum": 0, "maximum": u32::MAX, "description": "The attempt that just failed (or succeeded, for kind success); the first request is 1, and 0 is read as 1."},
            "held_until_unix_ms": {"type": "integer", "minimum": 0, "maximum": 253_402_300_799_000_u64, "description": "For kind pacing: the moment, in Unix milliseconds, until which the key was held before this response; absent when it was never held."},
            "sent_in_window": {"type": "integer", "minimum": 0, "maximum": u32::MAX, "description": "For kind pacing: the attempts this process sent with the key in the window of now_unix before the response (counted at now_unix); absent: 0."},
            "seen_shared": {"type": "boolean", "description": "For kind pacing: whether the key was seen shared before this response (docs/retry.md, Pacing); absent: false."},
            "budget": {
                "type": "object",
                "description": "The client's retry budget before the decision.",
                "properties": {
                    "tokens": {"type": "integer", "minimum": 0, "maximum": u32::MAX},
                    "capacity": {"type": "integer", "minimum": 0, "maximum": u32::MAX},
                    "retry_cost": {"type": "integer", "minimum": 0, "maximum": u32::MAX},
                    "window_cost": {"type": "integer", "minimum": 0, "maximum": u32::MAX, "description": "What a retry in a wait window (step 8) costs instead of retry_cost."},
                    "success_refill": {"type": "integer", "minimum": 0, "maximum": u32::MAX},
                    "storm_wait_min_ms": {"type": "integer", "minimum": 0, "maximum": overten_errors::MAX_SAFE_INTEGER, "description": "A storm's backoff (step 10) waits at least a uniform point from here..."},
                    "storm_wait_max_ms": {"type": "integer", "minimum": 0, "maximum": overten_errors::MAX_SAFE_INTEGER, "description": "...to here."},
                },
                "required": ["tokens", "capacity", "retry_cost", "window_cost", "success_refill", "storm_wait_min_ms", "storm_wait_max_ms"],
                "additionalProperties": false,
            },
        },
        "required": ["now_unix", "attempt"],
    })
}

/// What a pacing fixture holds besides the common fields.
fn pacing_case() -> Value {
    json!({
        "if": {"properties": {"kind": {"const": "pacing"}}},
        "then": {
            "required": ["response"],
            "properties": {"expect": {
                "type": "object",
                "properties": {"hold_ms": hold_ms(), "waits_ms": waits_ms()},
                "required": ["hold_ms", "waits_ms"],
            }},
        },
    })
}

/// A pacing fixture's expected waits: one per request of the key's next three.
fn waits_ms() -> Value {
    json!({
        "type": "array",
        "description": "How long in all each of the key's next three requests waits, each sent at now_unix after the one before took its slot: as hold_ms (whose value is the first).",
        "items": hold_ms(),
        "minItems": 3,
        "maxItems": 3,
    })
}

/// A pacing fixture's expected hold: milliseconds, `null` for none, or the range a spread
/// hold falls in.
fn hold_ms() -> Value {
    json!({
        "description": "How long in all the key's next request, sent at now_unix, waits (docs/retry.md, Pacing): milliseconds; null when it is sent at once; {min_ms, max_ms} when the draw decides.",
        "oneOf": [
            {"type": "integer", "minimum": 1},
            {"type": "null"},
            {
                "type": "object",
                "properties": {
                    "min_ms": {"type": "integer", "minimum": 1},
                    "max_ms": {"type": "integer", "minimum": 1},
                },
                "required": ["min_ms", "max_ms"],
                "additionalProperties": false,
            },
        ],
    })
}

/// JSON Schema 2020-12 of a golden fixture (`docs/fixtures/*.json`), as `docs/README.md`
/// describes it; `overten-errors classify` refuses a fixture that breaks it (exit 2).
#[must_use]
pub fn fixture_schema() -> Value {
    let mut expect_read = read_fields();
    expect_read.insert("step".into(), json!({"enum": step_names()}));
    expect_read.insert("action".into(), action(true));
    let mut expect_required: Vec<&str> = READ_REQUIRED.to_vec();
    expect_required.extend(["step", "action"]);
    json!({
        "$schema": DIALECT,
        "$id": "https://overten.dev/schema/fixture.schema.json",
        "title": "A golden fixture of docs/fixtures",
        "description": "One case of the retry decision and what a conforming client reads and does (docs/README.md, Fixtures). Every integer is written without a fraction: overten-errors classify refuses 5.0 where this schema's \"integer\" admits it.",
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "$comment": {"type": "string"},
            "kind": {"enum": ["http_response", "task_failure", "transport_failure", "success", "pacing"]},
            "request": request(),
            "response": {
                "type": "object",
                "properties": {
                    "status": {"type": "integer", "minimum": 100, "maximum": 999},
                    "headers": {
                        "type": "array",
                        "description": "[name, value] pairs in order; a name may repeat.",
                        "items": {
                            "type": "array",
                            "prefixItems": [
                                {"type": "string", "minLength": 1},
                                {
                                    "type": "string",
                                    "pattern": "^[^\\u0000-\\u0008\\u000A-\\u001F\\u007F]*$",
                                    "description": "The value as an HTTP library hands it over: no control character but the horizontal tab.",
                                },
                            ],
                            "minItems": 2,
                            "maxItems": 2,
                        },
                    },
                    "body": {"type": "string", "description": "The body exactly as sent."},
                },
                "required": ["status", "headers", "body"],
            },
            "failure": {
                "type": "object",
                "properties": {"sent": {"type": "boolean"}, "replay_safe": {"type": "boolean"}},
                "required": ["sent", "replay_safe"],
                "additionalProperties": false,
            },
            "expect": {"type": "object"},
        },
        "required": ["name", "kind", "request", "expect"],
        "allOf": [
            {
                "if": {"properties": {"kind": {"enum": ["http_response", "task_failure"]}}},
                "then": {
                    "required": ["response"],
                    "properties": {"expect": {
                        "type": "object",
                        "properties": expect_read,
                        "required": expect_required,
                    }},
                },
            },
            {
                "if": {"properties": {"kind": {"const": "transport_failure"}}},
                "then": {
                    "required": ["failure"],
                    "properties": {"expect": {
                        "type": "object",
                        "properties": {"step": {"enum": step_names()}, "action": action(true)},
                        "required": ["step", "action"],
                    }},
                },
            },
            pacing_case(),
            {
                "if": {"properties": {"kind": {"const": "success"}}},
                "then": {
                    "properties": {
                        "request": {"required": ["budget"]},
                        "expect": {
                            "type": "object",
                            "properties": {"budget_tokens": {"type": "integer", "minimum": 0, "maximum": u32::MAX}},
                            "required": ["budget_tokens"],
                        },
                    },
                },
            },
        ],
    })
}

/// JSON Schema 2020-12 of what `overten-errors classify --json` prints: the fields of a
/// fixture's `expect` the case has, `diagnostics`, and, for a fixture with `expect`,
/// `expect`, `conforms` and `differs`.
#[must_use]
pub fn classify_output_schema() -> Value {
    let mut props = read_fields();
    props.insert("step".into(), json!({"enum": step_names()}));
    props.insert("action".into(), action(false));
    props.insert(
        "budget_tokens".into(),
        json!({"type": "integer", "minimum": 0, "description": "For a success fixture: the budget's tokens after the success."}),
    );
    props.insert(
        "hold_ms".into(),
        json!({"type": ["integer", "null"], "minimum": 1, "description": "For a pacing fixture: how long in all the key's next request waits, in ms; null when it is sent at once."}),
    );
    props.insert(
        "waits_ms".into(),
        json!({"type": "array", "items": {"type": ["integer", "null"], "minimum": 1}, "minItems": 3, "maxItems": 3, "description": "For a pacing fixture: how long in all each of the key's next three requests waits, in ms (the first is hold_ms)."}),
    );
    props.insert(
        "diagnostics".into(),
        json!({
            "type": "object",
            "description": "Each problem found reading the response, as text, or null.",
            "properties": {
                "body": nullable_string(),
                "message": nullable_string(),
                "status_mismatch": {"type": ["integer", "null"]},
                "retry_after": nullable_string(),
                "rate_limit": {
                    "type": ["object", "null"],
                    "properties": {"header": {"type": "string"}, "problem": {"type": "string"}},
                    "required": ["header", "problem"],
                },
                "request_id": nullable_string(),
            },
            "required": ["body", "message", "status_mismatch", "retry_after", "rate_limit", "request_id"],
            "additionalProperties": false,
        }),
    );
    props.insert(
        "expect".into(),
        json!({"type": "object", "description": "The fixture's expect, as given."}),
    );
    props.insert(
        "conforms".into(),
        json!({"type": "boolean", "description": "Whether every field of expect is met (exit status 0; 1 when false)."}),
    );
    props.insert(
        "differs".into(),
        json!({"type": "array", "items": {"type": "string"}, "uniqueItems": true, "description": "The fields that differ from expect."}),
    );
    let mut read_required: Vec<&str> = READ_REQUIRED.to_vec();
    read_required.push("diagnostics");
    json!({
        "$schema": DIALECT,
        "$id": "https://overten.dev/schema/classify-output.schema.json",
        "title": "The output of overten-errors classify --json",
        "type": "object",
        "properties": props,
        "additionalProperties": false,
        "anyOf": [
            {"description": "A response or a failed task was read and decided.", "required": read_required.iter().copied().chain(["step", "action"]).collect::<Vec<_>>()},
            {"description": "A transport failure was decided.", "required": ["step", "action"], "not": {"required": ["status"]}},
            {"description": "A success fixture.", "required": ["budget_tokens"], "not": {"required": ["action"]}},
            {"description": "A pacing fixture.", "required": ["hold_ms", "waits_ms"], "not": {"required": ["action"]}},
        ],
        "dependentRequired": {"expect": ["conforms", "differs"], "conforms": ["expect", "differs"]},
    })
}
