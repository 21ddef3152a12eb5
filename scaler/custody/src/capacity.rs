//! Where requests can go now: free slots per model on Ready pods, and work in flight per node.
//!
//! Pure functions over the dispatcher's Kubernetes caches.
//!
//! # Rules
//! - A model pod counts when it is Ready (its Ready condition is True), not being deleted, and on a
//!   node that is Ready, schedulable and not tainted `zerospot.io/interrupted`. In `pods` mode it also
//!   needs an IP.
//! - Free slots of a model = its counted pods x its `concurrency` - its requests in flight; in `pods`
//!   mode counted per pod, since the dispatcher picks the pod.
//! - Free node lanes of a model ([`free_node_lanes`]): whole pods' worth of free GPU slots on usable
//!   nodes, less what pending pods will take, times `concurrency`. With `fill_free_nodes` the
//!   dispatcher sends that many requests (less those it already sent that way) through the model's
//!   route, so Knative grows pods onto capacity already paid for; Ready pods are filled first.
//! - Work in flight per node, for the scaler: in `pods` mode the dispatcher knows each request's node
//!   and publishes exact counts. In `route` mode the route picks the pod, so the dispatcher attributes
//!   conservatively: each node hosting a counted pod of a model with `k` requests in flight is given
//!   `min(k, pods there x concurrency)`; the same for the requests a `pods`-mode model sent through its
//!   route into free node slots. A node can be over-counted, never under-counted, so the scaler never
//!   removes a node that may be serving.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Node, Pod};
use zerospot_effects::config::{ModelConfig, PoolConfig, names};

fn condition_true(
    conditions: Option<&Vec<k8s_openapi::api::core::v1::PodCondition>>,
    kind: &str,
) -> bool {
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}

/// Why a node cannot take requests, or `None` when it can.
pub fn node_unusable(node: &Node) -> Option<&'static str> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let spec = node.spec.as_ref();
    let interrupted = spec
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == names::TAINT_INTERRUPTED));
    if interrupted {
        Some("node interrupted")
    } else if !ready {
        Some("node not Ready")
    } else if spec.and_then(|s| s.unschedulable).unwrap_or(false) {
        Some("node cordoned")
    } else {
        None
    }
}

/// Whether `pod` belongs to `model`'s Knative Service.
pub fn is_model_pod(pod: &Pod, model: &ModelConfig) -> bool {
    pod.metadata.namespace.as_deref() == Some(model.namespace.as_str())
        && pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(names::LABEL_KNATIVE_SERVICE))
            .is_some_and(|s| *s == model.service)
}

/// One model pod that can take requests now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTarget {
    /// Namespace of the pod.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID (a pod recreated under the same name is another pod).
    pub uid: String,
    /// The node it runs on.
    pub node: String,
    /// Its IP, once it has one.
    pub ip: Option<String>,
}

/// Why `pod` cannot take requests (not Ready, terminating, unscheduled, its node unusable or unknown),
/// or `None` when it can.
pub fn pod_unusable(pod: &Pod, nodes: &[&Node]) -> Option<&'static str> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Some("pod terminating");
    }
    if !condition_true(
        pod.status.as_ref().and_then(|s| s.conditions.as_ref()),
        "Ready",
    ) {
        return Some("pod not Ready");
    }
    let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
        return Some("pod not scheduled");
    };
    match nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node_name))
    {
        Some(node) => node_unusable(node),
        None => Some("node gone"),
    }
}

/// How long before a terminating pod's deletion deadline its requests are handed back, seconds: at the
/// deadline the kubelet kills the container, so what still runs there then would fail.
pub const TERMINATING_MARGIN_S: i64 = 5;

/// Why requests running on a pod must go elsewhere at once, or `None` while they may finish there:
/// the pod is gone, or within [`TERMINATING_MARGIN_S`] of its deletion deadline, or its node is gone
/// or tainted `zerospot.io/interrupted` (a Spot interruption: two minutes left). A terminating pod
/// before its deadline keeps its requests: Knative's queue-proxy stops taking new ones at SIGTERM and
/// lets those in flight finish within the grace period (the scaler's consolidation evicts with the
/// pods' own grace, which Knative sets to the revision timeout, 600 s in deploy/). A pod that is
/// merely not Ready (a readiness probe failing under load), or a cordoned node, keeps its requests
/// too: they may well finish.
pub fn pod_doomed(pod: Option<&Pod>, nodes: &[&Node], now: DateTime<Utc>) -> Option<&'static str> {
    let Some(pod) = pod else {
        return Some("pod gone");
    };
    if let Some(deadline) = &pod.metadata.deletion_timestamp {
        let deadline_ms = deadline.0.as_millisecond();
        if deadline_ms <= (now + chrono::Duration::seconds(TERMINATING_MARGIN_S)).timestamp_millis()
        {
            return Some("pod terminating");
        }
    }
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.as_deref())?;
    let Some(node) = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node_name))
    else {
        return Some("node gone");
    };
    (node_unusable(node) == Some("node interrupted")).then_some("node interrupted")
}

/// `model`'s pods that can take requests now, in a stable order (by node, then name).
pub fn ready_pods(model: &ModelConfig, pods: &[&Pod], nodes: &[&Node]) -> Vec<PodTarget> {
    let mut out: Vec<PodTarget> = pods
        .iter()
        .filter(|p| is_model_pod(p, model) && pod_unusable(p, nodes).is_none())
        .map(|p| PodTarget {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            uid: p.metadata.uid.clone().unwrap_or_default(),
            node: p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            ip: p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty()),
        })
        .collect();
    out.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    out
}

/// Free slots of `model` with `in_flight` requests running (`route` mode: the route picks the pod).
pub fn free_slots(model: &ModelConfig, pods: &[&Pod], nodes: &[&Node], in_flight: u32) -> u32 {
    let pods = u32::try_from(ready_pods(model, pods, nodes).len()).unwrap_or(u32::MAX);
    pods.saturating_mul(model.concurrency)
        .saturating_sub(in_flight)
}

/// Free slots per pod in `pods` mode: each counted pod with an IP, less the requests the dispatcher
/// runs on it (`running(uid)`), most free first (ties in [`ready_pods`] order).
pub fn free_pod_slots(
    model: &ModelConfig,
    pods: &[&Pod],
    nodes: &[&Node],
    running: impl Fn(&str) -> u32,
) -> Vec<(PodTarget, u32)> {
    let mut out: Vec<(PodTarget, u32)> = ready_pods(model, pods, nodes)
        .into_iter()
        .filter(|p| p.ip.is_some())
        .map(|p| {
            let free = model.concurrency.saturating_sub(running(&p.uid));
            (p, free)
        })
        .filter(|(_, free)| *free > 0)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.1));
    out
}

/// The extended resource a pod of `model` asks for: `nvidia.com/gpu`, or its MIG profile's slice.
pub fn gpu_resource(model: &ModelConfig) -> String {
    model.mig_profile.as_deref().map_or_else(
        || names::RESOURCE_GPU.to_owned(),
        |p| format!("{}{p}", names::RESOURCE_MIG_PREFIX),
    )
}

/// How many of `resource` a pod asks for (the sum over its containers of the limit, or else the
/// request: Kubernetes sets an extended resource's request to its limit).
fn pod_asks(pod: &Pod, resource: &str) -> u64 {
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    spec.containers
        .iter()
        .filter_map(|c| {
            let r = c.resources.as_ref()?;
            r.limits
                .as_ref()
                .and_then(|l| l.get(resource))
                .or_else(|| r.requests.as_ref().and_then(|q| q.get(resource)))
        })
        .map(|q| q.0.trim().parse::<u64>().unwrap_or(0))
        .sum()
}

fn holds_resources(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// Whether `node` belongs to `pool`: it matches the pool's `node_selector` (equality terms `k=v`
/// joined by commas; a selector with any other kind of term matches nothing here), by default
/// `eks.amazonaws.com/nodegroup=<pool name>`.
pub fn in_pool(node: &Node, pool: &PoolConfig) -> bool {
    let labels = node.metadata.labels.as_ref();
    let has = |k: &str, v: &str| labels.and_then(|l| l.get(k)).is_some_and(|x| x == v);
    match pool.node_selector.as_deref() {
        None => has(names::LABEL_NODEGROUP, &pool.name),
        Some(selector) => selector.split(',').map(str::trim).all(|term| {
            let (k, v) = term
                .split_once("==")
                .or_else(|| term.split_once('='))
                .unwrap_or((term, ""));
            let (k, v) = (k.trim(), v.trim());
            !k.is_empty() && !k.ends_with('!') && !v.is_empty() && has(k, v)
        }),
    }
}

/// Lanes of `model` that the free GPU slots of usable nodes could serve once Knative places pods
/// there: capacity already paid for that no pod holds (the core's `demand::forwardable` counts
/// these with the Ready pods' free lanes).
///
/// - A node counts when it is in the model's pool or that pool's fallback (`pools`, [`in_pool`]),
///   can take requests ([`node_unusable`] is `None`) and advertises the model's resource
///   ([`gpu_resource`]); its free slots are its allocatable less what every pod placed there (any
///   Knative pod, not terminating or finished) asks for.
/// - Slots that pending pods (not yet placed, of any model in `models` sharing the model's pool)
///   will take are not free.
/// - Lanes are whole pods' worth of free slots (`slots_per_pod` each) times `concurrency`.
///
/// `pods` are the Knative pods the dispatcher watches: a pool's node shared with other GPU
/// workloads counts their slots as free.
pub fn free_node_lanes(
    model: &ModelConfig,
    models: &[ModelConfig],
    pools: &[PoolConfig],
    pods: &[&Pod],
    nodes: &[&Node],
) -> u32 {
    let resource = gpu_resource(model);
    let home = pools.iter().find(|p| p.name == model.pool);
    let fallback = home
        .and_then(|p| p.fallback.as_deref())
        .and_then(|f| pools.iter().find(|p| p.name == f));
    // One pass over the pods: what those placed ask for per node, and what pending pods of the pool's
    // models will take.
    let mut used: HashMap<&str, u64> = HashMap::new();
    let mut pending: u64 = 0;
    for p in pods.iter().filter(|p| holds_resources(p)) {
        match p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(node) => *used.entry(node).or_default() += pod_asks(p, &resource),
            None if models
                .iter()
                .any(|m| m.pool == model.pool && is_model_pod(p, m)) =>
            {
                pending += pod_asks(p, &resource);
            }
            None => {}
        }
    }
    let free: u64 = nodes
        .iter()
        .filter(|n| {
            node_unusable(n).is_none()
                && [home, fallback]
                    .into_iter()
                    .flatten()
                    .any(|p| in_pool(n, p))
        })
        .map(|node| {
            let allocatable = node
                .status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref())
                .and_then(|a| a.get(&resource))
                .map_or(0, |q| q.0.trim().parse::<u64>().unwrap_or(0));
            let held = node
                .metadata
                .name
                .as_deref()
                .and_then(|n| used.get(n))
                .copied()
                .unwrap_or(0);
            allocatable.saturating_sub(held)
        })
        .sum();
    let whole_pods = free.saturating_sub(pending) / u64::from(model.slots_per_pod.max(1));
    u32::try_from(whole_pods.saturating_mul(u64::from(model.concurrency))).unwrap_or(u32::MAX)
}

/// Work in flight per node for `route`-mode models (see the module docs), for every node hosting a
/// pod of a busy model.
pub fn in_flight_per_node(models: &[(&ModelConfig, u32)], pods: &[&Pod]) -> BTreeMap<String, u32> {
    let mut out: BTreeMap<String, u32> = BTreeMap::new();
    for (model, in_flight) in models {
        let mut per_node: BTreeMap<&str, u32> = BTreeMap::new();
        for node in pods
            .iter()
            .filter(|p| is_model_pod(p, model) && p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
        {
            *per_node.entry(node).or_default() += 1;
        }
        for (node, pods_there) in per_node {
            let share = (*in_flight).min(pods_there.saturating_mul(model.concurrency));
            *out.entry(node.to_owned()).or_default() += share;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        NodeCondition, NodeSpec, NodeStatus, PodCondition, PodSpec, PodStatus, Taint,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn model(concurrency: u32) -> ModelConfig {
        serde_json::from_value(serde_json::json!({
            "name": "llama", "pool": "gpu", "namespace": "models", "service": "llama", "concurrency": concurrency
        }))
        .unwrap()
    }

    fn node(name: &str, ready: bool) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
        }
    }

    fn pod(service: &str, node: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("{service}-{node}")),
                namespace: Some("models".into()),
                labels: Some(
                    [(names::LABEL_KNATIVE_SERVICE.to_owned(), service.to_owned())].into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn only_ready_pods_on_usable_nodes_offer_slots() {
        let m = model(4);
        let mut tainted = node("n3", true);
        tainted.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: names::TAINT_INTERRUPTED.into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        }]);
        let nodes = [
            node("n1", true),
            node("n2", false),
            tainted,
            node("n4", true),
        ];
        let node_refs: Vec<&Node> = nodes.iter().collect();
        let pods = [
            pod("llama", "n1", true),
            pod("llama", "n2", true),
            pod("llama", "n3", true),
            pod("llama", "n4", false),
            pod("mistral", "n1", true),
        ];
        let pod_refs: Vec<&Pod> = pods.iter().collect();
        assert_eq!(
            free_slots(&m, &pod_refs, &node_refs, 0),
            4,
            "only n1's pod counts"
        );
        assert_eq!(free_slots(&m, &pod_refs, &node_refs, 3), 1);
        assert_eq!(free_slots(&m, &pod_refs, &node_refs, 9), 0);
    }

    fn with_ip(mut p: Pod, uid: &str, ip: Option<&str>) -> Pod {
        p.metadata.uid = Some(uid.into());
        p.status.as_mut().unwrap().pod_ip = ip.map(Into::into);
        p
    }

    #[test]
    fn pods_mode_offers_each_pod_s_own_free_slots_most_free_first_and_needs_an_ip() {
        let m = model(4);
        let nodes = [node("n1", true), node("n2", true), node("n3", true)];
        let node_refs: Vec<&Node> = nodes.iter().collect();
        let pods = [
            with_ip(pod("llama", "n1", true), "u1", Some("10.0.0.1")),
            with_ip(pod("llama", "n2", true), "u2", Some("10.0.0.2")),
            with_ip(pod("llama", "n3", true), "u3", None),
        ];
        let pod_refs: Vec<&Pod> = pods.iter().collect();
        let running = |uid: &str| match uid {
            "u1" => 3,
            "u2" => 1,
            _ => 0,
        };
        let free = free_pod_slots(&m, &pod_refs, &node_refs, running);
        let got: Vec<(&str, u32)> = free.iter().map(|(p, f)| (p.uid.as_str(), *f)).collect();
        assert_eq!(
            got,
            [("u2", 3), ("u1", 1)],
            "no IP, no slot; most free first"
        );
        assert_eq!(free[0].0.ip.as_deref(), Some("10.0.0.2"));
        assert_eq!(free[0].0.node, "n2");
        let full = free_pod_slots(&m, &pod_refs, &node_refs, |_| 4);
        assert!(full.is_empty(), "a full pod offers nothing");
    }

    #[test]
    fn requests_leave_a_pod_only_when_it_or_its_node_is_going_away() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let nodes = [node("n1", true), node("n2", false), node("n3", true)];
        let mut interrupted = nodes.clone();
        interrupted[2].spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: names::TAINT_INTERRUPTED.into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        }]);
        let refs: Vec<&Node> = interrupted.iter().collect();
        let mut cordoned = node("n1", true);
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        assert_eq!(pod_doomed(None, &refs, now), Some("pod gone"));
        assert_eq!(
            pod_doomed(Some(&pod("llama", "n1", true)), &refs, now),
            None
        );
        assert_eq!(
            pod_doomed(Some(&pod("llama", "n1", false)), &refs, now),
            None,
            "not Ready (a probe failing under load) keeps its requests"
        );
        assert_eq!(
            pod_doomed(Some(&pod("llama", "n2", true)), &refs, now),
            None,
            "a NotReady node may come back"
        );
        assert_eq!(
            pod_doomed(Some(&pod("llama", "n3", true)), &refs, now),
            Some("node interrupted")
        );
        assert_eq!(
            pod_doomed(Some(&pod("llama", "n9", true)), &refs, now),
            Some("node gone")
        );
        let mut terminating = pod("llama", "n1", true);
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(
            pod_doomed(Some(&terminating), &refs, now),
            Some("pod terminating"),
            "past its deletion deadline"
        );
        // Terminating with time left (evicted with the pods' own grace): its requests finish there,
        // until shortly before the deadline.
        let mut draining = pod("llama", "n1", true);
        let deadline = |s: i64| {
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(now.timestamp() + s).unwrap(),
            ))
        };
        draining.metadata.deletion_timestamp = deadline(600);
        assert_eq!(pod_doomed(Some(&draining), &refs, now), None);
        draining.metadata.deletion_timestamp = deadline(TERMINATING_MARGIN_S + 1);
        assert_eq!(pod_doomed(Some(&draining), &refs, now), None);
        draining.metadata.deletion_timestamp = deadline(TERMINATING_MARGIN_S);
        assert_eq!(
            pod_doomed(Some(&draining), &refs, now),
            Some("pod terminating")
        );
        // Time left, but on an interrupted node: moved at once.
        let mut on_interrupted = pod("llama", "n3", true);
        on_interrupted.metadata.deletion_timestamp = deadline(600);
        assert_eq!(
            pod_doomed(Some(&on_interrupted), &refs, now),
            Some("node interrupted")
        );
        // A new request never goes to a terminating pod, deadline or not.
        draining.metadata.deletion_timestamp = deadline(600);
        assert_eq!(pod_unusable(&draining, &refs), Some("pod terminating"));
        let cordoned_refs = [&cordoned];
        assert_eq!(
            pod_doomed(Some(&pod("llama", "n1", true)), &cordoned_refs, now),
            None
        );
        assert_eq!(node_unusable(&cordoned), Some("node cordoned"));
        assert_eq!(node_unusable(&nodes[1]), Some("node not Ready"));
        let mut unscheduled = pod("llama", "n1", true);
        unscheduled.spec.as_mut().unwrap().node_name = None;
        assert_eq!(pod_doomed(Some(&unscheduled), &refs, now), None);
        assert_eq!(pod_unusable(&unscheduled, &refs), Some("pod not scheduled"));
        assert_eq!(pod_unusable(&terminating, &refs), Some("pod terminating"));
        assert_eq!(
            pod_unusable(&pod("llama", "n1", false), &refs),
            Some("pod not Ready")
        );
        assert_eq!(
            pod_unusable(&pod("llama", "n9", true), &refs),
            Some("node gone")
        );
        assert_eq!(pod_unusable(&pod("llama", "n1", true), &refs), None);
    }

    #[test]
    fn work_in_flight_is_attributed_to_every_node_that_may_serve_it() {
        let m = model(2);
        let mut leaving = pod("llama", "n3", true);
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let pods = [
            pod("llama", "n1", true),
            pod("llama", "n2", true),
            leaving,
            pod("mistral", "n4", true),
        ];
        let pod_refs: Vec<&Pod> = pods.iter().collect();
        let per_node = in_flight_per_node(&[(&m, 3)], &pod_refs);
        assert_eq!(per_node.get("n1"), Some(&2));
        assert_eq!(per_node.get("n2"), Some(&2));
        assert_eq!(
            per_node.get("n3"),
            None,
            "a terminating pod serves nothing new"
        );
        assert_eq!(per_node.get("n4"), None, "another model's pod");
        let idle = in_flight_per_node(&[(&m, 0)], &pod_refs);
        assert_eq!(idle.get("n1"), Some(&0));
    }

    fn pools() -> Vec<PoolConfig> {
        serde_json::from_value(serde_json::json!([
            {"name": "gpu", "asg_name": "gpu-asg", "fallback": "gpu-od"},
            {"name": "gpu-od", "asg_name": "gpu-od-asg"},
            {"name": "other", "asg_name": "other-asg"},
            {"name": "custom", "asg_name": "custom-asg", "node_selector": "team=ml, tier==gpu"}
        ]))
        .unwrap()
    }

    fn gpu_node(name: &str, ready: bool, resource: &str, count: u32) -> Node {
        in_group(name, ready, resource, count, "gpu")
    }

    fn in_group(name: &str, ready: bool, resource: &str, count: u32, group: &str) -> Node {
        let mut n = node(name, ready);
        n.metadata.labels = Some([(names::LABEL_NODEGROUP.to_owned(), group.to_owned())].into());
        n.status.as_mut().unwrap().allocatable = Some(
            [(
                resource.to_owned(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity(count.to_string()),
            )]
            .into(),
        );
        n
    }

    fn asking(mut p: Pod, resource: &str, n: u32) -> Pod {
        p.spec.as_mut().unwrap().containers = vec![k8s_openapi::api::core::v1::Container {
            name: "server".into(),
            resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                limits: Some(
                    [(
                        resource.to_owned(),
                        k8s_openapi::apimachinery::pkg::api::resource::Quantity(n.to_string()),
                    )]
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }];
        p
    }

    fn pending(mut p: Pod) -> Pod {
        p.spec.as_mut().unwrap().node_name = None;
        p
    }

    #[test]
    fn free_node_lanes_count_whole_pods_of_free_slots_on_usable_nodes_less_pending_pods() {
        const GPU: &str = "nvidia.com/gpu";
        let mut m = model(4);
        let mistral: ModelConfig = serde_json::from_value(serde_json::json!({
            "name": "mistral", "pool": "gpu", "namespace": "models", "service": "mistral"
        }))
        .unwrap();
        let elsewhere: ModelConfig = serde_json::from_value(serde_json::json!({
            "name": "phi", "pool": "cpu", "namespace": "models", "service": "phi"
        }))
        .unwrap();
        let models = [m.clone(), mistral, elsewhere];
        let mut tainted = gpu_node("n3", true, GPU, 4);
        tainted.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: names::TAINT_INTERRUPTED.into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        }]);
        let nodes = [
            gpu_node("n1", true, GPU, 4),
            gpu_node("n2", false, GPU, 4),
            tainted,
            node("n4", true),
            gpu_node("n5", true, GPU, 2),
        ];
        let node_refs: Vec<&Node> = nodes.iter().collect();
        let mut gone = asking(pod("llama", "n5", true), GPU, 1);
        gone.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let mut done = asking(pod("mistral", "n5", true), GPU, 1);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let pods = [
            // n1: llama and mistral hold one slot each, a not-yet-Ready pod a third: 1 free.
            asking(pod("llama", "n1", true), GPU, 1),
            asking(pod("mistral", "n1", true), GPU, 1),
            asking(pod("mistral", "n1", false), GPU, 1),
            // n5: its pods are terminating or finished: 2 free.
            gone,
            done,
        ];
        let pod_refs: Vec<&Pod> = pods.iter().collect();
        // 3 free slots (n2 is not Ready, n3 interrupted, n4 has no GPU), 1 slot per pod, 4 lanes each.
        assert_eq!(
            free_node_lanes(&m, &models, &pools(), &pod_refs, &node_refs),
            12
        );
        // A pending pod of a model of the same pool will take one; one of another pool will not.
        let mut more: Vec<Pod> = pods.to_vec();
        more.push(pending(asking(pod("mistral", "x", false), GPU, 1)));
        more.push(pending(asking(pod("phi", "x", false), GPU, 1)));
        let more_refs: Vec<&Pod> = more.iter().collect();
        assert_eq!(
            free_node_lanes(&m, &models, &pools(), &more_refs, &node_refs),
            8
        );
        let other_pool_only: Vec<&Pod> = more_refs
            .iter()
            .copied()
            .filter(|p| {
                !(is_model_pod(p, &models[1]) && p.spec.as_ref().unwrap().node_name.is_none())
            })
            .collect();
        assert_eq!(
            free_node_lanes(&m, &models, &pools(), &other_pool_only, &node_refs),
            12,
            "a pending pod of another pool's model takes nothing here"
        );
        // Two slots per pod: only whole pods.
        m.slots_per_pod = 2;
        assert_eq!(
            free_node_lanes(&m, &models, &pools(), &pod_refs, &node_refs),
            4
        );
        m.slots_per_pod = 4;
        assert_eq!(
            free_node_lanes(&m, &models, &pools(), &pod_refs, &node_refs),
            0
        );
        // Nodes of the fallback pool count; those of another pool do not.
        let spread = [
            in_group("f1", true, GPU, 2, "gpu-od"),
            in_group("o1", true, GPU, 4, "other"),
        ];
        let spread_refs: Vec<&Node> = spread.iter().collect();
        m.slots_per_pod = 1;
        assert_eq!(free_node_lanes(&m, &models, &pools(), &[], &spread_refs), 8);
        let no_fallback: Vec<PoolConfig> = pools()
            .into_iter()
            .map(|mut p| {
                p.fallback = None;
                p
            })
            .collect();
        assert_eq!(
            free_node_lanes(&m, &models, &no_fallback, &[], &spread_refs),
            0
        );
        // A full pool: nothing.
        let full = [gpu_node("n1", true, GPU, 2)];
        let full_refs: Vec<&Node> = full.iter().collect();
        assert_eq!(
            free_node_lanes(&m, &models, &pools(), &pod_refs, &full_refs),
            0
        );
    }

    #[test]
    fn a_pool_s_nodes_are_those_its_selector_or_its_name_picks() {
        let ps = pools();
        let labelled = |labels: &[(&str, &str)]| {
            let mut n = node("n", true);
            n.metadata.labels = Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            );
            n
        };
        let by_name = labelled(&[(names::LABEL_NODEGROUP, "gpu")]);
        assert!(in_pool(&by_name, &ps[0]));
        assert!(!in_pool(&by_name, &ps[1]));
        assert!(!in_pool(&node("n", true), &ps[0]), "no labels");
        let custom = &ps[3];
        assert!(in_pool(
            &labelled(&[("team", "ml"), ("tier", "gpu")]),
            custom
        ));
        assert!(!in_pool(&labelled(&[("team", "ml")]), custom), "every term");
        assert!(!in_pool(
            &labelled(&[("team", "ml"), ("tier", "cpu")]),
            custom
        ));
        let mut odd = custom.clone();
        for selector in ["team!=ml", "team in (ml)", "team", "=ml", "team="] {
            odd.node_selector = Some(selector.into());
            assert!(
                !in_pool(&labelled(&[("team", "ml"), ("team!", "ml")]), &odd),
                "{selector}"
            );
        }
    }

    #[test]
    fn free_node_lanes_read_the_model_s_mig_slice_and_requests_when_no_limit_is_set() {
        let mut m = model(1);
        m.mig_profile = Some("1g.10gb".into());
        assert_eq!(gpu_resource(&m), "nvidia.com/mig-1g.10gb");
        assert_eq!(gpu_resource(&model(1)), "nvidia.com/gpu");
        let nodes = [
            gpu_node("n1", true, "nvidia.com/mig-1g.10gb", 7),
            gpu_node("n2", true, "nvidia.com/gpu", 4),
        ];
        let node_refs: Vec<&Node> = nodes.iter().collect();
        let mut by_request = pod("llama", "n1", true);
        by_request.spec.as_mut().unwrap().containers =
            vec![k8s_openapi::api::core::v1::Container {
                name: "server".into(),
                resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                    requests: Some(
                        [(
                            "nvidia.com/mig-1g.10gb".to_owned(),
                            k8s_openapi::apimachinery::pkg::api::resource::Quantity("2".into()),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }];
        let pods = [
            by_request,
            asking(pod("llama", "n2", true), "nvidia.com/gpu", 1),
        ];
        let pod_refs: Vec<&Pod> = pods.iter().collect();
        let models = [m.clone()];
        assert_eq!(
            free_node_lanes(&m, &models, &pools(), &pod_refs, &node_refs),
            5
        );
        // A quantity that is not a whole number counts as nothing.
        let odd = [gpu_node("n1", true, "nvidia.com/mig-1g.10gb", 7)];
        let mut odd_nodes: Vec<Node> = odd.to_vec();
        odd_nodes[0].status.as_mut().unwrap().allocatable = Some(
            [(
                "nvidia.com/mig-1g.10gb".to_owned(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("7.5".into()),
            )]
            .into(),
        );
        let odd_refs: Vec<&Node> = odd_nodes.iter().collect();
        assert_eq!(
            free_node_lanes(&m, &models, &pools(), &pod_refs, &odd_refs),
            0
        );
    }
}
