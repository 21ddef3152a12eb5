//! The throttling proxy answers, while a window is open, what AWS answers when it throttles, and the
//! real AWS SDK reads those answers as throttling errors: Auto Scaling's `Throttling` (awsQuery, 400),
//! SQS's `RequestThrottled` (AWS JSON 1.0 with `x-amzn-query-error`, 403) and EventBridge's
//! `ThrottlingException` (AWS JSON 1.1, 400). Outside the window every call reaches moto unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_runtime::retries::classifiers::AwsErrorCodeClassifier;
use aws_sdk_autoscaling::operation::RequestId;
use aws_sdk_sqs::types::QueueAttributeName;
use aws_smithy_runtime_api::client::interceptors::context::{
    Error as ErasedError, Input, InterceptorContext,
};
use aws_smithy_runtime_api::client::orchestrator::OrchestratorError;
use aws_smithy_runtime_api::client::retries::classifiers::{
    ClassifyRetry, RetryAction, RetryReason,
};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use aws_smithy_types::retry::{ErrorKind, RetryConfig};
use zerospot_testbed::fixtures::create_gpu_group;
use zerospot_testbed::{Matching, NodeGroupSpec, TestBed, ThrottlingProxy, unique_name};

/// What the SDK's own AWS error-code retry classifier (the one every AWS client installs) makes of `error`.
fn sdk_classification<E>(error: E) -> RetryAction
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let mut ctx = InterceptorContext::new(Input::erase(()));
    ctx.set_output_or_error(Err(OrchestratorError::operation(ErasedError::erase(error))));
    AwsErrorCodeClassifier::<E>::new().classify_retry(&ctx)
}

fn is_throttling(action: &RetryAction) -> bool {
    matches!(
        action,
        RetryAction::RetryIndicated(RetryReason::RetryableError {
            kind: ErrorKind::ThrottlingError,
            ..
        })
    )
}

/// Clients for the proxy with the SDK's retries off, so that each throttled answer surfaces.
fn clients(
    aws: &SdkConfig,
) -> (
    aws_sdk_autoscaling::Client,
    aws_sdk_sqs::Client,
    aws_sdk_eventbridge::Client,
) {
    let autoscaling = aws_sdk_autoscaling::config::Builder::from(aws)
        .retry_config(RetryConfig::disabled())
        .build();
    let sqs = aws_sdk_sqs::config::Builder::from(aws)
        .retry_config(RetryConfig::disabled())
        .build();
    let events = aws_sdk_eventbridge::config::Builder::from(aws)
        .retry_config(RetryConfig::disabled())
        .build();
    (
        aws_sdk_autoscaling::Client::from_conf(autoscaling),
        aws_sdk_sqs::Client::from_conf(sqs),
        aws_sdk_eventbridge::Client::from_conf(events),
    )
}

/// A group and a queue in moto (made directly, not through the proxy); returns the queue URL.
async fn group_and_queue(aws: &SdkConfig, group: &str) -> String {
    create_gpu_group(aws, group, "g5.xlarge", &NodeGroupSpec::gpus(1), 2)
        .await
        .unwrap();
    zerospot_testbed::fixtures::create_queue(aws, "throttled")
        .await
        .unwrap()
}

#[tokio::test]
async fn while_throttled_auto_scaling_sqs_and_eventbridge_answer_as_aws_does_and_afterwards_moto_answers()
 {
    let bed = TestBed::shared().await.unwrap();
    let moto = bed.aws_config().await;
    let group = unique_name("throttled");
    let queue_url = group_and_queue(&moto, &group).await;
    let proxy = ThrottlingProxy::start(&bed.info().moto_endpoint)
        .await
        .unwrap();
    let (autoscaling, sqs, events) =
        clients(&bed.aws_config_with_endpoint(proxy.endpoint_url()).await);

    let window = Duration::from_secs(3);
    let opened = Instant::now();
    proxy.throttle_for(window);

    let err = autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&group)
        .send()
        .await
        .expect_err("Auto Scaling is throttled");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
    assert_eq!(err.code(), Some("Throttling"));
    assert_eq!(err.message(), Some("Rate exceeded"));
    assert!(err.request_id().is_some(), "{err:?}");
    let classified = sdk_classification(err.into_service_error());
    assert!(is_throttling(&classified), "{classified:?}");

    let err = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect_err("SQS is throttled");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));
    assert_eq!(err.code(), Some("RequestThrottled"));
    assert_eq!(err.message(), Some("Request is throttled."));
    let service_error = err.into_service_error();
    assert!(
        service_error.is_request_throttled(),
        "the SDK maps it to SQS's modeled RequestThrottled error: {service_error:?}"
    );
    let classified = sdk_classification(service_error);
    assert!(is_throttling(&classified), "{classified:?}");

    let err = events
        .list_event_buses()
        .send()
        .await
        .expect_err("EventBridge is throttled");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
    assert_eq!(err.code(), Some("ThrottlingException"));
    let classified = sdk_classification(err.into_service_error());
    assert!(is_throttling(&classified), "{classified:?}");

    assert_eq!(proxy.throttled_count(), 3);
    assert_eq!(proxy.forwarded_count(), 0);
    let calls: Vec<(String, String)> = proxy
        .calls()
        .into_iter()
        .map(|c| (c.service, c.action))
        .collect();
    assert_eq!(
        calls,
        [
            ("autoscaling".into(), "DescribeAutoScalingGroups".into()),
            ("sqs".into(), "GetQueueAttributes".into()),
            ("events".into(), "ListEventBuses".into()),
        ]
    );

    // After the window every call passes through to moto.
    tokio::time::sleep_until((opened + window).into()).await;
    let groups = autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&group)
        .send()
        .await
        .unwrap();
    assert_eq!(
        groups.auto_scaling_groups()[0].auto_scaling_group_name(),
        Some(group.as_str())
    );
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap();
    assert!(
        attributes.attributes().unwrap()[&QueueAttributeName::QueueArn].starts_with("arn:aws:sqs:")
    );
    events.list_event_buses().send().await.unwrap();
    assert_eq!(proxy.throttled_count(), 3);
    assert_eq!(proxy.forwarded_count(), 3);
}

#[tokio::test]
async fn the_sdk_standard_retry_retries_throttled_calls_until_one_passes() {
    let bed = TestBed::shared().await.unwrap();
    let moto = bed.aws_config().await;
    let group = unique_name("retried");
    let queue_url = group_and_queue(&moto, &group).await;
    let proxy = ThrottlingProxy::start(&bed.info().moto_endpoint)
        .await
        .unwrap();
    let aws = bed.aws_config_with_endpoint(proxy.endpoint_url()).await;
    // The SDK's default: standard retry, 3 attempts; shorter backoff to keep the test quick.
    let retry = RetryConfig::standard()
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(20));
    let autoscaling = aws_sdk_autoscaling::Client::from_conf(
        aws_sdk_autoscaling::config::Builder::from(&aws)
            .retry_config(retry.clone())
            .build(),
    );
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&aws)
            .retry_config(retry)
            .build(),
    );

    proxy.throttle_next(2);
    autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&group)
        .send()
        .await
        .unwrap();
    assert_eq!((proxy.throttled_count(), proxy.forwarded_count()), (2, 1));

    proxy.throttle_next(2);
    sqs.get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap();
    assert_eq!((proxy.throttled_count(), proxy.forwarded_count()), (4, 2));

    // Three throttled answers exhaust three attempts: the error reaches the caller.
    proxy.throttle_next(3);
    let err = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .send()
        .await
        .expect_err("three attempts, three throttled answers");
    assert_eq!(err.code(), Some("RequestThrottled"));
    assert_eq!((proxy.throttled_count(), proxy.forwarded_count()), (7, 2));
}

#[tokio::test]
async fn only_the_matching_action_is_throttled() {
    let bed = TestBed::shared().await.unwrap();
    let moto = bed.aws_config().await;
    let group = unique_name("only");
    let queue_url = group_and_queue(&moto, &group).await;
    let proxy = ThrottlingProxy::start(&bed.info().moto_endpoint)
        .await
        .unwrap();
    let (autoscaling, sqs, _) = clients(&bed.aws_config_with_endpoint(proxy.endpoint_url()).await);

    proxy.throttle_only(Matching::service("sqs").and_action("GetQueueAttributes"));
    proxy.throttle_for(Duration::from_secs(60));
    autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&group)
        .send()
        .await
        .unwrap();
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body("still accepted")
        .send()
        .await
        .unwrap();
    let err = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .send()
        .await
        .expect_err("GetQueueAttributes is throttled");
    assert_eq!(err.code(), Some("RequestThrottled"));

    proxy.stop_throttling();
    sqs.get_queue_attributes()
        .queue_url(&queue_url)
        .send()
        .await
        .unwrap();
    assert_eq!((proxy.throttled_count(), proxy.forwarded_count()), (1, 3));
}
