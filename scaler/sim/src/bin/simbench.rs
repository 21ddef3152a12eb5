//! Prints the simulator's speed on the two workloads: every policy over the full Azure trace
//! (target under 2 s), and a synthetic day of 1M requests (target under 30 s). Build with `--release`.
//!
//! Run: `cargo run --release -p zerospot-sim --bin simbench -- [AZURE_CSV]` (default: the trace
//! committed in `scaler/sim/data/`).

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Instant;
use zerospot_sim::{Scenario, Shaping, simulate, workload};

fn main() -> std::process::ExitCode {
    let path = std::env::args().nth(1).map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/data/azure-llm-inference-2023-conv.csv"
            ))
        },
        PathBuf::from,
    );
    let progress = AtomicU64::new(0);
    let run = || -> zerospot_sim::Result<()> {
        let t = Instant::now();
        let w = workload::load_azure(&path, &Shaping::default())?;
        let n = w.requests.len();
        let report = simulate(&Scenario::new(w, 1), &progress)?;
        let dt = t.elapsed().as_secs_f64();
        println!(
            "azure trace, all {} policies, {n} requests (parse included): {dt:.3} s (target < 2 s) {}",
            report.policies.len(),
            if dt < 2.0 { "ok" } else { "SLOW" }
        );
        let t = Instant::now();
        let w = workload::synthetic_day(1_000_000, &Shaping::default())?;
        let n = w.requests.len();
        let gen_s = t.elapsed().as_secs_f64();
        let report = simulate(&Scenario::new(w, 1), &progress)?;
        let dt = t.elapsed().as_secs_f64();
        println!(
            "synthetic day, all {} policies, {n} requests (generation {gen_s:.2} s included): {dt:.3} s (target < 30 s) {}",
            report.policies.len(),
            if dt < 30.0 { "ok" } else { "SLOW" }
        );
        Ok(())
    };
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simbench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
