//! The oracle: knows every arrival in advance and buys little node time while no request waits.
//!
//! It walks the requests in arrival order and puts each on a node with a free lane (MPS slot x pod
//! concurrency) at its arrival, choosing the node whose use adds least cost: a node in its billed run adds
//! nothing; a node idle since `end` adds the gap (it is kept through it); a node idle for a cold start or
//! more is stopped at `end`, since booting a fresh one exactly in time costs no more; a new node costs one
//! cold start. Among equally cheap nodes it tries both spreading and packing and keeps the cheaper
//! schedule. It boots with the *shortest* boot time, loads any model instantly on a warm node, is never
//! interrupted and never fails to launch: every assumption favours it. It is a greedy schedule, not a
//! proven optimum; a policy that lets requests queue can beat it. Each billed run is charged per second
//! with the 60-second minimum, like the others.

use crate::cloud::Cloud;
use crate::cluster::Sample;
use crate::serving::Serving;
use crate::workload::Workload;

/// What the oracle bought.
#[derive(Debug, Clone, Default)]
pub(crate) struct OracleRun {
    pub billed_s: f64,
    pub cost_usd: f64,
    pub completed: u64,
    pub runs: u32,
    pub series: Vec<Sample>,
    pub end: f64,
}

#[derive(Debug)]
struct ONode {
    lanes: Vec<f64>,
    run_start: f64,
    last_end: f64,
}

/// One zero-wait schedule: billed runs `(start, end)`, one per node. A node idle for a cold start or
/// longer is never worth keeping (a fresh boot costs no more), so it is stopped for good and a later
/// request boots a new one. Among equally cheap nodes, `spread` picks the least shared one, else the most.
fn schedule(workload: &Workload, cold: f64, serving: &Serving, spread: bool) -> Vec<(f64, f64)> {
    let lanes = (serving.slots_per_gpu.max(1) * serving.pod_concurrency.max(1)) as usize;
    let mut nodes: Vec<ONode> = Vec::new();
    let mut runs: Vec<(f64, f64)> = Vec::new();
    for r in &workload.requests {
        let t = r.at;
        let mut i = 0;
        while i < nodes.len() {
            if t - nodes[i].last_end >= cold {
                let n = nodes.swap_remove(i);
                runs.push((n.run_start, n.last_end));
            } else {
                i += 1;
            }
        }
        // Cheapest node first; ties broken by how shared the node is, then by age.
        let mut best: Option<(f64, usize, usize, usize)> = None;
        for (i, n) in nodes.iter().enumerate() {
            let Some(lane) = n.lanes.iter().position(|free| *free <= t) else {
                continue;
            };
            let busy = n.lanes.iter().filter(|free| **free > t).count();
            let extra = (t - n.last_end).max(0.0);
            let better = |(e, b, j, _): (f64, usize, usize, usize)| {
                let key = |e: f64, b: usize, j: usize| {
                    (
                        e,
                        if spread { b as i64 } else { -(b as i64) },
                        nodes[j].run_start,
                    )
                };
                key(extra, busy, i)
                    .partial_cmp(&key(e, b, j))
                    .is_some_and(|o| o.is_lt())
            };
            if best.is_none_or(better) {
                best = Some((extra, busy, i, lane));
            }
        }
        let (i, lane) = match best {
            Some((_, _, i, lane)) => (i, lane),
            None => {
                nodes.push(ONode {
                    lanes: vec![f64::NEG_INFINITY; lanes],
                    run_start: t - cold,
                    last_end: t,
                });
                (nodes.len() - 1, 0)
            }
        };
        let n = &mut nodes[i];
        let sharing = n.lanes.iter().filter(|free| **free > t).count() as u32 + 1;
        let end = t + serving.service_s(r.prompt_tokens, r.generated_tokens, sharing);
        n.lanes[lane] = end;
        n.last_end = n.last_end.max(end);
    }
    for n in &nodes {
        runs.push((n.run_start, n.last_end));
    }
    runs
}

pub(crate) fn run(
    workload: &Workload,
    cloud: &Cloud,
    serving: &Serving,
    series_points: u32,
) -> OracleRun {
    let cold = cloud.cold_start_min_s();
    let price = cloud.price_per_s(true);
    let cost = |runs: &[(f64, f64)]| runs.iter().map(|(s, e)| cloud.billed_s(e - s)).sum::<f64>();
    // Several zero-wait schedules; the oracle keeps the cheapest.
    let mut runs = Vec::new();
    let mut best = f64::INFINITY;
    for spread in [true, false] {
        let candidate = schedule(workload, cold, serving, spread);
        let c = cost(&candidate);
        if c < best {
            best = c;
            runs = candidate;
        }
    }
    let mut out = OracleRun {
        completed: workload.requests.len() as u64,
        ..OracleRun::default()
    };
    for (start, end) in &runs {
        let billed = cloud.billed_s(end - start);
        out.billed_s += billed;
        out.cost_usd += billed * price;
        out.end = out.end.max(*end);
    }
    out.runs = runs.len() as u32;
    if series_points > 0 {
        let horizon = workload.horizon_s.max(out.end);
        let dt = (horizon / f64::from(series_points)).max(1.0);
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut t = 0.0;
        while t <= horizon {
            let mut live = 0;
            let mut cost = 0.0;
            for (s, e) in &runs {
                if *s > t {
                    break;
                }
                if *e > t {
                    live += 1;
                }
                cost += (t.min(*e) - s).max(0.0) * price;
            }
            out.series.push(Sample {
                t,
                nodes: live,
                queued: 0,
                cost_usd: cost,
            });
            t += dt;
        }
    }
    out
}
