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

/// The envelope's subschema, with `ErrorCode` referenced at `code_ref`.
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

/// The task failure's subschema, with `ErrorCode` referenced at `code_ref`.
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

fn standalone(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        map.insert("$schema".into(), DIALECT.into());
        map.insert("$defs".into(), json!({ "ErrorCode": error_code() }));
    }
    schema
}

/// The JSON Schema (2020-12) of the error envelope.
pub fn error_body_schema() -> Value {
    standalone(error_body("#/$defs/ErrorCode"))
}

/// The JSON Schema (2020-12) of a failed async task.
pub fn task_failure_schema() -> Value {
    standalone(task_failure("#/$defs/ErrorCode"))
}
