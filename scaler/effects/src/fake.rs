//! Recording fakes of [`AutoScaling`], [`Queues`] and [`Cluster`], for unit tests and benchmarks of their
//! callers (feature `test-util`). The integration tests use the real servers of the test bed instead.
//!
//! [`FakeAutoScaling`] behaves like an Auto Scaling group where our calls are concerned: desired capacity
//! launches and removes instances (removing unprotected ones, newest first), values outside
//! `[MinSize, MaxSize]` are refused with AWS's `ValidationError`, terminations with decrement lower the
//! desired capacity. Every fake records its calls and can fail the next call of a kind once.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Node as KubeNode, Taint};

use crate::aws::{
    AutoScaling, AwsError, AwsErrorKind, LifecycleRef, LifecycleResult, Queues, Terminated,
};
use crate::cluster::{ActionEvent, Cluster, Evicted, KubeError, KubeErrorKind, PodRef};
use crate::observe::{Group, GroupInstance, QueueDepth};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One recorded AWS call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsCall {
    /// `SetDesiredCapacity(group, n)`.
    SetDesired(String, u32),
    /// `TerminateInstanceInAutoScalingGroup(id, decrement)`.
    Terminate(String, bool),
    /// `SetInstanceProtection(group, ids, protected)`.
    Protect(String, Vec<String>, bool),
    /// `CompleteLifecycleAction(instance, continue?)`.
    CompleteLifecycle(String, bool),
    /// `RecordLifecycleActionHeartbeat(instance)`.
    Heartbeat(String),
}

#[derive(Debug, Default)]
struct AsgState {
    groups: BTreeMap<String, Group>,
    next: u64,
    calls: Vec<(Instant, AwsCall)>,
    fail_next: VecDeque<(&'static str, AwsError)>,
    describes: u64,
}

/// A fake Auto Scaling service.
#[derive(Debug, Default)]
pub struct FakeAutoScaling {
    state: Mutex<AsgState>,
}

impl FakeAutoScaling {
    /// Adds a group with `min`, `max` and no instances.
    pub fn with_group(self, name: &str, min: u32, max: u32) -> Self {
        lock(&self.state).groups.insert(
            name.to_owned(),
            Group {
                name: name.to_owned(),
                min,
                max,
                desired: 0,
                instances: Vec::new(),
                tags: BTreeMap::new(),
            },
        );
        self
    }

    /// Adds an `InService` instance to a group (and one to its desired capacity).
    pub fn add_instance(&self, group: &str, id: &str) {
        let mut s = lock(&self.state);
        if let Some(g) = s.groups.get_mut(group) {
            g.instances.push(GroupInstance {
                id: id.to_owned(),
                lifecycle_state: "InService".into(),
                protected: false,
            });
            g.desired += 1;
        }
    }

    /// The next call named `call` (e.g. `SetDesiredCapacity`) fails with `kind`.
    pub fn fail_next(&self, call: &'static str, kind: AwsErrorKind) {
        lock(&self.state)
            .fail_next
            .push_back((call, AwsError::new(call, kind, "injected")));
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<AwsCall> {
        lock(&self.state)
            .calls
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// The calls so far, with when they were made.
    pub fn timed_calls(&self) -> Vec<(Instant, AwsCall)> {
        lock(&self.state).calls.clone()
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        lock(&self.state).calls.clear();
    }

    /// A group as it is now.
    pub fn group(&self, name: &str) -> Option<Group> {
        lock(&self.state).groups.get(name).cloned()
    }

    /// How many describe calls were made.
    pub fn describes(&self) -> u64 {
        lock(&self.state).describes
    }

    fn take_failure(s: &mut AsgState, call: &'static str) -> Result<(), AwsError> {
        if let Some(pos) = s.fail_next.iter().position(|(c, _)| *c == call)
            && let Some((_, e)) = s.fail_next.remove(pos)
        {
            return Err(e);
        }
        Ok(())
    }

    fn resize(s: &mut AsgState, group: &str) {
        let Some(g) = s.groups.get(group) else { return };
        let mut g = g.clone();
        while (g.instances.len() as u64) < u64::from(g.desired) {
            s.next += 1;
            g.instances.push(GroupInstance {
                id: format!("i-{:017x}", s.next),
                lifecycle_state: "InService".into(),
                protected: false,
            });
        }
        while g.instances.len() as u64 > u64::from(g.desired) {
            match g.instances.iter().rposition(|i| !i.protected) {
                Some(pos) => {
                    g.instances.remove(pos);
                }
                None => break,
            }
        }
        s.groups.insert(group.to_owned(), g);
    }
}

#[async_trait]
impl AutoScaling for FakeAutoScaling {
    async fn describe_groups(&self, names: &[String]) -> Result<Vec<Group>, AwsError> {
        let mut s = lock(&self.state);
        Self::take_failure(&mut s, "DescribeAutoScalingGroups")?;
        s.describes += 1;
        Ok(names
            .iter()
            .filter_map(|n| s.groups.get(n).cloned())
            .collect())
    }

    async fn capacity_failures(
        &self,
        _group: &str,
        _since: DateTime<Utc>,
    ) -> Result<Vec<DateTime<Utc>>, AwsError> {
        let mut s = lock(&self.state);
        Self::take_failure(&mut s, "DescribeScalingActivities")?;
        Ok(Vec::new())
    }

    async fn set_desired_capacity(&self, group: &str, desired: u32) -> Result<(), AwsError> {
        let mut s = lock(&self.state);
        s.calls.push((
            Instant::now(),
            AwsCall::SetDesired(group.to_owned(), desired),
        ));
        Self::take_failure(&mut s, "SetDesiredCapacity")?;
        let Some(g) = s.groups.get_mut(group) else {
            return Err(AwsError::new(
                "SetDesiredCapacity",
                AwsErrorKind::Invalid,
                "AutoScalingGroup name not found",
            ));
        };
        if desired > g.max || desired < g.min {
            return Err(AwsError::new(
                "SetDesiredCapacity",
                AwsErrorKind::Invalid,
                format!(
                    "New SetDesiredCapacity value {desired} is outside [{}, {}]",
                    g.min, g.max
                ),
            ));
        }
        g.desired = desired;
        Self::resize(&mut s, group);
        Ok(())
    }

    async fn terminate_instance(
        &self,
        instance_id: &str,
        decrement_desired: bool,
    ) -> Result<Terminated, AwsError> {
        let mut s = lock(&self.state);
        s.calls.push((
            Instant::now(),
            AwsCall::Terminate(instance_id.to_owned(), decrement_desired),
        ));
        Self::take_failure(&mut s, "TerminateInstanceInAutoScalingGroup")?;
        let found = s
            .groups
            .iter()
            .find(|(_, g)| g.instances.iter().any(|i| i.id == instance_id))
            .map(|(n, _)| n.clone());
        let Some(name) = found else {
            return Ok(Terminated::AlreadyGone);
        };
        if let Some(g) = s.groups.get_mut(&name) {
            g.instances.retain(|i| i.id != instance_id);
            if decrement_desired {
                g.desired = g.desired.saturating_sub(1);
            }
        }
        Self::resize(&mut s, &name);
        Ok(Terminated::Started)
    }

    async fn set_instance_protection(
        &self,
        group: &str,
        instance_ids: &[String],
        protected: bool,
    ) -> Result<(), AwsError> {
        let mut s = lock(&self.state);
        s.calls.push((
            Instant::now(),
            AwsCall::Protect(group.to_owned(), instance_ids.to_vec(), protected),
        ));
        Self::take_failure(&mut s, "SetInstanceProtection")?;
        if let Some(g) = s.groups.get_mut(group) {
            for i in g
                .instances
                .iter_mut()
                .filter(|i| instance_ids.contains(&i.id))
            {
                i.protected = protected;
            }
        }
        Ok(())
    }

    async fn complete_lifecycle_action(
        &self,
        action: &LifecycleRef,
        result: LifecycleResult,
    ) -> Result<(), AwsError> {
        let mut s = lock(&self.state);
        s.calls.push((
            Instant::now(),
            AwsCall::CompleteLifecycle(
                action.instance_id.clone(),
                result == LifecycleResult::Continue,
            ),
        ));
        Self::take_failure(&mut s, "CompleteLifecycleAction")
    }

    async fn lifecycle_heartbeat(&self, action: &LifecycleRef) -> Result<(), AwsError> {
        let mut s = lock(&self.state);
        s.calls.push((
            Instant::now(),
            AwsCall::Heartbeat(action.instance_id.clone()),
        ));
        Self::take_failure(&mut s, "RecordLifecycleActionHeartbeat")
    }
}

/// A fake SQS: depths set by the test.
#[derive(Debug, Default)]
pub struct FakeQueues {
    depths: Mutex<HashMap<String, QueueDepth>>,
    fail_next: Mutex<VecDeque<AwsErrorKind>>,
    reads: Mutex<u64>,
}

impl FakeQueues {
    /// Sets a queue's depth.
    pub fn set(&self, queue_url: &str, visible: u64, in_flight: u64) {
        lock(&self.depths).insert(queue_url.to_owned(), QueueDepth { visible, in_flight });
    }
    /// The next read fails with `kind`.
    pub fn fail_next(&self, kind: AwsErrorKind) {
        lock(&self.fail_next).push_back(kind);
    }
    /// Reads so far.
    pub fn reads(&self) -> u64 {
        *lock(&self.reads)
    }
}

#[async_trait]
impl Queues for FakeQueues {
    async fn depth(&self, queue_url: &str) -> Result<QueueDepth, AwsError> {
        *lock(&self.reads) += 1;
        if let Some(kind) = lock(&self.fail_next).pop_front() {
            return Err(AwsError::new("GetQueueAttributes", kind, "injected"));
        }
        lock(&self.depths).get(queue_url).copied().ok_or_else(|| {
            AwsError::new(
                "GetQueueAttributes",
                AwsErrorKind::NotFound,
                "no such queue",
            )
        })
    }
}

/// One recorded Kubernetes call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeCall {
    /// Cordon(node).
    Cordon(String),
    /// Annotate(node, key, value).
    Annotate(String, String, Option<String>),
    /// Taint(node, key).
    Taint(String, String),
    /// Evict(namespace/name, grace).
    Evict(String, Option<u32>),
    /// Delete(namespace/name, grace).
    Delete(String, Option<u32>),
}

#[derive(Debug, Default)]
struct ClusterState {
    pods: BTreeMap<String, Vec<PodRef>>,
    blocked: HashSet<String>,
    nodes: HashMap<String, KubeNode>,
    calls: Vec<KubeCall>,
    events: Vec<ActionEvent>,
    fail_next: VecDeque<(&'static str, KubeErrorKind)>,
}

/// A fake cluster: pods per node, evictions a PodDisruptionBudget refuses, recorded calls and Events.
#[derive(Debug, Default)]
pub struct FakeCluster {
    state: Mutex<ClusterState>,
}

impl FakeCluster {
    /// Puts a pod `namespace/name` on `node`.
    pub fn add_pod(&self, node: &str, namespace: &str, name: &str) {
        lock(&self.state)
            .pods
            .entry(node.to_owned())
            .or_default()
            .push(PodRef {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                terminating: false,
            });
    }
    /// Evictions of `namespace/name` are refused (429) until [`Self::unblock`].
    pub fn block(&self, namespace: &str, name: &str) {
        lock(&self.state)
            .blocked
            .insert(format!("{namespace}/{name}"));
    }
    /// Evictions of `namespace/name` are accepted again.
    pub fn unblock(&self, namespace: &str, name: &str) {
        lock(&self.state)
            .blocked
            .remove(&format!("{namespace}/{name}"));
    }
    /// Registers a Node (for [`Cluster::node_for_instance`]).
    pub fn add_node(&self, node: KubeNode) {
        let name = node.metadata.name.clone().unwrap_or_default();
        lock(&self.state).nodes.insert(name, node);
    }
    /// The next call named `call` (`cordon`, `annotate`, `taint`, `evict`, `pods`, `record`) fails.
    pub fn fail_next(&self, call: &'static str, kind: KubeErrorKind) {
        lock(&self.state).fail_next.push_back((call, kind));
    }
    /// The calls so far.
    pub fn calls(&self) -> Vec<KubeCall> {
        lock(&self.state).calls.clone()
    }
    /// The Events recorded so far.
    pub fn events(&self) -> Vec<ActionEvent> {
        lock(&self.state).events.clone()
    }
    /// The pods on a node now.
    pub fn pods(&self, node: &str) -> Vec<PodRef> {
        lock(&self.state)
            .pods
            .get(node)
            .cloned()
            .unwrap_or_default()
    }

    fn fail(s: &mut ClusterState, call: &'static str) -> Result<(), KubeError> {
        if let Some(pos) = s.fail_next.iter().position(|(c, _)| *c == call)
            && let Some((c, kind)) = s.fail_next.remove(pos)
        {
            return Err(KubeError::new(c, kind, "injected"));
        }
        Ok(())
    }
}

#[async_trait]
impl Cluster for FakeCluster {
    async fn cordon(&self, node: &str) -> Result<(), KubeError> {
        let mut s = lock(&self.state);
        s.calls.push(KubeCall::Cordon(node.to_owned()));
        Self::fail(&mut s, "cordon")
    }

    async fn annotate(
        &self,
        node: &str,
        annotations: &[(&str, Option<String>)],
    ) -> Result<(), KubeError> {
        let mut s = lock(&self.state);
        for (k, v) in annotations {
            s.calls.push(KubeCall::Annotate(
                node.to_owned(),
                (*k).to_owned(),
                v.clone(),
            ));
        }
        Self::fail(&mut s, "annotate")
    }

    async fn taint(&self, node: &str, taint: &Taint) -> Result<(), KubeError> {
        let mut s = lock(&self.state);
        s.calls
            .push(KubeCall::Taint(node.to_owned(), taint.key.clone()));
        Self::fail(&mut s, "taint")
    }

    async fn evictable_pods(&self, node: &str) -> Result<Vec<PodRef>, KubeError> {
        let mut s = lock(&self.state);
        Self::fail(&mut s, "pods")?;
        Ok(s.pods.get(node).cloned().unwrap_or_default())
    }

    async fn evict(&self, pod: &PodRef, grace_s: Option<u32>) -> Result<Evicted, KubeError> {
        let mut s = lock(&self.state);
        let key = format!("{}/{}", pod.namespace, pod.name);
        s.calls.push(KubeCall::Evict(key.clone(), grace_s));
        Self::fail(&mut s, "evict")?;
        if s.blocked.contains(&key) {
            return Ok(Evicted::Blocked(
                "Cannot evict pod as it would violate the pod's disruption budget.".into(),
            ));
        }
        let mut found = false;
        for pods in s.pods.values_mut() {
            let before = pods.len();
            pods.retain(|p| !(p.namespace == pod.namespace && p.name == pod.name));
            found |= pods.len() != before;
        }
        Ok(if found {
            Evicted::Accepted
        } else {
            Evicted::Gone
        })
    }

    async fn delete_pod(&self, pod: &PodRef, grace_s: Option<u32>) -> Result<(), KubeError> {
        let mut s = lock(&self.state);
        s.calls.push(KubeCall::Delete(
            format!("{}/{}", pod.namespace, pod.name),
            grace_s,
        ));
        Self::fail(&mut s, "delete")?;
        for pods in s.pods.values_mut() {
            pods.retain(|p| !(p.namespace == pod.namespace && p.name == pod.name));
        }
        Ok(())
    }

    async fn node_for_instance(&self, instance_id: &str) -> Result<Option<KubeNode>, KubeError> {
        let s = lock(&self.state);
        Ok(s.nodes
            .values()
            .find(|n| crate::observe::instance_id(n) == Some(instance_id))
            .cloned())
    }

    async fn record(&self, event: &ActionEvent) -> Result<(), KubeError> {
        let mut s = lock(&self.state);
        Self::fail(&mut s, "record")?;
        s.events.push(event.clone());
        Ok(())
    }
}
