//! `overten-errors classify` on every golden fixture of the workspace's `docs/fixtures`
//! agrees with the fixture's `expect` (not packaged: it reads the workspace's docs).

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_overten-errors");

#[test]
fn classify_agrees_with_every_fixture() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/fixtures");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let out = Command::new(BIN)
            .arg("classify")
            .arg("--json")
            .arg(&path)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(v["conforms"], true, "{}: {v}", path.display());
        assert!(out.status.success(), "{}", path.display());
        seen += 1;
    }
    assert!(seen > 50, "{seen} fixtures");
    // A fixture whose expected action is wrong does not conform, and the exit code says so.
    let src = std::fs::read_to_string(format!("{dir}/gone.json")).unwrap();
    let broken = src.replace(
        "\"reason\": \"permanent\"",
        "\"reason\": \"attempts_exhausted\"",
    );
    assert_ne!(broken, src);
    let tmp = std::env::temp_dir().join(format!("overten-broken-{}.json", std::process::id()));
    std::fs::write(&tmp, broken).unwrap();
    let out = Command::new(BIN)
        .arg("classify")
        .arg(&tmp)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&tmp);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("conforms:    NO"));
}
