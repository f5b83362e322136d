//! `overten-errors`: the Overten API's error model on the command line.
//!
//! - `overten-errors mock --addr 127.0.0.1:8080 --tier free`: the mock API for SDK CI in any
//!   language (loopback only), built from `overten-errors-http`'s axum and tower layers;
//! - `overten-errors explain <code|status>`: when, fix, status, category, retry rule and the
//!   headers that matter, like `rustc --explain`;
//! - `overten-errors classify [FIXTURE.json]`: a golden fixture, or a raw HTTP response on
//!   stdin, read as a client reads it: the typed error, diagnostics and advice.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use overten_errors::Tier;

mod classify;
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
    /// Prints one line when ready: `mock Overten API on http://ADDR (tier T: N requests/minute)`.
    /// Error injection on any route: `X-Mock-Error: <code>` answers that error (a code this
    /// version does not know is sent with status 500, or `X-Mock-Error-Status`), for the
    /// first `X-Mock-Error-Times: <n>` (default 1) requests of the key with that code, then
    /// the route answers as usual.
    Mock {
        /// The address to listen on (a loopback address; port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// The tier whose per-minute limit the gateway enforces: free, pro or enterprise.
        #[arg(long, default_value = "free", value_parser = parse_tier)]
        tier: Tier,
        /// Seconds a connection has to send its request head before it is dropped.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        header_timeout: u64,
    },
    /// Explain an error code (known or not) or an HTTP status.
    Explain {
        /// A wire code such as `rate_limit_exceeded`, or a status such as `503`.
        what: String,
    },
    /// Read a golden fixture (or a raw HTTP response from stdin) as a client would.
    Classify {
        /// A file of `docs/fixtures/`; without it, a raw HTTP/1.1 response on stdin.
        fixture: Option<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// For a raw response: the number of the attempt it ended (the first is 1).
        #[arg(long, default_value_t = 1)]
        attempt: u32,
    },
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    s.parse::<Tier>().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Mock {
            addr,
            tier,
            header_timeout,
        } => mock::main(addr, tier, std::time::Duration::from_secs(header_timeout)),
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
        } => classify::main(fixture.as_deref(), json, attempt),
    }
}
