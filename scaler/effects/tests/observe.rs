//! observe(): AWS and Kubernetes objects in, the core's snapshot out.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, TimeZone, Utc};
use k8s_openapi::api::core::v1::{
    Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use zerospot_core::ModelDemand;
use zerospot_core::estimate::{DemandEstimate, PublishedDemand};
use zerospot_core::{Disruption, NodeState, Sharing};
use zerospot_effects::config::names;
use zerospot_effects::{
    Autoscaler, Group, GroupInstance, Memory, Published, QueueDepth, ScalerConfig, World, observe,
};

const CONFIG: &str = r#"
pools:
  - name: gpu
    asg_name: gpu-asg
  - name: mig
    asg_name: mig-asg
    sharing: {mode: mig, profiles: [{name: 1g.10gb, per_gpu: 7}]}
models:
  - {name: llama, pool: gpu, namespace: models, service: llama, queue_url: "https://sqs/llama", concurrency: 2}
  - {name: mistral, pool: gpu, namespace: models, service: mistral}
  - {name: tiny, pool: mig, namespace: models, service: tiny, mig_profile: 1g.10gb}
timing: {idle_window_s: 120, launch_timeout_s: 600}
"#;

fn t(s: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap() + Duration::seconds(s)
}

fn jiff(t: DateTime<Utc>) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).unwrap())
}

fn group(name: &str, max: u32, ids: &[&str]) -> Group {
    Group {
        name: name.into(),
        min: 0,
        max,
        desired: u32::try_from(ids.len()).unwrap(),
        instances: ids
            .iter()
            .map(|id| GroupInstance {
                id: (*id).into(),
                lifecycle_state: "InService".into(),
                protected: false,
            })
            .collect(),
        tags: BTreeMap::new(),
    }
}

/// A Ready node of instance `id` offering `gpu` slots, MPS with 4 replicas on 1 GPU, created at t(0).
fn node(id: &str, gpu: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(format!("ip-{id}")),
            creation_timestamp: Some(jiff(t(0))),
            labels: Some(BTreeMap::from([
                (names::LABEL_NODEGROUP.into(), "gpu".into()),
                (names::LABEL_GPU_COUNT.into(), "1".into()),
                (names::LABEL_GPU_REPLICAS.into(), "4".into()),
                (names::LABEL_GPU_SHARING.into(), "mps".into()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            provider_id: Some(format!("aws:///us-east-1a/{id}")),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            allocatable: Some(BTreeMap::from([(
                names::RESOURCE_GPU.into(),
                Quantity(gpu.into()),
            )])),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        }),
    }
}

fn annotate(mut n: Node, k: &str, v: &str) -> Node {
    n.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(k.into(), v.into());
    n
}

fn pending_pod(service: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{service}-pod")),
            namespace: Some("models".into()),
            labels: Some(BTreeMap::from([(
                names::LABEL_KNATIVE_SERVICE.into(),
                service.into(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec::default()),
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            ..PodStatus::default()
        }),
    }
}

struct Fixture {
    groups: Vec<Group>,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    autoscalers: Vec<Autoscaler>,
    queues: HashMap<String, QueueDepth>,
}

impl Fixture {
    fn new(groups: Vec<Group>) -> Self {
        Fixture {
            groups,
            nodes: vec![],
            pods: vec![],
            autoscalers: vec![],
            queues: HashMap::new(),
        }
    }

    fn observe(&self, memory: &mut Memory, now: DateTime<Utc>) -> zerospot_effects::Observation {
        let config = ScalerConfig::from_yaml(CONFIG).unwrap();
        let nodes: Vec<&Node> = self.nodes.iter().collect();
        let pods: Vec<&Pod> = self.pods.iter().collect();
        let failures = HashMap::new();
        let world = World {
            groups: &self.groups,
            nodes: &nodes,
            pods: &pods,
            autoscalers: &self.autoscalers,
            queues: &self.queues,
            capacity_failures: &failures,
            published_demand: Published::NotRead,
        };
        observe(&config, &world, memory, now)
    }
}

#[test]
fn a_node_joins_its_pool_by_instance_and_reads_its_sharing_from_device_plugin_labels() {
    let mut f = Fixture::new(vec![group("gpu-asg", 4, &["i-1"])]);
    f.nodes.push(node("i-1", "4"));
    let obs = f.observe(&mut Memory::default(), t(10));
    let n = &obs.snapshot.nodes[0];
    assert_eq!(n.instance_id, "i-1");
    assert_eq!(n.name.as_deref(), Some("ip-i-1"));
    assert_eq!(n.pool, "gpu");
    assert_eq!(n.state, NodeState::GpuReady);
    assert_eq!(obs.config.pools[0].sharing, Sharing::Mps { replicas: 4 });
    assert_eq!((obs.config.pools[0].min, obs.config.pools[0].max), (0, 4));
}

#[test]
fn a_pool_back_at_zero_remembers_the_shape_its_nodes_had() {
    let mut memory = Memory::default();
    let mut f = Fixture::new(vec![group("gpu-asg", 4, &["i-1"])]);
    f.nodes.push(node("i-1", "4"));
    f.observe(&mut memory, t(10));
    let f = Fixture::new(vec![group("gpu-asg", 4, &[])]);
    let obs = f.observe(&mut memory, t(20));
    assert_eq!(obs.config.pools[0].sharing, Sharing::Mps { replicas: 4 });
    assert!(obs.snapshot.nodes.is_empty());
    // Without memory, the assumption (exclusive) holds.
    let obs = f.observe(&mut Memory::default(), t(20));
    assert_eq!(obs.config.pools[0].sharing, Sharing::Exclusive);
}

#[test]
fn an_instance_without_a_node_or_without_gpus_is_launching_and_times_out_from_its_first_sighting() {
    let mut memory = Memory::default();
    let mut f = Fixture::new(vec![group("gpu-asg", 4, &["i-1", "i-2"])]);
    f.nodes.push(node("i-2", "0"));
    let obs = f.observe(&mut memory, t(100));
    assert!(
        obs.snapshot
            .nodes
            .iter()
            .all(|n| n.state == NodeState::Launching)
    );
    let i1 = obs
        .snapshot
        .nodes
        .iter()
        .find(|n| n.instance_id == "i-1")
        .unwrap();
    assert_eq!(i1.launched_at, t(100));
    // i-2's Node was created at t(0): the earlier evidence wins.
    let i2 = obs
        .snapshot
        .nodes
        .iter()
        .find(|n| n.instance_id == "i-2")
        .unwrap();
    assert_eq!(i2.launched_at, t(0));
    assert_eq!(obs.next_deadline, Some(t(600)));
    let later = f.observe(&mut memory, t(200));
    let i1 = later
        .snapshot
        .nodes
        .iter()
        .find(|n| n.instance_id == "i-1")
        .unwrap();
    assert_eq!(i1.launched_at, t(100), "first sighting is remembered");
}

#[test]
fn a_node_that_is_not_ready_is_not_gpu_ready() {
    let mut f = Fixture::new(vec![group("gpu-asg", 4, &["i-1"])]);
    let mut n = node("i-1", "4");
    n.status.as_mut().unwrap().conditions = Some(vec![NodeCondition {
        type_: "Ready".into(),
        status: "False".into(),
        ..NodeCondition::default()
    }]);
    f.nodes.push(n);
    assert_eq!(
        f.observe(&mut Memory::default(), t(1)).snapshot.nodes[0].state,
        NodeState::Launching
    );
}

#[test]
fn work_in_flight_and_idle_time_come_from_the_dispatchers_annotations() {
    let mut f = Fixture::new(vec![group("gpu-asg", 4, &["i-1", "i-2", "i-3"])]);
    f.nodes
        .push(annotate(node("i-1", "4"), names::ANNOTATION_IN_FLIGHT, "3"));
    f.nodes.push(annotate(
        annotate(node("i-2", "4"), names::ANNOTATION_IN_FLIGHT, "0"),
        names::ANNOTATION_IDLE_SINCE,
        &t(50).to_rfc3339(),
    ));
    f.nodes.push(annotate(
        node("i-3", "4"),
        names::ANNOTATION_IN_FLIGHT,
        "garbage",
    ));
    let obs = f.observe(&mut Memory::default(), t(100));
    let by = |id: &str| {
        obs.snapshot
            .nodes
            .iter()
            .find(|n| n.instance_id == id)
            .unwrap()
            .clone()
    };
    assert_eq!((by("i-1").in_flight, by("i-1").idle_since), (3, None));
    assert_eq!(
        (by("i-2").in_flight, by("i-2").idle_since),
        (0, Some(t(50)))
    );
    assert_eq!(
        (by("i-3").in_flight, by("i-3").idle_since),
        (0, Some(t(0))),
        "idle since created"
    );
    // The earliest idle window to run out: i-3's, at 0 + 120 s.
    assert_eq!(obs.next_deadline, Some(t(120)));
}

#[test]
fn disruptions_come_from_annotation_taint_and_lifecycle_state() {
    let mut g = group("gpu-asg", 4, &["i-1", "i-2", "i-3", "i-4"]);
    g.instances[2].lifecycle_state = "Terminating:Wait".into();
    g.instances[3].protected = true;
    let mut f = Fixture::new(vec![g]);
    f.nodes.push(annotate(
        node("i-1", "4"),
        names::ANNOTATION_DISRUPTION,
        "rebalance_recommendation",
    ));
    let mut tainted = node("i-2", "4");
    tainted.spec.as_mut().unwrap().taints = Some(vec![Taint {
        key: names::TAINT_INTERRUPTED.into(),
        value: Some("true".into()),
        effect: "NoSchedule".into(),
        ..Taint::default()
    }]);
    tainted.spec.as_mut().unwrap().unschedulable = Some(true);
    f.nodes.push(tainted);
    f.nodes.push(annotate(
        node("i-4", "4"),
        names::ANNOTATION_DRAINING,
        &t(1).to_rfc3339(),
    ));
    let obs = f.observe(&mut Memory::default(), t(10));
    let by = |id: &str| {
        obs.snapshot
            .nodes
            .iter()
            .find(|n| n.instance_id == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by("i-1").disruption,
        Some(Disruption::RebalanceRecommendation)
    );
    assert_eq!(by("i-2").disruption, Some(Disruption::SpotInterruption));
    assert!(by("i-2").cordoned);
    assert_eq!(by("i-3").disruption, Some(Disruption::Terminating));
    assert!(by("i-4").draining && by("i-4").protected);
    assert!(!by("i-1").cordoned && !by("i-1").draining);
}

#[test]
fn terminated_instances_and_nodes_of_other_groups_are_left_out() {
    let mut g = group("gpu-asg", 4, &["i-1", "i-2"]);
    g.instances[1].lifecycle_state = "Terminated".into();
    let mut f = Fixture::new(vec![g]);
    f.nodes.push(node("i-9", "4"));
    let obs = f.observe(&mut Memory::default(), t(10));
    assert_eq!(obs.snapshot.nodes.len(), 1);
    assert_eq!(obs.snapshot.nodes[0].instance_id, "i-1");
    assert!(
        obs.notes.iter().any(|n| n.contains("i-9")),
        "{:?}",
        obs.notes
    );
}

#[test]
fn demand_joins_queue_depth_podautoscalers_of_every_revision_and_unscheduled_pods() {
    let mut f = Fixture::new(vec![group("gpu-asg", 4, &[])]);
    f.queues.insert(
        "llama".into(),
        QueueDepth {
            visible: 5,
            in_flight: 2,
        },
    );
    for (desired, actual) in [(Some(2), Some(1)), (Some(1), Some(-1)), (Some(-1), None)] {
        f.autoscalers.push(Autoscaler {
            namespace: "models".into(),
            service: "llama".into(),
            desired_scale: desired,
            actual_scale: actual,
        });
    }
    f.autoscalers.push(Autoscaler {
        namespace: "other".into(),
        service: "mistral".into(),
        desired_scale: Some(9),
        actual_scale: Some(9),
    });
    f.pods.push(pending_pod("llama"));
    let mut scheduled = pending_pod("llama");
    scheduled.spec.as_mut().unwrap().node_name = Some("n".into());
    f.pods.push(scheduled);
    f.pods.push(pending_pod("mistral"));
    let obs = f.observe(&mut Memory::default(), t(10));
    let llama = obs
        .snapshot
        .demand
        .iter()
        .find(|d| d.model == "llama")
        .unwrap();
    assert_eq!((llama.queued, llama.in_flight), (5, 2));
    assert_eq!(llama.desired_scale, Some(3));
    assert_eq!(llama.actual_scale, Some(1));
    assert_eq!(llama.pending_pods, 1);
    let mistral = obs
        .snapshot
        .demand
        .iter()
        .find(|d| d.model == "mistral")
        .unwrap();
    assert_eq!(
        mistral.desired_scale, None,
        "another namespace's Service of the same name is not ours"
    );
    assert_eq!(mistral.pending_pods, 1);
}

#[test]
fn a_podautoscaler_is_read_from_its_json() {
    let pa = serde_json::json!({
        "apiVersion": "autoscaling.internal.knative.dev/v1alpha1", "kind": "PodAutoscaler",
        "metadata": {"name": "llama-00001", "namespace": "models",
                     "labels": {"serving.knative.dev/service": "llama"}},
        "status": {"desiredScale": 1, "actualScale": 0}
    });
    let a = Autoscaler::from_json(&pa).unwrap();
    assert_eq!((a.desired_scale, a.actual_scale), (Some(1), Some(0)));
    assert_eq!(
        (a.namespace.as_str(), a.service.as_str()),
        ("models", "llama")
    );
    let mut no_status = pa.clone();
    no_status.as_object_mut().unwrap().remove("status");
    assert_eq!(
        Autoscaler::from_json(&no_status).unwrap().desired_scale,
        None
    );
    let mut unlabelled = pa;
    unlabelled["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("labels");
    assert!(Autoscaler::from_json(&unlabelled).is_none());
}

#[test]
fn a_mig_pool_reads_slices_per_gpu_and_is_ready_only_with_slices() {
    let mut f = Fixture::new(vec![group("mig-asg", 2, &["i-m"])]);
    let mut n = node("i-m", "0");
    let labels = n.metadata.labels.as_mut().unwrap();
    labels.insert(names::LABEL_GPU_COUNT.into(), "2".into());
    labels.remove(names::LABEL_GPU_SHARING);
    labels.remove(names::LABEL_GPU_REPLICAS);
    n.status
        .as_mut()
        .unwrap()
        .allocatable
        .as_mut()
        .unwrap()
        .insert("nvidia.com/mig-1g.10gb".into(), Quantity("14".into()));
    f.nodes.push(n);
    let obs = f.observe(&mut Memory::default(), t(10));
    let pool = obs.config.pools.iter().find(|p| p.name == "mig").unwrap();
    assert_eq!(pool.gpus, 2);
    assert_eq!(
        pool.sharing,
        Sharing::Mig {
            profiles: vec![zerospot_core::capacity::MigProfile {
                name: "1g.10gb".into(),
                per_gpu: 7
            }]
        }
    );
    assert_eq!(obs.snapshot.nodes[0].state, NodeState::GpuReady);
}

#[test]
fn a_provider_id_that_is_not_aws_names_no_instance() {
    let mut n = node("i-1", "1");
    assert_eq!(zerospot_effects::observe::instance_id(&n), Some("i-1"));
    n.spec.as_mut().unwrap().provider_id = Some("gce://p/z/i-1".into());
    assert_eq!(zerospot_effects::observe::instance_id(&n), None);
    n.spec.as_mut().unwrap().provider_id = Some("aws:///us-east-1a/".into());
    assert_eq!(zerospot_effects::observe::instance_id(&n), None);
}

#[test]
fn a_pool_at_zero_takes_its_shape_from_the_groups_node_template_tags() {
    let mut g = group("gpu-asg", 4, &[]);
    for (k, v) in [
        ("label/nvidia.com/gpu.count", "1"),
        ("label/nvidia.com/gpu.replicas", "4"),
        ("label/nvidia.com/gpu.sharing-strategy", "mps"),
        ("resources/nvidia.com/gpu", "4"),
    ] {
        g.tags.insert(
            format!("k8s.io/cluster-autoscaler/node-template/{k}"),
            v.into(),
        );
    }
    let mut mig = group("mig-asg", 2, &[]);
    mig.tags.insert(
        "k8s.io/cluster-autoscaler/node-template/label/nvidia.com/gpu.count".into(),
        "8".into(),
    );
    mig.tags.insert(
        "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/mig-3g.40gb".into(),
        "16".into(),
    );
    let f = Fixture::new(vec![g, mig]);
    let obs = f.observe(&mut Memory::default(), t(0));
    assert_eq!(obs.config.pools[0].sharing, Sharing::Mps { replicas: 4 });
    assert_eq!(obs.config.pools[1].gpus, 8);
    assert_eq!(
        obs.config.pools[1].sharing,
        Sharing::Mig {
            profiles: vec![zerospot_core::capacity::MigProfile {
                name: "3g.40gb".into(),
                per_gpu: 2
            }]
        }
    );
}

#[test]
fn instances_leaving_their_group_are_not_nodes_but_terminating_ones_are_disrupted() {
    let mut g = group("gpu-asg", 6, &["i-1", "i-2", "i-3", "i-4", "i-5"]);
    for (i, state) in [
        "Detaching",
        "Standby",
        "Warmed:Running",
        "Terminating",
        "InService",
    ]
    .iter()
    .enumerate()
    {
        g.instances[i].lifecycle_state = (*state).into();
    }
    let obs = Fixture::new(vec![g]).observe(&mut Memory::default(), t(10));
    let ids: Vec<&str> = obs
        .snapshot
        .nodes
        .iter()
        .map(|n| n.instance_id.as_str())
        .collect();
    assert_eq!(ids, vec!["i-4", "i-5"]);
    assert_eq!(
        obs.snapshot.nodes[0].disruption,
        Some(Disruption::Terminating)
    );
    assert_eq!(obs.snapshot.nodes[1].disruption, None);
}

fn with_labels(pairs: &[(&str, &str)], allocatable: &[(&str, &str)]) -> Node {
    let mut n = node("i-1", "1");
    n.metadata.labels = Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    n.status.as_mut().unwrap().allocatable = Some(
        allocatable
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
            .collect(),
    );
    n
}

#[test]
fn every_sharing_strategy_is_read_from_the_device_plugin_labels_and_nonsense_is_not() {
    use zerospot_effects::observe::node_shape;
    let count = (names::LABEL_GPU_COUNT, "2");
    let shape = |labels: &[(&str, &str)]| node_shape(&with_labels(labels, &[]));
    assert_eq!(
        shape(&[
            count,
            (names::LABEL_GPU_SHARING, "time-slicing"),
            (names::LABEL_GPU_REPLICAS, "3")
        ]),
        (Some(2), Some(Sharing::TimeSlicing { replicas: 3 }))
    );
    assert_eq!(
        shape(&[
            count,
            (names::LABEL_GPU_SHARING, "mps"),
            (names::LABEL_GPU_REPLICAS, "1")
        ]),
        (Some(2), Some(Sharing::Mps { replicas: 1 }))
    );
    assert_eq!(
        shape(&[count, (names::LABEL_GPU_SHARING, "none")]),
        (Some(2), Some(Sharing::Exclusive))
    );
    assert_eq!(
        shape(&[count, (names::LABEL_GPU_REPLICAS, "1")]),
        (Some(2), Some(Sharing::Exclusive))
    );
    assert_eq!(
        shape(&[count, (names::LABEL_GPU_REPLICAS, "2")]),
        (Some(2), None),
        "replicas without a strategy"
    );
    for strategy in ["mps", "time-slicing"] {
        assert_eq!(
            shape(&[
                count,
                (names::LABEL_GPU_SHARING, strategy),
                (names::LABEL_GPU_REPLICAS, "0")
            ]),
            (Some(2), None),
            "{strategy} with 0 replicas offers nothing"
        );
    }
    assert_eq!(
        shape(&[(names::LABEL_GPU_COUNT, "0")]),
        (None, None),
        "0 GPUs is not a count"
    );
    assert_eq!(shape(&[]), (None, None));
    // MIG: slices of at least one per GPU make a profile; fewer than one per GPU do not.
    let mig = |slices: &str| {
        node_shape(&with_labels(
            &[(names::LABEL_GPU_COUNT, "2")],
            &[("nvidia.com/mig-1g.10gb", slices)],
        ))
    };
    assert_eq!(
        mig("2"),
        (
            Some(2),
            Some(Sharing::Mig {
                profiles: vec![zerospot_core::capacity::MigProfile {
                    name: "1g.10gb".into(),
                    per_gpu: 1
                }]
            })
        )
    );
    assert_eq!(mig("1"), (Some(2), None));
}

#[test]
fn a_pool_whose_nodes_disagree_or_change_shape_says_so_and_takes_the_first_by_instance() {
    let mut memory = Memory::default();
    let mut f = Fixture::new(vec![group("gpu-asg", 4, &["i-1", "i-2"])]);
    let replicas = |id: &str, r: &str| {
        let mut n = node(id, "4");
        n.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(names::LABEL_GPU_REPLICAS.into(), r.into());
        n
    };
    f.nodes = vec![replicas("i-2", "8"), replicas("i-1", "2")];
    let obs = f.observe(&mut memory, t(1));
    assert_eq!(
        obs.config.pools[0].sharing,
        Sharing::Mps { replicas: 2 },
        "i-1 comes first"
    );
    assert!(
        obs.notes.iter().any(|n| n.contains("disagree")),
        "{:?}",
        obs.notes
    );
    f.nodes = vec![replicas("i-1", "2"), replicas("i-2", "2")];
    let obs = f.observe(&mut memory, t(2));
    assert!(obs.notes.is_empty(), "{:?}", obs.notes);
    f.nodes = vec![replicas("i-1", "3"), replicas("i-2", "3")];
    let obs = f.observe(&mut memory, t(3));
    assert!(
        obs.notes.iter().any(|n| n.contains("changed")),
        "{:?}",
        obs.notes
    );
    // A node whose labels say nothing about GPUs does not erase what was learned.
    let mut bare = node("i-1", "4");
    bare.metadata.labels = Some(BTreeMap::new());
    f.nodes = vec![bare];
    let obs = f.observe(&mut memory, t(4));
    assert_eq!(obs.config.pools[0].sharing, Sharing::Mps { replicas: 3 });
    assert!(obs.notes.is_empty(), "{:?}", obs.notes);
}

#[test]
fn only_a_pool_labelled_node_outside_every_group_gets_a_note() {
    let mut f = Fixture::new(vec![group("gpu-asg", 4, &["i-1"])]);
    f.nodes.push(node("i-1", "4"));
    let mut other = node("i-8", "4");
    other
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(names::LABEL_NODEGROUP.into(), "system".into());
    f.nodes.push(other);
    let obs = f.observe(&mut Memory::default(), t(1));
    assert!(obs.notes.is_empty(), "{:?}", obs.notes);
}

#[test]
fn the_next_deadline_is_the_earliest_one_still_ahead() {
    let mut f = Fixture::new(vec![group("gpu-asg", 4, &["i-1", "i-2", "i-3"])]);
    let idle = |id: &str, since: i64| {
        annotate(
            node(id, "4"),
            names::ANNOTATION_IDLE_SINCE,
            &t(since).to_rfc3339(),
        )
    };
    // Windows of 120 s: i-1 ends at 300, i-2 ended at 130, i-3 ends exactly now (200).
    f.nodes = vec![idle("i-1", 180), idle("i-2", 10), idle("i-3", 80)];
    let obs = f.observe(&mut Memory::default(), t(200));
    assert_eq!(obs.next_deadline, Some(t(300)));
    let mut f = Fixture::new(vec![group("gpu-asg", 4, &["i-2", "i-3"])]);
    f.nodes = vec![idle("i-2", 10), idle("i-3", 80)];
    assert_eq!(
        f.observe(&mut Memory::default(), t(200)).next_deadline,
        None
    );
}

#[test]
fn a_busy_node_is_a_deadline_when_it_settles_for_consolidation() {
    // Created at 0 and busy: consolidation may take it from 0 + the 120 s idle window, with no other
    // change to wake the scaler then; after that it is no deadline.
    let mut f = Fixture::new(vec![group("gpu-asg", 4, &["i-1"])]);
    f.nodes = vec![annotate(node("i-1", "4"), names::ANNOTATION_IN_FLIGHT, "2")];
    assert_eq!(
        f.observe(&mut Memory::default(), t(30)).next_deadline,
        Some(t(120))
    );
    assert_eq!(
        f.observe(&mut Memory::default(), t(120)).next_deadline,
        None
    );
}

#[test]
fn an_idle_window_too_long_for_the_calendar_is_no_deadline_and_no_panic() {
    let text = CONFIG.replace(
        "idle_window_s: 120",
        &format!("idle_window_s: {}", u64::MAX),
    );
    let config = ScalerConfig::from_yaml(&text).unwrap();
    let g = [group("gpu-asg", 4, &["i-1"])];
    let n = node("i-1", "4");
    let nodes = [&n];
    let world = World {
        groups: &g,
        nodes: &nodes,
        pods: &[],
        autoscalers: &[],
        queues: &HashMap::new(),
        capacity_failures: &HashMap::new(),
        published_demand: Published::NotRead,
    };
    let obs = observe(&config, &world, &mut Memory::default(), t(10));
    assert_eq!(obs.next_deadline, None);
}

#[test]
fn a_node_that_only_says_how_many_gpus_it_has_still_teaches_the_count() {
    let mut f = Fixture::new(vec![group("gpu-asg", 4, &["i-1"])]);
    f.nodes
        .push(with_labels(&[(names::LABEL_GPU_COUNT, "4")], &[]));
    let obs = f.observe(&mut Memory::default(), t(1));
    assert_eq!(obs.config.pools[0].gpus, 4);
    assert_eq!(
        obs.config.pools[0].sharing,
        Sharing::Exclusive,
        "sharing: the assumption"
    );
}

/// Observes an empty cluster with this published record at `now`.
fn with_published(published: Published<'_>, now: DateTime<Utc>) -> zerospot_effects::Observation {
    let config = ScalerConfig::from_yaml(CONFIG).unwrap();
    let g = [group("gpu-asg", 4, &[])];
    let world = World {
        groups: &g,
        nodes: &[],
        pods: &[],
        autoscalers: &[],
        queues: &HashMap::new(),
        capacity_failures: &HashMap::new(),
        published_demand: published,
    };
    observe(&config, &world, &mut Memory::default(), now)
}

fn demand_of<'o>(obs: &'o zerospot_effects::Observation, model: &str) -> &'o ModelDemand {
    obs.snapshot
        .demand
        .iter()
        .find(|d| d.model == model)
        .unwrap()
}

/// A record taken at `at` for llama: ten requests a second apart ending 30 s before, one completion.
fn llama_record(at: DateTime<Utc>) -> PublishedDemand {
    let at_s = at.timestamp() as f64;
    let mut e = DemandEstimate::new(5.0);
    for i in 0..10 {
        e.arrived(at_s - 40.0 + f64::from(i));
    }
    e.completed(at_s - 30.0, 9.0);
    let mut d = ModelDemand {
        model: "llama".into(),
        ..ModelDemand::default()
    };
    e.fill(at_s, &mut d);
    PublishedDemand {
        observed_at: at,
        models: vec![d],
    }
}

#[test]
fn a_fresh_published_record_fills_the_estimates_with_the_silence_advanced_by_its_age() {
    let record = llama_record(t(0));
    let text = record.to_json();
    let obs = with_published(Published::Text(&text), t(20));
    assert!(obs.notes.is_empty(), "{:?}", obs.notes);
    let llama = demand_of(&obs, "llama");
    let published = &record.models[0];
    assert!(published.arrival_rate_per_s.unwrap() > 0.0);
    assert_eq!(llama.arrival_rate_per_s, published.arrival_rate_per_s);
    assert_eq!(llama.peak_rate_per_s, published.peak_rate_per_s);
    assert!(
        published.peak_rate_per_s > published.arrival_rate_per_s,
        "{published:?}"
    );
    assert_eq!(llama.service_time_s, published.service_time_s);
    assert!(
        (llama.service_time_s.unwrap() - 7.0).abs() < 0.1,
        "{llama:?}"
    );
    assert_eq!(published.silent_for_s, Some(31.0));
    assert_eq!(
        llama.silent_for_s,
        Some(51.0),
        "31 s at publication, 20 s since"
    );
    assert_eq!(llama.gaps, published.gaps);
    assert!(llama.gaps.as_ref().unwrap().total() > 8.0);
    // The queue-side figures are still the cluster's, not the record's.
    assert_eq!(llama.queued, 0);
    // A model the record does not name keeps the fallback.
    let mistral = demand_of(&obs, "mistral");
    assert_eq!(mistral.arrival_rate_per_s, None);
    assert_eq!(mistral.peak_rate_per_s, None);
    assert_eq!(mistral.service_time_s, None);
    assert_eq!(mistral.silent_for_s, None);
    assert_eq!(mistral.gaps, None);
    // Exactly at the limit it is still used; a record a few seconds ahead of our clock counts as now.
    let limit = with_published(Published::Text(&text), t(120));
    assert_eq!(demand_of(&limit, "llama").silent_for_s, Some(151.0));
    let ahead = with_published(Published::Text(&text), t(-5));
    assert_eq!(demand_of(&ahead, "llama").silent_for_s, Some(31.0));
}

#[test]
fn a_stale_missing_or_unreadable_record_leaves_the_fallback_and_says_why() {
    let text = llama_record(t(0)).to_json();
    let unset = |obs: &zerospot_effects::Observation| {
        obs.snapshot.demand.iter().all(|d| {
            d.arrival_rate_per_s.is_none()
                && d.peak_rate_per_s.is_none()
                && d.service_time_s.is_none()
                && d.silent_for_s.is_none()
                && d.gaps.is_none()
        })
    };
    let cases: [(Published<'_>, DateTime<Utc>, &str); 6] = [
        (Published::Text(&text), t(121), "121 s old"),
        (Published::Text(&text), t(-200), "in the future"),
        (Published::Missing, t(0), "no published demand estimates"),
        (Published::Text("{not json"), t(0), "not valid JSON"),
        (Published::Text(""), t(0), "not valid JSON"),
        (
            Published::Text(r#"{"observed_at": "2026-11-24T00:00:00Z", "models": {"llama": 1}}"#),
            t(0),
            "not valid JSON",
        ),
    ];
    for (published, now, why) in cases {
        let obs = with_published(published, now);
        assert!(unset(&obs), "{published:?}");
        assert!(
            obs.notes.iter().any(|n| n.contains(why)),
            "{published:?}: {:?}",
            obs.notes
        );
    }
    // A fresh record that names no model (a dispatcher that has seen nothing yet): the fallback, and
    // nothing to note.
    let empty = r#"{"observed_at": "2026-11-24T00:00:00Z", "models": []}"#;
    let obs = with_published(Published::Text(empty), t(5));
    assert!(unset(&obs));
    assert!(obs.notes.is_empty(), "{:?}", obs.notes);
    // The Lambda functions read no record: no estimates and nothing to note.
    let obs = with_published(Published::NotRead, t(0));
    assert!(unset(&obs));
    assert!(obs.notes.is_empty(), "{:?}", obs.notes);
}

#[test]
fn bad_figures_in_a_record_are_each_left_unset_with_a_note_and_the_rest_is_used() {
    let text = r#"{"observed_at": "2026-11-24T00:00:00Z", "models": [
        {"model": "llama", "arrival_rate_per_s": -1.0, "service_time_s": 0.0, "silent_for_s": -3.0,
         "peak_rate_per_s": -0.5,
         "gaps": {"counts": [2.0, -5.0, 1e308]}},
        {"model": "llama", "arrival_rate_per_s": 9.0},
        {"model": "mistral", "arrival_rate_per_s": 0.25, "service_time_s": -2.0, "peak_rate_per_s": 0.5},
        {"model": "nobody", "arrival_rate_per_s": 3.0}
    ]}"#;
    let obs = with_published(Published::Text(text), t(10));
    let llama = demand_of(&obs, "llama");
    assert_eq!(
        llama.arrival_rate_per_s, None,
        "negative rate, and the duplicate ignored"
    );
    assert_eq!(llama.service_time_s, None);
    assert_eq!(llama.silent_for_s, None);
    assert_eq!(llama.peak_rate_per_s, None);
    // A histogram is read safely whatever its counts (negative ones count as none).
    let gaps = llama.gaps.as_ref().unwrap();
    assert!(gaps.total().is_finite());
    assert!(
        gaps.return_risk(0.0, 255.0)
            .is_some_and(|r| (0.0..=1.0).contains(&r))
    );
    let mistral = demand_of(&obs, "mistral");
    assert_eq!(mistral.arrival_rate_per_s, Some(0.25));
    assert_eq!(mistral.service_time_s, None);
    assert_eq!(mistral.peak_rate_per_s, Some(0.5));
    for field in [
        "arrival_rate_per_s",
        "peak_rate_per_s",
        "service_time_s",
        "silent_for_s",
        "twice",
    ] {
        assert!(
            obs.notes.iter().any(|n| n.contains(field)),
            "{field}: {:?}",
            obs.notes
        );
    }
    // A number JSON cannot hold makes the whole record unreadable, not a panic.
    let huge = r#"{"observed_at": "2026-11-24T00:00:00Z", "models": [{"model": "llama", "service_time_s": 1e400}]}"#;
    let obs2 = with_published(Published::Text(huge), t(10));
    assert_eq!(demand_of(&obs2, "llama").service_time_s, None);
    assert!(
        obs2.notes.iter().any(|n| n.contains("not valid JSON")),
        "{:?}",
        obs2.notes
    );
    // The decision on such a snapshot still comes out.
    let _ = zerospot_core::decide(&obs.snapshot, &obs.config, t(10));
}
