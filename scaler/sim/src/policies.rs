//! The policies compared: zerospot (the real core `decide`), always-on, the Cluster Autoscaler, KEDA and
//! Karpenter, each as a controller acting on the shared [`crate::cluster`]. The oracle lives in the
//! `oracle` module.
//!
//! # Models and sources
//! - **zerospot**: `zerospot_core::decide` called every `tick` (default 2 s) and at once when a request
//!   finds no free pod (at most once a second), on a Spot notice, on a node's end and on a failed launch (the
//!   Lambda functions' triggers). The snapshot is built from the simulated groups, nodes (in flight,
//!   idle since, cordoned, draining, Spot notice) and per-model demand (queued, in flight, Knative's
//!   desired scale, ready and pending pods); the decision is applied with `Snapshot::apply` and its actions
//!   carried out (terminate, cordon, drain, protection). Two groups: Spot, falling back to on-demand after
//!   repeated capacity failures, as the core's configuration says. Pods scale with Knative (below).
//! - **always-on**: a fixed Spot group sized for the peak: the peak number of requests in service at once
//!   per model (service at full speed, no queueing), in pods, over the slots of a node. An interrupted
//!   instance is replaced by the group when it dies. Pods are fixed and warm.
//! - **cluster-autoscaler**: Knative pods; the Cluster Autoscaler's documented defaults: `scan-interval`
//!   10 s; scale up the group by the nodes that pending pods need beyond nodes already launching;
//!   `scale-down-unneeded-time` 10 min for nodes with no model pod; `scale-down-delay-after-add` 10 min. No
//!   Spot notice handling (no Node Termination Handler): a node takes work until it dies; the group replaces
//!   it.
//! - **keda**: pods from KEDA's `aws-sqs-queue` scaler (queue length target = pod concurrency, in-flight
//!   messages counted, `pollingInterval` 30 s for activation from zero, HPA sync 15 s with the 300 s
//!   scale-down stabilization window, `cooldownPeriod` 300 s to zero); nodes from the Cluster Autoscaler as
//!   above.
//! - **karpenter**: Knative pods; pending pods batched (`BATCH_IDLE_DURATION` 1 s, `BATCH_MAX_DURATION`
//!   10 s); one node per `slots` pending pods beyond in-flight node claims; Spot first, on-demand for 3
//!   minutes after an insufficient-capacity error; empty nodes removed (`consolidateAfter` 0 s, the v1
//!   default; the disruption controller polls every 10 s); underutilized nodes consolidated one at a time
//!   when their pods fit on the other nodes (`WhenEmptyOrUnderutilized`, the v1 default); Spot notices
//!   handled natively (cordon, drain, replacement pods pend at once).
//! - **Knative pods** (zerospot, cluster-autoscaler, karpenter): the KPA wants `ceil((queued + in flight) /
//!   concurrency)` pods and creates them at once; a pod idle for 90 s (stable window 60 s + scale-to-zero
//!   grace 30 s) that the work does not need goes.

use crate::cluster::{Asg, Cluster, DemandSignal, Ev, PodScaling};
use crate::error::Result;
use chrono::{DateTime, Duration, TimeZone, Utc};
use std::collections::VecDeque;
use zerospot_core::testing::PoolExt;
use zerospot_core::{
    Action, CapacityType, Config, Disruption, ModelDemand, ModelSpec, Node, NodeState, PoolSpec,
    PoolState, Sharing, Snapshot, Timing, decide,
};

/// A policy the simulator can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// zerospot's core policy.
    Zerospot,
    /// Fixed nodes for the peak.
    AlwaysOn,
    /// Knative + Cluster Autoscaler.
    ClusterAutoscaler,
    /// KEDA SQS scaler + Cluster Autoscaler.
    Keda,
    /// Knative + Karpenter.
    Karpenter,
    /// Perfect foresight.
    Oracle,
}

impl PolicyKind {
    /// Every policy, in report order.
    pub const ALL: [PolicyKind; 6] = [
        PolicyKind::Zerospot,
        PolicyKind::AlwaysOn,
        PolicyKind::ClusterAutoscaler,
        PolicyKind::Keda,
        PolicyKind::Karpenter,
        PolicyKind::Oracle,
    ];

    /// Its name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Zerospot => "zerospot",
            PolicyKind::AlwaysOn => "always-on",
            PolicyKind::ClusterAutoscaler => "cluster-autoscaler",
            PolicyKind::Keda => "keda",
            PolicyKind::Karpenter => "karpenter",
            PolicyKind::Oracle => "oracle",
        }
    }

    /// Parses a name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Policy knobs.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyParams {
    /// zerospot's timing (the core's defaults unless tuned).
    pub zerospot_timing: Timing,
    /// How often zerospot's controller decides, seconds.
    pub zerospot_tick_s: f64,
    /// Always-on size; `None` sizes it for the peak.
    pub always_on_nodes: Option<u32>,
    /// What zerospot's controller reports about each queue: [`DemandSignal::RateAware`] as shipped;
    /// `Queued` is the core's fallback without rate estimates, `BacklogPerPod` a what-if.
    pub zerospot_demand: DemandSignal,
}

impl Default for PolicyParams {
    fn default() -> Self {
        PolicyParams {
            zerospot_timing: Timing::default(),
            zerospot_tick_s: 2.0,
            always_on_nodes: None,
            zerospot_demand: DemandSignal::RateAware {
                drain_s: Timing::default().backlog_drain_s as f64,
                prior_service_s: 5.0,
            },
        }
    }
}

const TICK_KNATIVE: u8 = 0;
const TICK_ZEROSPOT: u8 = 1;
const TICK_CA: u8 = 2;
const TICK_KEDA: u8 = 3;
const TICK_KARPENTER_BATCH: u8 = 4;
const TICK_KARPENTER_DISRUPT: u8 = 5;

const KNATIVE_TICK_S: f64 = 2.0;
const CA_SCAN_S: f64 = 10.0;
const CA_UNNEEDED_S: f64 = 600.0;
const CA_DELAY_AFTER_ADD_S: f64 = 600.0;
const KEDA_SYNC_S: f64 = 15.0;
const KEDA_COOLDOWN_S: f64 = 300.0;
const HPA_STABILIZATION_S: f64 = 300.0;
const KARPENTER_BATCH_IDLE_S: f64 = 1.0;
const KARPENTER_BATCH_MAX_S: f64 = 10.0;
const KARPENTER_DISRUPTION_POLL_S: f64 = 10.0;
const KARPENTER_CONSOLIDATE_AFTER_S: f64 = 0.0;
const KARPENTER_ICE_TTL_S: f64 = 180.0;

pub(crate) const SPOT_POOL: &str = "gpu-spot";
pub(crate) const ON_DEMAND_POOL: &str = "gpu-on-demand";

/// The zerospot configuration the simulator runs: a Spot MPS pool with an on-demand fallback.
pub fn zerospot_config(
    models: &[String],
    slots: u32,
    concurrency: u32,
    max_nodes: u32,
    timing: Timing,
) -> Config {
    let pool = |name: &str, capacity_type| PoolSpec {
        name: name.into(),
        asg_name: format!("{name}-asg"),
        instance_type: String::new(),
        gpus: 1,
        capacity_type,
        sharing: Sharing::Exclusive,
        min: 0,
        max: max_nodes,
        fallback: None,
    };
    let spot = pool(SPOT_POOL, CapacityType::Spot)
        .mps(slots)
        .fallback(ON_DEMAND_POOL);
    let on_demand = pool(ON_DEMAND_POOL, CapacityType::OnDemand).mps(slots);
    Config {
        pools: vec![spot, on_demand],
        models: models
            .iter()
            .map(|name| ModelSpec {
                name: name.clone(),
                pool: SPOT_POOL.into(),
                concurrency,
                slots_per_pod: 1,
                mig_profile: None,
            })
            .collect(),
        timing,
    }
}

pub(crate) struct ZerospotCtl {
    config: Config,
    snapshot: Snapshot,
    epoch: DateTime<Utc>,
    tick_s: f64,
    last_decide: f64,
    pub decisions: u64,
}

impl ZerospotCtl {
    fn at(&self, t: f64) -> DateTime<Utc> {
        self.epoch + Duration::microseconds((t * 1e6) as i64)
    }

    fn decide(&mut self, c: &mut Cluster<'_>) {
        self.last_decide = c.now;
        self.decisions += 1;
        let now = self.at(c.now);
        let window = self.config.timing.capacity_failure_window_s as f64;
        self.snapshot.pools.clear();
        for (i, name) in [SPOT_POOL, ON_DEMAND_POOL].iter().enumerate() {
            let asg = &c.asgs[i];
            self.snapshot.pools.push(PoolState {
                pool: (*name).into(),
                desired: asg.desired,
                capacity_failures: asg
                    .failures
                    .iter()
                    .filter(|t| c.now - **t <= window)
                    .map(|t| self.epoch + Duration::microseconds((t * 1e6) as i64))
                    .collect(),
            });
        }
        self.snapshot.nodes.clear();
        for &id in &c.live {
            let n = &c.nodes[id as usize];
            self.snapshot.nodes.push(Node {
                instance_id: format!("i-{id:08x}"),
                name: None,
                pool: if n.pool == 0 {
                    SPOT_POOL
                } else {
                    ON_DEMAND_POOL
                }
                .into(),
                state: if n.ready {
                    NodeState::GpuReady
                } else {
                    NodeState::Launching
                },
                launched_at: self.at(n.launched_at.max(0.0)),
                cordoned: n.cordoned,
                draining: n.draining,
                disruption: n.noticed.then_some(Disruption::SpotInterruption),
                in_flight: n.in_flight,
                idle_since: (n.ready && n.in_flight == 0).then(|| self.at(n.idle_since)),
                protected: n.protected,
            });
        }
        for (m, d) in self.snapshot.demand.iter_mut().enumerate() {
            // With rate estimates the core sees the raw queue and sizes it itself; the what-if signals
            // report an already-shaped queue.
            let estimates = c.rate_estimates(m);
            d.queued = if estimates.is_some() {
                c.queues[m].len() as u64
            } else {
                c.reported_queue(m)
            };
            d.arrival_rate_per_s = estimates.map(|e| e.0);
            d.service_time_s = estimates.map(|e| e.1);
            d.in_flight = c.running[m];
            d.desired_scale = Some(c.knative_want(m));
            d.actual_scale = Some(c.pods_ready[m]);
            d.pending_pods = c.pending[m];
        }
        let decision = decide(&self.snapshot, &self.config, now);
        if decision.actions.is_empty() {
            return;
        }
        self.snapshot.apply(&decision);
        for action in &decision.actions {
            match action {
                Action::SetProtection {
                    instance_id,
                    protected,
                    ..
                } => {
                    if let Some(id) = parse_id(instance_id) {
                        c.nodes[id as usize].protected = *protected;
                    }
                }
                Action::Cordon { instance_id, .. } => {
                    if let Some(id) = parse_id(instance_id) {
                        c.nodes[id as usize].cordoned = true;
                    }
                }
                Action::Drain { instance_id, .. } => {
                    if let Some(id) = parse_id(instance_id) {
                        c.drain(id);
                    }
                }
                Action::Terminate { instance_id, .. } => {
                    if let Some(id) = parse_id(instance_id) {
                        c.end_node(id, true);
                    }
                }
                Action::SetDesiredCapacity { .. } => {}
            }
        }
        // Groups by name: the snapshot lists pools in the order decisions first touched them.
        for state in &self.snapshot.pools {
            let i = match state.pool.as_str() {
                SPOT_POOL => 0,
                ON_DEMAND_POOL => 1,
                _ => continue,
            };
            if let Some(asg) = c.asgs.get_mut(i) {
                asg.desired = state.desired;
            }
        }
        c.asg_reconcile(0);
        c.asg_reconcile(1);
    }
}

fn parse_id(instance_id: &str) -> Option<u32> {
    u32::from_str_radix(instance_id.strip_prefix("i-")?, 16).ok()
}

#[derive(Debug, Default)]
pub(crate) struct CaState {
    last_scale_up: f64,
}

impl CaState {
    fn scan(&mut self, c: &mut Cluster<'_>) {
        let slots = c.slots();
        if c.pending_total > 0 {
            let upcoming: u32 = c
                .live
                .iter()
                .filter(|id| !c.nodes[**id as usize].ready)
                .count() as u32
                * slots;
            let uncovered = c.pending_total.saturating_sub(upcoming);
            if uncovered > 0 {
                let add = uncovered.div_ceil(slots);
                let asg = &mut c.asgs[0];
                asg.desired = (asg.desired + add).min(asg.max);
                self.last_scale_up = c.now;
                c.asg_reconcile(0);
            }
        }
        if c.now - self.last_scale_up >= CA_DELAY_AFTER_ADD_S {
            let live = c.live.clone();
            for id in live {
                if c.nodes[id as usize].empty_for(c.now, CA_UNNEEDED_S) {
                    c.end_node(id, true);
                    c.asgs[0].desired = c.asgs[0].desired.saturating_sub(1);
                }
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct KedaState {
    replicas: Vec<u32>,
    history: Vec<VecDeque<(f64, u32)>>,
    last_active: Vec<f64>,
    syncs: u64,
}

impl KedaState {
    fn sync(&mut self, c: &mut Cluster<'_>) {
        let poll = self.syncs.is_multiple_of(2);
        self.syncs += 1;
        let conc = u64::from(c.p.serving.pod_concurrency.max(1));
        for m in 0..c.models {
            let metric = c.queues[m].len() as u64 + c.running[m];
            let raw = metric.div_ceil(conc) as u32;
            if metric > 0 {
                self.last_active[m] = c.now;
            }
            let history = &mut self.history[m];
            if self.replicas[m] == 0 {
                if poll && metric > 0 {
                    self.replicas[m] = raw.max(1);
                    history.push_back((c.now, raw));
                }
            } else if metric == 0 && c.now - self.last_active[m] >= KEDA_COOLDOWN_S {
                self.replicas[m] = 0;
                history.clear();
            } else {
                history.push_back((c.now, raw));
                while history
                    .front()
                    .is_some_and(|(t, _)| c.now - t > HPA_STABILIZATION_S)
                {
                    history.pop_front();
                }
                self.replicas[m] = history.iter().map(|(_, r)| *r).max().unwrap_or(raw).max(1);
            }
            c.set_replicas(m, self.replicas[m]);
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct KarpenterState {
    batch_start: Option<f64>,
    batch_last: f64,
    spot_unavailable_until: f64,
    failures_seen: u32,
    candidate: Option<u32>,
}

impl KarpenterState {
    /// Single-node consolidation (`WhenEmptyOrUnderutilized`): a ready node whose pods fit in the free
    /// slots of the other ready nodes, seen on two polls in a row (Karpenter validates a candidate for 15 s),
    /// is drained; its pods are recreated elsewhere and the empty node goes on the next poll.
    fn consolidate(&mut self, c: &mut Cluster<'_>) {
        if c.pending_total > 0 {
            self.candidate = None;
            return;
        }
        let free: u32 = c
            .live
            .iter()
            .map(|id| &c.nodes[*id as usize])
            .filter(|n| n.schedulable())
            .map(|n| n.pods.iter().filter(|p| p.is_none()).count() as u32)
            .sum();
        let pick = c
            .live
            .iter()
            .copied()
            .filter(|id| {
                let n = &c.nodes[*id as usize];
                let pods = n.pod_count() as u32;
                let own_free = n.pods.len() as u32 - pods;
                n.schedulable() && pods > 0 && pods <= free - own_free
            })
            .min_by_key(|id| (c.nodes[*id as usize].pod_count(), std::cmp::Reverse(*id)));
        match (pick, self.candidate) {
            (Some(id), Some(prev)) if id == prev => {
                self.candidate = None;
                c.drain(id);
            }
            (pick, _) => self.candidate = pick,
        }
    }

    fn provision(&mut self, c: &mut Cluster<'_>) {
        let slots = c.slots();
        let launching = c
            .live
            .iter()
            .filter(|id| !c.nodes[**id as usize].ready)
            .count() as u32;
        let uncovered = c.pending_total.saturating_sub(launching * slots);
        let room = c.p.max_nodes.saturating_sub(c.live.len() as u32);
        let spot = c.now >= self.spot_unavailable_until;
        for _ in 0..uncovered.div_ceil(slots).min(room) {
            c.launch(if spot { 0 } else { 1 }, spot);
        }
    }

    fn open_batch(&mut self, c: &mut Cluster<'_>) {
        if self.batch_start.is_none() {
            self.batch_start = Some(c.now);
            c.schedule(
                c.now + KARPENTER_BATCH_IDLE_S,
                Ev::Tick(TICK_KARPENTER_BATCH),
            );
        }
        self.batch_last = c.now;
    }

    fn batch_tick(&mut self, c: &mut Cluster<'_>) {
        let Some(start) = self.batch_start else {
            return;
        };
        if c.now - self.batch_last >= KARPENTER_BATCH_IDLE_S - 1e-9
            || c.now - start >= KARPENTER_BATCH_MAX_S - 1e-9
        {
            self.batch_start = None;
            self.provision(c);
        } else {
            let next =
                (self.batch_last + KARPENTER_BATCH_IDLE_S).min(start + KARPENTER_BATCH_MAX_S);
            c.schedule(next, Ev::Tick(TICK_KARPENTER_BATCH));
        }
    }

    fn disrupt(&mut self, c: &mut Cluster<'_>) {
        self.consolidate(c);
        let live = c.live.clone();
        for id in live {
            if c.nodes[id as usize].empty_for(c.now, KARPENTER_CONSOLIDATE_AFTER_S) {
                c.end_node(id, true);
            }
        }
    }
}

pub(crate) enum Controller {
    Zerospot(Box<ZerospotCtl>),
    AlwaysOn,
    ClusterAutoscaler(CaState),
    Keda(KedaState, CaState),
    Karpenter(KarpenterState),
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Controller::Zerospot(_) => "Zerospot",
            Controller::AlwaysOn => "AlwaysOn",
            Controller::ClusterAutoscaler(_) => "ClusterAutoscaler",
            Controller::Keda(..) => "Keda",
            Controller::Karpenter(_) => "Karpenter",
        })
    }
}

/// How the pods of each reactive policy scale.
pub(crate) fn pod_scaling(kind: PolicyKind) -> PodScaling {
    match kind {
        PolicyKind::AlwaysOn => PodScaling::Fixed,
        PolicyKind::Keda => PodScaling::External,
        _ => PodScaling::Knative,
    }
}

/// Peak requests in service at once, per model, at full speed with no queueing.
pub(crate) fn peak_concurrency(c: &Cluster<'_>) -> Vec<u32> {
    let mut events: Vec<(f64, i32, u16)> = Vec::with_capacity(c.requests.len() * 2);
    for r in c.requests {
        let s =
            c.p.serving
                .service_s(r.prompt_tokens, r.generated_tokens, 1);
        events.push((r.at, 1, r.model));
        events.push((r.at + s, -1, r.model));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut now = vec![0i32; c.models];
    let mut peak = vec![0u32; c.models];
    for (_, d, m) in events {
        let m = m as usize;
        now[m] += d;
        peak[m] = peak[m].max(now[m].max(0) as u32);
    }
    peak
}

impl Controller {
    pub(crate) fn start(
        kind: PolicyKind,
        c: &mut Cluster<'_>,
        params: &PolicyParams,
        models: &[String],
    ) -> Result<Self> {
        let max = c.p.max_nodes;
        let spot_asg = Asg {
            spot: true,
            desired: 0,
            max,
            retry_at: 0.0,
            failures: Vec::new(),
        };
        c.asgs = vec![
            spot_asg.clone(),
            Asg {
                spot: false,
                ..spot_asg
            },
        ];
        if c.pod_scaling == PodScaling::Knative {
            c.schedule(KNATIVE_TICK_S, Ev::Tick(TICK_KNATIVE));
        }
        Ok(match kind {
            PolicyKind::Zerospot => {
                let config = zerospot_config(
                    models,
                    c.slots(),
                    c.p.serving.pod_concurrency.max(1),
                    max,
                    Timing {
                        backlog_drain_s: match params.zerospot_demand {
                            DemandSignal::RateAware { drain_s, .. } => drain_s.max(1.0) as u64,
                            _ => params.zerospot_timing.backlog_drain_s,
                        },
                        ..params.zerospot_timing
                    },
                );
                config.validate().map_err(crate::error::SimError::Config)?;
                let snapshot = Snapshot {
                    demand: models
                        .iter()
                        .map(|m| ModelDemand {
                            model: m.clone(),
                            ..ModelDemand::default()
                        })
                        .collect(),
                    ..Snapshot::default()
                };
                let tick_s = params.zerospot_tick_s.max(0.1);
                c.set_demand_signal(params.zerospot_demand);
                c.schedule(tick_s, Ev::Tick(TICK_ZEROSPOT));
                Controller::Zerospot(Box::new(ZerospotCtl {
                    config,
                    snapshot,
                    epoch: Utc
                        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                        .single()
                        .unwrap_or_default(),
                    tick_s,
                    last_decide: f64::NEG_INFINITY,
                    decisions: 0,
                }))
            }
            PolicyKind::AlwaysOn => {
                let slots = c.slots();
                let conc = c.p.serving.pod_concurrency.max(1);
                let peak = peak_concurrency(c);
                let mut pods: Vec<u32> = peak.iter().map(|p| p.div_ceil(conc).max(1)).collect();
                let needed: u32 = pods.iter().sum();
                let n = params
                    .always_on_nodes
                    .unwrap_or_else(|| needed.div_ceil(slots))
                    .clamp(1, max.max(1));
                // Spread the remaining slots by share of the peak; if fewer slots than pods, scale down.
                let total = n * slots;
                while pods.iter().sum::<u32>() > total {
                    if let Some((i, _)) = pods
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| **p > 1)
                        .max_by_key(|(_, p)| **p)
                    {
                        pods[i] -= 1;
                    } else {
                        break;
                    }
                }
                let mut layout: Vec<u16> = Vec::with_capacity(total as usize);
                for (m, k) in pods.iter().enumerate() {
                    layout.extend(std::iter::repeat_n(m as u16, *k as usize));
                }
                let mut m = 0usize;
                while layout.len() < total as usize {
                    layout.push((m % c.models) as u16);
                    m += 1;
                }
                layout.truncate(total as usize);
                c.fixed_layout = layout;
                c.layout_free = (0..n).collect();
                c.asgs[0].desired = n;
                for _ in 0..n {
                    c.prewarmed(0, true);
                }
                Controller::AlwaysOn
            }
            PolicyKind::ClusterAutoscaler => {
                c.schedule(CA_SCAN_S, Ev::Tick(TICK_CA));
                Controller::ClusterAutoscaler(CaState {
                    last_scale_up: f64::NEG_INFINITY,
                })
            }
            PolicyKind::Keda => {
                c.schedule(CA_SCAN_S, Ev::Tick(TICK_CA));
                c.schedule(0.0, Ev::Tick(TICK_KEDA));
                Controller::Keda(
                    KedaState {
                        replicas: vec![0; c.models],
                        history: vec![VecDeque::new(); c.models],
                        last_active: vec![f64::NEG_INFINITY; c.models],
                        syncs: 0,
                    },
                    CaState {
                        last_scale_up: f64::NEG_INFINITY,
                    },
                )
            }
            PolicyKind::Karpenter => {
                c.schedule(
                    KARPENTER_DISRUPTION_POLL_S,
                    Ev::Tick(TICK_KARPENTER_DISRUPT),
                );
                Controller::Karpenter(KarpenterState::default())
            }
            PolicyKind::Oracle => {
                return Err(crate::error::SimError::Parameter(
                    "the oracle does not run on the cluster".into(),
                ));
            }
        })
    }

    pub(crate) fn tick(&mut self, tag: u8, c: &mut Cluster<'_>) {
        match (tag, self) {
            (TICK_KNATIVE, _) => {
                c.knative_scale_down();
                for m in 0..c.models {
                    c.knative_scale_up(m);
                }
                c.schedule(c.now + KNATIVE_TICK_S, Ev::Tick(TICK_KNATIVE));
            }
            (TICK_ZEROSPOT, Controller::Zerospot(z)) => {
                z.decide(c);
                c.schedule(c.now + z.tick_s, Ev::Tick(TICK_ZEROSPOT));
            }
            (TICK_CA, Controller::ClusterAutoscaler(ca) | Controller::Keda(_, ca)) => {
                ca.scan(c);
                c.schedule(c.now + CA_SCAN_S, Ev::Tick(TICK_CA));
            }
            (TICK_KEDA, Controller::Keda(k, _)) => {
                k.sync(c);
                c.schedule(c.now + KEDA_SYNC_S, Ev::Tick(TICK_KEDA));
            }
            (TICK_KARPENTER_BATCH, Controller::Karpenter(k)) => k.batch_tick(c),
            (TICK_KARPENTER_DISRUPT, Controller::Karpenter(k)) => {
                k.disrupt(c);
                c.schedule(
                    c.now + KARPENTER_DISRUPTION_POLL_S,
                    Ev::Tick(TICK_KARPENTER_DISRUPT),
                );
            }
            _ => {}
        }
    }

    /// Reacts to what the last event changed (flags on the cluster), then clears the flags.
    pub(crate) fn after_event(&mut self, c: &mut Cluster<'_>) {
        match self {
            Controller::Zerospot(z) => {
                if c.disrupted || (c.unmet_demand && c.now - z.last_decide >= 1.0) {
                    z.decide(c);
                }
            }
            Controller::Karpenter(k) => {
                if c.disrupted {
                    if c.c.launch_failures > k.failures_seen {
                        k.failures_seen = c.c.launch_failures;
                        k.spot_unavailable_until = c.now + KARPENTER_ICE_TTL_S;
                        if c.pending_total > 0 {
                            k.open_batch(c);
                        }
                    }
                    let noticed: Vec<u32> = c
                        .live
                        .iter()
                        .copied()
                        .filter(|id| {
                            let n = &c.nodes[*id as usize];
                            n.noticed && !n.draining
                        })
                        .collect();
                    for id in noticed {
                        c.drain(id);
                    }
                }
                if c.pending_grew && c.pending_total > 0 {
                    k.open_batch(c);
                }
            }
            Controller::AlwaysOn | Controller::ClusterAutoscaler(_) | Controller::Keda(..) => {
                if c.disrupted {
                    c.asg_reconcile(0);
                }
            }
        }
        c.unmet_demand = false;
        c.pending_grew = false;
        c.disrupted = false;
    }

    /// Decisions taken by the core (zerospot only).
    pub(crate) fn decisions(&self) -> u64 {
        match self {
            Controller::Zerospot(z) => z.decisions,
            _ => 0,
        }
    }
}
