//! The spot-interruption handler with the effects layer's fakes: what it answers for each payload shape.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use zerospot_core::testing::at;
use zerospot_effects::disruption::fake::{FakeKube, gpu_node};
use zerospot_effects::disruption::{Options, Responder};
use zerospot_effects::fake::{AwsCall, FakeAutoScaling, FakeQueues, KubeCall};
use zerospot_effects::{AwsErrorKind, ScalerConfig, names};

const CONFIG: &str = "pools: [{name: gpu, asg_name: gpu-asg, sharing: {mode: mps, replicas: 4}}]\nmodels: [{name: llama, pool: gpu, namespace: models, service: llama}]\n";

struct Fakes {
    config: ScalerConfig,
    aws: FakeAutoScaling,
    queues: FakeQueues,
    kube: FakeKube,
}

impl Fakes {
    /// Instance i-1 in gpu-asg, its node n1 serving one request with one llama pod that is wanted.
    fn new() -> Fakes {
        let f = Fakes {
            config: ScalerConfig::from_yaml(CONFIG).unwrap(),
            aws: FakeAutoScaling::default().with_group("gpu-asg", 0, 3),
            queues: FakeQueues::default(),
            kube: FakeKube::default(),
        };
        f.aws.add_instance("gpu-asg", "i-1");
        let mut node = gpu_node("n1", "i-1", "gpu", 4);
        node.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(names::ANNOTATION_IN_FLIGHT.into(), "1".into());
        f.kube.add_node(node);
        f.kube.cluster.add_pod("n1", "models", "llama-1");
        f.kube.add_autoscaler(zerospot_effects::Autoscaler {
            namespace: "models".into(),
            service: "llama".into(),
            desired_scale: Some(1),
            actual_scale: Some(1),
        });
        f
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

    async fn invoke(&self, payload: &Value) -> Result<Value, zerospot_spot_interruption::Retry> {
        zerospot_spot_interruption::handle(
            &self.responder(),
            payload,
            at(1),
            Duration::from_secs(900),
        )
        .await
    }
}

fn spot(instance: &str) -> Value {
    json!({
        "version": "0", "id": "e-1", "detail-type": "EC2 Spot Instance Interruption Warning",
        "source": "aws.ec2", "time": "2026-11-24T00:00:00Z", "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1b:instance/{instance}")],
        "detail": {"instance-id": instance, "instance-action": "terminate"}
    })
}

fn record(id: &str, body: &str) -> Value {
    json!({"messageId": id, "receiptHandle": "rh", "body": body, "attributes": {},
           "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
           "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:zerospot-events",
           "awsRegion": "us-east-1"})
}

#[tokio::test]
async fn a_malformed_record_in_an_sqs_batch_is_the_only_one_reported_failed() {
    let f = Fakes::new();
    let batch = json!({"Records": [
        record("m-1", &spot("i-1").to_string()),
        record("m-2", "{\"source\": \"aws.ec2\", \"detail-type\": \"EC2 Spot Instance Interruption Warning\", \"detail\": {}}"),
        record("m-3", "not json at all"),
        record("m-4", "{\"source\": \"aws.s3\", \"detail-type\": \"Object Created\", \"detail\": {}}"),
    ]});
    let answer = f.invoke(&batch).await.unwrap();
    assert_eq!(
        answer,
        json!({"batchItemFailures": [{"itemIdentifier": "m-2"}, {"itemIdentifier": "m-3"}]}),
        "the good warning and the unknown kind are done; the two malformed ones come back"
    );
    assert!(
        f.kube
            .cluster
            .calls()
            .contains(&KubeCall::Cordon("n1".into()))
    );
    assert_eq!(
        f.aws.calls(),
        vec![AwsCall::SetDesired("gpu-asg".into(), 2)]
    );
}

#[tokio::test]
async fn a_direct_warning_answers_with_what_was_done() {
    let f = Fakes::new();
    let answer = f.invoke(&spot("i-1")).await.unwrap();
    let event = &answer["events"][0];
    assert_eq!(event["kind"], "spot_interruption_warning");
    assert_eq!(event["marked"], json!(["n1"]));
    assert!(
        event["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "set_desired_capacity" && a["outcome"] == "done"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_direct_invocation_that_can_succeed_later_is_an_error_and_a_batch_record_is_failed() {
    let f = Fakes::new();
    f.aws
        .fail_next("DescribeAutoScalingGroups", AwsErrorKind::Throttled);
    let err = f.invoke(&spot("i-1")).await.unwrap_err();
    assert!(err.to_string().contains("retryable"), "{err}");

    f.aws
        .fail_next("DescribeAutoScalingGroups", AwsErrorKind::Throttled);
    let batch = json!({"Records": [record("m-1", &spot("i-1").to_string())]});
    let answer = f.invoke(&batch).await.unwrap();
    assert_eq!(
        answer,
        json!({"batchItemFailures": [{"itemIdentifier": "m-1"}]})
    );
    // Tried again, it goes through.
    let answer = f.invoke(&batch).await.unwrap();
    assert_eq!(answer, json!({"batchItemFailures": []}));
    assert_eq!(f.aws.group("gpu-asg").unwrap().desired, 2);
}

#[tokio::test]
async fn garbage_and_unknown_events_are_answered_not_retried() {
    let f = Fakes::new();
    let answer = f.invoke(&json!([1, 2, 3])).await.unwrap();
    assert!(answer["ignored"].is_string(), "{answer}");
    let answer = f
        .invoke(&json!({"source": "aws.s3", "detail-type": "Object Created", "detail": {}}))
        .await
        .unwrap();
    assert!(answer["events"][0]["ignored"].is_string(), "{answer}");
    assert!(f.aws.calls().is_empty());
    assert!(f.kube.cluster.calls().is_empty());
}
