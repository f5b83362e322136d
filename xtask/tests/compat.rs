//! Wire compatibility: the catalog against the last released one (`docs/compat.md`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on broken fixtures"
)]

use serde_json::{Value, json};
use xtask::compat::{
    Level, Version, compare, current_catalog, current_version, latest_snapshot, refused,
};
use xtask::workspace_root;

/// The guard itself: no major change since the last release unless the version says so.
#[test]
fn no_breaking_wire_change_since_the_last_release() {
    let (released, path) = latest_snapshot(&workspace_root())
        .expect("docs/compat holds the last release's catalog (cargo xtask release-snapshot)");
    let old: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let current = current_version().unwrap();
    assert!(current >= released, "the version went backwards");
    let changes = compare(&old, &current_catalog());
    let bad = refused(released, current, &changes);
    let listed: Vec<String> = bad.iter().map(ToString::to_string).collect();
    assert!(
        bad.is_empty(),
        "breaking wire changes since {released} need a breaking version (now {current}):\n{}",
        listed.join("\n")
    );
}

fn mutated(f: impl FnOnce(&mut Value)) -> Value {
    let mut v = current_catalog();
    f(&mut v);
    v
}

fn levels(old: &Value, new: &Value) -> Vec<Level> {
    compare(old, new).iter().map(|c| c.level).collect()
}

#[test]
fn each_kind_of_change_has_its_level() {
    let base = current_catalog();
    assert!(compare(&base, &base).is_empty());
    // Renaming a wire string is major (the old one disappears; a new one appears).
    let renamed = mutated(|v| v["codes"][0]["code"] = json!("invalid_key"));
    assert_eq!(levels(&base, &renamed), vec![Level::Major, Level::Minor]);
    // So are a removed code and a changed status, category or retry rule.
    let removed = mutated(|v| {
        v["codes"].as_array_mut().unwrap().pop();
    });
    assert_eq!(levels(&base, &removed), vec![Level::Major]);
    for (member, value) in [
        ("status", json!(418)),
        ("category", json!("billing")),
        ("retry", json!({"action": "backoff"})),
    ] {
        let changed = mutated(|v| v["codes"][1][member] = value);
        assert_eq!(levels(&base, &changed), vec![Level::Major], "{member}");
    }
    // Adding a code is minor; changing its text is a patch.
    let added = mutated(|v| {
        let mut extra = v["codes"][0].clone();
        extra["code"] = json!("quota_frozen");
        v["codes"].as_array_mut().unwrap().push(extra);
    });
    assert_eq!(levels(&base, &added), vec![Level::Minor]);
    let text = mutated(|v| v["codes"][2]["fix"] = json!("Top up."));
    assert_eq!(levels(&base, &text), vec![Level::Patch]);
    let fallback = mutated(|v| v["fallback"]["otherwise"] = json!({"action": "backoff"}));
    assert_eq!(levels(&base, &fallback), vec![Level::Major]);
}

#[test]
fn a_rename_is_refused_unless_the_version_breaks() {
    let base = current_catalog();
    let renamed = mutated(|v| v["codes"][3]["code"] = json!("bad_request"));
    let changes = compare(&base, &renamed);
    let v = |s| Version::parse(s).unwrap();
    assert_eq!(refused(v("0.1.0"), v("0.1.0"), &changes).len(), 1);
    assert_eq!(refused(v("0.1.0"), v("0.1.5"), &changes).len(), 1);
    assert!(refused(v("0.1.0"), v("0.2.0"), &changes).is_empty());
    assert_eq!(refused(v("1.4.0"), v("1.9.0"), &changes).len(), 1);
    assert!(refused(v("1.4.0"), v("2.0.0"), &changes).is_empty());
    // Minor and patch changes never need a bump to pass.
    let added = mutated(|v| {
        let mut extra = v["codes"][0].clone();
        extra["code"] = json!("quota_frozen");
        v["codes"].as_array_mut().unwrap().push(extra);
    });
    assert!(refused(v("0.1.0"), v("0.1.0"), &compare(&base, &added)).is_empty());
}
