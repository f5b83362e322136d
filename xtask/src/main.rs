//! `cargo xtask docs [--check]`: regenerate `docs/`, or fail when it is stale.

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask docs [--check] | cargo xtask release-snapshot | cargo xtask simulate [--clients N | --held-out]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let root = xtask::workspace_root();
    match args.as_slice() {
        ["docs"] => match xtask::write(&root) {
            Ok(report) => {
                for line in report {
                    println!("{line}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cargo xtask docs: {e}");
                ExitCode::FAILURE
            }
        },
        ["docs", "--check"] => {
            let problems = xtask::check(&root);
            if problems.is_empty() {
                println!("docs/ is up to date");
                return ExitCode::SUCCESS;
            }
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!(
                "{} generated file(s) stale: run `cargo xtask docs`",
                problems.len()
            );
            ExitCode::FAILURE
        }
        ["release-snapshot"] => match xtask::compat::write_snapshot(&root) {
            Ok(path) => {
                println!("wrote {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cargo xtask release-snapshot: {e}");
                ExitCode::FAILURE
            }
        },
        ["simulate"] => match xtask::simulate(&root) {
            Ok(report) => {
                for line in report {
                    println!("{line}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cargo xtask simulate: {e}");
                ExitCode::FAILURE
            }
        },
        ["simulate", "--held-out"] => {
            println!("{}", xtask::storms::held_out(xtask::storms::OURS));
            ExitCode::SUCCESS
        }
        ["simulate", "--held-out", "--variant", name] => {
            match xtask::sim::VARIANTS.iter().find(|v| v.contains(name)) {
                Some(v) => {
                    println!("{}", xtask::storms::held_out(v));
                    ExitCode::SUCCESS
                }
                None => usage(),
            }
        }
        ["simulate", "--clients", n] => match n.parse::<u32>() {
            Ok(clients) if (1..=100_000).contains(&clients) => {
                let fleet = xtask::sim::Fleet {
                    clients,
                    ..xtask::storms::FLEET
                };
                for (path, text) in xtask::storms::files_with(fleet) {
                    if path == "docs/retry-storms.md" {
                        println!("{text}");
                    }
                }
                ExitCode::SUCCESS
            }
            _ => usage(),
        },
        _ => usage(),
    }
}
