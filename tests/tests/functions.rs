//! The Lambda functions' handlers on the test bed, called in this process exactly as their `main`s call
//! them: the SDK on moto, kube-rs on the real kube-apiserver with kwok GPU nodes from the bridge, and no
//! companion scaler running anywhere.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scaler_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use scaler_common::{CONVERGE, Scenario};
use serde_json::{Value, json};
use zerospot_effects::disruption::{KubeInventory, Options, Responder};
use zerospot_effects::{KubeCluster, ScalerConfig, SdkAutoScaling, SdkQueues, names};
use zerospot_testbed::bridge::{SPOT_DETAIL_TYPE, spot_interruption_event};
use zerospot_testbed::fixtures::{EventRoute, event_route, gpu_pod, is_running};
use zerospot_testbed::{eventually, unique_name};

/// What a function's `main` builds once: the effects layer's SDK and kube-rs implementations.
struct Function {
    config: ScalerConfig,
    aws: SdkAutoScaling,
    queues: SdkQueues,
    cluster: KubeCluster,
    inventory: KubeInventory,
}

impl Function {
    async fn new(s: &Scenario, reporter: &str) -> Function {
        let config = ScalerConfig::from_yaml(&s.config(60, 600)).unwrap();
        let cluster = KubeCluster::new(
            s.bed.kube_config().await.unwrap(),
            &config.controller.namespace,
            reporter,
            None,
        )
        .unwrap();
        let inventory = KubeInventory::new(cluster.client().clone());
        Function {
            aws: SdkAutoScaling::new(&s.aws),
            queues: SdkQueues::new(&s.aws),
            config,
            cluster,
            inventory,
        }
    }

    fn responder(&self) -> Responder<'_> {
        Responder {
            config: &self.config,
            aws: &self.aws,
            queues: &self.queues,
            cluster: &self.cluster,
            inventory: &self.inventory,
            options: Options::default(),
        }
    }

    async fn spot_interruption(&self, payload: &Value) -> Value {
        zerospot_spot_interruption::handle(
            &self.responder(),
            payload,
            chrono::Utc::now(),
            Duration::from_secs(900),
        )
        .await
        .unwrap()
    }

    async fn queue_depth(&self, payload: &Value) -> Value {
        zerospot_queue_depth::handle(&self.responder(), payload, chrono::Utc::now())
            .await
            .unwrap()
    }
}

/// A Ready node of the scenario's group running one pod of each model (one MPS slot each), both
/// wanted by their PodAutoscalers, with the dispatcher saying two requests are in flight there.
async fn busy_node(s: &Scenario, models: &[&str]) -> (Node, String) {
    zerospot_testbed::fixtures::set_desired_capacity(&s.aws, &s.group, 1)
        .await
        .unwrap();
    s.wait_desired(1, CONVERGE).await;
    for model in models {
        let pa = s.create_autoscaler(model).await;
        s.set_desired_scale(&pa, 1).await;
    }
    let pods: Api<Pod> = Api::namespaced(s.kube.clone(), &s.namespace);
    for model in models {
        let mut pod = gpu_pod(&unique_name(model), &s.group, 1);
        pod.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(names::LABEL_KNATIVE_SERVICE.into(), (*model).into());
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let node = eventually("the model pods running on one node", CONVERGE, || async {
        let list = pods
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let on: Vec<String> = list
            .items
            .iter()
            .filter(|p| is_running(p))
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        if on.len() == models.len() {
            Ok(on[0].clone())
        } else {
            Err(format!("running on {on:?}"))
        }
    })
    .await
    .unwrap();
    s.annotate_node(&node, &[(names::ANNOTATION_IN_FLIGHT, "2")])
        .await;
    let node = Api::<Node>::all(s.kube.clone()).get(&node).await.unwrap();
    let instance = zerospot_effects::observe::instance_id(&node)
        .unwrap()
        .to_owned();
    (node, instance)
}

async fn model_pods_left(s: &Scenario, node: &str) -> Vec<String> {
    Api::<Pod>::namespaced(s.kube.clone(), &s.namespace)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter_map(|p| p.metadata.name)
        .collect()
}

fn assert_marked(node: &Node) {
    let spec = node.spec.as_ref().unwrap();
    assert_eq!(spec.unschedulable, Some(true), "cordoned");
    let taint = spec
        .taints
        .as_ref()
        .and_then(|ts| ts.iter().find(|t| t.key == names::TAINT_INTERRUPTED))
        .expect("tainted");
    assert_eq!(
        (taint.value.as_deref(), taint.effect.as_str()),
        (Some("true"), "NoSchedule")
    );
    let annotations = node.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        annotations
            .get(names::ANNOTATION_DISRUPTION)
            .map(String::as_str),
        Some("spot_interruption")
    );
    assert!(annotations.contains_key(names::ANNOTATION_DEADLINE));
    assert!(annotations.contains_key(names::ANNOTATION_DRAINING));
}

#[tokio::test]
async fn a_spot_warning_for_a_node_running_two_mps_model_pods_cordons_taints_evicts_and_requests_a_replacement_within_two_seconds()
 {
    let s = Scenario::new(&["llama", "mistral"], |o| o).await;
    let (node, instance) = busy_node(&s, &["llama", "mistral"]).await;
    let name = node.metadata.name.clone().unwrap();
    let function = Function::new(&s, "zerospot-spot-interruption").await;
    let event = spot_interruption_event("us-east-1", &instance);

    let started = Instant::now();
    let answer = function.spot_interruption(&event).await;
    let took = started.elapsed();
    println!("spot warning handled on the bed in {took:?}: {answer}");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    let node = Api::<Node>::all(s.kube.clone()).get(&name).await.unwrap();
    assert_marked(&node);
    assert!(
        model_pods_left(&s, &name).await.is_empty(),
        "both model pods evicted"
    );
    let (desired, instances, _) = s.group_state().await;
    assert_eq!(
        desired, 2,
        "a replacement requested next to the draining node"
    );
    assert!(
        instances.contains(&instance),
        "the busy node is not terminated"
    );
}

#[tokio::test]
async fn the_same_spot_warning_twice_has_no_further_effect() {
    let s = Scenario::new(&["llama", "mistral"], |o| o).await;
    let (node, instance) = busy_node(&s, &["llama", "mistral"]).await;
    let name = node.metadata.name.clone().unwrap();
    let function = Function::new(&s, "zerospot-spot-interruption").await;
    let event = spot_interruption_event("us-east-1", &instance);
    function.spot_interruption(&event).await;
    let (desired, instances, _) = s.group_state().await;
    let marked = Api::<Node>::all(s.kube.clone()).get(&name).await.unwrap();

    let again = function.spot_interruption(&event).await;
    let handled = &again["events"][0];
    assert_eq!(handled["marked"], json!([]), "{again}");
    let node = Api::<Node>::all(s.kube.clone()).get(&name).await.unwrap();
    assert_eq!(node.spec, marked.spec, "no further cordon or taint");
    assert_eq!(
        node.metadata.annotations, marked.metadata.annotations,
        "no further annotation"
    );
    let (desired_again, instances_again, _) = s.group_state().await;
    assert_eq!(desired_again, desired, "no further capacity");
    assert_eq!(instances_again.len(), instances.len());
    for action in handled["actions"].as_array().unwrap() {
        assert_eq!(
            action["action"], "set_protection",
            "only the policy's usual care of the replacement: {again}"
        );
        assert_ne!(action["target"], instance.as_str());
    }
}

#[tokio::test]
async fn the_first_request_with_the_group_at_zero_takes_it_from_zero_to_one_in_one_invocation() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let function = Function::new(&s, "zerospot-queue-depth").await;
    assert_eq!(s.group_state().await.0, 0);
    s.send("llama").await;
    // What SNS fans out to the notification queue next to the request queue, as Lambda hands it over.
    let notification = json!({"Records": [{
        "messageId": "0b6c5d43-0d3a-4f5f-9d5c-4a5c3e0f0001", "receiptHandle": "rh",
        "body": "{\"model\":\"llama\"}", "attributes": {}, "messageAttributes": {},
        "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:zerospot-first-request",
        "awsRegion": "us-east-1"}]});
    let started = Instant::now();
    let answer = function.queue_depth(&notification).await;
    println!(
        "first request handled on the bed in {:?}: {answer}",
        started.elapsed()
    );
    assert_eq!(answer, json!({"batchItemFailures": []}));
    assert_eq!(
        s.group_state().await.0,
        1,
        "desired 0 -> 1 in one invocation"
    );
    // The request is still there for the dispatcher: the function never received it.
    let attrs = aws_sdk_sqs::Client::new(&s.aws)
        .get_queue_attributes()
        .queue_url(s.queue("llama"))
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    assert_eq!(
        attrs
            .attributes()
            .unwrap()
            .get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .map(String::as_str),
        Some("1")
    );
}

/// What the bridge's `interrupt` puts on the bus (EC2's event), without terminating the instance.
async fn put_spot_warning(s: &Scenario, bus: &str, instance: &str) {
    let detail = json!({"instance-id": instance, "instance-action": "terminate"});
    let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
        .source("aws.ec2")
        .detail_type(SPOT_DETAIL_TYPE)
        .detail(detail.to_string())
        .resources(format!(
            "arn:aws:ec2:us-east-1:123456789012:instance/{instance}"
        ))
        .event_bus_name(bus)
        .build();
    let out = aws_sdk_eventbridge::Client::new(&s.aws)
        .put_events()
        .entries(entry)
        .send()
        .await
        .unwrap();
    assert_eq!(out.failed_entry_count(), 0);
}

/// Receives what the rule delivered and hands it over as Lambda's SQS event source does.
async fn lambda_sqs_event(s: &Scenario, queue_url: &str, want: usize) -> Value {
    let sqs = aws_sdk_sqs::Client::new(&s.aws);
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while records.len() < want && Instant::now() < deadline {
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in out.messages() {
            records.push(json!({
                "messageId": m.message_id(), "receiptHandle": m.receipt_handle(),
                "body": m.body(), "attributes": {}, "messageAttributes": {},
                "md5OfBody": m.md5_of_body(), "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:events",
                "awsRegion": "us-east-1"}));
        }
    }
    assert_eq!(records.len(), want, "messages delivered");
    json!({ "Records": records })
}

#[tokio::test]
async fn with_no_scaler_running_a_spot_warning_routed_by_eventbridge_through_sqs_is_acted_on() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let pattern = json!({"source": ["aws.ec2"], "detail-type": [SPOT_DETAIL_TYPE]});
    let EventRoute { bus, queue_url, .. } = event_route(&s.aws, &pattern).await.unwrap();
    let (node, instance) = busy_node(&s, &["llama"]).await;
    let name = node.metadata.name.clone().unwrap();
    let function = Function::new(&s, "zerospot-spot-interruption").await;

    put_spot_warning(&s, &bus, &instance).await;
    let batch = lambda_sqs_event(&s, &queue_url, 1).await;
    let answer = function.spot_interruption(&batch).await;
    assert_eq!(answer, json!({"batchItemFailures": []}));
    assert_marked(&Api::<Node>::all(s.kube.clone()).get(&name).await.unwrap());
    assert!(model_pods_left(&s, &name).await.is_empty());
    assert_eq!(s.group_state().await.0, 2);
}

#[tokio::test]
async fn a_malformed_event_in_an_sqs_batch_is_the_only_record_reported_failed() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let pattern = json!({"source": ["aws.ec2"], "detail-type": [SPOT_DETAIL_TYPE]});
    let EventRoute { bus, queue_url, .. } = event_route(&s.aws, &pattern).await.unwrap();
    let (node, instance) = busy_node(&s, &["llama"]).await;
    let name = node.metadata.name.clone().unwrap();
    let function = Function::new(&s, "zerospot-spot-interruption").await;

    put_spot_warning(&s, &bus, &instance).await;
    let malformed = aws_sdk_sqs::Client::new(&s.aws)
        .send_message()
        .queue_url(&queue_url)
        .message_body(
            json!({"source": "aws.ec2", "detail-type": SPOT_DETAIL_TYPE, "detail": {"instance-action": "terminate"}})
                .to_string(),
        )
        .send()
        .await
        .unwrap()
        .message_id()
        .unwrap()
        .to_owned();
    let batch = lambda_sqs_event(&s, &queue_url, 2).await;
    let answer = function.spot_interruption(&batch).await;
    assert_eq!(
        answer,
        json!({"batchItemFailures": [{"itemIdentifier": malformed}]})
    );
    // The good record of the same batch was acted on.
    assert_marked(&Api::<Node>::all(s.kube.clone()).get(&name).await.unwrap());
}

#[tokio::test]
async fn a_state_change_to_terminated_removes_the_instances_node_and_its_pods() {
    // The bridge follows no group here, so that only the function can remove the node: the instance
    // is gone for EC2 (and from its group), its Node (labelled with the pool's node group) and its
    // pods are left behind.
    let s = Scenario::new(&["llama"], |o| zerospot_testbed::BridgeOptions {
        groups: vec![unique_name("nobody")],
        ..o
    })
    .await;
    let instance = format!("i-{:017x}", std::process::id());
    let name = unique_name("gone");
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                     "labels": {names::LABEL_NODEGROUP: s.group}},
        "spec": {"providerID": format!("aws:///us-east-1a/{instance}")}
    }))
    .unwrap();
    Api::<Node>::all(s.kube.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    let mut pod = gpu_pod(&unique_name("left"), &s.group, 0);
    pod.spec.as_mut().unwrap().node_name = Some(name.clone());
    pod.spec.as_mut().unwrap().node_selector = None;
    Api::<Pod>::namespaced(s.kube.clone(), &s.namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let function = Function::new(&s, "zerospot-spot-interruption").await;
    let event = json!({
        "version": "0", "id": unique_name("evt"), "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2", "account": "123456789012", "time": "2026-11-29T10:00:00Z", "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1:123456789012:instance/{instance}")],
        "detail": {"instance-id": instance, "state": "terminated"}
    });
    function.spot_interruption(&event).await;
    eventually("the Node removed", CONVERGE, || async {
        match Api::<Node>::all(s.kube.clone())
            .get_opt(&name)
            .await
            .map_err(|e| e.to_string())?
        {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    })
    .await
    .unwrap();
    assert!(
        model_pods_left(&s, &name).await.is_empty(),
        "its pods removed"
    );
}
