//! JSON Schema 2020-12 and OpenAPI 3.1 documents for the Overten API's error model.
//!
//! Everything here is built at run time from `overten-errors`' tables, so a code added to
//! the table changes every document with no other edit:
//!
//! - [`error_body_schema`]: the envelope `{"success": false, "error", "message"}`, with
//!   `error` one of the known codes (each carrying its "when it occurs" text) or any newer
//!   `snake_case` code, since clients keep codes newer than themselves;
//!   [`error_body_strict_schema`] allows known codes only, for servers;
//! - [`task_failure_schema`] (and [`task_failure_strict_schema`]): the failed async task;
//! - [`catalog`] and [`catalog_schema`]: the machine-readable catalog for SDKs in other
//!   languages (codes, statuses, tiers, headers, fallback rule, retry defaults);
//! - [`fixture_schema`] and [`classify_output_schema`]: a golden fixture of `docs/fixtures/`
//!   and what `overten-errors classify --json` prints, for SDK authors' test suites;
//! - [`openapi`]: an OpenAPI 3.1 document whose `components` hold the schemas, one reusable
//!   response per code, and the header objects, for API specs to `$ref`.
//!
//! # How the core's types get schemas
//!
//! Two ways, chosen per type. The envelope and the task failure are assembled here from
//! the code table: their `error` / `code` member is an enumeration of the table's rows with
//! per-row descriptions, which no derive can express, and their Rust types deserialize
//! more tolerantly (unknown codes are kept) than the published contract describes. The
//! catalog is derived with `#[derive(JsonSchema)]` on [`Catalog`], whose enums
//! (`Category`, `StatusKind`, `RetryRule`) derive `JsonSchema` in the core behind its
//! optional `schemars` feature. Only this crate turns that feature on, so API servers and
//! clients that depend on the core alone never compile schemars.
//!
//! Output is `serde_json::Value`s whose objects keep keys sorted, so every document is
//! deterministic.
//!
//! ```
//! let schema = overten_errors_schema::error_body_schema();
//! assert_eq!(schema["required"], serde_json::json!(["success", "error", "message"]));
//! let doc = overten_errors_schema::openapi();
//! assert_eq!(doc["components"]["responses"]["rate_limit_exceeded"]["x-status"], 429);
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod catalog;
mod fixture;
mod openapi;
mod schemas;

pub use catalog::{
    BackoffDefaults, BudgetDefaults, Catalog, CodeEntry, Fallback, FallbackEntry, HeaderEntry,
    Limits, StatusEntry, TierEntry, catalog, catalog_schema,
};
pub use fixture::{classify_output_schema, fixture_schema};
pub use openapi::{OPENAPI_VERSION, openapi};
pub use schemas::{
    CODE_PATTERN, DIALECT, error_body_schema, error_body_strict_schema, task_accepted_schema,
    task_failure_schema, task_failure_strict_schema, task_schema,
};

/// This crate's README examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
