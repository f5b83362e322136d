//! `overten-errors`: the Overten API's error model on the command line.
//!
//! - `overten-errors mock --addr 127.0.0.1:8080 --tier free`: the mock API for SDK CI in any
//!   language (loopback only), built from `overten-errors-http`'s axum and tower layers;
//! - `overten-errors explain <code|status>`: when, fix, status, category, retry rule and the
//!   headers that matter, like `rustc --explain`;
//! - `overten-errors conformance -- PROGRAM`: a scripted mock that grades a client against
//!   the rules of `docs/retry.md` (text, JSON and `JUnit` XML reports);
//! - `overten-errors classify [FIXTURE.json]`: a golden fixture, or a raw HTTP response on
//!   stdin, read as a client reads it: the typed error, diagnostics and advice.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use overten_errors::Tier;

mod classify;
mod conformance;
mod explain;
mod mock;

/// The Overten API's error model: a mock server, explanations, classification.
#[derive(Debug, Parser)]
#[command(name = "overten-errors", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the mock Overten API on a loopback address until Ctrl-C or SIGTERM.
    ///
    /// Prints one line when ready: `mock Overten API on http://ADDR (...)`.
    #[command(long_about = MOCK_HELP)]
    Mock {
        /// The address to listen on (a loopback address; port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// Without --key or --keys: every well-formed `sk_live_*` key is an account of this
        /// tier (free, pro or enterprise), its own org.
        #[arg(long, default_value = "free", value_parser = parse_tier)]
        tier: Tier,
        /// An account: `KEY:TIER` or `KEY:TIER:ORG` (repeatable). With any --key or --keys,
        /// only the keys named are accepted.
        #[arg(long = "key", value_name = "KEY:TIER[:ORG]")]
        keys: Vec<String>,
        /// A file of accounts, one a line: `KEY TIER [ORG] [active|suspended|revoked]` (`#`
        /// starts a comment; a key listed twice, or none, is an error).
        #[arg(long = "keys", value_name = "FILE")]
        keys_file: Option<PathBuf>,
        /// Share rate limits, concurrent runs and idempotency records with every mock on
        /// this Redis: one node (`redis://127.0.0.1:6379/0`), a Cluster
        /// (`redis+cluster://HOST:PORT[,HOST:PORT…]`, any reachable seeds) or the primary
        /// Sentinels name (`redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE`); default: this
        /// process alone.
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        /// Seconds a sync request may run before it is answered 408
        /// `sync_timeout_upgrade_async` (the page's ceiling: 300).
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3600))]
        sync_ceiling: u64,
        /// Seconds a connection has to send its request head before it is dropped.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        header_timeout: u64,
    },
    /// Grade a client against the rules of docs/retry.md: a scripted mock records every
    /// attempt of the client's test program and reports each rule, pass or fail.
    #[command(long_about = CONFORMANCE_HELP)]
    Conformance {
        /// The address to listen on (a loopback address; port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
        /// The report on stdout: text, json or junit (`JUnit` XML).
        #[arg(long, value_enum, default_value = "text")]
        format: conformance::Format,
        /// Also write the JSON report to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Also write the `JUnit` XML report to this file.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Seconds the run may take before the client program is stopped (or, without one,
        /// before grading without a POST /conformance/done).
        #[arg(long, default_value_t = 240, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
        /// The client's test program and its arguments (after `--`); it gets
        /// `OVERTEN_BASE_URL`, `OVERTEN_API_KEY` and `OVERTEN_CONFORMANCE_PLAN`. Without it, the
        /// mock waits for `POST /conformance/done`.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Explain an error code (known or not) or an HTTP status.
    Explain {
        /// A wire code such as `rate_limit_exceeded`, or a status such as `503`.
        what: String,
    },
    /// Read a golden fixture (or a raw HTTP response from stdin) as a client would.
    #[command(long_about = CLASSIFY_HELP)]
    Classify {
        /// A file of `docs/fixtures/`; without it, a raw HTTP/1.1 response on stdin.
        fixture: Option<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The attempt that just failed (the first is 1; 0 is read as 1); default: the
        /// fixture's, or 1.
        #[arg(long)]
        attempt: Option<u32>,
        /// "Now", in Unix seconds; default: the fixture's `now_unix`, or the clock.
        #[arg(long, value_parser = clap::value_parser!(u64).range(0..=253_402_300_799))]
        now: Option<u64>,
        /// The 64-bit random draw every jitter reads (docs/retry.md); default: a fresh one.
        #[arg(long)]
        random: Option<u64>,
        /// The retry budget's tokens (capacity, cost and refill as the defaults); default:
        /// the fixture's budget, or none.
        #[arg(long)]
        budget: Option<u32>,
    },
}

const CLASSIFY_HELP: &str =
    "Read a golden fixture (or a raw HTTP response from stdin) as a client would.

Prints the error read, its diagnostics and the advised action (the step of docs/retry.md
that decided); with --json, one JSON object: the fields of a fixture's `expect` (status,
code, known, message, request_id, run_id, task_id, body_is_envelope, message_from_body,
status_mismatch, header_problems, step, action), `diagnostics` (each problem's text, or
null), and for a fixture with `expect`: `expect`, `conforms` and `differs` (the fields that
differ). docs/schema/classify-output.schema.json describes it; a `success` fixture prints
`budget_tokens`, the budget after the success, and a `pacing` fixture `hold_ms`, how long
in all the key's next request waits (null: sent at once; docs/retry.md, Pacing), and
`waits_ms`, the same for its next three requests (slots one interval apart).

A fixture follows docs/schema/fixture.schema.json and is read strictly: a field of the wrong type or out of range (an attempt of \"5\",
5.0, -1, 0 or 2^32, a negative or string budget field, a now_unix missing or past
9999-12-31, a header that is not a [name, value] pair) is refused, naming the field.

Exit status: 0 read (and conforms, for a fixture with `expect`), 1 differs from `expect`,
2 bad input.";

const CONFORMANCE_HELP: &str = "Grade a client against the rules of docs/retry.md.

  overten-errors conformance [--format text|json|junit] [--json F] [--junit F] -- PROGRAM ARGS...

Serves a scripted mock on a loopback port and runs PROGRAM with OVERTEN_BASE_URL (the mock),
OVERTEN_API_KEY and OVERTEN_CONFORMANCE_PLAN (GET it: the scenarios as JSON). PROGRAM, the
SDK author's own test program, sends each scenario's request (`method`, `url`, JSON `body`;
`clients` of them at once) through the client under test, lets the client retry, resubmit
and poll as it decides, and exits when every scenario has ended (run them concurrently: the
503 window alone takes 30-60 s). Without PROGRAM, the mock prints its URL on stderr and
grades on `POST /conformance/done` (or at --timeout).

Scenarios: 429 with Retry-After; 429 with only X-RateLimit-*; 503 with and without
Retry-After; 500, 502, 500 then 200; 500 forever; 404; 501 with Retry-After; a POST
answered 408 (resubmit with async: true, then poll GET /tasks/{task_id}); a POST answered
503, 500, 201 (its retries keep one Idempotency-Key and body); 8 clients failing at once.

Rules graded (docs/conformance.md): retried-transient, waited-as-named, waited-503-window,
backoff, max-attempts, no-retry-permanent, no-retry-501, one-idempotency-key, same-body,
resubmit-async, polled-task, spread. Every request is recorded (time, method, path,
Idempotency-Key, body SHA-256, status) in the JSON report.

A conforming client takes 35-65 s. Exit status: 0 every rule passed, 1 a rule failed (or
the program failed or timed out), 2 bad usage (the program could not start).";

const MOCK_HELP: &str = "Serve the mock Overten API on a loopback address until Ctrl-C or SIGTERM.

Prints one line when ready: `mock Overten API on http://ADDR (...)`.

It runs on the gateway of overten-errors-http (docs/gateway.md): `Authorization: Bearer
sk_live_...` resolved to an account (401 invalid_api_key, 403 forbidden for a suspended
org), the tier's requests per minute (429 rate_limit_exceeded with Retry-After), concurrent
runs (every POST is a run; over the limit a 429 naming it) and upload limit (413); every
response carries X-Request-Id and X-RateLimit-*. A request with `Idempotency-Key` runs once:
a retry with the same key and request gets the kept response (`Idempotent-Replayed: true`),
another request with the key 409 conflict. A request running past --sync-ceiling is 408
sync_timeout_upgrade_async.

Routes:
  GET  /ok                      200 {\"success\":true}
  GET|POST /errors/{code}       that error, as the API sends it (a snake_case code the table
                                does not have: status 500, for forward-compatibility tests)
       ?status=NNN              the same code with another status (400 to 599)
       ?async=true, or a POST body {\"async\": true}
                                202 with a fresh task_id (each run makes a new one)
  GET  /tasks/{task_id}         the task: succeeded for a resubmitted
                                sync_timeout_upgrade_async, else the task failure with the
                                code; a task of another org is 404 not_found
  GET  /metrics                 the gateway's metrics, Prometheus text format (no key needed)
  anything else                 404 not_found; a malformed path or status 400

Error injection, on any route:
  X-Mock-Error: <code>          answer that error ...
  X-Mock-Error-Times: <n>       ... for the first n requests of the key with it (default 1)
  X-Mock-Error-Status: <NNN>    the status of a code the table does not have (default 500)
  X-Mock-Retry-After: <secs>    a Retry-After on the injected error (any code)";

fn parse_tier(s: &str) -> Result<Tier, String> {
    s.parse::<Tier>().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Mock {
            addr,
            tier,
            keys,
            keys_file,
            redis,
            sync_ceiling,
            header_timeout,
        } => {
            let accounts = match mock::accounts(&keys, keys_file.as_deref()) {
                Ok(accounts) => accounts,
                Err(e) => {
                    eprintln!("overten-errors mock: {e}");
                    return ExitCode::from(2);
                }
            };
            mock::main(&mock::Options {
                addr,
                tier,
                accounts,
                redis,
                sync_ceiling: std::time::Duration::from_secs(sync_ceiling),
                header_timeout: std::time::Duration::from_secs(header_timeout),
            })
        }
        Command::Conformance {
            addr,
            format,
            json,
            junit,
            timeout,
            command,
        } => conformance::main(&conformance::Options {
            addr,
            format,
            json,
            junit,
            timeout: std::time::Duration::from_secs(timeout),
            command,
        }),
        Command::Explain { what } => match explain::explain(&what) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("overten-errors explain: {e}");
                ExitCode::from(2)
            }
        },
        Command::Classify {
            fixture,
            json,
            attempt,
            now,
            random,
            budget,
        } => classify::main(
            fixture.as_deref(),
            json,
            &classify::Overrides {
                now,
                random,
                budget,
                attempt,
            },
        ),
    }
}
