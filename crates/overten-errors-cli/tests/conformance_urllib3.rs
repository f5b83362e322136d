//! `overten-errors conformance` grades a widely used third-party client: urllib3's `Retry`
//! (2.x, from `PyPI`), switched on as its docs show, run by `scripts/conformance_urllib3.py`.
//! Not packaged: it runs the workspace's script. `scripts/ensure-python.sh` (run by
//! `scripts/test.sh`) installs urllib3 when it is missing.

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use std::collections::BTreeSet;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_overten-errors");

#[test]
fn urllib3_retry_is_graded_rule_by_rule() {
    let has = Command::new("python3")
        .args([
            "-c",
            "import urllib3; assert urllib3.__version__.startswith('2.')",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has,
        "python3 with urllib3 2.x is needed; run: bash scripts/ensure-python.sh"
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/conformance_urllib3.py"
    );
    let out = Command::new(BIN)
        .args(["conformance", "--format", "json", "--", "python3", script])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let mut failed = BTreeSet::new();
    for s in report["scenarios"].as_array().unwrap() {
        for r in s["rules"].as_array().unwrap() {
            if r["verdict"] == "fail" {
                failed.insert(format!(
                    "{}/{}",
                    s["name"].as_str().unwrap(),
                    r["rule"].as_str().unwrap()
                ));
            }
        }
    }
    // What urllib3 2.x's Retry does, from its source: Retry-After honoured for 429 and 503
    // (passes); X-RateLimit-* unknown; the first retry after a 5xx without Retry-After is
    // immediate (`get_backoff_time` is 0 for one error) and no jitter by default; no async
    // resubmission; POST not retried (not in `allowed_methods`), so no key is needed.
    let want: BTreeSet<String> = [
        "rate-limit-headers/waited-as-named",
        "unavailable-window/waited-503-window",
        "server-errors-then-success/backoff",
        "server-errors-forever/backoff",
        "sync-timeout/resubmit-async",
        "sync-timeout/polled-task",
        "burst/spread",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(failed, want, "{report:#}");
}
