//! The OpenAPI 3.1 document.

use overten_errors::{ErrorCode, HeaderUse, headers};
use serde_json::{Map, Value, json};

use crate::schemas::{
    DIALECT, any_error_code, error_body, error_code, task, task_accepted, task_failure,
};

/// The OpenAPI version the document declares.
pub const OPENAPI_VERSION: &str = "3.1.0";

fn header_schema(name: &str) -> Value {
    if name == headers::RETRY_AFTER.name {
        json!({
            "anyOf": [
                { "type": "integer", "minimum": 0, "description": "delta-seconds" },
                { "type": "string", "description": "an HTTP-date (RFC 9110)" },
            ]
        })
    } else if name == headers::REQUEST_ID.name {
        json!({ "type": "string" })
    } else {
        json!({ "type": "integer", "minimum": 0 })
    }
}

fn header_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/headers/{name}") })
}

/// The response object for one code.
fn response(code: ErrorCode) -> Value {
    let mut hdrs = Map::new();
    for h in headers::ALL {
        let sent = if h.name == headers::RETRY_AFTER.name {
            code.retry().retry_after_header() != HeaderUse::Never
        } else {
            true
        };
        if sent {
            hdrs.insert(h.name.to_owned(), header_ref(h.name));
        }
    }
    let retry_after = match code.retry().retry_after_header() {
        HeaderUse::Always => " Always carries Retry-After.",
        HeaderUse::WhenKnown => " Carries Retry-After when the delay is known.",
        HeaderUse::Never => "",
    };
    json!({
        "description": format!(
            "{} `{}`: {} Fix: {}.{retry_after}",
            code.status(),
            code.as_str(),
            code.when(),
            code.fix(),
        ),
        "headers": hdrs,
        "content": {
            "application/json": {
                "schema": { "$ref": "#/components/schemas/ErrorBody" },
                "example": {
                    "success": false,
                    "error": code.as_str(),
                    "message": code.when(),
                },
            },
        },
        "x-status": code.status(),
        "x-category": code.category(),
        "x-retry": code.retry(),
    })
}

/// An OpenAPI 3.1 document, valid by itself, whose `components` hold the error schemas,
/// one response per code (keyed by the wire string; the status is in `x-status` and the
/// description), and the documented headers.
pub fn openapi() -> Value {
    let known_ref = "#/components/schemas/ErrorCode";
    let any_ref = "#/components/schemas/AnyErrorCode";
    let mut responses = Map::new();
    for &code in ErrorCode::ALL {
        responses.insert(code.as_str().to_owned(), response(code));
    }
    let mut header_objects = Map::new();
    for h in headers::ALL {
        header_objects.insert(
            h.name.to_owned(),
            json!({
                "description": format!("{} Sent on {}.", h.description, h.sent),
                "schema": header_schema(h.name),
            }),
        );
    }
    json!({
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Overten API errors",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Reusable components for the Overten API's error responses: `$ref` them from an API description.",
            "contact": { "email": "support@overten.ai" },
        },
        "jsonSchemaDialect": DIALECT,
        "paths": {},
        "components": {
            "schemas": {
                "ErrorCode": error_code(),
                "AnyErrorCode": any_error_code(known_ref),
                "ErrorBody": error_body(any_ref),
                "ErrorBodyStrict": error_body(known_ref),
                "TaskFailure": task_failure(any_ref),
                "Task": task(any_ref),
                "TaskAccepted": task_accepted(),
            },
            "responses": responses,
            "headers": header_objects,
        },
    })
}
