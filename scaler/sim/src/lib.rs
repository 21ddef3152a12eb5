//! zerospot's discrete-event simulator: replays a request trace through the real scaling policy
//! (`zerospot_core::decide`) and through models of its peers, on a simulated Spot GPU cluster, and reports
//! cost and queueing delay side by side with a provable lower bound on what any zero-wait policy pays.
//!
//! - [`workload`]: the Azure trace format, thinning, time stretching, models, the embedded synthetic day.
//! - [`cloud`]: instance types, prices, boot times, billing, Spot interruptions and capacity failures.
//! - [`serving`]: MPS slots and service times with the measured sharing slowdown (and a loader for
//!   measured sharing curves).
//! - [`cluster`]: the shared cluster mechanics and event loop state; [`knative`]: the Pod Autoscaler.
//! - [`policies`]: zerospot, always-on, fixed-best, Cluster Autoscaler, KEDA, Karpenter.
//! - [`bound`]: the lower bound; `oracle` (private): the hindsight-greedy zero-wait schedule.
//! - [`report`]: figures, goals, table and JSON; [`plot`]: PNG and SVG plots.
//!
//! Deterministic: the same scenario and seed give the same report, on any machine. Time is virtual.

pub mod bound;
pub mod cloud;
pub mod cluster;
pub mod error;
pub mod knative;
mod oracle;
pub mod plot;
pub mod policies;
pub mod report;
pub mod rng;
pub mod serving;
pub mod workload;

pub use bound::{
    FlapBound, LowerBound, bounded_wait_lower_bound, flap_aware_lower_bound, lower_bound,
};
pub use cloud::{Cloud, INSTANCE_TYPES, InstanceType, instance_type};
pub use cluster::{ClusterParams, DemandSignal, Sample};
pub use error::{Result, SimError};
pub use knative::KnativeParams;
pub use policies::{PolicyKind, PolicyParams, zerospot_config};
pub use report::{Delays, Goal, PolicyReport, Report, WorkloadClass};
pub use serving::SHARING_HEADER;
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
    /// Which policies to run (the bound is always computed; the hindsight-greedy schedule runs when
    /// listed).
    pub run: Vec<PolicyKind>,
    /// Which of zerospot's goals apply.
    pub class: WorkloadClass,
    /// Seed for the cloud's randomness (boot times, interruptions, capacity failures).
    pub seed: u64,
}

impl Scenario {
    /// Defaults around `workload`: g5.xlarge, 4 MPS slots, one request per pod, the sharing curve measured
    /// on an H200 ([`SharingCurve::measured_default`]).
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
                    curve: SharingCurve::default(),
                },
                cloud,
                deadline_s: 600.0,
                max_attempts: 3,
                knative: KnativeParams::default(),
                max_nodes: 64,
                series_points: 0,
            },
            policies: PolicyParams::default(),
            run: PolicyKind::ALL.to_vec(),
            class: WorkloadClass::Other,
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

/// Runs every requested policy (in parallel threads) and computes the bound. `progress` counts processed
/// arrivals over all policies; the total is `requests x policies`.
pub fn simulate(scenario: &Scenario, progress: &AtomicU64) -> Result<Report> {
    scenario.validate()?;
    let mut kinds: Vec<PolicyKind> = Vec::new();
    for k in &scenario.run {
        if !kinds.contains(k) {
            kinds.push(*k);
        }
    }
    kinds.sort_by_key(|k| PolicyKind::ALL.iter().position(|a| a == k));
    let points = scenario.cluster.series_points;
    let results: Vec<Result<PolicyReport>> = std::thread::scope(|scope| {
        let handles: Vec<_> = kinds
            .iter()
            .map(|kind| {
                scope.spawn(move || match kind {
                    PolicyKind::FixedBest => run_fixed_best(scenario, progress),
                    _ => run_policy(scenario, *kind, progress),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(SimError::Parameter("a policy's simulation panicked".into()))
                })
            })
            .collect()
    });
    let mut policies = results.into_iter().collect::<Result<Vec<_>>>()?;
    let bound = bound::lower_bound(
        &scenario.workload,
        &scenario.cluster.cloud,
        &scenario.cluster.serving,
        points,
    );
    let greedy_cost = policies
        .iter()
        .find(|p| p.name == PolicyKind::Greedy.name())
        .map_or(0.0, |o| o.cost_usd);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    for p in &mut policies {
        p.cost_vs_oracle = ratio(p.cost_usd, greedy_cost);
        p.cost_vs_bound = ratio(p.cost_usd, bound.cost_usd);
    }
    let cloud = &scenario.cluster.cloud;
    let bounded_wait_s = cloud.cold_start_max_s() + 30.0;
    let bounded_wait_bound_usd = bound::bounded_wait_lower_bound(
        &scenario.workload,
        cloud,
        &scenario.cluster.serving,
        bounded_wait_s,
    ) * cloud.price_per_s(true);
    let flap_bound = bound::flap_aware_lower_bound(
        &scenario.workload,
        cloud,
        &scenario.cluster.serving,
        bounded_wait_s,
        report::FLAP_LIMIT,
    );
    let mut report = Report {
        workload: scenario.workload.description.clone(),
        workload_class: scenario.class,
        requests: scenario.workload.requests.len() as u64,
        horizon_s: scenario.workload.horizon_s,
        instance_type: cloud.instance.name.into(),
        spot_price_per_hour: cloud.spot_per_hour,
        on_demand_price_per_hour: cloud.instance.on_demand_per_hour,
        cold_start_s: cloud.cold_start_max_s(),
        seed: scenario.seed,
        lower_bound_usd: bound.cost_usd,
        lower_bound_node_seconds: bound.node_seconds,
        bounded_wait_s,
        bounded_wait_bound_usd,
        flap_bound_usd: flap_bound
            .as_ref()
            .map(|b| b.node_seconds(0) * cloud.price_per_s(true)),
        flap_bound_per_interruption_usd: flap_bound
            .as_ref()
            .map(|b| b.per_interruption() * cloud.price_per_s(true)),
        policies,
        goals: Vec::new(),
        bound_series: bound.series,
        flap_bound,
    };
    report.compute_goals();
    Ok(report)
}

fn run_greedy(scenario: &Scenario, progress: &AtomicU64) -> PolicyReport {
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
    let n = scenario.workload.requests.len() as u64;
    let zero = Delays {
        count: n,
        ..Delays::default()
    };
    PolicyReport {
        name: PolicyKind::Greedy.name().into(),
        gpu_seconds_billed: o.billed_s,
        gpu_hours_billed: o.billed_s / 3600.0,
        cost_usd: o.cost_usd,
        cost_vs_oracle: 1.0,
        cost_vs_bound: 0.0,
        requests: n,
        completed: o.completed,
        lost: 0,
        queue_delay_s: zero,
        wait_warm_s: zero,
        wait_cold_s: Delays::default(),
        cold_starts: 0,
        flap_rate: 0.0,
        cold_episode_max_s: 0.0,
        fixed_nodes: None,
        interruptions: 0,
        interruptions_survived: 0,
        requests_requeued: 0,
        scale_ups: o.runs,
        scale_downs: o.runs,
        launch_failures: 0,
        on_demand_launches: 0,
        swaps: 0,
        end_s: o.end,
        decisions: None,
        series,
    }
}

/// Whether a fixed cluster meets the dense wait targets: warm p95 <= 10 s, warm p99 <= 30 s, nothing
/// lost, and every cold episode over within two cold starts (`cold_start_s`) of its first request: the
/// fleet is warm one cold start after it could first serve. Without that last condition a cluster too
/// small to ever catch up with its first backlog would pass, every request after it counting as cold.
pub fn meets_dense_targets(p: &PolicyReport, cold_start_s: f64) -> bool {
    p.lost == 0
        && p.wait_warm_s.p95 <= 10.0
        && p.wait_warm_s.p99 <= 30.0
        && p.cold_episode_max_s <= 2.0 * cold_start_s
}

/// fixed-best: the smallest fixed node count that meets [`meets_dense_targets`], by doubling then
/// bisection (waits fall as nodes are added); `max_nodes` if none does.
fn run_fixed_best(scenario: &Scenario, progress: &AtomicU64) -> Result<PolicyReport> {
    let scratch = AtomicU64::new(0);
    let cold = scenario.cluster.cloud.cold_start_max_s();
    let meets_dense_targets = |p: &PolicyReport| meets_dense_targets(p, cold);
    let max = scenario.cluster.max_nodes.max(1);
    let try_n = |n: u32| -> Result<PolicyReport> {
        let mut s = scenario.clone();
        s.policies.fixed_nodes = Some(n);
        run_policy(&s, PolicyKind::FixedBest, &scratch)
    };
    let mut fail = 0u32;
    let mut n = 1u32;
    let mut best = loop {
        let r = try_n(n)?;
        if meets_dense_targets(&r) || n == max {
            break r;
        }
        fail = n;
        n = (n * 2).min(max);
    };
    let mut hi = n;
    while hi - fail > 1 && meets_dense_targets(&best) {
        let mid = fail + (hi - fail) / 2;
        let r = try_n(mid)?;
        if meets_dense_targets(&r) {
            hi = mid;
            best = r;
        } else {
            fail = mid;
        }
    }
    progress.fetch_add(scenario.workload.requests.len() as u64, Ordering::Relaxed);
    Ok(best)
}

/// Runs one policy on the shared cluster model.
pub fn run_policy(
    scenario: &Scenario,
    kind: PolicyKind,
    progress: &AtomicU64,
) -> Result<PolicyReport> {
    if kind == PolicyKind::Greedy {
        return Ok(run_greedy(scenario, progress));
    }
    let workload = &scenario.workload;
    let mut c = Cluster::new(
        &scenario.cluster,
        workload,
        scenario.seed,
        policies::pod_scaling(kind),
    );
    let mut ctl = Controller::start(kind, &mut c, &scenario.policies, &workload.models)?;
    let fixed = matches!(kind, PolicyKind::AlwaysOn | PolicyKind::FixedBest);
    let fixed_nodes = fixed.then(|| c.asgs[0].desired);
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
        // Every request has arrived and been answered or lost (`unresolved` counts the ones still to
        // come too), and nothing more happens within the observed window: the run ends at the window's
        // end (or now, if later). What the trace does not show is not billed: a node still up serves
        // traffic that the window cut off, for every policy alike.
        if c.unresolved == 0 && (!t.is_finite() || t > c.horizon) {
            let end = c.now.max(c.horizon);
            c.sample_until(end);
            c.now = end;
            break;
        }
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
                Ev::Complete(r, version) => c.complete(r, version),
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
        if c.unresolved == 0 && c.live.is_empty() {
            break;
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
    let survived =
        c.c.interruptions_failed
            .iter()
            .skip(1)
            .filter(|f| !**f)
            .count() as u32;
    let flap_rate = if c.c.scale_downs > 0 {
        f64::from(c.c.flaps) / f64::from(c.c.scale_downs)
    } else {
        0.0
    };
    Ok(PolicyReport {
        name: kind.name().into(),
        gpu_seconds_billed: c.c.billed_s,
        gpu_hours_billed: c.c.billed_s / 3600.0,
        cost_usd: c.c.cost_usd,
        cost_vs_oracle: 0.0,
        cost_vs_bound: 0.0,
        requests: n as u64,
        completed: c.c.completed,
        lost: c.c.lost,
        queue_delay_s: Delays::of(&mut c.c.delays),
        wait_warm_s: Delays::of(&mut c.c.delays_warm),
        wait_cold_s: Delays::of(&mut c.c.delays_cold),
        cold_starts: c.c.cold_starts,
        flap_rate,
        cold_episode_max_s: c.c.longest_cold_episode_s,
        fixed_nodes,
        interruptions: c.c.interruptions,
        interruptions_survived: survived,
        requests_requeued: c.c.requeued,
        scale_ups: c.c.scale_ups,
        scale_downs: c.c.scale_downs,
        launch_failures: c.c.launch_failures,
        on_demand_launches: c.c.on_demand_launches,
        swaps: c.c.swaps,
        end_s: c.now,
        decisions: (kind == PolicyKind::Zerospot).then(|| ctl.decisions()),
        series: std::mem::take(&mut c.series),
    })
}
