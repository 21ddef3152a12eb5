//! Act: carry out a core `Decision`'s actions, in order, idempotently, leaving an Event for each.
//!
//! # Expected flow
//! Protection changes first (one `SetInstanceProtection` per group and direction), then cordons, drains
//! and terminations, then each group's desired capacity, as `decide` ordered them.
//!
//! # Rules
//! - **Scale-in is cordon -> drain -> terminate.** A drain marks the node ([`names::ANNOTATION_DRAINING`])
//!   and evicts its pods through the Eviction API: with the short `eviction_grace_s` when the node is
//!   going anyway (a disruption in the snapshot, or a node the snapshot does not know), otherwise with
//!   each pod's own `terminationGracePeriodSeconds` (Knative sets it to the revision timeout), during
//!   which Knative's queue-proxy takes no new request and lets those in flight finish: a consolidated
//!   node's requests finish there. A termination first evicts whatever is left; if a
//!   PodDisruptionBudget still keeps a pod there, the termination waits for a later pass (an Event says
//!   so), and that group's desired capacity is not lowered in this pass: lowering it would make the group
//!   pick a victim itself.
//! - **Exactly that instance**: `TerminateInstanceInAutoScalingGroup` with the decision's
//!   `ShouldDecrementDesiredCapacity`; an instance already gone counts as done.
//! - **Clamped**: a desired capacity is clamped to the group's `[MinSize, MaxSize]` as last described
//!   (AWS refuses values outside; moto accepts them).
//! - **Idempotent**: cordoning a cordoned node, evicting a gone pod, terminating a gone instance and
//!   setting the same capacity again all succeed without further effect, so a pass can be repeated.
//! - **Dry run**: every action is logged as it would be taken, and nothing is called.
//! - A failure of one action is recorded and the pass goes on with the others, except that a failed
//!   termination also keeps its group's capacity from being lowered.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use zerospot_core::{Action, Decision, Node};

use crate::aws::{AutoScaling, AwsError, Terminated};
use crate::cluster::{ActionEvent, Cluster, Evicted, KubeError};
use crate::config::names;
use crate::observe::Group;

/// How one action went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Carried out.
    Done,
    /// Logged only (dry run).
    DryRun,
    /// Not carried out now; a later pass will (e.g. eviction blocked by a PodDisruptionBudget).
    Deferred(String),
    /// Not needed (nothing to do, e.g. a cordon of an instance with no Node).
    Skipped(String),
    /// Failed.
    Failed(ActError),
}

/// A failure while acting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActError {
    /// An AWS call failed.
    #[error("{0}")]
    Aws(String, crate::aws::AwsErrorKind),
    /// A Kubernetes call failed.
    #[error("{0}")]
    Kube(String, crate::cluster::KubeErrorKind),
}

impl ActError {
    /// `aws` or `kubernetes`, and the kind, for metrics.
    pub fn labels(&self) -> (&'static str, &'static str) {
        match self {
            ActError::Aws(_, k) => ("aws", k.as_str()),
            ActError::Kube(_, k) => ("kubernetes", k.as_str()),
        }
    }
}

impl From<AwsError> for ActError {
    fn from(e: AwsError) -> Self {
        ActError::Aws(e.to_string(), e.kind)
    }
}

impl From<KubeError> for ActError {
    fn from(e: KubeError) -> Self {
        ActError::Kube(e.to_string(), e.kind)
    }
}

/// One action and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The action.
    pub action: Action,
    /// How it went.
    pub outcome: Outcome,
}

/// What a pass did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every action of the decision, in order, with its outcome.
    pub applied: Vec<Applied>,
    /// Failures of Event recording (they never stop an action).
    pub event_failures: Vec<KubeError>,
}

impl Report {
    /// Whether an Auto Scaling group was changed (describe it again before the next decision).
    pub fn changed_groups(&self) -> bool {
        self.applied.iter().any(|a| {
            a.outcome == Outcome::Done
                && matches!(
                    a.action,
                    Action::SetDesiredCapacity { .. }
                        | Action::Terminate { .. }
                        | Action::SetProtection { .. }
                )
        })
    }

    /// The failures, in order.
    pub fn failures(&self) -> impl Iterator<Item = (&Action, &ActError)> {
        self.applied.iter().filter_map(|a| match &a.outcome {
            Outcome::Failed(e) => Some((&a.action, e)),
            _ => None,
        })
    }
}

/// The name of an action, as in the decision's JSON.
pub fn action_name(action: &Action) -> &'static str {
    match action {
        Action::SetProtection { .. } => "set_protection",
        Action::Cordon { .. } => "cordon",
        Action::Drain { .. } => "drain",
        Action::Terminate { .. } => "terminate",
        Action::SetDesiredCapacity { .. } => "set_desired_capacity",
    }
}

/// Carries out decisions through the [`AutoScaling`] and [`Cluster`] traits.
pub struct Actuator<'a> {
    /// Auto Scaling.
    pub aws: &'a dyn AutoScaling,
    /// Kubernetes.
    pub cluster: &'a dyn Cluster,
    /// Log only.
    pub dry_run: bool,
    /// Grace period of pods evicted from a node that is going anyway or being terminated (a node drained
    /// by choice gives its pods their own; see the module docs).
    pub eviction_grace_s: u32,
}

impl std::fmt::Debug for Actuator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actuator")
            .field("dry_run", &self.dry_run)
            .field("eviction_grace_s", &self.eviction_grace_s)
            .finish_non_exhaustive()
    }
}

fn event(
    node: Option<&String>,
    group: &str,
    normal: bool,
    reason: &str,
    action: &str,
    note: &str,
) -> ActionEvent {
    ActionEvent {
        node: node.cloned(),
        group: group.to_owned(),
        normal,
        reason: reason.to_owned(),
        action: action.to_owned(),
        note: note.to_owned(),
    }
}

impl Actuator<'_> {
    /// Carries out `decision` against groups as last described (`groups`, for clamping and to map
    /// instances to groups), with the snapshot's `nodes` (to find an instance's Node). See the module
    /// docs for the rules.
    pub async fn apply(
        &self,
        decision: &Decision,
        groups: &[Group],
        nodes: &[Node],
        now: DateTime<Utc>,
    ) -> Report {
        let mut report = Report::default();
        let group_of: HashMap<&str, &str> = groups
            .iter()
            .flat_map(|g| {
                g.instances
                    .iter()
                    .map(move |i| (i.id.as_str(), g.name.as_str()))
            })
            .collect();
        // Groups whose capacity must not be lowered in this pass.
        let mut hold: HashSet<String> = HashSet::new();
        let mut events: Vec<ActionEvent> = Vec::new();

        // Protection: one call per (group, direction).
        let mut batches: Vec<((String, bool), Vec<&Action>)> = Vec::new();
        for action in &decision.actions {
            if let Action::SetProtection {
                asg_name,
                protected,
                ..
            } = action
            {
                let key = (asg_name.clone(), *protected);
                match batches.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, list)) => list.push(action),
                    None => batches.push((key, vec![action])),
                }
            }
        }
        for ((group, protected), actions) in &batches {
            let ids: Vec<String> = actions
                .iter()
                .filter_map(|a| match a {
                    Action::SetProtection { instance_id, .. } => Some(instance_id.clone()),
                    _ => None,
                })
                .collect();
            let outcome = if self.dry_run {
                tracing::info!(
                    dry_run = true,
                    group,
                    ?ids,
                    protected,
                    "would set scale-in protection"
                );
                Outcome::DryRun
            } else {
                match self
                    .aws
                    .set_instance_protection(group, &ids, *protected)
                    .await
                {
                    Ok(()) => Outcome::Done,
                    Err(e) if e.kind == crate::aws::AwsErrorKind::NotFound => {
                        Outcome::Skipped(format!("an instance left the group: {e}"))
                    }
                    Err(e) => Outcome::Failed(e.into()),
                }
            };
            for a in actions {
                report.applied.push(Applied {
                    action: (*a).clone(),
                    outcome: outcome.clone(),
                });
            }
        }

        for action in &decision.actions {
            let outcome = match action {
                Action::SetProtection { .. } => continue,
                Action::Cordon {
                    instance_id,
                    node,
                    reason,
                } => {
                    let group = group_of
                        .get(instance_id.as_str())
                        .copied()
                        .unwrap_or_default();
                    match node {
                        None => Outcome::Skipped("no Node registered yet".into()),
                        Some(name) if self.dry_run => {
                            tracing::info!(
                                dry_run = true,
                                node = name,
                                instance_id,
                                reason,
                                "would cordon"
                            );
                            Outcome::DryRun
                        }
                        Some(name) => match self.cluster.cordon(name).await {
                            Ok(()) => {
                                events.push(event(
                                    node.as_ref(),
                                    group,
                                    true,
                                    "Cordoned",
                                    "Cordon",
                                    reason,
                                ));
                                Outcome::Done
                            }
                            Err(e) if e.kind == crate::cluster::KubeErrorKind::NotFound => {
                                Outcome::Skipped("the Node is gone".into())
                            }
                            Err(e) => Outcome::Failed(e.into()),
                        },
                    }
                }
                Action::Drain {
                    instance_id,
                    node,
                    reason,
                } => {
                    let group = group_of
                        .get(instance_id.as_str())
                        .copied()
                        .unwrap_or_default();
                    match node {
                        None => Outcome::Skipped("no Node registered yet".into()),
                        Some(name) if self.dry_run => {
                            tracing::info!(
                                dry_run = true,
                                node = name,
                                instance_id,
                                reason,
                                "would drain"
                            );
                            Outcome::DryRun
                        }
                        Some(name) => {
                            let marked = self
                                .cluster
                                .annotate(
                                    name,
                                    &[(names::ANNOTATION_DRAINING, Some(now.to_rfc3339()))],
                                )
                                .await;
                            match marked {
                                Err(e) if e.kind == crate::cluster::KubeErrorKind::NotFound => {
                                    Outcome::Skipped("the Node is gone".into())
                                }
                                Err(e) => Outcome::Failed(e.into()),
                                Ok(()) => {
                                    events.push(event(
                                        node.as_ref(),
                                        group,
                                        true,
                                        "Draining",
                                        "Drain",
                                        reason,
                                    ));
                                    // A node that is going anyway (Spot notice, rebalance,
                                    // scheduled change) gives its pods the short grace; one
                                    // drained by choice (consolidation, scale-in) their own, so
                                    // the requests in flight finish there.
                                    let going = nodes
                                        .iter()
                                        .find(|n| n.instance_id == *instance_id)
                                        .is_none_or(|n| n.disruption.is_some());
                                    let grace = going.then_some(self.eviction_grace_s);
                                    match self.evict_all(name, group, grace, &mut events).await {
                                        Ok(None) => Outcome::Done,
                                        Ok(Some(blocked)) => Outcome::Deferred(blocked),
                                        Err(e) => Outcome::Failed(e),
                                    }
                                }
                            }
                        }
                    }
                }
                Action::Terminate {
                    instance_id,
                    asg_name,
                    decrement_desired,
                    reason,
                } => {
                    let node = node_of(nodes, decision, instance_id);
                    if self.dry_run {
                        tracing::info!(
                            dry_run = true,
                            instance_id,
                            group = asg_name,
                            decrement_desired,
                            reason,
                            "would terminate"
                        );
                        Outcome::DryRun
                    } else {
                        let blocked = match &node {
                            Some(name) => {
                                self.evict_all(
                                    name,
                                    asg_name,
                                    Some(self.eviction_grace_s),
                                    &mut events,
                                )
                                .await
                            }
                            None => Ok(None),
                        };
                        match blocked {
                            Ok(Some(why)) => {
                                hold.insert(asg_name.clone());
                                events.push(event(
                                    node.as_ref(),
                                    asg_name,
                                    false,
                                    "TerminationDeferred",
                                    "Terminate",
                                    &why,
                                ));
                                Outcome::Deferred(why)
                            }
                            Err(e) => {
                                hold.insert(asg_name.clone());
                                Outcome::Failed(e)
                            }
                            Ok(None) => match self
                                .aws
                                .terminate_instance(instance_id, *decrement_desired)
                                .await
                            {
                                Ok(Terminated::Started) => {
                                    let note = format!("{instance_id}: {reason}");
                                    events.push(event(
                                        node.as_ref(),
                                        asg_name,
                                        true,
                                        "Terminating",
                                        "TerminateInstanceInAutoScalingGroup",
                                        &note,
                                    ));
                                    Outcome::Done
                                }
                                Ok(Terminated::AlreadyGone) => {
                                    Outcome::Skipped("the instance is already gone".into())
                                }
                                Err(e) => {
                                    hold.insert(asg_name.clone());
                                    Outcome::Failed(e.into())
                                }
                            },
                        }
                    }
                }
                Action::SetDesiredCapacity {
                    asg_name,
                    from,
                    to,
                    reason,
                    ..
                } => {
                    let limits = groups
                        .iter()
                        .find(|g| &g.name == asg_name)
                        .map(|g| (g.min, g.max));
                    let target = limits.map_or(*to, |(min, max)| (*to).clamp(min, max.max(min)));
                    if hold.contains(asg_name) && target < *from {
                        Outcome::Deferred(
                            "a termination in this group did not happen; capacity kept".into(),
                        )
                    } else if self.dry_run {
                        tracing::info!(
                            dry_run = true,
                            group = asg_name,
                            from,
                            to = target,
                            reason,
                            "would set desired capacity"
                        );
                        Outcome::DryRun
                    } else {
                        match self.aws.set_desired_capacity(asg_name, target).await {
                            Ok(()) => {
                                let (why, normal) = if target >= *from {
                                    ("ScaledOut", true)
                                } else {
                                    ("ScaledIn", true)
                                };
                                let note = format!("desired {from} -> {target}: {reason}");
                                events.push(event(
                                    None,
                                    asg_name,
                                    normal,
                                    why,
                                    "SetDesiredCapacity",
                                    &note,
                                ));
                                Outcome::Done
                            }
                            Err(e) => Outcome::Failed(e.into()),
                        }
                    }
                }
            };
            match &outcome {
                Outcome::Failed(e) => {
                    tracing::warn!(action = action_name(action), error = %e, "action failed")
                }
                Outcome::Deferred(why) => {
                    tracing::info!(action = action_name(action), why, "action deferred")
                }
                Outcome::Done => tracing::info!(action = ?action, "action taken"),
                _ => {}
            }
            report.applied.push(Applied {
                action: action.clone(),
                outcome,
            });
        }

        for ev in &events {
            if let Err(e) = self.cluster.record(ev).await {
                tracing::debug!(error = %e, reason = ev.reason, "could not record event");
                report.event_failures.push(e);
            }
        }
        report
    }

    /// Evicts every evictable pod on `node` with `grace_s` (`None`: each pod's own
    /// `terminationGracePeriodSeconds`). `Ok(None)` when none is left that is not already terminating;
    /// `Ok(Some(why))` when an eviction was refused for now.
    async fn evict_all(
        &self,
        node: &str,
        group: &str,
        grace_s: Option<u32>,
        events: &mut Vec<ActionEvent>,
    ) -> Result<Option<String>, ActError> {
        let pods = match self.cluster.evictable_pods(node).await {
            Ok(p) => p,
            Err(e) if e.kind == crate::cluster::KubeErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut blocked = Vec::new();
        for pod in pods.iter().filter(|p| !p.terminating) {
            match self.cluster.evict(pod, grace_s).await? {
                Evicted::Accepted | Evicted::Gone => {}
                Evicted::Blocked(message) => {
                    let why = format!(
                        "eviction of {}/{} refused: {message}",
                        pod.namespace, pod.name
                    );
                    events.push(event(
                        Some(&node.to_owned()),
                        group,
                        false,
                        "EvictionBlocked",
                        "Evict",
                        &why,
                    ));
                    blocked.push(why);
                }
            }
        }
        Ok((!blocked.is_empty()).then(|| blocked.join("; ")))
    }
}

/// The Node name of an instance: from the snapshot, else from the decision's cordon or drain.
fn node_of(nodes: &[Node], decision: &Decision, instance: &str) -> Option<String> {
    if let Some(name) = nodes
        .iter()
        .find(|n| n.instance_id == instance)
        .and_then(|n| n.name.clone())
    {
        return Some(name);
    }
    decision.actions.iter().find_map(|a| match a {
        Action::Cordon {
            instance_id, node, ..
        }
        | Action::Drain {
            instance_id, node, ..
        } if instance_id == instance => node.clone(),
        _ => None,
    })
}
