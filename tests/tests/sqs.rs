//! SQS in moto behaves like SQS: visibility timeout, ChangeMessageVisibility, delete, dead-letter redrive.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use zerospot_testbed::{TestBed, unique_name};

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
