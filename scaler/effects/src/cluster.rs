//! Kubernetes, behind one narrow trait shaped like the calls zerospot makes on Nodes, Pods and Events,
//! and its kube-rs implementation.
//!
//! Evictions go through a client with kube's default retry layer turned off: that layer retries HTTP 429
//! (which is how the Eviction API says "a PodDisruptionBudget forbids this now") for minutes, and a drain
//! must see the refusal at once and try again on its next pass instead.
//!
//! # RBAC these calls need
//! - `nodes`: `get`, `list`, `watch`, `patch` (cordon, annotations, taints);
//! - `pods`: `get`, `list`, `watch`, `delete` (the last resort before a Spot deadline); `pods/eviction`:
//!   `create`;
//! - `events.k8s.io` `events`: `create`, `patch`;
//! - `autoscaling.internal.knative.dev` `podautoscalers`: `get`, `list`, `watch`;
//! - `coordination.k8s.io` `leases`: `get`, `create`, `update` (leader election, in its own namespace).

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node as KubeNode, ObjectReference, Pod, Taint};
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use thiserror::Error;

/// What kind of failure a Kubernetes call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KubeErrorKind {
    /// 404.
    NotFound,
    /// 409: someone else changed the object first.
    Conflict,
    /// 429: too many requests, or an eviction a PodDisruptionBudget forbids now.
    TooManyRequests,
    /// 401/403: fix RBAC.
    Forbidden,
    /// No answer, or 5xx: retry.
    Unavailable,
    /// Anything else.
    Other,
}

impl KubeErrorKind {
    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            KubeErrorKind::NotFound => "not_found",
            KubeErrorKind::Conflict => "conflict",
            KubeErrorKind::TooManyRequests => "too_many_requests",
            KubeErrorKind::Forbidden => "forbidden",
            KubeErrorKind::Unavailable => "unavailable",
            KubeErrorKind::Other => "other",
        }
    }
}

/// A failed Kubernetes call, classified.
#[derive(Debug, Clone, Error)]
#[error("{call}: {message} ({kind:?})")]
pub struct KubeError {
    /// What was being done, e.g. `cordon node`.
    pub call: &'static str,
    /// What kind of failure.
    pub kind: KubeErrorKind,
    /// The API's message.
    pub message: String,
}

impl KubeError {
    /// An error of `kind` (for fakes and tests).
    pub fn new(call: &'static str, kind: KubeErrorKind, message: impl Into<String>) -> Self {
        KubeError {
            call,
            kind,
            message: message.into(),
        }
    }

    /// Classifies a `kube` error from `call`.
    pub fn from_kube(call: &'static str, e: kube::Error) -> Self {
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
        KubeError {
            call,
            kind,
            message: e.to_string(),
        }
    }
}

/// A pod, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Whether it is already being deleted.
    pub terminating: bool,
}

/// How an eviction went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evicted {
    /// Accepted: the pod is terminating.
    Accepted,
    /// The pod was already gone.
    Gone,
    /// Refused for now (a PodDisruptionBudget), with the API's message.
    Blocked(String),
}

/// An Event to record about a Node or an Auto Scaling group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionEvent {
    /// The Node's name, or `None` for an event about a group.
    pub node: Option<String>,
    /// The group (for events about a group), or the node's group.
    pub group: String,
    /// `Normal` (true) or `Warning`.
    pub normal: bool,
    /// CamelCase reason (`ScaledOut`, `Cordoned`, `Draining`, `Terminating`, `EvictionBlocked`, ...).
    pub reason: String,
    /// What was done, e.g. `SetDesiredCapacity`.
    pub action: String,
    /// Why, in words.
    pub note: String,
}

/// The Kubernetes calls zerospot makes.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// Marks the node unschedulable.
    async fn cordon(&self, node: &str) -> Result<(), KubeError>;
    /// Sets (`Some`) or removes (`None`) annotations on the node.
    async fn annotate(
        &self,
        node: &str,
        annotations: &[(&str, Option<String>)],
    ) -> Result<(), KubeError>;
    /// Adds a taint if no taint with its key and effect is there.
    async fn taint(&self, node: &str, taint: &Taint) -> Result<(), KubeError>;
    /// The pods on the node that a drain evicts: all but DaemonSet pods and static (mirror) pods.
    async fn evictable_pods(&self, node: &str) -> Result<Vec<PodRef>, KubeError>;
    /// Evicts a pod through the Eviction API (PodDisruptionBudgets apply), with this grace period.
    async fn evict(&self, pod: &PodRef, grace_s: Option<u32>) -> Result<Evicted, KubeError>;
    /// Deletes a pod (no PodDisruptionBudget check): only when the node dies anyway.
    async fn delete_pod(&self, pod: &PodRef, grace_s: Option<u32>) -> Result<(), KubeError>;
    /// The node whose `spec.providerID` names this instance.
    async fn node_for_instance(&self, instance_id: &str) -> Result<Option<KubeNode>, KubeError>;
    /// Records an Event.
    async fn record(&self, event: &ActionEvent) -> Result<(), KubeError>;
}

/// [`Cluster`] over kube-rs.
#[derive(Clone)]
pub struct KubeCluster {
    client: kube::Client,
    no_retry: kube::Client,
    recorder: Recorder,
    namespace: String,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl KubeCluster {
    /// From a client configuration; events about groups go to `namespace`, reported as `reporter`
    /// (`zerospot-scaler`, `zerospot-spot-interruption`, ...) with `instance` (a pod name).
    pub fn new(
        config: kube::Config,
        namespace: &str,
        reporter: &str,
        instance: Option<String>,
    ) -> Result<Self, KubeError> {
        let client = kube::Client::try_from(config.clone())
            .map_err(|e| KubeError::from_kube("build client", e))?;
        let mut evict_config = config;
        evict_config.default_retry = false;
        let no_retry = kube::Client::try_from(evict_config)
            .map_err(|e| KubeError::from_kube("build client", e))?;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: reporter.to_owned(),
                instance,
            },
        );
        Ok(KubeCluster {
            client,
            no_retry,
            recorder,
            namespace: namespace.to_owned(),
        })
    }

    /// The client (for watches).
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    fn nodes(&self) -> Api<KubeNode> {
        Api::all(self.client.clone())
    }
}

fn owned_by_daemonset(pod: &Pod) -> bool {
    pod.metadata
        .owner_references
        .as_ref()
        .is_some_and(|o| o.iter().any(|r| r.kind == "DaemonSet"))
}

fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"))
}

fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

#[async_trait]
impl Cluster for KubeCluster {
    async fn cordon(&self, node: &str) -> Result<(), KubeError> {
        let patch = serde_json::json!({"spec": {"unschedulable": true}});
        self.nodes()
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| KubeError::from_kube("cordon node", e))?;
        Ok(())
    }

    async fn annotate(
        &self,
        node: &str,
        annotations: &[(&str, Option<String>)],
    ) -> Result<(), KubeError> {
        let map: BTreeMap<&str, Option<&String>> =
            annotations.iter().map(|(k, v)| (*k, v.as_ref())).collect();
        let patch = serde_json::json!({"metadata": {"annotations": map}});
        self.nodes()
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| KubeError::from_kube("annotate node", e))?;
        Ok(())
    }

    async fn taint(&self, node: &str, taint: &Taint) -> Result<(), KubeError> {
        // Merge patches replace whole lists: read, add, write back guarded by the resourceVersion.
        for _ in 0..5 {
            let current = self
                .nodes()
                .get(node)
                .await
                .map_err(|e| KubeError::from_kube("get node", e))?;
            let mut taints = current
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            if taints
                .iter()
                .any(|t| t.key == taint.key && t.effect == taint.effect)
            {
                return Ok(());
            }
            taints.push(taint.clone());
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "spec": {"taints": taints},
            });
            match self
                .nodes()
                .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(KubeError::from_kube("taint node", e)),
            }
        }
        Err(KubeError::new(
            "taint node",
            KubeErrorKind::Conflict,
            "the node kept changing",
        ))
    }

    async fn evictable_pods(&self, node: &str) -> Result<Vec<PodRef>, KubeError> {
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .map_err(|e| KubeError::from_kube("list pods on node", e))?;
        let mut out: Vec<PodRef> = pods
            .items
            .iter()
            .filter(|p| !owned_by_daemonset(p) && !is_mirror(p) && !is_finished(p))
            .map(|p| PodRef {
                namespace: p.metadata.namespace.clone().unwrap_or_default(),
                name: p.metadata.name.clone().unwrap_or_default(),
                terminating: p.metadata.deletion_timestamp.is_some(),
            })
            .collect();
        out.sort();
        Ok(out)
    }

    async fn evict(&self, pod: &PodRef, grace_s: Option<u32>) -> Result<Evicted, KubeError> {
        let api = Api::<Pod>::namespaced(self.no_retry.clone(), &pod.namespace);
        let params = EvictParams {
            delete_options: Some(DeleteParams {
                grace_period_seconds: grace_s,
                ..DeleteParams::default()
            }),
            ..EvictParams::default()
        };
        match api.evict(&pod.name, &params).await {
            Ok(_) => Ok(Evicted::Accepted),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Evicted::Gone),
            Err(kube::Error::Api(s)) if s.code == 429 => Ok(Evicted::Blocked(s.message.clone())),
            Err(e) => Err(KubeError::from_kube("evict pod", e)),
        }
    }

    async fn delete_pod(&self, pod: &PodRef, grace_s: Option<u32>) -> Result<(), KubeError> {
        let api = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace);
        let params = DeleteParams {
            grace_period_seconds: grace_s,
            ..DeleteParams::default()
        };
        match api.delete(&pod.name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(KubeError::from_kube("delete pod", e)),
        }
    }

    async fn node_for_instance(&self, instance_id: &str) -> Result<Option<KubeNode>, KubeError> {
        // The node name is not the instance id on EKS (it is the private DNS name): look at providerIDs.
        let nodes = self
            .nodes()
            .list(&ListParams::default())
            .await
            .map_err(|e| KubeError::from_kube("list nodes", e))?;
        Ok(nodes
            .items
            .into_iter()
            .find(|n| crate::observe::instance_id(n) == Some(instance_id)))
    }

    async fn record(&self, event: &ActionEvent) -> Result<(), KubeError> {
        let reference = match &event.node {
            Some(node) => ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.clone()),
                ..ObjectReference::default()
            },
            None => ObjectReference {
                api_version: Some("autoscaling.amazonaws.com/v1".into()),
                kind: Some("AutoScalingGroup".into()),
                name: Some(event.group.clone()),
                namespace: Some(self.namespace.clone()),
                ..ObjectReference::default()
            },
        };
        let ev = Event {
            type_: if event.normal {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: event.reason.clone(),
            note: Some(truncate(&event.note, 1000)),
            action: event.action.clone(),
            secondary: None,
        };
        self.recorder
            .publish(&ev, &reference)
            .await
            .map_err(|e| KubeError::from_kube("record event", e))
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}
