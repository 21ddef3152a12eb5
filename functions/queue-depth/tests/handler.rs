//! The queue-depth handler with the effects layer's fakes: every trigger scales up from the depth read
//! now, never down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use zerospot_core::testing::at;
use zerospot_effects::disruption::fake::FakeKube;
use zerospot_effects::disruption::{Options, Responder};
use zerospot_effects::fake::{AwsCall, FakeAutoScaling, FakeQueues};
use zerospot_effects::{AwsErrorKind, ScalerConfig};

const CONFIG: &str = "pools: [{name: gpu, asg_name: gpu-asg, sharing: {mode: mps, replicas: 4}}]\nmodels: [{name: llama, pool: gpu, namespace: models, service: llama, queue_url: 'https://sqs/llama'}]\n";

struct Fakes {
    config: ScalerConfig,
    aws: FakeAutoScaling,
    queues: FakeQueues,
    kube: FakeKube,
}

impl Fakes {
    fn new() -> Fakes {
        let queues = FakeQueues::default();
        queues.set("https://sqs/llama", 0, 0);
        Fakes {
            config: ScalerConfig::from_yaml(CONFIG).unwrap(),
            aws: FakeAutoScaling::default().with_group("gpu-asg", 0, 3),
            queues,
            kube: FakeKube::default(),
        }
    }

    async fn invoke(&self, payload: &Value) -> Result<Value, zerospot_queue_depth::Failed> {
        let responder = Responder {
            config: &self.config,
            aws: &self.aws,
            queues: &self.queues,
            cluster: &self.kube,
            inventory: &self.kube,
            options: Options::default(),
        };
        zerospot_queue_depth::handle(&responder, payload, at(0)).await
    }
}

fn notification(id: &str) -> Value {
    json!({"Records": [{"messageId": id, "body": "{\"model\":\"llama\"}", "eventSource": "aws:sqs"}]})
}

#[tokio::test]
async fn the_first_request_notification_takes_the_group_from_zero_to_one_in_one_invocation() {
    let f = Fakes::new();
    f.queues.set("https://sqs/llama", 1, 0);
    let answer = f.invoke(&notification("n-1")).await.unwrap();
    assert_eq!(answer, json!({"batchItemFailures": []}));
    assert_eq!(
        f.aws.calls(),
        vec![AwsCall::SetDesired("gpu-asg".into(), 1)]
    );
    // The same notification again: the group already has its node.
    f.invoke(&notification("n-1")).await.unwrap();
    assert_eq!(f.aws.calls().len(), 1);
}

#[tokio::test]
async fn an_empty_queue_on_a_schedule_changes_nothing() {
    let f = Fakes::new();
    let schedule = json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {},
                          "resources": ["arn:aws:events:us-east-1:123456789012:rule/zerospot-tick"]});
    let answer = f.invoke(&schedule).await.unwrap();
    assert_eq!(answer, json!({"trigger": "schedule", "actions": []}));
    assert!(f.aws.calls().is_empty());
}

#[tokio::test]
async fn an_alarm_action_scales_up_with_the_backlog() {
    let f = Fakes::new();
    f.queues.set("https://sqs/llama", 9, 0);
    let alarm = json!({"source": "aws.cloudwatch", "alarmArn": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:q",
                       "alarmData": {"alarmName": "q", "state": {"value": "ALARM"}}});
    let answer = f.invoke(&alarm).await.unwrap();
    assert_eq!(answer["trigger"], "alarm action");
    // 9 queued requests of concurrency 1 = 9 MPS slots = 3 nodes of 4 (the group's max).
    assert_eq!(
        f.aws.calls(),
        vec![AwsCall::SetDesired("gpu-asg".into(), 3)]
    );
}

#[tokio::test]
async fn a_failed_pass_returns_every_notification_to_its_queue() {
    let f = Fakes::new();
    f.queues.set("https://sqs/llama", 1, 0);
    f.queues.fail_next(AwsErrorKind::Throttled);
    let batch = json!({"Records": [
        {"messageId": "a", "body": "{}", "eventSource": "aws:sqs"},
        {"messageId": "b", "body": "{}", "eventSource": "aws:sqs"}]});
    let answer = f.invoke(&batch).await.unwrap();
    assert_eq!(
        answer,
        json!({"batchItemFailures": [{"itemIdentifier": "a"}, {"itemIdentifier": "b"}]})
    );
    assert!(f.aws.calls().is_empty());
    let err = f
        .invoke(&json!({"detail-type": "Scheduled Event", "source": "aws.events"}))
        .await;
    assert!(err.is_ok(), "the queue answers again: {err:?}");
}
