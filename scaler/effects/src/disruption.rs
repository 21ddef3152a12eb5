//! Disruptions: what to do, once, with an event that says AWS is taking an instance away (or that
//! capacity should be re-checked). The Lambda functions call this; anything holding a parsed
//! [`zerospot_core::event::ParsedEvent`] can.
//!
//! # Expected flow
//! 1. **Read the world** once, concurrently: the pools' Auto Scaling groups, the Nodes, the models' pods
//!    and PodAutoscalers ([`Inventory`]), the queue depths and recent Spot capacity failures.
//! 2. **Mark** each affected instance's Node (found by `spec.providerID`): cordon it, taint it
//!    [`names::TAINT_INTERRUPTED`]`=true:NoSchedule` (not for a rebalance recommendation: its running
//!    requests may finish), annotate [`names::ANNOTATION_DISRUPTION`] with the kind and
//!    [`names::ANNOTATION_DEADLINE`] with when the instance goes, when known. Only what is missing is
//!    written; the in-memory copy of the Node is updated the same way, so nothing is read twice.
//! 3. **One pass of the core policy**: [`crate::observe()`] reads the marks as the node's
//!    [`zerospot_core::Disruption`], [`zerospot_core::decide`] asks for the drain, the replacement (an
//!    interrupted node holds a place in the group, so desired capacity goes up at once when demand needs
//!    the node) and the on-demand fallback after Spot capacity failures, and [`crate::Actuator`] carries
//!    it out. No capacity change, cordon or drain is written here a second time.
//! 4. **Finish the drain** when a deadline is near (a Spot warning: two minutes): evictions that a
//!    PodDisruptionBudget refused are tried again every [`Options::drain_poll`]; [`Options::deletion_margin`]
//!    before the deadline (or before the invocation's budget runs out) what is still there is deleted,
//!    the last resort, because the instance dies anyway. Evicted pods get a grace period that ends
//!    before the deadline. For an Auto Scaling terminate lifecycle action the function waits until the
//!    node is empty, sends a heartbeat every [`Options::heartbeat_every`], and then completes the action
//!    with `CONTINUE`.
//!
//! # Guarantees
//! - **Idempotent**: the same event twice writes nothing the second time (marks are compared first; the
//!   pass decides on the marked world, and deciding again after a decision was applied yields no
//!   actions).
//! - Only instances of configured pools are touched; an event about any other instance is ignored
//!   with a reason.
//! - A failed call is an [`Error`] that says whether trying the event again can help; trying again is
//!   always safe.
//! - Never a panic on input.
//!
//! # Caveats
//! - The core removes a disrupted node with nothing in flight at once (a rebalance recommendation
//!   included): the node's pods are evicted and its instance terminated, and demand relaunches a
//!   node. A busy node is cordoned and replaced while it finishes.
//! - Memory between passes (when an instance was first seen) is not kept: launch timeouts are the
//!   companion scaler's business.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod, Taint};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use serde::Serialize;
use thiserror::Error;
use zerospot_core::event::{Event, LifecycleAction, ParsedEvent};
use zerospot_core::{Action, Decision, Disruption, NodeState, decide};

use crate::act::{Actuator, Outcome, action_name};
use crate::aws::{AutoScaling, AwsError, AwsErrorKind, LifecycleRef, LifecycleResult, Queues};
use crate::cluster::{ActionEvent, Cluster, KubeError, KubeErrorKind, PodRef};
use crate::config::{ScalerConfig, names};
use crate::observe::{Autoscaler, Group, Memory, QueueDepth, World, instance_id, observe};

/// How long a Spot instance lives after its interruption warning.
pub const SPOT_NOTICE: Duration = Duration::from_secs(120);

/// The lists a pass needs from Kubernetes that [`Cluster`] does not offer (the companion scaler keeps
/// them in watch caches; a function reads them once per event).
#[async_trait]
pub trait Inventory: Send + Sync {
    /// Every Node.
    async fn nodes(&self) -> Result<Vec<KubeNode>, KubeError>;
    /// Pods of Knative Services (label `serving.knative.dev/service`), in all namespaces.
    async fn model_pods(&self) -> Result<Vec<Pod>, KubeError>;
    /// Knative PodAutoscalers, in all namespaces.
    async fn autoscalers(&self) -> Result<Vec<Autoscaler>, KubeError>;
    /// Deletes a Node object (its instance is gone).
    async fn delete_node(&self, name: &str) -> Result<(), KubeError>;
}

/// [`Inventory`] over kube-rs. RBAC: `list` on `nodes`, `pods` and
/// `podautoscalers.autoscaling.internal.knative.dev`, `delete` on `nodes`.
#[derive(Clone)]
pub struct KubeInventory {
    client: kube::Client,
}

impl std::fmt::Debug for KubeInventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeInventory").finish_non_exhaustive()
    }
}

impl KubeInventory {
    /// Over this client.
    pub fn new(client: kube::Client) -> Self {
        KubeInventory { client }
    }
}

fn kube_error(call: &'static str, e: kube::Error) -> KubeError {
    let kind = match &e {
        kube::Error::Api(status) => match status.code {
            404 => KubeErrorKind::NotFound,
            409 => KubeErrorKind::Conflict,
            429 => KubeErrorKind::TooManyRequests,
            401 | 403 => KubeErrorKind::Forbidden,
            500..=599 => KubeErrorKind::Unavailable,
            _ => KubeErrorKind::Other,
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => KubeErrorKind::Unavailable,
        _ => KubeErrorKind::Other,
    };
    KubeError::new(call, kind, e.to_string())
}

#[async_trait]
impl Inventory for KubeInventory {
    async fn nodes(&self) -> Result<Vec<KubeNode>, KubeError> {
        Api::<KubeNode>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .map_err(|e| kube_error("list nodes", e))
    }

    async fn model_pods(&self) -> Result<Vec<Pod>, KubeError> {
        Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default().labels(names::LABEL_KNATIVE_SERVICE))
            .await
            .map(|l| l.items)
            .map_err(|e| kube_error("list model pods", e))
    }

    async fn autoscalers(&self) -> Result<Vec<Autoscaler>, KubeError> {
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(
                "autoscaling.internal.knative.dev",
                "v1alpha1",
                "PodAutoscaler",
            ),
            "podautoscalers",
        );
        let list = Api::<DynamicObject>::all_with(self.client.clone(), &resource)
            .list(&ListParams::default().labels(names::LABEL_KNATIVE_SERVICE))
            .await
            .map_err(|e| kube_error("list podautoscalers", e))?;
        Ok(list
            .items
            .iter()
            .filter_map(|o| serde_json::to_value(o).ok())
            .filter_map(|v| Autoscaler::from_json(&v))
            .collect())
    }

    async fn delete_node(&self, name: &str) -> Result<(), KubeError> {
        match Api::<KubeNode>::all(self.client.clone())
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(kube_error("delete node", e)),
        }
    }
}

/// Settings of a [`Responder`]. Each default says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Log every write instead of making it.
    pub dry_run: bool,
    /// Stop waiting for refused evictions this long before the deadline and delete what is left.
    /// Default 15 s: a pod deletion with a short grace period, and the dispatcher's release of that node's
    /// requests (it watches for the taint), take a few seconds; the rest of the two minutes is for the
    /// PodDisruptionBudget to allow the eviction.
    pub deletion_margin: Duration,
    /// How often a drain's progress is checked. Default 1 s (a `list pods` per second of one node).
    pub drain_poll: Duration,
    /// How often a lifecycle action's heartbeat is sent while its drain runs. Default 60 s: far inside
    /// Auto Scaling's shortest heartbeat timeout (30 s minimum, 3600 s default) only when the hook keeps
    /// the default; set it below the hook's `HeartbeatTimeout`.
    pub heartbeat_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dry_run: false,
            deletion_margin: Duration::from_secs(15),
            drain_poll: Duration::from_secs(1),
            heartbeat_every: Duration::from_secs(60),
        }
    }
}

/// Which of a decision's actions a pass carries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// All of them.
    Full,
    /// Only desired-capacity increases (the queue-depth function: scale-in belongs to the scaler's
    /// drain logic).
    ScaleUpOnly,
}

/// Why an event could not be handled.
#[derive(Debug, Clone, Error)]
pub enum Error {
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// A Kubernetes call failed.
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// Some of the decision's actions failed (the others were carried out).
    #[error("{failed} of the decision's actions failed, first: {first}")]
    Actions {
        /// How many failed.
        failed: usize,
        /// The first failure.
        first: String,
    },
}

impl Error {
    /// Whether handling the same event again can succeed (throttling, an API down, a conflict); false
    /// for refusals that will not change by themselves (permissions, invalid requests).
    pub fn retryable(&self) -> bool {
        match self {
            Error::Aws(e) => !matches!(e.kind, AwsErrorKind::Denied | AwsErrorKind::Invalid),
            Error::Kube(e) => e.kind != KubeErrorKind::Forbidden,
            Error::Actions { .. } => true,
        }
    }
}

/// How one action of the pass went, for logs and the function's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionSummary {
    /// `set_desired_capacity`, `drain`, ...
    pub action: &'static str,
    /// The instance or group acted on.
    pub target: String,
    /// `done`, `dry_run`, `deferred: ...`, `skipped: ...`, `failed: ...`.
    pub outcome: String,
}

/// What handling an event did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Handled {
    /// The event's kind (`spot_interruption_warning`, ...).
    pub kind: String,
    /// The instances it named that belong to a configured pool.
    pub instances: Vec<String>,
    /// Why nothing was done, when nothing was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
    /// Nodes this event marked (cordon, taint, annotations written now).
    pub marked: Vec<String>,
    /// The pass's actions and how each went.
    pub actions: Vec<ActionSummary>,
    /// Pods deleted as the last resort before a deadline.
    pub deleted_pods: Vec<String>,
    /// Node objects removed (their instance is gone).
    pub deleted_nodes: Vec<String>,
    /// Lifecycle heartbeats sent.
    pub heartbeats: u32,
    /// Whether a lifecycle action was completed (`CONTINUE`).
    pub lifecycle_completed: bool,
    /// Set when the event must be handled again later (a launching node not ready yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_later: Option<String>,
}

/// What one pass saw and did.
#[derive(Debug, Clone)]
pub struct PassResult {
    /// The decision (all of it, whatever the scope).
    pub decision: Decision,
    /// The actions carried out and how each went.
    pub actions: Vec<ActionSummary>,
    /// The core's nodes as observed before acting.
    pub nodes: Vec<zerospot_core::Node>,
}

/// Everything observed for one event.
#[derive(Debug, Clone, Default)]
struct Seen {
    groups: Vec<Group>,
    nodes: Vec<KubeNode>,
    pods: Vec<Pod>,
    autoscalers: Vec<Autoscaler>,
    queues: HashMap<String, QueueDepth>,
    failures: HashMap<String, Vec<DateTime<Utc>>>,
}

/// What an event asks for.
#[derive(Debug, Clone)]
enum Plan {
    Disrupt {
        instances: Vec<String>,
        disruption: Disruption,
        deadline: Option<DateTime<Utc>>,
        lifecycle: Option<LifecycleAction>,
    },
    Forget(String),
    CapacityFailure {
        group: String,
        at: DateTime<Utc>,
    },
    LaunchReady(LifecycleAction),
    Reconcile,
    Ignore(String),
}

fn plan(event: &ParsedEvent, now: DateTime<Utc>) -> Plan {
    let at = event.meta.time.filter(|t| *t <= now).unwrap_or(now);
    let disrupt = |instances: Vec<String>, disruption, deadline| Plan::Disrupt {
        instances,
        disruption,
        deadline,
        lifecycle: None,
    };
    match &event.event {
        Event::SpotInterruptionWarning { instance_id, .. } => disrupt(
            vec![instance_id.clone()],
            Disruption::SpotInterruption,
            chrono::Duration::from_std(SPOT_NOTICE)
                .ok()
                .map(|notice| at + notice),
        ),
        Event::RebalanceRecommendation { instance_id } => disrupt(
            vec![instance_id.clone()],
            Disruption::RebalanceRecommendation,
            None,
        ),
        Event::ScheduledChange {
            instance_ids,
            start_time,
            ..
        } => disrupt(
            instance_ids.clone(),
            Disruption::ScheduledChange,
            start_time.as_deref().and_then(parse_time),
        ),
        Event::InstanceStateChange { instance_id, state } => match state.as_str() {
            "stopping" | "shutting-down" => {
                disrupt(vec![instance_id.clone()], Disruption::Stopping, None)
            }
            "stopped" | "terminated" => Plan::Forget(instance_id.clone()),
            _ => Plan::Reconcile,
        },
        Event::LifecycleTerminate(action) => Plan::Disrupt {
            instances: vec![action.instance_id.clone()],
            disruption: Disruption::Terminating,
            deadline: None,
            lifecycle: Some(action.clone()),
        },
        Event::LifecycleLaunch(action) => Plan::LaunchReady(action.clone()),
        Event::LaunchUnsuccessful {
            asg_name,
            capacity_shortage: true,
            ..
        } => Plan::CapacityFailure {
            group: asg_name.clone(),
            at,
        },
        Event::LaunchUnsuccessful { .. }
        | Event::AlarmStateChange { .. }
        | Event::ScheduledEvent { .. } => Plan::Reconcile,
        Event::Ignored { reason } => Plan::Ignore(reason.clone()),
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            // AWS Health writes `Thu, 01 Dec 2026 00:00:00 GMT` in some documents.
            DateTime::parse_from_rfc2822(s.trim())
                .ok()
                .map(|t| t.with_timezone(&Utc))
        })
}

fn kind_name(event: &Event) -> String {
    serde_json::to_value(event)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

/// The marks a disrupted node must carry, and which are missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct MissingMarks {
    cordon: bool,
    taint: bool,
    annotations: Vec<(&'static str, String)>,
}

impl MissingMarks {
    fn is_empty(&self) -> bool {
        !self.cordon && !self.taint && self.annotations.is_empty()
    }
}

fn node_annotation<'n>(node: &'n KubeNode, key: &str) -> Option<&'n str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn interrupted_taint() -> Taint {
    Taint {
        key: names::TAINT_INTERRUPTED.into(),
        value: Some("true".into()),
        effect: "NoSchedule".into(),
        time_added: None,
    }
}

fn missing_marks(
    node: &KubeNode,
    disruption: Disruption,
    deadline: Option<DateTime<Utc>>,
) -> MissingMarks {
    let spec = node.spec.as_ref();
    let cordon = !spec.and_then(|s| s.unschedulable).unwrap_or(false);
    let has_taint = spec
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == names::TAINT_INTERRUPTED));
    let current = node_annotation(node, names::ANNOTATION_DISRUPTION).and_then(|v| {
        serde_json::from_value::<Disruption>(serde_json::Value::String(v.trim().to_owned())).ok()
    });
    // A rebalance recommendation never replaces a stronger word; anything replaces a rebalance.
    let kind = match current {
        Some(c) if disruption == Disruption::RebalanceRecommendation => c,
        Some(c) if c != Disruption::RebalanceRecommendation => c,
        _ => disruption,
    };
    let mut annotations = Vec::new();
    if current != Some(kind) {
        annotations.push((names::ANNOTATION_DISRUPTION, kind.as_str().to_owned()));
    }
    if let Some(deadline) = deadline {
        let known = node_annotation(node, names::ANNOTATION_DEADLINE).and_then(parse_time);
        if known.is_none_or(|k| deadline < k) {
            annotations.push((
                names::ANNOTATION_DEADLINE,
                deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ));
        }
    }
    MissingMarks {
        cordon,
        taint: kind.needs_drain() && !has_taint,
        annotations,
    }
}

fn apply_marks(node: &mut KubeNode, marks: &MissingMarks) {
    let spec = node.spec.get_or_insert_with(Default::default);
    if marks.cordon {
        spec.unschedulable = Some(true);
    }
    if marks.taint {
        spec.taints
            .get_or_insert_with(Vec::new)
            .push(interrupted_taint());
    }
    let annotations = node.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in &marks.annotations {
        annotations.insert((*k).to_owned(), v.clone());
    }
}

fn summarize(action: &Action, outcome: &Outcome) -> ActionSummary {
    let target = match action {
        Action::SetProtection { instance_id, .. }
        | Action::Cordon { instance_id, .. }
        | Action::Drain { instance_id, .. }
        | Action::Terminate { instance_id, .. } => instance_id.clone(),
        Action::SetDesiredCapacity {
            asg_name, from, to, ..
        } => {
            format!("{asg_name} {from}->{to}")
        }
    };
    let outcome = match outcome {
        Outcome::Done => "done".to_owned(),
        Outcome::DryRun => "dry_run".to_owned(),
        Outcome::Deferred(why) => format!("deferred: {why}"),
        Outcome::Skipped(why) => format!("skipped: {why}"),
        Outcome::Failed(e) => format!("failed: {e}"),
    };
    ActionSummary {
        action: action_name(action),
        target,
        outcome,
    }
}

/// Handles events through the effects layer's traits. Cheap to build per event.
pub struct Responder<'a> {
    /// The scaler's configuration (pools, models, timing).
    pub config: &'a ScalerConfig,
    /// Auto Scaling.
    pub aws: &'a dyn AutoScaling,
    /// SQS depths.
    pub queues: &'a dyn Queues,
    /// Kubernetes writes.
    pub cluster: &'a dyn Cluster,
    /// Kubernetes lists.
    pub inventory: &'a dyn Inventory,
    /// Settings.
    pub options: Options,
}

impl std::fmt::Debug for Responder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The tokio instant `d` after now, saturating.
fn after(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d).unwrap_or(now)
}

impl Responder<'_> {
    /// Handles one event at `now` within `budget` (the time left in the invocation). See the module
    /// docs for what each kind does.
    pub async fn handle(
        &self,
        event: &ParsedEvent,
        now: DateTime<Utc>,
        budget: Duration,
    ) -> Result<Handled, Error> {
        let budget_end = after(budget.saturating_sub(Duration::from_secs(1)));
        let mut handled = Handled {
            kind: kind_name(&event.event),
            ..Handled::default()
        };
        let plan = plan(event, now);
        if let Plan::Ignore(reason) = plan {
            tracing::info!(kind = handled.kind, reason, "event ignored");
            handled.ignored = Some(reason);
            return Ok(handled);
        }
        let mut seen = self.read_world(now, Scope::Full).await?;
        match plan {
            Plan::Ignore(_) => {}
            Plan::Reconcile => {
                let pass = self.pass(&seen, now, Scope::Full, None).await?;
                handled.actions = pass.actions;
            }
            Plan::CapacityFailure { group, at } => {
                if let Some(pool) = self.config.pools.iter().find(|p| p.asg_name == group) {
                    let list = seen.failures.entry(pool.name.clone()).or_default();
                    if !list.contains(&at) {
                        list.push(at);
                    }
                    let pass = self.pass(&seen, now, Scope::Full, None).await?;
                    handled.actions = pass.actions;
                } else {
                    handled.ignored = Some(format!("group {group} is not a zerospot pool's"));
                }
            }
            Plan::Forget(instance) => {
                self.forget(&mut seen, &instance, &mut handled).await?;
                let pass = self.pass(&seen, now, Scope::Full, None).await?;
                handled.actions = pass.actions;
            }
            Plan::LaunchReady(action) => {
                if !self.is_pool_group(&action.asg_name) {
                    handled.ignored = Some(format!(
                        "group {} is not a zerospot pool's",
                        action.asg_name
                    ));
                    return Ok(handled);
                }
                let pass = self.pass(&seen, now, Scope::Full, None).await?;
                handled.actions = pass.actions;
                let reference = lifecycle_ref(&action);
                let ready = pass
                    .nodes
                    .iter()
                    .any(|n| n.instance_id == action.instance_id && n.state == NodeState::GpuReady);
                if self.options.dry_run {
                    tracing::info!(
                        dry_run = true,
                        instance = action.instance_id,
                        ready,
                        "would complete or heartbeat the launch"
                    );
                } else if ready {
                    self.complete(&reference).await?;
                    handled.lifecycle_completed = true;
                } else {
                    self.aws.lifecycle_heartbeat(&reference).await?;
                    handled.heartbeats += 1;
                    handled.retry_later = Some(format!(
                        "{} is not GPU-ready yet; the launch is completed once it is",
                        action.instance_id
                    ));
                }
            }
            Plan::Disrupt {
                instances,
                disruption,
                deadline,
                lifecycle,
            } => {
                self.disrupt(
                    &mut seen,
                    &instances,
                    disruption,
                    deadline,
                    lifecycle.as_ref(),
                    now,
                    budget_end,
                    &mut handled,
                )
                .await?;
            }
        }
        Ok(handled)
    }

    fn is_pool_group(&self, group: &str) -> bool {
        self.config.pools.iter().any(|p| p.asg_name == group)
    }

    #[allow(clippy::too_many_arguments)]
    async fn disrupt(
        &self,
        seen: &mut Seen,
        instances: &[String],
        disruption: Disruption,
        deadline: Option<DateTime<Utc>>,
        lifecycle: Option<&LifecycleAction>,
        now: DateTime<Utc>,
        budget_end: tokio::time::Instant,
        handled: &mut Handled,
    ) -> Result<(), Error> {
        if let Some(action) = lifecycle
            && !self.is_pool_group(&action.asg_name)
        {
            handled.ignored = Some(format!(
                "group {} is not a zerospot pool's",
                action.asg_name
            ));
            return Ok(());
        }
        let ours: Vec<String> = instances
            .iter()
            .filter(|id| {
                seen.groups
                    .iter()
                    .any(|g| g.instances.iter().any(|i| &i.id == *id))
            })
            .cloned()
            .collect();
        if ours.is_empty() && lifecycle.is_none() {
            let reason = format!(
                "{} in no zerospot pool's group: left alone",
                instances.join(", ")
            );
            tracing::info!(kind = handled.kind, reason, "event ignored");
            handled.ignored = Some(reason);
            return Ok(());
        }
        handled.instances = ours.clone();

        // Mark each node.
        let mut drained_nodes = Vec::new();
        for id in &ours {
            let Some(node) = seen
                .nodes
                .iter_mut()
                .find(|n| instance_id(n) == Some(id.as_str()))
            else {
                tracing::info!(
                    instance = id,
                    "no Node for this instance (yet): nothing to mark"
                );
                continue;
            };
            let name = node.metadata.name.clone().unwrap_or_default();
            let marks = missing_marks(node, disruption, deadline);
            if !marks.is_empty() {
                self.mark(&name, id, &marks, disruption, deadline).await?;
                apply_marks(node, &marks);
                handled.marked.push(name.clone());
            }
            drained_nodes.push(name);
        }

        // One pass of the policy, with evictions that end before the deadline.
        let grace = self.grace(deadline, now);
        let pass = self.pass(seen, now, Scope::Full, Some(grace)).await?;
        handled.actions = pass.actions;

        // Finish the drain when the deadline (or the lifecycle action) waits for it.
        let waits = lifecycle.is_some()
            || deadline.is_some_and(|d| {
                (d - now)
                    .to_std()
                    .is_ok_and(|left| after(left) <= budget_end + self.options.deletion_margin)
            });
        if disruption.needs_drain() && waits && !self.options.dry_run {
            let give_up = match deadline.and_then(|d| (d - now).to_std().ok()) {
                Some(left) => {
                    after(left.saturating_sub(self.options.deletion_margin)).min(budget_end)
                }
                None => budget_end,
            };
            for node in &drained_nodes {
                self.finish_drain(node, lifecycle, deadline, now, give_up, handled)
                    .await?;
            }
        }
        if let Some(action) = lifecycle
            && !self.options.dry_run
        {
            self.complete(&lifecycle_ref(action)).await?;
            handled.lifecycle_completed = true;
        }
        Ok(())
    }

    /// The eviction grace period: the configured one, shortened to end before `deadline`.
    fn grace(&self, deadline: Option<DateTime<Utc>>, now: DateTime<Utc>) -> u32 {
        let configured = self.config.controller.eviction_grace_s;
        match deadline {
            None => configured,
            Some(d) => {
                let margin = i64::try_from(self.options.deletion_margin.as_secs()).unwrap_or(0);
                let left = (d - now).num_seconds() - margin;
                u32::try_from(left.max(1))
                    .unwrap_or(configured)
                    .min(configured)
            }
        }
    }

    async fn mark(
        &self,
        node: &str,
        instance: &str,
        marks: &MissingMarks,
        disruption: Disruption,
        deadline: Option<DateTime<Utc>>,
    ) -> Result<(), Error> {
        if self.options.dry_run {
            tracing::info!(dry_run = true, node, ?marks, "would mark the node");
            return Ok(());
        }
        if marks.cordon {
            self.cluster.cordon(node).await?;
        }
        if marks.taint {
            self.cluster.taint(node, &interrupted_taint()).await?;
        }
        if !marks.annotations.is_empty() {
            let annotations: Vec<(&str, Option<String>)> = marks
                .annotations
                .iter()
                .map(|(k, v)| (*k, Some(v.clone())))
                .collect();
            self.cluster.annotate(node, &annotations).await?;
        }
        tracing::info!(
            node,
            instance,
            disruption = disruption.as_str(),
            ?deadline,
            "node marked"
        );
        let group = self
            .config
            .pools
            .first()
            .map(|p| p.asg_name.clone())
            .unwrap_or_default();
        let note = match deadline {
            Some(d) => format!(
                "{instance}: {}, goes at {}; no new work here",
                disruption.as_str(),
                d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => format!("{instance}: {}; no new work here", disruption.as_str()),
        };
        let event = ActionEvent {
            node: Some(node.to_owned()),
            group,
            normal: disruption == Disruption::RebalanceRecommendation,
            reason: "Disrupted".into(),
            action: "Cordon".into(),
            note,
        };
        if let Err(e) = self.cluster.record(&event).await {
            tracing::debug!(error = %e, "could not record the event");
        }
        Ok(())
    }

    /// Waits until `node` holds no pod still to evict (for a lifecycle action: no pod at all), trying
    /// refused evictions again; at `give_up` deletes what is left.
    async fn finish_drain(
        &self,
        node: &str,
        lifecycle: Option<&LifecycleAction>,
        deadline: Option<DateTime<Utc>>,
        started: DateTime<Utc>,
        give_up: tokio::time::Instant,
        handled: &mut Handled,
    ) -> Result<(), Error> {
        let began = tokio::time::Instant::now();
        let mut next_heartbeat = after(self.options.heartbeat_every);
        loop {
            let pods = match self.cluster.evictable_pods(node).await {
                Ok(p) => p,
                Err(e) if e.kind == KubeErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let left: Vec<&PodRef> = pods
                .iter()
                .filter(|p| lifecycle.is_some() || !p.terminating)
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            let elapsed = chrono::Duration::from_std(began.elapsed()).unwrap_or_default();
            let now = started + elapsed;
            if tokio::time::Instant::now() >= give_up {
                // Last resort: the instance goes anyway.
                let grace = deadline.map_or(1, |d| {
                    u32::try_from((d - now).num_seconds().clamp(0, 5)).unwrap_or(0)
                });
                for pod in pods.iter().filter(|p| !p.terminating) {
                    self.cluster.delete_pod(pod, Some(grace)).await?;
                    tracing::warn!(
                        node,
                        pod = format!("{}/{}", pod.namespace, pod.name),
                        "deleted before the deadline: its eviction was still refused"
                    );
                    handled
                        .deleted_pods
                        .push(format!("{}/{}", pod.namespace, pod.name));
                }
                return Ok(());
            }
            let grace = self.grace(deadline, now);
            for pod in left.iter().filter(|p| !p.terminating) {
                // The Eviction API again: a PodDisruptionBudget may allow it now.
                let _ = self.cluster.evict(pod, Some(grace)).await?;
            }
            if let Some(action) = lifecycle
                && tokio::time::Instant::now() >= next_heartbeat
            {
                self.aws.lifecycle_heartbeat(&lifecycle_ref(action)).await?;
                handled.heartbeats += 1;
                next_heartbeat = after(self.options.heartbeat_every);
            }
            let wake = after(self.options.drain_poll).min(give_up);
            let wake = if lifecycle.is_some() {
                wake.min(next_heartbeat)
            } else {
                wake
            };
            tokio::time::sleep_until(wake).await;
        }
    }

    async fn complete(&self, reference: &LifecycleRef) -> Result<(), Error> {
        match self
            .aws
            .complete_lifecycle_action(reference, LifecycleResult::Continue)
            .await
        {
            Ok(()) => Ok(()),
            // "No active Lifecycle Action found": completed before (a duplicate event) or timed out.
            Err(e) if matches!(e.kind, AwsErrorKind::Invalid | AwsErrorKind::NotFound) => {
                tracing::info!(error = %e, instance = reference.instance_id, "lifecycle action already completed");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The instance is gone: its pods are deleted at once (no kubelet will confirm their end) and so is
    /// its Node, so the pods are replaced and nobody waits for the node lifecycle controller.
    async fn forget(
        &self,
        seen: &mut Seen,
        instance: &str,
        handled: &mut Handled,
    ) -> Result<(), Error> {
        let Some(pos) = seen
            .nodes
            .iter()
            .position(|n| instance_id(n) == Some(instance))
        else {
            tracing::info!(instance, "no Node left for this instance");
            return Ok(());
        };
        // A terminated instance has left its group: the node's group label says whose it was.
        let in_group = seen
            .groups
            .iter()
            .any(|g| g.instances.iter().any(|i| i.id == instance));
        let labelled = seen.nodes[pos]
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(names::LABEL_NODEGROUP))
            .is_some_and(|g| {
                self.config
                    .pools
                    .iter()
                    .any(|p| &p.name == g || &p.asg_name == g)
            });
        if !in_group && !labelled {
            handled.ignored = Some(format!("{instance} is in no zerospot pool: left alone"));
            return Ok(());
        }
        let name = seen.nodes[pos].metadata.name.clone().unwrap_or_default();
        handled.instances.push(instance.to_owned());
        if self.options.dry_run {
            tracing::info!(
                dry_run = true,
                node = name,
                "would delete the node and its pods"
            );
            return Ok(());
        }
        let pods = match self.cluster.evictable_pods(&name).await {
            Ok(p) => p,
            Err(e) if e.kind == KubeErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for pod in &pods {
            self.cluster.delete_pod(pod, Some(0)).await?;
            handled
                .deleted_pods
                .push(format!("{}/{}", pod.namespace, pod.name));
        }
        self.inventory.delete_node(&name).await?;
        handled.deleted_nodes.push(name);
        seen.nodes.remove(pos);
        Ok(())
    }

    async fn read_world(&self, now: DateTime<Utc>, scope: Scope) -> Result<Seen, Error> {
        let names: Vec<String> = self
            .config
            .pools
            .iter()
            .map(|p| p.asg_name.clone())
            .collect();
        let window = chrono::Duration::seconds(
            i64::try_from(self.config.timing.capacity_failure_window_s).unwrap_or(i64::MAX / 1000),
        );
        let since = now - window;
        let depths = futures::future::join_all(self.config.models.iter().filter_map(|m| {
            let url = m.queue_url.as_deref()?;
            Some(async move { (m.name.clone(), self.queues.depth(url).await) })
        }));
        let failures = futures::future::join_all(
            self.config
                .pools
                .iter()
                .filter(|p| p.fallback.is_some())
                .map(|p| async move {
                    (
                        p.name.clone(),
                        self.aws.capacity_failures(&p.asg_name, since).await,
                    )
                }),
        );
        let (groups, nodes, pods, autoscalers, depths, failures) = futures::join!(
            self.aws.describe_groups(&names),
            self.inventory.nodes(),
            self.inventory.model_pods(),
            self.inventory.autoscalers(),
            depths,
            failures,
        );
        let mut seen = Seen {
            groups: groups?,
            ..Seen::default()
        };
        match (nodes, pods, autoscalers) {
            (Ok(nodes), Ok(pods), Ok(autoscalers)) => {
                seen.nodes = nodes;
                seen.pods = pods;
                seen.autoscalers = autoscalers;
            }
            (n, p, a) => {
                let e = [n.err(), p.err(), a.err()].into_iter().flatten().next();
                match (scope, e) {
                    // Scaling up needs only AWS: instances without a Node count as launching.
                    (Scope::ScaleUpOnly, Some(e)) => {
                        tracing::warn!(error = %e, "Kubernetes unreadable: deciding from AWS alone");
                    }
                    (_, Some(e)) => return Err(e.into()),
                    (_, None) => {}
                }
            }
        }
        for (model, depth) in depths {
            seen.queues.insert(model, depth?);
        }
        for (pool, list) in failures {
            match list {
                Ok(list) => {
                    seen.failures.insert(pool, list);
                }
                // Without the history the pool is simply not constrained; the event itself still counts.
                Err(e) => tracing::warn!(error = %e, pool, "capacity failures unreadable"),
            }
        }
        Ok(seen)
    }

    /// Reads the world and makes one pass of the policy in `scope`. What the queue-depth function and
    /// scheduled ticks call.
    pub async fn reconcile(&self, now: DateTime<Utc>, scope: Scope) -> Result<PassResult, Error> {
        let seen = self.read_world(now, scope).await?;
        self.pass(&seen, now, scope, None).await
    }

    async fn pass(
        &self,
        seen: &Seen,
        now: DateTime<Utc>,
        scope: Scope,
        grace: Option<u32>,
    ) -> Result<PassResult, Error> {
        let node_refs: Vec<&KubeNode> = seen.nodes.iter().collect();
        let pod_refs: Vec<&Pod> = seen.pods.iter().collect();
        let world = World {
            groups: &seen.groups,
            nodes: &node_refs,
            pods: &pod_refs,
            autoscalers: &seen.autoscalers,
            queues: &seen.queues,
            capacity_failures: &seen.failures,
            // The functions decide from queue depth alone.
            published_demand: crate::observe::Published::NotRead,
        };
        let mut memory = Memory::default();
        let observation = observe(self.config, &world, &mut memory, now);
        let decision = decide(&observation.snapshot, &observation.config, now);
        let mut to_apply = decision.clone();
        if scope == Scope::ScaleUpOnly {
            to_apply
                .actions
                .retain(|a| matches!(a, Action::SetDesiredCapacity { from, to, .. } if to > from));
        }
        let actuator = Actuator {
            aws: self.aws,
            cluster: self.cluster,
            dry_run: self.options.dry_run,
            eviction_grace_s: grace.unwrap_or(self.config.controller.eviction_grace_s),
        };
        let report = actuator
            .apply(&to_apply, &seen.groups, &observation.snapshot.nodes, now)
            .await;
        let actions: Vec<ActionSummary> = report
            .applied
            .iter()
            .map(|a| summarize(&a.action, &a.outcome))
            .collect();
        if !actions.is_empty() {
            tracing::info!(actions = %serde_json::to_string(&actions).unwrap_or_default(), "pass");
        }
        let failures: Vec<String> = report.failures().map(|(_, e)| e.to_string()).collect();
        if let Some(first) = failures.first() {
            return Err(Error::Actions {
                failed: failures.len(),
                first: first.clone(),
            });
        }
        Ok(PassResult {
            decision,
            actions,
            nodes: observation.snapshot.nodes,
        })
    }
}

fn lifecycle_ref(action: &LifecycleAction) -> LifecycleRef {
    LifecycleRef {
        group: action.asg_name.clone(),
        hook: action.hook_name.clone(),
        token: action.token.clone(),
        instance_id: action.instance_id.clone(),
    }
}

/// In-memory Kubernetes for tests of callers (feature `test-util`): a [`crate::fake::FakeCluster`] for
/// the recorded writes, plus Nodes, pods and PodAutoscalers that the writes change as the API would.
#[cfg(any(test, feature = "test-util"))]
pub mod fake {
    use std::sync::{Mutex, MutexGuard};

    use super::*;
    use crate::cluster::Evicted;
    use crate::fake::FakeCluster;

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// See the module docs.
    #[derive(Debug, Default)]
    pub struct FakeKube {
        /// The recorded writes, pods per node, refused evictions.
        pub cluster: FakeCluster,
        nodes: Mutex<Vec<KubeNode>>,
        pods: Mutex<Vec<Pod>>,
        autoscalers: Mutex<Vec<Autoscaler>>,
        deleted_nodes: Mutex<Vec<String>>,
    }

    impl FakeKube {
        /// Adds a Node.
        pub fn add_node(&self, node: KubeNode) {
            self.cluster.add_node(node.clone());
            lock(&self.nodes).push(node);
        }
        /// Adds a model pod (for pending-pod demand; use `cluster.add_pod` for a pod on a node).
        pub fn add_model_pod(&self, pod: Pod) {
            lock(&self.pods).push(pod);
        }
        /// Adds a PodAutoscaler.
        pub fn add_autoscaler(&self, a: Autoscaler) {
            lock(&self.autoscalers).push(a);
        }
        /// A Node as it is now.
        pub fn node(&self, name: &str) -> Option<KubeNode> {
            lock(&self.nodes)
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(name))
                .cloned()
        }
        /// Nodes deleted so far.
        pub fn deleted_nodes(&self) -> Vec<String> {
            lock(&self.deleted_nodes).clone()
        }

        fn change(&self, name: &str, f: impl FnOnce(&mut KubeNode)) {
            if let Some(n) = lock(&self.nodes)
                .iter_mut()
                .find(|n| n.metadata.name.as_deref() == Some(name))
            {
                f(n);
            }
        }
    }

    #[async_trait]
    impl Inventory for FakeKube {
        async fn nodes(&self) -> Result<Vec<KubeNode>, KubeError> {
            Ok(lock(&self.nodes).clone())
        }
        async fn model_pods(&self) -> Result<Vec<Pod>, KubeError> {
            Ok(lock(&self.pods).clone())
        }
        async fn autoscalers(&self) -> Result<Vec<Autoscaler>, KubeError> {
            Ok(lock(&self.autoscalers).clone())
        }
        async fn delete_node(&self, name: &str) -> Result<(), KubeError> {
            lock(&self.nodes).retain(|n| n.metadata.name.as_deref() != Some(name));
            lock(&self.deleted_nodes).push(name.to_owned());
            Ok(())
        }
    }

    #[async_trait]
    impl Cluster for FakeKube {
        async fn cordon(&self, node: &str) -> Result<(), KubeError> {
            self.cluster.cordon(node).await?;
            self.change(node, |n| {
                n.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
            });
            Ok(())
        }
        async fn annotate(
            &self,
            node: &str,
            annotations: &[(&str, Option<String>)],
        ) -> Result<(), KubeError> {
            self.cluster.annotate(node, annotations).await?;
            self.change(node, |n| {
                let map = n.metadata.annotations.get_or_insert_with(BTreeMap::new);
                for (k, v) in annotations {
                    match v {
                        Some(v) => map.insert((*k).to_owned(), v.clone()),
                        None => map.remove(*k),
                    };
                }
            });
            Ok(())
        }
        async fn taint(&self, node: &str, taint: &Taint) -> Result<(), KubeError> {
            self.cluster.taint(node, taint).await?;
            self.change(node, |n| {
                let taints = n
                    .spec
                    .get_or_insert_with(Default::default)
                    .taints
                    .get_or_insert_with(Vec::new);
                if !taints
                    .iter()
                    .any(|t| t.key == taint.key && t.effect == taint.effect)
                {
                    taints.push(taint.clone());
                }
            });
            Ok(())
        }
        async fn evictable_pods(&self, node: &str) -> Result<Vec<PodRef>, KubeError> {
            self.cluster.evictable_pods(node).await
        }
        async fn evict(&self, pod: &PodRef, grace_s: Option<u32>) -> Result<Evicted, KubeError> {
            self.cluster.evict(pod, grace_s).await
        }
        async fn delete_pod(&self, pod: &PodRef, grace_s: Option<u32>) -> Result<(), KubeError> {
            self.cluster.delete_pod(pod, grace_s).await
        }
        async fn node_for_instance(
            &self,
            instance_id: &str,
        ) -> Result<Option<KubeNode>, KubeError> {
            Ok(lock(&self.nodes)
                .iter()
                .find(|n| crate::observe::instance_id(n) == Some(instance_id))
                .cloned())
        }
        async fn record(&self, event: &ActionEvent) -> Result<(), KubeError> {
            self.cluster.record(event).await
        }
    }

    /// A Ready node of `instance` in `pool`'s node group: one GPU shared by MPS with `replicas`.
    pub fn gpu_node(name: &str, instance: &str, pool: &str, replicas: u32) -> KubeNode {
        let value = serde_json::json!({
            "metadata": {
                "name": name,
                "labels": {
                    names::LABEL_NODEGROUP: pool,
                    names::LABEL_GPU_COUNT: "1",
                    names::LABEL_GPU_SHARING: "mps",
                    names::LABEL_GPU_REPLICAS: replicas.to_string(),
                },
            },
            "spec": {"providerID": format!("aws:///us-east-1a/{instance}")},
            "status": {
                "allocatable": {names::RESOURCE_GPU: replicas.to_string()},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        });
        serde_json::from_value(value).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::fake::{FakeKube, gpu_node};
    use super::*;
    use crate::fake::{AwsCall, FakeAutoScaling, FakeQueues, KubeCall};
    use zerospot_core::event::parse_document;
    use zerospot_core::testing::at;

    const CONFIG: &str = r#"
pools:
  - {name: gpu, asg_name: gpu-asg, sharing: {mode: mps, replicas: 4}}
models:
  - {name: llama, pool: gpu, namespace: models, service: llama, queue_url: "https://sqs/llama"}
  - {name: mistral, pool: gpu, namespace: models, service: mistral}
"#;

    struct World {
        config: ScalerConfig,
        aws: FakeAutoScaling,
        queues: FakeQueues,
        kube: FakeKube,
    }

    impl World {
        /// One busy MPS node `n1` (instance `i-1`) running one pod of each model, both wanted.
        fn busy() -> World {
            let w = World::empty();
            w.aws.add_instance("gpu-asg", "i-1");
            let mut node = gpu_node("n1", "i-1", "gpu", 4);
            node.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(names::ANNOTATION_IN_FLIGHT.into(), "2".into());
            w.kube.add_node(node);
            for model in ["llama", "mistral"] {
                w.kube
                    .cluster
                    .add_pod("n1", "models", &format!("{model}-1"));
                w.kube.add_autoscaler(Autoscaler {
                    namespace: "models".into(),
                    service: model.into(),
                    desired_scale: Some(1),
                    actual_scale: Some(1),
                });
            }
            w
        }

        fn empty() -> World {
            let queues = FakeQueues::default();
            queues.set("https://sqs/llama", 0, 0);
            World {
                config: ScalerConfig::from_yaml(CONFIG).unwrap(),
                aws: FakeAutoScaling::default().with_group("gpu-asg", 0, 3),
                queues,
                kube: FakeKube::default(),
            }
        }

        fn responder(&self) -> Responder<'_> {
            Responder {
                config: &self.config,
                aws: &self.aws,
                queues: &self.queues,
                cluster: &self.kube,
                inventory: &self.kube,
                options: Options::default(),
            }
        }

        async fn handle(&self, json: &str, now: DateTime<Utc>) -> Handled {
            let events = parse_document(json.as_bytes()).unwrap();
            self.responder()
                .handle(&events[0], now, Duration::from_secs(900))
                .await
                .unwrap()
        }
    }

    fn spot(instance: &str, time: DateTime<Utc>) -> String {
        serde_json::json!({
            "version": "0", "id": "e-1", "detail-type": "EC2 Spot Instance Interruption Warning",
            "source": "aws.ec2", "time": time.to_rfc3339(), "region": "us-east-1",
            "resources": [format!("arn:aws:ec2:us-east-1b:instance/{instance}")],
            "detail": {"instance-id": instance, "instance-action": "terminate"}
        })
        .to_string()
    }

    fn rebalance(instance: &str) -> String {
        serde_json::json!({
            "version": "0", "id": "e-2", "detail-type": "EC2 Instance Rebalance Recommendation",
            "source": "aws.ec2", "detail": {"instance-id": instance}
        })
        .to_string()
    }

    fn writes(kube: &FakeKube) -> Vec<KubeCall> {
        kube.cluster.calls()
    }

    #[tokio::test]
    async fn a_spot_warning_marks_the_node_evicts_its_pods_within_the_notice_and_replaces_it() {
        let w = World::busy();
        let handled = w.handle(&spot("i-1", at(0)), at(1)).await;
        let calls = writes(&w.kube);
        assert!(calls.contains(&KubeCall::Cordon("n1".into())), "{calls:?}");
        assert!(calls.contains(&KubeCall::Taint(
            "n1".into(),
            names::TAINT_INTERRUPTED.into()
        )));
        assert!(calls.contains(&KubeCall::Annotate(
            "n1".into(),
            names::ANNOTATION_DISRUPTION.into(),
            Some("spot_interruption".into())
        )));
        assert!(calls.contains(&KubeCall::Annotate(
            "n1".into(),
            names::ANNOTATION_DEADLINE.into(),
            Some("2026-11-24T00:02:00Z".into())
        )));
        // Both model pods evicted, with a grace period that ends before the deadline.
        let evicted: Vec<_> = calls
            .iter()
            .filter_map(|c| match c {
                KubeCall::Evict(pod, grace) => Some((pod.clone(), *grace)),
                _ => None,
            })
            .collect();
        assert_eq!(
            evicted,
            vec![
                ("models/llama-1".to_owned(), Some(30)),
                ("models/mistral-1".to_owned(), Some(30))
            ]
        );
        // The node is busy: it stays while it drains, and a replacement is requested at once.
        assert_eq!(
            w.aws.calls(),
            vec![AwsCall::SetDesired("gpu-asg".into(), 2)]
        );
        assert_eq!(handled.marked, vec!["n1".to_owned()]);
        assert_eq!(handled.instances, vec!["i-1".to_owned()]);
    }

    #[tokio::test]
    async fn the_same_spot_warning_twice_has_no_further_effect() {
        let w = World::busy();
        w.handle(&spot("i-1", at(0)), at(1)).await;
        let (kube_before, aws_before) = (writes(&w.kube).len(), w.aws.calls().len());
        let handled = w.handle(&spot("i-1", at(0)), at(2)).await;
        assert_eq!(writes(&w.kube).len(), kube_before, "{:?}", writes(&w.kube));
        assert!(handled.marked.is_empty());
        // The only call left is the policy's usual care of the replacement the first one launched
        // (scale-in protection of a new node); nothing about i-1, no capacity change.
        let later = &w.aws.calls()[aws_before..];
        assert!(
            later.iter().all(
                |c| matches!(c, AwsCall::Protect(_, ids, true) if !ids.contains(&"i-1".to_owned()))
            ),
            "{later:?}"
        );
        assert!(
            handled.actions.iter().all(|a| a.action == "set_protection"),
            "{:?}",
            handled.actions
        );
    }

    #[tokio::test]
    async fn a_late_spot_warning_shortens_the_eviction_grace_to_end_before_the_deadline() {
        let w = World::busy();
        // 100 s of the notice are gone: 20 s left, 15 s margin -> 5 s grace.
        w.handle(&spot("i-1", at(0)), at(100)).await;
        assert!(
            writes(&w.kube).contains(&KubeCall::Evict("models/llama-1".into(), Some(5))),
            "{:?}",
            writes(&w.kube)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_whose_eviction_stays_refused_is_deleted_before_the_deadline() {
        let w = World::busy();
        w.kube.cluster.block("models", "llama-1");
        let started = tokio::time::Instant::now();
        let handled = w.handle(&spot("i-1", at(0)), at(0)).await;
        let waited = started.elapsed();
        assert_eq!(handled.deleted_pods, vec!["models/llama-1".to_owned()]);
        assert!(
            waited >= Duration::from_secs(104) && waited <= Duration::from_secs(106),
            "deleted {waited:?} after the warning: 15 s before the deadline"
        );
        let calls = writes(&w.kube);
        let retries = calls
            .iter()
            .filter(|c| matches!(c, KubeCall::Evict(p, _) if p == "models/llama-1"))
            .count();
        assert!(retries > 50, "evictions tried again each second: {retries}");
        assert!(calls.iter().any(
            |c| matches!(c, KubeCall::Delete(p, Some(g)) if p == "models/llama-1" && *g <= 15)
        ));
    }

    #[tokio::test]
    async fn a_rebalance_recommendation_cordons_without_taint_or_eviction_and_prelaunches() {
        let w = World::busy();
        w.handle(&rebalance("i-1"), at(0)).await;
        let calls = writes(&w.kube);
        assert!(calls.contains(&KubeCall::Cordon("n1".into())));
        assert!(
            !calls
                .iter()
                .any(|c| matches!(c, KubeCall::Taint(..) | KubeCall::Evict(..))),
            "{calls:?}"
        );
        assert_eq!(
            w.aws.calls(),
            vec![AwsCall::SetDesired("gpu-asg".into(), 2)]
        );
        // A Spot warning after it upgrades the mark and drains.
        w.handle(&spot("i-1", at(10)), at(11)).await;
        let calls = writes(&w.kube);
        assert!(calls.contains(&KubeCall::Annotate(
            "n1".into(),
            names::ANNOTATION_DISRUPTION.into(),
            Some("spot_interruption".into())
        )));
        assert!(calls.iter().any(|c| matches!(c, KubeCall::Evict(..))));
        let desired = w
            .aws
            .calls()
            .into_iter()
            .filter(|c| matches!(c, AwsCall::SetDesired(..)))
            .count();
        assert_eq!(desired, 1, "the replacement was already requested");
    }

    #[tokio::test]
    async fn an_instance_of_no_pool_is_left_alone() {
        let w = World::busy();
        let handled = w.handle(&spot("i-other", at(0)), at(1)).await;
        assert!(handled.ignored.is_some());
        assert!(writes(&w.kube).is_empty());
        assert!(w.aws.calls().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_terminate_lifecycle_action_is_continued_after_the_drain_with_heartbeats() {
        let w = World::busy();
        w.kube.cluster.block("models", "llama-1");
        let event = serde_json::json!({
            "version": "0", "id": "e-3", "detail-type": "EC2 Instance-terminate Lifecycle Action",
            "source": "aws.autoscaling",
            "detail": {"AutoScalingGroupName": "gpu-asg", "EC2InstanceId": "i-1",
                       "LifecycleHookName": "drain", "LifecycleActionToken": "tok",
                       "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING"}
        })
        .to_string();
        let responder = w.responder();
        let events = parse_document(event.as_bytes()).unwrap();
        let unblock = async {
            tokio::time::sleep(Duration::from_secs(150)).await;
            w.kube.cluster.unblock("models", "llama-1");
        };
        let (handled, ()) = tokio::join!(
            responder.handle(&events[0], at(0), Duration::from_secs(900)),
            unblock
        );
        let handled = handled.unwrap();
        assert!(handled.lifecycle_completed);
        assert!(handled.deleted_pods.is_empty());
        let aws = w.aws.calls();
        let heartbeats = aws
            .iter()
            .filter(|c| matches!(c, AwsCall::Heartbeat(_)))
            .count();
        assert_eq!(heartbeats, 2, "{aws:?}");
        assert_eq!(
            aws.last(),
            Some(&AwsCall::CompleteLifecycle("i-1".into(), true))
        );
        assert!(w.kube.cluster.pods("n1").is_empty());
    }

    #[tokio::test]
    async fn a_terminated_instance_has_its_pods_and_node_removed() {
        let w = World::busy();
        let event = serde_json::json!({
            "version": "0", "id": "e-4", "detail-type": "EC2 Instance State-change Notification",
            "source": "aws.ec2", "detail": {"instance-id": "i-1", "state": "terminated"}
        })
        .to_string();
        let handled = w.handle(&event, at(0)).await;
        assert_eq!(handled.deleted_nodes, vec!["n1".to_owned()]);
        assert_eq!(w.kube.deleted_nodes(), vec!["n1".to_owned()]);
        let deletes = writes(&w.kube)
            .into_iter()
            .filter(|c| matches!(c, KubeCall::Delete(_, Some(0))))
            .count();
        assert_eq!(deletes, 2);
        assert!(w.kube.node("n1").is_none());
    }

    #[tokio::test]
    async fn scale_up_only_raises_capacity_from_zero_and_never_removes_an_idle_node() {
        let w = World::empty();
        w.queues.set("https://sqs/llama", 1, 0);
        let responder = w.responder();
        let pass = responder
            .reconcile(at(0), Scope::ScaleUpOnly)
            .await
            .unwrap();
        assert_eq!(
            w.aws.calls(),
            vec![AwsCall::SetDesired("gpu-asg".into(), 1)]
        );
        assert_eq!(pass.actions.len(), 1);

        // An idle node past its window that the policy would remove: left to the scaler.
        let w = World::empty();
        w.aws.add_instance("gpu-asg", "i-9");
        let mut idle = gpu_node("n9", "i-9", "gpu", 4);
        idle.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(at(0).timestamp()).unwrap(),
            ));
        w.kube.add_node(idle);
        let pass = w
            .responder()
            .reconcile(at(100_000), Scope::ScaleUpOnly)
            .await
            .unwrap();
        assert!(
            pass.decision
                .actions
                .iter()
                .any(|a| matches!(a, Action::Terminate { .. }))
        );
        assert!(w.aws.calls().is_empty(), "{:?}", w.aws.calls());
        assert!(writes(&w.kube).is_empty());
    }

    #[tokio::test]
    async fn a_failed_capacity_change_is_a_retryable_error_and_the_retry_completes_it() {
        let w = World::busy();
        w.aws
            .fail_next("SetDesiredCapacity", AwsErrorKind::Throttled);
        let events = parse_document(spot("i-1", at(0)).as_bytes()).unwrap();
        let err = w
            .responder()
            .handle(&events[0], at(1), Duration::from_secs(900))
            .await
            .unwrap_err();
        assert!(err.retryable(), "{err}");
        w.handle(&spot("i-1", at(0)), at(2)).await;
        assert_eq!(w.aws.group("gpu-asg").unwrap().desired, 2);
    }

    #[tokio::test]
    async fn unknown_events_are_ignored_without_any_call() {
        let w = World::busy();
        let event = r#"{"source": "aws.s3", "detail-type": "Object Created", "detail": {}}"#;
        let handled = w.handle(event, at(0)).await;
        assert!(handled.ignored.is_some());
        assert_eq!(w.aws.describes(), 0);
    }
}
