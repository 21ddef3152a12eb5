//! `decide()` latency on a large cluster: 1,000 nodes, 50 models, 5 MPS pools. Prints p50 and p99.
//!
//! Run: `cargo bench -p zerospot-core --bench decide` (target: p99 under 1 ms).

use std::hint::black_box;
use std::time::Instant;
use zerospot_core::testing::*;
use zerospot_core::{Config, Disruption, Snapshot, decide};

const NODES: usize = 1_000;
const MODELS: usize = 50;
const POOLS: usize = 5;

fn world() -> (Config, Snapshot) {
    let pools = (0..POOLS)
        .map(|p| {
            let pool = spot_pool(&format!("pool-{p}")).mps(4).gpus(4).max(400);
            if p + 1 < POOLS {
                pool.fallback(&format!("pool-{}", p + 1))
            } else {
                pool
            }
        })
        .collect();
    let models = (0..MODELS)
        .map(|m| {
            let mut spec = model(&format!("model-{m}"), &format!("pool-{}", m % POOLS));
            spec.concurrency = 4;
            spec
        })
        .collect();
    let mut s = snapshot();
    for p in 0..POOLS {
        s = s.desired(&format!("pool-{p}"), (NODES / POOLS) as u32);
    }
    for i in 0..NODES {
        let pool = format!("pool-{}", i % POOLS);
        let id = format!("i-{i:017x}");
        let node = match i % 10 {
            0..=5 => ready(&id, &pool).in_flight((i % 7) as u32 + 1).protected(),
            6 | 7 => ready(&id, &pool).idle_since(at(i as i64)),
            8 => launching(&id, &pool, at(2_000 + i as i64)),
            _ => ready(&id, &pool)
                .in_flight(1)
                .disrupted(Disruption::SpotInterruption),
        };
        s = s.node(node);
    }
    for m in 0..MODELS {
        let name = format!("model-{m}");
        s = s
            .queued(&name, (m * 13 % 40) as u64)
            .in_flight(&name, (m * 7 % 60) as u64)
            .desired_scale(&name, (m % 9) as u32);
    }
    (config(pools, models), s)
}

fn main() {
    let (config, snapshot) = world();
    let now = at(3_000);
    let warm = decide(&snapshot, &config, now);
    let mut samples = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        let start = Instant::now();
        let d = decide(black_box(&snapshot), black_box(&config), black_box(now));
        samples.push(start.elapsed());
        black_box(d);
    }
    samples.sort();
    let pct = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "decide(): {NODES} nodes, {MODELS} models, {POOLS} pools, {} actions per decision",
        warm.actions.len()
    );
    println!(
        "decide(): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs over {} runs (target p99 < 1000 µs)",
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        samples[samples.len() - 1].as_secs_f64() * 1e6,
        samples.len()
    );
}
