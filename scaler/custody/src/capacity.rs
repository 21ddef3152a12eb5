//! Where requests can go now: free slots per model on Ready pods, and work in flight per node.
//!
//! Pure functions over the dispatcher's Kubernetes caches.
//!
//! # Rules
//! - A model pod counts when it is Ready (its Ready condition is True), not being deleted, and on a
//!   node that is Ready, schedulable and not tainted `zerospot.io/interrupted`.
//! - Free slots of a model = its counted pods x its `concurrency` - its requests in flight.
//! - Work in flight per node, for the scaler: requests go through the model's Knative route, which
//!   picks the pod, so the dispatcher cannot know which node serves which request. It attributes
//!   conservatively: each node hosting a counted pod of a model with `k` requests in flight is given
//!   `min(k, pods there x concurrency)`. A node can be over-counted, never under-counted, so the scaler
//!   never removes a node that may be serving.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use zerospot_effects::config::{ModelConfig, names};

fn condition_true(
    conditions: Option<&Vec<k8s_openapi::api::core::v1::PodCondition>>,
    kind: &str,
) -> bool {
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}

/// Whether a node can take requests: Ready, schedulable, not interrupted.
pub fn node_usable(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let spec = node.spec.as_ref();
    let cordoned = spec.and_then(|s| s.unschedulable).unwrap_or(false);
    let interrupted = spec
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == names::TAINT_INTERRUPTED));
    ready && !cordoned && !interrupted
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

/// The nodes of `model`'s counted pods (one entry per pod).
pub fn ready_pod_nodes<'a>(
    model: &ModelConfig,
    pods: &'a [&'a Pod],
    nodes: &[&Node],
) -> Vec<&'a str> {
    pods.iter()
        .filter(|p| is_model_pod(p, model))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            condition_true(
                p.status.as_ref().and_then(|s| s.conditions.as_ref()),
                "Ready",
            )
        })
        .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
        .filter(|n| {
            nodes
                .iter()
                .find(|node| node.metadata.name.as_deref() == Some(*n))
                .is_some_and(|node| node_usable(node))
        })
        .collect()
}

/// Free slots of `model` with `in_flight` requests running.
pub fn free_slots(model: &ModelConfig, pods: &[&Pod], nodes: &[&Node], in_flight: u32) -> u32 {
    let pods = u32::try_from(ready_pod_nodes(model, pods, nodes).len()).unwrap_or(u32::MAX);
    pods.saturating_mul(model.concurrency)
        .saturating_sub(in_flight)
}

/// Work in flight per node (see the module docs), for every node hosting a pod of a busy model.
pub fn in_flight_per_node(
    models: &[(&ModelConfig, u32)],
    pods: &[&Pod],
    nodes: &[&Node],
) -> BTreeMap<String, u32> {
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
    let _ = nodes;
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

    #[test]
    fn work_in_flight_is_attributed_to_every_node_that_may_serve_it() {
        let m = model(2);
        let nodes = [node("n1", true), node("n2", true)];
        let node_refs: Vec<&Node> = nodes.iter().collect();
        let pods = [pod("llama", "n1", true), pod("llama", "n2", true)];
        let pod_refs: Vec<&Pod> = pods.iter().collect();
        let per_node = in_flight_per_node(&[(&m, 3)], &pod_refs, &node_refs);
        assert_eq!(per_node.get("n1"), Some(&2));
        assert_eq!(per_node.get("n2"), Some(&2));
        let idle = in_flight_per_node(&[(&m, 0)], &pod_refs, &node_refs);
        assert_eq!(idle.get("n1"), Some(&0));
    }
}
