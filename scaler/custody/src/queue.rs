//! SQS, behind one narrow trait shaped like the calls the dispatcher and the client make, and its SDK
//! implementation.
//!
//! # IAM actions these calls need
//! Dispatcher: `sqs:ReceiveMessage`, `sqs:DeleteMessage`, `sqs:ChangeMessageVisibility`,
//! `sqs:GetQueueAttributes` on the request queues; `sqs:SendMessage` on the allowed reply queues and the
//! dead-letter queue. Client: `sqs:SendMessage` on the request queue; `sqs:ReceiveMessage`,
//! `sqs:DeleteMessage`, `sqs:ChangeMessageVisibility` on its reply queue.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use zerospot_effects::{AwsError, AwsErrorKind};

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// SQS's id.
    pub message_id: String,
    /// Needed to delete it or change its visibility.
    pub receipt: String,
    /// The body.
    pub body: String,
    /// `ApproximateReceiveCount`: 1 on the first delivery.
    pub receive_count: u32,
    /// `SentTimestamp`, milliseconds since the epoch.
    pub sent_at_ms: Option<i64>,
    /// String message attributes.
    pub attributes: BTreeMap<String, String>,
}

/// The SQS calls zerospot makes for requests and replies.
#[async_trait]
pub trait Queue: Send + Sync {
    /// `ReceiveMessage`: up to `max` (1-10) messages, waiting up to `wait` for the first, hidden for
    /// `visibility`.
    async fn receive(
        &self,
        url: &str,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Message>, AwsError>;
    /// `DeleteMessage`.
    async fn delete(&self, url: &str, receipt: &str) -> Result<(), AwsError>;
    /// `ChangeMessageVisibility`.
    async fn set_visibility(
        &self,
        url: &str,
        receipt: &str,
        visibility: Duration,
    ) -> Result<(), AwsError>;
    /// `SendMessage` with string attributes; returns the message id.
    async fn send(
        &self,
        url: &str,
        body: &str,
        attributes: &[(&str, &str)],
    ) -> Result<String, AwsError>;
    /// `GetQueueAttributes`: messages waiting.
    async fn waiting(&self, url: &str) -> Result<u64, AwsError>;
}

/// [`Queue`] over the AWS SDK.
#[derive(Debug, Clone)]
pub struct SdkQueue {
    client: aws_sdk_sqs::Client,
}

impl SdkQueue {
    /// From an SDK config.
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        SdkQueue {
            client: aws_sdk_sqs::Client::new(config),
        }
    }
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

#[async_trait]
impl Queue for SdkQueue {
    async fn receive(
        &self,
        url: &str,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Message>, AwsError> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(1))
            .wait_time_seconds(secs(wait).clamp(0, 20))
            .visibility_timeout(secs(visibility))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| zerospot_effects::aws::from_sdk("ReceiveMessage", e))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| {
                let system = |name: MessageSystemAttributeName| {
                    m.attributes().and_then(|a| a.get(&name)).cloned()
                };
                Message {
                    message_id: m.message_id().unwrap_or_default().to_owned(),
                    receipt: m.receipt_handle().unwrap_or_default().to_owned(),
                    body: m.body().unwrap_or_default().to_owned(),
                    receive_count: system(MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1),
                    sent_at_ms: system(MessageSystemAttributeName::SentTimestamp)
                        .and_then(|v| v.parse().ok()),
                    attributes: m
                        .message_attributes()
                        .map(|a| {
                            a.iter()
                                .filter_map(|(k, v)| {
                                    Some((k.clone(), v.string_value()?.to_owned()))
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect())
    }

    async fn delete(&self, url: &str, receipt: &str) -> Result<(), AwsError> {
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| zerospot_effects::aws::from_sdk("DeleteMessage", e))?;
        Ok(())
    }

    async fn set_visibility(
        &self,
        url: &str,
        receipt: &str,
        visibility: Duration,
    ) -> Result<(), AwsError> {
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(secs(visibility))
            .send()
            .await
            .map_err(|e| zerospot_effects::aws::from_sdk("ChangeMessageVisibility", e))?;
        Ok(())
    }

    async fn send(
        &self,
        url: &str,
        body: &str,
        attributes: &[(&str, &str)],
    ) -> Result<String, AwsError> {
        let mut call = self.client.send_message().queue_url(url).message_body(body);
        for (k, v) in attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(*v)
                .build()
                .map_err(|e| AwsError::new("SendMessage", AwsErrorKind::Invalid, e.to_string()))?;
            call = call.message_attributes(*k, value);
        }
        let out = call
            .send()
            .await
            .map_err(|e| zerospot_effects::aws::from_sdk("SendMessage", e))?;
        Ok(out.message_id().unwrap_or_default().to_owned())
    }

    async fn waiting(&self, url: &str) -> Result<u64, AwsError> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| zerospot_effects::aws::from_sdk("GetQueueAttributes", e))?;
        Ok(out
            .attributes()
            .and_then(|a| a.get(&A::ApproximateNumberOfMessages))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }
}
