//! `docs/` is fresh, and the check catches every kind of drift.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on broken fixtures"
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use overten_errors::{ErrorCode, STATUSES, Tier};
use xtask::{Problem, generate, workspace_root};

/// One generation shared by the tests (each takes seconds: the storm study); the
/// determinism test makes a second one of its own to compare.
fn generated() -> &'static BTreeMap<PathBuf, String> {
    static FILES: OnceLock<BTreeMap<PathBuf, String>> = OnceLock::new();
    FILES.get_or_init(generate)
}

fn check(root: &std::path::Path) -> Vec<Problem> {
    xtask::check_files(root, generated())
}

fn write(root: &std::path::Path) -> std::io::Result<Vec<String>> {
    xtask::write_files(root, generated())
}

#[test]
fn docs_are_up_to_date() {
    let problems = check(&workspace_root());
    let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        problems.is_empty(),
        "docs/ is stale; run `cargo xtask docs`:\n{}",
        listed.join("\n")
    );
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("overten-xtask-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn check_names_stale_missing_and_extra_files_and_write_repairs_them() {
    let root = scratch("drift");
    assert!(
        check(&root)
            .iter()
            .all(|p| matches!(p, Problem::Missing(_)))
    );
    write(&root).unwrap();
    assert_eq!(check(&root), vec![]);

    // CRLF line ends are not drift.
    let md = root.join("docs/errors.md");
    let text = std::fs::read_to_string(&md).unwrap();
    std::fs::write(&md, text.replace('\n', "\r\n")).unwrap();
    assert_eq!(check(&root), vec![]);

    // A changed text is.
    let edited = text.replace(ErrorCode::Gone.fix(), "Start over");
    assert_ne!(edited, text);
    std::fs::write(&md, edited).unwrap();
    std::fs::remove_file(root.join("docs/schema/catalog.schema.json")).unwrap();
    std::fs::write(root.join("docs/fixtures/retired_code.json"), "{}").unwrap();
    let problems = check(&root);
    assert_eq!(
        problems,
        vec![
            Problem::Stale("docs/errors.md".into()),
            Problem::Missing("docs/schema/catalog.schema.json".into()),
            Problem::Extra("docs/fixtures/retired_code.json".into()),
        ]
    );
    assert!(problems[0].to_string().contains("docs/errors.md"));
    assert!(problems[0].to_string().contains("cargo xtask docs"));
    write(&root).unwrap();
    assert_eq!(check(&root), vec![]);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn generation_is_deterministic_and_marked() {
    let (a, b) = (generated(), generate());
    assert_eq!(*a, b);
    for (path, text) in a {
        if path.starts_with("crates") || path.to_string_lossy().starts_with("python/LICENSE") {
            // Verbatim copies into the packages: identical to their source, no note.
            let source = if path.starts_with("crates/overten-errors-schema/tests") {
                PathBuf::from("crates/overten-errors/tests/data/error-reference.txt")
            } else {
                PathBuf::from(path.file_name().unwrap())
            };
            let want = std::fs::read_to_string(workspace_root().join(source)).unwrap();
            assert_eq!(text, &want, "{}", path.display());
            continue;
        }
        assert!(
            text.contains("cargo xtask docs"),
            "{} lacks the generated note",
            path.display()
        );
        assert!(text.ends_with('\n') && !text.contains('\r'));
        if path.extension().is_some_and(|e| e == "json") {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            let note = v.get("$comment").or_else(|| v.get("x-comment"));
            assert!(note.is_some(), "{}", path.display());
        }
    }
    let fixtures = a.keys().filter(|p| p.starts_with("docs/fixtures")).count();
    assert!(fixtures >= ErrorCode::ALL.len() + 5);
}

#[test]
fn errors_md_holds_every_row_of_the_page() {
    let md = generated()[&PathBuf::from("docs/errors.md")].replace("\\*", "*");
    for s in STATUSES {
        let row = format!("| {} | {} | {} |", s.status, s.category, s.scenario);
        assert!(md.contains(&row), "{row}");
    }
    for &code in ErrorCode::ALL {
        let row = format!(
            "| `{code}` | {} | {} | {} |",
            code.status(),
            code.when(),
            code.fix()
        );
        assert!(md.contains(&row), "{row}");
        assert!(md.contains(&format!(
            "| `{code}` | {} | `{}` |",
            code.status(),
            code.retry().action()
        )));
    }
    for &t in Tier::ALL {
        let row = format!(
            "| {t} | {} | {} |",
            t.requests_per_minute(),
            t.concurrent_runs()
        );
        assert!(md.contains(&row), "{row}");
    }
    for h in overten_errors::headers::ALL {
        assert!(md.contains(&format!("| `{}` |", h.name)));
    }
    assert!(md.contains("\"task_id\": \"task_...\""));
}

/// Every number in `docs/` is exact in a JavaScript `Number`: an integer of at most
/// 2^53 − 1, or a decimal.
#[test]
fn every_number_in_docs_is_exact_in_javascript() {
    fn walk(v: &serde_json::Value, at: &str, bad: &mut Vec<String>) {
        match v {
            serde_json::Value::Number(n) => {
                let ok = n.as_u64().map_or_else(
                    || {
                        n.as_i64()
                            .map_or(n.is_f64(), |i| i.unsigned_abs() < 1 << 53)
                    },
                    |u| u < 1 << 53,
                );
                if !ok {
                    bad.push(format!("{at}: {n}"));
                }
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{at}/{i}"), bad);
                }
            }
            serde_json::Value::Object(map) => {
                for (k, item) in map {
                    walk(item, &format!("{at}/{k}"), bad);
                }
            }
            _ => {}
        }
    }
    let mut bad = Vec::new();
    let mut files = 0;
    for (path, text) in generated() {
        if path.extension().is_some_and(|e| e == "json") {
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            walk(&value, &path.display().to_string(), &mut bad);
            files += 1;
        }
    }
    assert!(files > 20);
    assert!(bad.is_empty(), "numbers past 2^53 - 1:\n{}", bad.join("\n"));
    // The walk can fail: a number past 2^53 is caught.
    let mut caught = Vec::new();
    walk(
        &serde_json::json!({"x": [1u64 << 53]}),
        "probe",
        &mut caught,
    );
    assert_eq!(caught, vec!["probe/x/0: 9007199254740992".to_owned()]);
}
