//! The envelope and task-failure schemas, assembled from the code table.

use overten_errors::ErrorCode;
use serde_json::{Value, json};

/// The JSON Schema dialect of every schema here.
pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The `ErrorCode` subschema: one `const` per row, with the row's "when it occurs".
pub(crate) fn error_code() -> Value {
    let variants: Vec<Value> = ErrorCode::ALL
        .iter()
        .map(|code| {
            json!({
                "const": code.as_str(),
                "description": code.when(),
            })
        })
        .collect();
    json!({
        "title": "ErrorCode",
        "description": "The machine-readable reason for an error; branch on it. Clients should keep a code they do not know and classify it by HTTP status.",
        "type": "string",
        "oneOf": variants,
    })
}

/// The pattern a code newer than this version must match: `snake_case`, as every code of
/// the table is.
pub const CODE_PATTERN: &str = "^[a-z][a-z0-9_]*$";

/// The `AnyErrorCode` subschema: a known code (`ErrorCode`, referenced at `known_ref`) or
/// any other `snake_case` string, since clients must keep codes newer than themselves.
pub(crate) fn any_error_code(known_ref: &str) -> Value {
    json!({
        "title": "AnyErrorCode",
        "description": "An error code: one this version knows, or a newer one in snake_case. A client keeps a code it does not know and decides by HTTP status.",
        "anyOf": [
            { "$ref": known_ref },
            {
                "description": "A code newer than this version of the catalog.",
                "type": "string",
                "pattern": CODE_PATTERN,
            },
        ],
    })
}

/// The envelope's subschema, with its code schema referenced at `code_ref`.
pub(crate) fn error_body(code_ref: &str) -> Value {
    json!({
        "title": "ErrorBody",
        "description": "The body of every error response of the Overten API.",
        "type": "object",
        "properties": {
            "success": {
                "description": "Always false on an error response.",
                "const": false,
            },
            "error": { "$ref": code_ref },
            "message": {
                "description": "Human-readable and safe to show to end users: never a stack trace or an internal detail.",
                "type": "string",
            },
            "run_id": { "description": "The run the error belongs to, when there is one.", "type": "string" },
            "task_id": { "description": "The task the error belongs to, when there is one.", "type": "string" },
        },
        "required": ["success", "error", "message"],
    })
}

/// The task failure's subschema, with its code schema referenced at `code_ref`.
pub(crate) fn task_failure(code_ref: &str) -> Value {
    json!({
        "title": "TaskFailure",
        "description": "An async task in the terminal failed state, as GET /tasks/{task_id} returns it.",
        "type": "object",
        "properties": {
            "task_id": { "type": "string" },
            "status": { "const": "failed" },
            "error": {
                "type": "object",
                "properties": {
                    "code": { "$ref": code_ref },
                    "message": { "type": "string" },
                },
                "required": ["code", "message"],
            },
            "credits_used": { "type": "integer", "minimum": 0 },
            "duration_ms": { "type": "integer", "minimum": 0 },
        },
        "required": ["task_id", "status", "error", "credits_used", "duration_ms"],
    })
}

/// `GET /tasks/{task_id}`'s body in every state: `queued` or `running` (poll again),
/// `succeeded` (with the result), `failed` (the task failure). The states are the core's
/// [`TaskStatus::ALL`](overten_errors::TaskStatus::ALL).
pub(crate) fn task(code_ref: &str) -> Value {
    use overten_errors::TaskStatus;
    let pending: Vec<&str> = TaskStatus::ALL
        .iter()
        .filter(|s| !s.is_final())
        .map(|s| s.as_str())
        .collect();
    let count = json!({ "type": "integer", "minimum": 0 });
    json!({
        "title": "Task",
        "description": "An async task as GET /tasks/{task_id} returns it (status 200): not done yet, succeeded with its result, or failed.",
        "oneOf": [
            {
                "title": "PendingTask",
                "description": "Not done yet: poll again (docs/retry.md, Polling a task).",
                "type": "object",
                "properties": {
                    "task_id": { "type": "string" },
                    "status": { "enum": pending },
                },
                "required": ["task_id", "status"],
            },
            {
                "title": "SucceededTask",
                "description": "Done: `result` is what the sync request would have answered (absent reads as null); the counts are optional and read as 0.",
                "type": "object",
                "properties": {
                    "task_id": { "type": "string" },
                    "status": { "const": TaskStatus::Succeeded.as_str() },
                    "result": {},
                    "credits_used": count,
                    "duration_ms": count,
                },
                "required": ["task_id", "status"],
            },
            task_failure(code_ref),
        ],
    })
}

/// The `202 Accepted` body of a request run as an async task.
pub(crate) fn task_accepted() -> Value {
    json!({
        "title": "TaskAccepted",
        "description": "202: the work was queued as an async task; poll GET /tasks/{task_id}.",
        "type": "object",
        "properties": {
            "success": { "const": true },
            "task_id": { "type": "string" },
            "status": { "const": overten_errors::TaskStatus::Queued.as_str() },
        },
        "required": ["task_id"],
    })
}

/// The JSON Schema (2020-12) of `GET /tasks/{task_id}`'s body in every state, for
/// clients: a failure's `error.code` is a known code or any newer `snake_case` one.
pub fn task_schema() -> Value {
    standalone(task(ANY))
}

/// The JSON Schema (2020-12) of the `202 Accepted` body of a task.
pub fn task_accepted_schema() -> Value {
    let mut schema = task_accepted();
    if let Value::Object(map) = &mut schema {
        map.insert("$schema".into(), DIALECT.into());
    }
    schema
}

const KNOWN: &str = "#/$defs/ErrorCode";
const ANY: &str = "#/$defs/AnyErrorCode";

fn standalone(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        map.insert("$schema".into(), DIALECT.into());
        map.insert(
            "$defs".into(),
            json!({ "ErrorCode": error_code(), "AnyErrorCode": any_error_code(KNOWN) }),
        );
    }
    schema
}

/// The JSON Schema (2020-12) of the error envelope, for clients: `error` is a known code
/// or any newer `snake_case` one.
pub fn error_body_schema() -> Value {
    standalone(error_body(ANY))
}

/// The strict variant of [`error_body_schema`], for servers and their tests: `error` must
/// be a code of this version's table.
pub fn error_body_strict_schema() -> Value {
    standalone(error_body(KNOWN))
}

/// The JSON Schema (2020-12) of a failed async task, for clients: `error.code` is a known
/// code or any newer `snake_case` one.
pub fn task_failure_schema() -> Value {
    standalone(task_failure(ANY))
}

/// The strict variant of [`task_failure_schema`]: `error.code` must be a known code.
pub fn task_failure_strict_schema() -> Value {
    standalone(task_failure(KNOWN))
}
