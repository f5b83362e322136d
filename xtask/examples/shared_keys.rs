//! The shared-key scenarios of `docs/retry-storms.md` over ten seeds and both server models
//! (the 2 s queue), for the default, the variant that does not retry a shared key's 429, and
//! no retries: at the page's demand (1.5× the key's limit) on the page's API (capacity 4× the
//! key's demand) and on APIs twice and four times as large; at 1.0× and 0.8× the limit on
//! the page's API. The share
//! that succeeds, within 60 s, 429s per request, and the runs whose goodput in the run is at
//! least no retries'. `cargo run --release -p xtask --example shared_keys`
//!
//! The figures the page's *one key shared* paragraph cites.

use xtask::sim::{Fleet, Outcome, ServerModel, VARIANT_NO_SHARED_RETRY, run, scenarios};
use xtask::storms::{FLEET, SEEDS};

fn range(xs: &[f64], scale: f64, digits: usize) -> String {
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min) * scale;
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max) * scale;
    format!("{lo:.digits$}–{hi:.digits$}")
}

fn main() {
    let policies = [
        "overten (default + budget)",
        VARIANT_NO_SHARED_RETRY,
        "no retries",
    ];
    let seeds: Vec<u64> = SEEDS.iter().copied().chain(5..10).collect();
    // (demand as a multiple of the key's limit, the API's capacity as a multiple of the
    // page's): the page's case first.
    for (demand, capacity) in [(1.5, 1.0), (1.5, 2.0), (1.5, 4.0), (1.0, 1.0), (0.8, 1.0)] {
        for scenario in scenarios().iter().filter(|s| s.incident.shared()) {
            let scenario = scenario.shared_at(demand, capacity);
            println!(
                "\n{}, demand {demand}× the key's limit, the API's capacity {}× the key's demand",
                scenario.name, scenario.headroom
            );
            let mut runs: Vec<Vec<Outcome>> = vec![Vec::new(); policies.len()];
            for model in ServerModel::ALL {
                for &seed in &seeds {
                    let fleet = Fleet {
                        rate_per_client: scenario.rate_per_client,
                        seed,
                        ..FLEET
                    };
                    for (i, p) in policies.iter().enumerate() {
                        runs[i].push(run(fleet, &scenario, model, p));
                    }
                }
            }
            let baseline = &runs[policies.len() - 1];
            for (p, outcomes) in policies.iter().zip(&runs) {
                let share: Vec<f64> = outcomes.iter().map(Outcome::success_share).collect();
                let within: Vec<f64> = outcomes.iter().map(Outcome::success_within_60s).collect();
                #[allow(clippy::cast_precision_loss, reason = "counts")]
                let r429: Vec<f64> = outcomes
                    .iter()
                    .map(|o| o.rejected_429 as f64 / o.offered.max(1) as f64)
                    .collect();
                let held = outcomes
                    .iter()
                    .zip(baseline)
                    .filter(|(o, b)| o.succeeded_in_run >= b.succeeded_in_run)
                    .count();
                let short = outcomes
                    .iter()
                    .zip(baseline)
                    .map(|(o, b)| b.succeeded_in_run.saturating_sub(o.succeeded_in_run))
                    .max()
                    .unwrap_or(0);
                let in_run = outcomes
                    .iter()
                    .map(|o| o.succeeded_in_run)
                    .max()
                    .unwrap_or(0);
                println!(
                    "  {p:52} succeeds {}%  within 60 s {}%  429s a request {}  goodput ≥ no retries' {held}/{} (short by at most {short} of up to {in_run} requests)",
                    range(&share, 100.0, 1),
                    range(&within, 100.0, 1),
                    range(&r429, 1.0, 2),
                    outcomes.len()
                );
            }
        }
    }
}
