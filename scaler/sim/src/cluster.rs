//! The simulated cluster: nodes, model pods in MPS slots, the request queue, the event heap and billing.
//!
//! Every policy but the oracle runs on this same cluster; only the controller that decides how many nodes
//! (and, for KEDA, how many pods) to run differs.
//!
//! # Mechanics, the same for every policy
//! - Requests wait in a FIFO queue per model (SQS for zerospot and KEDA; Knative's activator for the other
//!   peers) and are never dropped by a slow cold start. A request is lost only when it has waited longer
//!   than the deadline when a worker picks it up, or after too many attempts.
//! - Model pods take one MPS slot each. Pods are placed bin-packing (on the node with most pods that has a
//!   free slot), load their model (plus the image pull on a node's first pod), then serve `pod_concurrency`
//!   requests at a time.
//! - Processor sharing: a request's prefill runs at the single-process rate, its decode at the sharing
//!   curve's per-process rate for the number of requests on the GPU *now*; every start or end on a node
//!   re-times the others.
//! - When a node dies (Spot interruption after the two-minute notice), requests in flight on it go back to
//!   the front of their queue and count as requeued; the request is served again from the start.
//! - Waits are split by what the request found: *warm* if its model had a Ready pod when it arrived and
//!   no cold request was waiting ahead of it; *cold* otherwise (it waited for a cold start, or behind
//!   requests that did).
//! - Billing: per second from launch to termination, with a 60-second minimum; failed launches are free.

use crate::cloud::Cloud;
use crate::knative::{KnativeParams, Kpa};
use crate::rng::Rng;
use crate::serving::Serving;
use crate::workload::{Request, Workload};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use zerospot_core::ModelDemand;
use zerospot_core::estimate::DemandEstimate;

/// What a scheduled event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Ev {
    /// The node's GPU is ready.
    NodeReady(u32),
    /// The node's launch failed for lack of Spot capacity.
    LaunchFailed(u32),
    /// A pod finished loading its model: `(node, slot)`.
    PodReady(u32, u8),
    /// A request finishes, unless its node's load changed since this was scheduled: `(request,
    /// version)`.
    Complete(u32, u16),
    /// A Spot interruption notice for the node.
    Notice(u32),
    /// The node is terminated by EC2 (end of the notice).
    Kill(u32),
    /// A controller's timer, with a tag the controller chooses.
    Tick(u8),
    /// An Auto Scaling group may retry a failed launch: pool index.
    AsgRetry(u8),
}

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReqState {
    NotArrived,
    Queued,
    Running,
    Done,
    Lost,
}

/// Per-request bookkeeping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReqInfo {
    pub state: ReqState,
    pub attempt: u8,
    /// Time queued since (while queued).
    pub queued_since: f64,
    /// Time waited in the queue so far.
    pub waited: f64,
    pub node: u32,
    pub slot: u8,
    /// The interruption that last requeued it (0: none).
    pub interrupted_by: u32,
    /// When the current attempt started (while running).
    pub started_at: f64,
    /// Bumped whenever the request's finish time is re-computed; stale completions are ignored.
    pub version: u16,
    /// Prefill left, seconds (while running; prefill is not slowed by sharing).
    pub prefill_left: f64,
    /// Tokens left to generate (while running).
    pub decode_left: f64,
    /// When `prefill_left` and `decode_left` were last brought up to date.
    pub progress_at: f64,
    /// Arrived while its model had no Ready pod, or queued behind such a request.
    pub cold: bool,
}

/// A model pod in one MPS slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pod {
    pub model: u16,
    pub ready: bool,
    pub ready_at: f64,
    pub in_flight: u32,
    pub idle_since: f64,
    /// Being removed: serves what it has, takes nothing new, does not count as capacity.
    pub terminating: bool,
}

/// One instance.
#[derive(Debug, Clone)]
pub(crate) struct SimNode {
    pub pool: u8,
    pub spot: bool,
    /// Billed from its launch: false for a launch that fails for lack of capacity.
    pub billed: bool,
    pub launched_at: f64,
    pub ready: bool,
    pub gone: bool,
    pub failed: bool,
    pub cordoned: bool,
    pub draining: bool,
    pub noticed: bool,
    pub protected: bool,
    pub interruption_id: u32,
    pub image_ready_at: Option<f64>,
    pub pods: Vec<Option<Pod>>,
    pub running: Vec<u32>,
    pub in_flight: u32,
    pub idle_since: f64,
    pub empty_since: f64,
    /// Always-on: which chunk of the fixed layout this node carries.
    pub layout_chunk: Option<u32>,
    /// Per-process decode speed factor the running requests progress at now (processor sharing).
    pub factor: f64,
    /// Cluster Autoscaler: since when the node has been a scale-down candidate (`INFINITY`: not one).
    pub unneeded_since: f64,
}

impl SimNode {
    pub fn schedulable(&self) -> bool {
        self.ready && !self.gone && !self.cordoned && !self.draining
    }
    pub fn pod_count(&self) -> usize {
        self.pods.iter().filter(|p| p.is_some()).count()
    }
    pub fn free_slot(&self) -> Option<usize> {
        self.pods.iter().position(Option::is_none)
    }
    /// Ready, nothing in flight and no model pod for at least `secs` at `now`: what the Cluster
    /// Autoscaler and Karpenter both remove.
    pub fn empty_for(&self, now: f64, secs: f64) -> bool {
        self.ready && self.in_flight == 0 && self.pod_count() == 0 && now - self.empty_since >= secs
    }
}

/// An Auto Scaling group: keeps `desired` instances, retries failed launches.
#[derive(Debug, Clone)]
pub(crate) struct Asg {
    pub spot: bool,
    pub desired: u32,
    pub max: u32,
    pub retry_at: f64,
    pub failures: Vec<f64>,
}

/// What zerospot's controller reports to the core's `decide` about each model's queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DemandSignal {
    /// No rate estimate: every queued request (SQS visible messages) counts as a lane of work, the core's
    /// fallback when the controller has no arrival-rate or service-time figures.
    Queued,
    /// The queue with the estimates the dispatcher keeps ([`zerospot_core::estimate::DemandEstimate`]):
    /// the recent arrival rate, the gaps between arrivals and a service time (`prior_service_s` counted
    /// as one completion).
    RateAware {
        /// Service time assumed before any request completed, seconds.
        prior_service_s: f64,
    },
}

/// How queued requests reach Knative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intake {
    /// HTTP straight to Knative: every waiting request sits in the activator and counts as concurrency.
    Activator,
    /// zerospot's dispatcher: requests stay in SQS; it forwards as many as fit in Ready pods and free
    /// slots of GPU-ready nodes (capacity already paid for), and keeps one wake-up request in flight for a
    /// model with no Ready pod.
    Dispatcher,
}

/// Who scales pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PodScaling {
    /// Knative's KPA: pods for queued plus in-flight work at once; an idle pod goes after `pod_idle_s`.
    Knative,
    /// The controller sets replicas (KEDA + HPA).
    External,
    /// A fixed layout per node (always-on).
    Fixed,
}

/// One point of the time series for plots.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Sample {
    /// Seconds from the start.
    pub t: f64,
    /// Instances alive (launching included).
    pub nodes: u32,
    /// Requests waiting.
    pub queued: u64,
    /// Cost so far, USD (ignoring the 60-second minimum until an instance ends).
    pub cost_usd: f64,
}

/// Counters a run reports.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    pub completed: u64,
    pub lost: u64,
    pub requeued: u64,
    pub interruptions: u32,
    pub interruptions_failed: Vec<bool>,
    pub scale_ups: u32,
    pub scale_downs: u32,
    pub launch_failures: u32,
    pub billed_s: f64,
    pub cost_usd: f64,
    pub delays: Vec<f32>,
    pub delays_warm: Vec<f32>,
    pub delays_cold: Vec<f32>,
    /// Arrivals that found their model with no Ready pod and no cold request already waiting.
    pub cold_starts: u32,
    /// Removals by the policy followed by a launch in the same pool within one cold start.
    pub flaps: u32,
    /// On-demand instances launched.
    pub on_demand_launches: u32,
    /// Removals by the policy while another billed node of the pool, launched less than the billing
    /// minimum earlier, ran.
    pub swaps: u32,
    /// Per pool: removal times not yet matched by a launch.
    pub removals: Vec<VecDeque<f64>>,
    /// The longest cold episode: from a request finding its model with no Ready pod until the last
    /// request queued behind it started (or was lost), seconds.
    pub longest_cold_episode_s: f64,
}

/// Knobs of the cluster that are the same for every policy.
#[derive(Debug, Clone)]
pub struct ClusterParams {
    /// Cloud model.
    pub cloud: Cloud,
    /// Serving model.
    pub serving: Serving,
    /// A request that waited longer than this when picked up is lost, seconds.
    pub deadline_s: f64,
    /// A request requeued more than this many times is lost.
    pub max_attempts: u8,
    /// Knative's Pod Autoscaler.
    pub knative: KnativeParams,
    /// Largest size of any group or node pool.
    pub max_nodes: u32,
    /// Points in the time series (0: none).
    pub series_points: u32,
}

pub(crate) struct Cluster<'w> {
    pub p: &'w ClusterParams,
    pub requests: &'w [Request],
    pub models: usize,
    pub now: f64,
    pub horizon: f64,
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    pub rng: Rng,
    pub reqs: Vec<ReqInfo>,
    pub queues: Vec<VecDeque<u32>>,
    pub queued_total: u64,
    pub running: Vec<u64>,
    pub unresolved: u64,
    pub nodes: Vec<SimNode>,
    pub live: Vec<u32>,
    pub asgs: Vec<Asg>,
    pub pod_scaling: PodScaling,
    /// What zerospot's controller reports to the core.
    pub demand_signal: DemandSignal,
    /// How waiting requests reach Knative.
    pub intake: Intake,
    /// Knative's autoscaler settings for this policy's revisions (the cluster's, with a policy's own
    /// target utilisation and scale-down delay where it sets them).
    pub knative: KnativeParams,
    /// One Pod Autoscaler per model.
    pub kpa: Vec<Kpa>,
    /// Cold requests waiting per model.
    pub cold_queued: Vec<u32>,
    /// When each model's current cold episode began.
    cold_since: Vec<f64>,
    /// Arrival-rate and service-time estimates per model, as the dispatcher keeps them.
    estimates: Vec<DemandEstimate>,
    /// Pods per model that are placed (loading or ready, not terminating).
    pub pods_placed: Vec<u32>,
    /// Pods per model that are ready and not terminating.
    pub pods_ready: Vec<u32>,
    /// Pods per model waiting for a slot.
    pub pending: Vec<u32>,
    pub pending_total: u32,
    pub fixed_layout: Vec<u16>,
    pub layout_free: VecDeque<u32>,
    pub c: Counters,
    pub series: Vec<Sample>,
    series_dt: f64,
    next_sample: f64,
    cost_rate: f64,
    cost_so_far: f64,
    cost_at: f64,
    // Flags controllers read after each event.
    pub unmet_demand: bool,
    pub pending_grew: bool,
    pub disrupted: bool,
}

fn key(t: f64) -> u64 {
    // Non-negative finite times order like their bit patterns.
    t.max(0.0).to_bits()
}

impl<'w> Cluster<'w> {
    pub fn new(
        p: &'w ClusterParams,
        workload: &'w Workload,
        seed: u64,
        pod_scaling: PodScaling,
    ) -> Self {
        let models = workload.models.len().max(1);
        let horizon = workload
            .horizon_s
            .max(workload.requests.last().map_or(0.0, |r| r.at));
        let series_dt = if p.series_points > 0 {
            (horizon / f64::from(p.series_points)).max(1.0)
        } else {
            f64::INFINITY
        };
        Cluster {
            p,
            requests: &workload.requests,
            models,
            now: 0.0,
            horizon,
            heap: BinaryHeap::new(),
            seq: 0,
            rng: Rng::new(seed, 0x636c_7573),
            reqs: vec![
                ReqInfo {
                    state: ReqState::NotArrived,
                    attempt: 0,
                    queued_since: 0.0,
                    waited: 0.0,
                    node: 0,
                    slot: 0,
                    interrupted_by: 0,
                    started_at: 0.0,
                    version: 0,
                    prefill_left: 0.0,
                    decode_left: 0.0,
                    progress_at: 0.0,
                    cold: false,
                };
                workload.requests.len()
            ],
            queues: vec![VecDeque::new(); models],
            queued_total: 0,
            running: vec![0; models],
            unresolved: workload.requests.len() as u64,
            nodes: Vec::new(),
            live: Vec::new(),
            asgs: Vec::new(),
            pod_scaling,
            demand_signal: DemandSignal::Queued,
            intake: Intake::Activator,
            knative: p.knative,
            kpa: vec![Kpa::default(); models],
            cold_queued: vec![0; models],
            cold_since: vec![0.0; models],
            estimates: vec![DemandEstimate::new(5.0); models],
            pods_placed: vec![0; models],
            pods_ready: vec![0; models],
            pending: vec![0; models],
            pending_total: 0,
            fixed_layout: Vec::new(),
            layout_free: VecDeque::new(),
            c: Counters {
                delays: Vec::with_capacity(workload.requests.len()),
                interruptions_failed: vec![false],
                removals: vec![VecDeque::new(); 2],
                ..Counters::default()
            },
            series: Vec::new(),
            series_dt,
            next_sample: 0.0,
            cost_rate: 0.0,
            cost_so_far: 0.0,
            cost_at: 0.0,
            unmet_demand: false,
            pending_grew: false,
            disrupted: false,
        }
    }

    pub fn set_demand_signal(&mut self, signal: DemandSignal) {
        self.demand_signal = signal;
        if let DemandSignal::RateAware { prior_service_s } = signal {
            let fresh = DemandEstimate::new(prior_service_s);
            self.estimates.iter_mut().for_each(|e| *e = fresh.clone());
        }
    }

    /// Nothing alive, queued, pending or running: only an arrival can change anything.
    pub fn is_idle(&self) -> bool {
        self.live.is_empty()
            && self.queued_total == 0
            && self.pending_total == 0
            && self.running.iter().all(|r| *r == 0)
    }

    pub fn slots(&self) -> u32 {
        self.p.serving.slots_per_gpu.max(1)
    }

    pub fn schedule(&mut self, at: f64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((key(at), self.seq, ev)));
    }

    pub fn peek_time(&self) -> Option<f64> {
        self.heap
            .peek()
            .map(|Reverse((k, _, _))| f64::from_bits(*k))
    }

    pub fn pop(&mut self) -> Option<(f64, Ev)> {
        self.heap
            .pop()
            .map(|Reverse((k, _, ev))| (f64::from_bits(k), ev))
    }

    /// Records series points up to `t` (before the state changes at `t`).
    pub fn sample_until(&mut self, t: f64) {
        while self.next_sample <= t && self.next_sample.is_finite() {
            let at = self.next_sample;
            self.series.push(Sample {
                t: at,
                nodes: self.live.len() as u32,
                queued: self.queued_total,
                cost_usd: self.cost_so_far + self.cost_rate * (at - self.cost_at),
            });
            self.next_sample += self.series_dt;
        }
    }

    fn add_cost_rate(&mut self, delta: f64) {
        self.cost_so_far += self.cost_rate * (self.now - self.cost_at);
        self.cost_at = self.now;
        self.cost_rate += delta;
    }

    // ----- nodes -----

    /// Launches an instance now; it becomes ready after a boot time, or fails for lack of Spot capacity.
    pub fn launch(&mut self, pool: u8, spot: bool) -> u32 {
        self.launch_node(pool, spot, true)
    }

    fn launch_node(&mut self, pool: u8, spot: bool, may_fail: bool) -> u32 {
        let id = self.nodes.len() as u32;
        let cloud = &self.p.cloud;
        let fails = spot && may_fail && self.rng.chance(cloud.capacity_failure_probability);
        let boot = self.rng.between(cloud.boot_min_s, cloud.boot_max_s);
        let interrupt_after = if spot && cloud.interruption_rate_per_hour > 0.0 {
            self.rng
                .exponential(3600.0 / cloud.interruption_rate_per_hour)
        } else {
            f64::INFINITY
        };
        self.nodes.push(SimNode {
            pool,
            spot,
            billed: !fails,
            launched_at: self.now,
            ready: false,
            gone: false,
            failed: false,
            cordoned: false,
            draining: false,
            noticed: false,
            protected: false,
            interruption_id: 0,
            image_ready_at: None,
            pods: vec![None; self.slots() as usize],
            running: Vec::new(),
            in_flight: 0,
            idle_since: self.now,
            empty_since: self.now,
            layout_chunk: None,
            factor: 1.0,
            unneeded_since: f64::INFINITY,
        });
        self.live.push(id);
        self.c.scale_ups += 1;
        if !spot {
            self.c.on_demand_launches += 1;
        }
        if may_fail {
            let horizon = self.now - self.p.cloud.cold_start_max_s();
            if let Some(removals) = self.c.removals.get_mut(pool as usize) {
                while removals.front().is_some_and(|t| *t < horizon) {
                    removals.pop_front();
                }
                if removals.pop_front().is_some() {
                    self.c.flaps += 1;
                }
            }
        }
        if fails {
            let at = self.now + cloud.capacity_failure_detect_s;
            self.schedule(at, Ev::LaunchFailed(id));
        } else {
            let price = self.p.cloud.price_per_s(spot);
            self.add_cost_rate(price);
            self.schedule(self.now + boot, Ev::NodeReady(id));
            if interrupt_after.is_finite() {
                self.schedule(self.now + interrupt_after, Ev::Notice(id));
            }
        }
        id
    }

    pub fn node_ready(&mut self, id: u32) {
        let now = self.now;
        let node = &mut self.nodes[id as usize];
        if node.gone || node.ready {
            return;
        }
        node.ready = true;
        node.idle_since = now;
        node.empty_since = now;
        if self.pod_scaling == PodScaling::Fixed {
            let warm = node.launched_at < 0.0;
            let chunk = self.layout_free.pop_front().unwrap_or(0);
            node.layout_chunk = Some(chunk);
            let slots = self.slots() as usize;
            let start = chunk as usize * slots;
            for slot in 0..slots {
                let model = self.fixed_layout.get(start + slot).copied().unwrap_or(0);
                self.place_pod(id, slot, model, warm);
            }
        }
        self.schedule_pods();
    }

    pub fn launch_failed(&mut self, id: u32) {
        let node = &mut self.nodes[id as usize];
        if node.gone {
            return;
        }
        node.failed = true;
        node.gone = true;
        let pool = node.pool as usize;
        self.live.retain(|n| *n != id);
        self.c.launch_failures += 1;
        self.c.scale_ups -= 1;
        if let Some(asg) = self.asgs.get_mut(pool) {
            asg.failures.push(self.now);
            asg.retry_at = self.now + self.p.cloud.asg_retry_s;
            let at = asg.retry_at;
            self.schedule(at, Ev::AsgRetry(pool as u8));
        }
        self.disrupted = true;
    }

    /// A Spot interruption notice: the node dies `interruption_notice_s` later.
    pub fn notice(&mut self, id: u32) {
        let node = &self.nodes[id as usize];
        if node.gone || node.noticed {
            return;
        }
        self.c.interruptions += 1;
        self.c.interruptions_failed.push(false);
        let iid = self.c.interruptions;
        let node = &mut self.nodes[id as usize];
        node.noticed = true;
        node.interruption_id = iid;
        let at = self.now + self.p.cloud.interruption_notice_s;
        self.schedule(at, Ev::Kill(id));
        self.disrupted = true;
    }

    /// Ends an instance: requeues its requests, drops its pods, bills it.
    pub fn end_node(&mut self, id: u32, by_policy: bool) {
        let now = self.now;
        if self.nodes[id as usize].gone {
            return;
        }
        // Gone first, so nothing is scheduled onto it while its pods and requests are moved.
        self.nodes[id as usize].gone = true;
        self.live.retain(|n| *n != id);
        let running = std::mem::take(&mut self.nodes[id as usize].running);
        let iid = self.nodes[id as usize].interruption_id;
        for r in running {
            self.requeue(r, iid);
        }
        let slots = self.nodes[id as usize].pods.len();
        for slot in 0..slots {
            self.remove_pod(id, slot);
        }
        let node = &mut self.nodes[id as usize];
        node.in_flight = 0;
        if let Some(chunk) = node.layout_chunk.take() {
            self.layout_free.push_back(chunk);
        }
        let ran = now - node.launched_at;
        let spot = node.spot;
        let price = self.p.cloud.price_per_s(spot);
        let billed = self.p.cloud.billed_s(ran);
        self.c.billed_s += billed;
        self.c.cost_usd += billed * price;
        self.add_cost_rate(-price);
        // The 60-second minimum, if it applies, lands in the series now.
        self.cost_so_far += (billed - ran) * price;
        // A node under a Spot notice was going anyway: removing it early is the interruption's doing,
        // not a scale-in (no removal, no flap), as for the nodes other policies let die.
        if by_policy && !self.nodes[id as usize].noticed {
            self.c.scale_downs += 1;
            let pool = self.nodes[id as usize].pool as usize;
            let fresh = now - self.p.cloud.min_billed_s;
            if self.live.iter().any(|n| {
                let other = &self.nodes[*n as usize];
                other.billed && other.pool as usize == pool && other.launched_at > fresh
            }) {
                self.c.swaps += 1;
            }
            if let Some(removals) = self.c.removals.get_mut(pool) {
                removals.push_back(now);
            }
        }
        self.disrupted = true;
        self.reconcile_pods_after_loss();
        for m in 0..self.models {
            self.dispatch(m);
        }
    }

    /// Cordons and drains a node: idle pods go now, busy pods finish what they serve and go.
    pub fn drain(&mut self, id: u32) {
        let node = &mut self.nodes[id as usize];
        if node.gone {
            return;
        }
        node.cordoned = true;
        node.draining = true;
        for slot in 0..node.pods.len() {
            self.retire_pod(id, slot);
        }
        self.reconcile_pods_after_loss();
    }

    fn reconcile_pods_after_loss(&mut self) {
        if self.pod_scaling == PodScaling::Knative {
            for m in 0..self.models {
                let want = self.kpa[m].desired;
                let have = self.pods_placed[m] + self.pending[m];
                if want > have {
                    self.add_pending(m, want - have);
                }
            }
        }
        self.schedule_pods();
    }

    // ----- pods -----

    /// Copies model `m`'s rate and service-time estimates into `d` when the signal uses them, and
    /// clears them otherwise.
    pub fn fill_estimates(&self, m: usize, d: &mut ModelDemand) {
        if matches!(self.demand_signal, DemandSignal::RateAware { .. }) {
            self.estimates[m].fill(self.now, d);
        } else {
            d.arrival_rate_per_s = None;
            d.peak_rate_per_s = None;
            d.silent_for_s = None;
            d.gaps = None;
            d.service_time_s = None;
        }
    }

    /// Lanes (pod concurrency) in free slots of GPU-ready schedulable nodes, less those pending pods
    /// will take: capacity already paid for that no pod uses.
    pub fn free_slot_lanes(&self) -> u64 {
        let free: u64 = self
            .live
            .iter()
            .map(|id| &self.nodes[*id as usize])
            .filter(|n| n.schedulable())
            .map(|n| n.pods.iter().filter(|p| p.is_none()).count() as u64)
            .sum();
        free.saturating_sub(u64::from(self.pending_total))
            * u64::from(self.p.serving.pod_concurrency.max(1))
    }

    /// Requests of model `m` waiting where Knative counts them (its activator).
    pub fn visible_to_knative(&self, m: usize) -> u64 {
        let q = self.queues[m].len() as u64;
        match self.intake {
            Intake::Activator => q,
            Intake::Dispatcher => {
                let wake = u64::from(q > 0 && self.pods_ready[m] == 0);
                zerospot_core::demand::forwardable(q, self.free_slot_lanes()).max(wake)
            }
        }
    }

    /// Knative's observed concurrency for model `m`: requests in its pods plus those in the activator.
    fn knative_observed(&self, m: usize) -> f64 {
        (self.running[m] + self.visible_to_knative(m)) as f64
    }

    /// One Pod Autoscaler decision for every model, and the pods it asks for.
    pub fn knative_tick(&mut self) {
        let conc = self.p.serving.pod_concurrency.max(1);
        let params = self.knative;
        for m in 0..self.models {
            let observed = self.knative_observed(m);
            let ready = self.pods_ready[m];
            let desired = self.kpa[m].decide(&params, self.now, observed, ready, conc);
            self.set_replicas(m, desired);
        }
    }

    /// The activator's first stat: a model with waiting requests and no pod gets pods at once.
    fn knative_wake(&mut self, m: usize) {
        if self.pods_placed[m] + self.pending[m] > 0 {
            return;
        }
        let observed = self.knative_observed(m);
        if observed <= 0.0 {
            return;
        }
        let conc = self.p.serving.pod_concurrency.max(1);
        let want = self.kpa[m].wake(observed, conc, &self.knative);
        self.add_pending(m, want);
    }

    pub fn add_pending(&mut self, m: usize, n: u32) {
        if n == 0 {
            return;
        }
        self.pending[m] += n;
        self.pending_total += n;
        self.pending_grew = true;
        self.schedule_pods();
    }

    pub fn cancel_pending(&mut self, m: usize, n: u32) -> u32 {
        let k = n.min(self.pending[m]);
        self.pending[m] -= k;
        self.pending_total -= k;
        k
    }

    /// Places pending pods on schedulable nodes with free slots, most-allocated node first.
    pub fn schedule_pods(&mut self) {
        // One pod per model per round: pods of different models interleave, as pods created at about the
        // same time do in the kube-scheduler's queue.
        while self.pending_total > 0 {
            for m in 0..self.models {
                if self.pending[m] == 0 {
                    continue;
                }
                let mut best: Option<(usize, u32)> = None;
                for &id in &self.live {
                    let node = &self.nodes[id as usize];
                    if !node.schedulable() || node.free_slot().is_none() {
                        continue;
                    }
                    let count = node.pod_count();
                    if best.is_none_or(|(c, _)| count > c) {
                        best = Some((count, id));
                    }
                }
                let Some((_, id)) = best else {
                    return;
                };
                let Some(slot) = self.nodes[id as usize].free_slot() else {
                    return;
                };
                self.pending[m] -= 1;
                self.pending_total -= 1;
                self.place_pod(id, slot, m as u16, false);
            }
        }
    }

    fn place_pod(&mut self, id: u32, slot: usize, model: u16, warm: bool) {
        let now = self.now;
        let cloud = &self.p.cloud;
        let node = &mut self.nodes[id as usize];
        let image = *node.image_ready_at.get_or_insert(now + cloud.image_pull_s);
        let ready_at = if warm {
            now
        } else {
            image.max(now) + cloud.model_load_s
        };
        node.pods[slot] = Some(Pod {
            model,
            ready: false,
            ready_at,
            in_flight: 0,
            idle_since: now,
            terminating: false,
        });
        node.empty_since = f64::INFINITY;
        self.pods_placed[model as usize] += 1;
        if warm {
            self.pod_ready(id, slot as u8);
        } else {
            self.schedule(ready_at, Ev::PodReady(id, slot as u8));
        }
    }

    pub fn pod_ready(&mut self, id: u32, slot: u8) {
        let now = self.now;
        let node = &mut self.nodes[id as usize];
        if node.gone {
            return;
        }
        let Some(pod) = node.pods.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        if pod.ready || pod.terminating || pod.ready_at > now {
            return;
        }
        pod.ready = true;
        pod.idle_since = now;
        let m = pod.model as usize;
        self.pods_ready[m] += 1;
        self.dispatch(m);
    }

    /// Stops counting a pod as capacity; removes it now if idle, else when its last request ends.
    pub fn retire_pod(&mut self, id: u32, slot: usize) {
        let node = &mut self.nodes[id as usize];
        let Some(pod) = node.pods[slot].as_mut() else {
            return;
        };
        if !pod.terminating {
            pod.terminating = true;
            let m = pod.model as usize;
            self.pods_placed[m] -= 1;
            if pod.ready {
                self.pods_ready[m] -= 1;
            }
        }
        if self.nodes[id as usize].pods[slot].is_some_and(|p| p.in_flight == 0) {
            self.remove_pod(id, slot);
        }
    }

    fn remove_pod(&mut self, id: u32, slot: usize) {
        let now = self.now;
        let node = &mut self.nodes[id as usize];
        let Some(pod) = node.pods[slot].take() else {
            return;
        };
        if !pod.terminating {
            let m = pod.model as usize;
            self.pods_placed[m] -= 1;
            if pod.ready {
                self.pods_ready[m] -= 1;
            }
        }
        if node.pods.iter().all(Option::is_none) {
            node.empty_since = now;
        }
        self.schedule_pods();
    }

    /// Sets a model's replica count (KEDA/HPA, Knative): pending first, then idle pods, then busy pods (gracefully),
    /// newest node first.
    pub fn set_replicas(&mut self, m: usize, replicas: u32) {
        let have = self.pods_placed[m] + self.pending[m];
        if replicas > have {
            self.add_pending(m, replicas - have);
            return;
        }
        let mut excess = have - replicas;
        excess -= self.cancel_pending(m, excess);
        for busy_too in [false, true] {
            for i in (0..self.live.len()).rev() {
                if excess == 0 {
                    return;
                }
                let id = self.live[i];
                for slot in 0..self.slots() as usize {
                    if excess == 0 {
                        break;
                    }
                    let Some(pod) = self.nodes[id as usize].pods[slot] else {
                        continue;
                    };
                    if pod.model as usize == m
                        && !pod.terminating
                        && (busy_too || pod.in_flight == 0)
                    {
                        self.retire_pod(id, slot);
                        excess -= 1;
                    }
                }
            }
        }
    }

    // ----- requests -----

    pub fn arrive(&mut self, r: u32) {
        let m = self.requests[r as usize].model as usize;
        self.estimates[m].arrived(self.now);
        let cold = self.pods_ready[m] == 0 || self.cold_queued[m] > 0;
        if self.pods_ready[m] == 0 && self.cold_queued[m] == 0 {
            self.c.cold_starts += 1;
            self.cold_since[m] = self.now;
        }
        if cold {
            self.cold_queued[m] += 1;
        }
        let info = &mut self.reqs[r as usize];
        info.state = ReqState::Queued;
        info.queued_since = self.now;
        info.cold = cold;
        self.queues[m].push_back(r);
        self.queued_total += 1;
        self.dispatch(m);
        if self.pod_scaling == PodScaling::Knative {
            self.knative_wake(m);
        }
        if !self.queues[m].is_empty() {
            self.unmet_demand = true;
        }
    }

    /// A cold request of model `m` left the queue; the episode ends with the last one.
    fn cold_left(&mut self, m: usize) {
        self.cold_queued[m] -= 1;
        if self.cold_queued[m] == 0 {
            let episode = self.now - self.cold_since[m];
            self.c.longest_cold_episode_s = self.c.longest_cold_episode_s.max(episode);
        }
    }

    fn lose(&mut self, r: u32) {
        let info = &mut self.reqs[r as usize];
        info.state = ReqState::Lost;
        let iid = info.interrupted_by as usize;
        self.c.lost += 1;
        self.unresolved -= 1;
        if iid > 0
            && let Some(f) = self.c.interruptions_failed.get_mut(iid)
        {
            *f = true;
        }
    }

    fn requeue(&mut self, r: u32, interruption: u32) {
        let now = self.now;
        let (node, slot) = (
            self.reqs[r as usize].node,
            self.reqs[r as usize].slot as usize,
        );
        let m = self.requests[r as usize].model as usize;
        if let Some(pod) = self.nodes[node as usize].pods[slot].as_mut() {
            pod.in_flight = pod.in_flight.saturating_sub(1);
        }
        self.running[m] -= 1;
        self.c.requeued += 1;
        let info = &mut self.reqs[r as usize];
        info.attempt = info.attempt.saturating_add(1);
        if interruption > 0 {
            info.interrupted_by = interruption;
        }
        if info.attempt >= self.p.max_attempts {
            self.lose(r);
            return;
        }
        info.state = ReqState::Queued;
        info.queued_since = now;
        if info.cold {
            self.cold_queued[m] += 1;
        }
        self.queues[m].push_front(r);
        self.queued_total += 1;
        self.unmet_demand = true;
    }

    /// Starts queued requests of model `m` on ready pods with room, while both last.
    pub fn dispatch(&mut self, m: usize) {
        let conc = self.p.serving.pod_concurrency.max(1);
        while !self.queues[m].is_empty() && self.pods_ready[m] > 0 {
            // Find a ready pod of m with room on a schedulable node: lowest node id first (packing).
            let mut found = None;
            'search: for &id in &self.live {
                let node = &self.nodes[id as usize];
                if !node.schedulable() {
                    continue;
                }
                for (slot, pod) in node.pods.iter().enumerate() {
                    if let Some(pod) = pod
                        && pod.model as usize == m
                        && pod.ready
                        && !pod.terminating
                        && pod.in_flight < conc
                    {
                        found = Some((id, slot));
                        break 'search;
                    }
                }
            }
            let Some((id, slot)) = found else {
                return;
            };
            let Some(r) = self.queues[m].pop_front() else {
                return;
            };
            self.queued_total -= 1;
            if self.reqs[r as usize].cold {
                self.cold_left(m);
            }
            let waited =
                self.reqs[r as usize].waited + (self.now - self.reqs[r as usize].queued_since);
            if waited > self.p.deadline_s {
                self.reqs[r as usize].waited = waited;
                self.lose(r);
                continue;
            }
            self.start(r, id, slot, waited);
        }
    }

    /// Brings the requests running on node `id` up to now, at the rate they have been progressing.
    fn progress(&mut self, id: u32) {
        let now = self.now;
        let decode = self.p.serving.decode_tokens_per_s * self.nodes[id as usize].factor;
        for &r in &self.nodes[id as usize].running {
            let info = &mut self.reqs[r as usize];
            let mut dt = now - info.progress_at;
            info.progress_at = now;
            let prefill = info.prefill_left.min(dt);
            info.prefill_left -= prefill;
            dt -= prefill;
            info.decode_left = (info.decode_left - dt * decode).max(0.0);
        }
    }

    /// Sets node `id`'s sharing factor for its load now and re-schedules every request running on it.
    fn retime(&mut self, id: u32) {
        let now = self.now;
        let node = &mut self.nodes[id as usize];
        node.factor = self.p.serving.curve.factor(node.in_flight.max(1));
        let decode = self.p.serving.decode_tokens_per_s * node.factor;
        let running = std::mem::take(&mut node.running);
        for &r in &running {
            let info = &mut self.reqs[r as usize];
            info.version = info.version.wrapping_add(1);
            let at = now + info.prefill_left + info.decode_left / decode;
            let version = info.version;
            self.schedule(at, Ev::Complete(r, version));
        }
        self.nodes[id as usize].running = running;
    }

    fn start(&mut self, r: u32, id: u32, slot: usize, waited: f64) {
        let req = self.requests[r as usize];
        self.progress(id);
        let node = &mut self.nodes[id as usize];
        node.in_flight += 1;
        node.running.push(r);
        if let Some(pod) = node.pods[slot].as_mut() {
            pod.in_flight += 1;
        }
        let m = req.model as usize;
        self.running[m] += 1;
        let prefill = f64::from(req.prompt_tokens) / self.p.serving.prefill_tokens_per_s;
        let info = &mut self.reqs[r as usize];
        info.state = ReqState::Running;
        info.started_at = self.now;
        info.waited = waited;
        info.node = id;
        info.slot = slot as u8;
        info.prefill_left = prefill;
        info.decode_left = f64::from(req.generated_tokens);
        info.progress_at = self.now;
        self.retime(id);
    }

    pub fn complete(&mut self, r: u32, version: u16) {
        let info = self.reqs[r as usize];
        if info.state != ReqState::Running || info.version != version {
            return;
        }
        let now = self.now;
        let m = self.requests[r as usize].model as usize;
        let (id, slot) = (info.node, info.slot as usize);
        self.progress(id);
        self.reqs[r as usize].state = ReqState::Done;
        self.unresolved -= 1;
        self.running[m] -= 1;
        self.c.completed += 1;
        self.c.delays.push(info.waited as f32);
        if info.cold {
            self.c.delays_cold.push(info.waited as f32);
        } else {
            self.c.delays_warm.push(info.waited as f32);
        }
        let took = now - info.started_at;
        self.estimates[m].completed(now, took);
        let node = &mut self.nodes[id as usize];
        node.in_flight -= 1;
        if let Some(pos) = node.running.iter().position(|x| *x == r) {
            node.running.swap_remove(pos);
        }
        if node.in_flight == 0 {
            node.idle_since = now;
        }
        let mut remove = false;
        if let Some(pod) = node.pods[slot].as_mut() {
            pod.in_flight -= 1;
            if pod.in_flight == 0 {
                pod.idle_since = now;
                remove = pod.terminating;
            }
        }
        self.retime(id);
        if remove {
            self.remove_pod(id, slot);
        }
        self.dispatch(m);
    }

    /// Requests still queued when the run ends are lost.
    pub fn finish(&mut self) {
        for m in 0..self.models {
            while let Some(r) = self.queues[m].pop_front() {
                self.queued_total -= 1;
                if self.reqs[r as usize].cold {
                    self.cold_left(m);
                }
                self.lose(r);
            }
        }
        let live = self.live.clone();
        for id in live {
            self.end_node(id, false);
        }
    }

    // ----- Auto Scaling groups -----

    /// Instances of a group that are alive (launching, ready, or under notice).
    pub fn asg_instances(&self, pool: usize) -> u32 {
        self.live
            .iter()
            .filter(|id| self.nodes[**id as usize].pool as usize == pool)
            .count() as u32
    }

    /// Launches instances until the group holds its desired capacity (unless it is backing off).
    pub fn asg_reconcile(&mut self, pool: usize) {
        let Some(asg) = self.asgs.get(pool) else {
            return;
        };
        if self.now < asg.retry_at {
            return;
        }
        let (desired, spot) = (asg.desired.min(asg.max), asg.spot);
        let have = self.asg_instances(pool);
        for _ in have..desired {
            self.launch(pool as u8, spot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scenario;
    use crate::workload::Request;

    fn params(failure_probability: f64) -> (ClusterParams, Workload) {
        let workload = Workload {
            requests: vec![Request {
                at: 10_000.0,
                model: 0,
                prompt_tokens: 0,
                generated_tokens: 10,
            }],
            models: vec!["m".into()],
            horizon_s: 10_000.0,
            description: "one late request".into(),
        };
        let mut p = Scenario::new(workload.clone(), 1).cluster;
        p.cloud.interruption_rate_per_hour = 0.0;
        p.cloud.capacity_failure_probability = failure_probability;
        (p, workload)
    }

    #[test]
    fn a_removal_while_a_fresh_billed_node_of_the_pool_runs_is_a_swap() {
        let (p, w) = params(0.0);
        let mut c = Cluster::new(&p, &w, 1, PodScaling::Knative);
        let a = c.launch(0, true);
        c.now = 100.0;
        let b = c.launch(0, true);
        // B was launched exactly the billing minimum (60 s) before: not fresh.
        c.now = 160.0;
        c.end_node(a, true);
        assert_eq!(c.c.swaps, 0);
        let fresh = c.launch(0, true);
        c.now = 200.0;
        c.end_node(b, true);
        assert_eq!(c.c.swaps, 1, "the node launched 40 s before is fresh");
        // A fresh node in another pool does not make a swap; neither does a removal not by the
        // policy.
        let other = c.launch(1, false);
        c.now = 220.0;
        let d = c.launch(0, true);
        c.now = 230.0;
        c.end_node(fresh, false);
        assert_eq!(c.c.swaps, 1);
        c.end_node(d, true);
        assert_eq!(c.c.swaps, 1, "only the other pool's node is fresh");
        c.end_node(other, true);
        assert_eq!(
            (c.c.swaps, c.c.on_demand_launches, c.c.scale_downs),
            (1, 1, 4)
        );
    }

    #[test]
    fn a_launch_that_fails_is_not_billed_and_makes_no_swap() {
        let (p, w) = params(1.0);
        let mut c = Cluster::new(&p, &w, 1, PodScaling::Knative);
        // On-demand launches never fail; the Spot one fails for lack of capacity.
        let kept = c.launch(0, false);
        c.now = 100.0;
        let failing = c.launch(0, true);
        assert!(c.nodes[kept as usize].billed && !c.nodes[failing as usize].billed);
        c.now = 110.0;
        c.end_node(kept, true);
        assert_eq!(c.c.swaps, 0);
        assert_eq!(c.c.on_demand_launches, 1);
    }
}
