//! What the caches keep of each object, and which changes matter.
//!
//! The scaler caches every GPU node and every model pod. Full objects carry much it never reads
//! (`managedFields`, container specs, node images, most status), so each object is trimmed as it
//! arrives, before the reflector stores it: the footprint stays small with thousands of pods. And a
//! kubelet heartbeat or a status field the policy ignores should not wake the decision loop, so each
//! kind has a fingerprint of exactly the fields the policy reads; an update that leaves it unchanged
//! wakes nothing.

use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::core::v1::{Node, NodeStatus, Pod, PodSpec, PodStatus};
use kube::api::DynamicObject;

fn hash_json(value: &impl serde::Serialize) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_string(value)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// Keeps a Node's labels, annotations, spec, Ready condition and allocatable resources.
pub fn node(node: &mut Node) {
    node.metadata.managed_fields = None;
    if let Some(status) = node.status.take() {
        node.status = Some(NodeStatus {
            allocatable: status.allocatable,
            conditions: status
                .conditions
                .map(|cs| cs.into_iter().filter(|c| c.type_ == "Ready").collect()),
            ..NodeStatus::default()
        });
    }
}

/// Keeps a Pod's metadata (without annotations), node name and phase.
pub fn pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    pod.spec = Some(PodSpec {
        node_name,
        ..PodSpec::default()
    });
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
    pod.status = Some(PodStatus {
        phase,
        ..PodStatus::default()
    });
}

/// Keeps a PodAutoscaler's metadata and the two scales of its status.
pub fn autoscaler(pa: &mut DynamicObject) {
    pa.metadata.managed_fields = None;
    pa.metadata.annotations = None;
    let keep = |k: &str| pa.data.get("status").and_then(|s| s.get(k)).cloned();
    let status = serde_json::json!({"desiredScale": keep("desiredScale"), "actualScale": keep("actualScale")});
    pa.data = serde_json::json!({"status": status});
}

/// What the policy reads of a Node.
pub fn node_fingerprint(node: &Node) -> u64 {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    hash_json(&(
        &node.metadata.labels,
        &node.metadata.annotations,
        node.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        node.spec
            .as_ref()
            .map(|s| (&s.provider_id, s.unschedulable, &s.taints)),
        ready,
        node.status.as_ref().map(|s| &s.allocatable),
    ))
}

/// What the policy reads of a Pod.
pub fn pod_fingerprint(pod: &Pod) -> u64 {
    hash_json(&(
        &pod.metadata.labels,
        pod.metadata.deletion_timestamp.is_some(),
        pod.spec.as_ref().map(|s| &s.node_name),
        pod.status.as_ref().map(|s| &s.phase),
    ))
}

/// What the policy reads of a PodAutoscaler.
pub fn autoscaler_fingerprint(pa: &DynamicObject) -> u64 {
    hash_json(&(&pa.metadata.labels, pa.data.get("status")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    fn a_node() -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n".into()),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                provider_id: Some("aws:///z/i-1".into()),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![
                    NodeCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        ..NodeCondition::default()
                    },
                    NodeCondition {
                        type_: "MemoryPressure".into(),
                        status: "False".into(),
                        ..NodeCondition::default()
                    },
                ]),
                ..NodeStatus::default()
            }),
        }
    }

    #[test]
    fn a_heartbeat_does_not_change_a_nodes_fingerprint_but_readiness_and_annotations_do() {
        let mut n = a_node();
        node(&mut n);
        assert!(n.metadata.managed_fields.is_none());
        assert_eq!(
            n.status
                .as_ref()
                .unwrap()
                .conditions
                .as_ref()
                .unwrap()
                .len(),
            1
        );
        let before = node_fingerprint(&n);
        let mut heartbeat = a_node();
        heartbeat
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .last_heartbeat_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        node(&mut heartbeat);
        assert_eq!(node_fingerprint(&heartbeat), before);
        let mut not_ready = a_node();
        not_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        assert_ne!(node_fingerprint(&not_ready), before);
        let mut busy = a_node();
        busy.metadata.annotations =
            Some([("zerospot.io/in-flight".to_owned(), "1".to_owned())].into());
        assert_ne!(node_fingerprint(&busy), before);
    }

    #[test]
    fn a_pod_keeps_only_what_the_policy_reads() {
        let mut p = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                annotations: Some([("a".to_owned(), "b".to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n".into()),
                containers: vec![Default::default()],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                message: Some("m".into()),
                ..PodStatus::default()
            }),
        };
        let before = pod_fingerprint(&p);
        pod(&mut p);
        assert_eq!(pod_fingerprint(&p), before);
        assert!(p.spec.as_ref().unwrap().containers.is_empty());
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n"));
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
        assert!(p.metadata.annotations.is_none());
    }

    #[test]
    fn a_podautoscaler_keeps_its_scales() {
        let mut pa: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "autoscaling.internal.knative.dev/v1alpha1", "kind": "PodAutoscaler",
            "metadata": {"name": "x", "namespace": "m", "labels": {"serving.knative.dev/service": "x"}},
            "spec": {"protocolType": "http1"},
            "status": {"desiredScale": 2, "actualScale": 1, "conditions": []}
        }))
        .unwrap();
        autoscaler(&mut pa);
        let json = serde_json::to_value(&pa).unwrap();
        let read = zerospot_effects::Autoscaler::from_json(&json).unwrap();
        assert_eq!((read.desired_scale, read.actual_scale), (Some(2), Some(1)));
        assert!(json.get("spec").is_none());
    }
}
