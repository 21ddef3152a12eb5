//! The AWS side of the bed. SQS in moto behaves like SQS (visibility timeout, ChangeMessageVisibility,
//! delete, dead-letter redrive). The `moto_...` tests pin down where moto differs from AWS, as written in
//! tests/README.md: if a moto upgrade fixes one, its test fails and the README and our workarounds can go.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aws_sdk_autoscaling::types::LifecycleState;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use zerospot_testbed::fixtures::{
    ZONES, create_gpu_group, event_route, group_instances, set_desired_capacity,
};
use zerospot_testbed::{NodeGroupSpec, TestBed, unique_name};

async fn receive_one(sqs: &aws_sdk_sqs::Client, url: &str) -> Option<aws_sdk_sqs::types::Message> {
    let out = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(1)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .send()
        .await
        .unwrap();
    out.messages.unwrap_or_default().into_iter().next()
}

fn receive_count(m: &aws_sdk_sqs::types::Message) -> u32 {
    m.attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|c| c.parse().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_message_moves_through_an_sqs_queue_with_a_dead_letter_queue() {
    let bed = TestBed::shared().await.unwrap();
    let sqs = aws_sdk_sqs::Client::new(&bed.aws_config().await);

    let dlq_name = unique_name("requests-dlq");
    let dlq = sqs
        .create_queue()
        .queue_name(&dlq_name)
        .send()
        .await
        .unwrap();
    let dlq_url = dlq.queue_url().unwrap().to_owned();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let redrive = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2});
    let queue = sqs
        .create_queue()
        .queue_name(unique_name("requests"))
        .attributes(QueueAttributeName::VisibilityTimeout, "1")
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .unwrap();
    let url = queue.queue_url().unwrap().to_owned();

    // Receive, hide, make visible again at once, receive again, delete.
    sqs.send_message()
        .queue_url(&url)
        .message_body("handled")
        .send()
        .await
        .unwrap();
    let first = receive_one(&sqs, &url)
        .await
        .expect("the message is delivered");
    assert_eq!(first.body(), Some("handled"));
    assert_eq!(receive_count(&first), 1);
    assert!(
        receive_one(&sqs, &url).await.is_none(),
        "a received message is invisible for the visibility timeout"
    );
    sqs.change_message_visibility()
        .queue_url(&url)
        .receipt_handle(first.receipt_handle().unwrap())
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    let again = receive_one(&sqs, &url)
        .await
        .expect("visible again after ChangeMessageVisibility 0");
    assert_eq!(again.body(), Some("handled"));
    assert_eq!(receive_count(&again), 2);
    sqs.delete_message()
        .queue_url(&url)
        .receipt_handle(again.receipt_handle().unwrap())
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        receive_one(&sqs, &url).await.is_none(),
        "a deleted message never comes back"
    );

    // A message received maxReceiveCount times without delete moves to the dead-letter queue.
    sqs.send_message()
        .queue_url(&url)
        .message_body("poison")
        .send()
        .await
        .unwrap();
    for attempt in 1..=2 {
        let m = receive_one(&sqs, &url)
            .await
            .expect("delivered until maxReceiveCount");
        assert_eq!((m.body(), receive_count(&m)), (Some("poison"), attempt));
        tokio::time::sleep(Duration::from_millis(1200)).await; // the visibility timeout runs out
    }
    assert!(
        receive_one(&sqs, &url).await.is_none(),
        "past maxReceiveCount the message leaves the source queue"
    );
    let dead = receive_one(&sqs, &dlq_url)
        .await
        .expect("the message is in the dead-letter queue");
    assert_eq!(dead.body(), Some("poison"));
}

#[tokio::test]
async fn moto_accepts_desired_capacity_above_max_so_zerospot_must_clamp_it_itself() {
    let bed = TestBed::shared().await.unwrap();
    let aws = bed.aws_config().await;
    let group = unique_name("clamp");
    create_gpu_group(&aws, &group, "g5.xlarge", &NodeGroupSpec::gpus(1), 2)
        .await
        .unwrap();
    // Real Auto Scaling answers ValidationError: "New SetDesiredCapacity value 3 is above max value 2".
    set_desired_capacity(&aws, &group, 3).await.unwrap();
    assert_eq!(group_instances(&aws, &group).await.unwrap().len(), 3);
}

#[tokio::test]
async fn moto_puts_all_instances_of_one_scale_out_in_a_single_zone_and_records_no_scaling_activity()
{
    let bed = TestBed::shared().await.unwrap();
    let aws = bed.aws_config().await;
    let group = unique_name("zones");
    create_gpu_group(&aws, &group, "g5.xlarge", &NodeGroupSpec::gpus(1), 4)
        .await
        .unwrap();
    set_desired_capacity(&aws, &group, 4).await.unwrap();
    let zones: Vec<String> = group_instances(&aws, &group)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, z)| z)
        .collect();
    // moto picks one of the group's zones at random for each scale-out; AWS would balance them.
    assert!(ZONES.contains(&zones[0].as_str()), "{zones:?}");
    assert!(zones.iter().all(|z| *z == zones[0]), "{zones:?}");
    let activities = aws_sdk_autoscaling::Client::new(&aws)
        .describe_scaling_activities()
        .auto_scaling_group_name(&group)
        .send()
        .await
        .unwrap();
    assert!(activities.activities().is_empty());
}

#[tokio::test]
async fn moto_never_holds_a_terminating_instance_in_its_lifecycle_hook() {
    let bed = TestBed::shared().await.unwrap();
    let aws = bed.aws_config().await;
    let autoscaling = aws_sdk_autoscaling::Client::new(&aws);
    let group = unique_name("hook");
    create_gpu_group(&aws, &group, "g5.xlarge", &NodeGroupSpec::gpus(1), 2)
        .await
        .unwrap();
    autoscaling
        .put_lifecycle_hook()
        .auto_scaling_group_name(&group)
        .lifecycle_hook_name("drain")
        .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
        .heartbeat_timeout(300)
        .send()
        .await
        .unwrap();
    set_desired_capacity(&aws, &group, 1).await.unwrap();
    let (instance, _) = group_instances(&aws, &group).await.unwrap().remove(0);
    autoscaling
        .terminate_instance_in_auto_scaling_group()
        .instance_id(&instance)
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .unwrap();
    // AWS would keep the instance in Terminating:Wait until CompleteLifecycleAction or the heartbeat runs out.
    let out = autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&group)
        .send()
        .await
        .unwrap();
    let states: Vec<Option<&LifecycleState>> = out
        .auto_scaling_groups()
        .iter()
        .flat_map(|g| g.instances())
        .map(|i| i.lifecycle_state())
        .collect();
    assert!(
        states.is_empty(),
        "the instance is gone at once: {states:?}"
    );
    let completed = autoscaling
        .complete_lifecycle_action()
        .auto_scaling_group_name(&group)
        .lifecycle_hook_name("drain")
        .instance_id(&instance)
        .lifecycle_action_result("CONTINUE")
        .send()
        .await;
    assert!(
        completed.is_err(),
        "moto answers CompleteLifecycleAction with HTTP 500"
    );
}

#[tokio::test]
async fn moto_delivers_eventbridge_events_to_sqs_without_the_account_field() {
    let bed = TestBed::shared().await.unwrap();
    let aws = bed.aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let events = aws_sdk_eventbridge::Client::new(&aws);
    let route = event_route(&aws, &serde_json::json!({"source": ["zerospot.test"]}))
        .await
        .unwrap();
    let (bus, url) = (route.bus, route.queue_url);
    let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
        .event_bus_name(&bus)
        .source("zerospot.test")
        .detail_type("probe")
        .detail(r#"{"n": 1}"#)
        .build();
    events.put_events().entries(entry).send().await.unwrap();
    let m = receive_one(&sqs, &url)
        .await
        .expect("delivered synchronously");
    let event: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
    assert_eq!(event["detail"]["n"], 1);
    assert_eq!(event["detail-type"], "probe");
    assert!(
        event.get("account").is_none(),
        "AWS sends the account id: {event}"
    );
}
