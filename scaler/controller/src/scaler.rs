//! The decision loop: wait for a change (or a policy deadline), observe, decide, act.
//!
//! # Expected flow
//! Watchers, the queue poller and the group poller put what they see into [`Inputs`] and call
//! [`Inputs::changed`]; the loop wakes at once, builds the core snapshot from everything cached (no API
//! call on this path), decides, and acts. After a pass that changed a group it describes the groups
//! again before the next decision, so it never decides twice on the same stale desired capacity.
//! Without changes it wakes at the next policy deadline (an idle window or a launch timeout running
//! out), and at least every `resync_s`.
//!
//! Only the leader acts; a follower keeps its caches warm so it can take over at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::DynamicObject;
use kube::runtime::reflector::Store;
use tokio::sync::{Notify, watch};
use zerospot_core::{Action, NodeState, decide};
use zerospot_effects::act::{Outcome, action_name};
use zerospot_effects::{
    Actuator, AutoScaling, Autoscaler, Cluster, Group, Memory, Published, QueueDepth, ScalerConfig,
    World, observe,
};

use crate::metrics::{ActionLabels, DecisionLabels, Metrics, PoolLabels};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the watchers and pollers have seen, shared with the loop.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Auto Scaling groups as last described.
    pub groups: Mutex<Vec<Group>>,
    /// Whether the groups have been described at least once.
    pub groups_synced: AtomicBool,
    /// Queue depth per model.
    pub queues: Mutex<HashMap<String, QueueDepth>>,
    /// Spot capacity failures per pool.
    pub capacity_failures: Mutex<HashMap<String, Vec<DateTime<Utc>>>>,
    /// The dispatcher's published estimates as last read (the `demand.json` key of the ConfigMap
    /// `zerospot-demand`); `None` while it is absent or not read yet.
    pub published_demand: Mutex<Option<String>>,
    wake: Notify,
    refresh_groups: Notify,
    first_change: Mutex<Option<Instant>>,
}

impl Inputs {
    /// Something relevant changed: wake the loop (changes coalesce).
    pub fn changed(&self) {
        lock(&self.first_change).get_or_insert_with(Instant::now);
        self.wake.notify_one();
    }

    /// Ask the group poller to describe the groups now.
    pub fn refresh_groups(&self) {
        self.refresh_groups.notify_one();
    }

    /// Wait until someone asks for a group refresh.
    pub async fn refresh_requested(&self) {
        self.refresh_groups.notified().await;
    }

    /// Stores described groups; a change wakes the loop.
    pub fn set_groups(&self, groups: Vec<Group>) {
        let mut current = lock(&self.groups);
        let changed = *current != groups;
        *current = groups;
        drop(current);
        self.groups_synced.store(true, Ordering::Release);
        if changed {
            self.changed();
        }
    }

    /// Stores the dispatcher's published record (`None`: absent); a change wakes the loop.
    pub fn set_published_demand(&self, record: Option<String>) {
        let mut current = lock(&self.published_demand);
        let changed = *current != record;
        *current = record;
        drop(current);
        if changed {
            self.changed();
        }
    }

    /// Stores a queue depth; a change wakes the loop.
    pub fn set_queue(&self, model: &str, depth: QueueDepth) {
        let previous = lock(&self.queues).insert(model.to_owned(), depth);
        if previous != Some(depth) {
            self.changed();
        }
    }
}

/// The Kubernetes caches the loop reads (kube-runtime reflector stores).
#[derive(Debug, Clone)]
pub struct Caches {
    /// Nodes of the pools.
    pub nodes: Store<Node>,
    /// Knative pods.
    pub pods: Store<Pod>,
    /// Knative PodAutoscalers.
    pub autoscalers: Store<DynamicObject>,
}

/// The loop and everything it acts through.
pub struct Scaler {
    /// Configuration.
    pub config: ScalerConfig,
    /// Auto Scaling.
    pub aws: Arc<dyn AutoScaling>,
    /// Kubernetes.
    pub cluster: Arc<dyn Cluster>,
    /// Inputs from watchers and pollers.
    pub inputs: Arc<Inputs>,
    /// Kubernetes caches.
    pub caches: Caches,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Log actions instead of taking them.
    pub dry_run: bool,
    /// What observe() remembers.
    pub memory: Memory,
}

impl std::fmt::Debug for Scaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scaler")
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

/// What one pass did, for tests and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    /// Actions taken (or logged, in a dry run).
    pub actions: Vec<Action>,
    /// The next policy deadline.
    pub next_deadline: Option<DateTime<Utc>>,
}

impl Scaler {
    /// One pass: observe from the caches, decide, act.
    pub async fn pass(&mut self, now: DateTime<Utc>) -> Pass {
        let started = Instant::now();
        let first_change = lock(&self.inputs.first_change).take();
        let groups = lock(&self.inputs.groups).clone();
        let queues = lock(&self.inputs.queues).clone();
        let failures = lock(&self.inputs.capacity_failures).clone();
        let published = lock(&self.inputs.published_demand).clone();
        let nodes = self.caches.nodes.state();
        let pods = self.caches.pods.state();
        let autoscalers: Vec<Autoscaler> = self
            .caches
            .autoscalers
            .state()
            .iter()
            .filter_map(|o| serde_json::to_value(o.as_ref()).ok())
            .filter_map(|v| Autoscaler::from_json(&v))
            .collect();
        let node_refs: Vec<&Node> = nodes.iter().map(AsRef::as_ref).collect();
        let pod_refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
        let world = World {
            groups: &groups,
            nodes: &node_refs,
            pods: &pod_refs,
            autoscalers: &autoscalers,
            queues: &queues,
            capacity_failures: &failures,
            published_demand: published
                .as_deref()
                .map_or(Published::Missing, Published::Text),
        };
        let observation = observe(&self.config, &world, &mut self.memory, now);
        for note in &observation.notes {
            tracing::debug!(note, "observation");
        }
        let decision = decide(&observation.snapshot, &observation.config, now);
        if let Some(t) = first_change {
            self.metrics
                .decision_latency
                .observe(t.elapsed().as_secs_f64());
        }
        self.record_decision(&decision, &observation);

        let actuator = Actuator {
            aws: self.aws.as_ref(),
            cluster: self.cluster.as_ref(),
            dry_run: self.dry_run,
            eviction_grace_s: self.config.controller.eviction_grace_s,
        };
        let report = actuator
            .apply(&decision, &groups, &observation.snapshot.nodes, now)
            .await;
        for applied in &report.applied {
            let outcome = match &applied.outcome {
                Outcome::Done => "done",
                Outcome::DryRun => "dry_run",
                Outcome::Deferred(_) => "deferred",
                Outcome::Skipped(_) => "skipped",
                Outcome::Failed(e) => {
                    let (api, kind) = e.labels();
                    self.metrics
                        .api_error(api, action_name(&applied.action), kind);
                    "failed"
                }
            };
            self.metrics
                .actions
                .get_or_create(&ActionLabels {
                    action: action_name(&applied.action).into(),
                    outcome: outcome.into(),
                })
                .inc();
        }
        for e in &report.event_failures {
            self.metrics
                .api_error("kubernetes", e.call, e.kind.as_str());
        }
        if report.changed_groups() {
            self.refresh_groups_now().await;
        }
        self.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        Pass {
            actions: report.applied.into_iter().map(|a| a.action).collect(),
            next_deadline: observation.next_deadline,
        }
    }

    fn record_decision(
        &self,
        decision: &zerospot_core::Decision,
        observation: &zerospot_effects::Observation,
    ) {
        let outcome = if decision.actions.is_empty() {
            "none"
        } else if decision
            .actions
            .iter()
            .any(|a| matches!(a, Action::SetDesiredCapacity { from, to, .. } if to > from))
        {
            "scale_out"
        } else if decision
            .actions
            .iter()
            .any(|a| matches!(a, Action::Terminate { .. }))
        {
            if decision.pools.iter().any(|p| p.unusable_nodes > 0) {
                "replace"
            } else {
                "scale_in"
            }
        } else if decision
            .actions
            .iter()
            .any(|a| matches!(a, Action::SetDesiredCapacity { .. }))
        {
            "scale_in"
        } else if decision
            .actions
            .iter()
            .all(|a| matches!(a, Action::SetProtection { .. }))
        {
            "protect"
        } else {
            "replace"
        };
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                outcome: outcome.into(),
            })
            .inc();
        if !decision.actions.is_empty() {
            tracing::info!(
                outcome,
                pools = %serde_json::to_string(&decision.pools).unwrap_or_default(),
                actions = decision.actions.len(),
                "decision"
            );
        }
        for plan in &decision.pools {
            let labels = PoolLabels {
                pool: plan.pool.clone(),
            };
            self.metrics
                .nodes_desired
                .get_or_create(&labels)
                .set(i64::from(plan.desired));
            let present = observation
                .snapshot
                .nodes
                .iter()
                .filter(|n| n.pool == plan.pool);
            let (all, ready) = present.fold((0i64, 0i64), |(a, r), n| {
                (a + 1, r + i64::from(n.state == NodeState::GpuReady))
            });
            self.metrics.nodes_actual.get_or_create(&labels).set(all);
            self.metrics.nodes_ready.get_or_create(&labels).set(ready);
        }
    }

    /// Describes the groups now (after a change we made), so the next decision sees it.
    pub async fn refresh_groups_now(&self) {
        let names: Vec<String> = self
            .config
            .pools
            .iter()
            .map(|p| p.asg_name.clone())
            .collect();
        match self.aws.describe_groups(&names).await {
            Ok(groups) => {
                *lock(&self.inputs.groups) = groups;
            }
            Err(e) => {
                self.metrics.api_error("aws", e.call, e.kind.as_str());
                tracing::warn!(error = %e, "describing the groups after a change failed; the poller retries");
                self.inputs.refresh_groups();
            }
        }
    }

    /// Runs passes until `shutdown` resolves: on each change, at policy deadlines, and every
    /// `resync_s`; only while `leader` is true, and only once the caches are `ready`.
    pub async fn run(
        mut self,
        mut leader: watch::Receiver<bool>,
        ready: impl Fn() -> bool + Send,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let resync = Duration::from_secs(self.config.controller.resync_s);
        let mut next: Option<DateTime<Utc>> = None;
        let mut election_open = true;
        loop {
            let until_deadline = next
                .map(|d| {
                    (d - Utc::now()).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(5)
                })
                .unwrap_or(resync)
                .min(resync);
            tokio::select! {
                () = &mut shutdown => break,
                () = self.inputs.wake.notified() => {}
                () = tokio::time::sleep(until_deadline) => {}
                changed = leader.changed(), if election_open => {
                    if changed.is_err() {
                        election_open = false;
                        tracing::warn!("leader election stopped; acting on the last known leadership");
                    }
                }
            }
            let leads = *leader.borrow();
            self.metrics.leader.set(i64::from(leads));
            if !leads || !ready() || !self.inputs.groups_synced.load(Ordering::Acquire) {
                continue;
            }
            let pass = self.pass(Utc::now()).await;
            next = pass.next_deadline;
        }
        tracing::info!("decision loop stopped");
    }
}
