//! `docs/retry-storms.md` and its plots, from [`crate::sim`].

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::GENERATED;
use crate::sim::{Fleet, Outcome, POLICIES, SCENARIOS, Scenario, run};

/// The fleet of the published figures (and of CI, which regenerates them).
pub const FLEET: Fleet = Fleet {
    clients: 100,
    rate_per_client: 1.0,
    seed: 20_261_125,
};

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn secs(ms: u64) -> String {
    let centis = (ms + 5) / 10;
    format!("{}.{:02} s", centis / 100, centis % 100)
}

/// One SVG: attempts per second received by the API over time, one line per policy.
fn plot(scenario: &Scenario, outcomes: &[(&str, Outcome)]) -> String {
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
            .caption(scenario.title, ("sans-serif", 18))
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

/// Every file: the page and one plot per scenario, for the published fleet.
pub(crate) fn files() -> Vec<(String, String)> {
    files_with(FLEET)
}

/// The page and plots for `fleet` (`cargo xtask simulate --clients N` prints the page).
pub fn files_with(base: Fleet) -> Vec<(String, String)> {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!-- {GENERATED} -->\n\n{}",
        include_str!("../templates/retry-storms-head.md")
            .replace("{{clients}}", &base.clients.to_string())
            .replace("{{seed}}", &base.seed.to_string())
    );
    let mut out = Vec::new();
    let mut summary: Vec<(&Scenario, Vec<(&str, Outcome)>)> = Vec::new();
    for scenario in SCENARIOS {
        let fleet = Fleet {
            rate_per_client: scenario.rate_per_client,
            ..base
        };
        let outcomes: Vec<(&str, Outcome)> = POLICIES
            .iter()
            .map(|p| (*p, run(fleet, scenario, p)))
            .collect();
        let _ = write!(
            page,
            "\n## {}\n\n{} clients offering {:.0} requests/s in all; normal capacity {:.0}/s. \
             ![attempts per second](retry-storms/{}.svg)\n\n\
             | policy | amplification (attempts / request) | peak load (× capacity) | goodput (successes/s) | share that succeeds | p50 latency | p99 latency | recovery after the trigger |\n\
             |---|---|---|---|---|---|---|---|\n",
            scenario.title,
            fleet.clients,
            fleet.offered(),
            fleet.offered() * scenario.headroom,
            scenario.name
        );
        for (name, o) in &outcomes {
            let recovery = match (scenario.trigger_end(), o.recovery_s) {
                (None, _) => "(no trigger)".to_owned(),
                (Some(_), Some(s)) => format!("{s} s"),
                (Some(_), None) => "**not within the run**".to_owned(),
            };
            let _ = writeln!(
                page,
                "| {name} | {:.2}× | {:.2}× | {:.1} | {} | {} | {} | {recovery} |",
                o.amplification(),
                o.peak_load,
                o.goodput_per_second(),
                pct(o.success_share()),
                secs(o.p50_ms),
                secs(o.p99_ms),
            );
        }
        out.push((
            format!("docs/retry-storms/{}.svg", scenario.name),
            plot(scenario, &outcomes),
        ));
        summary.push((scenario, outcomes));
    }
    page.push_str(&goals(&summary));
    page.push_str(include_str!("../templates/retry-storms-tail.md"));
    out.push(("docs/retry-storms.md".to_owned(), page));
    out
}

/// The goals of the page, checked against the figures.
fn goals(summary: &[(&Scenario, Vec<(&str, Outcome)>)]) -> String {
    let find = |name: &str| summary.iter().find(|(s, _)| s.name == name).map(|(_, o)| o);
    let ours = |o: &Vec<(&str, Outcome)>| o[0].1.clone();
    let mut s = String::from("\n## The goals, against the measured peers\n\n");
    if let Some(o) = find("outage") {
        let ours = ours(o);
        let best_peer = o
            .iter()
            .filter(|(n, _)| !n.starts_with("overten"))
            .map(|(_, x)| x.success_share())
            .fold(0.0, f64::max);
        let naive = o
            .iter()
            .find(|(n, _)| n.starts_with("naive"))
            .map_or(0.0, |(_, x)| x.amplification());
        let _ = writeln!(
            s,
            "- **Hard outage, load.** This workspace's default sends {:.2}× the attempts offered \
             (goal ≤ 1.2×: {}); the naive client sends {:.2}×.",
            ours.amplification(),
            if ours.amplification() <= 1.2 {
                "met"
            } else {
                "**missed**"
            },
            naive
        );
        let _ = writeln!(
            s,
            "- **Hard outage, success.** {} of requests succeed with the default, against {} \
             for the best peer (goal: at least as many: {}).",
            pct(ours.success_share()),
            pct(best_peer),
            if ours.success_share() >= best_peer {
                "met"
            } else {
                "**missed**"
            }
        );
    }
    if let Some(o) = find("overload") {
        let down: Vec<&str> = o
            .iter()
            .filter(|(_, x)| x.recovery_s.is_none())
            .map(|(n, _)| *n)
            .collect();
        let _ = writeln!(
            s,
            "- **Overload.** With the default the system recovers {} after the trigger ends \
             (goal: it recovers: {}). {}",
            o[0].1
                .recovery_s
                .map_or("never".to_owned(), |r| format!("{r} s")),
            if o[0].1.recovery_s.is_some() {
                "met"
            } else {
                "**missed**"
            },
            if down.is_empty() {
                "Every peer recovers within the run.".to_owned()
            } else {
                format!("Kept down to the end of the run: {}.", down.join(", "))
            }
        );
    }
    s
}
