//! The `overten-errors` binary, run as a process.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines,
    reason = "tests fail loudly, and read as one story"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use overten_errors::ErrorCode;

const BIN: &str = env!("CARGO_BIN_EXE_overten-errors");

fn run(args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    // Every command here ends by itself: one still running after a minute (a mock that
    // started when it should have refused its input) is stopped and fails the test, instead
    // of holding it forever.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("overten-errors {args:?} was still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.code().unwrap_or(-1),
        stdout.join().unwrap(),
        stderr.join().unwrap(),
    )
}

#[test]
fn explain_every_code_an_unknown_one_and_statuses() {
    for &code in ErrorCode::ALL {
        let (rc, out, _) = run(&["explain", code.as_str()], None);
        assert_eq!(rc, 0, "{code}");
        assert!(
            out.starts_with(&format!("{} ({}", code.as_str(), code.status())),
            "{out}"
        );
        assert!(
            out.contains(code.when()) && out.contains(code.fix()),
            "{out}"
        );
        assert!(out.contains("X-Request-Id"), "{out}");
    }
    let (rc, out, _) = run(&["explain", "rate_limit_exceeded"], None);
    assert_eq!(rc, 0);
    assert!(
        out.contains("Retry-After") && out.contains("always sent"),
        "{out}"
    );
    let (rc, out, _) = run(&["explain", "quota_frozen"], None);
    assert_eq!(rc, 0);
    assert!(
        out.contains("not a code of this version") && out.contains("503"),
        "{out}"
    );
    let (rc, out, _) = run(&["explain", "503"], None);
    assert_eq!(rc, 0);
    assert!(
        out.contains("service_unavailable") && out.contains("wait"),
        "{out}"
    );
    for bad in ["Not A Code", "700", "-1"] {
        let (rc, _, err) = run(&["explain", bad], None);
        assert_eq!(rc, 2, "{bad}");
        assert!(!err.is_empty());
    }
}

#[test]
fn classify_a_raw_response_on_stdin() {
    let raw = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\nX-Request-Id: req_1\r\n\r\n<html>down</html>";
    let (rc, out, _) = run(&["classify", "--json"], Some(raw));
    assert_eq!(rc, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], 503);
    assert_eq!(v["code"], serde_json::Value::Null);
    assert_eq!(v["request_id"], "req_1");
    assert_eq!(v["step"], "wait_window");
    assert!(!v["message"].as_str().unwrap().contains("html"));
    let (rc, out, _) = run(&["classify"], Some(raw));
    assert_eq!(rc, 0);
    assert!(
        out.contains("advice:") && out.contains("wait_window"),
        "{out}"
    );
    let (rc, _, err) = run(&["classify"], Some(b"not http at all"));
    assert_eq!(rc, 2);
    assert!(err.contains("status line"), "{err}");
}

/// A raw response's header values lose U+0020 and U+0009 around them and nothing else
/// (`docs/retry.md`, Reading a response): a no-break space before the number makes the
/// `Retry-After` invalid, as in a fixture, and the decision backs off instead.
#[test]
fn a_raw_header_value_is_trimmed_of_spaces_and_tabs_only() {
    let decide = |value: &[u8]| {
        let mut raw = b"HTTP/1.1 500 X\r\nRetry-After:".to_vec();
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n\r\n");
        let args = [
            "classify",
            "--json",
            "--random",
            "0",
            "--now",
            "1700000000",
            "--attempt",
            "1",
        ];
        let (rc, out, err) = run(&args, Some(&raw));
        assert_eq!(rc, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    for trimmed in [&b" 5"[..], b"\t5\t", b" \t 5 "] {
        let v = decide(trimmed);
        assert_eq!(v["action"]["after_ms"], 5000, "{trimmed:?}");
        assert_eq!(v["action"]["basis"], "retry_after");
    }
    for kept in [&b"\xc2\xa05"[..], b"5\xc2\xa0", b" \xe2\x80\x835"] {
        let v = decide(kept);
        assert_eq!(v["action"]["basis"], "backoff", "{kept:?}: {v}");
        assert_eq!(v["header_problems"], serde_json::json!(["retry-after"]));
    }
    // A control character other than HTAB is not a field value at all: the response is
    // malformed, as an HTTP library would find it.
    for control in [&b"\x0b5"[..], b"\x0c5", b"5\x7f"] {
        let mut raw = b"HTTP/1.1 500 X\r\nRetry-After:".to_vec();
        raw.extend_from_slice(control);
        raw.extend_from_slice(b"\r\n\r\n");
        let (rc, _, err) = run(&["classify", "--json"], Some(&raw));
        assert_eq!(rc, 2, "{control:?}");
        assert!(err.contains("retry-after"), "{err}");
    }
}

struct Mock {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_mock(tier: &str) -> Mock {
    start_mock_with(&["--tier", tier])
}

fn start_mock_with(args: &[&str]) -> Mock {
    let mut child = Command::new(BIN)
        .args(["mock", "--addr", "127.0.0.1:0", "--header-timeout", "1"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no ready line: {line:?}"))
        .parse()
        .unwrap();
    Mock { child, addr }
}

/// One HTTP/1.1 request on a fresh connection; the status, headers (lowercase) and body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(k);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

const KEY: (&str, &str) = ("Authorization", "Bearer sk_live_cli");

#[test]
fn the_mock_answers_injects_errors_and_stops_on_sigterm() {
    let mut mock = start_mock("pro");
    let addr = mock.addr;
    let (status, headers, body) = http(addr, "GET", "/ok", &[KEY], "");
    assert_eq!(status, 200, "{body}");
    assert!(
        header(&headers, "x-request-id")
            .unwrap()
            .starts_with("req_")
    );
    assert_eq!(header(&headers, "x-ratelimit-limit"), Some("60"));
    assert_eq!(header(&headers, "x-ratelimit-remaining"), Some("59"));
    // No key: 401 envelope.
    let (status, headers, body) = http(addr, "GET", "/ok", &[], "");
    assert_eq!(status, 401);
    assert!(body.contains(r#""error":"invalid_api_key""#), "{body}");
    assert!(header(&headers, "x-request-id").is_some());
    // The routes of the table, and a path nobody serves.
    let (status, _, body) = http(addr, "GET", "/errors/rate%5Flimit%5Fexceeded", &[KEY], "");
    assert_eq!(status, 429, "{body}");
    let (status, _, body) = http(addr, "GET", "/errors/quota_frozen?status=503", &[KEY], "");
    assert_eq!((status, body.contains("quota_frozen")), (503, true));
    let (status, _, body) = http(addr, "GET", "/nowhere", &[KEY], "");
    assert_eq!(status, 404);
    assert!(body.contains(r#""error":"not_found""#), "{body}");
    // Injection: twice internal_error for this key, then the route itself.
    let inject = [
        KEY,
        ("X-Mock-Error", "internal_error"),
        ("X-Mock-Error-Times", "2"),
    ];
    let statuses: Vec<u16> = (0..3)
        .map(|_| http(addr, "GET", "/ok", &inject, "").0)
        .collect();
    assert_eq!(statuses, vec![500, 500, 200]);
    // A code this version does not know, with its status; a value that is no code: 400.
    let inject = [
        KEY,
        ("X-Mock-Error", "quota_frozen"),
        ("X-Mock-Error-Status", "503"),
    ];
    let (status, _, body) = http(addr, "GET", "/ok", &inject, "");
    assert_eq!((status, body.contains("quota_frozen")), (503, true));
    let (status, _, body) = http(
        addr,
        "GET",
        "/ok",
        &[KEY, ("X-Mock-Error", "Not A Code")],
        "",
    );
    assert_eq!(status, 400, "{body}");
    // The async resubmission as a POST body.
    let (status, _, body) = http(
        addr,
        "POST",
        "/errors/sync_timeout_upgrade_async",
        &[KEY, ("Content-Type", "application/json")],
        r#"{"async": true}"#,
    );
    assert_eq!(status, 202, "{body}");
    // A connection that never finishes its request head is dropped; the server stays up.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    idle.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "dropped after the header timeout"
    );
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    assert_eq!(http(addr, "GET", "/ok", &[KEY], "").0, 200);
    // SIGTERM: a graceful exit with status 0.
    let pid = mock.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    loop {
        if let Some(status) = mock.child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "mock did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_mock_refuses_non_loopback_addresses() {
    let (rc, _, err) = run(&["mock", "--addr", "0.0.0.0:0"], None);
    assert_eq!(rc, 2);
    assert!(err.contains("loopback"), "{err}");
}

fn json_field(body: &str, field: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v[field].as_str().unwrap_or("").to_owned()
}

#[test]
fn the_mock_scopes_tasks_by_org_replays_idempotent_posts_and_names_waits() {
    let mock = start_mock_with(&[
        "--key",
        "sk_live_a1:pro:org_a",
        "--key",
        "sk_live_b1:free:org_b",
    ]);
    let addr = mock.addr;
    let a = ("Authorization", "Bearer sk_live_a1");
    let b = ("Authorization", "Bearer sk_live_b1");
    // Only the keys named.
    assert_eq!(
        http(
            addr,
            "GET",
            "/ok",
            &[("Authorization", "Bearer sk_live_zz")],
            ""
        )
        .0,
        401
    );
    let (status, headers, _) = http(addr, "GET", "/ok", &[b], "");
    assert_eq!(
        (status, header(&headers, "x-ratelimit-limit")),
        (200, Some("10"))
    );
    // A task belongs to its org.
    let json = ("Content-Type", "application/json");
    let (status, _, body) = http(
        addr,
        "POST",
        "/errors/gone",
        &[a, json],
        r#"{"async":true}"#,
    );
    assert_eq!(status, 202, "{body}");
    let task = format!("/tasks/{}", json_field(&body, "task_id"));
    assert_eq!(http(addr, "GET", &task, &[a], "").0, 200);
    let (status, _, body) = http(addr, "GET", &task, &[b], "");
    assert_eq!(
        (status, body.contains("not_found")),
        (404, true),
        "another org's task"
    );
    // Without a key every POST makes a new task; with one, the replay shows the first.
    let fresh: Vec<String> = (0..2)
        .map(|_| {
            json_field(
                &http(
                    addr,
                    "POST",
                    "/errors/gone",
                    &[a, json],
                    r#"{"async":true}"#,
                )
                .2,
                "task_id",
            )
        })
        .collect();
    assert_ne!(fresh[0], fresh[1]);
    let keyed = [a, json, ("Idempotency-Key", "create-1")];
    let (s1, h1, first) = http(addr, "POST", "/errors/gone", &keyed, r#"{"async":true}"#);
    let (s2, h2, second) = http(addr, "POST", "/errors/gone", &keyed, r#"{"async":true}"#);
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(
        json_field(&first, "task_id"),
        json_field(&second, "task_id"),
        "replayed"
    );
    assert_eq!(
        (
            header(&h1, "idempotent-replayed"),
            header(&h2, "idempotent-replayed")
        ),
        (None, Some("true"))
    );
    let (status, _, body) = http(
        addr,
        "POST",
        "/errors/gone",
        &keyed,
        r#"{"async":true,"x":1}"#,
    );
    assert_eq!((status, body.contains("conflict")), (409, true), "{body}");
    // The same key in another org is another record.
    let (status, headers, _) = http(
        addr,
        "POST",
        "/errors/gone",
        &[b, json, ("Idempotency-Key", "create-1")],
        r#"{"async":true}"#,
    );
    assert_eq!(
        (status, header(&headers, "idempotent-replayed")),
        (202, None)
    );
    // An injected 503 names the wait asked for.
    let inject = [
        a,
        ("X-Mock-Error", "service_unavailable"),
        ("X-Mock-Retry-After", "2"),
    ];
    let (status, headers, _) = http(addr, "GET", "/ok", &inject, "");
    assert_eq!((status, header(&headers, "retry-after")), (503, Some("2")));
    drop(mock);
}

#[test]
fn the_mock_reads_keys_from_a_file_and_refuses_bad_ones() {
    let dir = std::env::temp_dir().join(format!("overten-cli-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys.txt");
    std::fs::write(
        &file,
        "# key tier org\nsk_live_f1 enterprise org_f  # a comment\n\nsk_live_f2 free\n",
    )
    .unwrap();
    let mock = start_mock_with(&["--keys", file.to_str().unwrap()]);
    let (status, headers, _) = http(
        mock.addr,
        "GET",
        "/ok",
        &[("Authorization", "Bearer sk_live_f1")],
        "",
    );
    assert_eq!(
        (status, header(&headers, "x-ratelimit-limit")),
        (200, Some("600"))
    );
    let (status, headers, _) = http(
        mock.addr,
        "GET",
        "/ok",
        &[("Authorization", "Bearer sk_live_f2")],
        "",
    );
    assert_eq!(
        (status, header(&headers, "x-ratelimit-limit")),
        (200, Some("10"))
    );
    drop(mock);
    std::fs::write(&file, "sk_live_f1 platinum\n").unwrap();
    let (rc, _, err) = run(
        &[
            "mock",
            "--addr",
            "127.0.0.1:0",
            "--keys",
            file.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(rc, 2);
    assert!(err.contains("line 1"), "{err}");
    for bad in [
        "sk_live_a",
        "sk_test_a:pro",
        "sk_live_a:pro:",
        "sk_live_a-b:free",
    ] {
        let (rc, _, err) = run(&["mock", "--addr", "127.0.0.1:0", "--key", bad], None);
        assert_eq!(rc, 2, "{bad}: {err}");
    }
    let (rc, _, err) = run(
        &[
            "mock",
            "--addr",
            "127.0.0.1:0",
            "--redis",
            "redis://127.0.0.1:1/",
        ],
        None,
    );
    assert_eq!(rc, 2, "no Redis there: a bad start input: {err}");
    assert!(err.contains("--redis"), "{err}");
    for bad_url in ["not a url", "http://127.0.0.1:6379/", "redis://"] {
        let (rc, _, err) = run(&["mock", "--addr", "127.0.0.1:0", "--redis", bad_url], None);
        assert_eq!(rc, 2, "{bad_url}: {err}");
        assert!(err.contains("--redis"), "{bad_url}: {err}");
    }
    // Cluster and Sentinel URLs: what is wrong with them is named; nothing listening on a
    // seed or a Sentinel is a failed start too.
    for (bad_url, says) in [
        ("redis+cluster://", "names no HOST:PORT"),
        ("redis+cluster://127.0.0.1", "is not HOST:PORT"),
        ("redis+sentinel://127.0.0.1:26379", "needs /SERVICE"),
        ("redis+sentinel://127.0.0.1:26379/a b", "needs /SERVICE"),
        ("redis+cluster://127.0.0.1:1", "--redis"),
        ("redis+sentinel://127.0.0.1:1/mymaster", "--redis"),
    ] {
        let (rc, _, err) = run(&["mock", "--addr", "127.0.0.1:0", "--redis", bad_url], None);
        assert_eq!(rc, 2, "{bad_url}: {err}");
        assert!(
            err.contains("--redis") && err.contains(says),
            "{bad_url}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `--keys` file that names no key fails closed (the mock does not start and accept
/// every key), and a key named twice, in the file or by `--key` and the file, is an error
/// naming both places.
#[test]
fn the_mock_refuses_a_keys_file_naming_no_key_or_a_key_twice() {
    let dir = std::env::temp_dir().join(format!("overten-cli-keys2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys.txt");
    let path = file.to_str().unwrap();
    let start = |extra: &[&str]| {
        let mut args = vec!["mock", "--addr", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        run(&args, None)
    };
    for empty in ["", "# none\n", "\n\n   \n# a\n  # b\n"] {
        std::fs::write(&file, empty).unwrap();
        let (rc, _, err) = start(&["--keys", path]);
        assert_eq!(rc, 2, "{empty:?}: {err}");
        assert!(err.contains("names no key"), "{err}");
        // Keys given by --key do not make an empty file acceptable either.
        let (rc, _, err) = start(&["--key", "sk_live_a:pro", "--keys", path]);
        assert_eq!(rc, 2, "{empty:?}: {err}");
    }
    std::fs::write(
        &file,
        "sk_live_d1 free\n# x\nsk_live_d2 pro\nsk_live_d1 pro\n",
    )
    .unwrap();
    let (rc, _, err) = start(&["--keys", path]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("line 4") && err.contains("line 1"), "{err}");
    std::fs::write(&file, "sk_live_d2 pro\n").unwrap();
    let (rc, _, err) = start(&["--key", "sk_live_d2:free", "--keys", path]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("line 1") && err.contains("--key #1"), "{err}");
    let (rc, _, err) = start(&["--key", "sk_live_d3:free", "--key", "sk_live_d3:pro"]);
    assert_eq!(rc, 2, "{err}");
    assert!(
        err.contains("--key #2") && err.contains("--key #1"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `redis-server` of this test's own, on a free loopback port, killed by PID when dropped.
struct Redis(Child, u16);

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server could not start ({e}): apt-get install -y redis-server")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis(child, port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_mocks_on_one_redis_share_limits_idempotency_and_tasks() {
    let redis = Redis::start();
    let url = format!("redis://127.0.0.1:{}/", redis.1);
    let args = [
        "--key",
        "sk_live_r1:free:org_r",
        "--key",
        "sk_live_r2:enterprise:org_r",
        "--redis",
        url.as_str(),
    ];
    let one = start_mock_with(&args);
    let two = start_mock_with(&args);
    let free = ("Authorization", "Bearer sk_live_r1");
    // The free tier's 10 a minute, between the two processes: the first 10 pass, then 429
    // (if a minute boundary falls inside the 12 requests, the new window lets more pass).
    let statuses: Vec<u16> = (0..12)
        .map(|i| {
            http(
                if i % 2 == 0 { one.addr } else { two.addr },
                "GET",
                "/ok",
                &[free],
                "",
            )
            .0
        })
        .collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        ok + statuses.iter().filter(|s| **s == 429).count(),
        12,
        "{statuses:?}"
    );
    assert!(
        ok >= 10 && statuses[..10].iter().all(|s| *s == 200),
        "{statuses:?}"
    );
    assert!(ok == 10 || statuses[10..].contains(&200), "{statuses:?}");
    // One Idempotency-Key across the processes: the second answers the first's task.
    let keyed = [
        ("Authorization", "Bearer sk_live_r2"),
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "fleet-1"),
    ];
    let (s1, _, first) = http(
        one.addr,
        "POST",
        "/errors/gone",
        &keyed,
        r#"{"async":true}"#,
    );
    let (s2, headers, second) = http(
        two.addr,
        "POST",
        "/errors/gone",
        &keyed,
        r#"{"async":true}"#,
    );
    assert_eq!((s1, s2), (202, 202), "{first} {second}");
    assert_eq!(
        json_field(&first, "task_id"),
        json_field(&second, "task_id")
    );
    assert_eq!(header(&headers, "idempotent-replayed"), Some("true"));
    // Tasks live in the shared store: made by one mock, read by the other; another org's
    // key reads a 404.
    let task = format!("/tasks/{}", json_field(&first, "task_id"));
    let ent = ("Authorization", "Bearer sk_live_r2");
    let (status, _, body) = http(two.addr, "GET", &task, &[ent], "");
    assert_eq!(status, 200, "{body}");
    let failure: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(failure["status"], "failed", "{body}");
    assert_eq!(failure["error"]["code"], "gone", "{body}");
    let (status, _, body) = http(one.addr, "GET", &task, &[free], "");
    assert!(
        status == 200 || status == 429,
        "the same org, another key: {status} {body}"
    );
    let resubmit = [
        ("Authorization", "Bearer sk_live_r2"),
        ("Content-Type", "application/json"),
    ];
    let (status, _, accepted) = http(
        one.addr,
        "POST",
        "/errors/sync_timeout_upgrade_async",
        &resubmit,
        r#"{"async":true}"#,
    );
    assert_eq!(status, 202, "{accepted}");
    let task = format!("/tasks/{}", json_field(&accepted, "task_id"));
    let (status, _, body) = http(two.addr, "GET", &task, &[ent], "");
    let done: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, &done["status"], &done["result"]),
        (
            200,
            &serde_json::json!("succeeded"),
            &serde_json::json!({"success": true})
        ),
        "{body}"
    );
    drop((one, two));
    let other = start_mock_with(&[
        "--key",
        "sk_live_r3:enterprise:org_other",
        "--redis",
        url.as_str(),
    ]);
    let (status, _, body) = http(
        other.addr,
        "GET",
        &task,
        &[("Authorization", "Bearer sk_live_r3")],
        "",
    );
    assert_eq!(
        status, 404,
        "another org's task does not exist for it: {body}"
    );
}

/// The mock's `/metrics`: Prometheus text that `promtool check metrics` (Debian's
/// `prometheus` package, installed by `scripts/ensure-promtool.sh`) accepts, counting what
/// was sent (requests by status and tier, 429s by source, idempotency outcomes), with no
/// key material in it: no key, no key hash, no org.
#[test]
fn the_mock_serves_metrics_promtool_accepts_without_key_material() {
    let mock = start_mock("free");
    let addr = mock.addr;
    for _ in 0..12 {
        http(addr, "GET", "/ok", &[KEY], "");
    }
    let (status, _, _) = http(addr, "GET", "/ok", &[], "");
    assert_eq!(status, 401);
    let other = ("Authorization", "Bearer sk_live_metrics2");
    let json = ("Content-Type", "application/json");
    let keyed = [other, json, ("Idempotency-Key", "m-1")];
    let (s1, _, _) = http(addr, "POST", "/errors/gone", &keyed, r#"{"async":true}"#);
    let (s2, h2, _) = http(addr, "POST", "/errors/gone", &keyed, r#"{"async":true}"#);
    assert_eq!(
        (s1, s2, header(&h2, "idempotent-replayed")),
        (202, 202, Some("true"))
    );

    let (status, headers, text) = http(addr, "GET", "/metrics", &[], "");
    assert_eq!(status, 200, "{text}");
    assert!(header(&headers, "content-type").is_some_and(|t| t.starts_with("text/plain")));
    for line in [
        r#"http_server_request_duration_count{http_request_method="GET",http_response_status_code="200",overten_tier="free"} 10"#,
        r#"http_server_request_duration_count{http_request_method="GET",http_response_status_code="429",overten_tier="free",error_type="rate_limit_exceeded"} 2"#,
        r#"http_server_request_duration_count{http_request_method="GET",http_response_status_code="401",overten_tier="none",error_type="invalid_api_key"} 1"#,
        r#"overten_gateway_rate_limited_total{reason="rate",tier="free",source="store"} 1"#,
        r#"overten_gateway_rate_limited_total{reason="rate",tier="free",source="near_cache"} 1"#,
        r#"overten_idempotency_requests_total{outcome="first"} 1"#,
        r#"overten_idempotency_requests_total{outcome="replayed"} 1"#,
        "# TYPE overten_store_operation_duration_seconds histogram",
        "# TYPE overten_gateway_runs_in_progress gauge",
        // The async POST made one task, and it failed (`/errors/gone`): the replay made none.
        r#"overten_tasks_total{outcome="created"} 1"#,
        r#"overten_tasks_total{outcome="failed"} 1"#,
        r#"overten_store_operation_duration_seconds_count{store="tasks",operation="create",outcome="ok"} 1"#,
        // Every metric is described (`metrics::describe`).
        "# HELP overten_tasks_total Async tasks, by what became of them",
        "# HELP overten_idempotency_requests_total Requests with an Idempotency-Key, by outcome",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    // No key material in any label.
    for key in ["sk_live_cli", "sk_live_metrics2"] {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.as_bytes());
        let hash = digest[..16].iter().fold(String::new(), |mut out, b| {
            use std::fmt::Write as _;
            let _ = write!(out, "{b:02x}");
            out
        });
        assert!(
            !text.contains(key) && !text.contains(&hash),
            "{key}\n{text}"
        );
    }
    assert!(
        !text.contains("sk_live") && !text.contains("org_"),
        "{text}"
    );

    // A real parser's verdict.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool could not start ({e}): bash scripts/ensure-promtool.sh (apt-get install -y --no-install-recommends prometheus)")
        });
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
