//! From a change to the `SetDesiredCapacity` call, excluding the AWS round trip.
//!
//! The real decision loop (`Scaler::run`) runs against the recording fake Auto Scaling group, with
//! 100 GPU-ready nodes and 1,000 model pods in its Kubernetes caches. Each of 1,000 changes raises one
//! model's demand by one request, alternately through the queue-depth path (what the SQS poller does)
//! and the watch path (a PodAutoscaler's desiredScale arriving in the reflector store); each change
//! asks for one more node, so each is answered by exactly one `SetDesiredCapacity` call. The figure is
//! the time from the change being stored to that call. Prints p50, p99 and max; the target (read, not
//! asserted) is p99 < 10 ms. Run: `cargo bench -p zerospot-controller --bench latency`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use zerospot_controller::metrics::Metrics;
use zerospot_controller::scaler::{Caches, Inputs, Scaler};
use zerospot_effects::fake::{AwsCall, FakeAutoScaling, FakeCluster};
use zerospot_effects::{Memory, QueueDepth, ScalerConfig, names};

const CHANGES: usize = 1000;
const NODES: usize = 100;
const PODS: usize = 1000;

fn node(i: usize) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(format!("node-{i}")),
            labels: Some(BTreeMap::from([
                (names::LABEL_NODEGROUP.into(), "gpu".into()),
                (names::LABEL_GPU_COUNT.into(), "1".into()),
                (names::LABEL_GPU_REPLICAS.into(), "1".into()),
                (names::LABEL_GPU_SHARING.into(), "none".into()),
            ])),
            annotations: Some(BTreeMap::from([(
                names::ANNOTATION_IN_FLIGHT.into(),
                "1".into(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            provider_id: Some(format!("aws:///us-east-1a/i-{i:017x}")),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            allocatable: Some(BTreeMap::from([(
                names::RESOURCE_GPU.into(),
                Quantity("1".into()),
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

fn pod(i: usize) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("model-{i}")),
            namespace: Some("models".into()),
            labels: Some(BTreeMap::from([(
                names::LABEL_KNATIVE_SERVICE.into(),
                format!("m{}", i % 10),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(format!("node-{}", i % NODES)),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            ..PodStatus::default()
        }),
    }
}

fn autoscaler(resource: &ApiResource, scale: usize) -> DynamicObject {
    serde_json::from_value(serde_json::json!({
        "apiVersion": resource.api_version, "kind": resource.kind,
        "metadata": {"name": "m1-00001", "namespace": "models", "labels": {names::LABEL_KNATIVE_SERVICE: "m1"}},
        "status": {"desiredScale": scale, "actualScale": 0}
    }))
    .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut models = String::new();
    for m in 0..10 {
        models.push_str(&format!(
            "  - {{name: m{m}, pool: gpu, namespace: models, service: m{m}, queue_url: \"https://sqs/m{m}\"}}\n"
        ));
    }
    let config = ScalerConfig::from_yaml(&format!(
        "pools:\n  - {{name: gpu, asg_name: gpu-asg}}\nmodels:\n{models}timing: {{idle_window_s: 600}}\n"
    ))
    .unwrap();
    let aws = Arc::new(FakeAutoScaling::default().with_group("gpu-asg", 0, 100_000));
    for i in 0..NODES {
        aws.add_instance("gpu-asg", &format!("i-{i:017x}"));
    }
    let (nodes, mut node_writer) = reflector::store::<Node>();
    let (pods, mut pod_writer) = reflector::store::<Pod>();
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "autoscaling.internal.knative.dev",
            "v1alpha1",
            "PodAutoscaler",
        ),
        "podautoscalers",
    );
    let mut pa_writer = Writer::<DynamicObject>::new(resource.clone());
    let autoscalers = pa_writer.as_reader();
    for i in 0..NODES {
        node_writer.apply_watcher_event(&Event::Apply(node(i)));
    }
    for i in 0..PODS {
        pod_writer.apply_watcher_event(&Event::Apply(pod(i)));
    }
    let inputs = Arc::new(Inputs::default());
    // The 100 one-slot nodes are full (100 requests of model m0 in flight): each request more needs a
    // node more.
    inputs.set_queue(
        "m0",
        QueueDepth {
            visible: 0,
            in_flight: 100,
        },
    );
    let names: Vec<String> = vec!["gpu-asg".into()];
    inputs.set_groups(
        zerospot_effects::AutoScaling::describe_groups(aws.as_ref(), &names)
            .await
            .unwrap(),
    );
    let scaler = Scaler {
        config,
        aws: aws.clone(),
        cluster: Arc::new(FakeCluster::default()),
        inputs: inputs.clone(),
        caches: Caches {
            nodes,
            pods,
            autoscalers,
        },
        metrics: Arc::new(Metrics::new()),
        dry_run: false,
        memory: Memory::default(),
    };
    let (_leader_tx, leader) = tokio::sync::watch::channel(true);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(scaler.run(leader, || true, async {
        let _ = stop_rx.await;
    }));
    // Settle: the first pass sets protection and the capacity for the initial state.
    tokio::time::sleep(Duration::from_millis(300)).await;
    aws.clear_calls();

    let mut latencies = Vec::with_capacity(CHANGES);
    let mut queued = 0u64;
    let mut desired_scale = 0usize;
    for i in 0..CHANGES {
        let before = aws.calls().len();
        let changed_at = Instant::now();
        if i % 2 == 0 {
            queued += 1;
            inputs.set_queue(
                "m2",
                QueueDepth {
                    visible: queued,
                    in_flight: 0,
                },
            );
        } else {
            desired_scale += 1;
            pa_writer.apply_watcher_event(&Event::Apply(autoscaler(&resource, desired_scale)));
            inputs.changed();
        }
        let call_at = loop {
            let calls = aws.timed_calls();
            if let Some((t, _)) = calls[before..]
                .iter()
                .find(|(_, c)| matches!(c, AwsCall::SetDesired(..)))
            {
                break *t;
            }
            tokio::task::yield_now().await;
            if changed_at.elapsed() > Duration::from_secs(10) {
                panic!("change {i} got no SetDesiredCapacity call");
            }
        };
        latencies.push(call_at.saturating_duration_since(changed_at));
        // Let the loop finish its pass (the describe after the change) before the next change.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = stop_tx.send(());
    let _ = task.await;
    latencies.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "change -> SetDesiredCapacity ({CHANGES} changes, {NODES} nodes and {PODS} pods cached, AWS round trip excluded): p50 {:.0} us, p99 {:.0} us, max {:.0} us (target p99 < 10 ms)",
        us(percentile(&latencies, 0.5)),
        us(percentile(&latencies, 0.99)),
        us(*latencies.last().unwrap())
    );
}
