//! `docs/retry-storms.md` and its plots, from [`crate::sim`].

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::GENERATED;
use crate::sim::{
    Fleet, Incident, Outcome, POLICIES, SHARED_DEMAND, Scenario, ServerModel, run, scenarios,
};

/// The fleet of the published figures (and of CI, which regenerates them).
pub const FLEET: Fleet = Fleet {
    clients: 100,
    rate_per_client: 1.0,
    seed: 20_261_125,
    queue_ms: crate::sim::QUEUE_MS,
};

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn secs(ms: u64) -> String {
    let centis = ms.saturating_add(5) / 10;
    format!("{}.{:02} s", centis / 100, centis % 100)
}

/// One SVG: attempts per second received by the API over time, one line per policy.
fn plot(scenario: &Scenario, model: ServerModel, outcomes: &[(&str, Outcome)]) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let top = outcomes
            .iter()
            .flat_map(|(_, o)| o.load.iter().copied())
            .max()
            .unwrap_or(1)
            .max(1);
        let chart = ChartBuilder::on(&root)
            .caption(
                format!("{} ({} server)", scenario.title, model.name()),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0u64..scenario.horizon, 0u64..top + top / 10);
        let Ok(mut chart) = chart else {
            return svg_fallback(scenario);
        };
        let _ = chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("attempts received per second")
            .draw();
        let colors = [
            RED,
            BLUE,
            MAGENTA,
            GREEN,
            CYAN,
            BLACK,
            RGBColor(150, 150, 150),
            RGBColor(230, 130, 0),
        ];
        for (i, (name, o)) in outcomes.iter().enumerate() {
            let color = colors[i % colors.len()];
            let series = LineSeries::new(
                o.load.iter().enumerate().map(|(s, &n)| (s as u64, n)),
                color.stroke_width(1),
            );
            if let Ok(drawn) = chart.draw_series(series) {
                drawn
                    .label(*name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            }
        }
        let _ = chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw();
        let _ = root.present();
    }
    svg.push('\n');
    // An XML comment may precede the root element; the note contains no "--".
    format!("<!-- {GENERATED} -->\n{svg}")
}

fn svg_fallback(scenario: &Scenario) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\"><text>{}</text></svg>\n",
        scenario.name
    )
}

/// Slack for a peak compared with a multiple of a rate: a second of whole attempts that is
/// exactly the multiple (9 attempts against 1.5 × 6/s) must meet it, though the rate, a sum
/// of 100 clients' rates in `f64`, lands a few ulps under (5.99999999999999/s: 9 attempts
/// read as 1.5000000000000024×).
pub const RATIO_TOLERANCE: f64 = 1e-9;

/// Whether a peak `ratio` meets `bound` (within [`RATIO_TOLERANCE`]).
pub fn at_most(ratio: f64, bound: f64) -> bool {
    ratio <= bound + RATIO_TOLERANCE
}

/// The seeds of every figure: each cell of the page is the range over these runs.
pub const SEEDS: [u64; 5] = [20_261_125, 1, 2, 3, 4];

/// The scenarios plotted (each for both server models, at the first seed).
const PLOTTED: [&str; 6] = [
    "outage-60",
    "outage-html-60",
    "rate-limit-free-over",
    "rate-limit-pro-over",
    "brownout",
    "overload-60",
];

/// Every file: the page and the plots, for the published fleet.
pub(crate) fn files() -> Vec<(String, String)> {
    files_with(FLEET)
}

/// One scenario, one server model, one policy: a run per seed.
struct Cell {
    scenario: usize,
    model: ServerModel,
    policy: &'static str,
    runs: Vec<Outcome>,
}

/// Every run of the study, on two threads (the machines have two cores).
fn study(
    base: Fleet,
    scenarios: &[Scenario],
    seeds: &[u64],
    policies: &[&'static str],
) -> Vec<Cell> {
    let mut jobs = Vec::new();
    for (i, _) in scenarios.iter().enumerate() {
        for model in ServerModel::ALL {
            for policy in policies {
                jobs.push((i, model, *policy));
            }
        }
    }
    let work = |part: &[(usize, ServerModel, &'static str)]| -> Vec<Cell> {
        part.iter()
            .map(|&(i, model, policy)| {
                let scenario = &scenarios[i];
                let runs = seeds
                    .iter()
                    .map(|&seed| {
                        let fleet = Fleet {
                            rate_per_client: scenario.rate_per_client,
                            seed,
                            ..base
                        };
                        run(fleet, scenario, model, policy)
                    })
                    .collect();
                Cell {
                    scenario: i,
                    model,
                    policy,
                    runs,
                }
            })
            .collect()
    };
    let (a, b): (Vec<_>, Vec<_>) = jobs.iter().enumerate().partition(|(n, _)| n % 2 == 0);
    let a: Vec<_> = a.into_iter().map(|(_, j)| *j).collect();
    let b: Vec<_> = b.into_iter().map(|(_, j)| *j).collect();
    let (mut one, two) = std::thread::scope(|scope| {
        let other = scope.spawn(|| work(&b));
        let mine = work(&a);
        (mine, other.join().unwrap_or_default())
    });
    one.extend(two);
    one.sort_by_key(|c| {
        (
            c.scenario,
            c.model as u8,
            policies.iter().position(|p| *p == c.policy),
        )
    });
    one
}

/// `lo–hi` of `f` over the runs, formatted by `show`.
fn range(runs: &[Outcome], f: impl Fn(&Outcome) -> f64, show: impl Fn(f64) -> String) -> String {
    let lo = runs.iter().map(&f).fold(f64::INFINITY, f64::min);
    let hi = runs.iter().map(&f).fold(f64::NEG_INFINITY, f64::max);
    let (a, b) = (show(lo), show(hi));
    if a == b { a } else { format!("{a}–{b}") }
}

/// The range of a recovery time; "never" for a run that did not recover.
fn recovery_range(runs: &[Outcome], f: impl Fn(&Outcome) -> Option<u64>) -> String {
    let got: Vec<u64> = runs.iter().filter_map(&f).collect();
    let never = runs.len() - got.len();
    match (got.iter().min(), got.iter().max()) {
        (Some(lo), Some(hi)) if never == 0 && lo == hi => format!("{lo} s"),
        (Some(lo), Some(hi)) if never == 0 => format!("{lo}–{hi} s"),
        (Some(lo), Some(hi)) => format!("{lo}–{hi} s, **never in {never}**"),
        _ => "**never**".to_owned(),
    }
}

/// The page and plots for `base` (`cargo xtask simulate --clients N` prints the page).
#[allow(
    clippy::too_many_lines,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "one table after another, of counts and milliseconds far below 2^52"
)]
pub fn files_with(base: Fleet) -> Vec<(String, String)> {
    let scenarios = scenarios();
    let cells = study(base, &scenarios, &SEEDS, POLICIES);
    let mut page = String::new();
    let _ = write!(
        page,
        "<!-- {GENERATED} -->\n\n{}",
        include_str!("../templates/retry-storms-head.md")
            .replace("{{clients}}", &base.clients.to_string())
            .replace("{{seeds}}", &SEEDS.len().to_string())
            .replace("{{seed}}", &base.seed.to_string())
    );
    page.push_str(&goals(&scenarios, &cells, &SEEDS, OURS, true));
    page.push_str("\n## Every scenario\n\nEach cell is the range over the seeds.\n");
    let mut out = Vec::new();
    for (i, scenario) in scenarios.iter().enumerate() {
        let fleet = Fleet {
            rate_per_client: scenario.rate_per_client,
            ..base
        };
        let limited = matches!(
            scenario.incident,
            Incident::RateLimit { .. } | Incident::MixedTiers
        );
        let _ = write!(
            page,
            "\n### {}\n\n{} clients offering {:.1} requests/s in all for {} s; normal capacity {:.1}/s.",
            scenario.title,
            fleet.clients,
            fleet.offered(),
            scenario.horizon,
            fleet.offered() * scenario.headroom,
        );
        if PLOTTED.contains(&scenario.name.as_str()) {
            for model in ServerModel::ALL {
                let _ = write!(
                    page,
                    " ![attempts per second, {m}](retry-storms/{n}-{m}.svg)",
                    n = scenario.name,
                    m = model.name()
                );
            }
        }
        let extra = if limited {
            "429s per request | peak (× the keys' limits per second) |"
        } else {
            "API recovery | users' recovery |"
        };
        let _ = write!(
            page,
            "\n\n| server | policy | amplification | peak (× capacity) | goodput in the run (/s) | drain (share offered) | share that succeeds | within 10 s | within 60 s | p99 latency | {extra}\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for cell in cells.iter().filter(|c| c.scenario == i) {
            let r = &cell.runs;
            let tail = if limited {
                format!(
                    "{} | {} |",
                    range(
                        r,
                        |o| o.rejected_429 as f64 / o.offered.max(1) as f64,
                        |x| format!("{x:.2}")
                    ),
                    range(
                        r,
                        |o| o.peak_over_limits.unwrap_or(0.0),
                        |x| format!("{x:.1}×")
                    ),
                )
            } else {
                format!(
                    "{} | {} |",
                    recovery_range(r, |o| o.recovery_s),
                    recovery_range(r, |o| o.user_recovery_s)
                )
            };
            let _ = writeln!(
                page,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {tail}",
                cell.model.name(),
                cell.policy,
                range(r, Outcome::amplification, |x| format!("{x:.2}×")),
                range(r, |o| o.peak_load, |x| format!("{x:.1}×")),
                range(r, Outcome::goodput_in_run, |x| format!("{x:.1}")),
                range(r, Outcome::drain_share, pct),
                range(r, Outcome::success_share, pct),
                range(r, Outcome::success_within_10s, pct),
                range(r, Outcome::success_within_60s, pct),
                range(r, |o| o.p99_ms as f64, |x| secs(x as u64)),
            );
        }
        if PLOTTED.contains(&scenario.name.as_str()) {
            for model in ServerModel::ALL {
                let first: Vec<(&str, Outcome)> = cells
                    .iter()
                    .filter(|c| c.scenario == i && c.model == model)
                    .map(|c| (c.policy, c.runs[0].clone()))
                    .collect();
                out.push((
                    format!("docs/retry-storms/{}-{}.svg", scenario.name, model.name()),
                    plot(scenario, model, &first),
                ));
            }
        }
    }
    page.push_str(include_str!("../templates/retry-storms-tail.md"));
    // The held-out runs' goals, for the published fleet (at other sizes, the command's own
    // output: `cargo xtask simulate --held-out`).
    if base.clients == FLEET.clients {
        page.push_str(
            "\n## Held-out runs, every goal\n\nGenerated with the page (`cargo xtask simulate \
             --held-out` prints the same); the default against the same peers.\n",
        );
        page.push_str(&held_out(OURS));
    }
    out.push(("docs/retry-storms.md".to_owned(), page));
    out
}

/// One goal's line: what the default measured, what the best peer did, and in how many of
/// the runs (every seed, both server models, every length) the goal held.
struct Goal {
    text: &'static str,
    ours: String,
    peer: String,
    met: usize,
    of: usize,
    missed: Vec<String>,
    /// Runs in which the offered load alone (the no-retries baseline) meets the goal's
    /// threshold: a goal no retry policy can beat where even sending nothing twice misses.
    baseline_met: usize,
}

/// The default, as the page names it.
pub const OURS: &str = "overten (default + budget)";

/// A measure of the peers' runs of one case (the best of them, or a baseline's).
type PeerMeasure<'a> = dyn Fn(&[(&str, &Outcome)]) -> f64 + 'a;

/// The peers: retry policies of libraries a Rust user (or an SDK) would pick. The naive
/// client and no retries are baselines, not peers.
fn is_peer(policy: &str) -> bool {
    matches!(policy, "AWS SDK for Rust" | "Stainless" | "reqwest-retry")
}

/// Every miss, named: runs of one scenario and server model grouped, their seeds listed
/// (`outage-60 (queue: seeds 20261125, 1, 2)`).
fn named_misses(missed: &[String]) -> String {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for m in missed {
        let (run, seed) = m
            .strip_suffix(')')
            .and_then(|m| m.rsplit_once(", seed "))
            .map_or((m.as_str(), ""), |(run, seed)| (run, seed));
        match groups.iter_mut().find(|(r, _)| r == run) {
            Some((_, seeds)) => seeds.push(seed.to_owned()),
            None => groups.push((run.to_owned(), vec![seed.to_owned()])),
        }
    }
    let named: Vec<String> = groups
        .into_iter()
        .map(|(run, seeds)| {
            let seeds: Vec<String> = seeds.into_iter().filter(|s| !s.is_empty()).collect();
            match seeds.len() {
                0 => format!("{run})"),
                1 => format!("{run}, seed {})", seeds[0]),
                _ => format!("{run}: seeds {})", seeds.join(", ")),
            }
        })
        .collect();
    format!("{} ({} runs)", named.join("; "), missed.len())
}

#[allow(clippy::too_many_lines, reason = "one goal after another")]
fn goals(
    scenarios: &[Scenario],
    cells: &[Cell],
    seeds: &[u64],
    ours_name: &str,
    intro: bool,
) -> String {
    let of_kind = |pred: &dyn Fn(&Scenario) -> bool| -> Vec<usize> {
        scenarios
            .iter()
            .enumerate()
            .filter(|(_, s)| pred(s))
            .map(|(i, _)| i)
            .collect()
    };
    let outages = of_kind(&|s| matches!(s.incident, Incident::Outage { .. }));
    let overloads = of_kind(&|s| matches!(s.incident, Incident::Overload { .. }));
    let limits = of_kind(&|s| {
        matches!(
            s.incident,
            Incident::RateLimit { .. } | Incident::MixedTiers
        )
    });
    let brownouts = of_kind(&|s| matches!(s.incident, Incident::Brownout { .. }));
    // For each (scenario, model, seed): our run and the peers' runs.
    let cases = |which: &[usize]| {
        let mut out = Vec::new();
        for &i in which {
            for model in ServerModel::ALL {
                let here: Vec<&Cell> = cells
                    .iter()
                    .filter(|c| c.scenario == i && c.model == model)
                    .collect();
                let Some(ours) = here.iter().find(|c| c.policy == ours_name) else {
                    continue;
                };
                for (seed, seed_value) in seeds.iter().enumerate() {
                    let peers: Vec<(&str, &Outcome)> = here
                        .iter()
                        .filter(|c| is_peer(c.policy) || c.policy == "no retries")
                        .map(|c| (c.policy, &c.runs[seed]))
                        .collect();
                    let label = format!(
                        "{} ({}, seed {})",
                        scenarios[i].name,
                        model.name(),
                        seed_value
                    );
                    out.push((label, &ours.runs[seed], peers));
                }
            }
        }
        out
    };
    let never = |r: Option<u64>| r.unwrap_or(u64::MAX);
    let show_rec = |r: u64| {
        if r == u64::MAX {
            "never".to_owned()
        } else {
            format!("{r} s")
        }
    };
    let mut goals = Vec::new();
    let mut judge = |goal: &'static str,
                     which: &[usize],
                     ours_of: &dyn Fn(&Outcome) -> f64,
                     peer_of: &PeerMeasure<'_>,
                     holds: &dyn Fn(f64, f64) -> bool,
                     show: &dyn Fn(f64) -> String| {
        let cs = cases(which);
        let mut missed = Vec::new();
        let mut baseline_met = 0;
        let (mut o_lo, mut o_hi, mut p_lo, mut p_hi) = (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        );
        for (label, ours, peers) in &cs {
            let (o, p) = (ours_of(ours), peer_of(peers));
            o_lo = o_lo.min(o);
            o_hi = o_hi.max(o);
            p_lo = p_lo.min(p);
            p_hi = p_hi.max(p);
            if !holds(o, p) {
                missed.push(label.clone());
            }
            if peers
                .iter()
                .find(|(n, _)| *n == "no retries")
                .is_some_and(|(_, b)| holds(ours_of(b), p))
            {
                baseline_met += 1;
            }
        }
        let fmt = |lo: f64, hi: f64| {
            let (a, b) = (show(lo), show(hi));
            if a == b { a } else { format!("{a} to {b}") }
        };
        goals.push(Goal {
            text: goal,
            ours: fmt(o_lo, o_hi),
            peer: if p_lo.is_finite() || p_hi.is_finite() {
                fmt(p_lo, p_hi)
            } else {
                "—".into()
            },
            met: cs.len() - missed.len(),
            of: cs.len(),
            missed,
            baseline_met,
        });
    };
    let best = |f: &dyn Fn(&Outcome) -> f64, peers: &[(&str, &Outcome)]| {
        peers
            .iter()
            .filter(|(n, _)| is_peer(n))
            .map(|(_, o)| f(o))
            .fold(f64::NEG_INFINITY, f64::max)
    };
    let least = |f: &dyn Fn(&Outcome) -> f64, peers: &[(&str, &Outcome)]| {
        peers
            .iter()
            .filter(|(n, _)| is_peer(n))
            .map(|(_, o)| f(o))
            .fold(f64::INFINITY, f64::min)
    };
    let nothing = |_: &[(&str, &Outcome)]| f64::NAN;
    judge(
        "Hard outage, every length: amplification ≤ 1.1×",
        &outages,
        &Outcome::amplification,
        &nothing,
        &|o, _| o <= 1.1,
        &|x| format!("{x:.2}×"),
    );
    judge(
        "Hard outage, every length: share that succeeds ≥ the best peer's",
        &outages,
        &Outcome::success_share,
        &|p| best(&Outcome::success_share, p),
        &|o, p| o >= p,
        &pct,
    );
    judge(
        "Hard outage, every length: share that succeeds within 60 s ≥ the best peer's",
        &outages,
        &Outcome::success_within_60s,
        &|p| best(&Outcome::success_within_60s, p),
        &|o, p| o >= p,
        &pct,
    );
    #[allow(clippy::cast_precision_loss, reason = "seconds")]
    let api = |o: &Outcome| never(o.recovery_s) as f64;
    #[allow(clippy::cast_precision_loss, reason = "seconds")]
    let users = |o: &Outcome| never(o.user_recovery_s) as f64;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "seconds"
    )]
    let show_s = |x: f64| show_rec(if x >= 1e18 { u64::MAX } else { x as u64 });
    judge(
        "Overload, every length: the API recovers no later than with the best peer",
        &overloads,
        &api,
        &|p| least(&api, p),
        &|o, p| o <= p,
        &show_s,
    );
    judge(
        "Overload, every length: users see recovery no later than with the best peer",
        &overloads,
        &users,
        &|p| least(&users, p),
        &|o, p| o <= p,
        &show_s,
    );
    #[allow(clippy::cast_precision_loss, reason = "counts")]
    let per_request_429 = |o: &Outcome| o.rejected_after_seen as f64 / o.offered.max(1) as f64;
    judge(
        "Rate limits: no 429 once that client saw X-RateLimit-Remaining: 0 in the window (such 429s per request)",
        &limits,
        &per_request_429,
        &|p| least(&per_request_429, p),
        &|o, _| o == 0.0,
        &|x| format!("{x:.2}"),
    );
    judge(
        "Rate limits: peak second ≤ 1.5× the API's capacity",
        &limits,
        &|o| o.peak_load,
        &|p| least(&|o: &Outcome| o.peak_load, p),
        &|o, _| at_most(o, 1.5),
        &|x| format!("{x:.1}×"),
    );
    judge(
        "Rate limits: peak second ≤ 1.5× what the keys allow in a second",
        &limits,
        &|o| o.peak_over_limits.unwrap_or(f64::NAN),
        &|p| least(&|o: &Outcome| o.peak_over_limits.unwrap_or(f64::NAN), p),
        &|o, _| at_most(o, 1.5),
        &|x| format!("{x:.1}×"),
    );
    judge(
        "Rate limits: goodput in the run ≥ no retries'",
        &limits,
        &Outcome::goodput_in_run,
        &|p| {
            p.iter()
                .find(|(n, _)| *n == "no retries")
                .map_or(f64::NAN, |(_, o)| o.goodput_in_run())
        },
        &|o, p| o >= p,
        &|x| format!("{x:.2}/s"),
    );
    judge(
        "Brown-out: share that succeeds ≥ the best peer's",
        &brownouts,
        &Outcome::success_share,
        &|p| best(&Outcome::success_share, p),
        &|o, p| o >= p,
        &pct,
    );
    #[allow(clippy::cast_precision_loss, reason = "ms")]
    let p99 = |o: &Outcome| o.p99_ms as f64;
    judge(
        "Brown-out: p99 latency ≤ 60 s",
        &brownouts,
        &p99,
        &|p| least(&p99, p),
        &|o, _| o <= 60_000.0,
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "ms"
        )]
        &|x| secs(x as u64),
    );
    let mut s = String::from(if intro {
        "\n## The goals, on every seed and both server models\n\n\
         The default is `overten (default + budget)`; the peers are the AWS SDK for Rust, \
         Stainless and reqwest-retry (the naive client and no retries are baselines). A goal \
         holds in a run when the default meets it on that seed, server model and incident \
         length; *held in* counts those runs. *No retries* counts the runs in which the \
         no-retries baseline (each request sent once) would meet the same goal: where it \
         misses an absolute threshold (a peak, amplification, p99), the load the scenario \
         offers breaks the goal before any retry is sent.\n\n"
    } else {
        "\n"
    });
    s.push_str(
        "| goal | the default (range) | best peer (range) | held in | where it did not | no retries |\n|---|---|---|---|---|---|\n",
    );
    for g in goals.iter().filter(|g| g.of > 0) {
        let missed = if g.missed.is_empty() {
            "—".to_owned()
        } else {
            named_misses(&g.missed)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}/{} {} | {} | {}/{} |",
            g.text,
            g.ours,
            g.peer,
            g.met,
            g.of,
            if g.met == g.of {
                "**met**"
            } else {
                "**missed**"
            },
            missed,
            g.baseline_met,
            g.of
        );
    }
    s
}

/// The runs nobody tuned to (`cargo xtask simulate --held-out`): the goals table of each
/// variant, at 100 clients. Seeds other than the page's; queue depths of 3 and 5 s; outages
/// and overloads of lengths between the page's; a fleet of mixed tiers (a key per client,
/// free, pro and enterprise in turn, each client offering 1.25× its limit).
pub fn held_out(ours: &'static str) -> String {
    let mut policies: Vec<&'static str> = POLICIES.to_vec();
    if !policies.contains(&ours) {
        policies.push(ours);
    }
    let mut out = String::new();
    let page = scenarios();
    let other_seeds = [5, 6, 7, 8, 9];
    let mut lengths: Vec<Scenario> = [20, 45, 90, 200]
        .into_iter()
        .map(|secs| Scenario::outage(secs, false))
        .collect();
    lengths.extend(
        [20, 45, 90]
            .into_iter()
            .map(|secs| Scenario::outage(secs, true)),
    );
    lengths.extend([40, 50, 90].into_iter().map(Scenario::overload));
    let mixed = vec![Scenario {
        name: "rate-limit-mixed".into(),
        title: "Rate limits, mixed tiers".into(),
        incident: Incident::MixedTiers,
        rate_per_client: 1.0,
        headroom: 4.0,
        horizon: 300,
    }];
    // One key shared by every client: on an API sized for more than that key (the page sets
    // the API's capacity at 4x the fleet's demand, which for one free key is 1 request/s),
    // and with demand at and under the key's limit (the page's is 1.5x).
    let shared_page: Vec<&Scenario> = page.iter().filter(|s| s.incident.shared()).collect();
    let shared_roomy: Vec<Scenario> = shared_page
        .iter()
        .flat_map(|s| [2.0, 4.0].map(|capacity| s.shared_at(SHARED_DEMAND, capacity)))
        .collect();
    let shared_demand: Vec<Scenario> = shared_page
        .iter()
        .flat_map(|s| [0.8, 1.0].map(|demand| s.shared_at(demand, 1.0)))
        .collect();
    let ten_seeds: Vec<u64> = SEEDS.iter().chain(&other_seeds).copied().collect();
    let runs: [(&str, Fleet, &[Scenario], &[u64]); 7] = [
        (
            "the page's scenarios, seeds 5-9",
            FLEET,
            &page,
            &other_seeds,
        ),
        (
            "the page's scenarios, a 3 s queue",
            Fleet {
                queue_ms: 3000,
                ..FLEET
            },
            &page,
            &SEEDS,
        ),
        (
            "the page's scenarios, a 5 s queue",
            Fleet {
                queue_ms: 5000,
                ..FLEET
            },
            &page,
            &SEEDS,
        ),
        ("lengths between the page's", FLEET, &lengths, &SEEDS),
        ("a fleet of mixed tiers", FLEET, &mixed, &SEEDS),
        (
            "one key shared, the API's capacity 8× and 16× the key's demand (the page: 4×), ten seeds",
            FLEET,
            &shared_roomy,
            &ten_seeds,
        ),
        (
            "one key shared, demand 0.8× and 1.0× the key's limit (the page: 1.5×), ten seeds",
            FLEET,
            &shared_demand,
            &ten_seeds,
        ),
    ];
    for (title, fleet, scenarios, seeds) in runs {
        let cells = study(fleet, scenarios, seeds, &policies);
        let _ = write!(
            out,
            "\n### {title}\n{}",
            goals(scenarios, &cells, seeds, ours, false)
        );
    }
    out
}
