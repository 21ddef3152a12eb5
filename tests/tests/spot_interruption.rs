//! A Spot interruption injected by the bridge arrives in SQS through an EventBridge rule, and the node of
//! the reclaimed instance disappears after the (compressed) two-minute notice.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use zerospot_testbed::bridge::SPOT_DETAIL_TYPE;
use zerospot_testbed::fixtures::{
    EventRoute, create_gpu_group, event_route, group_instances, group_nodes, is_ready,
    set_desired_capacity,
};
use zerospot_testbed::{Bridge, BridgeOptions, NodeGroupSpec, TestBed, eventually, unique_name};

const CONVERGE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_spot_interruption_is_delivered_to_sqs_and_then_the_node_is_removed() {
    let bed = TestBed::shared().await.unwrap();
    let aws = bed.aws_config().await;
    let client = bed.kube_client().await.unwrap();
    let sqs = aws_sdk_sqs::Client::new(&aws);

    // What zerospot's Terraform sets up, on a bus of this test's own (AWS uses the default bus; sharing
    // it would let other tests' rules see this test's events).
    let pattern = serde_json::json!({"source": ["aws.ec2"], "detail-type": [SPOT_DETAIL_TYPE]});
    let EventRoute { bus, queue_url, .. } = event_route(&aws, &pattern).await.unwrap();

    let group = unique_name("spot");
    create_gpu_group(
        &aws,
        &group,
        "g5.2xlarge",
        &NodeGroupSpec::gpus(1).spot(),
        2,
    )
    .await
    .unwrap();
    // Time factor 40: the two-minute notice lasts 3 s.
    let bridge = Bridge::spawn(
        &aws,
        client.clone(),
        BridgeOptions::new([group.clone()])
            .time_factor(40.0)
            .event_bus(&bus),
    );
    set_desired_capacity(&aws, &group, 1).await.unwrap();
    let node = eventually("a Ready spot node", CONVERGE, || async {
        let nodes = group_nodes(&client, &group)
            .await
            .map_err(|e| e.to_string())?;
        nodes
            .into_iter()
            .find(is_ready)
            .ok_or_else(|| "no Ready node".to_owned())
    })
    .await
    .unwrap();
    let node_name = node.metadata.name.clone().unwrap();
    let (instance, _) = group_instances(&aws, &group).await.unwrap().remove(0);

    let interruption = bridge.interrupt(&instance).await.unwrap();
    let message = eventually(
        "the interruption in the queue",
        Duration::from_secs(10),
        || async {
            let out = sqs
                .receive_message()
                .queue_url(&queue_url)
                .wait_time_seconds(1)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            out.messages
                .unwrap_or_default()
                .into_iter()
                .next()
                .ok_or_else(|| "empty".to_owned())
        },
    )
    .await
    .unwrap();
    let received_at = Instant::now();
    let event: serde_json::Value = serde_json::from_str(message.body().unwrap()).unwrap();
    assert_eq!(event["source"], "aws.ec2");
    assert_eq!(event["detail-type"], SPOT_DETAIL_TYPE);
    assert_eq!(event["detail"]["instance-id"], instance.as_str());
    assert_eq!(event["detail"]["instance-action"], "terminate");
    assert_eq!(event["id"], interruption.event_id.as_str());
    assert!(
        event["resources"][0]
            .as_str()
            .unwrap()
            .ends_with(&format!(":instance/{instance}")),
        "{event}"
    );
    if received_at < interruption.terminates_at {
        assert!(
            group_nodes(&client, &group)
                .await
                .unwrap()
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(&node_name)),
            "the node stays during the notice"
        );
    }

    eventually("the interrupted node to be removed", CONVERGE, || async {
        let nodes = group_nodes(&client, &group)
            .await
            .map_err(|e| e.to_string())?;
        if nodes
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(&node_name))
        {
            Err("still there".to_owned())
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    assert!(
        Instant::now() >= interruption.terminates_at,
        "not before the notice ran out"
    );

    // As on AWS, the group replaces the reclaimed instance (desired capacity stays 1).
    let replacement = eventually("a replacement node", CONVERGE, || async {
        let nodes = group_nodes(&client, &group)
            .await
            .map_err(|e| e.to_string())?;
        nodes
            .into_iter()
            .find(is_ready)
            .ok_or_else(|| "none Ready".to_owned())
    })
    .await
    .unwrap();
    assert_ne!(replacement.metadata.name, Some(node_name));
}
