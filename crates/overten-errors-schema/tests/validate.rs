//! The documents checked with an independent validator (the `jsonschema` crate).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on broken fixtures"
)]

use overten_errors::{Envelope, ErrorCode, RetryRule};
use overten_errors_schema::{
    catalog, catalog_schema, error_body_schema, error_body_strict_schema, openapi,
    task_failure_schema, task_failure_strict_schema,
};
use serde_json::{Value, json};

/// The reference page, copied here by `cargo xtask docs` so the packaged crate tests alone.
const PAGE: &str = include_str!("data/error-reference.txt");
const OAS_31_SCHEMA: &str = include_str!("data/oas-3.1-schema.json");

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::draft202012::new(schema).unwrap()
}

fn page_task_failure() -> Value {
    let at = PAGE.find("carries the full structured failure:").unwrap();
    let rest = &PAGE[at..];
    let start = rest.find("\n{").unwrap() + 1;
    let end = rest[start..].find("\n}").unwrap() + start + 2;
    serde_json::from_str(&rest[start..end]).unwrap()
}

#[test]
fn schemas_are_valid_2020_12() {
    for (name, schema) in [
        ("error body", error_body_schema()),
        ("error body, strict", error_body_strict_schema()),
        ("task failure", task_failure_schema()),
        ("task failure, strict", task_failure_strict_schema()),
        ("task", overten_errors_schema::task_schema()),
        (
            "task accepted",
            overten_errors_schema::task_accepted_schema(),
        ),
        ("catalog", catalog_schema()),
        ("fixture", overten_errors_schema::fixture_schema()),
        (
            "classify output",
            overten_errors_schema::classify_output_schema(),
        ),
    ] {
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Broken schemas are caught, so the check above can fail.
    assert!(jsonschema::meta::validate(&json!({"type": 12})).is_err());
}

#[test]
fn clients_accept_newer_codes_and_servers_do_not() {
    let (open, strict) = (
        validator(&error_body_schema()),
        validator(&error_body_strict_schema()),
    );
    let newer = json!({"success": false, "error": "quota_frozen", "message": "m"});
    assert!(open.is_valid(&newer));
    assert!(!strict.is_valid(&newer));
    for bad in ["", "Quota_Frozen", "quota frozen", "9lives", "quota-frozen"] {
        let body = json!({"success": false, "error": bad, "message": "m"});
        assert!(!open.is_valid(&body), "{bad:?}");
        assert!(!strict.is_valid(&body), "{bad:?}");
    }
    let (open, strict) = (
        validator(&task_failure_schema()),
        validator(&task_failure_strict_schema()),
    );
    let mut task = page_task_failure();
    task["error"]["code"] = json!("agent_loop_exhausted");
    assert!(open.is_valid(&task));
    assert!(!strict.is_valid(&task));
}

#[test]
fn every_code_body_validates_and_bad_bodies_do_not() {
    let v = validator(&error_body_strict_schema());
    for &code in ErrorCode::ALL {
        let body: Value =
            serde_json::from_slice(&Envelope::new(code.as_str(), "any text").to_json()).unwrap();
        assert!(v.is_valid(&body), "{code}");
        let with_ids = json!({"success": false, "error": code.as_str(), "message": "m", "run_id": "run_1", "extra": [1]});
        assert!(v.is_valid(&with_ids), "{code} with extra members");
    }
    let rejected = [
        json!({"success": true, "error": "gone", "message": "m"}),
        json!({"success": false, "error": "gone"}),
        json!({"success": false, "message": "m"}),
        json!({"error": "gone", "message": "m"}),
        json!({"success": false, "error": 410, "message": "m"}),
        json!({"success": false, "error": "gone", "message": 3}),
        json!({"success": "false", "error": "gone", "message": "m"}),
        json!({"success": false, "error": "not_a_code", "message": "m"}),
        json!([{"success": false, "error": "gone", "message": "m"}]),
        json!("gone"),
        json!(null),
    ];
    for body in rejected {
        assert!(!v.is_valid(&body), "{body}");
    }
}

#[test]
fn error_code_descriptions_come_from_the_table() {
    let schema = error_body_schema();
    let variants = schema["$defs"]["ErrorCode"]["oneOf"].as_array().unwrap();
    assert_eq!(variants.len(), ErrorCode::ALL.len());
    for (variant, code) in variants.iter().zip(ErrorCode::ALL) {
        assert_eq!(variant["const"], code.as_str());
        assert_eq!(variant["description"], code.when());
        assert!(PAGE.contains(variant["description"].as_str().unwrap()));
    }
}

#[test]
fn task_failures_validate() {
    let v = validator(&task_failure_schema());
    let example = page_task_failure();
    assert!(v.is_valid(&example), "the reference page's own example");
    let mut bad = example.clone();
    bad["credits_used"] = json!(-1);
    assert!(!v.is_valid(&bad), "negative credits");
    let mut bad = example.clone();
    bad["duration_ms"] = json!(1.5);
    assert!(!v.is_valid(&bad), "fractional duration");
    let mut bad = example.clone();
    bad["status"] = json!("running");
    assert!(!v.is_valid(&bad));
    let mut bad = example.clone();
    bad["error"] = json!("internal_error");
    assert!(!v.is_valid(&bad), "error must be an object");
    let mut bad = example;
    bad.as_object_mut().unwrap().remove("task_id");
    assert!(!v.is_valid(&bad));
}

/// The task schema takes each state's body, written here by hand from the page (its failure
/// example) and the states' meaning, and only one state's shape at a time.
#[test]
fn task_bodies_validate_in_every_state() {
    let v = validator(&overten_errors_schema::task_schema());
    for good in [
        json!({"task_id": "task_1", "status": "queued"}),
        json!({"task_id": "task_1", "status": "running"}),
        json!({"task_id": "task_1", "status": "succeeded", "result": {"file": "q3.xlsx"}, "credits_used": 3, "duration_ms": 61000}),
        json!({"task_id": "task_1", "status": "succeeded"}),
        page_task_failure(),
    ] {
        assert!(v.is_valid(&good), "{good}");
    }
    for bad in [
        json!({"task_id": "task_1", "status": "done"}),
        json!({"task_id": "task_1"}),
        json!({"status": "queued"}),
        json!({"task_id": 1, "status": "queued"}),
        json!({"task_id": "task_1", "status": "succeeded", "credits_used": -1}),
        json!({"task_id": "task_1", "status": "failed"}),
        json!({"task_id": "task_1", "status": "failed", "error": {"code": "Bad Code", "message": "m"}, "credits_used": 0, "duration_ms": 1}),
    ] {
        assert!(!v.is_valid(&bad), "{bad}");
    }
    let accepted = validator(&overten_errors_schema::task_accepted_schema());
    assert!(accepted.is_valid(&json!({"success": true, "task_id": "task_1", "status": "queued"})));
    assert!(!accepted.is_valid(&json!({"success": true, "status": "queued"})));
    assert!(!accepted.is_valid(&json!({"success": false, "task_id": "t"})));
}

#[test]
fn catalog_validates_against_its_schema() {
    let v = validator(&catalog_schema());
    let value = serde_json::to_value(catalog()).unwrap();
    let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(value["codes"].as_array().unwrap().len(), 16);
    assert_eq!(value["statuses"].as_array().unwrap().len(), 20);
    assert_eq!(value["tiers"].as_array().unwrap().len(), 3);
    assert_eq!(value["headers"].as_array().unwrap().len(), 5);
    let wait = &value["codes"][14];
    assert_eq!(wait["code"], "service_unavailable");
    assert_eq!(
        wait["retry"],
        json!({"action": "wait", "min_ms": 30_000, "max_ms": 60_000})
    );
    // A catalog with a bad action is rejected by the schema.
    let mut bad = value.clone();
    bad["codes"][0]["retry"] = json!({"action": "sometimes"});
    assert!(!v.is_valid(&bad));
    for (entry, code) in value["codes"]
        .as_array()
        .unwrap()
        .iter()
        .zip(ErrorCode::ALL)
    {
        let action = entry["retry"]["action"].as_str().unwrap();
        assert_eq!(action, code.retry().action());
    }
    assert_eq!(
        value["fallback"]["otherwise"],
        json!({"action": RetryRule::Never.action()})
    );
}

#[test]
fn openapi_is_a_valid_3_1_document() {
    let oas: Value = serde_json::from_str(OAS_31_SCHEMA).unwrap();
    let v = validator(&oas);
    let doc = openapi();
    let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    // The check can fail: a response without a description is not valid OpenAPI.
    let mut broken = doc.clone();
    broken["components"]["responses"]["gone"]
        .as_object_mut()
        .unwrap()
        .remove("description");
    assert!(!v.is_valid(&broken));
    let mut broken = doc.clone();
    broken["openapi"] = json!("3.0.3");
    assert!(!v.is_valid(&broken));
}

#[test]
fn openapi_components_are_usable() {
    let doc = openapi();
    let components = &doc["components"];
    for schema in components["schemas"].as_object().unwrap().values() {
        let mut schema = schema.clone();
        schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
        jsonschema::meta::validate(&schema).unwrap();
    }
    // Validate through the document itself, so `#/components/...` references resolve.
    let mut body_schema = doc.clone();
    body_schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    body_schema["$ref"] = json!("#/components/schemas/ErrorBody");
    let v = validator(&body_schema);
    let responses = components["responses"].as_object().unwrap();
    assert_eq!(responses.len(), ErrorCode::ALL.len());
    for &code in ErrorCode::ALL {
        let r = &responses[code.as_str()];
        assert_eq!(r["x-status"], code.status());
        let example = &r["content"]["application/json"]["example"];
        assert!(v.is_valid(example), "{code}");
        let hdrs = r["headers"].as_object().unwrap();
        for name in [
            "X-Request-Id",
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
        ] {
            let target = hdrs[name]["$ref"].as_str().unwrap();
            let key = target.strip_prefix("#/components/headers/").unwrap();
            assert!(components["headers"].get(key).is_some(), "{target}");
        }
        assert_eq!(
            hdrs.contains_key("Retry-After"),
            [429, 503].contains(&code.status()),
            "{code}"
        );
    }
    assert!(!v.is_valid(&json!({"success": true, "error": "gone", "message": "m"})));
    let mut task_schema = doc.clone();
    task_schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    task_schema["$ref"] = json!("#/components/schemas/TaskFailure");
    assert!(validator(&task_schema).is_valid(&page_task_failure()));
}
