//! zerospot's discrete-event simulator: replays a request trace through the real scaling policy
//! (`zerospot_core::decide`) and through models of its peers, on a simulated Spot GPU cluster, and reports
//! cost and queueing delay side by side with a perfect-foresight oracle.
//!
//! - [`workload`]: the Azure trace format, thinning, time stretching, models, the embedded synthetic day.
//! - [`cloud`]: instance types, prices, boot times, billing, Spot interruptions and capacity failures.
//! - [`serving`]: MPS slots and service times with the measured sharing slowdown.
//! - [`cluster`]: the shared cluster mechanics and event loop state.
//! - [`policies`]: zerospot, always-on, Cluster Autoscaler, KEDA, Karpenter.
//! - `oracle` (private): the perfect-foresight reference.
//! - [`report`]: figures, table and JSON; [`plot`]: PNG and SVG plots.
//!
//! Deterministic: the same scenario and seed give the same report, on any machine. Time is virtual.

pub mod cloud;
pub mod cluster;
pub mod error;
mod oracle;
pub mod plot;
pub mod policies;
pub mod report;
pub mod rng;
pub mod serving;
pub mod workload;

pub use cloud::{Cloud, INSTANCE_TYPES, InstanceType, instance_type};
pub use cluster::{ClusterParams, DemandSignal, Sample};
pub use error::{Result, SimError};
pub use policies::{PolicyKind, PolicyParams, zerospot_config};
pub use report::{Delays, PolicyReport, Report};
pub use serving::{Serving, SharingCurve};
pub use workload::{Request, Shaping, Workload};

use cluster::{Cluster, Ev};
use policies::Controller;
use std::sync::atomic::{AtomicU64, Ordering};

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The requests.
    pub workload: Workload,
    /// Cluster, cloud and serving knobs.
    pub cluster: ClusterParams,
    /// Policy knobs.
    pub policies: PolicyParams,
    /// Which policies to run (the oracle always runs: the others are measured against it).
    pub run: Vec<PolicyKind>,
    /// Seed for the cloud's randomness (boot times, interruptions, capacity failures).
    pub seed: u64,
}

impl Scenario {
    /// Defaults around `workload`: g5.xlarge, 4 MPS slots, one request per pod, the measured H100 curve.
    pub fn new(workload: Workload, seed: u64) -> Self {
        let cloud = Cloud::new(cloud::INSTANCE_TYPES[1]);
        Scenario {
            workload,
            cluster: ClusterParams {
                serving: Serving {
                    slots_per_gpu: 4,
                    pod_concurrency: 1,
                    prefill_tokens_per_s: cloud.instance.prefill_tokens_per_s,
                    decode_tokens_per_s: cloud.instance.decode_tokens_per_s,
                    curve: SharingCurve::h100_llama_1b_mps(),
                },
                cloud,
                deadline_s: 600.0,
                max_attempts: 3,
                pod_idle_s: 90.0,
                max_nodes: 64,
                series_points: 0,
            },
            policies: PolicyParams::default(),
            run: PolicyKind::ALL.to_vec(),
            seed,
        }
    }

    /// Checks every knob.
    pub fn validate(&self) -> Result<()> {
        self.cluster.cloud.validate()?;
        let s = &self.cluster.serving;
        if s.slots_per_gpu == 0
            || s.slots_per_gpu > 48
            || s.pod_concurrency == 0
            || s.pod_concurrency > 64
        {
            return Err(SimError::Parameter(format!(
                "--slots must be 1 to 48 and --concurrency 1 to 64 (got {} and {})",
                s.slots_per_gpu, s.pod_concurrency
            )));
        }
        if !(s.prefill_tokens_per_s > 0.0 && s.decode_tokens_per_s > 0.0) {
            return Err(SimError::Parameter("token rates must be positive".into()));
        }
        if !self.cluster.deadline_s.is_finite()
            || self.cluster.deadline_s <= 0.0
            || self.cluster.max_nodes > 10_000
            || self.cluster.max_attempts == 0
            || self.cluster.max_nodes == 0
        {
            return Err(SimError::Parameter(
                "--deadline must be positive and finite, attempts positive, --max-nodes 1 to 10000"
                    .into(),
            ));
        }
        if self.policies.zerospot_tick_s.is_nan() || self.policies.zerospot_tick_s <= 0.0 {
            return Err(SimError::Parameter("--tick must be positive".into()));
        }
        zerospot_config(
            &self.workload.models,
            s.slots_per_gpu,
            s.pod_concurrency,
            self.cluster.max_nodes,
            self.policies.zerospot_timing,
        )
        .validate()
        .map_err(SimError::Config)?;
        Ok(())
    }
}

/// Runs every requested policy (in parallel threads) and the oracle. `progress` counts processed
/// arrivals over all policies; the total is `requests x (policies + 1)`.
pub fn simulate(scenario: &Scenario, progress: &AtomicU64) -> Result<Report> {
    scenario.validate()?;
    let kinds: Vec<PolicyKind> = scenario
        .run
        .iter()
        .copied()
        .filter(|k| *k != PolicyKind::Oracle)
        .collect();
    let results: Vec<Result<PolicyReport>> = std::thread::scope(|scope| {
        let handles: Vec<_> = kinds
            .iter()
            .map(|kind| scope.spawn(move || run_policy(scenario, *kind, progress)))
            .collect();
        let oracle = run_oracle(scenario, progress);
        let mut out: Vec<Result<PolicyReport>> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(SimError::Parameter("a policy's simulation panicked".into()))
                })
            })
            .collect();
        out.push(Ok(oracle));
        out
    });
    let mut policies = results.into_iter().collect::<Result<Vec<_>>>()?;
    let oracle_cost = policies.last().map_or(0.0, |o| o.cost_usd);
    for p in &mut policies {
        p.cost_vs_oracle = if oracle_cost > 0.0 {
            p.cost_usd / oracle_cost
        } else {
            0.0
        };
    }
    let cloud = &scenario.cluster.cloud;
    Ok(Report {
        workload: scenario.workload.description.clone(),
        requests: scenario.workload.requests.len() as u64,
        horizon_s: scenario.workload.horizon_s,
        instance_type: cloud.instance.name.into(),
        spot_price_per_hour: cloud.spot_per_hour,
        on_demand_price_per_hour: cloud.instance.on_demand_per_hour,
        cold_start_s: cloud.cold_start_max_s(),
        seed: scenario.seed,
        policies,
    })
}

fn run_oracle(scenario: &Scenario, progress: &AtomicU64) -> PolicyReport {
    let o = oracle::run(
        &scenario.workload,
        &scenario.cluster.cloud,
        &scenario.cluster.serving,
        scenario.cluster.series_points,
    );
    progress.fetch_add(scenario.workload.requests.len() as u64, Ordering::Relaxed);
    let mut series = o.series;
    if scenario.cluster.series_points > 0 {
        series.push(Sample {
            t: o.end,
            nodes: 0,
            queued: 0,
            cost_usd: o.cost_usd,
        });
    }
    PolicyReport {
        name: PolicyKind::Oracle.name().into(),
        gpu_seconds_billed: o.billed_s,
        gpu_hours_billed: o.billed_s / 3600.0,
        cost_usd: o.cost_usd,
        cost_vs_oracle: 1.0,
        requests: scenario.workload.requests.len() as u64,
        completed: o.completed,
        lost: 0,
        queue_delay_s: Delays::default(),
        interruptions: 0,
        interruptions_survived: 0,
        requests_requeued: 0,
        scale_ups: o.runs,
        scale_downs: o.runs,
        launch_failures: 0,
        end_s: o.end,
        decisions: None,
        series,
    }
}

/// Runs one policy on the shared cluster model.
pub fn run_policy(
    scenario: &Scenario,
    kind: PolicyKind,
    progress: &AtomicU64,
) -> Result<PolicyReport> {
    if kind == PolicyKind::Oracle {
        return Ok(run_oracle(scenario, progress));
    }
    let workload = &scenario.workload;
    let mut c = Cluster::new(
        &scenario.cluster,
        workload,
        scenario.seed,
        policies::pod_scaling(kind),
    );
    let mut ctl = Controller::start(kind, &mut c, &scenario.policies, &workload.models)?;
    let n = workload.requests.len();
    let stop_at = c.horizon
        + scenario.cluster.deadline_s * f64::from(scenario.cluster.max_attempts)
        + 7.0 * 86_400.0;
    let mut next = 0usize;
    let mut reported = 0usize;
    loop {
        let arrival = workload.requests.get(next).map_or(f64::INFINITY, |r| r.at);
        let event = c.peek_time().unwrap_or(f64::INFINITY);
        let t = arrival.min(event);
        if !t.is_finite() || t > stop_at {
            break;
        }
        c.sample_until(t);
        c.now = t;
        if arrival <= event {
            c.arrive(next as u32);
            next += 1;
            if next - reported >= 4096 {
                progress.fetch_add((next - reported) as u64, Ordering::Relaxed);
                reported = next;
            }
        } else if let Some((_, ev)) = c.pop() {
            match ev {
                Ev::NodeReady(id) => c.node_ready(id),
                Ev::LaunchFailed(id) => c.launch_failed(id),
                Ev::PodReady(id, slot) => c.pod_ready(id, slot),
                Ev::Complete(r, attempt) => c.complete(r, attempt),
                Ev::Notice(id) => c.notice(id),
                Ev::Kill(id) => c.end_node(id, false),
                // An idle cluster has nothing for a controller to do until the next arrival.
                Ev::Tick(tag) if c.is_idle() && arrival.is_finite() && arrival > t => {
                    c.schedule(arrival, Ev::Tick(tag));
                }
                Ev::Tick(tag) => ctl.tick(tag, &mut c),
                Ev::AsgRetry(pool) => c.asg_reconcile(pool as usize),
            }
        }
        ctl.after_event(&mut c);
        if next == n && c.unresolved == 0 {
            if kind == PolicyKind::AlwaysOn {
                let end = c.now.max(c.horizon);
                c.sample_until(end);
                c.now = end;
                break;
            }
            if c.live.is_empty() {
                break;
            }
        }
    }
    progress.fetch_add((n - reported) as u64, Ordering::Relaxed);
    c.finish();
    if scenario.cluster.series_points > 0 {
        c.series.push(Sample {
            t: c.now,
            nodes: 0,
            queued: 0,
            cost_usd: c.c.cost_usd,
        });
    }
    let mut delays = std::mem::take(&mut c.c.delays);
    let survived =
        c.c.interruptions_failed
            .iter()
            .skip(1)
            .filter(|f| !**f)
            .count() as u32;
    Ok(PolicyReport {
        name: kind.name().into(),
        gpu_seconds_billed: c.c.billed_s,
        gpu_hours_billed: c.c.billed_s / 3600.0,
        cost_usd: c.c.cost_usd,
        cost_vs_oracle: 0.0,
        requests: n as u64,
        completed: c.c.completed,
        lost: c.c.lost,
        queue_delay_s: Delays::of(&mut delays),
        interruptions: c.c.interruptions,
        interruptions_survived: survived,
        requests_requeued: c.c.requeued,
        scale_ups: c.c.scale_ups,
        scale_downs: c.c.scale_downs,
        launch_failures: c.c.launch_failures,
        end_s: c.now,
        decisions: (kind == PolicyKind::Zerospot).then(|| ctl.decisions()),
        series: std::mem::take(&mut c.series),
    })
}
