//! Prints zerospot's goals on the six reference workloads (the bar): the Azure conversation
//! trace at p = 1, 0.1 and 0.02, p = 0.02 stretched x3 and x10, and the synthetic day; every policy's
//! figures and each goal met or missed. Build with `--release`.
//!
//! Run: `cargo run --release -p zerospot-sim --bin simgoals -- [--markdown] [--seed N] [--idle-window S]
//! [--headroom Z] [--keep-headroom Z] [--relaunch-risk P] [--relaunch-horizon S] [--thin-hold S]
//! [AZURE_CSV]`
//! (default trace: the one committed in `scaler/sim/data/`). Exits 0 whether goals are met or not: it
//! reports, it does not judge.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Instant;
use zerospot_sim::{Scenario, Shaping, WorkloadClass, simulate, workload};

/// A workload: its name, `(sample, time scale)` of the trace (`None`: the synthetic day), its goals.
type Case = (&'static str, Option<(f64, f64)>, WorkloadClass);

fn main() -> std::process::ExitCode {
    let mut markdown = false;
    let mut seed = 1u64;
    let mut timing = zerospot_core::Timing::default();
    let mut path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/azure-llm-inference-2023-conv.csv"
    ));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--markdown" => markdown = true,
            "--seed" => match args.next().and_then(|s| s.parse().ok()) {
                Some(s) => seed = s,
                None => {
                    eprintln!("simgoals: --seed needs a whole number");
                    return std::process::ExitCode::from(2);
                }
            },
            "--idle-window" | "--headroom" | "--keep-headroom" | "--relaunch-risk"
            | "--relaunch-horizon" | "--thin-hold" => {
                let Some(v) = args.next().and_then(|s| s.parse::<f64>().ok()) else {
                    eprintln!("simgoals: {a} needs a number");
                    return std::process::ExitCode::from(2);
                };
                match a.as_str() {
                    "--idle-window" => timing.idle_window_s = v as u64,
                    "--headroom" => timing.headroom = v,
                    "--keep-headroom" => timing.keep_headroom = v,
                    "--relaunch-horizon" => timing.relaunch_horizon_s = v as u64,
                    "--thin-hold" => timing.thin_history_hold_s = v as u64,
                    _ => timing.relaunch_risk = v,
                }
            }
            _ => path = PathBuf::from(a),
        }
    }
    let cases: [Case; 6] = [
        ("azure conv, p = 1", Some((1.0, 1.0)), WorkloadClass::Dense),
        (
            "azure conv, p = 0.1",
            Some((0.1, 1.0)),
            WorkloadClass::Sparse,
        ),
        (
            "azure conv, p = 0.02",
            Some((0.02, 1.0)),
            WorkloadClass::Sparse,
        ),
        (
            "azure conv, p = 0.02, stretched x3",
            Some((0.02, 3.0)),
            WorkloadClass::Sparse,
        ),
        (
            "azure conv, p = 0.02, stretched x10",
            Some((0.02, 10.0)),
            WorkloadClass::Sparse,
        ),
        ("synthetic day", None, WorkloadClass::Other),
    ];
    let total = Instant::now();
    let mut met = 0;
    let mut missed = 0;
    for (name, shape, class) in cases {
        let t = Instant::now();
        let w = match shape {
            Some((sample, time_scale)) => workload::load_azure(
                &path,
                &Shaping {
                    sample,
                    time_scale,
                    seed,
                    ..Shaping::default()
                },
            ),
            None => workload::synthetic_day(
                workload::SYNTHETIC_DEFAULT_REQUESTS,
                &Shaping {
                    seed,
                    ..Shaping::default()
                },
            ),
        };
        let report = w.and_then(|w| {
            let mut s = Scenario::new(w, seed);
            s.class = class;
            s.policies.zerospot_timing = timing;
            simulate(&s, &AtomicU64::new(0))
        });
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                eprintln!("simgoals: {name}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        met += report.goals.iter().filter(|g| g.met).count();
        missed += report.goals.iter().filter(|g| !g.met).count();
        println!("## {name} ({:.2} s)\n", t.elapsed().as_secs_f64());
        if markdown {
            println!("{}", report.markdown());
        } else {
            println!("{}", report.table());
        }
    }
    println!(
        "goals: {met} met, {missed} missed; six workloads in {:.1} s",
        total.elapsed().as_secs_f64()
    );
    std::process::ExitCode::SUCCESS
}
