//! The retry-storm simulator: deterministic, and it tells policies apart.

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

use xtask::sim::{Fleet, POLICIES, SCENARIOS, run};

const FLEET: Fleet = Fleet {
    clients: 40,
    rate_per_client: 1.0,
    seed: 7,
};

fn scenario(name: &str) -> &'static xtask::sim::Scenario {
    SCENARIOS.iter().find(|s| s.name == name).unwrap()
}

#[test]
fn a_seed_gives_the_same_run() {
    let s = scenario("outage");
    let (a, b) = (run(FLEET, s, POLICIES[0]), run(FLEET, s, POLICIES[0]));
    assert_eq!(
        (a.attempts, a.succeeded, a.load.clone()),
        (b.attempts, b.succeeded, b.load)
    );
    let c = run(Fleet { seed: 8, ..FLEET }, s, POLICIES[0]);
    assert_ne!(a.attempts, c.attempts, "another seed, another run");
}

#[test]
fn policies_are_told_apart() {
    let s = scenario("outage");
    let none = run(FLEET, s, "no retries");
    let naive = run(FLEET, s, "naive 1 s x5");
    let ours = run(FLEET, s, "overten (default + budget)");
    assert_eq!(
        none.attempts, none.offered,
        "no retries: one attempt per request"
    );
    // About 60 of the 300 simulated seconds fail: a fifth of requests.
    assert!(
        (0.75..0.85).contains(&none.success_share()),
        "{}",
        none.success_share()
    );
    assert!(naive.amplification() > 3.0, "{}", naive.amplification());
    assert!(ours.amplification() < naive.amplification());
    assert!(ours.success_share() >= none.success_share());
    // The overload keeps a naive fleet down; without retries the API recovers at once.
    let s = scenario("overload");
    assert_eq!(run(FLEET, s, "no retries").recovery_s, Some(0));
    assert_eq!(run(FLEET, s, "naive 1 s x5").recovery_s, None);
}

#[test]
fn rate_limits_answer_429_with_the_window() {
    let s = scenario("rate-limit-free");
    let none = run(FLEET, s, "no retries");
    // Each client offers 15 a minute against a limit of 10: about two thirds pass.
    assert!(
        (0.6..0.72).contains(&none.success_share()),
        "{}",
        none.success_share()
    );
}
