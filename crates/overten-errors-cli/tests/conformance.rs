//! `overten-errors conformance` grades: this workspace's reqwest client passes every rule,
//! and a naive client (a fixed 1 s retry of everything, five attempts) fails exactly the
//! rules it breaks. Each run takes the 503 window's 30-60 s; the two run side by side.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use overten_errors::RetryPolicy;
use overten_errors_http::{
    CallError, Retrier, RetryMiddleware, TaskClient, TokioSleep, json_or_error,
};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_overten-errors");

/// `Command::output` with a deadline: a grader that never ends (or leaves a child holding
/// its pipes) fails the test after two minutes instead of holding it.
trait Bounded {
    fn bounded(&mut self) -> std::process::Output;
}

impl Bounded for Command {
    fn bounded(&mut self) -> std::process::Output {
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            })
        };
        let stdout = drain(Box::new(child.stdout.take().unwrap()));
        let stderr = drain(Box::new(child.stderr.take().unwrap()));
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("overten-errors conformance still running after 120 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // A child the grader left behind may hold the pipes: their ends are read within
        // the same deadline.
        let wait = |h: std::thread::JoinHandle<Vec<u8>>| {
            while !h.is_finished() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "a process the grader started still holds its output after 120 s"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            h.join().unwrap()
        };
        std::process::Output {
            status,
            stdout: wait(stdout),
            stderr: wait(stderr),
        }
    }
}

/// Starts `conformance` with no program: it prints its URL on stderr and grades on
/// `POST /conformance/done`.
fn start() -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["conformance", "--format", "json", "--timeout", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .trim_end_matches(':')
        .to_owned();
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
    });
    (child, url)
}

/// Ends the run and reads the JSON report.
async fn finish(mut child: Child, url: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{url}/conformance/done"))
        .send()
        .await
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    let mut report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    report["exit"] = json!(status.code());
    report
}

fn failed_rules(report: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in report["scenarios"].as_array().unwrap() {
        for r in s["rules"].as_array().unwrap() {
            if r["verdict"] == "fail" {
                out.insert(format!(
                    "{}/{}",
                    s["name"].as_str().unwrap(),
                    r["rule"].as_str().unwrap()
                ));
            }
        }
    }
    out
}

async fn json_of(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

async fn plan(url: &str) -> Value {
    json_of(reqwest::get(format!("{url}/conformance")).await.unwrap()).await
}

/// One logical request through this workspace's client: a `POST` of a JSON object goes
/// through `TaskClient::post_with` (the whole async flow in one call: resubmit after a 408,
/// poll the task); anything else is sent through the middleware and read with
/// `json_or_error`. Either way the result or a typed error comes back; the grader reads the
/// wire.
async fn workspace_call(tasks: &TaskClient<TokioSleep>, s: &Value) {
    let method = reqwest::Method::from_bytes(s["method"].as_str().unwrap().as_bytes()).unwrap();
    let url = s["url"].as_str().unwrap();
    let mut request = tasks.client().request(method.clone(), url).header(
        "authorization",
        format!("Bearer {}", s["api_key"].as_str().unwrap()),
    );
    let outcome: Result<Value, CallError> = match &s["body"] {
        Value::Object(_) if method == reqwest::Method::POST => {
            tasks.post_with(request, &s["body"]).await
        }
        body => {
            if !body.is_null() {
                request = request
                    .header("content-type", "application/json")
                    .body(body.to_string());
            }
            match request.send().await {
                Ok(response) => json_or_error(response).await,
                Err(e) => Err(CallError::Transport(e)),
            }
        }
    };
    if s["name"] == "sync-timeout" || s["name"] == "idempotent-post" {
        // The async flow in one call ends with the task's result; the keyed POST succeeds.
        assert!(outcome.is_ok(), "{}: {outcome:?}", s["name"]);
    }
    if let Err(error) = &outcome {
        // Typed all the way: an API error, a task failure, a transport error.
        assert!(
            matches!(
                error,
                CallError::Api(_) | CallError::TaskFailed(_) | CallError::Transport(_)
            ),
            "{}: {error}",
            s["name"]
        );
    }
}

#[tokio::test]
async fn the_workspace_client_passes_every_rule() {
    let (child, url) = start();
    let plan = plan(&url).await;
    // One budget for the process, one pacer (one Retrier) per API key: each scenario has
    // its own key.
    let budget = std::sync::Arc::new(overten_errors::RetryBudget::default());
    let mut calls = Vec::new();
    for s in plan["scenarios"].as_array().unwrap() {
        let retrier = Retrier::new(RetryPolicy::default(), TokioSleep)
            .with_budget(std::sync::Arc::clone(&budget));
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(RetryMiddleware::new(retrier))
            .build();
        let tasks = std::sync::Arc::new(TaskClient::new(client, TokioSleep));
        for _ in 0..s["clients"].as_u64().unwrap() {
            let (tasks, s) = (std::sync::Arc::clone(&tasks), s.clone());
            calls.push(tokio::spawn(async move {
                workspace_call(&tasks, &s).await;
            }));
        }
    }
    for call in calls {
        call.await.unwrap();
    }
    let report = finish(child, &url).await;
    assert!(failed_rules(&report).is_empty(), "{report:#}");
    assert_eq!(report["passed"], true);
    assert_eq!(report["exit"], 0, "every rule passed: exit status 0");
    // Every scenario was graded on a record, and every rule of the plan was graded.
    let graded: usize = report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rules"].as_array().unwrap().len())
        .sum();
    let planned: usize = plan["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rules"].as_array().unwrap().len())
        .sum();
    assert_eq!(graded, planned);
    assert_eq!(report["rules_passed"], planned);
    let idem = &report["scenarios"].as_array().unwrap()[9];
    assert_eq!(idem["name"], "idempotent-post");
    assert_eq!(idem["attempts"].as_array().unwrap().len(), 3, "{idem:#}");
}

/// A fixed 1 s retry of every non-2xx, five attempts at most, no key, no async.
async fn naive_call(base: &str, s: &Value) {
    let client = reqwest::Client::new();
    let _ = base;
    let method = reqwest::Method::from_bytes(s["method"].as_str().unwrap().as_bytes()).unwrap();
    for attempt in 1..=5 {
        let mut request = client.request(method.clone(), s["url"].as_str().unwrap());
        if !s["body"].is_null() {
            request = request.body(s["body"].to_string());
        }
        let status = request.send().await.unwrap().status();
        if status.is_success() || attempt == 5 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn a_naive_client_fails_exactly_the_rules_it_breaks() {
    let (child, url) = start();
    let plan = plan(&url).await;
    let mut calls = Vec::new();
    for s in plan["scenarios"].as_array().unwrap() {
        for _ in 0..s["clients"].as_u64().unwrap() {
            let (url, s) = (url.clone(), s.clone());
            calls.push(tokio::spawn(async move { naive_call(&url, &s).await }));
        }
    }
    for call in calls {
        call.await.unwrap();
    }
    let report = finish(child, &url).await;
    let want: BTreeSet<String> = [
        // Waits shorter than the server named (2 s, a reset 2-3 s ahead, 3 s) and the window.
        "rate-limit-retry-after/waited-as-named",
        "rate-limit-headers/waited-as-named",
        "unavailable-retry-after/waited-as-named",
        "unavailable-window/waited-503-window",
        // 1 s after attempt 3 is below the 2 s backoff allows.
        "server-errors-then-success/backoff",
        "server-errors-forever/backoff",
        // Retries what must not be retried.
        "permanent/no-retry-permanent",
        "not-implemented/no-retry-501",
        // Replays the 408 instead of resubmitting, never polls.
        "sync-timeout/resubmit-async",
        "sync-timeout/polled-task",
        // Replays a POST without a key.
        "idempotent-post/one-idempotency-key",
        // Eight clients, one fixed delay: one instant.
        "burst/spread",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(failed_rules(&report), want, "{report:#}");
    assert_eq!(report["passed"], false);
    assert_eq!(report["exit"], 1);
}

#[test]
fn reports_come_as_text_and_junit_and_the_exit_code_says_pass_or_fail() {
    // A program that sends nothing fails every rule; the run ends when it exits.
    let dir = std::env::temp_dir().join(format!("overten-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json_path, junit_path) = (dir.join("r.json"), dir.join("r.xml"));
    let out = Command::new(BIN)
        .args(["conformance", "--junit"])
        .arg(&junit_path)
        .arg("--json")
        .arg(&json_path)
        .args(["--", "true"])
        .bounded();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL retried-transient"), "{text}");
    assert!(text.contains("never requested"), "{text}");
    assert!(text.trim_end().ends_with("FAIL"), "{text}");
    let junit = std::fs::read_to_string(&junit_path).unwrap();
    assert!(junit.starts_with("<?xml"), "{junit}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let failures = report["rules_failed"].as_u64().unwrap();
    assert!(
        junit.contains(&format!("failures=\"{failures}\"")),
        "{junit}"
    );
    assert_eq!(junit.matches("<failure ").count() as u64, failures);
    assert_eq!(report["rules_passed"], 0);
    // A program that cannot start is bad usage, exit 2; one that fails is a failed run.
    let out = Command::new(BIN)
        .args(["conformance", "--", "/nonexistent/program"])
        .bounded();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .args(["conformance", "--format", "json", "--", "false"])
        .bounded();
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["problems"][0].as_str().unwrap().contains("exited"),
        "{report}"
    );
    // A run past --timeout stops the program and says so.
    let out = Command::new(BIN)
        .args([
            "conformance",
            "--timeout",
            "1",
            "--format",
            "json",
            "--",
            "sleep",
            "30",
        ])
        .bounded();
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["problems"][0]
            .as_str()
            .unwrap()
            .contains("ran past 1 s"),
        "{report}"
    );
    assert!(report["duration_ms"].as_u64().unwrap() >= 1000, "{report}");
    assert!(
        report["scenarios"][0]["rules"][0]["text"]
            .as_str()
            .unwrap()
            .contains("retried")
    );
    // The same run as JUnit: the problem is an <error>, each rule a failed testcase.
    let out = Command::new(BIN)
        .args([
            "conformance",
            "--timeout",
            "1",
            "--format",
            "junit",
            "--",
            "sleep",
            "30",
        ])
        .bounded();
    let junit = String::from_utf8_lossy(&out.stdout);
    assert!(
        junit.contains("<error message=\"the client program ran past 1 s"),
        "{junit}"
    );
    assert!(junit.contains("errors=\"1\""), "{junit}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether process `pid` is alive (a zombie counts as gone: it runs nothing).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_owned();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// What the client program started goes with it: its whole process group is stopped,
/// whether the program ran past `--timeout` or exited and left a child behind. On the main
/// of issue 25 the `sleep 600` kept running.
#[cfg(target_os = "linux")]
#[test]
fn the_programs_children_do_not_outlive_the_grader() {
    let dir = std::env::temp_dir().join(format!("overten-conf-group-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, script, timeout) in [
        ("timed-out", "sleep 600 & echo $! > \"$0\"; wait", "1"),
        ("exited", "sleep 600 & echo $! > \"$0\"; exit 0", "30"),
    ] {
        let pid_file = dir.join(name);
        let out = Command::new(BIN)
            .args([
                "conformance",
                "--timeout",
                timeout,
                "--format",
                "json",
                "--",
            ])
            .args(["sh", "-c", script, pid_file.to_str().unwrap()])
            .bounded();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let pid = pid.trim();
        assert!(!pid.is_empty(), "{name}");
        // The grader has exited: poll to a deadline for the kill to land.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let gone = !alive(pid);
        if !gone {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        assert!(
            gone,
            "{name}: the program's child {pid} outlived the grader"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
